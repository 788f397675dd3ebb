//! The operations the model applies to a kernel space: creating tracked and
//! untracked areas (with valid and hostile arguments), splitting, querying,
//! reading and writing bytes, dropping areas and frame handles, allocating
//! frames, raw cursor sessions on a user page table of the space, and
//! single pages mapped and taken there without a cursor.
//!
//! Operands that depend on the state are resolved when the operation runs:
//! an area or handle index is taken modulo the number of live ones (an
//! operation with nothing to act on does nothing), and offsets can be given
//! relative to the area they apply to. So a generator that does not see the
//! state (`kvirt check`, the exhaustive checker, proptest) still writes
//! meaningful operations, and deleting operations while shrinking keeps a
//! sequence meaningful. A generator that sees the state (the fuzz target's
//! decoder) can give everything absolutely.

use std::fmt;
use std::ops::Range;

use kvirt::page_prop::PageProperty;
use kvirt::{Paddr, PagingLevel, Vaddr};

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Allocates `frames` fresh frames one by one and holds a handle to
    /// each; stops at the first that fails (only allowed with no free page).
    Alloc {
        /// How many.
        frames: usize,
    },
    /// Allocates a segment of `pages` pages, not zeroed, and holds it (to
    /// run the allocator dry).
    Hog {
        /// How many pages (0 must be refused).
        pages: usize,
    },
    /// Allocates a fresh segment of `pages` frames for the next
    /// [`Frames::Staged`] creation; if there is no such segment, nothing
    /// changes and no frames are staged.
    Stage {
        /// How many frames.
        pages: usize,
    },
    /// `try_map_frames(size, offset, frames, prop)`.
    CreateTracked {
        /// The frames.
        frames: Frames,
        /// The area size in bytes.
        size: usize,
        /// The map offset in bytes.
        offset: usize,
        /// Whether the model also keeps a handle to every frame.
        keep: bool,
        /// The property.
        prop: PageProperty,
    },
    /// `try_map_untracked_frames(size, offset, pa, prop)`.
    CreateUntracked {
        /// The physical range.
        pa: PaChoice,
        /// The area size in bytes.
        size: usize,
        /// The map offset in bytes.
        offset: usize,
        /// The property.
        prop: PageProperty,
    },
    /// Splits an area.
    Split {
        /// Which area.
        area: usize,
        /// Where.
        at: SplitAt,
        /// `try_split` (a refusal hands the area back) rather than `split`
        /// (a refusal panics and drops the area).
        fallible: bool,
    },
    /// `query` in or around an area.
    Query {
        /// Which area.
        area: usize,
        /// Where.
        at: QueryAt,
    },
    /// `write_bytes` (possibly out of bounds or over unmapped pages); when
    /// it succeeds, the bytes are read back.
    Write {
        /// Which area.
        area: usize,
        /// The offset in the area.
        offset: Offset,
        /// Length.
        len: usize,
        /// The data.
        data: Data,
    },
    /// `read_bytes`, compared with the model's bytes.
    Read {
        /// Which area.
        area: usize,
        /// The offset in the area.
        offset: Offset,
        /// Length.
        len: usize,
    },
    /// Drops an area.
    Drop {
        /// Which area.
        area: usize,
    },
    /// Drops a frame handle the model holds.
    DropHeld {
        /// Which handle.
        which: usize,
    },
    /// Drops a segment held by [`Op::Hog`].
    DropHog {
        /// Which segment.
        which: usize,
    },
    /// A session of raw cursor operations on the model's user page table:
    /// a cursor over `range` (which must give the predicted typed error or
    /// a cursor), then `ops` on it.
    PtSession {
        /// The cursor's range.
        range: Range<Vaddr>,
        /// The operations.
        ops: Vec<CursorOp>,
    },
    /// `try_map` at page `page` of the user page table, through a cursor
    /// over exactly the page: a fresh tracked frame (4 KiB), or device
    /// memory at `level`. Skipped if the page does not fit in the table.
    PtMap {
        /// The page index of the virtual address.
        page: usize,
        /// The level of an untracked leaf (1 for a tracked frame).
        level: PagingLevel,
        /// A tracked frame rather than untracked device memory.
        tracked: bool,
    },
    /// `take_next` until nothing is left in `pages` pages from `page`.
    PtUnmap {
        /// The first page.
        page: usize,
        /// How many pages.
        pages: usize,
    },
    /// `PageTable::try_map_frame` of a fresh tracked frame (4 KiB) at the
    /// address `page * PAGE_SIZE + misalign` (wrapping) of the user page
    /// table, with no cursor: mapped where the page is free, else refused
    /// with the error the model predicts (a misaligned address, a page
    /// outside the table, a page mapped already, by itself or inside a
    /// huge page) and the frame handed back and dropped.
    PtMapFrame {
        /// The page index of the virtual address.
        page: usize,
        /// Bytes added to the page's address (non-zero must be refused).
        misalign: usize,
    },
    /// `PageTable::try_take_page` at `page * PAGE_SIZE + misalign`
    /// (wrapping): the page's mapping taken (a huge page holding it split
    /// first), nothing if it is absent, or the predicted range error.
    PtTakePage {
        /// The page index of the virtual address.
        page: usize,
        /// Bytes added to the page's address (non-zero must be refused).
        misalign: usize,
    },
    /// `PageTable::try_take_range` of `pages` pages from `page` (clipped
    /// to the user page table): every mapping in the range taken (without
    /// a cursor inside one existing leaf node, through one otherwise),
    /// what the model predicts, or the range error; with memory short, a
    /// huge page cut by the range may stop it.
    PtTakeRange {
        /// The first page.
        page: usize,
        /// How many pages.
        pages: usize,
    },
    /// `protect_next` (to read-only) over `pages` pages from `page`.
    PtProtect {
        /// The first page.
        page: usize,
        /// How many pages.
        pages: usize,
    },
    /// `Cursor::query` at page `page`, through a read-only cursor.
    PtQuery {
        /// The page.
        page: usize,
    },
}

/// The frames of a tracked area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frames {
    /// This many fresh frames, allocated one by one.
    Fresh(usize),
    /// The frames of the last [`Op::Stage`] (none if nothing is staged).
    Staged,
    /// One by one.
    Picks(Vec<FramePick>),
}

/// One frame handed to `map_frames`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramePick {
    /// A fresh frame, owned only by the area.
    Fresh,
    /// A clone of held handle `.0` (modulo the handles; skipped if none).
    Held(usize),
    /// A frame of another kernel space (skipped if the model has none):
    /// must be rejected.
    Foreign,
}

/// The physical range of an untracked area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaChoice {
    /// Exactly this range (possibly reversed, misaligned, tracked RAM...).
    Abs(Range<Paddr>),
    /// `len` bytes of the device window from `offset` bytes into it.
    Device {
        /// Bytes from the window's start.
        offset: usize,
        /// Length in bytes.
        len: usize,
    },
    /// `len` bytes from `below` bytes under the first physical address the
    /// paging format cannot map.
    FormatLimit {
        /// Bytes below the limit.
        below: usize,
        /// Length in bytes.
        len: usize,
    },
    /// `len` bytes from held frame `which` (tracked RAM: must be rejected).
    Held {
        /// Which handle (modulo the handles; `0..0` if none).
        which: usize,
        /// Length in bytes.
        len: usize,
    },
}

/// Where a split cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitAt {
    /// At page `1 + at % (pages - 1)`, plus `misalign` bytes; skipped for a
    /// one-page area.
    Inside {
        /// The page (modulo the valid ones).
        at: usize,
        /// Bytes added (a non-zero value must be refused).
        misalign: usize,
    },
    /// At exactly this offset (possibly invalid).
    Offset(usize),
}

/// Where a query looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryAt {
    /// At byte `byte % PAGE_SIZE` of page `page % pages`; then at `end()`,
    /// which must panic.
    Page {
        /// The page.
        page: usize,
        /// The byte in the page.
        byte: usize,
    },
    /// At `start() + offset % size()`; then at `end()`, which must panic.
    Offset(usize),
    /// At this address: outside the area the documented panic must happen.
    Addr(Vaddr),
}

/// Where a byte access starts in its area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offset {
    /// Exactly here.
    Abs(usize),
    /// At `offset % (size() + extra)`: past the end `extra` bytes at most.
    Wrap {
        /// The offset before wrapping.
        offset: usize,
        /// Bytes past the end that are allowed.
        extra: usize,
    },
}

/// What a write writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data {
    /// Random bytes from this seed.
    Seed(u64),
    /// `byte`, `byte + 1`, ... (wrapping).
    Ramp(u8),
}

/// One operation of a raw cursor session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CursorOp {
    /// `jump` (an address outside the cursor's range must be refused).
    Jump(Vaddr),
    /// `try_map` at the cursor.
    Map {
        /// What.
        item: Item,
        /// With which property.
        prop: PageProperty,
    },
    /// `take_next(len)`; with `all`, again until nothing is left.
    Take {
        /// The search length (must be page aligned and inside the range,
        /// else the documented panic).
        len: usize,
        /// Repeat.
        all: bool,
    },
    /// `try_take_all(len)`: everything in the search at once.
    TakeAll {
        /// The search length, as for [`CursorOp::Take`].
        len: usize,
    },
    /// `protect_next(len)`; with `all`, again until nothing is left.
    Protect {
        /// The search length, as for [`CursorOp::Take`].
        len: usize,
        /// The change.
        how: Protect,
        /// Repeat.
        all: bool,
    },
    /// `query` at the cursor.
    Query,
    /// `find_next(len)`.
    FindNext(usize),
}

/// What a cursor maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// A fresh tracked frame.
    Fresh,
    /// A clone of held frame `.0` (modulo the handles; nothing is mapped
    /// if the model holds none).
    Held(usize),
    /// A frame of another kernel space (must be refused), or if the model
    /// has none or it is out of memory, the untracked `pa` at `level`.
    Foreign {
        /// The fallback's physical address.
        pa: Paddr,
        /// The fallback's level.
        level: PagingLevel,
    },
    /// Untracked memory at `pa` as a leaf of `level` (possibly hostile).
    Untracked {
        /// The physical address.
        pa: Paddr,
        /// The level.
        level: PagingLevel,
    },
}

/// How `protect_next` changes a property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protect {
    /// Replace it.
    Set(PageProperty),
    /// Make the flags read-only (`R`), keeping the rest.
    ReadOnly,
}

impl Protect {
    /// Applies the change.
    pub fn apply(self, p: &mut PageProperty) {
        match self {
            Protect::Set(new) => *p = new,
            Protect::ReadOnly => p.flags = kvirt::page_prop::PageFlags::R,
        }
    }
}

fn prop_str(p: &PageProperty) -> String {
    format!("{:?} {:?} {:?}", p.flags, p.cache, p.priv_flags)
}

/// The misalignment and the address of a single-page operation.
fn at_str(page: usize, misalign: usize) -> String {
    let va = page.wrapping_mul(kvirt::PAGE_SIZE).wrapping_add(misalign);
    if misalign == 0 {
        format!(" at {va:#x}")
    } else {
        format!(" + {misalign:#x} bytes at {va:#x}")
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Alloc { frames } => write!(f, "alloc({frames} frames, held)"),
            Op::Hog { pages } => write!(f, "hog({pages} pages)"),
            Op::Stage { pages } => write!(f, "stage({pages} fresh frames)"),
            Op::CreateTracked { frames, size, offset, keep, prop } => write!(
                f,
                "create_tracked(size {size:#x}, offset {offset:#x}, {frames:?}{}, {})",
                if *keep { ", handles kept" } else { "" },
                prop_str(prop)
            ),
            Op::CreateUntracked { pa, size, offset, prop } => write!(
                f,
                "create_untracked(size {size:#x}, offset {offset:#x}, pa {pa:x?}, {})",
                prop_str(prop)
            ),
            Op::Split { area, at, fallible } => {
                write!(f, "{}(area #{area}, {at:x?})", if *fallible { "try_split" } else { "split" })
            }
            Op::Query { area, at } => write!(f, "query(area #{area}, {at:x?})"),
            Op::Write { area, offset, len, data } => {
                write!(f, "write_bytes(area #{area}, {offset:x?}, {len} bytes, {data:x?})")
            }
            Op::Read { area, offset, len } => write!(f, "read_bytes(area #{area}, {offset:x?}, {len} bytes)"),
            Op::Drop { area } => write!(f, "drop(area #{area})"),
            Op::DropHeld { which } => write!(f, "drop(held handle #{which})"),
            Op::DropHog { which } => write!(f, "drop(hogged segment #{which})"),
            Op::PtSession { range, ops } => write!(f, "pt.session({range:#x?}, {ops:x?})"),
            Op::PtMap { page, level, tracked } => write!(
                f,
                "pt.map(page {page}, {})",
                if *tracked {
                    "a tracked frame".to_string()
                } else {
                    format!("device memory at level {level}")
                }
            ),
            Op::PtUnmap { page, pages } => write!(f, "pt.unmap(page {page}, {pages} pages)"),
            Op::PtMapFrame { page, misalign } => {
                write!(f, "pt.map_frame(page {page}{}, a tracked frame)", at_str(*page, *misalign))
            }
            Op::PtTakePage { page, misalign } => {
                write!(f, "pt.take_page(page {page}{})", at_str(*page, *misalign))
            }
            Op::PtTakeRange { page, pages } => write!(f, "pt.take_range(page {page}, {pages} pages)"),
            Op::PtProtect { page, pages } => write!(f, "pt.protect(page {page}, {pages} pages, R)"),
            Op::PtQuery { page } => write!(f, "pt.query(page {page})"),
        }
    }
}
