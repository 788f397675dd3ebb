//! The platform: what a kernel provides and kvirt trusts.
//!
//! kvirt runs in two worlds. In a kernel, the platform is the kernel itself:
//! physical memory is reachable through its linear mapping, TLB shoot-downs
//! are IPIs, and "the current CPU" is a per-CPU register. In a hosted build
//! (feature `std`) the platform is `hosted::SimPlatform` over a simulated
//! machine from `kvirt-sim`, whose MMU and TLBs show what the library built.
//!
//! The boundary is one object-safe `unsafe trait`, [`Platform`], so a kernel
//! space can hold `Box<dyn Platform>` and the rest of the library stays free
//! of generic parameters. The hot path never calls through it for memory:
//! the physical window base is read once at start-up.
//!
//! ## Deferred reclamation
//!
//! Page-table walkers descend without locks (see `page_table`), so a node
//! that a cursor detaches may still be read by a walker that passed its
//! parent a moment earlier. Such a node goes to [`Platform::call_rcu`] and is
//! returned to the allocator only after every read-side section that might
//! have seen it has ended. In a kernel that is its RCU (or, on one CPU,
//! [`CountingRcu`]); in the hosted build it is the hosted platform's own
//! (per-thread counters and Linux's `membarrier`).

#[cfg(feature = "std")]
pub mod hosted;
mod rcu;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt::Debug;
use core::ops::Range;
use core::ptr::NonNull;

pub use rcu::CountingRcu;

use crate::addr::{Paddr, Vaddr};

/// A TLB invalidation, as kvirt asks a platform for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlbFlushOp {
    /// The translation of the page containing this address.
    Page(Vaddr),
    /// Every translation intersecting this (page-aligned) range.
    Range(Range<Vaddr>),
    /// Every translation, global ones included.
    All,
}

/// Which CPUs a TLB invalidation must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbScope {
    /// Only the calling CPU.
    Local,
    /// Every CPU (the calling one included); returns when all are done.
    AllCpus,
}

/// What kind of physical memory a range of the firmware memory map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryRegionKind {
    /// RAM the frame allocator may hand out.
    Usable,
    /// RAM that is in use already (firmware, the kernel image, boot data).
    /// It has frame metadata but is never allocated; it may be mapped as
    /// untracked memory.
    Reserved,
    /// Not RAM (device registers). No frame metadata.
    Device,
}

/// One range of the firmware memory map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// The physical range (page aligned).
    pub range: Range<Paddr>,
    /// What is there.
    pub kind: MemoryRegionKind,
}

/// `0x1000..0x2000 (Usable)`.
impl core::fmt::Display for MemoryRegion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}..{:#x} ({:?})", self.range.start, self.range.end, self.kind)
    }
}

impl MemoryRegion {
    /// The memory map of RAM ranges `ram` with the `reserved` ranges (the
    /// firmware, the kernel image, boot data) cut out as `Reserved` and the
    /// rest `Usable`: what a kernel builds from its firmware's map before
    /// [`KernelSpace::new`](crate::kspace::KernelSpace::new).
    ///
    /// RAM ranges shrink to whole pages, reserved ones grow to whole pages
    /// and may overlap each other; the map comes out sorted, with nothing
    /// outside `ram`.
    #[must_use]
    pub fn carve(ram: &[Range<Paddr>], reserved: &[Range<Paddr>]) -> Vec<MemoryRegion> {
        use crate::addr::{align_down, align_up, PAGE_SIZE};
        let mut cuts: Vec<Range<Paddr>> = reserved
            .iter()
            .filter(|r| r.start < r.end)
            .map(|r| align_down(r.start, PAGE_SIZE)..align_up(r.end, PAGE_SIZE))
            .collect();
        cuts.sort_by_key(|r| r.start);
        let mut ram: Vec<Range<Paddr>> =
            ram.iter().map(|r| align_up(r.start, PAGE_SIZE)..align_down(r.end, PAGE_SIZE)).collect();
        ram.sort_by_key(|r| r.start);
        let mut map = Vec::new();
        for r in ram.into_iter().filter(|r| r.start < r.end) {
            let mut pos = r.start;
            for c in &cuts {
                let (start, end) = (c.start.clamp(pos, r.end), c.end.clamp(pos, r.end));
                if start >= end {
                    continue;
                }
                if pos < start {
                    map.push(MemoryRegion { range: pos..start, kind: MemoryRegionKind::Usable });
                }
                map.push(MemoryRegion { range: start..end, kind: MemoryRegionKind::Reserved });
                pos = end;
            }
            if pos < r.end {
                map.push(MemoryRegion { range: pos..r.end, kind: MemoryRegionKind::Usable });
            }
        }
        map
    }
}

/// A callback deferred until a grace period has passed.
pub type RcuCallback = Box<dyn FnOnce() + Send>;

/// The services a kernel provides to kvirt.
///
/// # Safety
///
/// kvirt's memory safety rests on these promises; an implementation must
/// keep every one of them:
///
/// 1. For every physical address `pa` of RAM (every `Usable` and `Reserved`
///    region of the memory map given to the kernel space), `phys_base() + pa`
///    is valid for reads and writes, including 8-byte aligned atomic
///    accesses, for as long as the platform lives. `phys_base()` returns the
///    same value every time.
/// 2. Nothing but kvirt (through the frames and page tables it hands out)
///    reads or writes the RAM of `Usable` regions.
/// 3. [`flush_tlb`](Platform::flush_tlb) returns only when no targeted CPU
///    can use a translation that the flush removes.
/// 4. A callback given to [`call_rcu`](Platform::call_rcu) runs exactly once,
///    and only after every read-side section (between
///    [`rcu_read_lock`](Platform::rcu_read_lock) and the matching
///    [`rcu_read_unlock`](Platform::rcu_read_unlock)) that had begun before
///    the call has ended; a read-side section does not migrate between CPUs
///    or threads. [`rcu_barrier`](Platform::rcu_barrier) returns only after
///    every callback queued before it has run.
/// 5. [`flush_tlb`](Platform::flush_tlb), [`current_cpu`](Platform::current_cpu),
///    [`rcu_read_lock`](Platform::rcu_read_lock) and
///    [`rcu_read_unlock`](Platform::rcu_read_unlock) do not unwind: kvirt
///    calls them in the middle of its own work (a flush stands between
///    removing a mapping and releasing its frame; a CPU index is asked for
///    while a page-table node is locked by hand) and does not recover from
///    a panic there. [`call_rcu`](Platform::call_rcu) and
///    [`rcu_barrier`](Platform::rcu_barrier) may panic: kvirt then leaks
///    what the callback would have freed (or aborts, if the panic meets
///    another). A kernel built with `panic = "abort"` keeps this rule by
///    construction.
///
/// A kernel space's memory map is part of the same promise: see
/// [`KernelSpace::new`](crate::kspace::KernelSpace::new).
pub unsafe trait Platform: Send + Sync + Debug + 'static {
    /// The virtual address at which physical address 0 appears.
    fn phys_base(&self) -> NonNull<u8>;

    /// Invalidates translations on the CPUs in `scope`.
    fn flush_tlb(&self, op: TlbFlushOp, scope: TlbScope);

    /// The index of the calling CPU.
    fn current_cpu(&self) -> usize;

    /// Begins a read-side section (and, in a kernel, atomic mode: no
    /// preemption until the matching unlock).
    fn rcu_read_lock(&self);

    /// Ends the innermost read-side section begun on this CPU.
    ///
    /// # Safety
    ///
    /// The caller began that section itself, with
    /// [`rcu_read_lock`](Platform::rcu_read_lock) on this CPU, and ends it
    /// once. Ending a section someone else began (kvirt's, around a walk)
    /// would let memory that section still reads be freed; kvirt ends only
    /// the sections it begins.
    unsafe fn rcu_read_unlock(&self);

    /// Runs `callback` after a grace period.
    fn call_rcu(&self, callback: RcuCallback);

    /// Waits until every callback queued by `call_rcu` so far has run.
    fn rcu_barrier(&self);
}

/// A read-side section that ends when dropped.
pub(crate) struct RcuReadGuard<'a> {
    platform: &'a dyn Platform,
    /// A section does not migrate between CPUs or threads (contract 4), so
    /// the guard that ends it stays where it began.
    _not_send: core::marker::PhantomData<*const ()>,
}

impl<'a> RcuReadGuard<'a> {
    #[inline]
    pub(crate) fn new(platform: &'a dyn Platform) -> Self {
        platform.rcu_read_lock();
        Self { platform, _not_send: core::marker::PhantomData }
    }
}

impl Drop for RcuReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `new` began this section on this thread (the guard is not
        // `Send`), and the guard ends it here, once.
        unsafe { self.platform.rcu_read_unlock() };
    }
}

impl Debug for RcuReadGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RcuReadGuard")
    }
}
