//! What can go wrong with a page table, as values.
//!
//! Every error of the page-table module lives here, below everything else
//! in it: a bad cursor range ([`RangeError`]), an address outside a
//! cursor's range ([`OutOfCursorRange`]), a rejected mapping ([`MapError`],
//! which hands the item back, and its reason [`MapErrorKind`]), and running
//! out of memory for a node ([`PageTableAllocError`]).

use core::fmt;
use core::ops::Range;

use super::item::MappedItem;
use crate::addr::Vaddr;

/// Why a cursor could not be created over a range.
///
/// No range can cover the last page of the address space
/// (`0xffff_ffff_ffff_f000..`): its exclusive end would be 2^64 (see
/// [`PageTable`](super::PageTable), "The last page").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// `start == end`.
    Empty,
    /// `start > end`.
    Reversed,
    /// `start` or `end` is not page aligned.
    Misaligned,
    /// The range leaves the addresses this kind of table covers.
    OutOfBounds,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RangeError::Empty => "the range is empty",
            RangeError::Reversed => "the range is reversed",
            RangeError::Misaligned => "the range is not page aligned",
            RangeError::OutOfBounds => "the range is outside the page table's address range",
        })
    }
}

impl core::error::Error for RangeError {}

/// A virtual address outside a cursor's range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfCursorRange {
    /// The address.
    pub va: Vaddr,
    /// The cursor's range.
    pub range: Range<Vaddr>,
}

impl fmt::Display for OutOfCursorRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "address {:#x} is outside the cursor's range {:#x?} (or misaligned)", self.va, self.range)
    }
}

impl core::error::Error for OutOfCursorRange {}

/// Why a mapping was rejected; carries the item back.
#[derive(Debug)]
pub struct MapError {
    /// What was wrong.
    pub kind: MapErrorKind,
    /// The item, returned unmapped.
    pub item: MappedItem,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl core::error::Error for MapError {}

/// What was wrong with a mapping request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapErrorKind {
    /// The page does not fit between the cursor's address and the end of
    /// its range (for [`PageTable::try_map_frame`], which makes no cursor
    /// first: the page lies outside the addresses the table covers).
    ///
    /// [`PageTable::try_map_frame`]: super::PageTable::try_map_frame
    OutOfRange,
    /// The virtual or physical address is not aligned to the page size.
    Misaligned,
    /// The format cannot map a leaf at this level.
    UnsupportedLevel,
    /// The physical address is beyond what the format can encode.
    PaddrTooLarge,
    /// Something is mapped there already.
    AlreadyMapped,
    /// No memory for a page-table node.
    OutOfMemory,
    /// The tracked frame belongs to another kernel space than the page
    /// table (its reference and metadata live in that space).
    ForeignFrame,
}

impl fmt::Display for MapErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MapErrorKind::OutOfRange => "the page does not fit in the cursor's remaining range",
            MapErrorKind::Misaligned => "the address is not aligned for mapping at this level",
            MapErrorKind::UnsupportedLevel => "the paging format cannot map a page at this level",
            MapErrorKind::PaddrTooLarge => "the physical address is beyond what the paging format encodes",
            MapErrorKind::AlreadyMapped => "mapping over an already mapped page",
            MapErrorKind::OutOfMemory => "out of memory for page-table nodes",
            MapErrorKind::ForeignFrame => "the frame belongs to another kernel space",
        })
    }
}

impl core::error::Error for MapErrorKind {}

/// No memory was left for a page-table node (creating a page table, or
/// splitting a huge page in [`CursorMut::try_take_next`] and
/// [`CursorMut::try_protect_next`]).
///
/// [`CursorMut::try_take_next`]: super::CursorMut::try_take_next
/// [`CursorMut::try_protect_next`]: super::CursorMut::try_protect_next
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTableAllocError;

impl fmt::Display for PageTableAllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of memory for page-table nodes")
    }
}

impl core::error::Error for PageTableAllocError {}

/// Why [`PageTable::try_take_page`](super::PageTable::try_take_page) took
/// nothing. The table is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakePageError {
    /// The page is not one this table can hold, as
    /// [`PageTable::cursor_mut`](super::PageTable::cursor_mut) reports it
    /// for `va..va + PAGE_SIZE` (and `OutOfBounds` for the very last page of
    /// the address space, which no range can hold).
    Range(RangeError),
    /// The page lies in a huge page, and splitting it needed a page-table
    /// node that could not be allocated.
    OutOfMemory,
}

impl fmt::Display for TakePageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TakePageError::Range(e) => fmt::Display::fmt(e, f),
            TakePageError::OutOfMemory => fmt::Display::fmt(&PageTableAllocError, f),
        }
    }
}

impl core::error::Error for TakePageError {}

/// Why [`PageTable::try_take_range`](super::PageTable::try_take_range)
/// stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeRangeError {
    /// The range is not one [`PageTable::cursor_mut`](super::PageTable::cursor_mut)
    /// accepts (empty, reversed, misaligned, or not in this table's part of
    /// the address space). Nothing was taken; the table and the caller's
    /// `TakenRange` are unchanged.
    Range(RangeError),
    /// A huge page reaching past an end of the range had to be split, and
    /// a page-table node could not be allocated. As with
    /// [`CursorMut::try_take_all`](super::CursorMut::try_take_all): the
    /// mappings from that huge page on are unchanged, and what was taken
    /// before it is in the caller's `TakenRange` (flush it before dropping
    /// it). Only a range whose end cuts a huge page can stop half way; one
    /// whose start does stops before taking anything.
    OutOfMemory,
}

impl fmt::Display for TakeRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TakeRangeError::Range(e) => fmt::Display::fmt(e, f),
            TakeRangeError::OutOfMemory => fmt::Display::fmt(&PageTableAllocError, f),
        }
    }
}

impl core::error::Error for TakeRangeError {}
