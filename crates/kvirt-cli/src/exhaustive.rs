//! `kvirt check --exhaustive`: every operation sequence up to a depth, on
//! the tiny paging format.
//!
//! Random sequences ([`crate::check`]) find bugs in big spaces; this finds
//! them in small ones, completely. It runs the same model and the same
//! checks as `kvirt check` (`kvirt-model`'s), but on a kernel space laid
//! out as
//! [`TinyLayout`]: the [`Tiny`](kvirt::arch::tiny::Tiny) format (3 levels ×
//! 4 entries, 4 KiB and 16 KiB pages) with a 16-page VMALLOC. The
//! generic page table and `KVirtArea` code is the one x86-64 runs; only the
//! format and the layout differ. There, a handful of operations already
//! reach node creation and reclamation at every level, huge pages and their
//! splits, VMALLOC exhaustion and the guard pages.
//!
//! The checker enumerates **every** sequence of length `1..=depth` over
//! [`alphabet`]: area creation (tracked and untracked, valid and invalid),
//! split, query, byte reads and writes, drop of areas and of frame handles;
//! and on a user page table of the same space, a single page mapped and
//! taken without a cursor, and the raw cursor's map, unmap (`take_next`),
//! protect and query. Each sequence runs on a fresh space; after every operation the
//! checker verifies every `inv()`, the registry, refinement of the page
//! table against the model, reference counts and accounting, and at the end
//! of each sequence that dropping everything leaves no leak. It reports how
//! many sequences ran and how many distinct model states they reached.
//!
//! Then it runs the raw page-table part ([`page_table_alphabet`], scaled to
//! 2 MiB pages) on each real format, x86-64, Sv39, Sv48 and AArch64, one
//! level less deep: the same cursor code on the encodings kernels use.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Mutex;

use kvirt::kspace::{Aarch64Layout, KernelLayout, Sv39Layout, Sv48Layout, TinyLayout, X86_64Layout};
use kvirt::PAGE_SIZE;
use kvirt_model::{
    run_sequence, Data, Failure, Frames, ModelFault, Offset, Op, PaChoice, QueryAt, Setup, SplitAt,
};

use crate::check::{read_only, rw, rw_uncached, untracked};
use crate::Error;

/// The operations every sequence is built from.
#[must_use]
pub fn alphabet() -> Vec<Op> {
    const P: usize = PAGE_SIZE;
    let tracked = |area_pages: usize, offset_pages: usize, frames, keep, prop| Op::CreateTracked {
        frames: Frames::Fresh(frames),
        size: area_pages * P,
        offset: offset_pages * P,
        keep,
        prop,
    };
    let wrap = |offset| Offset::Wrap { offset, extra: 2 * P };
    vec![
        // Two tracked frames filling a two-page area.
        tracked(2, 0, 2, false, rw()),
        // One kept frame, read-only, inside a larger area.
        tracked(3, 1, 1, true, read_only()),
        // More frames than fit: rejected.
        tracked(1, 0, 2, false, rw()),
        // One 16 KiB huge page of device memory.
        untracked(4, 0, PaChoice::Device { offset: 0, len: 4 * P }, rw_uncached()),
        // Low RAM: a huge page and a 4 KiB page after it, bytes readable.
        untracked(5, 0, PaChoice::Abs(4 * P..9 * P), rw()),
        // Allocatable RAM: rejected.
        untracked(1, 0, PaChoice::Abs((4 << 20)..(4 << 20) + P), rw()),
        Op::Split { area: 0, at: SplitAt::Inside { at: 0, misalign: 0 }, fallible: false },
        Op::Split { area: 1, at: SplitAt::Inside { at: 1, misalign: 0 }, fallible: false },
        Op::Query { area: 0, at: QueryAt::Page { page: 1, byte: 5 } },
        Op::Write { area: 0, offset: wrap(0xff0), len: 0x20, data: Data::Seed(7) },
        Op::Read { area: 1, offset: wrap(0xfe0), len: 0x40 },
        Op::Drop { area: 0 },
        Op::Drop { area: 1 },
        Op::DropHeld { which: 0 },
    ]
    .into_iter()
    .chain(page_table_alphabet(4))
    .collect()
}

/// The raw page-table operations on a user page table of the space, for a
/// format whose level-2 pages hold `huge` 4 KiB pages (4 on the tiny
/// format, 512 on the others): a tracked frame mapped without a cursor
/// (`try_map_frame`; through the cursor's `try_map_frames` where no leaf
/// node is there yet), a huge page through a cursor (overlapping the
/// frame when both are mapped: the second is refused), the frame's page
/// taken without a cursor (`try_take_page`: the frame, the last page of
/// its leaf node, or a piece of the huge page, split), unmap / protect /
/// query through a cursor that cut into the huge page, and the first three
/// pages of the huge page's span taken at once (`try_take_range`: in place
/// where a leaf node is there, through a cursor that splits the huge page
/// otherwise).
///
/// Six operations before the range take came, as before the single-page
/// calls came: those took the places of a tracked frame mapped by the
/// cursor's `try_map` (the same cursor path as the fallback above) and a
/// misaligned huge page (a refusal whatever the state, which the fuzzer
/// and the page-table tests check). The range take makes seven, and the
/// depth-4 run a fifth longer.
#[must_use]
pub fn page_table_alphabet(huge: usize) -> Vec<Op> {
    vec![
        Op::PtMapFrame { page: huge + 1, misalign: 0 },
        Op::PtMap { page: huge, level: 2, tracked: false },
        Op::PtTakePage { page: huge + 1, misalign: 0 },
        Op::PtUnmap { page: huge + 1, pages: 2 },
        Op::PtProtect { page: huge, pages: 1 },
        Op::PtQuery { page: huge + 1 },
        Op::PtTakeRange { page: huge, pages: 3 },
    ]
}

/// What an exhaustive run found.
#[derive(Debug)]
pub struct Report {
    /// Sequences run (all lengths).
    pub sequences: u64,
    /// Operations run.
    pub operations: u64,
    /// Checks that passed.
    pub checks: u64,
    /// Distinct model states reached after some operation.
    pub states: usize,
    /// The first failing sequence, if any.
    pub failure: Option<(Vec<Op>, Failure)>,
}

/// The sequence with number `index` among those of length `len` over an
/// alphabet of `n` operations (a base-`n` numeral).
fn sequence(alphabet: &[Op], len: usize, mut index: u64) -> Vec<Op> {
    let n = alphabet.len() as u64;
    (0..len)
        .map(|_| {
            let op = alphabet[(index % n) as usize].clone();
            index /= n;
            op
        })
        .collect()
}

/// Runs every sequence of length `1..=depth` over [`alphabet`] on `threads`
/// threads; stops early at a failure. `fault` plants a wrong model (for the
/// checker's own tests).
#[must_use]
pub fn check(depth: usize, threads: usize, fault: Option<ModelFault>) -> Report {
    check_on::<TinyLayout>(&alphabet(), depth, threads, fault)
}

/// [`check`] with the operations `ops` on a space laid out as `L`.
#[must_use]
pub fn check_on<L: KernelLayout>(
    ops: &[Op],
    depth: usize,
    threads: usize,
    fault: Option<ModelFault>,
) -> Report {
    let setup = Setup { fault, ..Setup::new(4 << 20) };
    let states = Mutex::new(HashSet::new());
    let failure = Mutex::new(None);
    let totals = Mutex::new((0u64, 0u64, 0u64));
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for len in 1..=depth {
        let count = (ops.len() as u64).pow(u32::try_from(len).expect("a small depth"));
        std::thread::scope(|s| {
            for t in 0..threads as u64 {
                let (setup, states, failure, totals) = (&setup, &states, &failure, &totals);
                s.spawn(move || {
                    let mut seen = HashSet::new();
                    let (mut sequences, mut operations, mut checks) = (0, 0, 0);
                    for index in (t..count).step_by(threads) {
                        if failure.lock().expect("not poisoned").is_some() {
                            break;
                        }
                        let seq = sequence(ops, len, index);
                        let mut visit = |h| {
                            seen.insert(h);
                        };
                        match run_sequence::<L>(&seq, setup, Some(&mut visit)) {
                            Ok(n) => checks += n,
                            Err(f) => {
                                failure.lock().expect("not poisoned").get_or_insert((seq, f));
                                break;
                            }
                        }
                        sequences += 1;
                        operations += len as u64;
                    }
                    states.lock().expect("not poisoned").extend(seen);
                    let mut t = totals.lock().expect("not poisoned");
                    *t = (t.0 + sequences, t.1 + operations, t.2 + checks);
                });
            }
        });
        if failure.lock().expect("not poisoned").is_some() {
            break;
        }
    }
    std::panic::set_hook(hook);
    let (sequences, operations, checks) = totals.into_inner().expect("not poisoned");
    Report {
        sequences,
        operations,
        checks,
        states: states.into_inner().expect("not poisoned").len(),
        failure: failure.into_inner().expect("not poisoned"),
    }
}

/// `kvirt check --exhaustive`: runs [`check`] and prints the counts, or
/// the failing sequence.
///
/// # Errors
///
/// If a sequence fails, or `out` cannot be written.
pub fn run(depth: usize, threads: usize, out: &mut dyn Write) -> Result<(), Error> {
    let n = alphabet().len();
    writeln!(
        out,
        "kvirt check --exhaustive: every sequence of 1..={depth} of {n} operations on the tiny format (3 levels × 4 entries), {threads} threads"
    )?;
    let start = std::time::Instant::now();
    let report = check(depth, threads, None);
    let elapsed = start.elapsed().as_secs_f64();
    if let Some((seq, f)) = &report.failure {
        writeln!(out, "FAILED: {f}")?;
        for (i, op) in seq.iter().enumerate() {
            writeln!(out, "  {i}: {op}")?;
        }
        return Err(Error(format!("exhaustive check failed: {}", f.check)));
    }
    writeln!(
        out,
        "ok: {} sequences, {} operations, {} distinct states, {} checks passed, {elapsed:.1} s",
        report.sequences, report.operations, report.states, report.checks
    )?;
    // The page-table part on every real format, to one level less.
    let pt_depth = depth.saturating_sub(1).max(1);
    let ops = page_table_alphabet(512);
    for (name, check) in real_formats() {
        let start = std::time::Instant::now();
        let report = check(&ops, pt_depth, threads);
        if let Some((seq, f)) = &report.failure {
            writeln!(out, "FAILED on {name}: {f}")?;
            for (i, op) in seq.iter().enumerate() {
                writeln!(out, "  {i}: {op}")?;
            }
            return Err(Error(format!("exhaustive check failed on {name}: {}", f.check)));
        }
        writeln!(
            out,
            "ok on {name}: every sequence of 1..={pt_depth} of {} raw page-table operations: {} sequences, {} distinct states, {} checks passed, {:.1} s",
            ops.len(),
            report.sequences,
            report.states,
            report.checks,
            start.elapsed().as_secs_f64()
        )?;
    }
    Ok(())
}

/// A checker run on one format.
type FormatCheck = fn(&[Op], usize, usize) -> Report;

/// The real formats, named, each with [`check_on`] for its layout.
fn real_formats() -> [(&'static str, FormatCheck); 4] {
    [
        ("x86-64", |ops, depth, threads| check_on::<X86_64Layout>(ops, depth, threads, None)),
        ("Sv39", |ops, depth, threads| check_on::<Sv39Layout>(ops, depth, threads, None)),
        ("Sv48", |ops, depth, threads| check_on::<Sv48Layout>(ops, depth, threads, None)),
        ("AArch64", |ops, depth, threads| check_on::<Aarch64Layout>(ops, depth, threads, None)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_enumerate_every_word() {
        let ops = alphabet();
        let n = ops.len() as u64;
        let all: HashSet<String> = (0..n * n).map(|i| format!("{:?}", sequence(&ops, 2, i))).collect();
        assert_eq!(all.len() as u64, n * n);
    }

    #[test]
    fn every_sequence_of_two_passes_and_reaches_many_states() {
        let r = check(2, 2, None);
        assert!(r.failure.is_none(), "{:?}", r.failure);
        let n = alphabet().len() as u64;
        assert_eq!(r.sequences, n + n * n);
        assert!(r.states > 20, "only {} distinct states", r.states);
    }

    #[test]
    fn the_page_table_part_passes_on_every_real_format() {
        let ops = page_table_alphabet(512);
        for (name, check) in real_formats() {
            let r = check(&ops, 2, 2);
            assert!(r.failure.is_none(), "{name}: {:?}", r.failure);
            let n = ops.len() as u64;
            assert_eq!(r.sequences, n + n * n, "{name}");
            // The start, a tracked page, a huge page, the huge page split by
            // an unmap, and by a protect, at least.
            assert!(r.states >= 5, "{name}: only {} distinct states", r.states);
        }
    }

    #[test]
    fn a_wrong_model_is_caught_at_depth_one() {
        let r = check(1, 1, Some(ModelFault::TrackedViewOffByOne));
        let (seq, f) = r.failure.expect("the planted fault is found");
        assert_eq!(seq.len(), 1);
        assert!(matches!(seq[0], Op::CreateTracked { .. }), "{seq:?}");
        assert_eq!(f.check, "refinement: kernel_view equals the model", "{f}");
    }
}
