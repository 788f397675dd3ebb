//! What kvirt does with values it cannot trust: answers of a platform that
//! its contract leaves free (docs/VERIFICATION.md, "Trust boundaries").

use std::ptr::NonNull;
use std::sync::Arc;

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::platform::hosted::{memory_map_of, SimPlatform};
use kvirt::platform::{Platform, RcuCallback, TlbFlushOp, TlbScope};
use kvirt::sim::{Machine, MachineConfig};
use kvirt::spec::Inv;
use kvirt::PAGE_SIZE;

/// The hosted platform, but claiming to run on CPU `cpu`, whatever the
/// machine has: `Platform` says nothing of the range of `current_cpu`.
#[derive(Debug)]
struct FarCpu {
    inner: SimPlatform,
    cpu: usize,
}

// SAFETY: every promise is `SimPlatform`'s, to which every call but
// `current_cpu` is forwarded; the contract asks nothing of `current_cpu`.
unsafe impl Platform for FarCpu {
    fn phys_base(&self) -> NonNull<u8> {
        self.inner.phys_base()
    }

    fn flush_tlb(&self, op: TlbFlushOp, scope: TlbScope) {
        // `Local` on the real CPU: the machine has no CPU `self.cpu`.
        self.inner.flush_tlb(op, scope);
    }

    fn current_cpu(&self) -> usize {
        self.cpu
    }

    fn rcu_read_lock(&self) {
        self.inner.rcu_read_lock();
    }

    unsafe fn rcu_read_unlock(&self) {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.inner.rcu_read_unlock() };
    }

    fn call_rcu(&self, callback: RcuCallback) {
        self.inner.call_rcu(callback);
    }

    fn rcu_barrier(&self) {
        self.inner.rcu_barrier();
    }
}

fn space_on_cpu(cpu: usize) -> KernelSpace {
    let machine = Arc::new(Machine::new(MachineConfig::new(16 << 20)));
    // SAFETY: a new machine, used by this space alone.
    let inner = unsafe { SimPlatform::new(machine.clone()) };
    let map = memory_map_of(&machine);
    // SAFETY: the machine's own map; its RAM reads as zero.
    unsafe { KernelSpace::new(Box::new(FarCpu { inner, cpu }), &map, true) }.expect("a space")
}

mod platform_answers {
    use super::*;

    #[test]
    fn any_cpu_index_works_for_frames_areas_and_reclamation() {
        for cpu in [8, 1000, usize::MAX] {
            let space = space_on_cpu(cpu);
            let before = space.phys_stats();
            let frames = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap();
            let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
            let area = space.try_map_frames(4 * PAGE_SIZE, PAGE_SIZE, frames, prop).unwrap();
            area.write_bytes(PAGE_SIZE, b"cpu").unwrap();
            let (left, right) = area.split(2 * PAGE_SIZE);
            assert!(space.check().is_ok(), "CPU {cpu}: {:?}", space.check());
            drop((left, right));
            space.synchronize();
            assert_eq!(space.phys_stats(), before, "CPU {cpu}: nothing leaks");
            assert!(space.check().is_ok(), "CPU {cpu}: {:?}", space.check());
        }
    }
}
