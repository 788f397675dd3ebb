//! The kernel as kvirt's platform: one hart, interrupts off.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use kvirt::kspace::{KernelLayout, Sv39Layout};
use kvirt::platform::{CountingRcu, Platform, TlbFlushOp, TlbScope};
use kvirt::PAGE_SIZE;

/// TLB flushes kvirt asked for since boot.
static FLUSHES: AtomicUsize = AtomicUsize::new(0);

/// TLB flushes kvirt asked for since boot.
pub fn flushes() -> usize {
    FLUSHES.load(Ordering::Relaxed)
}

/// Ranges longer than this many pages are flushed whole.
const MAX_PAGE_FLUSHES: usize = 64;

/// One hart, no preemption, interrupts off: shoot-downs are local
/// `sfence.vma`s and read-side sections are counted ([`CountingRcu`]).
#[derive(Debug, Default)]
pub struct RiscvPlatform {
    rcu: CountingRcu,
}

impl RiscvPlatform {
    /// The platform.
    pub const fn new() -> Self {
        Self { rcu: CountingRcu::new() }
    }
}

/// Where physical address 0 appears: the Sv39 layout's linear mapping.
pub const PHYS_BASE: usize = match Sv39Layout::LINEAR_MAPPING_VADDR_RANGE {
    Some(r) => r.start,
    None => panic!("the Sv39 layout has a linear mapping"),
};

fn sfence_vma(va: Option<usize>) {
    match va {
        // SAFETY: invalidating translations is always safe.
        Some(va) => unsafe { core::arch::asm!("sfence.vma {0}, zero", in(reg) va) },
        // SAFETY: as above.
        None => unsafe { core::arch::asm!("sfence.vma") },
    }
}

// SAFETY: kvirt's platform contract:
// 1. Physical memory appears at PHYS_BASE + pa: the boot table maps the
//    gigabyte of RAM there, and kvirt's own linear mapping replaces it.
// 2. The kernel touches no Usable RAM itself: its image, heap and stack
//    are in the image (Reserved), and the device tree is read before the
//    space is built and lies in a Reserved range.
// 3. One hart: `sfence.vma` completes before the next instruction, so
//    `AllCpus` is `Local`.
// 4. `CountingRcu` runs a callback only when no read-side section is
//    active; one hart, interrupts off.
// 5. Built with `panic = "abort"`: nothing unwinds.
unsafe impl Platform for RiscvPlatform {
    fn phys_base(&self) -> NonNull<u8> {
        NonNull::new(PHYS_BASE as *mut u8).expect("not null")
    }

    fn flush_tlb(&self, op: TlbFlushOp, _scope: TlbScope) {
        FLUSHES.fetch_add(1, Ordering::Relaxed);
        match op {
            TlbFlushOp::Page(va) => sfence_vma(Some(va)),
            TlbFlushOp::Range(range) if range.len() / PAGE_SIZE <= MAX_PAGE_FLUSHES => {
                range.step_by(PAGE_SIZE).for_each(|va| sfence_vma(Some(va)));
            }
            TlbFlushOp::Range(_) | TlbFlushOp::All => sfence_vma(None),
        }
    }

    fn current_cpu(&self) -> usize {
        0
    }

    kvirt::counting_rcu_methods!(rcu);
}
