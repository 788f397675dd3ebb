//! Frame handles: [`Frame`], [`UFrame`] and [`FrameRef`].

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::Deref;
use core::ptr::NonNull;

use super::meta::{meta_is, AnyFrameMeta, AnyUFrameMeta, MetaPtr, MetaSlot};
use super::{bytes, FrameAccessError, PhysMem, SlotMap};
use crate::addr::{Paddr, PagingLevel, PAGE_SIZE};

/// A handle to one physical page with metadata of type `M`.
///
/// A `Frame` owns one reference to the page: cloning adds a reference,
/// dropping removes one, and dropping the last returns the page to the
/// allocator after running the metadata's drop hook. `M` is a concrete
/// metadata type, `dyn AnyFrameMeta` (any frame) or `dyn AnyUFrameMeta`
/// (any untyped frame, see [`UFrame`]). A frame whose one reference is this
/// handle can become a [`UniqueFrame`](super::UniqueFrame), whose metadata
/// is writable.
pub struct Frame<M: ?Sized> {
    /// The page's slot. Invariant: the slot holds metadata viewable as `M`,
    /// and this handle owns one of its references.
    slot: NonNull<MetaSlot>,
    _meta: PhantomData<M>,
}

/// A frame whose contents are untyped bytes.
pub type UFrame = Frame<dyn AnyUFrameMeta>;

// SAFETY: a frame handle is a counted reference to a slot whose metadata is
// `Send + Sync` (trait bounds) and whose count is atomic.
unsafe impl<M: ?Sized> Send for Frame<M> {}
// SAFETY: as for `Send`; shared handles only read the metadata.
unsafe impl<M: ?Sized> Sync for Frame<M> {}

impl<M: ?Sized> Frame<M> {
    /// Wraps a slot reference.
    ///
    /// # Safety
    ///
    /// The caller transfers one reference to the slot, whose metadata can be
    /// viewed as `M`.
    pub(crate) unsafe fn from_slot(slot: NonNull<MetaSlot>) -> Self {
        Self { slot, _meta: PhantomData }
    }

    #[inline]
    pub(crate) fn slot(&self) -> &MetaSlot {
        // SAFETY: the handle owns a reference, so the slot is alive; slots
        // live as long as their `PhysMem`, which outlives its frames.
        unsafe { self.slot.as_ref() }
    }

    #[inline]
    pub(crate) fn phys(&self) -> &PhysMem {
        // SAFETY: the handle owns a reference to the frame.
        let owner = unsafe { self.slot().owner() };
        // SAFETY: the owner outlives every frame it handed out (a kernel
        // space is never freed while frames are in use).
        unsafe { &*owner }
    }

    /// The physical address.
    #[must_use]
    #[inline]
    pub fn paddr(&self) -> Paddr {
        self.phys().slot_paddr(self.slot())
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

    /// The number of references (handles, page-table entries, segments).
    #[must_use]
    pub fn reference_count(&self) -> u64 {
        self.slot().live_references()
    }

    /// A borrow that does not touch the reference count.
    #[must_use]
    pub fn borrow(&self) -> FrameRef<'_, M> {
        // SAFETY: the borrow is tied to `self`, which keeps the reference
        // alive; `FrameRef` never drops it.
        unsafe { FrameRef::from_slot(self.slot, self.paddr()) }
    }

    /// Gives up the handle without dropping its reference; returns the
    /// physical address. [`Frame::from_raw`] takes the reference back.
    #[must_use = "the reference leaks unless passed to Frame::from_raw"]
    pub fn into_raw(self) -> Paddr {
        let pa = self.paddr();
        core::mem::forget(self);
        pa
    }

    /// The physical address if the frame belongs to the space whose slots
    /// `slots` describes, found from the handle alone.
    #[inline]
    pub(crate) fn paddr_in(&self, slots: SlotMap) -> Option<Paddr> {
        slots.paddr(self.slot.as_ptr())
    }

    /// Converts into a frame of any metadata type.
    #[must_use]
    pub fn into_dyn(self) -> Frame<dyn AnyFrameMeta>
    where
        M: AnyFrameMeta,
    {
        let this = ManuallyDrop::new(self);
        // SAFETY: every slot's metadata can be viewed as `dyn AnyFrameMeta`;
        // the reference moves from `this` to the result.
        unsafe { Frame::from_slot(this.slot) }
    }

    /// Re-types the handle after a successful check.
    fn cast<N: ?Sized>(self) -> Frame<N> {
        let this = ManuallyDrop::new(self);
        Frame { slot: this.slot, _meta: PhantomData }
    }
}

impl<M: ?Sized + MetaPtr> Frame<M> {
    /// The metadata.
    #[must_use]
    pub fn meta(&self) -> &M {
        // SAFETY: the handle owns a reference, so the slot holds metadata.
        let meta = unsafe { M::from_slot(self.slot()) }.expect("frame metadata is not of the handle's type");
        // SAFETY: the metadata is viewable as `M` (checked above) and lives
        // as long as `self` holds its reference.
        unsafe { &*meta }
    }
}

impl<M: ?Sized> Clone for Frame<M> {
    fn clone(&self) -> Self {
        self.slot().inc_ref();
        // SAFETY: we just added the reference the new handle owns.
        unsafe { Self::from_slot(self.slot) }
    }
}

impl<M: ?Sized> Drop for Frame<M> {
    fn drop(&mut self) {
        if self.slot().dec_ref() {
            // SAFETY: `dec_ref` returned true: we own the `BUSY` slot.
            unsafe { self.phys().free_frame(self.paddr()) };
        }
    }
}

impl<M: ?Sized> PartialEq for Frame<M> {
    fn eq(&self, other: &Self) -> bool {
        self.slot == other.slot
    }
}
impl<M: ?Sized> Eq for Frame<M> {}

impl<M: ?Sized> fmt::Debug for Frame<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("paddr", &format_args!("{:#x}", self.paddr()))
            .field("ref_count", &self.reference_count())
            .finish()
    }
}

impl<M: AnyFrameMeta> From<Frame<M>> for Frame<dyn AnyFrameMeta> {
    fn from(frame: Frame<M>) -> Self {
        frame.into_dyn()
    }
}

impl<M: AnyUFrameMeta> From<Frame<M>> for UFrame {
    fn from(frame: Frame<M>) -> Self {
        frame.cast()
    }
}

impl From<UFrame> for Frame<dyn AnyFrameMeta> {
    fn from(frame: UFrame) -> Self {
        frame.cast()
    }
}

impl<M: AnyFrameMeta> TryFrom<Frame<dyn AnyFrameMeta>> for Frame<M> {
    type Error = Frame<dyn AnyFrameMeta>;

    /// Down-casts to the concrete metadata type, or gives the frame back.
    fn try_from(frame: Frame<dyn AnyFrameMeta>) -> Result<Self, Self::Error> {
        if meta_is::<M>(frame.meta()) {
            Ok(frame.cast())
        } else {
            Err(frame)
        }
    }
}

impl TryFrom<Frame<dyn AnyFrameMeta>> for UFrame {
    type Error = Frame<dyn AnyFrameMeta>;

    /// Succeeds if the frame's metadata is untyped, or gives the frame back.
    fn try_from(frame: Frame<dyn AnyFrameMeta>) -> Result<Self, Self::Error> {
        if frame.meta().as_untyped().is_some() {
            Ok(frame.cast())
        } else {
            Err(frame)
        }
    }
}

/// Byte access to untyped frames.
impl<M: AnyUFrameMeta + ?Sized> Frame<M> {
    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameAccessError> {
        check_bounds(offset, buf.len(), PAGE_SIZE)?;
        let src = self.phys().phys_ptr(self.paddr()).wrapping_add(offset);
        // SAFETY: in bounds of the page (checked), so every aligned word
        // the copy touches is in the page too (pages are page aligned),
        // which is RAM the handle keeps alive; untyped contents are only
        // accessed through `bytes` or 8-byte atomics (Platform contract 1).
        unsafe { bytes::copy_from(src, buf) };
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), FrameAccessError> {
        check_bounds(offset, data.len(), PAGE_SIZE)?;
        let dst = self.phys().phys_ptr(self.paddr()).wrapping_add(offset);
        // SAFETY: as in `read_bytes`.
        unsafe { bytes::copy_to(data, dst) };
        Ok(())
    }

    /// Fills the whole frame with `value`.
    pub fn fill(&self, value: u8) {
        let dst = self.phys().phys_ptr(self.paddr());
        // SAFETY: as in `read_bytes`, for the whole page.
        unsafe { bytes::fill(dst, value, PAGE_SIZE) };
    }
}

pub(super) fn check_bounds(offset: usize, len: usize, size: usize) -> Result<(), FrameAccessError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(FrameAccessError::OutOfBounds { offset, len, size }),
    }
}

/// A borrowed frame: the handle of a frame owned elsewhere (for example by
/// a page-table entry), usable as `&Frame<M>` for `'a` without touching the
/// reference count.
pub struct FrameRef<'a, M: ?Sized> {
    inner: ManuallyDrop<Frame<M>>,
    /// The frame's physical address, which whoever borrows it knows already
    /// (a page-table walk reads it from the entry): kept so that `paddr`
    /// needs no trip through the metadata.
    paddr: Paddr,
    _borrow: PhantomData<&'a Frame<M>>,
}

impl<M: ?Sized> FrameRef<'_, M> {
    /// Borrows the frame of `slot`, at physical address `paddr`.
    ///
    /// # Safety
    ///
    /// Some owner keeps a reference to the slot, with metadata viewable as
    /// `M`, for the whole lifetime `'a` of the result; `slot` describes the
    /// page at `paddr`.
    pub(crate) unsafe fn from_slot(slot: NonNull<MetaSlot>, paddr: Paddr) -> Self {
        // SAFETY: the caller guarantees the reference stays alive; the
        // `ManuallyDrop` never drops it.
        let inner = ManuallyDrop::new(unsafe { Frame::from_slot(slot) });
        debug_assert_eq!(inner.paddr(), paddr);
        Self { inner, paddr, _borrow: PhantomData }
    }

    /// The physical address.
    #[must_use]
    #[inline]
    pub fn paddr(&self) -> Paddr {
        self.paddr
    }
}

impl<M: ?Sized> Deref for FrameRef<'_, M> {
    type Target = Frame<M>;

    fn deref(&self) -> &Frame<M> {
        &self.inner
    }
}

impl<M: ?Sized> Clone for FrameRef<'_, M> {
    fn clone(&self) -> Self {
        Self {
            inner: ManuallyDrop::new(Frame { slot: self.inner.slot, _meta: PhantomData }),
            paddr: self.paddr,
            _borrow: PhantomData,
        }
    }
}

impl<M: ?Sized> fmt::Debug for FrameRef<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FrameRef").field(&*self.inner).finish()
    }
}
