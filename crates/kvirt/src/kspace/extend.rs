//! What the kernel space adds to the types below it: the constructors that
//! take a kernel space, or use the process-wide default one.
//!
//! `frame` and `page_table` know nothing of kernel spaces; they work on a
//! space's physical memory (`PhysMem`). These inherent impls live here, with
//! the kernel space, so that the layering stays one-way (addresses and
//! formats, then frames, then page tables, then kernel spaces) while the
//! public paths stay where a user looks for them
//! (`kvirt::frame::FrameAllocOptions::new`, `kvirt::frame::Frame::from_raw`,
//! `kvirt::page_table::PageTable::empty_in`).

use super::{KernelLayout, KernelSpace};
use crate::addr::Paddr;
use crate::frame::{AnyFrameMeta, Frame, FrameAllocOptions};
use crate::page_table::{PageTable, PageTableAllocError, PageTableConfig};

impl FrameAllocOptions<'static> {
    /// Options for the default kernel space, zeroing on.
    #[must_use]
    pub fn new() -> Self {
        Self::for_phys(KernelSpace::global().phys())
    }
}

impl Default for FrameAllocOptions<'static> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> FrameAllocOptions<'a> {
    /// Options for `space`, zeroing on.
    #[must_use]
    pub fn new_in<L: KernelLayout>(space: &'a KernelSpace<L>) -> Self {
        Self::for_phys(space.phys())
    }
}

impl<M: AnyFrameMeta> Frame<M> {
    /// Takes back a reference given up by [`Frame::into_raw`], in the
    /// default kernel space.
    ///
    /// # Safety
    ///
    /// As for [`KernelSpace::frame_from_raw`] on the default kernel space:
    /// a page-aligned `paddr` of its RAM came from `into_raw` on a
    /// `Frame<M>` of that space, and each `into_raw` is matched by at most
    /// one `from_raw`.
    ///
    /// # Panics
    ///
    /// As for [`KernelSpace::frame_from_raw`]: if `paddr` is not page
    /// aligned or not RAM.
    #[must_use]
    pub unsafe fn from_raw(paddr: Paddr) -> Self {
        // SAFETY: forwarded to the caller.
        unsafe { KernelSpace::global().frame_from_raw(paddr) }
    }
}

impl<C: PageTableConfig> PageTable<C> {
    /// An empty page table whose nodes come from `space`. If the root's
    /// children cannot be unmapped (`TOP_LEVEL_CAN_UNMAP == false`), they are
    /// all created now.
    ///
    /// # Panics
    ///
    /// If the space's RAM reaches past the physical addresses `C`'s paging
    /// format can put in an entry (`PagingFormat::PA_BITS`), as it may for
    /// a format other than the space's own (the space checked that one).
    pub fn empty_in<L: KernelLayout>(space: &KernelSpace<L>) -> Result<Self, PageTableAllocError> {
        Self::empty(space.phys())
    }
}

/// The highest physical address of RAM (exclusive) in the default kernel
/// space: every page below it has a metadata slot.
#[must_use]
pub fn max_paddr() -> Paddr {
    KernelSpace::global().phys().max_paddr()
}
