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
//!   immortal space:  create, drop = nothing
//! ```
//!
//! The count is one cache line that every CPU creating or dropping areas
//! writes, twice per area; an immortal space takes that line out of the
//! path.
//!
//! [`KernelSpace::leak`]: super::KernelSpace::leak
//! [`KernelSpace::init_global`]: super::KernelSpace::init_global

use alloc::sync::Arc;
use core::ops::Deref;
use core::sync::atomic::Ordering;

use super::layout::KernelLayout;
use super::SpaceInner;

/// A handle to an area's space: counted, or a reference to a space that is
/// never freed.
pub(super) enum SpaceRef<L: KernelLayout> {
    /// One of the counts that keep the space alive.
    Counted(Arc<SpaceInner<L>>),
    /// A space with a count that is never given back
    /// (`SpaceInner::immortal`).
    Immortal(&'static SpaceInner<L>),
}

impl<L: KernelLayout> SpaceRef<L> {
    /// A handle to the space `space` counts.
    pub(super) fn new(space: &Arc<SpaceInner<L>>) -> Self {
        if space.immortal.load(Ordering::Acquire) {
            // SAFETY: `immortal` is set only after a count of the space was
            // leaked (`KernelSpace::leak`, the default space), so the count
            // never drops to zero and the allocation is never freed: the
            // space lives, unmoved, for the rest of the program.
            Self::Immortal(unsafe { &*Arc::as_ptr(space) })
        } else {
            Self::Counted(Arc::clone(space))
        }
    }

    /// A counted handle to the same space.
    #[cfg(feature = "check-contracts")]
    pub(super) fn to_arc(&self) -> Arc<SpaceInner<L>> {
        match self {
            Self::Counted(space) => Arc::clone(space),
            Self::Immortal(space) => {
                let ptr: *const SpaceInner<L> = *space;
                // SAFETY: an immortal space is the allocation of an `Arc`
                // (`new`) whose count never drops to zero.
                unsafe { Arc::increment_strong_count(ptr) };
                // SAFETY: as above; the count just taken is given back by
                // the `Arc` made from it.
                unsafe { Arc::from_raw(ptr) }
            }
        }
    }
}

impl<L: KernelLayout> Clone for SpaceRef<L> {
    fn clone(&self) -> Self {
        match self {
            Self::Counted(space) => Self::Counted(Arc::clone(space)),
            Self::Immortal(space) => Self::Immortal(space),
        }
    }
}

impl<L: KernelLayout> Deref for SpaceRef<L> {
    type Target = SpaceInner<L>;

    #[inline]
    fn deref(&self) -> &SpaceInner<L> {
        match self {
            Self::Counted(space) => space,
            Self::Immortal(space) => space,
        }
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
    fn the_default_space_is_never_torn_down() {
        assert!(KernelSpace::global().inner.immortal.load(Ordering::Acquire));
    }

    #[test]
    fn areas_of_a_leaked_space_hold_no_count_of_it() {
        assert_eq!(counts_held_by_areas(space().leak()), 0);
    }
}
