//! The kernel as kvirt's platform: one CPU, interrupts off.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use kvirt::kspace::{Aarch64Layout, KernelLayout};
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

/// One CPU, no preemption, interrupts off: shoot-downs are `TLBI`s of the
/// inner-shareable domain and read-side sections are counted
/// ([`CountingRcu`]).
#[derive(Debug, Default)]
pub struct Aarch64Platform {
    rcu: CountingRcu,
}

impl Aarch64Platform {
    /// The platform.
    pub const fn new() -> Self {
        Self { rcu: CountingRcu::new() }
    }
}

/// Where physical address 0 appears: the layout's linear mapping.
pub const PHYS_BASE: usize = match Aarch64Layout::LINEAR_MAPPING_VADDR_RANGE {
    Some(r) => r.start,
    None => panic!("the AArch64 layout has a linear mapping"),
};

fn tlbi(va: Option<usize>) {
    match va {
        // SAFETY: invalidating translations is always safe; the DSBs order
        // it after the entry updates and before later accesses.
        Some(va) => unsafe {
            core::arch::asm!("dsb ishst", "tlbi vaae1is, {0}", "dsb ish", "isb", in(reg) (va >> 12) & ((1 << 44) - 1));
        },
        // SAFETY: as above.
        None => unsafe { core::arch::asm!("dsb ishst", "tlbi vmalle1is", "dsb ish", "isb") },
    }
}

// SAFETY: kvirt's platform contract:
// 1. Physical memory appears at PHYS_BASE + pa: the boot tables map the
//    gigabyte of RAM there, and kvirt's linear mapping replaces them.
// 2. The kernel touches no Usable RAM itself: its image, heap and stack
//    are in the image, the device tree is read before the space is built,
//    and both are Reserved.
// 3. One CPU: `TLBI` followed by `DSB` completes before the next access,
//    so `AllCpus` is this CPU.
// 4. `CountingRcu` runs a callback only when no read-side section is
//    active; one CPU, interrupts off.
// 5. Built with `panic = "abort"`: nothing unwinds.
unsafe impl Platform for Aarch64Platform {
    fn phys_base(&self) -> NonNull<u8> {
        NonNull::new(PHYS_BASE as *mut u8).expect("not null")
    }

    fn flush_tlb(&self, op: TlbFlushOp, _scope: TlbScope) {
        FLUSHES.fetch_add(1, Ordering::Relaxed);
        match op {
            TlbFlushOp::Page(va) => tlbi(Some(va)),
            TlbFlushOp::Range(range) if range.len() / PAGE_SIZE <= MAX_PAGE_FLUSHES => {
                range.step_by(PAGE_SIZE).for_each(|va| tlbi(Some(va)));
            }
            TlbFlushOp::Range(_) | TlbFlushOp::All => tlbi(None),
        }
    }

    fn current_cpu(&self) -> usize {
        0
    }

    kvirt::counting_rcu_methods!(rcu);
}
