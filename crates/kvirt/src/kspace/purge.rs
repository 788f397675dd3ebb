//! Lazy TLB purge: dropping areas without a shoot-down each.
//!
//! Unmapping an area is cheap; making every CPU forget its translations
//! is not. On real hardware a shoot-down is an IPI round trip to every CPU,
//! microseconds per drop, which is why Linux's `vunmap` defers it. A kernel
//! space does the same in [`PurgeMode::Lazy`]:
//!
//! ```text
//!   drop(area) on CPU i                 purge, queue by queue
//!   ───────────────────                 ─────────────────────
//!   unmap its pages (at once)           take every dead area of the queue
//!   leave the registry (at once)        one flush of their mapped span, all CPUs
//!   queue a dead area ──────────────▶   free the ranges (guards included) in VMALLOC,
//!     on queue i % 8:                     adjacent ones as one run
//!     mapped span (to flush)            release frames and page-table sub-trees
//!     range to free in VMALLOC
//!     what was unmapped
//! ```
//!
//! Each CPU queues its drops on its own queue (one of eight, each with its
//! own lock and cache line), so that CPUs dropping areas at once do not
//! contend; a purge flushes once per non-empty queue.
//!
//! A purge runs when the queued areas' pages (their VMALLOC ranges, guard
//! included) reach [`PurgeMode::Lazy::max_pending_pages`], when VMALLOC or
//! the frame allocator would otherwise fail, on [`KernelSpace::purge`], on
//! [`KernelSpace::synchronize`] and when the space goes. The drop that
//! reaches the threshold purges its own CPU's queue, whose frames and
//! ranges that CPU used last, and the other queues only if the pages still
//! queued are at the threshold: CPUs dropping areas at once each release
//! their own.
//!
//! **The guarantee does not change:** no virtual page and no frame is
//! reused before a TLB flush that covers it, on every CPU. A dead area's
//! range stays allocated in VMALLOC and its frames stay referenced until
//! the purge that flushed them releases them; the protocol that makes
//! sure of it is `purge_queue`, model-checked with loom. What lazy mode
//! gives up is promptness: after a drop the range and the frames are not
//! back until the next purge, so counters such as
//! [`KernelSpace::vmalloc_stats`] and [`KernelSpace::phys_stats`] show them
//! in use until then. A CPU may keep a stale translation of a dead area
//! until the purge; touching a dropped area is a bug of the caller's
//! either way, and the memory behind it is still the area's.
//!
//! [`PurgeMode::Eager`], the default, flushes on every drop before the
//! drop returns its range and frames, as the specification's drop
//! postcondition says ("the range is free again").

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use super::purge_queue::PurgeQueue;
use super::split_counter::SplitCounter;
use super::{KernelLayout, KernelSpace, SpaceInner};
use crate::addr::{Vaddr, PAGE_SIZE};
use crate::arch::PagingFormat;
use crate::page_table::TakenRange;
use crate::platform::{TlbFlushOp, TlbScope};

/// How a kernel space invalidates the TLB for the areas it drops (see the
/// module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeMode {
    /// Every drop flushes on all CPUs, then gives its range and frames
    /// back before it returns. The default.
    Eager,
    /// Drops queue their range and frames; a purge flushes once for all of
    /// them and then releases them.
    Lazy {
        /// A drop that brings the queued pages (VMALLOC pages, guards
        /// included) to this many purges. `usize::MAX`: only on memory
        /// pressure and explicit purges.
        max_pending_pages: usize,
    },
}

impl PurgeMode {
    /// Lazy mode with Linux's threshold for `cpus` CPUs (`lazy_max_pages`):
    /// 32 MiB of pages times the bit length of the CPU count, so that more
    /// CPUs, which make each shoot-down dearer, batch more.
    #[must_use]
    pub fn lazy_for_cpus(cpus: usize) -> Self {
        let fls = (usize::BITS - cpus.max(1).leading_zeros()) as usize;
        PurgeMode::Lazy { max_pending_pages: fls * ((32 << 20) / PAGE_SIZE) }
    }
}

/// Counters of a space's lazy purging ([`KernelSpace::purge_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeStats {
    /// Dropped areas waiting for a purge.
    pub pending_areas: usize,
    /// Their VMALLOC pages, guards included.
    pub pending_pages: usize,
    /// Purges of a queue that found something to purge.
    pub purges: usize,
    /// Areas released by purges.
    pub purged_areas: usize,
    /// TLB flushes the purges issued (one per non-empty queue purged, none
    /// when nothing was mapped).
    pub flushes: usize,
}

/// A dropped area, unmapped, waiting for its flush.
#[derive(Debug)]
pub(super) struct DeadArea<F: PagingFormat> {
    /// The span the flush must cover (empty if nothing): what was mapped,
    /// and any page of `free` that a split neighbour mapped (its own flush
    /// may wait in another queue).
    pub(super) flush: Range<Vaddr>,
    /// The VMALLOC range to give back (possibly empty: see `SplitLink`).
    pub(super) free: Range<Vaddr>,
    /// What was unmapped: frames and page-table sub-trees, released when
    /// the purge drops the dead area.
    #[allow(dead_code, reason = "never read: held only to be dropped after the flush")]
    pub(super) taken: TakenRange<F>,
}

impl<F: PagingFormat> DeadArea<F> {
    /// The VMALLOC pages it holds, what the threshold counts.
    fn pages(&self) -> usize {
        self.free.len() / PAGE_SIZE
    }
}

/// Purge queues per space: CPU `i` queues its drops on queue `i % QUEUES`,
/// so that CPUs dropping areas at once do not share a lock.
const QUEUES: usize = 8;

/// A space's purge state.
#[derive(Debug)]
pub(super) struct Purger<F: PagingFormat> {
    queues: [CachePadded<PurgeQueue<DeadArea<F>>>; QUEUES],
    /// The VMALLOC pages (guards included) of every queued area, against
    /// the threshold: added before an area is queued, taken off when a
    /// purge has taken it from its queue; queue `i`'s through slot `i`,
    /// so that CPUs dropping areas at once do not write one cache line.
    pending_pages: SplitCounter<QUEUES>,
    /// Set with `Release` after `max_pending_pages`, read with `Acquire`:
    /// a drop that sees lazy mode sees its threshold, not the one before
    /// (0 at first, which would purge on every drop meanwhile).
    lazy: AtomicBool,
    max_pending_pages: AtomicUsize,
    purges: AtomicUsize,
    purged_areas: AtomicUsize,
    flushes: AtomicUsize,
}

impl<F: PagingFormat> Purger<F> {
    pub(super) fn new() -> Self {
        Self {
            queues: core::array::from_fn(|_| CachePadded::new(PurgeQueue::new())),
            pending_pages: SplitCounter::new(),
            lazy: AtomicBool::new(false),
            max_pending_pages: AtomicUsize::new(0),
            purges: AtomicUsize::new(0),
            purged_areas: AtomicUsize::new(0),
            flushes: AtomicUsize::new(0),
        }
    }

    pub(super) fn mode(&self) -> PurgeMode {
        if self.lazy.load(Ordering::Acquire) {
            PurgeMode::Lazy { max_pending_pages: self.max_pending_pages.load(Ordering::Relaxed) }
        } else {
            PurgeMode::Eager
        }
    }

    pub(super) fn is_lazy(&self) -> bool {
        self.lazy.load(Ordering::Acquire)
    }

    /// Whether anything waits for a purge.
    pub(super) fn has_pending(&self) -> bool {
        self.queues.iter().any(|q| q.with_pending(|p| !p.is_empty()))
    }

    /// Queues `dead` on `cpu`'s queue; returns whether the queued pages
    /// reached the threshold.
    pub(super) fn push(&self, cpu: usize, dead: DeadArea<F>) -> bool {
        let pages = dead.pages();
        // Counted before it is queued, so that a purge that takes it never
        // subtracts it first.
        let queue = cpu % QUEUES;
        self.pending_pages.add(queue, pages.try_into().unwrap_or(isize::MAX));
        self.queues[queue].push(dead);
        self.pending_pages.at_least(self.max_pending_pages.load(Ordering::Relaxed))
    }

    /// The dead areas' ranges to free, for the invariant.
    pub(super) fn pending(&self) -> Vec<Range<Vaddr>> {
        let mut all = Vec::new();
        for q in &self.queues {
            q.with_pending(|p| all.extend(p.iter().map(|d| d.free.clone())));
        }
        all
    }
}

impl<L: KernelLayout> SpaceInner<L> {
    /// Flushes every queued dead area on all CPUs, then releases them.
    pub(super) fn purge(&self) {
        for i in 0..QUEUES {
            self.purge_queue(i);
        }
    }

    /// What a drop on `cpu` that brought the queued pages to the threshold
    /// purges: its own queue first, whose frames and page-table nodes this
    /// CPU used last and whose ranges lie in this CPU's VMALLOC arena, so
    /// that CPUs dropping areas at once each release their own; the other
    /// queues only if the pages still queued are at the threshold.
    pub(super) fn purge_over_threshold(&self, cpu: usize) {
        self.purge_queue(cpu % QUEUES);
        if self.purger.pending_pages.at_least(self.purger.max_pending_pages.load(Ordering::Relaxed)) {
            self.purge();
        }
    }

    /// Purges queue `i`: one flush of its areas' span, then the release.
    fn purge_queue(&self, i: usize) {
        let purger = &self.purger;
        let purged = purger.queues[i].purge(
            |dead| {
                let pages = dead.iter().map(DeadArea::pages).sum::<usize>();
                purger.pending_pages.add(i, -pages.try_into().unwrap_or(isize::MAX));
                let mapped = dead.iter().map(|d| &d.flush).filter(|m| !m.is_empty());
                let start = mapped.clone().map(|m| m.start).min();
                let end = mapped.map(|m| m.end).max();
                if let (Some(start), Some(end)) = (start, end) {
                    purger.flushes.fetch_add(1, Ordering::Relaxed);
                    self.phys.platform().flush_tlb(TlbFlushOp::Range(start..end), TlbScope::AllCpus);
                }
            },
            |dead| {
                // Ranges first, as an eager drop does: releasing frames runs
                // their drop hooks, and however those end the ranges are
                // back. Areas dropped one after another were mostly placed
                // one after another: freed as runs (`free_all`).
                let ranges: Vec<Range<Vaddr>> = dead.iter().map(|d| d.free.clone()).collect();
                let freed = self.vmalloc.free_all(&ranges);
                #[cfg(feature = "check-contracts")]
                if let Err((range, e)) = &freed {
                    crate::spec::contracts::drop_ensures_freed(range, &Err(*e));
                }
                debug_assert!(freed.is_ok(), "freeing a dead area's range failed: {freed:?}");
                // Then what was unmapped, in place. Its frames stay on this
                // CPU's list of free pages, for the areas this CPU makes
                // next, instead of going back to the allocator that every
                // CPU shares (announced as a page per flushed page: at most
                // one frame each; what is not freed leaves no room behind).
                let pages = dead.iter().map(|d| d.flush.len() / PAGE_SIZE).sum();
                self.phys.freeing_pages(pages, || drop(dead));
            },
        );
        if purged != 0 {
            purger.purges.fetch_add(1, Ordering::Relaxed);
            purger.purged_areas.fetch_add(purged, Ordering::Relaxed);
        }
    }

    /// Purges if anything is queued; returns whether it did (the caller
    /// then retries what failed for want of memory).
    pub(super) fn purge_if_pending(&self) -> bool {
        let pending = self.purger.has_pending();
        if pending {
            self.purge();
        }
        pending
    }
}

impl<L: KernelLayout> KernelSpace<L> {
    /// How the space invalidates the TLB for dropped areas.
    #[must_use]
    pub fn purge_mode(&self) -> PurgeMode {
        self.inner().purger.mode()
    }

    /// Sets how the space invalidates the TLB for dropped areas. Going
    /// eager purges what lazy mode queued; a drop that races with the
    /// switch may still queue its area, which then waits for the next
    /// purge ([`purge`](Self::purge), [`synchronize`](Self::synchronize),
    /// memory pressure, or the end of the space), flushed like any other. Call it after
    /// [`map_kernel_image`](Self::map_kernel_image): once a space has been
    /// lazy, it counts as in use there.
    pub fn set_purge_mode(&self, mode: PurgeMode) {
        let purger = &self.inner().purger;
        match mode {
            PurgeMode::Eager => {
                purger.lazy.store(false, Ordering::Relaxed);
                self.inner().purge();
            }
            PurgeMode::Lazy { max_pending_pages } => {
                purger.max_pending_pages.store(max_pending_pages, Ordering::Relaxed);
                purger.lazy.store(true, Ordering::Release);
                // Frame allocations that would fail purge first. The hook
                // holds the space weakly (the space owns the allocator, and
                // a space that is going has nothing to purge); it is set
                // here, not at set-up, so that a space never made lazy has
                // no weak handle (`map_kernel_image` wants the only one).
                let weak = Arc::downgrade(&self.inner);
                self.phys().set_pressure_hook(Box::new(move || {
                    weak.upgrade().is_some_and(|s| s.purge_if_pending())
                }));
            }
        }
    }

    /// Flushes the TLB for every area dropped lazily so far, on all CPUs,
    /// then gives their ranges and frames back. When it returns, every area
    /// dropped before the call is unreachable from every CPU's TLB, and has
    /// been released, unless a purge on another CPU took it first (that
    /// purge has flushed it, and releases it).
    pub fn purge(&self) {
        self.inner().purge();
    }

    /// The purge queue's part of the space's invariant: every dead area's
    /// range to free is still allocated in VMALLOC, apart from the other
    /// dead areas' and from every live area, and nothing is mapped in it.
    pub(crate) fn check_pending(&self) -> Result<(), &'static str> {
        let mut dead = self.inner().purger.pending();
        dead.retain(|free| !free.is_empty());
        dead.sort_by_key(|free| free.start);
        let areas = self.areas();
        let mut last_end = 0;
        for free in &dead {
            if free.start < last_end {
                return Err("two dead areas' ranges overlap");
            }
            last_end = free.end;
            if !self.vmalloc().is_allocated(free.clone()) {
                return Err("a dead area's range is free in VMALLOC before its purge");
            }
            if areas.iter().any(|a| a.range.start < free.end && free.start < a.range.end) {
                return Err("a dead area's range overlaps a live area");
            }
            // What a dead area still holds is unmapped. (Its flush span may
            // be larger: a page it left to a live left half as its guard is
            // that half's, which may since have flushed and freed it for
            // reuse.)
            let mut cursor = self.kernel_cursor(free).map_err(|_| "a dead area is outside kernel space")?;
            if cursor.find_next(free.len()).is_some() {
                return Err("a dead area is still mapped");
            }
        }
        Ok(())
    }

    /// Counters of lazy purging.
    #[must_use]
    pub fn purge_stats(&self) -> PurgeStats {
        let purger = &self.inner().purger;
        let pending_areas = purger.queues.iter().map(|q| q.with_pending(<[_]>::len)).sum();
        let pending_pages = purger.pending_pages.sum();
        PurgeStats {
            pending_areas,
            pending_pages,
            purges: purger.purges.load(Ordering::Relaxed),
            purged_areas: purger.purged_areas.load(Ordering::Relaxed),
            flushes: purger.flushes.load(Ordering::Relaxed),
        }
    }
}

/// When purges run.
#[cfg(all(test, feature = "std"))]
mod tests {
    use alloc::vec::Vec;

    use super::{PurgeMode, PAGE_SIZE};
    use crate::frame::FrameAllocOptions;
    use crate::kspace::{KVirtAreaError, KernelSpace, TinyLayout};
    use crate::page_prop::{CachePolicy, PageFlags, PageProperty};
    use crate::spec::Inv;
    use kvirt_sim::MachineConfig;

    const P: usize = PAGE_SIZE;

    fn rw() -> PageProperty {
        PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
    }

    fn lazy_without_threshold<L: crate::kspace::KernelLayout>(space: &KernelSpace<L>) {
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
    }

    #[test]
    fn lazy_for_cpus_is_linux_lazy_max_pages() {
        let pages = |cpus| match PurgeMode::lazy_for_cpus(cpus) {
            PurgeMode::Lazy { max_pending_pages } => max_pending_pages,
            PurgeMode::Eager => unreachable!(),
        };
        let mib32 = (32 << 20) / P;
        assert_eq!(pages(0), mib32, "no CPU counts as one");
        assert_eq!(pages(1), mib32);
        assert_eq!(pages(2), 2 * mib32);
        assert_eq!(pages(4), 3 * mib32);
        assert_eq!(pages(64), 7 * mib32);
    }

    #[test]
    fn a_purge_keeps_the_frames_it_frees_on_its_cpu_s_list() {
        // 16384 pages: each CPU's list may keep up to 1024 beyond its usual
        // 128 after a purge.
        let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20));
        lazy_without_threshold(&space);
        let areas: Vec<_> = (0..600)
            .map(|_| {
                let frame = FrameAllocOptions::new_in(&space).zeroed(false).alloc_frame().unwrap();
                space.try_map_frames(P, 0, [frame], rw()).unwrap()
            })
            .collect();
        let before = space.phys_stats();
        drop(areas);
        space.purge();
        let cached = space.phys().cached_pages(0);
        assert!(cached >= 600, "the purge's 600 frames stay on CPU 0's list, which holds {cached}");
        // They are free all the same: counted so, and anyone's to take.
        assert_eq!(space.phys_stats().free_pages, before.free_pages + 600);
        assert!(space.inv());
    }

    #[test]
    fn a_release_that_panics_still_ends_its_burst() {
        // A frame's metadata drop hook may panic in the middle of a purge's
        // release: the room the purge announced goes with it all the same.
        let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20));
        let opts = FrameAllocOptions::new_in(&space).zeroed(false);
        let others: Vec<_> = (0..400).map(|_| opts.alloc_frame().unwrap()).collect();
        let released = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            space.phys().freeing_pages(1000, || panic!("a drop hook panicked"));
        }));
        assert!(released.is_err());
        drop(others);
        let cached = space.phys().cached_pages(0);
        assert!(cached <= 128, "a burst that panicked let CPU 0's list hold {cached} pages");
        assert!(space.inv());
    }

    #[test]
    fn a_purge_that_frees_no_frame_leaves_no_room_on_its_list() {
        // The purge announces a page per mapped page, but frees no frame of
        // an area whose frames are still referenced: frees after it that
        // are no part of it must not pile up past the usual 128.
        let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20));
        lazy_without_threshold(&space);
        let opts = FrameAllocOptions::new_in(&space).zeroed(false);
        // Allocated first, so that taking them uses up no allowance.
        let others: Vec<_> = (0..400).map(|_| opts.alloc_frame().unwrap()).collect();
        let seg = opts.alloc_segment(512).unwrap();
        let area = space.try_map_frames(512 * P, 0, seg.clone(), rw()).unwrap();
        drop(area);
        space.purge();
        drop(others);
        let cached = space.phys().cached_pages(0);
        drop(seg);
        assert!(cached <= 128, "a purge that freed no frame let CPU 0's list hold {cached} pages");
        assert!(space.inv());
    }

    #[test]
    fn exhausted_vmalloc_purges_and_retries() {
        // The tiny layout's VMALLOC holds 16 pages: eight 1-page areas with
        // their guards.
        let space = KernelSpace::<TinyLayout>::hosted_with_layout(MachineConfig::new(4 << 20));
        lazy_without_threshold(&space);
        let fill = |space: &KernelSpace<TinyLayout>| {
            (0..8)
                .map(|_| {
                    space
                        .try_map_frames(P, 0, [FrameAllocOptions::new_in(space).alloc_frame().unwrap()], rw())
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        drop(fill(&space));
        assert_eq!(space.purge_stats().pending_areas, 8);
        assert_eq!(space.vmalloc_stats().free_bytes, 0, "the dead areas hold VMALLOC");
        let again = fill(&space);
        let stats = space.purge_stats();
        assert_eq!((stats.pending_areas, stats.purges, stats.purged_areas), (0, 1, 8));
        // With nothing pending, exhaustion is an error as before.
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        assert!(matches!(
            space.try_map_frames(P, 0, [frame], rw()),
            Err(KVirtAreaError::VmallocExhausted(_))
        ));
        drop(again);
        space.purge();
        assert!(space.inv());
    }

    #[test]
    fn exhausted_frame_allocator_purges_and_retries() {
        let space = KernelSpace::new_hosted(MachineConfig::new(4 << 20));
        lazy_without_threshold(&space);
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let area = space.try_map_frames(P, 0, [frame], rw()).unwrap();
        let mut hog = Vec::new();
        while let Ok(f) = FrameAllocOptions::new_in(&space).alloc_frame() {
            hog.push(f);
        }
        drop(area);
        assert_eq!(space.purge_stats().pending_areas, 1);
        // The dead area's frame is the only one left: taking it purges.
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().expect("the purge gives a frame back");
        assert_eq!(space.purge_stats().purges, 1);
        assert!(FrameAllocOptions::new_in(&space).alloc_frame().is_err(), "nothing else was pending");
        drop((frame, hog));
        assert!(space.inv());
    }

    #[test]
    fn page_table_memory_running_out_purges_and_resumes_the_mapping() {
        let space = KernelSpace::new_hosted(MachineConfig::new(8 << 20));
        lazy_without_threshold(&space);
        // An area of four frames, every other frame taken, then the area
        // dropped: only its purge can give memory back.
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let area = space.try_map_frames(4 * P, 0, frames, rw()).unwrap();
        let mut hog = Vec::new();
        while let Ok(f) = FrameAllocOptions::new_in(&space).alloc_frame() {
            hog.push(f);
        }
        drop(area);
        assert!(space.purge_stats().pending_areas == 1 && hog.len() > 512);
        // A 2 MiB area of held frames: its mapping needs page-table nodes
        // of its own.
        let frames: Vec<_> = hog.drain(..512).collect();
        let paddrs: Vec<_> = frames.iter().map(crate::frame::Frame::paddr).collect();
        let area = space.try_map_frames(512 * P, 0, frames, rw()).expect("the purge gives node memory back");
        assert_eq!(space.purge_stats().purges, 1);
        for (i, pa) in paddrs.iter().enumerate() {
            let item = area.query(area.start() + i * P).expect("every page mapped");
            assert!(matches!(item, crate::kspace::MappedItemRef::Tracked(f, _) if f.paddr() == *pa));
        }
        drop((area, hog));
        assert!(space.inv());
    }
}
