//! [`UniqueFrame`]: a frame owned by one handle, with mutable metadata.

use core::fmt;
use core::mem::ManuallyDrop;

use super::meta::AnyFrameMeta;
use super::Frame;
use crate::addr::{Paddr, PagingLevel, PAGE_SIZE};

/// A frame owned by this handle alone, whose metadata it may change.
///
/// A [`Frame`] is one of possibly many references, so it gives only `&M`.
/// A `UniqueFrame` is the only handle of its page: no `Frame`, segment,
/// page-table entry or raw reference exists beside it, so it gives
/// `&mut M` ([`meta_mut`](Self::meta_mut)). Its slot is in the `UNIQUE`
/// state of the reference count (the `ref_count` module docs), which counts
/// as one live reference.
///
/// * Made by [`FrameAllocOptions::alloc_unique_frame_with`](super::FrameAllocOptions::alloc_unique_frame_with),
///   or from a `Frame` whose reference is the only one
///   (`UniqueFrame::try_from(frame)`, which hands the frame back if it is
///   shared).
/// * Turned into a shared `Frame` with one reference by `Frame::from`.
/// * Dropping it runs the metadata's drop hook and returns the page to the
///   allocator, exactly as dropping the last reference of a `Frame` does.
///
/// ```
/// use kvirt::frame::{Frame, FrameAllocOptions, UniqueFrame};
///
/// #[derive(Debug)]
/// struct Counter { value: u64 }
/// kvirt::impl_frame_meta!(Counter);
///
/// let mut unique = FrameAllocOptions::new().alloc_unique_frame_with(Counter { value: 1 }).unwrap();
/// unique.meta_mut().value += 1;
/// let shared = Frame::from(unique);
/// let other = shared.clone();
/// assert_eq!(other.meta().value, 2);
/// // Two references: the frame cannot be unique now.
/// let shared = UniqueFrame::try_from(shared).unwrap_err();
/// drop(other);
/// assert!(UniqueFrame::try_from(shared).is_ok());
/// ```
pub struct UniqueFrame<M: AnyFrameMeta> {
    /// The page, seen through a `Frame` handle so that the accessors are
    /// `Frame`'s own. Invariant: the slot is `UNIQUE`, holds metadata of
    /// type `M`, and this handle is the only reference to it of any kind;
    /// `frame` therefore owns no counted reference and is never dropped or
    /// cloned as a `Frame`, only read.
    frame: ManuallyDrop<Frame<M>>,
}

// SAFETY: the handle owns the frame alone; its metadata is `Send + Sync`
// (trait bounds).
unsafe impl<M: AnyFrameMeta> Send for UniqueFrame<M> {}
// SAFETY: a shared `&UniqueFrame` gives only `&M`, and `M` is `Sync`.
unsafe impl<M: AnyFrameMeta> Sync for UniqueFrame<M> {}

impl<M: AnyFrameMeta> UniqueFrame<M> {
    /// The physical address.
    #[must_use]
    pub fn paddr(&self) -> Paddr {
        self.frame.paddr()
    }

    /// The size in bytes (always [`PAGE_SIZE`]).
    #[must_use]
    pub const fn size(&self) -> usize {
        PAGE_SIZE
    }

    /// The page-table level at which the frame is mapped (always 1).
    #[must_use]
    pub const fn map_level(&self) -> PagingLevel {
        1
    }

    /// The number of live references: always 1, this handle. (The slot's
    /// count holds `REF_COUNT_UNIQUE`, a state rather than a number; see
    /// `ref_count::live_references`.)
    #[must_use]
    pub fn reference_count(&self) -> u64 {
        self.frame.reference_count()
    }

    /// The metadata.
    #[must_use]
    pub fn meta(&self) -> &M {
        self.frame.meta()
    }

    /// The metadata, to change. Whoever holds the frame next (as this
    /// `UniqueFrame` or as a `Frame` made from it) sees the changes.
    #[must_use]
    pub fn meta_mut(&mut self) -> &mut M {
        // SAFETY: the slot holds an `M` (type invariant) in its `UnsafeCell`
        // storage, which the pointer was derived from; this handle is the
        // only reference to the frame, so nothing else reads or writes the
        // metadata while `self` is borrowed mutably.
        unsafe { &mut *self.frame.slot().storage_ptr().cast::<M>().cast_mut() }
    }
}

impl<M: AnyFrameMeta> TryFrom<Frame<M>> for UniqueFrame<M> {
    type Error = Frame<M>;

    /// Makes the frame unique if `frame` is its only reference (no clone,
    /// segment, page-table entry or raw reference exists); otherwise gives
    /// the frame back unchanged.
    fn try_from(frame: Frame<M>) -> Result<Self, Frame<M>> {
        if !frame.slot().try_make_unique() {
            return Err(frame);
        }
        // The frame's reference became the unique ownership, which the
        // handle now stands for.
        Ok(Self { frame: ManuallyDrop::new(frame) })
    }
}

impl<M: AnyFrameMeta> From<UniqueFrame<M>> for Frame<M> {
    /// Shares the frame: the result holds its one reference.
    fn from(unique: UniqueFrame<M>) -> Self {
        let unique = ManuallyDrop::new(unique);
        unique.frame.slot().share_unique();
        // `share_unique` turned the unique ownership into one reference,
        // which the view now owns.
        // SAFETY: `unique` is never used or dropped again.
        ManuallyDrop::into_inner(unsafe { core::ptr::read(&unique.frame) })
    }
}

impl<M: AnyFrameMeta> Drop for UniqueFrame<M> {
    fn drop(&mut self) {
        let pa = self.paddr();
        self.frame.slot().begin_unique_tear_down();
        // SAFETY: the slot was `UNIQUE`, owned by this handle, and is now
        // `BUSY`, owned by this thread; this runs once.
        unsafe { self.frame.phys().free_frame(pa) };
    }
}

impl<M: AnyFrameMeta> fmt::Debug for UniqueFrame<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UniqueFrame")
            .field("paddr", &format_args!("{:#x}", self.paddr()))
            .field("meta", self.meta())
            .finish()
    }
}
