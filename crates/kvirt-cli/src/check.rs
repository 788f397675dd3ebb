//! `kvirt check`: model-based checking of random operation sequences.
//!
//! Each sequence runs on a fresh, small, isolated kernel space through the
//! model of `kvirt-model` ([`kvirt_model::run_sequence`]): its operations
//! create tracked and untracked areas (invalid arguments included), split,
//! query, write and read bytes through areas, drop areas and frame
//! handles, and map and take single pages of a user page table without a
//! cursor (next to huge pages mapped and unmapped through one). After every operation every check of the model runs
//! ([`kvirt_model::Checks::Full`]): every `inv()`, the registry,
//! refinement of the page table against the model's mappings, reference
//! counts, page and VMALLOC accounting, and the results of the operation
//! itself (errors among the violated preconditions, queries and reads as
//! the model says). At the end every area and handle is dropped and the
//! space's counters must equal their values at the start.
//!
//! This module is the driver: it draws random operations from a seed, and
//! shrinks a failing sequence by deleting operations (and simplifying them)
//! while the same check still fails; the minimal sequence is printed with
//! its seed.

use std::io::Write;

use kvirt::kspace::X86_64Layout;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::PAGE_SIZE;
use kvirt_model::{Data, Frames, Offset, PaChoice, QueryAt, Setup, SplitAt};
pub use kvirt_model::{Failure, ModelFault, Op};

use crate::Error;
use kvirt_model::rng::{splitmix64, Rng};

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

impl Options {
    /// The model's setup for one sequence.
    #[must_use]
    pub fn setup(&self) -> Setup {
        Setup { fault: self.fault, ..Setup::new(self.ram_size) }
    }
}

/// Sequence `index`'s own seed in a run with base seed `seed`.
#[must_use]
pub fn sequence_seed(seed: u64, index: u64) -> u64 {
    splitmix64(seed ^ splitmix64(index))
}

/// Read-write, write-back.
#[must_use]
pub fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// Read-only, write-back.
#[must_use]
pub fn read_only() -> PageProperty {
    PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback)
}

/// Read-write, uncached.
#[must_use]
pub fn rw_uncached() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable)
}

/// User-accessible: must be rejected.
#[must_use]
pub fn user() -> PageProperty {
    PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback)
}

/// An untracked create of `area_pages` pages mapping `len_pages` pages from
/// `offset_pages` pages in.
#[must_use]
pub fn untracked(area_pages: usize, offset_pages: usize, pa: PaChoice, prop: PageProperty) -> Op {
    Op::CreateUntracked { pa, size: area_pages * PAGE_SIZE, offset: offset_pages * PAGE_SIZE, prop }
}

/// A random operation.
pub fn gen_op(rng: &mut Rng) -> Op {
    let prop = |rng: &mut Rng| {
        if rng.chance(1, 12) {
            user()
        } else {
            *rng.pick(&[rw(), rw(), read_only(), rw_uncached()])
        }
    };
    let misalign = |rng: &mut Rng| if rng.chance(1, 12) { rng.range(1, PAGE_SIZE - 1) } else { 0 };
    let big = |rng: &mut Rng| rng.next_u64() as usize;
    match rng.below(116) {
        0..=24 => {
            let area_pages = rng.range(0, 8);
            let offset_pages = if rng.chance(1, 2) { 0 } else { rng.range(0, area_pages.max(1)) };
            let room = area_pages.saturating_sub(offset_pages);
            let frames = if rng.chance(1, 10) { room + 1 } else { rng.range(0, room) };
            let size = area_pages * PAGE_SIZE + misalign(rng);
            let offset = offset_pages * PAGE_SIZE + misalign(rng);
            Op::CreateTracked {
                frames: Frames::Fresh(frames),
                size,
                offset,
                keep: rng.chance(1, 3),
                prop: prop(rng),
            }
        }
        25..=39 => {
            const P: usize = PAGE_SIZE;
            let (pa, len_pages) = match rng.below(100) {
                0..=9 => (PaChoice::Abs(0..0), 0),
                10..=39 => {
                    // Reserved low memory (below 1 MiB): RAM with no frame
                    // metadata use, readable and writable as bytes.
                    let page = rng.range(0, 250);
                    let len = rng.range(0, (256 - page).min(8));
                    (PaChoice::Abs(page * P..(page + len) * P), len)
                }
                40..=74 => {
                    // The device window, from a 2 MiB slot and a page in it.
                    let sub = if rng.chance(1, 2) { 0 } else { rng.range(1, 511) };
                    let len = match rng.below(10) {
                        0..=6 => rng.range(1, 8),
                        7..=8 => rng.range(512, 1100),
                        _ => 1 << 18,
                    };
                    let (slot, sub) = if len == 1 << 18 { (0, 0) } else { (rng.range(0, 3), sub) };
                    (PaChoice::Device { offset: slot * (2 << 20) + sub * P, len: len * P }, len)
                }
                75..=82 => {
                    // Allocatable RAM: must be rejected.
                    let (page, len) = (rng.range(0, 64), rng.range(1, 4));
                    (PaChoice::Abs((4 << 20) + page * P..(4 << 20) + (page + len) * P), len)
                }
                83..=87 => {
                    // Beyond 52 bits: must be rejected.
                    let len = rng.range(1, 2);
                    (PaChoice::FormatLimit { below: 0, len: len * P }, len)
                }
                88..=93 => {
                    // `start > end`: must be rejected.
                    let len = rng.range(1, 2);
                    #[allow(clippy::reversed_empty_ranges)]
                    let reversed = 0x2000 + len * P..0x2000;
                    (PaChoice::Abs(reversed), len)
                }
                _ => {
                    // Not page aligned: must be rejected.
                    let len = rng.range(1, 2);
                    (PaChoice::Abs(0x800..0x800 + len * P), len)
                }
            };
            finish_untracked(rng, pa, len_pages, prop)
        }
        40..=47 => {
            Op::Split { area: big(rng), at: SplitAt::Inside { at: big(rng), misalign: 0 }, fallible: false }
        }
        48..=59 => {
            Op::Query { area: big(rng), at: QueryAt::Page { page: big(rng), byte: rng.below(PAGE_SIZE) } }
        }
        60..=71 => Op::Write {
            area: big(rng),
            offset: Offset::Wrap { offset: big(rng), extra: 2 * PAGE_SIZE },
            len: if rng.chance(4, 5) { rng.range(1, 64) } else { rng.range(1, 9000) },
            data: Data::Seed(rng.next_u64()),
        },
        72..=81 => Op::Read {
            area: big(rng),
            offset: Offset::Wrap { offset: big(rng), extra: 2 * PAGE_SIZE },
            len: if rng.chance(4, 5) { rng.range(1, 64) } else { rng.range(1, 9000) },
        },
        82..=94 => Op::Drop { area: big(rng) },
        95..=99 => Op::DropHeld { which: big(rng) },
        _ => gen_pt_op(rng),
    }
}

/// A random operation on the model's user page table: mostly single pages
/// mapped and taken without a cursor (`PageTable::try_map_frame`,
/// `try_take_page`) in two 2 MiB slots, at the ends of their leaf nodes and
/// next to them, sometimes misaligned or outside the table, and short
/// ranges taken from there (`try_take_range`: inside a leaf node, or
/// across the end of a slot); and, so that those meet huge pages and
/// cursors' work, 2 MiB pages of device memory mapped over a slot and whole
/// slots unmapped through a cursor.
fn gen_pt_op(rng: &mut Rng) -> Op {
    /// 4 KiB pages in a 2 MiB page.
    const HUGE: usize = 512;
    let slot = rng.range(1, 2) * HUGE;
    let (page, misalign) = match rng.below(16) {
        0 => (slot + rng.below(4), rng.range(1, PAGE_SIZE - 1)),
        // The last page of the address space, and a page beyond any user
        // half.
        1 => (*rng.pick(&[usize::MAX / PAGE_SIZE, 1 << 40]), 0),
        _ => (slot + *rng.pick(&[0, 1, HUGE - 1]), 0),
    };
    match rng.below(24) {
        0..=6 => Op::PtMapFrame { page, misalign },
        7..=13 => Op::PtTakePage { page, misalign },
        14..=17 => Op::PtMap { page: slot, level: 2, tracked: false },
        18 | 19 => Op::PtUnmap { page: slot, pages: HUGE },
        _ => Op::PtTakeRange { page, pages: *rng.pick(&[1, 2, 3, HUGE]) },
    }
}

/// The rest of a random untracked create: the offset and area size around
/// `len_pages` pages at `pa`, and the property.
fn finish_untracked(
    rng: &mut Rng,
    pa: PaChoice,
    len_pages: usize,
    prop: impl Fn(&mut Rng) -> PageProperty,
) -> Op {
    let offset_pages = if rng.chance(7, 10) { 0 } else { rng.range(1, 3) };
    let mut area_pages = offset_pages + len_pages + rng.range(0, 2);
    if rng.chance(1, 10) {
        area_pages = area_pages.saturating_sub(1);
    }
    untracked(area_pages, offset_pages, pa, prop(rng))
}

/// The operations of a sequence.
#[must_use]
pub fn gen_sequence(seed: u64, max_len: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let len = rng.range(1, max_len.max(1));
    (0..len).map(|_| gen_op(&mut rng)).collect()
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

/// Runs one sequence on a fresh space; returns the number of checks that
/// passed, or the first failure (a panic is a failure too).
pub fn run_sequence(ops: &[Op], options: &Options) -> Result<u64, Failure> {
    kvirt_model::run_sequence::<X86_64Layout>(ops, &options.setup(), None)
}

/// Simpler forms of an operation to try while shrinking: small area
/// indices and split points, fewer frames and pages, no kept handles.
fn simpler(op: &Op) -> Vec<Op> {
    let mut out = Vec::new();
    let small = |n: usize| (0..4).filter(move |&a| a < n);
    match op {
        Op::Split { area, at, fallible } => {
            out.extend(small(*area).map(|a| Op::Split { area: a, at: *at, fallible: *fallible }));
            if let SplitAt::Inside { at: page, misalign } = *at {
                out.extend(small(page).map(|t| Op::Split {
                    area: *area,
                    at: SplitAt::Inside { at: t, misalign },
                    fallible: *fallible,
                }));
            }
        }
        Op::Query { area, at } => {
            out.extend(small(*area).map(|a| Op::Query { area: a, at: *at }));
            if let QueryAt::Page { page, byte } = *at {
                if page > 0 || byte > 0 {
                    out.push(Op::Query { area: *area, at: QueryAt::Page { page: 0, byte: 0 } });
                }
            }
        }
        Op::Write { area, offset, len, data } => {
            out.extend(small(*area).map(|a| Op::Write { area: a, offset: *offset, len: *len, data: *data }));
            if *len > 1 {
                out.push(Op::Write { area: *area, offset: *offset, len: 1, data: *data });
            }
        }
        Op::Read { area, offset, len } => {
            out.extend(small(*area).map(|a| Op::Read { area: a, offset: *offset, len: *len }));
            if *len > 1 {
                out.push(Op::Read { area: *area, offset: *offset, len: 1 });
            }
        }
        Op::Drop { area } => out.extend(small(*area).map(|a| Op::Drop { area: a })),
        Op::DropHeld { which } => out.extend(small(*which).map(|w| Op::DropHeld { which: w })),
        Op::CreateTracked { frames: Frames::Fresh(n), size, offset, keep, prop } => {
            let with = |size, offset, n, keep| Op::CreateTracked {
                frames: Frames::Fresh(n),
                size,
                offset,
                keep,
                prop: *prop,
            };
            let (n, size, offset) = (*n, *size, *offset);
            let offset_pages = offset / PAGE_SIZE;
            if *keep {
                out.push(with(size, offset, n, false));
            }
            if n > 1 {
                out.push(with(size, offset, 1, *keep));
            }
            if offset_pages > 0 {
                out.push(with(size - offset_pages * PAGE_SIZE, offset % PAGE_SIZE, n, *keep));
            }
            let area_pages = size / PAGE_SIZE;
            if area_pages > offset_pages + n + 1 {
                out.push(with(size - (area_pages - offset_pages - n.max(1)) * PAGE_SIZE, offset, n, *keep));
            }
        }
        Op::CreateUntracked { pa, size, offset, prop } if *offset > 0 && *offset <= *size => {
            out.push(Op::CreateUntracked { pa: pa.clone(), size: size - offset, offset: 0, prop: *prop });
        }
        Op::PtMap { page, level, tracked } if *page > 0 => {
            out.push(Op::PtMap { page: 0, level: *level, tracked: *tracked });
        }
        Op::PtUnmap { page, pages } | Op::PtProtect { page, pages } | Op::PtTakeRange { page, pages } => {
            let same = |page, pages| match op {
                Op::PtUnmap { .. } => Op::PtUnmap { page, pages },
                Op::PtTakeRange { .. } => Op::PtTakeRange { page, pages },
                _ => Op::PtProtect { page, pages },
            };
            if *pages > 1 {
                out.push(same(*page, 1));
            }
            if *page > 0 {
                out.push(same(0, *pages));
            }
        }
        Op::PtQuery { page } if *page > 0 => out.push(Op::PtQuery { page: 0 }),
        Op::PtMapFrame { page, misalign } | Op::PtTakePage { page, misalign } => {
            let same = |page, misalign| match op {
                Op::PtMapFrame { .. } => Op::PtMapFrame { page, misalign },
                _ => Op::PtTakePage { page, misalign },
            };
            if *misalign > 0 {
                out.push(same(*page, 0));
            }
            if *page > 0 {
                out.push(same(0, *misalign));
            }
        }
        _ => {}
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
            matches!(f.minimal[0], Op::CreateTracked { frames: Frames::Fresh(n), .. } if n > 0),
            "the minimal sequence maps a tracked frame: {:?}",
            f.minimal
        );
        assert!(run_sequence(&f.minimal, &small(None)).is_ok(), "the right model accepts the sequence");
    }
}
