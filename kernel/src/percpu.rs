//! Per-CPU data, reached through the `GS` base.
//!
//! Every CPU's `IA32_GS_BASE` points at its own [`PerCpu`] in a static
//! array, whose first field is the CPU's index: [`index`] is one
//! `mov rax, gs:[0]`, which is what kvirt's `Platform::current_cpu` costs.
//! The bootstrap CPU is index 0 and sets its base first thing in
//! `kernel_main` (before anything can ask); each application processor
//! sets its own as the first thing it does in Rust ([`crate::smp`]).
//!
//! Everything else in a `PerCpu` is an atomic that its own CPU writes and
//! any CPU may read: the report's counters, the RCU's read-side state
//! ([`crate::rcu`]) and the last fault a probe caught ([`crate::probe`]).

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::cpu;

/// The most CPUs the kernel brings up (more are left in wait-for-SIPI).
pub const MAX_CPUS: usize = 16;

/// `IA32_GS_BASE`.
const MSR_GS_BASE: u32 = 0xc000_0101;

/// One CPU's data (see the module documentation).
#[repr(C, align(64))]
#[derive(Debug)]
pub struct PerCpu {
    /// This CPU's index. First field: [`index`] reads it at `gs:[0]`.
    index: usize,
    /// The CPU's local APIC ID (where IPIs for it go).
    pub apic_id: AtomicU32,
    /// Operations the cross-CPU scenario ran here.
    pub ops: AtomicU64,
    /// TLB shoot-downs this CPU sent (each an IPI to every other CPU).
    pub shootdowns_sent: AtomicU64,
    /// IPIs this CPU took: shoot-downs and wake-ups.
    pub ipis_received: AtomicU64,
    /// RCU: how deep in read-side sections the CPU is now.
    pub rcu_nesting: AtomicUsize,
    /// RCU: outermost read-side sections the CPU has left (each end is a
    /// quiescent state).
    pub rcu_quiescent: AtomicU64,
    /// The faulting address of the last fault a probe caught here.
    pub fault_addr: AtomicUsize,
    /// Its error code.
    pub fault_code: AtomicU64,
}

impl PerCpu {
    const fn new(index: usize) -> Self {
        PerCpu {
            index,
            apic_id: AtomicU32::new(0),
            ops: AtomicU64::new(0),
            shootdowns_sent: AtomicU64::new(0),
            ipis_received: AtomicU64::new(0),
            rcu_nesting: AtomicUsize::new(0),
            rcu_quiescent: AtomicU64::new(0),
            fault_addr: AtomicUsize::new(0),
            fault_code: AtomicU64::new(0),
        }
    }
}

static PERCPU: [PerCpu; MAX_CPUS] = {
    let mut all = [const { PerCpu::new(0) }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        all[i].index = i;
        i += 1;
    }
    all
};

/// CPUs running the kernel (they take shoot-downs); the bootstrap CPU is
/// always one.
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// Points this CPU's `GS` base at `PerCpu` number `index`.
///
/// # Panics
///
/// If `index` is not below [`MAX_CPUS`].
pub fn init(index: usize) {
    let data: &'static PerCpu = &PERCPU[index];
    // SAFETY: IA32_GS_BASE exists in long mode; the kernel uses GS only
    // through `index`, and the new base points at a static PerCpu whose
    // first field is the index (so `gs:[0]` stays a valid read for ever).
    unsafe { cpu::wrmsr(MSR_GS_BASE, data as *const PerCpu as u64) };
}

/// The calling CPU's index.
#[inline]
pub fn index() -> usize {
    let index: usize;
    // SAFETY: `init` pointed GS at a static PerCpu before any caller could
    // run on this CPU; its first field is the index.
    unsafe {
        core::arch::asm!("mov {}, qword ptr gs:[0]", out(reg) index, options(readonly, nostack, preserves_flags))
    };
    index
}

/// The calling CPU's data.
pub fn this() -> &'static PerCpu {
    &PERCPU[index()]
}

/// CPU `index`'s data.
pub fn of(index: usize) -> &'static PerCpu {
    &PERCPU[index]
}

/// How many CPUs are online (indices `0..online()`).
pub fn online() -> usize {
    ONLINE.load(Ordering::SeqCst)
}

/// Counts one more CPU online; called by each application processor,
/// in index order, once it takes IPIs.
pub fn set_online(index: usize) {
    let before = ONLINE.swap(index + 1, Ordering::SeqCst);
    debug_assert_eq!(before, index, "CPUs come online in index order");
}
