//! Physically contiguous runs of frames.

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::Range;
use core::ptr::NonNull;

use super::handle::check_bounds;
use super::meta::{meta_is, AnyFrameMeta, AnyUFrameMeta, MetaPtr};
use super::{bytes, Frame, FrameAccessError, PhysMem};
use crate::addr::{is_page_aligned, Paddr, PAGE_SIZE};

/// A physically contiguous, non-empty run of frames with metadata `M`,
/// holding one reference to each page.
pub struct Segment<M: ?Sized> {
    /// The pages. Invariant: non-empty, page aligned, every page's slot
    /// holds metadata viewable as `M` and one reference owned by `self`.
    range: Range<Paddr>,
    /// The physical memory the pages belong to.
    phys: NonNull<PhysMem>,
    _meta: PhantomData<M>,
}

/// A segment of untyped frames: physically contiguous memory whose bytes
/// may be read and written (DMA buffers, page caches).
pub type USegment = Segment<dyn AnyUFrameMeta>;

// SAFETY: like `Frame`: counted references to `Send + Sync` metadata.
unsafe impl<M: ?Sized> Send for Segment<M> {}
// SAFETY: as for `Send`.
unsafe impl<M: ?Sized> Sync for Segment<M> {}

/// Why a segment operation was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// An offset or range bound is not a multiple of [`PAGE_SIZE`].
    Misaligned,
    /// The offset or range is empty or reaches past the segment.
    OutOfBounds {
        /// The requested byte range within the segment.
        requested: Range<usize>,
        /// The segment's size in bytes.
        size: usize,
    },
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentError::Misaligned => f.write_str("segment offsets must be page aligned"),
            SegmentError::OutOfBounds { requested, size } => {
                write!(f, "range {requested:#x?} is empty or out of bounds of a segment of {size:#x} bytes")
            }
        }
    }
}

impl core::error::Error for SegmentError {}

impl<M: ?Sized> Segment<M> {
    /// Wraps pages whose references the caller transfers.
    ///
    /// # Safety
    ///
    /// `range` is non-empty and page aligned, belongs to `phys`, and the
    /// caller transfers one reference to every page in it, each with
    /// metadata viewable as `M`.
    pub(crate) unsafe fn from_raw_parts(phys: &PhysMem, range: Range<Paddr>) -> Self {
        debug_assert!(!range.is_empty() && is_page_aligned(range.start) && is_page_aligned(range.end));
        Self { range, phys: NonNull::from(phys), _meta: PhantomData }
    }

    fn phys(&self) -> &PhysMem {
        // SAFETY: the segment holds references to pages of this `PhysMem`,
        // which outlives them.
        unsafe { self.phys.as_ref() }
    }

    /// The physical address of the first page.
    #[must_use]
    pub fn paddr(&self) -> Paddr {
        self.range.start
    }

    /// The physical end address.
    #[must_use]
    pub fn end_paddr(&self) -> Paddr {
        self.range.end
    }

    /// The size in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.range.len()
    }

    /// The size in bytes (alias of [`size`](Self::size)).
    #[must_use]
    pub fn nbytes(&self) -> usize {
        self.range.len()
    }

    /// The number of pages.
    #[must_use]
    pub fn nr_pages(&self) -> usize {
        self.range.len() / PAGE_SIZE
    }

    /// Splits at byte `offset` (page aligned, `0 < offset < size`).
    ///
    /// # Panics
    ///
    /// Panics if `offset` is misaligned or not strictly inside; see
    /// [`try_split`](Self::try_split).
    #[must_use]
    pub fn split(self, offset: usize) -> (Self, Self) {
        match self.try_split(offset) {
            Ok(halves) => halves,
            Err((_, e)) => panic!("Segment::split: {e}"),
        }
    }

    /// Splits at byte `offset`, or gives the segment back with the reason.
    #[allow(clippy::type_complexity, reason = "the pair of halves is the natural result")]
    pub fn try_split(self, offset: usize) -> Result<(Self, Self), (Self, SegmentError)> {
        if !is_page_aligned(offset) {
            return Err((self, SegmentError::Misaligned));
        }
        if offset == 0 || offset >= self.size() {
            let size = self.size();
            return Err((self, SegmentError::OutOfBounds { requested: offset..offset, size }));
        }
        let this = ManuallyDrop::new(self);
        let mid = this.range.start + offset;
        let make = |range| Segment { range, phys: this.phys, _meta: PhantomData };
        Ok((make(this.range.start..mid), make(mid..this.range.end)))
    }

    /// A new segment over byte `range` of this one (page aligned, non-empty,
    /// inside), holding its own references.
    ///
    /// # Panics
    ///
    /// Panics if the range is misaligned, empty or out of bounds; see
    /// [`try_slice`](Self::try_slice).
    #[must_use]
    pub fn slice(&self, range: &Range<usize>) -> Self {
        self.try_slice(range).unwrap_or_else(|e| panic!("Segment::slice: {e}"))
    }

    /// Like [`slice`](Self::slice), with a typed error.
    pub fn try_slice(&self, range: &Range<usize>) -> Result<Self, SegmentError> {
        if !is_page_aligned(range.start) || !is_page_aligned(range.end) {
            return Err(SegmentError::Misaligned);
        }
        if range.start >= range.end || range.end > self.size() {
            return Err(SegmentError::OutOfBounds { requested: range.clone(), size: self.size() });
        }
        let pa = self.range.start + range.start..self.range.start + range.end;
        for page in pa.clone().step_by(PAGE_SIZE) {
            self.phys().slot(page).inc_ref();
        }
        Ok(Segment { range: pa, phys: self.phys, _meta: PhantomData })
    }

    /// Converts into a segment of any metadata type.
    #[must_use]
    pub fn into_dyn(self) -> Segment<dyn AnyFrameMeta>
    where
        M: AnyFrameMeta,
    {
        self.cast()
    }

    fn cast<N: ?Sized>(self) -> Segment<N> {
        let this = ManuallyDrop::new(self);
        Segment { range: this.range.clone(), phys: this.phys, _meta: PhantomData }
    }
}

impl<M: ?Sized + MetaPtr> Segment<M> {
    /// The metadata of the page at byte `offset`.
    ///
    /// # Panics
    ///
    /// Panics if `offset` is out of bounds.
    #[must_use]
    pub fn meta_at(&self, offset: usize) -> &M {
        assert!(offset < self.size(), "offset {offset:#x} out of bounds of the segment");
        let slot = self.phys().slot(self.range.start + offset);
        // SAFETY: the segment owns a reference to the page, so the slot holds
        // metadata.
        let meta = unsafe { M::from_slot(slot) }.expect("segment metadata is not of the handle's type");
        // SAFETY: the metadata is viewable as `M` (checked above) and lives
        // while `self` holds its reference.
        unsafe { &*meta }
    }
}

impl<M: ?Sized> Clone for Segment<M> {
    /// Adds one reference to every page.
    fn clone(&self) -> Self {
        for page in self.range.clone().step_by(PAGE_SIZE) {
            self.phys().slot(page).inc_ref();
        }
        Segment { range: self.range.clone(), phys: self.phys, _meta: PhantomData }
    }
}

impl<M: ?Sized> Drop for Segment<M> {
    fn drop(&mut self) {
        let phys = self.phys();
        for page in self.range.clone().step_by(PAGE_SIZE) {
            let slot = phys.slot(page);
            if slot.dec_ref() {
                // SAFETY: `dec_ref` returned true: we own the `BUSY` slot.
                unsafe { phys.free_frame(page) };
            }
        }
    }
}

impl<M: ?Sized> fmt::Debug for Segment<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment").field("range", &format_args!("{:#x?}", self.range)).finish()
    }
}

/// Iterates over the pages as frames, each taking over its page's reference.
#[derive(Debug)]
pub struct SegmentIntoIter<M: ?Sized> {
    rest: Option<Segment<M>>,
}

impl<M: ?Sized> Iterator for SegmentIntoIter<M> {
    type Item = Frame<M>;

    fn next(&mut self) -> Option<Frame<M>> {
        let seg = self.rest.take()?;
        let first = seg.range.start;
        let slot = NonNull::from(seg.phys().slot(first));
        if seg.nr_pages() > 1 {
            let this = ManuallyDrop::new(seg);
            self.rest = Some(Segment {
                range: first + PAGE_SIZE..this.range.end,
                phys: this.phys,
                _meta: PhantomData,
            });
        } else {
            core::mem::forget(seg);
        }
        // SAFETY: the first page's reference moves from the segment (which
        // no longer covers it) to the frame; its metadata is viewable as `M`.
        Some(unsafe { Frame::from_slot(slot) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.as_ref().map_or(0, Segment::nr_pages);
        (n, Some(n))
    }
}

impl<M: ?Sized> ExactSizeIterator for SegmentIntoIter<M> {}

impl<M: ?Sized> IntoIterator for Segment<M> {
    type Item = Frame<M>;
    type IntoIter = SegmentIntoIter<M>;

    fn into_iter(self) -> SegmentIntoIter<M> {
        SegmentIntoIter { rest: Some(self) }
    }
}

impl<M: ?Sized> From<Frame<M>> for Segment<M> {
    fn from(frame: Frame<M>) -> Self {
        let pa = frame.paddr();
        let phys = NonNull::from(frame.phys());
        core::mem::forget(frame);
        Segment { range: pa..pa + PAGE_SIZE, phys, _meta: PhantomData }
    }
}

impl<M: AnyFrameMeta> From<Segment<M>> for Segment<dyn AnyFrameMeta> {
    fn from(seg: Segment<M>) -> Self {
        seg.cast()
    }
}

impl<M: AnyUFrameMeta> From<Segment<M>> for USegment {
    fn from(seg: Segment<M>) -> Self {
        seg.cast()
    }
}

impl From<USegment> for Segment<dyn AnyFrameMeta> {
    fn from(seg: USegment) -> Self {
        seg.cast()
    }
}

impl<M: AnyFrameMeta> TryFrom<Segment<dyn AnyFrameMeta>> for Segment<M> {
    type Error = Segment<dyn AnyFrameMeta>;

    /// Down-casts if every page has metadata of type `M`, or gives the
    /// segment back.
    fn try_from(seg: Segment<dyn AnyFrameMeta>) -> Result<Self, Self::Error> {
        let all_m = (0..seg.size()).step_by(PAGE_SIZE).all(|off| meta_is::<M>(seg.meta_at(off)));
        if all_m {
            Ok(seg.cast())
        } else {
            Err(seg)
        }
    }
}

impl TryFrom<Segment<dyn AnyFrameMeta>> for USegment {
    type Error = Segment<dyn AnyFrameMeta>;

    /// Succeeds if every page is untyped, or gives the segment back.
    fn try_from(seg: Segment<dyn AnyFrameMeta>) -> Result<Self, Self::Error> {
        let all_untyped =
            (0..seg.size()).step_by(PAGE_SIZE).all(|off| seg.meta_at(off).as_untyped().is_some());
        if all_untyped {
            Ok(seg.cast())
        } else {
            Err(seg)
        }
    }
}

/// Byte access to untyped segments.
impl<M: AnyUFrameMeta + ?Sized> Segment<M> {
    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), FrameAccessError> {
        check_bounds(offset, buf.len(), self.size())?;
        let src = self.phys().phys_ptr(self.range.start).wrapping_add(offset);
        // SAFETY: in bounds of the run (checked), so every aligned word the
        // copy touches is in the run too (it is page aligned), which is
        // contiguous RAM the segment keeps alive; untyped contents are only
        // accessed through `bytes` or 8-byte atomics (Platform contract 1).
        unsafe { bytes::copy_from(src, buf) };
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), FrameAccessError> {
        check_bounds(offset, data.len(), self.size())?;
        let dst = self.phys().phys_ptr(self.range.start).wrapping_add(offset);
        // SAFETY: as in `read_bytes`.
        unsafe { bytes::copy_to(data, dst) };
        Ok(())
    }
}
