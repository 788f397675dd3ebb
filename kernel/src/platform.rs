//! The kernel as kvirt's platform.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use kvirt::kspace::LINEAR_MAPPING_BASE_VADDR;
use kvirt::platform::{Platform, RcuCallback, TlbFlushOp, TlbScope};
use kvirt::PAGE_SIZE;

use crate::rcu::Rcu;
use crate::{cpu, percpu, smp};

/// Ranges longer than this many pages are flushed whole rather than page by
/// page.
const MAX_INVLPG_PAGES: usize = 64;

/// Where RAM appears linearly (kvirt's linear mapping, and the boot
/// tables' before it).
pub const PHYS_BASE: usize = LINEAR_MAPPING_BASE_VADDR;

/// TLB flushes kvirt asked for since boot, on all CPUs (those for
/// `AllCpus` are also shoot-downs once other CPUs are online).
static FLUSHES: AtomicUsize = AtomicUsize::new(0);

/// TLB flushes kvirt asked for since boot.
pub fn flushes() -> usize {
    FLUSHES.load(Ordering::Relaxed)
}

/// Invalidates `op` on this CPU only.
pub fn flush_local(op: &TlbFlushOp) {
    match op {
        TlbFlushOp::Page(va) => cpu::invlpg(*va),
        TlbFlushOp::Range(range) if range.len() / PAGE_SIZE <= MAX_INVLPG_PAGES => {
            range.clone().step_by(PAGE_SIZE).for_each(cpu::invlpg);
        }
        TlbFlushOp::Range(_) | TlbFlushOp::All => cpu::flush_tlb_all(),
    }
}

/// Several CPUs, no preemption: TLB shoot-downs by IPI ([`smp`]), the
/// CPU index from the per-CPU data ([`percpu`]) and grace periods counted
/// per CPU ([`Rcu`]).
#[derive(Debug, Default)]
pub struct KernelPlatform {
    rcu: Rcu,
}

impl KernelPlatform {
    /// The platform.
    pub const fn new() -> Self {
        Self { rcu: Rcu::new() }
    }
}

// SAFETY: kvirt's platform contract, point by point:
// 1. Physical memory appears at LINEAR_MAPPING_BASE_VADDR + pa, always the
//    same base. Before the switch to kvirt's page table the boot tables map
//    the first 4 GiB there, and `memmap::for_kvirt` hands kvirt only RAM
//    below 4 GiB; after it, kvirt's own linear mapping covers every RAM
//    region of that map (writeback, RW), which supports 8-byte atomics.
//    Every CPU runs on kvirt's table once it runs Rust code that reaches
//    kvirt.
// 2. The kernel touches no Usable RAM itself: it runs from its image and
//    heap (inside the image, Reserved), the first MiB (with the AP
//    trampoline) is Reserved, and the loader's start-of-day data and the
//    ACPI tables are read before kvirt is set up.
// 3. `invlpg`, CR3 reloads and CR4.PGE toggles complete before the next
//    instruction; for `AllCpus`, `smp::shootdown` returns only after every
//    other online CPU has run the same flush in its IPI handler, and a CPU
//    that comes online later flushes everything first (see `smp`).
// 4. `Rcu` runs a callback once, after every CPU has passed a quiescent
//    state since it was queued (its module documentation argues why that
//    covers every section begun before the call); a section does not
//    migrate: there is no preemption, and interrupt handlers enter none.
//    `rcu_barrier` waits until the callbacks queued before it have run.
// 5. The kernel is built with `panic = "abort"`: nothing unwinds.
unsafe impl Platform for KernelPlatform {
    fn phys_base(&self) -> NonNull<u8> {
        NonNull::new(LINEAR_MAPPING_BASE_VADDR as *mut u8).expect("the linear mapping base is not null")
    }

    fn flush_tlb(&self, op: TlbFlushOp, scope: TlbScope) {
        FLUSHES.fetch_add(1, Ordering::Relaxed);
        flush_local(&op);
        if scope == TlbScope::AllCpus {
            smp::shootdown(&op);
        }
    }

    fn current_cpu(&self) -> usize {
        percpu::index()
    }

    fn rcu_read_lock(&self) {
        self.rcu.read_lock();
    }

    unsafe fn rcu_read_unlock(&self) {
        // SAFETY: the caller's promise (it began the section it ends, on
        // this CPU) is `read_unlock`'s.
        unsafe { self.rcu.read_unlock() };
    }

    fn call_rcu(&self, callback: RcuCallback) {
        self.rcu.call(callback);
    }

    fn rcu_barrier(&self) {
        self.rcu.barrier();
    }
}
