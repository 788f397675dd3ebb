//! The kernel as kvirt's platform.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use kvirt::kspace::LINEAR_MAPPING_BASE_VADDR;
use kvirt::platform::{CountingRcu, Platform, TlbFlushOp, TlbScope};
use kvirt::PAGE_SIZE;

use crate::cpu;

/// Ranges longer than this many pages are flushed whole rather than page by
/// page.
const MAX_INVLPG_PAGES: usize = 64;

/// Where RAM appears linearly (kvirt's linear mapping, and the boot
/// tables' before it).
pub const PHYS_BASE: usize = LINEAR_MAPPING_BASE_VADDR;

/// TLB flushes kvirt asked for since boot (each would be a shoot-down on
/// several CPUs).
static FLUSHES: AtomicUsize = AtomicUsize::new(0);

/// TLB flushes kvirt asked for since boot.
pub fn flushes() -> usize {
    FLUSHES.load(Ordering::Relaxed)
}

/// One CPU, no preemption, interrupts off: TLB shoot-downs are local
/// flushes and read-side sections are counted ([`CountingRcu`]).
#[derive(Debug, Default)]
pub struct KernelPlatform {
    rcu: CountingRcu,
}

impl KernelPlatform {
    /// The platform.
    pub const fn new() -> Self {
        Self { rcu: CountingRcu::new() }
    }
}

// SAFETY: kvirt's platform contract, point by point:
// 1. Physical memory appears at LINEAR_MAPPING_BASE_VADDR + pa, always the
//    same base. Before the switch to kvirt's page table the boot tables map
//    the first 4 GiB there, and `memmap::for_kvirt` hands kvirt only RAM
//    below 4 GiB; after it, kvirt's own linear mapping covers every RAM
//    region of that map (writeback, RW), which supports 8-byte atomics.
// 2. The kernel touches no Usable RAM itself: it runs from its image and
//    heap (inside the image, Reserved), the first MiB is Reserved, and the
//    loader's start-of-day data is copied out before kvirt is set up.
// 3. There is one CPU: `invlpg`, CR3 reloads and CR4.PGE toggles complete
//    before the next instruction, so `AllCpus` is `Local`.
// 4. `CountingRcu` runs a callback only when no read-side section is
//    active; with one CPU, no preemption and interrupts off, a section
//    never migrates.
// 5. The kernel is built with `panic = "abort"`: nothing unwinds.
unsafe impl Platform for KernelPlatform {
    fn phys_base(&self) -> NonNull<u8> {
        NonNull::new(LINEAR_MAPPING_BASE_VADDR as *mut u8).expect("the linear mapping base is not null")
    }

    fn flush_tlb(&self, op: TlbFlushOp, _scope: TlbScope) {
        FLUSHES.fetch_add(1, Ordering::Relaxed);
        match op {
            TlbFlushOp::Page(va) => cpu::invlpg(va),
            TlbFlushOp::Range(range) if range.len() / PAGE_SIZE <= MAX_INVLPG_PAGES => {
                range.step_by(PAGE_SIZE).for_each(cpu::invlpg);
            }
            TlbFlushOp::Range(_) | TlbFlushOp::All => cpu::flush_tlb_all(),
        }
    }

    fn current_cpu(&self) -> usize {
        0
    }

    kvirt::counting_rcu_methods!(rcu);
}
