//! The fuzz targets' logic: byte decoders in front of the model.
//!
//! Used twice: the cargo-fuzz targets in `fuzz/fuzz_targets/` only hand
//! libFuzzer's bytes to [`kvirt_api`] and [`pte_decode`], and the
//! regression test of the main test suite
//! (`crates/kvirt/tests/fuzz_regressions.rs`) replays every saved input
//! through the same functions. So it depends on `kvirt` and `std` only,
//! and decodes inputs with
//! its own byte reader, [`Input`]: every byte string is a valid input (a
//! missing byte reads as zero), and a saved input means the same thing in
//! both places.
//!
//! Set `KVIRT_FUZZ_TRACE=1` to print each decoded operation (to replay a
//! crash by hand).
//!
//! The file is long on purpose: the byte format of both targets reads top
//! to bottom in one place, next to the decoder that defines it.
//!
//! ## `kvirt_api`
//!
//! The input is a sequence of operations, one selector byte each, then its
//! operands; the decoder turns them into [`crate::Op`]s and
//! [`crate::Model::step`] runs each on a kernel space and on the
//! model, which predicts every outcome (the specification's panic
//! conditions and the model's own statement of the preconditions for
//! rejected calls, resource errors only when the resource is short). The
//! decoder reads the model's state (how many areas and frames it holds,
//! where the cursor of a session is) to decode what comes next:
//!
//! * tracked areas with hostile `area_size`, `map_offset` and frame counts
//!   (a fresh segment, clones of held frames, a frame of another space),
//!   untracked areas with hostile physical ranges (reversed, misaligned,
//!   tracked RAM, the reserved first MiB, the frame metadata, the device
//!   window, beyond `PA_BITS`);
//! * `query` inside an area and outside it (the documented panic);
//! * `try_split` at valid and invalid offsets, byte reads and writes at
//!   hostile offsets and lengths, dropping areas, holding and releasing
//!   frames and segments to run the allocator dry;
//! * sessions of raw cursor operations on a user page table of the space:
//!   cursor creation over any range, then `jump`, `try_map` of hostile
//!   items, `take_next`, `protect_next`, `query` and `find_next`, decoded
//!   one by one as the session goes; and single pages mapped and taken
//!   there without a cursor (`PageTable::try_map_frame`, `try_take_page`),
//!   at pages the table maps, inside huge pages, misaligned and outside
//!   the table (selector bytes 240 to 249, added last), and ranges taken
//!   without a cursor (`PageTable::try_take_range`, selector bytes 250 to
//!   254, added after them) from such pages, of one to a few pages, up to
//!   and just past a leaf node's span, or any length. (The byte format is the one of the
//!   private kernel-half table sessions ran on before: the window the
//!   decoder aims at is at the same offsets in the user half, and the
//!   table always exists, where the old one could fail to be made.)
//!
//! After every operation the model's light checks run (reference counts
//! of the frames the operation touched, data-page accounting, and after an
//! operation on areas the registry and VMALLOC accounting); at the end of the input the checks of what the model
//! holds (every reference count, every area's `inv()`, refinement of the
//! areas and of the user page table). Then everything is dropped and the
//! model checks that the space is back as it found it.
//!
//! The kernel space is made once per process and reused: building one
//! (its frame metadata, its page table) takes about 4 ms under
//! AddressSanitizer, a large share of what an input takes. Between inputs the
//! space must be back at the baseline it had when it was made (frames,
//! page-table pages, VMALLOC, the registry, the foreign space's frames); if
//! it is not, the input that left it so fails. The checks that walk the
//! whole space cost as much as hundreds of operations, so under libFuzzer
//! one input in `WHOLE_SPACE_CHECK_EVERY` (32) gets them, chosen by a hash of
//! its bytes (the same input always gets the same checks): the space's
//! `inv()` and nothing mapped in VMALLOC after it, and, if the input asks
//! for the full checks, every `inv()` and refinement of all of VMALLOC at
//! its end. A saved input replayed by `cargo test` always gets them.
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

use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use crate::{
    Checks, CursorOp, Data, Failure, FramePick, Frames, Item, Model, Offset, Op, PaChoice, Protect, QueryAt,
    SessionView, SplitAt, SZ_1G, SZ_2M,
};
use kvirt::arch::x86_64::X86_64;
use kvirt::arch::{page_size, PagingFormat, PteKind};
use kvirt::frame::PhysStats;
use kvirt::kspace::{KernelSpace, VmallocStats};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use kvirt::page_table::{vaddr_bounds, UserPtConfig};
use kvirt::spec;
use kvirt::{Paddr, PagingLevel, Vaddr, PAGE_SIZE};

/// A fuzz target's checks: run one input, panic on a violation.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the directory names under `fuzz/regressions`).
pub const TARGETS: [(&str, Target); 2] = [("kvirt_api", kvirt_api), ("pte_decode", pte_decode)];

/// The reserved low memory of a simulated machine: RAM no one uses, the
/// only RAM the fuzzer reads and writes through untracked areas.
const LOW_MEMORY: Paddr = 1 << 20;
/// The RAM of the kernel space.
const RAM_SIZE: usize = 16 << 20;
/// The RAM of the space foreign frames come from.
const FOREIGN_RAM_SIZE: usize = 4 << 20;
/// The most operations one input runs.
const MAX_OPS: usize = 256;
/// The most leaf entries an accepted untracked area may need (a cap on the
/// time one operation takes, not on what it may be asked).
const MAX_UNTRACKED_LEAVES: usize = 4096;
/// The most frames one tracked area maps.
const MAX_FRAMES: usize = 1024;
/// Physical addresses the format can express are below this.
const PA_LIMIT: usize = 1 << <X86_64 as PagingFormat>::PA_BITS;
/// The window raw sessions mostly use, in the user half: 4 GiB from a
/// 1 GiB boundary.
const WIN: Vaddr = 0x0000_4000_4000_0000;
/// Under libFuzzer, one input in this many gets the checks that walk the
/// whole space (the space's `inv()` and an empty VMALLOC after the input,
/// and refinement of all of VMALLOC at its end if it asks for the full
/// checks), chosen by a hash of the input. They cost about 10 ms under AddressSanitizer, the time of
/// hundreds of operations, and the space's own page table and VMALLOC
/// change only through areas, which the other checks follow. Replaying
/// saved inputs (`cargo test`) runs them for every input.
const WHOLE_SPACE_CHECK_EVERY: u64 = 32;
/// Where VMALLOC lies in the kernel half, mirrored into the user half: far
/// anchors for hostile cursor ranges.
const FAR: Range<Vaddr> = 0x4000_0000_0000..0x6000_0000_0000;

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
// Target `kvirt_api`: the spaces, made once

/// The spaces inputs run on, and what they must be back at after each.
struct World {
    space: KernelSpace,
    /// A second space, for frames that must be rejected as foreign.
    foreign: KernelSpace,
    baseline: (PhysStats, VmallocStats),
    foreign_baseline: PhysStats,
}

impl World {
    fn new() -> Self {
        let space = KernelSpace::new_hosted(kvirt::sim::MachineConfig::new(RAM_SIZE));
        let foreign = KernelSpace::new_hosted(kvirt::sim::MachineConfig::new(FOREIGN_RAM_SIZE));
        space.synchronize();
        foreign.synchronize();
        let baseline = (space.phys_stats(), space.vmalloc_stats());
        let foreign_baseline = foreign.phys_stats();
        Self { space, foreign, baseline, foreign_baseline }
    }

    /// Runs one input on a model of the spaces; then the spaces must be
    /// back at their baseline.
    fn run(&self, data: &[u8]) -> Result<(), Failure> {
        // FNV-1a: which inputs get the checks of the whole space.
        let hash = data
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let whole_space = cfg!(not(fuzzing)) || hash % WHOLE_SPACE_CHECK_EVERY == 0;
        let mut model = Model::new(&self.space, None).with_foreign(&self.foreign);
        let full_check = Decoder::new(data).run(&mut model)?;
        let full_check = full_check && whole_space;
        trace!("checks at the end (of the whole space: {full_check})");
        model.check(if full_check { Checks::Full } else { Checks::Areas })?;
        model.finish(if whole_space { Checks::Full } else { Checks::Light })?;
        let steps = model.steps();
        drop(model);
        let between = |check, message| Failure { step: steps, check, message };
        self.space.synchronize();
        self.foreign.synchronize();
        let now = (self.space.phys_stats(), self.space.vmalloc_stats());
        if now != self.baseline || !self.space.areas().is_empty() {
            return Err(between(
                "the space is back at its baseline",
                format!("{:?}\n{now:?}", self.baseline),
            ));
        }
        let foreign = self.foreign.phys_stats();
        if foreign != self.foreign_baseline {
            return Err(between(
                "the foreign space is back at its baseline",
                format!("{:?}\n{foreign:?}", self.foreign_baseline),
            ));
        }
        Ok(())
    }
}

/// The `kvirt_api` target: see the module documentation.
///
/// # Panics
///
/// If a check fails.
pub fn kvirt_api(data: &[u8]) {
    static WORLD: Mutex<Option<World>> = Mutex::new(None);
    // A failed input leaves the spaces in any state: the next one starts
    // over on new spaces.
    let mut world = WORLD.lock().unwrap_or_else(|poisoned| {
        let mut world = poisoned.into_inner();
        *world = None;
        world
    });
    let result = world.get_or_insert_with(World::new).run(data);
    if let Err(failure) = result {
        *world = None;
        drop(world);
        panic!("kvirt_api: {failure}");
    }
}

/// [`kvirt_api`] on spaces made for this input alone, as libFuzzer replays
/// a crash in a new process.
///
/// # Panics
///
/// If a check fails.
pub fn kvirt_api_alone(data: &[u8]) {
    if let Err(failure) = World::new().run(data) {
        panic!("kvirt_api: {failure}");
    }
}

// ---------------------------------------------------------------------------
// Target `kvirt_api`: the decoder

/// Decodes an input into operations, running each on the model as soon as
/// it is decoded (what comes next may depend on it).
struct Decoder<'a> {
    inp: Input<'a>,
    /// The ids of the model's areas in the order the byte format's area
    /// indices count them: a new area and the halves of a split go last,
    /// a dropped or split area's place goes to the last one (the model
    /// keeps another order).
    order: Vec<u64>,
}

impl<'a> Decoder<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { inp: Input::new(data), order: Vec::new() }
    }

    /// Decodes and runs every operation; returns whether the input asked
    /// for the full checks at its end.
    fn run(mut self, model: &mut Model<'_>) -> Result<bool, Failure> {
        let mut full_check = false;
        for _ in 0..MAX_OPS {
            if self.inp.is_empty() {
                break;
            }
            // The selector byte: its value modulo 20, except 240..=254,
            // which were the uneven tail of that modulo and select the
            // calls without a cursor, added last: single pages (240..=249)
            // and then ranges (250..=254). No saved input used them when
            // each was added, so every saved input decodes as it did
            // before.
            match self.inp.u8() {
                b @ 240..=249 => self.single_page(model, b % 2 == 0)?,
                250..=254 => self.take_range(model)?,
                b => match b % 20 {
                    0 | 1 => {
                        let frames = 1 + self.inp.below(8);
                        self.step(model, &Op::Alloc { frames })?;
                    }
                    2 => self.hog(model)?,
                    3 | 4 => self.map_frames(model)?,
                    5 | 6 => self.map_untracked(model)?,
                    7 | 8 => self.query(model)?,
                    9 => self.split(model)?,
                    10 => self.access(model, false)?,
                    11 => self.access(model, true)?,
                    12 => {
                        if let Some((p, area)) = self.pick_area(model) {
                            self.step(model, &Op::Drop { area })?;
                            self.order.swap_remove(p);
                        }
                    }
                    13 => self.drop_frames(model)?,
                    14..=18 => self.session(model)?,
                    _ => full_check = true,
                },
            }
            model.check(Checks::Light)?;
        }
        Ok(full_check)
    }

    fn step(&mut self, model: &mut Model<'_>, op: &Op) -> Result<(), Failure> {
        trace!("{op}");
        model.step(op)
    }

    /// An area, by its place in [`Self::order`]; with its index in the
    /// model.
    fn pick_area(&mut self, model: &Model<'_>) -> Option<(usize, usize)> {
        if self.order.is_empty() {
            return None;
        }
        let p = self.inp.below(self.order.len());
        let i =
            model.areas().iter().position(|a| a.id() == self.order[p]).expect("the order lists live areas");
        Some((p, i))
    }

    /// After an operation that may have created areas: they go last, in
    /// the model's order.
    fn adopt_new_areas(&mut self, model: &Model<'_>) {
        let mut new: Vec<u64> =
            model.areas().iter().map(|a| a.id()).filter(|id| !self.order.contains(id)).collect();
        new.sort_unstable();
        self.order.extend(new);
    }

    fn hog(&mut self, model: &mut Model<'_>) -> Result<(), Failure> {
        let inp = &mut self.inp;
        let free = model.space().phys_stats().free_pages;
        let pages = match inp.below(6) {
            0 => 0,
            1 => 1 + inp.below(64),
            2 => free,
            3 => free.saturating_sub(inp.below(8)),
            4 => free + 1 + inp.below(4),
            _ => free / 2,
        };
        self.step(model, &Op::Hog { pages })
    }

    /// An area size for mapping `len` bytes.
    fn area_size(&mut self, len: usize) -> usize {
        let inp = &mut self.inp;
        match inp.below(4) {
            0 => inp.hostile(),
            1 => len,
            _ => len.wrapping_add(inp.below(8) * PAGE_SIZE),
        }
    }

    /// A map offset into an area of `area_size` bytes mapping `len` bytes.
    fn map_offset(&mut self, area_size: usize, len: usize) -> usize {
        let inp = &mut self.inp;
        match inp.below(4) {
            0 => inp.hostile(),
            1 => 0,
            _ => area_size.wrapping_sub(len).wrapping_sub(inp.below(4) * PAGE_SIZE),
        }
    }

    fn map_frames(&mut self, model: &mut Model<'_>) -> Result<(), Failure> {
        let inp = &mut self.inp;
        let n = match inp.below(6) {
            0 => 0,
            1 => 1,
            2 | 3 => inp.below(8),
            4 => inp.below(256),
            _ => MAX_FRAMES,
        };
        let held = model.held().len();
        let frames = match inp.below(4) {
            0 | 1 if n > 0 => {
                self.step(model, &Op::Stage { pages: n })?;
                if model.staged().len() != n {
                    trace!("  no {n} fresh frames");
                    return Ok(());
                }
                Frames::Staged
            }
            0 | 1 => Frames::Picks(Vec::new()),
            2 => Frames::Picks(if held == 0 {
                Vec::new()
            } else {
                (0..n).map(|_| FramePick::Held(inp.below(held))).collect()
            }),
            _ => {
                let mut picks: Vec<FramePick> = (0..n.min(8))
                    .map(|_| inp.below(held.max(1)))
                    .filter(|&i| i < held)
                    .map(FramePick::Held)
                    .collect();
                if model.foreign_free_pages().is_some_and(|free| free > 0) {
                    let at = inp.below(picks.len() + 1);
                    picks.insert(at, FramePick::Foreign);
                }
                Frames::Picks(picks)
            }
        };
        let len = match &frames {
            Frames::Picks(picks) => picks.len(),
            _ => n,
        } * PAGE_SIZE;
        let size = self.area_size(len);
        let offset = self.map_offset(size, len);
        let prop = self.inp.prop();
        self.step(model, &Op::CreateTracked { frames, size, offset, keep: false, prop })?;
        self.adopt_new_areas(model);
        Ok(())
    }

    /// A physical range for an untracked area.
    fn pa_range(&mut self, model: &Model<'_>) -> Range<Paddr> {
        let inp = &mut self.inp;
        let pool_pa = model.held().first().map_or(LOW_MEMORY + 64 * PAGE_SIZE, kvirt::frame::Frame::paddr);
        let (max_paddr, device) = (model.space().max_paddr(), model.device());
        let anchors = [
            0,
            PAGE_SIZE,
            LOW_MEMORY - PAGE_SIZE,
            LOW_MEMORY,
            pool_pa,
            max_paddr - PAGE_SIZE,
            max_paddr,
            device.start,
            device.start + SZ_2M,
            device.end - SZ_2M,
            device.end,
            device.end + SZ_1G,
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

    fn map_untracked(&mut self, model: &mut Model<'_>) -> Result<(), Failure> {
        let pa = self.pa_range(model);
        let len = pa.end.wrapping_sub(pa.start);
        let size = self.area_size(len);
        let offset = self.map_offset(size, len);
        let prop = self.inp.prop();
        let panics = spec::map_untracked_frames_panic_condition(model.space(), size, offset, &pa, &prop);
        // A cap on the time one operation takes: the leaves a valid call
        // would map.
        let huge = [SZ_1G, SZ_2M].into_iter().find(|&a| len >= a && pa.start % a == 0 && offset % a == 0);
        let leaves = huge.map_or(len / PAGE_SIZE, |a| len / a + 2 * 512);
        if !panics && leaves > MAX_UNTRACKED_LEAVES {
            trace!("map_untracked of {pa:#x?} skipped: {leaves} leaves");
            return Ok(());
        }
        self.step(model, &Op::CreateUntracked { pa: PaChoice::Abs(pa), size, offset, prop })?;
        self.adopt_new_areas(model);
        Ok(())
    }

    fn query(&mut self, model: &mut Model<'_>) -> Result<(), Failure> {
        let Some((_, i)) = self.pick_area(model) else { return Ok(()) };
        let (r, origin) = (model.areas()[i].range(), model.areas()[i].origin());
        let inp = &mut self.inp;
        let addr = match inp.below(8) {
            0 | 1 => r.start + inp.hostile() % r.len(),
            2 => r.start.wrapping_add(inp.hostile()),
            3 => r.end - 1 - inp.below(PAGE_SIZE + 1).min(r.len() - 1),
            4 => r.end + inp.below(2) * inp.below(PAGE_SIZE),
            5 => r.start.wrapping_sub(1 + inp.below(2 * PAGE_SIZE)),
            6 => [origin.start, origin.end, origin.end.wrapping_sub(1)][inp.below(3)],
            _ => inp.u64() as usize,
        };
        self.step(model, &Op::Query { area: i, at: QueryAt::Addr(addr) })
    }

    fn split(&mut self, model: &mut Model<'_>) -> Result<(), Failure> {
        let Some((p, i)) = self.pick_area(model) else { return Ok(()) };
        let size = model.areas()[i].range().len();
        let inp = &mut self.inp;
        let offset = match inp.below(3) {
            0 => inp.hostile(),
            _ => (inp.hostile() % size) & !(PAGE_SIZE - 1),
        };
        self.step(model, &Op::Split { area: i, at: SplitAt::Offset(offset), fallible: true })?;
        // The area, split or handed back, goes last.
        let id = self.order.swap_remove(p);
        if model.areas().iter().any(|a| a.id() == id) {
            self.order.push(id);
        }
        self.adopt_new_areas(model);
        Ok(())
    }

    fn access(&mut self, model: &mut Model<'_>, write: bool) -> Result<(), Failure> {
        let Some((_, i)) = self.pick_area(model) else { return Ok(()) };
        let size = model.areas()[i].range().len();
        let inp = &mut self.inp;
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
        let offset = Offset::Abs(offset);
        let op = if write {
            Op::Write { area: i, offset, len, data: Data::Ramp(fill) }
        } else {
            Op::Read { area: i, offset, len }
        };
        self.step(model, &op)
    }

    fn drop_frames(&mut self, model: &mut Model<'_>) -> Result<(), Failure> {
        let inp = &mut self.inp;
        let (held, hogs) = (model.held().len(), model.hogs().len());
        let op = if inp.bool() {
            if held == 0 {
                return Ok(());
            }
            Op::DropHeld { which: inp.below(held) }
        } else {
            if hogs == 0 {
                return Ok(());
            }
            Op::DropHog { which: inp.below(hogs) }
        };
        self.step(model, &op)
    }

    /// A single page of the user page table mapped (a fresh frame) or
    /// taken without a cursor: in the window sessions use, at the first,
    /// second or last page of a leaf the model has (inside a huge page, or
    /// next to a 4 KiB one), misaligned, at the ends of the table and of
    /// the address space, or anywhere.
    fn single_page(&mut self, model: &mut Model<'_>, map: bool) -> Result<(), Failure> {
        let va = self.pick_page(model);
        let (page, misalign) = (va / PAGE_SIZE, va % PAGE_SIZE);
        let op = if map { Op::PtMapFrame { page, misalign } } else { Op::PtTakePage { page, misalign } };
        self.step(model, &op)
    }

    /// An address for a call without a cursor: mostly in the window
    /// sessions use, or at a leaf the table maps (its first, second or
    /// last page), else misaligned, at the edges of the table's addresses
    /// and beyond, or anywhere.
    fn pick_page(&mut self, model: &Model<'_>) -> Vaddr {
        let (first, last) = vaddr_bounds::<UserPtConfig>();
        let top = last & !(PAGE_SIZE - 1);
        let inp = &mut self.inp;
        match inp.below(8) {
            0..=2 => window_va(inp),
            3 | 4 => {
                let leaves = &model.pt_model().map;
                match leaves.iter().nth(inp.below(leaves.len().max(1))) {
                    Some((&start, leaf)) => start + [0, PAGE_SIZE, leaf.size - PAGE_SIZE][inp.below(3)],
                    None => window_va(inp),
                }
            }
            5 => window_va(inp) + 1 + inp.below(PAGE_SIZE - 1),
            6 => {
                let anchors = [
                    first,
                    top,
                    top + PAGE_SIZE,
                    FAR.start,
                    first.wrapping_sub(PAGE_SIZE),
                    usize::MAX & !(PAGE_SIZE - 1),
                ];
                anchors[inp.below(anchors.len())]
            }
            _ => inp.u64() as usize,
        }
    }

    /// `PageTable::try_take_range` of a range from a page as
    /// [`single_page`](Self::single_page) picks them (a misaligned pick is
    /// rounded down: the call takes pages), of 1, 2, 3, 511 or 512 pages,
    /// a huge page's worth, or any count.
    fn take_range(&mut self, model: &mut Model<'_>) -> Result<(), Failure> {
        let page = self.pick_page(model) / PAGE_SIZE;
        let inp = &mut self.inp;
        let pages = match inp.below(4) {
            0 | 1 => [1, 2, 3, 511, 512, SZ_2M / PAGE_SIZE + 1][inp.below(6)],
            2 => 1 + inp.below(1024),
            _ => inp.u64() as usize,
        };
        self.step(model, &Op::PtTakeRange { page, pages })
    }

    fn session(&mut self, model: &mut Model<'_>) -> Result<(), Failure> {
        let range = cursor_range(&mut self.inp);
        trace!("pt session over {range:#x?} ({} free pages)", model.space().phys_stats().free_pages);
        let inp = &mut self.inp;
        let mut left: Option<usize> = None;
        let ran = model.step_session(range, &mut |view| {
            let n = left.get_or_insert_with(|| 1 + inp.below(16));
            if *n == 0 {
                return None;
            }
            *n -= 1;
            let op = cursor_op(inp, view);
            trace!("  {op:x?}");
            Some(op)
        })?;
        trace!("  ({} operations)", ran.len());
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Target `kvirt_api`: raw page-table sessions

/// An address in the window raw sessions mostly use: a few slots per level
/// so that operations collide and huge pages get split.
fn window_va(inp: &mut Input<'_>) -> Vaddr {
    const SLOTS: [usize; 4] = [0, 1, 255, 511];
    WIN + inp.below(4) * SZ_1G + SLOTS[inp.below(4)] * SZ_2M + SLOTS[inp.below(4)] * PAGE_SIZE
}

/// A cursor range: mostly inside the window, sometimes anywhere.
fn cursor_range(inp: &mut Input<'_>) -> Range<Vaddr> {
    let (first, last) = vaddr_bounds::<UserPtConfig>();
    let top = last & !(PAGE_SIZE - 1);
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
            let anchors = [first, first + SZ_1G, FAR.start, top - SZ_1G, top - SZ_2M, top, 0];
            let start = anchors[inp.below(anchors.len())];
            start..start.wrapping_add(inp.hostile())
        }
        6 => {
            let end = [top, first, FAR.end][inp.below(3)];
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

/// The next operation of a session, where the cursor is at `view.va`.
fn cursor_op(inp: &mut Input<'_>, view: &SessionView<'_, X86_64>) -> CursorOp {
    let (range, va) = (&view.range, view.va);
    match inp.below(8) {
        0 => {
            let to = match inp.below(5) {
                0 => window_va(inp),
                1 => range.end,
                2 => range.start.wrapping_add(inp.hostile()),
                3 => {
                    let keys = &view.model.map;
                    keys.keys().nth(inp.below(keys.len().max(1))).copied().unwrap_or(va)
                }
                _ => inp.u64() as usize,
            };
            CursorOp::Jump(to)
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
            let item = match inp.below(8) {
                0 | 1 if view.held > 0 => Item::Held(inp.below(view.held)),
                2 => Item::Foreign { pa, level },
                _ => Item::Untracked { pa, level },
            };
            CursorOp::Map { item, prop }
        }
        4 | 5 => {
            let len = search_len(inp, range, va);
            let protect = inp.bool();
            let new = inp.prop();
            if protect {
                CursorOp::Protect { len, how: Protect::Set(new), all: false }
            } else if inp.below(4) == 0 {
                CursorOp::TakeAll { len }
            } else {
                CursorOp::Take { len, all: false }
            }
        }
        6 => CursorOp::Query,
        _ => CursorOp::FindNext(search_len(inp, range, va)),
    }
}
