//! The executable specification.
//!
//! kvirt's API follows `KVirtArea` of Asterinas OSTD, which OSTD's formally
//! verified port specifies in Verus against abstract views of the page
//! table, the frames and the areas. This module makes those views and
//! predicates plain Rust, so tests (and, with the `check-contracts`
//! feature, `query`, the constructors, `split`, the byte accessors and
//! `Drop` of `KVirtArea`: see `contracts`) can check them at run time:
//!
//! * **views**: [`PageTableView`] (the leaf mappings of a range, page by
//!   page), [`frame_ref_count`], [`KernelSpace::areas`];
//! * **invariants**: [`Inv::inv`] for [`KVirtArea`] and [`KernelSpace`]
//!   (which covers its page table, frame metadata, allocator, VMALLOC and
//!   registry);
//! * **the specification's predicates**: [`query_some_condition`],
//!   [`query_some_ensures`], [`query_none_ensures`], and the requires and
//!   panic conditions of `map_frames` and `map_untracked_frames`
//!   ([`map_frames_panic_condition`], [`map_frames_foreign_frame_condition`],
//!   [`map_untracked_frames_panic_condition`]).

#[cfg(feature = "check-contracts")]
pub(crate) mod contracts;

/// Runs `$run` inside its contract: `$requires` before it (its value bound
/// to `$before`) and `$ensures` after it (with the result bound to
/// `$result`), both only with the `check-contracts` feature; without it
/// this is `$run` alone. The one place where a public operation meets its
/// run-time contract (`contracts`).
macro_rules! contract {
    (requires: $requires:expr, run: $run:expr, ensures: |$before:pat_param, $result:ident| $ensures:expr $(,)?) => {{
        #[cfg(feature = "check-contracts")]
        let $before = $requires;
        let $result = $run;
        #[cfg(feature = "check-contracts")]
        $ensures;
        $result
    }};
}
pub(crate) use contract;
mod inv;

use alloc::collections::BTreeMap;
use core::ops::Range;

pub use crate::inv::Inv;

use crate::addr::{is_page_aligned, Paddr, PagingLevel, Vaddr, PAGE_SIZE};
use crate::arch::{page_size, PagingFormat};
use crate::frame::Frame;
use crate::kspace::{KVirtArea, KVirtAreaError, KernelLayout, KernelSpace};
use crate::page_prop::{PageProperty, PrivilegedPageFlags};
use crate::page_table::{Cursor, MappedItemRef, PageTableConfig};

/// One leaf mapping in the abstract view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The first virtual address.
    pub va: Vaddr,
    /// The physical address it maps.
    pub pa: Paddr,
    /// The page-table level of the leaf.
    pub level: PagingLevel,
    /// The page size (on x86-64: 4 KiB, 2 MiB or 1 GiB).
    pub size: usize,
    /// The property.
    pub prop: PageProperty,
    /// Whether a tracked frame is mapped.
    pub tracked: bool,
}

impl Mapping {
    /// The virtual range.
    #[must_use]
    pub fn va_range(&self) -> Range<Vaddr> {
        self.va..self.va.saturating_add(self.size)
    }
}

/// The leaf mappings of a range, keyed by virtual start address.
pub type PageTableView = BTreeMap<Vaddr, Mapping>;

/// Reads the abstract view of everything mapped in the cursor's range
/// (whole leaves, even where they extend past it).
pub fn view_of<C: PageTableConfig>(cursor: &mut Cursor<'_, C>) -> PageTableView {
    let range = cursor.range();
    let mut view = PageTableView::new();
    cursor.jump(range.start).expect("the start is inside");
    while let Some(va) = cursor.find_next(range.end - cursor.virt_addr()) {
        let (entry, item) = cursor.query().expect("find_next stops inside the range");
        let item = item.expect("find_next stops at a mapping");
        let (pa, tracked) = match &item {
            MappedItemRef::Tracked(f, _) => (f.paddr(), true),
            MappedItemRef::Untracked(pa, _, _) => (*pa, false),
        };
        let size = page_size::<C::F>(item.level());
        let (start, level, prop) = (entry.start, item.level(), item.prop());
        view.insert(start, Mapping { va: start, pa, level, size, prop, tracked });
        let next = entry.end.min(range.end).max(va + PAGE_SIZE);
        cursor.jump(next).expect("inside or at the end");
    }
    view
}

/// The kernel-space view of `range` (page aligned).
///
/// # Panics
///
/// Panics if the range is not a valid kernel range.
#[must_use]
pub fn kernel_view<L: KernelLayout>(space: &KernelSpace<L>, range: &Range<Vaddr>) -> PageTableView {
    view_of(&mut space.kernel_cursor(range).expect("a valid kernel range"))
}

/// The mapping covering `addr` in a view, if any.
#[must_use]
pub fn mapping_at(view: &PageTableView, addr: Vaddr) -> Option<&Mapping> {
    view.range(..=addr).next_back().map(|(_, m)| m).filter(|m| m.va_range().contains(&addr))
}

/// The specification's `query_some_condition`: something is mapped at the page
/// containing `addr`.
#[must_use]
pub fn query_some_condition(view: &PageTableView, addr: Vaddr) -> bool {
    mapping_at(view, addr).is_some()
}

/// The specification's `query_some_ensures`: `r` is the item of the mapping at
/// `addr`: same physical page (offset within a huge page accounted for),
/// same level and exactly the mapped property.
#[must_use]
pub fn query_some_ensures(view: &PageTableView, addr: Vaddr, r: &Option<MappedItemRef<'_>>) -> bool {
    let (Some(item), Some(m)) = (r, mapping_at(view, addr)) else { return false };
    item.paddr() == m.pa
        && item.level() == m.level
        && item.prop() == m.prop
        && matches!(item, MappedItemRef::Tracked(..)) == m.tracked
}

/// The specification's `query_none_ensures`.
#[must_use]
pub fn query_none_ensures(r: &Option<MappedItemRef<'_>>) -> bool {
    r.is_none()
}

/// The specification's requires of `KVirtArea::query`.
#[must_use]
pub fn query_requires<L: KernelLayout>(area: &KVirtArea<L>, addr: Vaddr) -> bool {
    area.inv() && area.start() <= addr && addr < area.end()
}

/// Whether `map_frames(area_size, map_offset, n frames, prop)` must panic
/// (the specification's panic conditions plus the cases where kvirt does better than OSTD, docs/DESIGN.md section 4), leaving out
/// running out of VMALLOC or memory.
#[must_use]
pub fn map_frames_panic_condition(
    area_size: usize,
    map_offset: usize,
    nr_frames: usize,
    prop: &PageProperty,
) -> bool {
    let len = nr_frames.checked_mul(PAGE_SIZE);
    area_size == 0
        || !is_page_aligned(area_size)
        || !is_page_aligned(map_offset)
        || map_offset >= area_size
        || len.and_then(|l| l.checked_add(map_offset)).is_none_or(|end| end > area_size)
        || prop.priv_flags.contains(PrivilegedPageFlags::USER)
}

/// Whether one of the frames handed to `map_frames` in `space` belongs to
/// another kernel space: the specification's `item_slot_in_regions` requirement (each
/// frame's slot is in the metadata regions of the page table it goes into)
/// made a checked panic condition, on top of [`map_frames_panic_condition`].
#[must_use]
pub fn map_frames_foreign_frame_condition<L: KernelLayout, T: ?Sized>(
    space: &KernelSpace<L>,
    frames: &[Frame<T>],
) -> bool {
    frames.iter().any(|f| !core::ptr::eq(f.phys(), space.phys()))
}

/// Whether `map_untracked_frames(area_size, map_offset, pa_range, prop)`
/// in `space` must panic, leaving out running out of VMALLOC or memory.
#[must_use]
pub fn map_untracked_frames_panic_condition<L: KernelLayout>(
    space: &KernelSpace<L>,
    area_size: usize,
    map_offset: usize,
    pa_range: &Range<Paddr>,
    prop: &PageProperty,
) -> bool {
    let reversed = pa_range.start > pa_range.end;
    let len = pa_range.end.wrapping_sub(pa_range.start);
    reversed
        || area_size == 0
        || !is_page_aligned(area_size)
        || !is_page_aligned(map_offset)
        || map_offset >= area_size
        || !is_page_aligned(pa_range.start)
        || !is_page_aligned(pa_range.end)
        || map_offset.checked_add(len).is_none_or(|end| end > area_size)
        || pa_range.end > 1 << <L::Format as PagingFormat>::PA_BITS
        || space.check_untracked(pa_range).is_err()
        || prop.priv_flags.contains(PrivilegedPageFlags::USER)
}

/// Whether an error is one of the conditions outside the caller's control
/// (exhaustion), which the specification leaves unspecified.
#[must_use]
pub fn is_resource_error(e: &KVirtAreaError) -> bool {
    matches!(e, KVirtAreaError::VmallocExhausted(_) | KVirtAreaError::OutOfMemory)
}

/// The reference count of the frame at `pa` in `space` (a snapshot): the
/// live references, so 1 for a [`UniqueFrame`](crate::frame::UniqueFrame)
/// and 0 for a free page.
#[must_use]
pub fn frame_ref_count<L: KernelLayout>(space: &KernelSpace<L>, pa: Paddr) -> u64 {
    space.phys().slot(pa).live_references()
}

/// The page-table level of a leaf of `size` bytes in format `F`.
#[must_use]
pub fn level_of_size<F: PagingFormat>(size: usize) -> Option<PagingLevel> {
    (1..=F::HIGHEST_LEAF_LEVEL).find(|&l| page_size::<F>(l) == size)
}
