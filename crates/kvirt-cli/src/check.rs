//! `kvirt check`: model-based checking of random operation sequences.
//!
//! Each sequence runs on a fresh, small, isolated kernel space. Its
//! operations create tracked and untracked areas (invalid arguments
//! included), split, query, write and read bytes through areas, and drop
//! areas and frame handles. Next to the real space the checker keeps a
//! *model*: the live areas, the leaf mappings it expects in VMALLOC (huge
//! pages included, and split the way DESIGN.md section 4 says when part of
//! one is unmapped), the bytes it expects in every page, and the frame
//! handles it holds. After every operation it checks:
//!
//! * `kvirt::spec::Inv` for the space and every live area;
//! * the registry (`KernelSpace::areas`) against the model's areas;
//! * refinement: `kvirt::spec::kernel_view` of VMALLOC equals the model's
//!   mappings, entry by entry;
//! * reference counts: every frame the model knows has exactly one reference
//!   per handle held plus one per mapping;
//! * accounting: data pages in use equal the live frames, and VMALLOC bytes
//!   in use equal the live areas plus their guards;
//! * results: errors of rejected calls are among the violated preconditions
//!   (and agree with `kvirt::spec`'s panic conditions), queries agree with
//!   the model and with the spec's `query_*_ensures`, reads return what the
//!   model says.
//!
//! At the end every area and handle is dropped and the space's counters
//! must equal their values at the start. A failing sequence is shrunk by
//! deleting operations while the same check still fails, and the minimal
//! sequence is printed with its seed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use kvirt::arch::{page_size, PagingFormat};
use kvirt::frame::{Frame, FrameAllocOptions, PhysStats};
use kvirt::kspace::{
    AreaAccessError, AreaInfo, AreaKind, KVirtArea, KVirtAreaError, KernelLayout, KernelSpace, MappedItemRef,
    VmallocStats, GUARD_SIZE,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{vaddr_bounds, MapErrorKind, MappedItem, PageTable, UserPtConfig};
use kvirt::platform::{MemoryRegionKind, TlbFlushOp, TlbScope};
use kvirt::sim::MachineConfig;
use kvirt::spec::{self, Inv, Mapping, PageTableView};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use crate::rng::{splitmix64, Rng};
use crate::Error;

/// The reserved low memory of every simulated machine; RAM above it is
/// usable, so kvirt's.
const LOW_MEMORY: Paddr = 1 << 20;

/// A deliberately wrong model, to show that the checker catches and shrinks
/// a discrepancy (used by the tests; not reachable from the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFault {
    /// The model expects tracked frames one page after where `map_frames`
    /// puts them.
    TrackedViewOffByOne,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of sequences.
    pub sequences: u64,
    /// Base seed; sequence `i` uses [`sequence_seed`]`(seed, i)`.
    pub seed: u64,
    /// Most operations per sequence (each sequence draws its length in
    /// `1..=max_len`).
    pub max_len: usize,
    /// RAM of each sequence's machine.
    pub ram_size: usize,
    /// A deliberately wrong model (tests only).
    pub fault: Option<ModelFault>,
}

impl Default for Options {
    fn default() -> Self {
        Self { sequences: 200, seed: 1, max_len: 40, ram_size: 16 << 20, fault: None }
    }
}

/// The seed of sequence `index` of a run with base seed `seed`.
#[must_use]
pub fn sequence_seed(seed: u64, index: u64) -> u64 {
    splitmix64(seed ^ splitmix64(index))
}

/// Which property a create operation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropChoice {
    /// Read-write, write-back.
    Rw,
    /// Read-only.
    R,
    /// Read-write, uncached.
    RwUncached,
    /// User-accessible: must be rejected.
    User,
}

impl PropChoice {
    fn prop(self) -> PageProperty {
        match self {
            PropChoice::Rw => PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback),
            PropChoice::R => PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback),
            PropChoice::RwUncached => PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable),
            PropChoice::User => PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback),
        }
    }
}

/// Where the physical range of an untracked area comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaChoice {
    /// `0..0`: nothing mapped.
    Empty,
    /// Reserved low memory (below 1 MiB), from this page: RAM with no
    /// frame metadata use, readable and writable as bytes.
    Low(usize),
    /// The device window, from 2 MiB slot `.0`, page `.1` inside it.
    Device(usize, usize),
    /// Allocatable RAM: must be rejected.
    Tracked(usize),
    /// Beyond 52 bits: must be rejected.
    TooLarge,
    /// `start > end`: must be rejected.
    Reversed,
    /// Not page aligned: must be rejected.
    Misaligned,
}

/// One operation. Area and handle indices are taken modulo the number of
/// live ones when the operation runs (an operation with nothing to act on
/// does nothing), so that deleting operations keeps a sequence meaningful.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `try_map_frames` of `frames` fresh frames.
    CreateTracked {
        /// Area size in pages.
        area_pages: usize,
        /// Bytes added to the size (misalignment).
        size_extra: usize,
        /// Map offset in pages.
        offset_pages: usize,
        /// Bytes added to the offset (misalignment).
        offset_extra: usize,
        /// Number of frames.
        frames: usize,
        /// Whether the checker keeps a handle to every frame.
        keep: bool,
        /// The property.
        prop: PropChoice,
    },
    /// `try_map_untracked_frames`.
    CreateUntracked {
        /// Area size in pages.
        area_pages: usize,
        /// Map offset in pages.
        offset_pages: usize,
        /// Where the physical range is.
        pa: PaChoice,
        /// Its length in pages.
        len_pages: usize,
        /// The property.
        prop: PropChoice,
    },
    /// `split` at a page inside the area (skipped for one-page areas).
    Split {
        /// Which area.
        area: usize,
        /// Where (taken modulo the valid offsets).
        at: usize,
    },
    /// `query` at a byte of the area.
    Query {
        /// Which area.
        area: usize,
        /// Which page (modulo the area's pages).
        page: usize,
        /// Byte in the page.
        byte: usize,
    },
    /// `write_bytes` (possibly out of bounds or over unmapped pages).
    Write {
        /// Which area.
        area: usize,
        /// Offset (modulo the area size plus two pages).
        offset: usize,
        /// Length.
        len: usize,
        /// Seed of the data.
        data: u64,
    },
    /// `read_bytes`, compared with the model.
    Read {
        /// Which area.
        area: usize,
        /// Offset (modulo the area size plus two pages).
        offset: usize,
        /// Length.
        len: usize,
    },
    /// Drops an area.
    Drop {
        /// Which area.
        area: usize,
    },
    /// Drops a frame handle the checker kept.
    DropKept {
        /// Which handle.
        which: usize,
    },
    /// `CursorMut::try_map` at page `page` of the checker's own user page
    /// table: a fresh tracked frame (4 KiB), or device memory at `level`.
    PtMap {
        /// The page index of the virtual address.
        page: usize,
        /// The level of an untracked leaf (1 for a tracked frame).
        level: u8,
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
    /// `protect_next` (to read-only) over `pages` pages from `page`.
    PtProtect {
        /// The first page.
        page: usize,
        /// How many pages.
        pages: usize,
    },
    /// `Cursor::query` at page `page`.
    PtQuery {
        /// The page.
        page: usize,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateTracked { area_pages, size_extra, offset_pages, offset_extra, frames, keep, prop } => write!(
                f,
                "create_tracked(size {area_pages} pages + {size_extra} B, offset {offset_pages} pages + {offset_extra} B, {frames} frames{}, {prop:?})",
                if *keep { ", handles kept" } else { "" }
            ),
            Op::CreateUntracked { area_pages, offset_pages, pa, len_pages, prop } => write!(
                f,
                "create_untracked(size {area_pages} pages, offset {offset_pages} pages, pa {pa:?} x {len_pages} pages, {prop:?})"
            ),
            Op::Split { area, at } => write!(f, "split(area #{area}, at {at})"),
            Op::Query { area, page, byte } => write!(f, "query(area #{area}, page {page}, byte {byte})"),
            Op::Write { area, offset, len, data } => {
                write!(f, "write_bytes(area #{area}, offset {offset}, {len} bytes, data {data:#x})")
            }
            Op::Read { area, offset, len } => write!(f, "read_bytes(area #{area}, offset {offset}, {len} bytes)"),
            Op::Drop { area } => write!(f, "drop(area #{area})"),
            Op::DropKept { which } => write!(f, "drop(kept handle #{which})"),
            Op::PtMap { page, level, tracked } => write!(
                f,
                "pt.map(page {page}, {})",
                if *tracked { "a tracked frame".to_string() } else { format!("device memory at level {level}") }
            ),
            Op::PtUnmap { page, pages } => write!(f, "pt.unmap(page {page}, {pages} pages)"),
            Op::PtProtect { page, pages } => write!(f, "pt.protect(page {page}, {pages} pages, R)"),
            Op::PtQuery { page } => write!(f, "pt.query(page {page})"),
        }
    }
}

/// A random operation.
pub fn gen_op(rng: &mut Rng) -> Op {
    let prop = |rng: &mut Rng| {
        if rng.chance(1, 12) {
            PropChoice::User
        } else {
            *rng.pick(&[PropChoice::Rw, PropChoice::Rw, PropChoice::R, PropChoice::RwUncached])
        }
    };
    let misalign = |rng: &mut Rng| if rng.chance(1, 12) { rng.range(1, PAGE_SIZE - 1) } else { 0 };
    let big = |rng: &mut Rng| rng.next_u64() as usize;
    match rng.below(100) {
        0..=24 => {
            let area_pages = rng.range(0, 8);
            let offset_pages = if rng.chance(1, 2) { 0 } else { rng.range(0, area_pages.max(1)) };
            let room = area_pages.saturating_sub(offset_pages);
            let frames = if rng.chance(1, 10) { room + 1 } else { rng.range(0, room) };
            Op::CreateTracked {
                area_pages,
                size_extra: misalign(rng),
                offset_pages,
                offset_extra: misalign(rng),
                frames,
                keep: rng.chance(1, 3),
                prop: prop(rng),
            }
        }
        25..=39 => {
            let (pa, len_pages) = match rng.below(100) {
                0..=9 => (PaChoice::Empty, 0),
                10..=39 => {
                    let page = rng.range(0, 250);
                    (PaChoice::Low(page), rng.range(0, (256 - page).min(8)))
                }
                40..=74 => {
                    let sub = if rng.chance(1, 2) { 0 } else { rng.range(1, 511) };
                    let len = match rng.below(10) {
                        0..=6 => rng.range(1, 8),
                        7..=8 => rng.range(512, 1100),
                        _ => 1 << 18,
                    };
                    let slot = if len == 1 << 18 { 0 } else { rng.range(0, 3) };
                    (PaChoice::Device(slot, if len == 1 << 18 { 0 } else { sub }), len)
                }
                75..=82 => (PaChoice::Tracked(rng.range(0, 64)), rng.range(1, 4)),
                83..=87 => (PaChoice::TooLarge, rng.range(1, 2)),
                88..=93 => (PaChoice::Reversed, rng.range(1, 2)),
                _ => (PaChoice::Misaligned, rng.range(1, 2)),
            };
            let offset_pages = if rng.chance(7, 10) { 0 } else { rng.range(1, 3) };
            let mut area_pages = offset_pages + len_pages + rng.range(0, 2);
            if rng.chance(1, 10) {
                area_pages = area_pages.saturating_sub(1);
            }
            Op::CreateUntracked { area_pages, offset_pages, pa, len_pages, prop: prop(rng) }
        }
        40..=47 => Op::Split { area: big(rng), at: big(rng) },
        48..=59 => Op::Query { area: big(rng), page: big(rng), byte: rng.below(PAGE_SIZE) },
        60..=71 => Op::Write {
            area: big(rng),
            offset: big(rng),
            len: if rng.chance(4, 5) { rng.range(1, 64) } else { rng.range(1, 9000) },
            data: rng.next_u64(),
        },
        72..=81 => Op::Read {
            area: big(rng),
            offset: big(rng),
            len: if rng.chance(4, 5) { rng.range(1, 64) } else { rng.range(1, 9000) },
        },
        82..=94 => Op::Drop { area: big(rng) },
        _ => Op::DropKept { which: big(rng) },
    }
}

/// The operations of a sequence.
#[must_use]
pub fn gen_sequence(seed: u64, max_len: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let len = rng.range(1, max_len.max(1));
    (0..len).map(|_| gen_op(&mut rng)).collect()
}

/// A failed check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The operation after which it failed (`ops.len()` for the final
    /// leak check).
    pub step: usize,
    /// Which check.
    pub check: &'static str,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}: {}", self.step, self.check, self.message)
    }
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sequences run.
    pub sequences: u64,
    /// Operations executed.
    pub operations: u64,
    /// Individual checks that passed.
    pub checks: u64,
}

/// A failing sequence, shrunk.
#[derive(Clone, Debug)]
pub struct FailureReport {
    /// Index of the sequence in the run.
    pub index: u64,
    /// Its seed.
    pub seed: u64,
    /// The failure of the original sequence.
    pub original: Failure,
    /// Its length.
    pub original_len: usize,
    /// The minimal sequence found that fails the same check.
    pub minimal: Vec<Op>,
    /// How the minimal sequence fails.
    pub minimal_failure: Failure,
    /// Sequences run while shrinking.
    pub shrink_runs: usize,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// What ran.
    pub counts: Counts,
    /// The first failure, if any.
    pub failure: Option<FailureReport>,
}

/// An expected leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Page {
    pa: Paddr,
    size: usize,
    prop: PageProperty,
    tracked: bool,
}

struct ModelArea<L: KernelLayout> {
    area: KVirtArea<L>,
    range: Range<Vaddr>,
    mapped: Range<Vaddr>,
    kind: AreaKind,
    label: &'static str,
    /// The split boundary with the area's left neighbour, if it is the
    /// right half of a split.
    left: Option<u64>,
    /// The split boundary with its right neighbour, if it is the left half
    /// of a split.
    right: Option<u64>,
}

/// The model of one sequence plus the real space.
struct Runner<'s, L: KernelLayout> {
    space: &'s KernelSpace<L>,
    fault: Option<ModelFault>,
    areas: Vec<ModelArea<L>>,
    view: BTreeMap<Vaddr, Page>,
    /// Expected contents of RAM pages (absent: zero).
    bytes: HashMap<Paddr, Vec<u8>>,
    kept: Vec<Frame<()>>,
    ram_size: usize,
    /// The RAM regions of the machine's memory map (`Usable` and
    /// `Reserved`): the only memory byte access may touch.
    ram: Vec<Range<Paddr>>,
    dev_start: usize,
    /// `used_pages - page_table_pages` at the start.
    base_data_pages: usize,
    start: (PhysStats, VmallocStats),
    step: usize,
    checks: std::cell::Cell<u64>,
    /// Split boundaries: whether one of the two halves was dropped.
    links: HashMap<u64, bool>,
    /// A user page table of the space, for the raw cursor operations.
    pt: Option<PageTable<UserPtConfig<L::Format>>>,
    /// The model of `pt`.
    pt_view: BTreeMap<Vaddr, Page>,
}

type Outcome = Result<(), Failure>;

impl<'s, L: KernelLayout> Runner<'s, L> {
    fn new(space: &'s KernelSpace<L>, ram_size: usize, fault: Option<ModelFault>) -> Self {
        space.synchronize();
        let start = (space.phys_stats(), space.vmalloc_stats());
        let device = space.memory_map().iter().find(|r| r.kind == MemoryRegionKind::Device);
        let dev_start = device.expect("a hosted space has a device window").range.start;
        let ram = space
            .memory_map()
            .iter()
            .filter(|r| r.kind != MemoryRegionKind::Device)
            .map(|r| r.range.clone())
            .collect();
        Self {
            space,
            fault,
            areas: Vec::new(),
            view: BTreeMap::new(),
            bytes: HashMap::new(),
            kept: Vec::new(),
            ram_size,
            ram,
            dev_start,
            base_data_pages: start.0.used_pages - start.0.page_table_pages,
            start,
            step: 0,
            checks: std::cell::Cell::new(0),
            links: HashMap::new(),
            pt: Some(PageTable::empty_in(space).expect("memory for a root node")),
            pt_view: BTreeMap::new(),
        }
    }

    fn fail(&self, check: &'static str, message: String) -> Failure {
        Failure { step: self.step, check, message }
    }

    fn expect(&self, cond: bool, check: &'static str, message: impl FnOnce() -> String) -> Outcome {
        if cond {
            self.checks.set(self.checks.get() + 1);
            Ok(())
        } else {
            Err(self.fail(check, message()))
        }
    }

    fn pick_area(&self, raw: usize) -> Option<usize> {
        (!self.areas.is_empty()).then(|| raw % self.areas.len())
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match *op {
            Op::CreateTracked { area_pages, size_extra, offset_pages, offset_extra, frames, keep, prop } => {
                let size = area_pages * PAGE_SIZE + size_extra;
                let offset = offset_pages * PAGE_SIZE + offset_extra;
                self.create_tracked(size, offset, frames, keep, prop)
            }
            Op::CreateUntracked { area_pages, offset_pages, pa, len_pages, prop } => {
                self.create_untracked(area_pages * PAGE_SIZE, offset_pages * PAGE_SIZE, pa, len_pages, prop)
            }
            Op::Split { area, at } => match self.pick_area(area) {
                Some(i) => self.split(i, at),
                None => Ok(()),
            },
            Op::Query { area, page, byte } => match self.pick_area(area) {
                Some(i) => self.query(i, page, byte),
                None => Ok(()),
            },
            Op::Write { area, offset, len, data } => match self.pick_area(area) {
                Some(i) => self.write(i, offset, len, data),
                None => Ok(()),
            },
            Op::Read { area, offset, len } => match self.pick_area(area) {
                Some(i) => self.read(i, offset, len),
                None => Ok(()),
            },
            Op::Drop { area } => {
                if let Some(i) = self.pick_area(area) {
                    let a = self.areas.remove(i);
                    self.model_unmap(&a.mapped);
                    for link in [a.left, a.right].into_iter().flatten() {
                        self.links.insert(link, true);
                    }
                    drop(a.area);
                }
                Ok(())
            }
            Op::DropKept { which } => {
                if !self.kept.is_empty() {
                    let i = which % self.kept.len();
                    self.kept.remove(i);
                }
                Ok(())
            }
            Op::PtMap { page, level, tracked } => self.pt_map(page * PAGE_SIZE, level, tracked),
            Op::PtUnmap { page, pages } => self.pt_unmap(page * PAGE_SIZE, pages),
            Op::PtProtect { page, pages } => self.pt_protect(page * PAGE_SIZE, pages),
            Op::PtQuery { page } => self.pt_query(page * PAGE_SIZE),
        }
    }

    fn pt(&self) -> &PageTable<UserPtConfig<L::Format>> {
        self.pt.as_ref().expect("the page table lives until `finish`")
    }

    /// `va..va + pages` pages, clipped to the user page table's range.
    fn pt_range(&self, va: Vaddr, pages: usize) -> Range<Vaddr> {
        let (_, last) = vaddr_bounds::<UserPtConfig<L::Format>>();
        va.min(last + 1)..va.saturating_add(pages * PAGE_SIZE).min(last + 1)
    }

    fn pt_map(&mut self, va: Vaddr, level: u8, tracked: bool) -> Outcome {
        let level = if tracked { 1 } else { level };
        let prop = PropChoice::Rw.prop();
        let size =
            if (1..=L::Format::NR_LEVELS).contains(&level) { page_size::<L::Format>(level) } else { 0 };
        let range = self.pt_range(va, size / PAGE_SIZE);
        if range.len() != size || size == 0 {
            return Ok(());
        }
        let predicted = if level > L::Format::HIGHEST_LEAF_LEVEL {
            Err(MapErrorKind::UnsupportedLevel)
        } else if va % size != 0 {
            Err(MapErrorKind::Misaligned)
        } else if self.pt_view.range(..range.end).next_back().is_some_and(|(v, p)| v + p.size > va) {
            Err(MapErrorKind::AlreadyMapped)
        } else {
            Ok(())
        };
        let (item, page) = if tracked {
            let frame = FrameAllocOptions::new_in(self.space)
                .alloc_frame()
                .map_err(|e| self.fail("frame allocation", e.to_string()))?;
            let pa = frame.paddr();
            self.bytes.remove(&pa);
            (MappedItem::Tracked(frame.into(), prop), Page { pa, size, prop, tracked: true })
        } else {
            let pa = self.dev_start + va;
            (MappedItem::Untracked(pa, level, prop), Page { pa, size, prop, tracked: false })
        };
        let mut cursor =
            self.pt().cursor_mut(&range).map_err(|e| self.fail("pt cursor", format!("{e:?}")))?;
        let got = cursor.try_map(item).map_err(|e| e.kind);
        drop(cursor);
        self.expect(got == predicted, "pt map agrees with the model", || {
            format!("try_map at {va:#x}, level {level}: got {got:?}, the model predicts {predicted:?}")
        })?;
        if got.is_ok() {
            self.pt_view.insert(va, page);
        }
        Ok(())
    }

    fn pt_unmap(&mut self, va: Vaddr, pages: usize) -> Outcome {
        let range = self.pt_range(va, pages);
        if range.is_empty() {
            return Ok(());
        }
        let mut cursor =
            self.pt().cursor_mut(&range).map_err(|e| self.fail("pt cursor", format!("{e:?}")))?;
        let mut frags = Vec::new();
        while let Some(frag) = cursor.take_next(range.end - cursor.virt_addr()) {
            frags.push(frag);
        }
        drop(cursor);
        self.space.platform().flush_tlb(TlbFlushOp::Range(range.clone()), TlbScope::AllCpus);
        drop(frags);
        reshape(&mut self.pt_view, &range, L::Format::NR_ENTRIES, |_| None);
        Ok(())
    }

    fn pt_protect(&mut self, va: Vaddr, pages: usize) -> Outcome {
        let range = self.pt_range(va, pages);
        if range.is_empty() {
            return Ok(());
        }
        let mut cursor =
            self.pt().cursor_mut(&range).map_err(|e| self.fail("pt cursor", format!("{e:?}")))?;
        let to_read_only = |p: &mut PageProperty| p.flags = PageFlags::R;
        while let Some(changed) = cursor.protect_next(range.end - cursor.virt_addr(), &mut { to_read_only }) {
            self.space.platform().flush_tlb(TlbFlushOp::Range(changed), TlbScope::AllCpus);
        }
        drop(cursor);
        reshape(&mut self.pt_view, &range, L::Format::NR_ENTRIES, |mut p| {
            to_read_only(&mut p.prop);
            Some(p)
        });
        Ok(())
    }

    fn pt_query(&mut self, va: Vaddr) -> Outcome {
        let range = self.pt_range(va, 1);
        if range.is_empty() {
            return Ok(());
        }
        let mut cursor = self.pt().cursor(&range).map_err(|e| self.fail("pt cursor", format!("{e:?}")))?;
        let (entry, item) = cursor.query().map_err(|e| self.fail("pt query", format!("{e:?}")))?;
        let got = item.map(|i| {
            let tracked = matches!(i, MappedItemRef::Tracked(..));
            (
                entry.start,
                Page { pa: i.paddr(), size: page_size::<L::Format>(i.level()), prop: i.prop(), tracked },
            )
        });
        let want = page_at(&self.pt_view, va).map(|(base, p)| (base, *p));
        self.expect(got == want, "pt query agrees with the model", || {
            format!("query({va:#x}) returned {got:x?}, the model expects {want:x?}")
        })
    }

    fn create_tracked(
        &mut self,
        size: usize,
        offset: usize,
        n: usize,
        keep: bool,
        choice: PropChoice,
    ) -> Outcome {
        let prop = choice.prop();
        let len = n * PAGE_SIZE;
        let mut violated = common_violations(size, offset, len, &prop);
        violated.dedup();
        let spec_panics = spec::map_frames_panic_condition(size, offset, n, &prop);
        let model_panics = !violated.is_empty();
        self.expect(spec_panics == model_panics, "spec agrees with the model on map_frames", || {
            format!("spec::map_frames_panic_condition = {spec_panics}, model violations = {violated:?}")
        })?;
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            let f = FrameAllocOptions::new_in(self.space)
                .alloc_frame()
                .map_err(|e| self.fail("frame allocation", e.to_string()))?;
            self.bytes.remove(&f.paddr());
            frames.push(f);
        }
        let pas: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
        if keep {
            self.kept.extend(frames.iter().cloned());
        }
        let room = self.vmalloc_room(size, PAGE_SIZE);
        let result = self.space.try_map_frames(size, offset, frames, prop);
        let area = self.check_creation(result, &violated, room, "map_frames")?;
        let Some(area) = area else { return Ok(()) };
        let start = area.mapped_range().start;
        let shift = if self.fault == Some(ModelFault::TrackedViewOffByOne) { PAGE_SIZE } else { 0 };
        for (i, pa) in pas.into_iter().enumerate() {
            self.view
                .insert(start + shift + i * PAGE_SIZE, Page { pa, size: PAGE_SIZE, prop, tracked: true });
        }
        self.add_area(area, size, offset, len, AreaKind::Tracked, "check: tracked")
    }

    fn create_untracked(
        &mut self,
        size: usize,
        offset: usize,
        choice: PaChoice,
        len_pages: usize,
        prop_choice: PropChoice,
    ) -> Outcome {
        let prop = prop_choice.prop();
        let len = len_pages * PAGE_SIZE;
        let pa: Range<Paddr> = match choice {
            PaChoice::Empty => 0..0,
            PaChoice::Low(page) => page * PAGE_SIZE..page * PAGE_SIZE + len,
            PaChoice::Device(slot, page) => {
                let s = self.dev_start + slot * (2 << 20) + page * PAGE_SIZE;
                s..s + len
            }
            PaChoice::Tracked(page) => {
                let s = (4 << 20) + page * PAGE_SIZE;
                s..s + len
            }
            PaChoice::TooLarge => pa_limit::<L>()..pa_limit::<L>() + len,
            #[allow(clippy::reversed_empty_ranges)]
            PaChoice::Reversed => 0x2000 + len..0x2000,
            PaChoice::Misaligned => 0x800..0x800 + len,
        };
        let mut violated = Vec::new();
        if pa.start > pa.end {
            violated.push(KVirtAreaError::ReversedPaddrRange(pa.clone()));
        }
        let pa_len = pa.end.saturating_sub(pa.start);
        violated.extend(common_violations(size, offset, pa_len, &prop));
        if pa.start % PAGE_SIZE != 0 || pa.end % PAGE_SIZE != 0 {
            violated.push(KVirtAreaError::MisalignedPaddr(pa.clone()));
        }
        if pa.end > pa_limit::<L>() {
            violated.push(KVirtAreaError::PaddrTooLarge(pa.clone()));
        }
        // All usable RAM (above the reserved first MiB) is kvirt's: frames
        // the allocator hands out, or the frame metadata array.
        if pa.start < self.ram_size.min(pa.end) && LOW_MEMORY < pa.end {
            violated.push(KVirtAreaError::TrackedPaddr(pa.clone()));
        }
        let spec_panics = spec::map_untracked_frames_panic_condition(self.space, size, offset, &pa, &prop);
        let model_panics = !violated.is_empty();
        self.expect(spec_panics == model_panics, "spec agrees with the model on map_untracked_frames", || {
            format!("spec::map_untracked_frames_panic_condition = {spec_panics}, model violations = {violated:?}")
        })?;
        let room = self.vmalloc_room(size, PAGE_SIZE);
        let huge = page_size::<L::Format>(L::Format::HIGHEST_LEAF_LEVEL);
        let huge_room = self.vmalloc_room(size, huge);
        // SAFETY: the physical ranges are reserved low memory that nothing
        // else in this space uses, the simulated device window, or ranges
        // the model expects to be rejected before anything is mapped.
        let result = unsafe { self.space.try_map_untracked_frames(size, offset, pa.clone(), prop) };
        let Some(area) = self.check_creation(result, &violated, room, "map_untracked_frames")? else {
            return Ok(());
        };
        let mapped = area.mapped_range();
        if huge_room && pa_len >= huge && pa.start % huge == 0 && offset % huge == 0 {
            self.expect(mapped.start % huge == 0, "huge-page placement", || {
                format!("a mapping that can use {huge:#x}-byte pages was placed at {:#x}", mapped.start)
            })?;
        }
        for (va, page) in greedy_pages::<L::Format>(mapped.start, pa.start, pa_len) {
            self.view.insert(va, Page { prop, ..page });
        }
        self.add_area(area, size, offset, pa_len, AreaKind::Untracked, "check: untracked")
    }

    /// Whether the model's free VMALLOC (all of it but the live areas and
    /// their guards) has room for an area of `size` bytes and its guard at
    /// alignment `align`.
    fn vmalloc_room(&self, size: usize, align: usize) -> bool {
        let mut used: Vec<Range<Vaddr>> =
            self.areas.iter().map(|a| a.range.start..a.range.end + self.guard(a)).collect();
        used.sort_by_key(|r| r.start);
        let vmalloc = L::VMALLOC_VADDR_RANGE;
        let (mut gaps, mut next) = (Vec::new(), vmalloc.start);
        for r in &used {
            if r.start > next {
                gaps.push(next..r.start);
            }
            next = next.max(r.end);
        }
        gaps.push(next..vmalloc.end);
        gaps.iter().any(|g| {
            let start = g.start.div_ceil(align) * align;
            size.checked_add(GUARD_SIZE).and_then(|n| start.checked_add(n)).is_some_and(|end| end <= g.end)
        })
    }

    /// Checks a constructor's result against the violated preconditions
    /// and, for valid arguments, whether VMALLOC had `room`.
    fn check_creation(
        &mut self,
        result: Result<KVirtArea<L>, KVirtAreaError>,
        violated: &[KVirtAreaError],
        room: bool,
        what: &'static str,
    ) -> Result<Option<KVirtArea<L>>, Failure> {
        match result {
            Err(KVirtAreaError::VmallocExhausted(size)) if violated.is_empty() => {
                self.expect(!room, "VMALLOC exhaustion only without room", || {
                    format!("{what} reported VMALLOC exhausted for {size:#x} bytes, but a free block fits it")
                })?;
                Ok(None)
            }
            Ok(area) => {
                self.expect(violated.is_empty(), "rejection of invalid arguments", || {
                    format!("{what} accepted arguments violating {violated:?}")
                })?;
                Ok(Some(area))
            }
            Err(e) => {
                self.expect(violated.contains(&e), "error names a violated precondition", || {
                    if violated.is_empty() {
                        format!("{what} rejected valid arguments: {e:?}")
                    } else {
                        format!("{what} returned {e:?}, expected one of {violated:?}")
                    }
                })?;
                Ok(None)
            }
        }
    }

    fn add_area(
        &mut self,
        area: KVirtArea<L>,
        size: usize,
        offset: usize,
        len: usize,
        kind: AreaKind,
        label: &'static str,
    ) -> Outcome {
        let range = area.range();
        let mapped = area.mapped_range();
        self.expect(
            range.len() == size && mapped.start == range.start + offset && mapped.len() == len,
            "area geometry",
            || format!("asked size {size:#x}, offset {offset:#x}, len {len:#x}; got {range:#x?}, mapped {mapped:#x?}"),
        )?;
        area.set_label(label);
        self.areas.push(ModelArea { area, range, mapped, kind, label, left: None, right: None });
        Ok(())
    }

    fn split(&mut self, i: usize, at: usize) -> Outcome {
        let pages = self.areas[i].range.len() / PAGE_SIZE;
        if pages < 2 {
            return Ok(());
        }
        let offset = (1 + at % (pages - 1)) * PAGE_SIZE;
        let old = self.areas.remove(i);
        let mid = old.range.start + offset;
        let clamp = |r: &Range<Vaddr>| {
            let s = old.mapped.start.clamp(r.start, r.end);
            let e = old.mapped.end.clamp(r.start, r.end).max(s);
            s..e
        };
        let (lr, rr) = (old.range.start..mid, mid..old.range.end);
        let (lm, rm) = (clamp(&lr), clamp(&rr));
        let (left, right) = old.area.split(offset);
        self.expect(
            left.range() == lr
                && right.range() == rr
                && left.mapped_range() == lm
                && right.mapped_range() == rm,
            "split geometry",
            || {
                format!(
                    "split at {offset:#x}: got {:#x?}/{:#x?} mapped {:#x?}/{:#x?}",
                    left.range(),
                    right.range(),
                    left.mapped_range(),
                    right.mapped_range()
                )
            },
        )?;
        // A huge page straddling the split point is split (down to 4 KiB
        // at it), so that each half owns whole pages.
        self.model_split_at(mid);
        let link = self.links.len() as u64;
        self.links.insert(link, false);
        let (kind, label) = (old.kind, old.label);
        let right =
            ModelArea { area: right, range: rr, mapped: rm, kind, label, left: Some(link), right: old.right };
        let left =
            ModelArea { area: left, range: lr, mapped: lm, kind, label, left: old.left, right: Some(link) };
        self.areas.insert(i, right);
        self.areas.insert(i, left);
        Ok(())
    }

    /// Splits the model's huge page that contains `va` and starts below
    /// it, down to 4 KiB pages at `va` (what re-protecting the 4 KiB page
    /// at `va` does); a page starting at `va` stays whole.
    fn model_split_at(&mut self, va: Vaddr) {
        if page_at(&self.view, va).is_some_and(|(base, _)| base < va) {
            reshape(&mut self.view, &(va..va + PAGE_SIZE), L::Format::NR_ENTRIES, Some);
        }
    }

    /// The VMALLOC bytes after an area that are its guard: none while the
    /// right half of a split of it is alive there.
    fn guard(&self, a: &ModelArea<L>) -> usize {
        match a.right {
            Some(link) if !self.links[&link] => 0,
            _ => GUARD_SIZE,
        }
    }

    fn query(&mut self, i: usize, page: usize, byte: usize) -> Outcome {
        let a = &self.areas[i];
        let va = a.range.start + (page % (a.range.len() / PAGE_SIZE)) * PAGE_SIZE + byte % PAGE_SIZE;
        let expected = page_at(&self.view, va).map(|(base, p)| (base, *p));
        let result = a.area.query(va);
        let got = result.as_ref().map(|item| match item {
            MappedItemRef::Tracked(f, p) => (f.paddr(), PAGE_SIZE, *p, true),
            MappedItemRef::Untracked(pa, level, p) => (*pa, page_size::<L::Format>(*level), *p, false),
        });
        let want = expected.map(|(_, p)| (p.pa, p.size, p.prop, p.tracked));
        let page_va = va & !(PAGE_SIZE - 1);
        let view = spec::kernel_view(self.space, &(page_va..page_va + PAGE_SIZE));
        let spec_ok = if spec::query_some_condition(&view, va) {
            spec::query_some_ensures(&view, va, &result)
        } else {
            spec::query_none_ensures(&result)
        };
        self.expect(got == want, "query agrees with the model", || {
            format!("query({va:#x}) returned {got:x?}, the model expects {want:x?}")
        })?;
        self.expect(spec_ok, "query meets the spec's ensures", || {
            format!("query({va:#x}) breaks query_*_ensures")
        })?;
        // `start <= addr < end` is required: the end is rejected (a panic),
        // unlike upstream's off-by-one.
        let end = a.range.end;
        let at_end = catch_unwind(AssertUnwindSafe(|| a.area.query(end).is_some()));
        self.expect(at_end.is_err(), "query at end() panics", || {
            format!("query({end:#x}) at the end returned")
        })
    }

    /// The error the model expects for a byte access (by the first page
    /// that is unmapped, lacks the right the access needs, `W` to write or
    /// `R` to read, or is not RAM), or the physical pieces it touches.
    fn access_plan(
        &self,
        i: usize,
        offset: usize,
        len: usize,
        write: bool,
    ) -> Result<Vec<(Paddr, usize)>, AreaAccessError> {
        let a = &self.areas[i];
        let size = a.range.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(AreaAccessError::OutOfBounds { offset, len, size });
        }
        let mut pieces = Vec::new();
        let (mut va, end) = (a.range.start + offset, a.range.start + offset + len);
        while va < end {
            let n = (PAGE_SIZE - va % PAGE_SIZE).min(end - va);
            let Some((base, p)) = page_at(&self.view, va) else { return Err(AreaAccessError::Unmapped(va)) };
            let pa = p.pa + (va - base);
            if write && !p.prop.flags.contains(PageFlags::RW) {
                return Err(AreaAccessError::NotWritable(va));
            }
            if !write && !p.prop.flags.contains(PageFlags::R) {
                return Err(AreaAccessError::NotReadable(va));
            }
            if !self.ram.iter().any(|r| r.start <= pa && pa + n <= r.end) {
                return Err(AreaAccessError::NotRam(va));
            }
            pieces.push((pa, n));
            va += n;
        }
        Ok(pieces)
    }

    fn write(&mut self, i: usize, offset: usize, len: usize, seed: u64) -> Outcome {
        let offset = offset % (self.areas[i].range.len() + 2 * PAGE_SIZE);
        let mut rng = Rng::new(seed);
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let plan = self.access_plan(i, offset, len, true);
        let got = self.areas[i].area.write_bytes(offset, &data);
        match plan {
            Ok(pieces) => {
                self.expect(got.is_ok(), "write_bytes succeeds where the model allows it", || {
                    format!("write_bytes({offset:#x}, {len}) failed: {got:?}")
                })?;
                let mut done = 0;
                for (pa, n) in pieces {
                    let page = self.bytes.entry(pa & !(PAGE_SIZE - 1)).or_insert_with(|| vec![0; PAGE_SIZE]);
                    let at = pa % PAGE_SIZE;
                    page[at..at + n].copy_from_slice(&data[done..done + n]);
                    done += n;
                }
                Ok(())
            }
            Err(e) => self.expect(got.as_ref() == Err(&e), "write_bytes fails as the model says", || {
                format!("write_bytes({offset:#x}, {len}) returned {got:?}, the model expects {e:?}")
            }),
        }
    }

    fn read(&mut self, i: usize, offset: usize, len: usize) -> Outcome {
        let offset = offset % (self.areas[i].range.len() + 2 * PAGE_SIZE);
        let plan = self.access_plan(i, offset, len, false);
        let mut buf = vec![0xa5; len];
        let got = self.areas[i].area.read_bytes(offset, &mut buf);
        match plan {
            Ok(pieces) => {
                self.expect(got.is_ok(), "read_bytes succeeds where the model allows it", || {
                    format!("read_bytes({offset:#x}, {len}) failed: {got:?}")
                })?;
                let mut expected = Vec::with_capacity(len);
                for (pa, n) in pieces {
                    let at = pa % PAGE_SIZE;
                    match self.bytes.get(&(pa & !(PAGE_SIZE - 1))) {
                        Some(page) => expected.extend_from_slice(&page[at..at + n]),
                        None => expected.resize(expected.len() + n, 0),
                    }
                }
                let first = buf.iter().zip(&expected).position(|(a, b)| a != b);
                self.expect(first.is_none(), "read_bytes returns the model's bytes", || {
                    let j = first.unwrap_or(0);
                    format!(
                        "read_bytes({offset:#x}, {len}): byte {j} is {:#x}, the model says {:#x}",
                        buf[j], expected[j]
                    )
                })
            }
            Err(e) => self.expect(got.as_ref() == Err(&e), "read_bytes fails as the model says", || {
                format!("read_bytes({offset:#x}, {len}) returned {got:?}, the model expects {e:?}")
            }),
        }
    }

    /// Removes the model's mappings in `range`, splitting huge pages that
    /// straddle it as kvirt must (DESIGN.md section 4).
    fn model_unmap(&mut self, range: &Range<Vaddr>) {
        reshape(&mut self.view, range, L::Format::NR_ENTRIES, |_| None);
    }

    /// The checks after every operation.
    fn check_all(&mut self) -> Outcome {
        self.space.synchronize();
        let inv = self.space.check();
        self.expect(inv.is_ok(), "Inv of the space", || format!("{inv:?}"))?;
        for i in 0..self.areas.len() {
            let inv = self.areas[i].area.check();
            self.expect(inv.is_ok(), "Inv of an area", || {
                format!("area {:#x?}: {inv:?}", self.areas[i].range)
            })?;
        }
        // The registry.
        let mut expected: Vec<AreaInfo> = self
            .areas
            .iter()
            .map(|a| AreaInfo {
                range: a.range.clone(),
                mapped: a.mapped.clone(),
                kind: a.kind,
                label: Some(a.label),
            })
            .collect();
        expected.sort_by_key(|a| a.range.start);
        let got = self.space.areas();
        self.expect(got == expected, "registry matches the model", || {
            format!("registry {got:#x?}\nmodel {expected:#x?}")
        })?;
        // Areas are disjoint; two halves of a split may touch while both
        // live, any other neighbours are separated by a guard gap.
        let mut by_start: Vec<&ModelArea<L>> = self.areas.iter().collect();
        by_start.sort_by_key(|a| a.range.start);
        let touching = by_start.windows(2).find(|w| {
            let siblings = w[0].right.is_some() && w[0].right == w[1].left;
            w[0].range.end + if siblings { 0 } else { GUARD_SIZE } > w[1].range.start
        });
        self.expect(touching.is_none(), "guard gap between areas", || {
            let w = touching.expect("failed");
            format!("areas {:#x?} and {:#x?} overlap or touch", w[0].range, w[1].range)
        })?;
        // Refinement.
        let actual = spec::kernel_view(self.space, &L::VMALLOC_VADDR_RANGE);
        let model = as_spec_view::<L>(&self.view);
        self.expect(actual == model, "refinement: kernel_view equals the model", || {
            describe_diff(&actual, &model)
        })?;
        // The raw page table: its invariant, and refinement.
        let pt_inv = self.pt().check_inv();
        self.expect(pt_inv.is_ok(), "Inv of the user page table", || format!("{pt_inv:?}"))?;
        let (first, last) = vaddr_bounds::<UserPtConfig<L::Format>>();
        let actual = spec::view_of(&mut self.pt().cursor(&(first..last + 1)).expect("the whole range"));
        let model = as_spec_view::<L>(&self.pt_view);
        self.expect(actual == model, "refinement: the user page table equals the model", || {
            describe_diff(&actual, &model)
        })?;
        // Reference counts.
        let mut refs: BTreeMap<Paddr, u64> = BTreeMap::new();
        for f in &self.kept {
            *refs.entry(f.paddr()).or_default() += 1;
        }
        for p in self.view.values().chain(self.pt_view.values()).filter(|p| p.tracked) {
            *refs.entry(p.pa).or_default() += 1;
        }
        for (&pa, &want) in &refs {
            let got = spec::frame_ref_count(self.space, pa);
            self.expect(got == want, "reference count = handles + mappings", || {
                format!("frame {pa:#x} has {got} references, the model counts {want}")
            })?;
        }
        // Accounting.
        let stats = self.space.phys_stats();
        let data_pages = stats.used_pages - stats.page_table_pages - self.base_data_pages;
        self.expect(data_pages == refs.len(), "data pages in use = live frames", || {
            format!("{data_pages} data pages in use, the model has {} live frames", refs.len())
        })?;
        let vm = self.space.vmalloc_stats();
        let used: usize = self.areas.iter().map(|a| a.range.len() + self.guard(a)).sum();
        self.expect(vm.total_bytes - vm.free_bytes == used, "VMALLOC in use = areas + guards", || {
            format!(
                "{:#x} bytes of VMALLOC in use, the model expects {used:#x}",
                vm.total_bytes - vm.free_bytes
            )
        })
    }

    /// A hash of the model's state: what is mapped, the areas with their
    /// split links, the frame handles held, the bytes written, and the
    /// space's counters. Two sequences that reach the same hash reached the
    /// same abstract state (up to hash collisions).
    fn state_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.view, &self.pt_view).hash(&mut h);
        for a in &self.areas {
            (&a.range, &a.mapped, a.kind == AreaKind::Tracked).hash(&mut h);
            let alive = |l: Option<u64>| l.map(|l| self.links[&l]);
            (alive(a.left), alive(a.right)).hash(&mut h);
        }
        let mut kept: Vec<Paddr> = self.kept.iter().map(Frame::paddr).collect();
        kept.sort_unstable();
        kept.hash(&mut h);
        let mut bytes: Vec<(&Paddr, &Vec<u8>)> = self.bytes.iter().collect();
        bytes.sort_unstable();
        bytes.hash(&mut h);
        let (phys, vm) = (self.space.phys_stats(), self.space.vmalloc_stats());
        (phys.used_pages, phys.page_table_pages, vm.free_bytes, vm.largest_free, vm.fragments).hash(&mut h);
        h.finish()
    }

    /// Drops everything and checks that the counters are back.
    fn finish(&mut self) -> Outcome {
        self.areas.clear();
        self.view.clear();
        self.pt = None;
        self.pt_view.clear();
        self.kept.clear();
        self.space.synchronize();
        let end = (self.space.phys_stats(), self.space.vmalloc_stats());
        self.expect(end == self.start, "no leak at the end", || {
            format!("start {:?}\nend   {:?}", self.start, end)
        })?;
        self.expect(self.space.areas().is_empty(), "registry empty at the end", || {
            format!("{:#x?}", self.space.areas())
        })
    }
}

fn common_violations(size: usize, offset: usize, len: usize, prop: &PageProperty) -> Vec<KVirtAreaError> {
    let mut v = Vec::new();
    if size == 0 {
        v.push(KVirtAreaError::ZeroSize);
    }
    if size % PAGE_SIZE != 0 {
        v.push(KVirtAreaError::MisalignedSize(size));
    }
    if offset % PAGE_SIZE != 0 {
        v.push(KVirtAreaError::MisalignedOffset(offset));
    }
    if offset >= size {
        v.push(KVirtAreaError::OffsetOutOfArea { map_offset: offset, area_size: size });
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        v.push(KVirtAreaError::MappingExceedsArea { map_offset: offset, len, area_size: size });
    }
    if prop.priv_flags.contains(kvirt::page_prop::PrivilegedPageFlags::USER) {
        v.push(KVirtAreaError::UserAccessible);
    }
    v
}

/// Replaces every page of `view` inside `range` by `inside(page)` (`None`:
/// unmapped). A huge page straddling the range is first split into its
/// `nr_entries` children, recursively, so that pages outside keep their
/// mapping and property: what kvirt must do (DESIGN.md section 4).
fn reshape(
    view: &mut BTreeMap<Vaddr, Page>,
    range: &Range<Vaddr>,
    nr_entries: usize,
    inside: impl Fn(Page) -> Option<Page> + Copy,
) {
    fn place(
        view: &mut BTreeMap<Vaddr, Page>,
        va: Vaddr,
        page: Page,
        range: &Range<Vaddr>,
        nr_entries: usize,
        inside: impl Fn(Page) -> Option<Page> + Copy,
    ) {
        let end = va + page.size;
        if end <= range.start || va >= range.end {
            view.insert(va, page);
        } else if range.start <= va && end <= range.end {
            if let Some(p) = inside(page) {
                view.insert(va, p);
            }
        } else {
            let child = page.size / nr_entries;
            for j in 0..nr_entries {
                let c = Page { pa: page.pa + j * child, size: child, ..page };
                place(view, va + j * child, c, range, nr_entries, inside);
            }
        }
    }
    if range.is_empty() {
        return;
    }
    let hit: Vec<Vaddr> = view
        .range(..range.end)
        .rev()
        .take_while(|(va, p)| *va + p.size > range.start)
        .map(|(va, _)| *va)
        .collect();
    for va in hit {
        let page = view.remove(&va).expect("just found");
        place(view, va, page, range, nr_entries, inside);
    }
}

/// The model's pages as the spec's view.
fn as_spec_view<L: KernelLayout>(view: &BTreeMap<Vaddr, Page>) -> PageTableView {
    view.iter()
        .map(|(&va, p)| {
            let level = spec::level_of_size::<L::Format>(p.size).expect("the model keeps leaf sizes");
            (va, Mapping { va, pa: p.pa, level, size: p.size, prop: p.prop, tracked: p.tracked })
        })
        .collect()
}

/// Physical addresses of format `L::Format` are below this.
fn pa_limit<L: KernelLayout>() -> Paddr {
    1 << L::Format::PA_BITS
}

/// The model's own greedy split into the largest pages (independent of
/// `kvirt::page_table::largest_pages`).
fn greedy_pages<F: PagingFormat>(mut va: Vaddr, mut pa: Paddr, mut len: usize) -> Vec<(Vaddr, Page)> {
    let prop = PageProperty::new_kernel(PageFlags::empty(), CachePolicy::Writeback);
    let mut out = Vec::new();
    while len > 0 {
        let size = (1..=F::HIGHEST_LEAF_LEVEL)
            .rev()
            .map(page_size::<F>)
            .find(|&s| s <= len && va % s == 0 && pa % s == 0)
            .expect("4 KiB always fits");
        out.push((va, Page { pa, size, prop, tracked: false }));
        va += size;
        pa += size;
        len -= size;
    }
    out
}

fn page_at(view: &BTreeMap<Vaddr, Page>, va: Vaddr) -> Option<(Vaddr, &Page)> {
    view.range(..=va).next_back().filter(|(base, p)| va < **base + p.size).map(|(base, p)| (*base, p))
}

fn describe_diff(actual: &PageTableView, model: &PageTableView) -> String {
    let only_actual = actual.iter().find(|(va, m)| model.get(va) != Some(m));
    let only_model = model.iter().find(|(va, m)| actual.get(va) != Some(m));
    format!(
        "{} mappings in the page table, {} in the model; first in the table but not the model: {:x?}; first in the model but not the table: {:x?}",
        actual.len(),
        model.len(),
        only_actual.map(|(_, m)| m),
        only_model.map(|(_, m)| m)
    )
}

/// Runs one sequence on a fresh space; returns the number of checks that
/// passed, or the first failure (a panic is a failure too).
pub fn run_sequence(ops: &[Op], options: &Options) -> Result<u64, Failure> {
    run_sequence_in::<kvirt::kspace::X86_64Layout>(ops, options, None)
}

/// [`run_sequence`] in a space laid out as `L`, calling `visit` (if any)
/// with a hash of the model's state after every operation.
pub fn run_sequence_in<L: KernelLayout>(
    ops: &[Op],
    options: &Options,
    mut visit: Option<&mut dyn FnMut(u64)>,
) -> Result<u64, Failure> {
    let step = std::cell::Cell::new(0);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let space = KernelSpace::<L>::hosted_with_layout(MachineConfig::new(options.ram_size).cpus(2));
        let mut runner = Runner::new(&space, options.ram_size, options.fault);
        let outcome = (|| {
            runner.check_all()?;
            for (i, op) in ops.iter().enumerate() {
                runner.step = i;
                step.set(i);
                runner.apply(op)?;
                runner.check_all()?;
                if let Some(visit) = visit.as_mut() {
                    visit(runner.state_hash());
                }
            }
            runner.step = ops.len();
            step.set(ops.len());
            runner.finish()
        })();
        let checks = runner.checks.get();
        // After a failure the state may be broken: a panic while tearing it
        // down must not hide the failure (and a space with areas or frames
        // left is leaked by its own drop, not freed).
        let _ = catch_unwind(AssertUnwindSafe(move || drop(runner)));
        drop(space);
        outcome.map(|()| checks)
    }));
    match result {
        Ok(r) => r,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "(non-string panic)".to_string());
            Err(Failure { step: step.get(), check: "no panic", message })
        }
    }
}

/// Simpler forms of an operation to try while shrinking: small area
/// indices and split points, fewer frames and pages, no kept handles.
fn simpler(op: &Op) -> Vec<Op> {
    let mut out = Vec::new();
    match *op {
        Op::Split { area, at } => {
            out.extend((0..4).filter(|&a| a < area).map(|a| Op::Split { area: a, at }));
            out.extend((0..4).filter(|&t| t < at).map(|t| Op::Split { area, at: t }));
        }
        Op::Query { area, page, byte } => {
            out.extend((0..4).filter(|&a| a < area).map(|a| Op::Query { area: a, page, byte }));
            if page > 0 || byte > 0 {
                out.push(Op::Query { area, page: 0, byte: 0 });
            }
        }
        Op::Write { area, offset, len, data } => {
            out.extend((0..4).filter(|&a| a < area).map(|a| Op::Write { area: a, offset, len, data }));
            if len > 1 {
                out.push(Op::Write { area, offset, len: 1, data });
            }
        }
        Op::Read { area, offset, len } => {
            out.extend((0..4).filter(|&a| a < area).map(|a| Op::Read { area: a, offset, len }));
            if len > 1 {
                out.push(Op::Read { area, offset, len: 1 });
            }
        }
        Op::Drop { area } => out.extend((0..4).filter(|&a| a < area).map(|a| Op::Drop { area: a })),
        Op::DropKept { which } => {
            out.extend((0..4).filter(|&w| w < which).map(|w| Op::DropKept { which: w }))
        }
        Op::CreateTracked { area_pages, size_extra, offset_pages, offset_extra, frames, keep, prop } => {
            let with = |area_pages, offset_pages, frames, keep| Op::CreateTracked {
                area_pages,
                size_extra,
                offset_pages,
                offset_extra,
                frames,
                keep,
                prop,
            };
            if keep {
                out.push(with(area_pages, offset_pages, frames, false));
            }
            if frames > 1 {
                out.push(with(area_pages, offset_pages, 1, keep));
            }
            if offset_pages > 0 {
                out.push(with(area_pages - offset_pages, 0, frames, keep));
            }
            if area_pages > offset_pages + frames + 1 {
                out.push(with(offset_pages + frames.max(1), offset_pages, frames, keep));
            }
        }
        Op::CreateUntracked { area_pages, offset_pages, pa, len_pages, prop } => {
            if offset_pages > 0 {
                out.push(Op::CreateUntracked {
                    area_pages: area_pages - offset_pages,
                    offset_pages: 0,
                    pa,
                    len_pages,
                    prop,
                });
            }
        }
        Op::PtMap { page, level, tracked } => {
            if page > 0 {
                out.push(Op::PtMap { page: 0, level, tracked });
            }
        }
        Op::PtUnmap { page, pages } | Op::PtProtect { page, pages } => {
            let same = |page, pages| match op {
                Op::PtUnmap { .. } => Op::PtUnmap { page, pages },
                _ => Op::PtProtect { page, pages },
            };
            if pages > 1 {
                out.push(same(page, 1));
            }
            if page > 0 {
                out.push(same(0, pages));
            }
        }
        Op::PtQuery { page } => {
            if page > 0 {
                out.push(Op::PtQuery { page: 0 });
            }
        }
    }
    out
}

/// Shrinks a failing sequence while the same check still fails: deletes
/// runs of operations (halving the run length down to one), then tries
/// simpler forms of each operation, and repeats while either helps.
/// Returns the minimal sequence, its failure and the number of sequences
/// run.
pub fn shrink(ops: &[Op], failure: &Failure, options: &Options) -> (Vec<Op>, Failure, usize) {
    const MAX_RUNS: usize = 3000;
    let mut current: Vec<Op> = ops[..(failure.step + 1).min(ops.len())].to_vec();
    let mut current_failure = failure.clone();
    let mut runs = 0;
    // Runs `candidate`; keeps it (cut after its failing step) if it fails
    // the same check.
    let attempt =
        |candidate: Vec<Op>, current: &mut Vec<Op>, current_failure: &mut Failure, runs: &mut usize| {
            *runs += 1;
            match run_sequence(&candidate, options) {
                Err(f) if f.check == failure.check => {
                    let mut candidate = candidate;
                    candidate.truncate((f.step + 1).min(candidate.len()));
                    *current = candidate;
                    *current_failure = f;
                    true
                }
                _ => false,
            }
        };
    loop {
        let before = current.clone();
        let mut chunk = current.len().div_ceil(2).max(1);
        loop {
            let mut progress = false;
            let mut i = 0;
            while i < current.len() && runs < MAX_RUNS {
                let mut candidate = current.clone();
                candidate.drain(i..(i + chunk).min(current.len()));
                if attempt(candidate, &mut current, &mut current_failure, &mut runs) {
                    progress = true;
                } else {
                    i += chunk;
                }
            }
            if runs >= MAX_RUNS || (chunk == 1 && !progress) {
                break;
            }
            if !progress {
                chunk = (chunk / 2).max(1);
            }
            chunk = chunk.min(current.len().max(1));
        }
        let mut i = 0;
        while i < current.len() && runs < MAX_RUNS {
            let mut improved = false;
            for op in simpler(&current[i]) {
                let mut candidate = current.clone();
                candidate[i] = op;
                if attempt(candidate, &mut current, &mut current_failure, &mut runs) {
                    improved = true;
                    break;
                }
            }
            if !improved {
                i += 1;
            }
        }
        if current == before || runs >= MAX_RUNS {
            break;
        }
    }
    (current, current_failure, runs)
}

/// Runs `options.sequences` sequences; stops at the first failure and
/// shrinks it.
#[must_use]
pub fn check(options: &Options) -> Report {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut counts = Counts::default();
    let mut failure = None;
    for index in 0..options.sequences {
        let seed = sequence_seed(options.seed, index);
        let ops = gen_sequence(seed, options.max_len);
        counts.sequences += 1;
        match run_sequence(&ops, options) {
            Ok(checks) => {
                counts.operations += ops.len() as u64;
                counts.checks += checks;
            }
            Err(original) => {
                counts.operations += original.step.min(ops.len()) as u64;
                let (minimal, minimal_failure, shrink_runs) = shrink(&ops, &original, options);
                failure = Some(FailureReport {
                    index,
                    seed,
                    original_len: ops.len(),
                    original,
                    minimal,
                    minimal_failure,
                    shrink_runs,
                });
                break;
            }
        }
    }
    std::panic::set_hook(hook);
    Report { counts, failure }
}

/// `kvirt check`: runs, prints the counts (and the shrunk failure).
///
/// # Errors
///
/// If a sequence fails, or `out` cannot be written.
pub fn run(options: &Options, out: &mut dyn Write) -> Result<(), Error> {
    writeln!(
        out,
        "kvirt check: {} sequences of up to {} operations, base seed {}, {} MiB machines",
        options.sequences,
        options.max_len,
        options.seed,
        options.ram_size >> 20
    )?;
    let report = check(options);
    let c = report.counts;
    if let Some(f) = &report.failure {
        writeln!(
            out,
            "\nFAILED: sequence #{} (seed {:#018x}, {} operations)",
            f.index, f.seed, f.original_len
        )?;
        writeln!(out, "  {}", f.original)?;
        writeln!(
            out,
            "\nminimal failing sequence ({} operations, found in {} shrinking runs), seed {:#018x}:",
            f.minimal.len(),
            f.shrink_runs,
            f.seed
        )?;
        for (i, op) in f.minimal.iter().enumerate() {
            writeln!(out, "  {i:>3}: {op}")?;
        }
        writeln!(out, "  fails at {}", f.minimal_failure)?;
        writeln!(
            out,
            "\nreproduce: kvirt check --seed {} --sequences {} --max-len {}",
            options.seed,
            f.index + 1,
            options.max_len
        )?;
    }
    writeln!(out, "\nsequences: {}\noperations: {}\nchecks: {}", c.sequences, c.operations, c.checks)?;
    match report.failure {
        None => {
            writeln!(out, "result: all passed")?;
            Ok(())
        }
        Some(f) => {
            writeln!(out, "result: FAILED")?;
            Err(crate::Error(format!("sequence #{} failed: {}", f.index, f.original)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(fault: Option<ModelFault>) -> Options {
        Options { sequences: 30, seed: 7, max_len: 25, fault, ..Options::default() }
    }

    #[test]
    fn the_correct_model_passes() {
        let report = check(&small(None));
        assert!(report.failure.is_none(), "{:#?}", report.failure);
        assert_eq!(report.counts.sequences, 30);
        assert!(report.counts.checks > report.counts.operations);
    }

    #[test]
    fn an_off_by_one_model_is_caught_and_shrunk() {
        let report = check(&small(Some(ModelFault::TrackedViewOffByOne)));
        let f = report.failure.expect("the wrong model must be caught");
        assert_eq!(f.original.check, "refinement: kernel_view equals the model");
        assert_eq!(f.minimal_failure.check, f.original.check);
        assert!(f.minimal.len() < f.original_len || f.original_len == 1);
        assert_eq!(f.minimal.len(), 1, "one mapping of a tracked frame is enough: {:#?}", f.minimal);
        assert!(
            matches!(f.minimal[0], Op::CreateTracked { frames, .. } if frames > 0),
            "the minimal sequence maps a tracked frame: {:?}",
            f.minimal
        );
        assert!(run_sequence(&f.minimal, &small(None)).is_ok(), "the right model accepts the sequence");
    }

    #[test]
    fn model_unmap_splits_huge_pages_like_design_says() {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        let mut r = Runner::new(&space, 16 << 20, None);
        let base = 1usize << 40;
        for (va, p) in greedy_pages::<kvirt::arch::x86_64::X86_64>(base, 1 << 30, 1 << 30) {
            r.view.insert(va, p);
        }
        r.model_unmap(&(base..base + PAGE_SIZE));
        assert_eq!(r.view.len(), 511 + 511);
        assert_eq!(r.view.get(&(base + PAGE_SIZE)).map(|p| p.size), Some(PAGE_SIZE));
        assert_eq!(
            r.view.get(&(base + (2 << 20))).map(|p| (p.pa, p.size)),
            Some(((1 << 30) + (2 << 20), 2 << 20))
        );
    }
}
