//! The checking logic of kvirt's fuzz targets.
//!
//! One file, used twice: it is the library of the cargo-fuzz crate (the
//! targets in `fuzz/fuzz_targets/` only hand libFuzzer's bytes to
//! [`kvirt_api`] and [`pte_decode`]), and the regression test of the main
//! test suite (`crates/kvirt/tests/fuzz_regressions.rs`) includes it as a
//! module and replays every saved input through the same functions. So it
//! depends on `kvirt` and `std` only, and decodes inputs with its own byte
//! reader, [`Input`]: every byte string is a valid input (a missing byte
//! reads as zero), and a saved input means the same thing in both places.
//!
//! Set `KVIRT_FUZZ_TRACE=1` to print each decoded operation (to replay a
//! crash by hand).
//!
//! ## `kvirt_api`
//!
//! Each input runs on its own small hosted kernel space (16 MiB of RAM), so
//! nothing carries over between inputs and every crash replays alone:
//! creating and dropping one costs about a millisecond under
//! AddressSanitizer, a tenth of a long input's time. The input is a sequence
//! of operations, one selector byte each, then its operands:
//!
//! * tracked areas (`try_map_frames`) with hostile `area_size`, `map_offset`
//!   and frame counts (fresh frames, clones of held frames, a frame of
//!   another space), untracked areas (`try_map_untracked_frames`) with
//!   hostile physical ranges (reversed, misaligned, tracked RAM, the
//!   reserved first MiB, the frame metadata, the device window, beyond
//!   `PA_BITS`). Every outcome is checked against the spec's panic
//!   conditions; a rejected call must leave frames, page-table pages,
//!   VMALLOC and the area registry exactly as they were;
//! * `query` inside an area, checked against a model of what the area maps
//!   and against the spec's `query_some_ensures` / `query_none_ensures`;
//!   outside it, the documented panic;
//! * `split` at valid offsets, byte reads and writes at hostile offsets and
//!   lengths (through RAM the fuzzer owns only), dropping areas, holding
//!   and releasing frames to run the allocator dry;
//! * sessions of raw cursor operations on a private kernel-half page table
//!   (`PageTable::<KernelPtConfig>::empty_in`): cursor creation over any
//!   range must give the predicted typed error or a cursor; then `jump`,
//!   `try_map` of hostile items, `take_next`, `protect_next`, `query` and
//!   `find_next`, each predicted by a small `BTreeMap` model (documented
//!   panics included). After each session the table's whole view must equal
//!   the model, its structure pass `check_inv` with exactly the nodes the
//!   model needs, and no page-table page may leak.
//!
//! After every operation each frame's reference count must equal the
//! handles held plus the entries mapping it; at the end of the input
//! everything is dropped and the space must be back at its baseline
//! (frames, page-table pages, VMALLOC, registry) and pass `inv()`.
//!
//! ## `pte_decode`
//!
//! Records of 12 bytes: a PTE word, a level, a property and a tracked flag.
//! Decoding any word at any level must not panic and must be
//! self-consistent: zero is absent, a leaf is at a leaf level with an
//! aligned, encodable address and re-encodes to itself, a table entry is
//! not at level 1 and re-encodes to the same address, and the tracked
//! marker never changes the property. The record's own (address, level,
//! property, tracked) must round-trip exactly through `encode_page`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use kvirt::arch::x86_64::X86_64;
use kvirt::arch::{page_size, PagingFormat, PteKind};
use kvirt::frame::{Frame, FrameAllocError, FrameAllocOptions, PhysStats, Segment};
use kvirt::kspace::{
    AreaAccessError, AreaInfo, KVirtArea, KVirtAreaError, KernelSpace, MappedItem, MappedItemRef, SplitError,
    VmallocStats, VMALLOC_VADDR_RANGE,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use kvirt::page_table::{vaddr_bounds, KernelPtConfig, MapErrorKind, PageTable, PageTableFrag, RangeError};
use kvirt::platform::MemoryRegionKind;
use kvirt::spec::{self, Inv};
use kvirt::{Paddr, PagingLevel, Vaddr, PAGE_SIZE};

#[path = "../crates/kvirt-model/src/pt.rs"]
mod pt_model;
use pt_model::{Leaf, PtModel, Taken, SZ_1G, SZ_2M};

/// A fuzz target's checks: run one input, panic on a violation.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the directory names under `fuzz/regressions`).
pub const TARGETS: [(&str, Target); 2] = [("kvirt_api", kvirt_api), ("pte_decode", pte_decode)];

/// The reserved low memory of a simulated machine: RAM no one uses, the
/// only RAM the fuzzer reads and writes through untracked areas.
const LOW_MEMORY: Paddr = 1 << 20;
/// The RAM of each input's kernel space.
const RAM_SIZE: usize = 16 << 20;
/// The most operations one input runs.
const MAX_OPS: usize = 256;
/// The most leaf entries an accepted untracked area may need (a cap on the
/// time one operation takes, not on what it may be asked).
const MAX_UNTRACKED_LEAVES: usize = 4096;
/// The most frames one tracked area maps.
const MAX_FRAMES: usize = 1024;
/// Physical addresses the format can express are below this.
const PA_LIMIT: usize = 1 << <X86_64 as PagingFormat>::PA_BITS;
/// Nodes of an empty kernel-half page table: the root and 256 L3 nodes.
const EMPTY_TABLE_NODES: usize = 1 + 256;

/// Values that make size and offset arithmetic interesting.
const INTERESTING: [usize; 25] = [
    0,
    1,
    PAGE_SIZE - 1,
    PAGE_SIZE,
    PAGE_SIZE + 1,
    2 * PAGE_SIZE,
    SZ_2M - PAGE_SIZE,
    SZ_2M,
    SZ_2M + PAGE_SIZE,
    SZ_1G - PAGE_SIZE,
    SZ_1G,
    SZ_1G + SZ_2M,
    512 * SZ_1G,
    1 << 45,
    (1 << 45) - PAGE_SIZE,
    (1 << 45) + PAGE_SIZE,
    1 << 47,
    PA_LIMIT - PAGE_SIZE,
    PA_LIMIT,
    isize::MAX as usize,
    (isize::MAX as usize) + 1,
    usize::MAX,
    usize::MAX & !(PAGE_SIZE - 1),
    usize::MAX / PAGE_SIZE,
    RAM_SIZE,
];

fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("KVIRT_FUZZ_TRACE").is_some_and(|v| v != "0"))
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

// ---------------------------------------------------------------------------
// Input decoding

/// A reader over the raw fuzz input. Reading past the end yields zeros.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes, little endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next eight bytes, little endian.
    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0; 8];
        for b in &mut bytes {
            *b = self.u8();
        }
        u64::from_le_bytes(bytes)
    }

    /// A number below `n` (`0 < n <= 65536`).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            self.u8() as usize % n
        } else {
            self.u16() as usize % n
        }
    }

    /// A byte's lowest bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// A hostile size, offset or address: small page multiples, edge values
    /// of the arithmetic and the layout, huge-page multiples, misaligned
    /// values and raw words.
    pub fn hostile(&mut self) -> usize {
        match self.below(8) {
            0 | 1 => self.below(24) * PAGE_SIZE,
            2 => INTERESTING[self.below(INTERESTING.len())],
            3 => INTERESTING[self.below(INTERESTING.len())]
                .wrapping_add(self.below(5) * PAGE_SIZE)
                .wrapping_sub(2 * PAGE_SIZE),
            4 => self.below(64) * SZ_2M,
            5 => self.below(64) * SZ_1G,
            6 => self.below(24) * PAGE_SIZE + 1 + self.u16() as usize % (PAGE_SIZE - 1),
            _ => self.u64() as usize,
        }
    }

    /// A property; user-accessible one time in eight.
    pub fn prop(&mut self) -> PageProperty {
        let b = self.u8();
        let flags = PageFlags::from_bits_truncate(b & 0x1f);
        let cache = CachePolicy::ALL[self.below(CachePolicy::ALL.len())];
        let mut priv_flags = PrivilegedPageFlags::empty();
        priv_flags.set(PrivilegedPageFlags::GLOBAL, b & 0x20 != 0);
        priv_flags.set(PrivilegedPageFlags::USER, b >> 6 == 3);
        PageProperty { flags, cache, priv_flags }
    }
}

// ---------------------------------------------------------------------------
// Documented panics

thread_local! {
    static EXPECTING_PANIC: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, which must panic (a documented panic), and returns the panic
/// message. libFuzzer's panic hook aborts the process on any panic, so a
/// hook installed on top of it stays silent while an expected panic
/// unwinds, and defers to it otherwise.
fn expect_panic(what: &str, f: impl FnOnce()) -> String {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(Cell::get) {
                previous(info);
            }
        }));
    });
    EXPECTING_PANIC.with(|e| e.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    EXPECTING_PANIC.with(|e| e.set(false));
    match result {
        Ok(()) => panic!("{what}: a documented panic did not happen"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// Target `pte_decode`

/// The `pte_decode` target: see the module documentation.
pub fn pte_decode(data: &[u8]) {
    check_pte_format::<X86_64>(data);
}

fn check_pte_format<F: PagingFormat>(data: &[u8]) {
    for level in 1..=F::NR_LEVELS {
        assert_eq!(F::decode(0, level), PteKind::Absent, "a zero entry at level {level}");
    }
    let mut inp = Input::new(data);
    while !inp.is_empty() {
        let raw = inp.u64();
        let level = 1 + inp.below(F::NR_LEVELS as usize) as PagingLevel;
        let prop = inp.prop();
        let tracked = inp.bool();
        check_decode::<F>(raw, level);
        // The record as a mapping to encode: its word as the address.
        let leaf_level = 1 + (level - 1) % F::HIGHEST_LEAF_LEVEL;
        let size = page_size::<F>(leaf_level);
        let pa = (raw as usize % PA_LIMIT) & !(size - 1);
        let encoded = F::encode_page(pa, leaf_level, prop, tracked);
        assert_eq!(
            F::decode(encoded, leaf_level),
            PteKind::Page { pa, prop, tracked },
            "encode_page({pa:#x}, {leaf_level}, {prop:?}, {tracked}) = {encoded:#x} does not decode back"
        );
    }
}

fn check_decode<F: PagingFormat>(raw: u64, level: PagingLevel) {
    let kind = F::decode(raw, level);
    let at = format!("decode({raw:#x}, {level}) = {kind:x?}");
    match kind {
        PteKind::Absent => {}
        PteKind::Table(pa) => {
            assert!(level > 1, "{at}: a table entry at level 1");
            assert!(pa % PAGE_SIZE == 0 && pa < PA_LIMIT, "{at}: a table address the format cannot hold");
            let again = F::encode_table(pa);
            assert_eq!(F::decode(again, level), kind, "{at}: encode_table gives {again:#x}");
        }
        PteKind::Page { pa, prop, tracked } => {
            assert!(level <= F::HIGHEST_LEAF_LEVEL, "{at}: a leaf above the highest leaf level");
            let size = page_size::<F>(level);
            assert!(pa % size == 0, "{at}: a misaligned leaf address");
            assert!(pa.checked_add(size).is_some_and(|end| end <= PA_LIMIT), "{at}: a leaf beyond PA_BITS");
            let again = F::encode_page(pa, level, prop, tracked);
            assert_eq!(F::decode(again, level), kind, "{at}: re-encoded as {again:#x}");
            let flipped = F::encode_page(pa, level, prop, !tracked);
            assert_eq!(
                F::decode(flipped, level),
                PteKind::Page { pa, prop, tracked: !tracked },
                "{at}: the tracked marker changes more than itself ({flipped:#x})"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Target `kvirt_api`: the area model

/// What one area maps, as the fuzzer knows it.
#[derive(Debug, Clone)]
struct AreaModel {
    /// The area's range now (after splits).
    range: Range<Vaddr>,
    /// The part mapped when the area was created. Only the part of it inside
    /// `range` belongs to this area; a split never changes the entries.
    origin: Range<Vaddr>,
    /// Tracked: the frame mapped at each page of `origin`.
    frames: Option<Vec<Paddr>>,
    /// Untracked: the physical address mapped at `origin.start`.
    pa: Paddr,
    prop: PageProperty,
    /// Never split: the page sizes are still the creation's.
    pristine: bool,
}

impl AreaModel {
    /// A new area's model: `len` bytes mapped at `map_offset` with `prop`;
    /// what is mapped (`frames` or `pa`) is the caller's to fill in.
    fn created(area: &KVirtArea, map_offset: usize, len: usize, prop: PageProperty) -> Self {
        let origin = area.start() + map_offset..area.start() + map_offset + len;
        AreaModel { range: area.range(), origin, frames: None, pa: 0, prop, pristine: true }
    }

    fn mapped(&self, va: Vaddr) -> bool {
        self.origin.contains(&va) && self.range.contains(&va)
    }

    fn mapped_range(&self) -> Range<Vaddr> {
        let s = self.origin.start.clamp(self.range.start, self.range.end);
        let e = self.origin.end.clamp(self.range.start, self.range.end);
        s..e.max(s)
    }
}

/// The accessible bytes at `offset..offset + len` of an area, as the model
/// predicts them: the error `read_bytes` / `write_bytes` must return (by the
/// first page that is unmapped, lacks the right the access needs, `W` to
/// write or `R` to read, or is not RAM), or whether the access stays in
/// memory the fuzzer may touch.
fn expect_access(
    m: &AreaModel,
    ram: &[Range<Paddr>],
    offset: usize,
    len: usize,
    write: bool,
) -> Result<bool, AreaAccessError> {
    let size = m.range.len();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(AreaAccessError::OutOfBounds { offset, len, size });
    }
    let (mut va, end) = (m.range.start + offset, m.range.start + offset + len);
    let mut ours = true;
    while va < end {
        let in_page = (PAGE_SIZE - va % PAGE_SIZE).min(end - va);
        if !m.mapped(va) {
            return Err(AreaAccessError::Unmapped(va));
        }
        if write && !m.prop.flags.contains(PageFlags::RW) {
            return Err(AreaAccessError::NotWritable(va));
        }
        if !write && !m.prop.flags.contains(PageFlags::R) {
            return Err(AreaAccessError::NotReadable(va));
        }
        if m.frames.is_none() {
            let pa = m.pa + (va - m.origin.start);
            if !ram.iter().any(|r| r.start <= pa && pa + in_page <= r.end) {
                return Err(AreaAccessError::NotRam(va));
            }
            // Untracked RAM above the low MiB is the frame metadata.
            ours &= pa + in_page <= LOW_MEMORY;
        }
        va += in_page;
    }
    Ok(ours)
}

// ---------------------------------------------------------------------------
// Target `kvirt_api`: the page-table model

/// The length of an entry's range as a cursor reports it (its end
/// saturates at `usize::MAX` at the top of the address space).
fn entry_len(r: &Range<Vaddr>) -> usize {
    if r.end == usize::MAX {
        r.end - r.start + 1
    } else {
        r.len()
    }
}

/// The error `cursor` / `cursor_mut` must return for `range`.
fn expect_range_error(range: &Range<Vaddr>) -> Option<RangeError> {
    let (first, last) = vaddr_bounds::<KernelPtConfig>();
    if range.start == range.end {
        Some(RangeError::Empty)
    } else if range.start > range.end {
        Some(RangeError::Reversed)
    } else if range.start % PAGE_SIZE != 0 || range.end % PAGE_SIZE != 0 {
        Some(RangeError::Misaligned)
    } else if range.start < first || range.end - 1 > last {
        Some(RangeError::OutOfBounds)
    } else {
        None
    }
}

/// After a `try_take_next` or `try_protect_next` that ran out of memory:
/// the model goes back to `saved`, and the cursor, at `va`, must stand in a
/// huge page it had to split. Returns `va`.
fn refused_split(model: &mut PtModel, saved: PtModel, va: Vaddr) -> Vaddr {
    *model = saved;
    trace!("  -> out of memory at {va:#x}");
    let huge = model.map.range(..=va).next_back().filter(|(start, leaf)| va < *start + leaf.size);
    assert!(
        huge.is_some_and(|(_, leaf)| leaf.size > PAGE_SIZE),
        "out of memory at {va:#x}, where no huge page needs a split"
    );
    va
}

/// The raw page table and its model.
struct RawPt {
    pt: PageTable<KernelPtConfig>,
    model: PtModel,
}

// ---------------------------------------------------------------------------
// Target `kvirt_api`: the world

/// A second kernel space, for frames that must be rejected as foreign.
fn foreign_space() -> &'static (KernelSpace, PhysStats) {
    static FOREIGN: OnceLock<(KernelSpace, PhysStats)> = OnceLock::new();
    FOREIGN.get_or_init(|| {
        let space = KernelSpace::new_hosted(kvirt::sim::MachineConfig::new(4 << 20));
        let stats = space.phys_stats();
        (space, stats)
    })
}

type Snapshot = (PhysStats, VmallocStats, Vec<AreaInfo>);

struct World {
    areas: Vec<(KVirtArea, AreaModel)>,
    pool: Vec<Frame<()>>,
    hogs: Vec<Segment<()>>,
    foreign: Vec<Frame<()>>,
    raw: Option<RawPt>,
    max_paddr: Paddr,
    /// The RAM regions of the machine's memory map (`Usable` and
    /// `Reserved`): the only memory byte access may touch.
    ram: Vec<Range<Paddr>>,
    device: Range<Paddr>,
    /// Dropped last: everything above points into it.
    space: KernelSpace,
}

impl World {
    /// The counters and the registry, once deferred frees have happened.
    fn snapshot(&self) -> Snapshot {
        self.space.synchronize();
        (self.space.phys_stats(), self.space.vmalloc_stats(), self.space.areas())
    }

    /// A physical range for an untracked area.
    fn pa_range(&self, inp: &mut Input<'_>) -> Range<Paddr> {
        let pool_pa = self.pool.first().map_or(LOW_MEMORY + 64 * PAGE_SIZE, Frame::paddr);
        let anchors = [
            0,
            PAGE_SIZE,
            LOW_MEMORY - PAGE_SIZE,
            LOW_MEMORY,
            pool_pa,
            self.max_paddr - PAGE_SIZE,
            self.max_paddr,
            self.device.start,
            self.device.start + SZ_2M,
            self.device.end - SZ_2M,
            self.device.end,
            self.device.end + SZ_1G,
            PA_LIMIT - SZ_1G,
            PA_LIMIT - PAGE_SIZE,
            PA_LIMIT,
            usize::MAX & !(PAGE_SIZE - 1),
        ];
        let anchor = |inp: &mut Input<'_>| {
            anchors[inp.below(anchors.len())]
                .wrapping_add(inp.below(8) * PAGE_SIZE)
                .wrapping_sub(2 * PAGE_SIZE)
        };
        match inp.below(8) {
            0 => 0..0,
            1 | 2 => {
                let start = anchor(inp);
                start..start.wrapping_add(inp.below(16) * PAGE_SIZE)
            }
            3 => {
                let start = anchor(inp);
                start..start.wrapping_add(inp.hostile())
            }
            4 => {
                let start = anchor(inp);
                start..start.wrapping_sub(inp.below(4) * PAGE_SIZE + PAGE_SIZE)
            }
            5 => anchor(inp)..anchor(inp),
            6 => {
                let start = anchor(inp).wrapping_add(inp.below(PAGE_SIZE));
                start..start.wrapping_add(inp.below(4 * PAGE_SIZE))
            }
            _ => inp.u64() as usize..inp.u64() as usize,
        }
    }

    /// An area size for mapping `len` bytes.
    fn area_size(inp: &mut Input<'_>, len: usize) -> usize {
        match inp.below(4) {
            0 => inp.hostile(),
            1 => len,
            _ => len.wrapping_add(inp.below(8) * PAGE_SIZE),
        }
    }

    /// A map offset into an area of `area_size` bytes mapping `len` bytes.
    fn map_offset(inp: &mut Input<'_>, area_size: usize, len: usize) -> usize {
        match inp.below(4) {
            0 => inp.hostile(),
            1 => 0,
            _ => area_size.wrapping_sub(len).wrapping_sub(inp.below(4) * PAGE_SIZE),
        }
    }

    fn op_alloc_pool(&mut self, inp: &mut Input<'_>) {
        let n = 1 + inp.below(8);
        trace!("alloc_pool {n}");
        for _ in 0..n {
            match FrameAllocOptions::new_in(&self.space).alloc_frame() {
                Ok(f) => self.pool.push(f),
                Err(e) => {
                    assert_eq!(e, FrameAllocError::OutOfMemory);
                    assert_eq!(
                        self.space.phys_stats().free_pages,
                        0,
                        "a single frame failed with free pages"
                    );
                    return;
                }
            }
        }
    }

    fn op_hog(&mut self, inp: &mut Input<'_>) {
        let free = self.space.phys_stats().free_pages;
        let n = match inp.below(6) {
            0 => 0,
            1 => 1 + inp.below(64),
            2 => free,
            3 => free.saturating_sub(inp.below(8)),
            4 => free + 1 + inp.below(4),
            _ => free / 2,
        };
        trace!("hog {n} of {free} free pages");
        let before = self.space.phys_stats();
        match FrameAllocOptions::new_in(&self.space).zeroed(false).alloc_segment(n) {
            Ok(seg) => {
                assert!(n <= free, "{n} pages allocated with {free} free");
                assert_eq!(seg.nr_pages(), n);
                self.hogs.push(seg);
            }
            Err(e) => {
                trace!("  -> {e:?}");
                let expected =
                    if n == 0 { FrameAllocError::ZeroLength } else { FrameAllocError::OutOfMemory };
                assert_eq!(e, expected, "allocating {n} pages");
                assert_eq!(self.space.phys_stats(), before, "a failed allocation changed the counters");
            }
        }
    }

    fn op_map_frames(&mut self, inp: &mut Input<'_>) {
        let before = self.snapshot();
        let mut frames: Vec<Frame<()>> = Vec::new();
        let n = match inp.below(6) {
            0 => 0,
            1 => 1,
            2 | 3 => inp.below(8),
            4 => inp.below(256),
            _ => MAX_FRAMES,
        };
        let mut foreign = None;
        match inp.below(4) {
            0 | 1 => {
                if n > 0 {
                    match FrameAllocOptions::new_in(&self.space).alloc_segment(n) {
                        Ok(seg) => frames.extend(seg),
                        Err(e) => {
                            trace!("map_frames: no {n} fresh frames ({e:?})");
                            assert_eq!(self.snapshot(), before);
                            return;
                        }
                    }
                }
            }
            2 => {
                if !self.pool.is_empty() {
                    for _ in 0..n {
                        frames.push(self.pool[inp.below(self.pool.len())].clone());
                    }
                }
            }
            _ => {
                for _ in 0..n.min(8) {
                    if let Some(f) = self.pool.get(inp.below(self.pool.len().max(1))) {
                        frames.push(f.clone());
                    }
                }
                if let Ok(f) = FrameAllocOptions::new_in(&foreign_space().0).alloc_frame() {
                    let at = inp.below(frames.len() + 1);
                    foreign = Some(f.paddr());
                    frames.insert(at, f.clone());
                    self.foreign.push(f);
                }
            }
        }
        let len = frames.len() * PAGE_SIZE;
        let area_size = Self::area_size(inp, len);
        let map_offset = Self::map_offset(inp, area_size, len);
        let prop = inp.prop();
        let pas: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
        let panics = spec::map_frames_panic_condition(area_size, map_offset, frames.len(), &prop);
        assert_eq!(
            spec::map_frames_foreign_frame_condition(&self.space, &frames),
            foreign.is_some(),
            "the spec's foreign-frame condition"
        );
        trace!(
            "map_frames size {area_size:#x} offset {map_offset:#x} frames {} foreign {foreign:x?} {prop:?}: panics {panics}",
            frames.len()
        );
        match self.space.try_map_frames(area_size, map_offset, frames, prop) {
            Ok(area) => {
                assert!(!panics, "map_frames accepted a call its panic condition rejects");
                assert!(foreign.is_none(), "map_frames accepted a frame of another space");
                let model =
                    AreaModel { frames: Some(pas), ..AreaModel::created(&area, map_offset, len, prop) };
                self.adopt_new_area(area, model, area_size);
            }
            Err(e) => {
                trace!("  -> {e:?}");
                // The seed's panic conditions first, then the frames' space.
                if !panics && !spec::is_resource_error(&e) {
                    assert_eq!(
                        Some(&e),
                        foreign.map(KVirtAreaError::ForeignFrame).as_ref(),
                        "map_frames: {e}"
                    );
                }
                assert_eq!(self.snapshot(), before, "map_frames rejected ({e}) but changed the space");
            }
        }
    }

    fn op_map_untracked(&mut self, inp: &mut Input<'_>) {
        let pa = self.pa_range(inp);
        let len = pa.end.wrapping_sub(pa.start);
        let area_size = Self::area_size(inp, len);
        let map_offset = Self::map_offset(inp, area_size, len);
        let prop = inp.prop();
        let panics =
            spec::map_untracked_frames_panic_condition(&self.space, area_size, map_offset, &pa, &prop);
        trace!(
            "map_untracked size {area_size:#x} offset {map_offset:#x} pa {pa:#x?} {prop:?}: panics {panics}"
        );
        // The alignment the area gets so that huge pages fit.
        let huge = [SZ_1G, SZ_2M].into_iter().find(|&a| len >= a && pa.start % a == 0 && map_offset % a == 0);
        let leaves = huge.map_or(len / PAGE_SIZE, |a| len / a + 2 * 512);
        if !panics && leaves > MAX_UNTRACKED_LEAVES {
            trace!("  skipped: {leaves} leaves");
            return;
        }
        let before = self.snapshot();
        // SAFETY: creating the mapping accesses nothing. The range holds no
        // page the frame allocator can hand out (or the call is rejected):
        // it is the reserved low MiB, the frame metadata, the device window
        // or non-RAM. The fuzzer never accesses any of it through the area
        // except bytes of the low MiB, which nothing else uses, and the
        // simulated CPUs never run code that would.
        let result = unsafe { self.space.try_map_untracked_frames(area_size, map_offset, pa.clone(), prop) };
        match result {
            Ok(area) => {
                assert!(!panics, "map_untracked_frames accepted a call its panic condition rejects");
                if let Some(a) = huge {
                    assert_eq!(
                        area.start() % a,
                        0,
                        "an untracked area that can use {a:#x} pages is not aligned"
                    );
                }
                let model = AreaModel { pa: pa.start, ..AreaModel::created(&area, map_offset, len, prop) };
                self.adopt_new_area(area, model, area_size);
            }
            Err(e) => {
                trace!("  -> {e:?}");
                assert!(
                    panics || spec::is_resource_error(&e),
                    "map_untracked_frames rejected ({e}) a valid call"
                );
                assert_eq!(
                    self.snapshot(),
                    before,
                    "map_untracked_frames rejected ({e}) but changed the space"
                );
            }
        }
    }

    /// Checks a new area against what was asked and keeps it with its model.
    fn adopt_new_area(&mut self, area: KVirtArea, model: AreaModel, area_size: usize) {
        assert_eq!(area.size(), area_size);
        assert_eq!(area.range(), area.start()..area.end());
        assert!(VMALLOC_VADDR_RANGE.start <= area.start() && area.end() <= VMALLOC_VADDR_RANGE.end);
        assert_eq!(area.mapped_range(), model.origin);
        if let Err(clause) = area.check() {
            panic!("a new area breaks inv(): {clause}");
        }
        self.areas.push((area, model));
    }

    fn pick_area(&self, inp: &mut Input<'_>) -> Option<usize> {
        (!self.areas.is_empty()).then(|| inp.below(self.areas.len()))
    }

    fn op_query(&mut self, inp: &mut Input<'_>) {
        let Some(i) = self.pick_area(inp) else { return };
        let (area, m) = &self.areas[i];
        let r = m.range.clone();
        let addr = match inp.below(8) {
            0 | 1 => r.start + inp.hostile() % r.len(),
            2 => r.start.wrapping_add(inp.hostile()),
            3 => r.end - 1 - inp.below(PAGE_SIZE + 1).min(r.len() - 1),
            4 => r.end + inp.below(2) * inp.below(PAGE_SIZE),
            5 => r.start.wrapping_sub(1 + inp.below(2 * PAGE_SIZE)),
            6 => [m.origin.start, m.origin.end, m.origin.end.wrapping_sub(1)][inp.below(3)],
            _ => inp.u64() as usize,
        };
        trace!("query area {i} {r:#x?} at {addr:#x}");
        if !r.contains(&addr) {
            let msg = expect_panic("KVirtArea::query outside the area", || {
                let _ = area.query(addr);
            });
            assert!(msg.contains("outside the area"), "query's panic does not name the precondition: {msg}");
            return;
        }
        let got = area.query(addr);
        let page = addr & !(PAGE_SIZE - 1);
        match (&got, &m.frames) {
            (None, _) => assert!(!m.mapped(addr), "query at {addr:#x} found nothing in the mapped part"),
            (Some(_), _) if !m.mapped(addr) => {
                panic!("query at {addr:#x} outside the mapped part found {got:x?}")
            }
            (Some(MappedItemRef::Tracked(f, p)), Some(frames)) => {
                let expected = frames[(page - m.origin.start) / PAGE_SIZE];
                assert_eq!((f.paddr(), *p), (expected, m.prop), "query at {addr:#x}");
            }
            (Some(MappedItemRef::Untracked(pa, level, p)), None) => {
                assert_eq!(*p, m.prop, "query at {addr:#x}: property");
                assert!(
                    (1..=X86_64::HIGHEST_LEAF_LEVEL).contains(level),
                    "query at {addr:#x}: level {level}"
                );
                let size = page_size::<X86_64>(*level);
                let start = addr & !(size - 1);
                assert!(
                    m.origin.start <= start && start + size <= m.origin.end,
                    "query at {addr:#x}: a {size:#x} page sticks out of the mapped part {:#x?}",
                    m.origin
                );
                assert_eq!(*pa, m.pa + (start - m.origin.start), "query at {addr:#x}: physical address");
                if m.pristine && *level < X86_64::HIGHEST_LEAF_LEVEL {
                    let bigger = page_size::<X86_64>(*level + 1);
                    let b = addr & !(bigger - 1);
                    let fits = m.origin.start <= b && b + bigger <= m.origin.end;
                    assert!(
                        !(fits && (m.pa + (b - m.origin.start)) % bigger == 0),
                        "query at {addr:#x}: mapped with {size:#x} pages where a {bigger:#x} page fits"
                    );
                }
            }
            _ => panic!("query at {addr:#x}: {got:x?} for an area of the other kind"),
        }
        let view = spec::kernel_view(&self.space, &(page..page + PAGE_SIZE));
        if spec::query_some_condition(&view, addr) {
            assert!(spec::query_some_ensures(&view, addr, &got), "query_some_ensures at {addr:#x}: {got:x?}");
        } else {
            assert!(spec::query_none_ensures(&got), "query_none_ensures at {addr:#x}: {got:x?}");
        }
    }

    fn op_split(&mut self, inp: &mut Input<'_>) {
        let Some(i) = self.pick_area(inp) else { return };
        let size = self.areas[i].1.range.len();
        let offset = match inp.below(3) {
            0 => inp.hostile(),
            _ => (inp.hostile() % size) & !(PAGE_SIZE - 1),
        };
        let valid = offset % PAGE_SIZE == 0 && 0 < offset && offset < size;
        trace!("split area {i} of {size:#x} at {offset:#x}: valid {valid}");
        let (area, m) = self.areas.swap_remove(i);
        let before = self.snapshot();
        let (left, right) = match area.try_split(offset) {
            Ok(halves) => {
                assert!(valid, "try_split accepted the bad offset {offset:#x} in an area of {size:#x} bytes");
                halves
            }
            Err((area, e)) => {
                trace!("  -> {e:?}");
                let expected =
                    if valid { SplitError::OutOfMemory } else { SplitError::BadOffset { offset, size } };
                assert_eq!(e, expected, "try_split at {offset:#x} of {size:#x}");
                assert_eq!(area.range(), m.range, "a refused split changed the area");
                assert_eq!(self.snapshot(), before, "try_split refused ({e}) but changed the space");
                self.areas.push((area, m));
                return;
            }
        };
        let mid = m.range.start + offset;
        let lm = AreaModel { range: m.range.start..mid, pristine: false, ..m.clone() };
        let rm = AreaModel { range: mid..m.range.end, pristine: false, ..m };
        for (a, am) in [(&left, &lm), (&right, &rm)] {
            assert_eq!(a.range(), am.range);
            let expected = am.mapped_range();
            let got = a.mapped_range();
            assert!(got == expected || (got.is_empty() && expected.is_empty()), "split: mapped {got:#x?}");
            if let Err(clause) = a.check() {
                panic!("a split half breaks inv(): {clause}");
            }
        }
        self.areas.push((left, lm));
        self.areas.push((right, rm));
    }

    fn op_access(&mut self, inp: &mut Input<'_>, write: bool) {
        let Some(i) = self.pick_area(inp) else { return };
        let size = self.areas[i].1.range.len();
        let offset = match inp.below(4) {
            0 => inp.hostile(),
            1 => size.wrapping_sub(inp.below(2 * PAGE_SIZE)),
            _ => inp.hostile() % size,
        };
        let len = match inp.below(4) {
            0 => inp.below(3) * PAGE_SIZE,
            1 => inp.below(3 * PAGE_SIZE),
            _ => inp.below(256),
        };
        let fill = inp.u8();
        let (area, m) = &self.areas[i];
        let expected = expect_access(m, &self.ram, offset, len, write);
        trace!(
            "{} area {i} offset {offset:#x} len {len:#x}: {expected:?}",
            if write { "write" } else { "read" }
        );
        if expected == Ok(false) {
            return; // untracked RAM the fuzzer does not own
        }
        let expected = expected.map(|_| ());
        let data: Vec<u8> = (0..len).map(|k| fill.wrapping_add(k as u8)).collect();
        let mut buf = vec![0u8; len];
        if write {
            assert_eq!(area.write_bytes(offset, &data), expected, "write_bytes at {offset:#x} len {len:#x}");
            if expected.is_ok() {
                // A write-only area refuses the read back.
                let back = expect_access(m, &self.ram, offset, len, false).map(|_| ());
                assert_eq!(area.read_bytes(offset, &mut buf), back, "read after write at {offset:#x}");
                if back.is_ok() {
                    assert_eq!(buf, data, "read after write at {offset:#x}");
                }
            }
        } else {
            assert_eq!(area.read_bytes(offset, &mut buf), expected, "read_bytes at {offset:#x} len {len:#x}");
        }
    }

    fn op_drop_area(&mut self, inp: &mut Input<'_>) {
        let Some(i) = self.pick_area(inp) else { return };
        trace!("drop area {i}");
        drop(self.areas.swap_remove(i));
    }

    fn op_drop_frames(&mut self, inp: &mut Input<'_>) {
        trace!("drop frames");
        if inp.bool() {
            if !self.pool.is_empty() {
                let i = inp.below(self.pool.len());
                self.pool.swap_remove(i);
            }
        } else if !self.hogs.is_empty() {
            let i = inp.below(self.hogs.len());
            self.hogs.swap_remove(i);
        }
    }

    /// Each held frame's count: our handle plus every entry mapping it.
    fn check_ref_counts(&self) {
        let mut expected: BTreeMap<Paddr, u64> = BTreeMap::new();
        for f in &self.pool {
            *expected.entry(f.paddr()).or_default() += 1;
        }
        for (_, m) in &self.areas {
            let Some(frames) = &m.frames else { continue };
            for (k, &pa) in frames.iter().enumerate() {
                if m.range.contains(&(m.origin.start + k * PAGE_SIZE)) {
                    *expected.entry(pa).or_default() += 1;
                }
            }
        }
        if let Some(raw) = &self.raw {
            for leaf in raw.model.map.values().filter(|l| l.tracked) {
                *expected.entry(leaf.pa).or_default() += 1;
            }
        }
        for (pa, n) in expected {
            assert_eq!(spec::frame_ref_count(&self.space, pa), n, "reference count of frame {pa:#x}");
        }
    }
}

// ---------------------------------------------------------------------------
// Target `kvirt_api`: raw page-table sessions

/// An address in the window raw sessions mostly use: a few slots per level
/// so that operations collide and huge pages get split.
fn window_va(inp: &mut Input<'_>) -> Vaddr {
    const WIN: Vaddr = 0xffff_c000_4000_0000;
    const SLOTS: [usize; 4] = [0, 1, 255, 511];
    WIN + inp.below(4) * SZ_1G + SLOTS[inp.below(4)] * SZ_2M + SLOTS[inp.below(4)] * PAGE_SIZE
}

/// A cursor range: mostly inside the window, sometimes anywhere.
fn cursor_range(inp: &mut Input<'_>) -> Range<Vaddr> {
    let (first, _) = vaddr_bounds::<KernelPtConfig>();
    let top = usize::MAX & !(PAGE_SIZE - 1);
    match inp.below(8) {
        0..=3 => {
            let (a, b) = (window_va(inp), window_va(inp));
            let (lo, hi) = (a.min(b), a.max(b));
            lo..hi.max(lo + PAGE_SIZE)
        }
        4 => {
            let start = window_va(inp);
            start..start + [PAGE_SIZE, SZ_2M, SZ_1G, 4 * SZ_1G][inp.below(4)]
        }
        5 => {
            let anchors = [first, first + SZ_1G, VMALLOC_VADDR_RANGE.start, top - SZ_1G, top - SZ_2M, top, 0];
            let start = anchors[inp.below(anchors.len())];
            start..start.wrapping_add(inp.hostile())
        }
        6 => {
            let end = [top, first, VMALLOC_VADDR_RANGE.end][inp.below(3)];
            end.wrapping_sub(inp.hostile())..end
        }
        _ => inp.u64() as usize..inp.u64() as usize,
    }
}

/// A length for a search from `va` in a cursor over `range`.
fn search_len(inp: &mut Input<'_>, range: &Range<Vaddr>, va: Vaddr) -> usize {
    let rest = range.end - va;
    match inp.below(6) {
        0..=2 => rest,
        3 => rest.min(inp.below(4) * [PAGE_SIZE, SZ_2M, SZ_1G][inp.below(3)]),
        4 => inp.hostile(),
        _ => rest.wrapping_add(PAGE_SIZE),
    }
}

impl World {
    fn raw_pt(&mut self) -> bool {
        if self.raw.is_some() {
            return true;
        }
        self.space.synchronize();
        let before = self.space.phys_stats();
        match PageTable::<KernelPtConfig>::empty_in(&self.space) {
            Ok(pt) => {
                let after = self.space.phys_stats().page_table_pages;
                assert_eq!(after - before.page_table_pages, EMPTY_TABLE_NODES, "nodes of an empty table");
                self.raw = Some(RawPt { pt, model: PtModel::default() });
                true
            }
            Err(_) => {
                self.space.synchronize();
                assert_eq!(self.space.phys_stats(), before, "a failed PageTable::empty_in leaked");
                false
            }
        }
    }

    fn op_pt_session(&mut self, inp: &mut Input<'_>) {
        let range = cursor_range(inp);
        let expected = expect_range_error(&range);
        trace!("pt session over {range:#x?}: {expected:?}");
        if !self.raw_pt() {
            return;
        }
        self.space.synchronize();
        let nodes_before = self.space.phys_stats().page_table_pages;
        let raw = self.raw.as_mut().expect("created above");
        let model_nodes_before = raw.model.nodes();
        assert_eq!(raw.pt.cursor(&range).err(), expected, "Cursor::new over {range:#x?}");
        let mut c = match raw.pt.cursor_mut(&range) {
            Ok(c) => {
                assert_eq!(expected, None);
                c
            }
            Err(e) => {
                assert_eq!(Some(e), expected, "CursorMut::new over {range:#x?}");
                return;
            }
        };
        let model = &mut raw.model;
        let foreign = &mut self.foreign;
        let pool = &self.pool;
        let mut va = range.start;
        for _ in 0..1 + inp.below(16) {
            assert_eq!(c.virt_addr(), va, "the cursor's address");
            match inp.below(8) {
                0 => {
                    let to = match inp.below(5) {
                        0 => window_va(inp),
                        1 => range.end,
                        2 => range.start.wrapping_add(inp.hostile()),
                        3 => model.map.keys().nth(inp.below(model.map.len().max(1))).copied().unwrap_or(va),
                        _ => inp.u64() as usize,
                    };
                    let ok = to % PAGE_SIZE == 0 && range.start <= to && to <= range.end;
                    trace!("  jump {to:#x}: ok {ok}");
                    match c.jump(to) {
                        Ok(()) => {
                            assert!(ok, "jump to {to:#x} accepted");
                            va = to;
                        }
                        Err(e) => {
                            assert!(!ok, "jump to {to:#x} rejected");
                            assert_eq!((e.va, e.range), (to, range.clone()));
                        }
                    }
                }
                1..=3 => {
                    let level: PagingLevel = match inp.below(8) {
                        0..=2 => 1,
                        3 | 4 => 2,
                        5 => 3,
                        6 => [0, 4, 5][inp.below(3)],
                        _ => inp.u8(),
                    };
                    let sz = if (1..=3).contains(&level) { page_size::<X86_64>(level) } else { PAGE_SIZE };
                    let pa = match inp.below(4) {
                        0 | 1 => 0x1_0000_0000 + inp.below(8) * sz,
                        2 => inp.hostile(),
                        _ => PA_LIMIT.wrapping_sub(inp.below(3) * sz),
                    };
                    let prop = inp.prop();
                    let (item, tracked_pa, is_foreign) = match inp.below(8) {
                        0 | 1 if !pool.is_empty() => {
                            let f = pool[inp.below(pool.len())].clone();
                            (MappedItem::Tracked(f.clone().into_dyn(), prop), Some(f.paddr()), false)
                        }
                        2 => match FrameAllocOptions::new_in(&foreign_space().0).alloc_frame() {
                            Ok(f) => {
                                foreign.push(f.clone());
                                (MappedItem::Tracked(f.into_dyn(), prop), None, true)
                            }
                            Err(_) => (MappedItem::Untracked(pa, level, prop), None, false),
                        },
                        _ => (MappedItem::Untracked(pa, level, prop), None, false),
                    };
                    let (pa, level) = match &item {
                        MappedItem::Tracked(f, _) => (f.paddr(), 1),
                        MappedItem::Untracked(pa, level, _) => (*pa, *level),
                    };
                    let predicted = if is_foreign {
                        Err(MapErrorKind::ForeignFrame)
                    } else if !(1..=X86_64::HIGHEST_LEAF_LEVEL).contains(&level) {
                        Err(MapErrorKind::UnsupportedLevel)
                    } else {
                        let size = page_size::<X86_64>(level);
                        if va >= range.end || size > range.end - va {
                            Err(MapErrorKind::OutOfRange)
                        } else if va % size != 0 || pa % size != 0 {
                            Err(MapErrorKind::Misaligned)
                        } else if pa.checked_add(size).is_none_or(|end| end > PA_LIMIT) {
                            Err(MapErrorKind::PaddrTooLarge)
                        } else if model.first_intersecting(va, va + size).is_some() {
                            Err(MapErrorKind::AlreadyMapped)
                        } else {
                            Ok(size)
                        }
                    };
                    trace!("  map {item:x?} at {va:#x}: {predicted:x?}");
                    match (c.try_map(item), predicted) {
                        (Ok(()), Ok(size)) => {
                            let leaf = Leaf { pa, size, prop, tracked: tracked_pa.is_some() };
                            model.map.insert(va, leaf);
                            va += size;
                        }
                        (Err(e), Ok(_)) if e.kind == MapErrorKind::OutOfMemory => {
                            trace!("  -> out of memory")
                        }
                        (Err(e), Err(kind)) => assert_eq!(e.kind, kind, "try_map at {va:#x}"),
                        (got, predicted) => {
                            panic!(
                                "try_map at {va:#x}: got {:?}, predicted {predicted:?}",
                                got.map_err(|e| e.kind)
                            )
                        }
                    }
                }
                4 | 5 => {
                    let len = search_len(inp, &range, va);
                    let protect = inp.bool();
                    let new = inp.prop();
                    let valid = len % PAGE_SIZE == 0 && len <= range.end - va;
                    trace!(
                        "  {} {len:#x} from {va:#x}: valid {valid}",
                        if protect { "protect" } else { "take" }
                    );
                    if !valid {
                        let msg = expect_panic("a search past the cursor's range", || {
                            if protect {
                                let _ = c.protect_next(len, &mut |p: &mut PageProperty| *p = new);
                            } else {
                                let _ = c.take_next(len);
                            }
                        });
                        assert!(msg.contains("page aligned") || msg.contains("reaches past"), "{msg}");
                        continue;
                    }
                    let end = va + len;
                    let saved = model.clone();
                    if protect {
                        let (predicted, next) = model.protect_next(va, end, new);
                        let Ok(got) = c.try_protect_next(len, &mut |p: &mut PageProperty| *p = new) else {
                            va = refused_split(model, saved, c.virt_addr());
                            continue;
                        };
                        assert_eq!(got, predicted, "protect_next from {va:#x} to {end:#x}");
                        va = next;
                    } else {
                        let (predicted, next) = model.take_next(va, end);
                        let Ok(got) = c.try_take_next(len) else {
                            va = refused_split(model, saved, c.virt_addr());
                            continue;
                        };
                        let got = got.map(|frag| match frag {
                            PageTableFrag::Mapped { va, item } => {
                                let leaf = match &item {
                                    MappedItem::Tracked(f, p) => {
                                        Leaf { pa: f.paddr(), size: PAGE_SIZE, prop: *p, tracked: true }
                                    }
                                    MappedItem::Untracked(pa, l, p) => Leaf {
                                        pa: *pa,
                                        size: page_size::<X86_64>(*l),
                                        prop: *p,
                                        tracked: false,
                                    },
                                };
                                Taken::Leaf(va, leaf)
                            }
                            PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
                                Taken::SubTree { va, len, num_frames }
                            }
                        });
                        assert_eq!(got, predicted, "take_next from {va:#x} to {end:#x}");
                        va = next;
                    }
                }
                6 => {
                    trace!("  query at {va:#x}");
                    match c.query() {
                        Err(e) => {
                            assert!(va >= range.end, "query at {va:#x} failed");
                            assert_eq!((e.va, e.range), (va, range.clone()));
                        }
                        Ok((r, item)) => {
                            assert!(va < range.end, "query at the end of the range succeeded");
                            let got = item.map(|i| {
                                let tracked = matches!(i, MappedItemRef::Tracked(..));
                                Leaf {
                                    pa: i.paddr(),
                                    size: page_size::<X86_64>(i.level()),
                                    prop: i.prop(),
                                    tracked,
                                }
                            });
                            match model.covering(va) {
                                Some((s, leaf)) => {
                                    assert_eq!((r, got), (s..s + leaf.size, Some(leaf)), "query at {va:#x}")
                                }
                                None => {
                                    // An emptied node stays attached while this
                                    // cursor holds it, so the absent slot may be
                                    // smaller than the model's.
                                    let len = entry_len(&r);
                                    assert_eq!(got, None, "query at {va:#x}");
                                    assert!(
                                        [PAGE_SIZE, SZ_2M, SZ_1G].contains(&len)
                                            && len <= model.absent_size(va)
                                            && r.start == va & !(len - 1),
                                        "query at {va:#x}: absent slot {r:#x?}, model {:#x}",
                                        model.absent_size(va)
                                    );
                                }
                            }
                        }
                    }
                }
                _ => {
                    let len = search_len(inp, &range, va);
                    let valid = len % PAGE_SIZE == 0 && len <= range.end - va;
                    trace!("  find_next {len:#x} from {va:#x}: valid {valid}");
                    if !valid {
                        let msg = expect_panic("a search past the cursor's range", || {
                            let _ = c.find_next(len);
                        });
                        assert!(msg.contains("page aligned") || msg.contains("reaches past"), "{msg}");
                        continue;
                    }
                    let predicted = model.find_next(va, va + len);
                    assert_eq!(c.find_next(len), predicted, "find_next from {va:#x}");
                    va = predicted.unwrap_or(va + len);
                }
            }
        }
        assert_eq!(c.virt_addr(), va, "the cursor's address");
        drop(c);
        self.check_raw_pt_session(&range, nodes_before, model_nodes_before);
    }

    /// After a session over `range`: the leaves the table shows there equal
    /// the model's, and page-table pages changed as the model's nodes did
    /// (so no node leaked or was freed early).
    fn check_raw_pt_session(&self, range: &Range<Vaddr>, nodes_before: usize, model_nodes_before: usize) {
        let raw = self.raw.as_ref().expect("a raw table exists");
        let view = spec::view_of(&mut raw.pt.cursor(range).expect("the session's range"));
        let mut model = spec::PageTableView::new();
        if let Some((s, _)) = raw.model.first_intersecting(range.start, range.end) {
            for (&va, l) in raw.model.map.range(s..range.end) {
                model.insert(va, l.to_spec(va));
            }
        }
        assert_eq!(view, model, "the raw page table's view of {range:#x?} against the model");
        self.space.synchronize();
        let now = self.space.phys_stats().page_table_pages;
        assert_eq!(
            now as isize - nodes_before as isize,
            raw.model.nodes() as isize - model_nodes_before as isize,
            "page-table pages in use after a session over {range:#x?}"
        );
    }

    /// The expensive checks (walks of every node), at the end of the inputs
    /// that ask for them, so that the fuzzer decides how often to pay: the
    /// space's and every area's `inv()`, and the whole raw table against its
    /// model, well formed, with exactly the nodes the model needs.
    fn full_check(&self) {
        if let Err(clause) = self.space.check() {
            panic!("the space breaks inv(): {clause}");
        }
        for (area, m) in &self.areas {
            if let Err(clause) = area.check() {
                panic!("area {:#x?} breaks inv(): {clause}", m.range);
            }
        }
        let Some(raw) = &self.raw else { return };
        let (first, _) = vaddr_bounds::<KernelPtConfig>();
        let whole = first..usize::MAX & !(PAGE_SIZE - 1);
        let view = spec::view_of(&mut raw.pt.cursor(&whole).expect("the kernel half"));
        let model: spec::PageTableView = raw.model.map.iter().map(|(&va, l)| (va, l.to_spec(va))).collect();
        assert_eq!(view, model, "the raw page table's view against the model");
        let nodes = raw.pt.check_inv().unwrap_or_else(|clause| panic!("raw page table: {clause}"));
        assert_eq!(nodes, EMPTY_TABLE_NODES + raw.model.nodes(), "nodes reachable in the raw page table");
    }
}

// ---------------------------------------------------------------------------
// Target `kvirt_api`

/// The `kvirt_api` target: see the module documentation.
pub fn kvirt_api(data: &[u8]) {
    let space = KernelSpace::new_hosted(kvirt::sim::MachineConfig::new(RAM_SIZE));
    let device = space.memory_map().iter().find(|r| r.kind == MemoryRegionKind::Device);
    let device = device.expect("a hosted space has a device window").range.clone();
    let ram = space
        .memory_map()
        .iter()
        .filter(|r| r.kind != MemoryRegionKind::Device)
        .map(|r| r.range.clone())
        .collect();
    let mut world = World {
        areas: Vec::new(),
        pool: Vec::new(),
        hogs: Vec::new(),
        foreign: Vec::new(),
        raw: None,
        max_paddr: space.max_paddr(),
        ram,
        device,
        space,
    };
    let baseline = world.snapshot();
    let mut full_check = false;
    let mut inp = Input::new(data);
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.below(20) {
            0 | 1 => world.op_alloc_pool(&mut inp),
            2 => world.op_hog(&mut inp),
            3 | 4 => world.op_map_frames(&mut inp),
            5 | 6 => world.op_map_untracked(&mut inp),
            7 | 8 => world.op_query(&mut inp),
            9 => world.op_split(&mut inp),
            10 => world.op_access(&mut inp, false),
            11 => world.op_access(&mut inp, true),
            12 => world.op_drop_area(&mut inp),
            13 => world.op_drop_frames(&mut inp),
            14..=18 => world.op_pt_session(&mut inp),
            _ => {
                trace!("full check at the end");
                full_check = true;
            }
        }
        world.check_ref_counts();
    }
    if full_check {
        world.full_check();
    }
    // Tear down: drop everything, then the space must be as it started.
    let World { areas, pool, hogs, foreign, raw, space, .. } = world;
    drop(areas);
    drop(raw);
    drop(pool);
    drop(hogs);
    drop(foreign);
    space.synchronize();
    assert_eq!(
        (space.phys_stats(), space.vmalloc_stats(), space.areas()),
        baseline,
        "the space after the input"
    );
    let (foreign_space, foreign_baseline) = foreign_space();
    foreign_space.synchronize();
    assert_eq!(foreign_space.phys_stats(), *foreign_baseline, "the foreign space after the input");
}
