//! A platform over a kvirt-sim machine whose deferred reclamation is
//! kvirt's own [`CountingRcu`] (the one the demo kernel uses), instead of
//! the hosted platform's. Written once for the tests that use it:
//! `tests/miri.rs` (that file's docs say why) and `tests/page_table.rs` (a test holds
//! a read-side section open and sees a callback wait for it, where the
//! hosted platform would also hold callbacks back in its batch).
//!
//! With `CountingRcu`, a callback queued while no read-side section is
//! active runs at once, and one queued while a section is active runs when
//! the last active section ends.

#![allow(dead_code, reason = "each includer uses a different part")]

use std::ptr::NonNull;
use std::sync::Arc;

use kvirt::kspace::KernelSpace;
use kvirt::platform::{CountingRcu, Platform, TlbFlushOp, TlbScope};
use kvirt::sim::Machine;

/// The hosted platform with kvirt's counting RCU (see the module docs).
#[derive(Debug)]
pub struct CountingRcuPlatform {
    machine: Arc<Machine>,
    rcu: CountingRcu,
}

// SAFETY:
// 1. `ram_base()` is fixed for the machine's life, covers all its RAM and
//    supports atomic accesses; the platform keeps the machine alive.
// 2. The tests touch the simulated RAM only through kvirt.
// 3. The simulated TLB flushes complete before returning.
// 4. `CountingRcu` runs a callback only when no read-side section is
//    active, and runs each once; `rcu_barrier` runs what is queued when no
//    reader is active, which is the case whenever a test calls it (the
//    tests call `KernelSpace::synchronize` only with no cursor alive and no
//    read-side section of their own open).
// 5. Nothing here unwinds but `call_rcu` and `rcu_barrier`: the methods
//    flush simulated TLBs and forward to `CountingRcu`, whose
//    `read_unlock` aborts rather than unwind if a callback panics.
unsafe impl Platform for CountingRcuPlatform {
    fn phys_base(&self) -> NonNull<u8> {
        self.machine.ram_base()
    }

    fn flush_tlb(&self, op: TlbFlushOp, scope: TlbScope) {
        let cpus = match scope {
            TlbScope::Local => 0..1,
            TlbScope::AllCpus => 0..self.machine.nr_cpus(),
        };
        for cpu in cpus.map(|i| self.machine.cpu(i)) {
            match &op {
                TlbFlushOp::Page(va) => cpu.flush_page(*va),
                TlbFlushOp::Range(range) => cpu.flush_range(range.clone()),
                TlbFlushOp::All => cpu.flush_all(),
            }
        }
    }

    fn current_cpu(&self) -> usize {
        0
    }

    kvirt::counting_rcu_methods!(rcu);
}

/// A fresh kernel space over `machine`, on [`CountingRcuPlatform`].
///
/// # Panics
///
/// Panics if the machine cannot hold a kernel space.
pub fn space_on(machine: Arc<Machine>) -> KernelSpace {
    let map = kvirt::platform::hosted::memory_map_of(&machine);
    let platform = CountingRcuPlatform { machine, rcu: CountingRcu::new() };
    // SAFETY: the map is the machine's own and the caller hands the machine
    // to this space alone (the platform's promise, above); new machines read
    // as zero.
    unsafe { KernelSpace::new(Box::new(platform), &map, true) }.expect("the machine can hold a kernel space")
}
