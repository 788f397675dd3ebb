//! How an area holds its kernel space.
//!
//! An area must keep its space alive until its drop has finished with it.
//! A space that may be torn down (a test's, a tool's) is reference counted:
//! each of its areas holds one count. A kernel's space lives as long as
//! the machine runs ([`KernelSpace::leak`], and the default space of
//! [`KernelSpace::init_global`]); one count of it is never given back, so
//! it is never freed, and its areas hold a plain reference instead:
//!
//! ```text
//!   counted space:   create  = fetch_add on the space's count
//!                    drop    = fetch_sub, the last one tears down
//!   immortal space:  create, drop = a load of the immortal mark
//! ```
//!
//! The count is one cache line that every CPU creating or dropping areas
//! writes, twice per area; an immortal space takes that line out of the
//! path.
//!
//! [`KernelSpace::leak`]: super::KernelSpace::leak
//! [`KernelSpace::init_global`]: super::KernelSpace::init_global

use alloc::sync::Arc;
use core::marker::PhantomData;
use core::ops::Deref;
use core::sync::atomic::Ordering;

use super::layout::KernelLayout;
use super::SpaceInner;

/// A handle to an area's space: one pointer, so an area stays as small as
/// with an `Arc`.
pub(super) struct SpaceRef<L: KernelLayout> {
    /// The space, in the allocation of the `Arc`s that count it.
    /// Invariant: this handle holds one count of it, or the space is
    /// immortal (`SpaceInner::immortal`, which never goes back to false).
    /// A handle made before the space became immortal holds a count that
    /// it never gives back: an immortal space is never freed anyway.
    /// A pointer from `Arc::as_ptr`, so that it may go back to an `Arc`
    /// (its provenance covers the counts; a reference to the space would
    /// cover only the space).
    space: *const SpaceInner<L>,
    _owns: PhantomData<Arc<SpaceInner<L>>>,
}

// SAFETY: the handle stands for an `Arc<SpaceInner<L>>` (or a `&'static`
// one), which is `Send` and `Sync` since `SpaceInner` is both.
unsafe impl<L: KernelLayout> Send for SpaceRef<L> where Arc<SpaceInner<L>>: Send {}
// SAFETY: as for `Send`.
unsafe impl<L: KernelLayout> Sync for SpaceRef<L> where Arc<SpaceInner<L>>: Sync {}

impl<L: KernelLayout> SpaceRef<L> {
    /// A handle to the space `space` counts.
    pub(super) fn new(space: &Arc<SpaceInner<L>>) -> Self {
        // SAFETY: from `Arc::as_ptr` of a live `Arc`.
        unsafe { Self::counting(Arc::as_ptr(space)) }
    }

    /// A new handle to `space`, which takes a count of it unless the space
    /// is immortal.
    ///
    /// # Safety
    ///
    /// `space` comes from `Arc::as_ptr`, and the space is alive during the
    /// call.
    unsafe fn counting(space: *const SpaceInner<L>) -> Self {
        // SAFETY: the space is alive (caller's contract).
        if !unsafe { &*space }.immortal.load(Ordering::Acquire) {
            // SAFETY: `space` lives in the allocation of an `Arc`, alive;
            // the new handle holds the count taken (type invariant).
            unsafe { Arc::increment_strong_count(space) };
        }
        Self { space, _owns: PhantomData }
    }

    /// A counted handle to the same space.
    #[cfg(feature = "check-contracts")]
    pub(super) fn to_arc(&self) -> Arc<SpaceInner<L>> {
        let ptr = self.space;
        // SAFETY: the space is alive (type invariant) and lives in the
        // allocation of an `Arc`.
        unsafe { Arc::increment_strong_count(ptr) };
        // SAFETY: as above; the count just taken is the new `Arc`'s.
        unsafe { Arc::from_raw(ptr) }
    }
}

impl<L: KernelLayout> Clone for SpaceRef<L> {
    fn clone(&self) -> Self {
        // SAFETY: the pointer came from `Arc::as_ptr` (type invariant), and
        // the space lives while this handle does.
        unsafe { Self::counting(self.space) }
    }
}

impl<L: KernelLayout> Drop for SpaceRef<L> {
    fn drop(&mut self) {
        // Seen immortal: nothing to give back (the space made immortal
        // after this handle counted it keeps that count for good).
        if !self.immortal.load(Ordering::Acquire) {
            // SAFETY: the space is not immortal, so it has never been, and
            // this handle holds a count of it (type invariant), given back
            // here once; the last count tears the space down.
            unsafe { Arc::decrement_strong_count(self.space) };
        }
    }
}

impl<L: KernelLayout> Deref for SpaceRef<L> {
    type Target = SpaceInner<L>;

    #[inline]
    fn deref(&self) -> &SpaceInner<L> {
        // SAFETY: the space lives while this handle does (type invariant).
        unsafe { &*self.space }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::addr::PAGE_SIZE;
    use crate::frame::FrameAllocOptions;
    use crate::kspace::{KVirtArea, KernelSpace};
    use crate::page_prop::{CachePolicy, PageFlags, PageProperty};
    use crate::spec::Inv;

    fn space() -> KernelSpace {
        KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20))
    }

    fn two_pages(space: &KernelSpace) -> KVirtArea {
        let frames = FrameAllocOptions::new_in(space).alloc_segment(2).unwrap();
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        space.try_map_frames(2 * PAGE_SIZE, 0, frames, prop).unwrap()
    }

    /// Creates, splits and drops areas of `space`; returns how many counts
    /// of the space its areas held at the most.
    fn counts_held_by_areas(space: &KernelSpace) -> usize {
        space.synchronize();
        let (stats, before) = (space.phys_stats(), Arc::strong_count(&space.inner));
        let area = two_pages(space);
        area.write_bytes(PAGE_SIZE, b"kept").unwrap();
        let (left, right) = area.split(PAGE_SIZE);
        let held = Arc::strong_count(&space.inner) - before;
        let mut back = [0; 4];
        right.read_bytes(0, &mut back).unwrap();
        assert_eq!(&back, b"kept");
        assert!(left.inv() && right.inv() && space.inv());
        drop((left, right));
        space.synchronize();
        assert_eq!(Arc::strong_count(&space.inner), before);
        assert_eq!(space.phys_stats(), stats);
        assert!(space.inv());
        held
    }

    #[test]
    fn areas_of_a_space_that_may_be_torn_down_hold_a_count_each() {
        assert_eq!(counts_held_by_areas(&space()), 2);
    }

    #[test]
    fn a_handle_is_one_pointer_as_an_arc_is() {
        assert_eq!(size_of::<SpaceRef<crate::kspace::X86_64Layout>>(), size_of::<usize>());
    }

    #[test]
    fn the_default_space_is_never_torn_down() {
        assert!(KernelSpace::global().inner.immortal.load(Ordering::Acquire));
    }

    #[test]
    fn areas_of_a_leaked_space_hold_no_count_of_it() {
        assert_eq!(counts_held_by_areas(space().leak()), 0);
    }
}
