//! `kvirt bench`: kvirt and its peers over the same simulated RAM, in one
//! run.
//!
//! Implementations (each adapted to [`mapper::Mapper`] in [`impls`]):
//!
//! | name | what |
//! |---|---|
//! | `kvirt-area` | `KVirtArea::map_frames` / `query` / drop (the public API) |
//! | `kvirt-pt` | kvirt's raw `PageTable` + one `CursorMut` per range (a single page without one: `try_map_frame`, `try_take_page`); queries by the lock-free `translate_addr` walk, one `ReadSection` per run of queries |
//! | `x86_64` | the `x86_64` crate's `OffsetPageTable` |
//! | `multiarch` | `page_table_multiarch`'s `X64PageTable` |
//! | `floor` | raw PTE stores into pre-allocated leaves; a raw 4-level walk |
//!
//! Workloads (one "op" is named in the table's unit column):
//!
//! * map, query (random addresses), unmap of ranges of N contiguous 4 KiB
//!   pages, N = 1, 16, 512, 65536, ns per page (per query);
//! * an untracked 1 GiB mapping (map + unmap), with 1 GiB pages;
//! * kernel-virtual-area create + drop, modelled on Linux's
//!   `lib/test_vmalloc.c`: fixed 1 page, random 1-100 pages, 1 page with
//!   10 000 live areas around, 2 MiB aligned, and 1 page from 1 and from 2
//!   threads at once on one space, and from 2 threads on a space each (the
//!   most this machine gives two threads) (kvirt only: the peers have no
//!   virtual-range allocator);
//! * 1-page map + unmap on one table from 1 and from 2 threads at once
//!   (`kvirt-pt` as it is, each peer behind one lock: [`shared`]).
//!
//! Each measurement is the median over several runs after warm-up runs,
//! timed with `std::time::Instant` around whole batches. Every workload
//! checks its results (queries return the right addresses; the area
//! workloads leave the counters as they found them).

pub mod breakdown;
pub mod impls;
pub mod mapper;
pub mod report;
pub mod shared;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::{KVirtArea, KernelSpace, PurgeMode, Sv48Layout};
use kvirt::sim::MachineConfig;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use self::impls::floor::Floor;
use self::impls::kvirt_area::KvirtArea;
use self::impls::kvirt_pt::KvirtPt;
use self::impls::multiarch::Multiarch;
use self::impls::sv48::{Sv48Meta, Sv48Pte};
use self::impls::x86_64_crate::X86Crate;
use self::impls::{kvirt_machine, kvirt_prop, KVIRT_RAM};
use self::mapper::{Mapper, BASE_VA, HUGE_VA};
use crate::rng::Rng;
use crate::{ensure, Error};

/// The paging format of the 4 KiB and 1 GiB workloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86-64 4-level paging: every implementation.
    #[default]
    #[value(name = "x86-64")]
    X86_64,
    /// RISC-V Sv48: kvirt and `page_table_multiarch` (the `x86_64` crate has
    /// no such format).
    Sv48,
}

impl Arch {
    /// The name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Sv48 => "Sv48",
        }
    }
}

/// Command-line options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Small iteration counts.
    pub quick: bool,
    /// Where to write JSON.
    pub json: Option<PathBuf>,
    /// Where to write the SVG plot.
    pub svg: Option<PathBuf>,
    /// Where to write the Markdown report.
    pub markdown: Option<PathBuf>,
    /// Run only the workloads whose id contains this (for profiling one
    /// workload); every implementation still runs.
    pub only: Option<String>,
    /// The paging format of the page workloads.
    pub arch: Arch,
}

/// Iteration counts.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Pages mapped per run of a 4 KiB workload (split into ranges of N),
    /// and queries per run.
    pub pages_per_round: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs per round (the median of all rounds' runs is reported).
    pub runs: usize,
    /// How many times the whole suite runs, one round after the other.
    /// A slow spell of the machine (other load) that lasts a few seconds
    /// then hits one round of a workload, not all its runs.
    pub rounds: usize,
    /// Map + unmap pairs per run of the 1 GiB workload.
    pub huge_ops: usize,
    /// Create + drop pairs per run of the fixed-size area workloads.
    pub area_ops: usize,
    /// Create + drop pairs per run of the random-size area workload.
    pub random_area_ops: usize,
    /// Live areas in the busy workload.
    pub busy_areas: usize,
    /// Create + drop pairs per thread per run of the threaded workloads.
    pub thread_ops: usize,
    /// 1-page ranges each thread maps and unmaps per run of the shared-table
    /// workloads.
    pub shared_pages: usize,
}

impl Config {
    /// The full benchmark.
    #[must_use]
    pub fn full() -> Self {
        Self {
            pages_per_round: 1 << 16,
            warmup: 2,
            runs: 7,
            rounds: 5,
            huge_ops: 20_000,
            area_ops: 100_000,
            random_area_ops: 10_000,
            busy_areas: 10_000,
            thread_ops: 100_000,
            shared_pages: 1 << 15,
        }
    }

    /// Small counts for CI.
    #[must_use]
    pub fn quick() -> Self {
        Self {
            pages_per_round: 1 << 10,
            warmup: 1,
            runs: 3,
            rounds: 1,
            huge_ops: 200,
            area_ops: 1000,
            random_area_ops: 100,
            busy_areas: 10_000,
            thread_ops: 1000,
            shared_pages: 1 << 10,
        }
    }
}

/// The implementations, in table order.
pub const IMPLS: [&str; 5] =
    [<KvirtArea>::NAME, <KvirtPt>::NAME, X86Crate::NAME, <Multiarch>::NAME, Floor::NAME];

/// The range sizes of the 4 KiB workloads.
pub const SIZES: [usize; 4] = [1, 16, 512, 65536];

/// One workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Stable identifier (JSON).
    pub id: String,
    /// Human title.
    pub title: String,
    /// What one op is.
    pub unit: &'static str,
}

/// The median and the runs of one measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Median nanoseconds per op.
    pub ns_per_op: f64,
    /// Nanoseconds per op of each timed run.
    pub runs: Vec<f64>,
    /// Ops per run.
    pub ops_per_run: u64,
}

impl Stats {
    /// Adds `other`'s runs to `self`'s (the median is then over both).
    fn absorb(&mut self, other: &Stats) {
        debug_assert_eq!(self.ops_per_run, other.ops_per_run, "merging different measurements");
        let mut runs = core::mem::take(&mut self.runs);
        runs.extend_from_slice(&other.runs);
        *self = Self::from_runs(runs, self.ops_per_run);
    }

    pub(crate) fn from_runs(mut runs: Vec<f64>, ops_per_run: u64) -> Self {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let ns_per_op = if sorted.is_empty() { f64::NAN } else { sorted[sorted.len() / 2] };
        runs.shrink_to_fit();
        Self { ns_per_op, runs, ops_per_run }
    }

    /// Operations per second at the median.
    #[must_use]
    pub fn ops_per_s(&self) -> f64 {
        1e9 / self.ns_per_op
    }
}

/// One cell of the workload × implementation matrix.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// The workload.
    pub workload: Workload,
    /// The implementation.
    pub impl_name: &'static str,
    /// The result, or why there is none.
    pub result: Result<Stats, &'static str>,
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct Results {
    /// Whether `--quick` was given.
    pub quick: bool,
    /// The iteration counts.
    pub config: Config,
    /// Every cell, workload by workload in order.
    pub cells: Vec<Measurement>,
    /// The machine.
    pub machine: report::MachineInfo,
    /// The lazy-purge churn rows.
    pub churn: Vec<Churn>,
    /// Where kvirt's 1-page map and unmap spend their time.
    pub breakdown: Vec<breakdown::Step>,
    /// The paging format of the page workloads.
    pub arch: Arch,
}

/// One row of the lazy-purge churn: create+drop of 1-page areas on `cpus`
/// threads (one simulated CPU each) in one purge mode.
#[derive(Clone, Debug)]
pub struct Churn {
    /// `eager` or `lazy` (Linux's threshold for the CPU count).
    pub mode: &'static str,
    /// Threads, each on its own simulated CPU.
    pub cpus: usize,
    /// Time per create+drop (wall time / all ops).
    pub stats: Stats,
    /// TLB flushes CPU 0 carried out per 1000 drops: every shoot-down
    /// reaches every CPU, so these are the shoot-downs.
    pub shootdowns_per_1000: f64,
}

impl Results {
    /// Adds the runs of `round`, a later round of the same suite, to every
    /// measurement (and averages the churn rows' shoot-down counts over
    /// the `rounds` rounds merged so far, `round` included).
    fn absorb(&mut self, round: Results, rounds: usize) {
        for (cell, later) in self.cells.iter_mut().zip(&round.cells) {
            debug_assert!(cell.workload == later.workload && cell.impl_name == later.impl_name);
            if let (Ok(stats), Ok(more)) = (&mut cell.result, &later.result) {
                stats.absorb(more);
            }
        }
        for (row, later) in self.churn.iter_mut().zip(&round.churn) {
            row.stats.absorb(&later.stats);
            let earlier = (rounds - 1) as f64;
            row.shootdowns_per_1000 =
                (row.shootdowns_per_1000 * earlier + later.shootdowns_per_1000) / rounds as f64;
        }
        for (step, later) in self.breakdown.iter_mut().zip(&round.breakdown) {
            step.stats.absorb(&later.stats);
        }
    }

    /// The stats of a cell, if measured.
    #[must_use]
    pub fn get(&self, workload: &str, impl_name: &str) -> Option<&Stats> {
        self.cells
            .iter()
            .find(|c| c.workload.id == workload && c.impl_name == impl_name)
            .and_then(|c| c.result.as_ref().ok())
    }

    /// The workloads in order.
    #[must_use]
    pub fn workloads(&self) -> Vec<Workload> {
        let mut out: Vec<Workload> = Vec::new();
        for c in &self.cells {
            if !out.contains(&c.workload) {
                out.push(c.workload.clone());
            }
        }
        out
    }
}

fn ns_per(d: Duration, ops: usize) -> f64 {
    d.as_nanos() as f64 / ops.max(1) as f64
}

/// Progress on stderr.
struct Progress {
    done: usize,
    total: usize,
    started: Instant,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        eprintln!("[{:>2}/{}] {:>6.1}s  {what}", self.done, self.total, self.started.elapsed().as_secs_f64());
    }
}

fn workload(id: String, title: String, unit: &'static str) -> Workload {
    Workload { id, title, unit }
}

/// The map, query (independent and chained) and unmap workloads of ranges
/// of `n` pages.
fn page_workloads(n: usize) -> [Workload; 4] {
    [
        workload(format!("map-4k-x{n}"), format!("map {n} x 4 KiB"), "page"),
        workload(format!("query-4k-x{n}"), format!("query, random, in {n} x 4 KiB"), "query"),
        workload(format!("query-chain-4k-x{n}"), format!("query latency, chained, in {n} x 4 KiB"), "query"),
        workload(format!("unmap-4k-x{n}"), format!("unmap {n} x 4 KiB"), "page"),
    ]
}

/// Runs the map/query/unmap workloads of `n`-page ranges on `m`.
///
/// Queries run twice: independent of each other (throughput: the CPU
/// overlaps several walks), and chained, each address depending on the
/// previous answer (latency: one walk at a time).
fn run_pages<M: Mapper>(m: &mut M, n: usize, cfg: &Config) -> Result<[Stats; 4], Error> {
    let ranges = (cfg.pages_per_round / n).max(1);
    let stride = (n + 1) * PAGE_SIZE;
    let queries = cfg.pages_per_round;
    let mut rng = Rng::new(n as u64);
    let (mut map_ns, mut query_ns, mut chain_ns, mut unmap_ns) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..cfg.warmup + cfg.runs {
        let inputs: Vec<M::Frames> = (0..ranges).map(|_| m.prepare(n)).collect();
        let mut maps = Vec::with_capacity(ranges);
        let t = Instant::now();
        for (j, frames) in inputs.into_iter().enumerate() {
            maps.push(m.map(BASE_VA + j * stride, frames));
        }
        let t_map = t.elapsed();

        let qs: Vec<(usize, Vaddr, Paddr)> = (0..queries)
            .map(|_| {
                let (j, page, off) = (rng.below(ranges), rng.below(n), rng.below(PAGE_SIZE) & !7);
                (j, M::start(&maps[j]) + page * PAGE_SIZE + off, m.frame_pa(page) + off)
            })
            .collect();
        let t = Instant::now();
        let reader = m.reader();
        let mut sum = 0usize;
        for &(j, va, _) in &qs {
            sum = sum.wrapping_add(m.query(&reader, &maps[j], va).unwrap_or(0));
        }
        drop(reader);
        let t_query = t.elapsed();
        let want = qs.iter().fold(0usize, |s, q| s.wrapping_add(q.2));
        ensure(black_box(sum) == want, || {
            format!("{}: queries of {n}-page ranges return wrong addresses", M::NAME)
        })?;
        // Each address gets `0` added that the compiler cannot see is 0
        // (an answer's top bit, always clear): the next walk waits for the
        // previous one.
        let t = Instant::now();
        let reader = m.reader();
        let mut chained = 0usize;
        for &(j, va, _) in &qs {
            let pa = m.query(&reader, &maps[j], va + (chained >> 63)).unwrap_or(0);
            chained = chained.wrapping_add(pa);
        }
        drop(reader);
        let t_chain = t.elapsed();
        ensure(black_box(chained) == want, || {
            format!("{}: chained queries of {n}-page ranges return wrong addresses", M::NAME)
        })?;
        let (j, va, pa) = qs[0];
        ensure(m.query(&m.reader(), &maps[j], va) == Some(pa), || {
            format!("{}: query({va:#x}) is wrong", M::NAME)
        })?;

        let t = Instant::now();
        for mapping in maps.drain(..) {
            m.unmap(mapping);
        }
        let t_unmap = t.elapsed();
        if run >= cfg.warmup {
            map_ns.push(ns_per(t_map, ranges * n));
            query_ns.push(ns_per(t_query, queries));
            chain_ns.push(ns_per(t_chain, queries));
            unmap_ns.push(ns_per(t_unmap, ranges * n));
        }
    }
    let pages = (ranges * n) as u64;
    Ok([
        Stats::from_runs(map_ns, pages),
        Stats::from_runs(query_ns, queries as u64),
        Stats::from_runs(chain_ns, queries as u64),
        Stats::from_runs(unmap_ns, pages),
    ])
}

/// Times `body`, which does `ops` operations, over the warm-up and timed
/// runs; the stats of the timed ones.
pub(crate) fn timed(
    cfg: &Config,
    ops: usize,
    mut body: impl FnMut() -> Result<(), Error>,
) -> Result<Stats, Error> {
    let mut runs = Vec::new();
    for run in 0..cfg.warmup + cfg.runs {
        let t = Instant::now();
        body()?;
        if run >= cfg.warmup {
            runs.push(ns_per(t.elapsed(), ops));
        }
    }
    Ok(Stats::from_runs(runs, ops as u64))
}

/// Map + unmap of 1 GiB of untracked memory with the largest pages.
fn run_huge<M: Mapper>(m: &mut M, cfg: &Config) -> Result<Stats, Error> {
    let pa = m.huge_pa();
    let len = 1 << 30;
    let probe = 0x1234_5000;
    let mapping = m.map_huge(HUGE_VA, pa, len).ok_or("no huge pages")?;
    let got = m.query(&m.reader(), &mapping, M::start(&mapping) + probe);
    ensure(got == Some(pa + probe), || format!("{}: the 1 GiB mapping translates to {got:x?}", M::NAME))?;
    m.unmap(mapping);
    timed(cfg, cfg.huge_ops, || {
        for _ in 0..cfg.huge_ops {
            let mapping = m.map_huge(HUGE_VA, pa, len).ok_or("no huge pages")?;
            m.unmap(black_box(mapping));
        }
        Ok(())
    })
}

/// The hosted kernel space of the kvirt-only workloads, one for the whole
/// run and kept to its end as a kernel keeps its own
/// ([`KernelSpace::leak`]: its areas hold no count of it). Every workload
/// leaves it as it found it (each checks the counters).
pub(crate) fn kvirt_space() -> &'static KernelSpace {
    impls::kept_space()
}

/// A second space like [`kvirt_space`], for the row that gives each thread
/// a space of its own.
fn second_kvirt_space() -> &'static KernelSpace {
    static SPACE: std::sync::OnceLock<&'static KernelSpace> = std::sync::OnceLock::new();
    SPACE.get_or_init(|| KernelSpace::new_hosted(kvirt_machine()).leak())
}

/// Creates and drops a 1-page area (with a fresh, non-zeroed frame, as
/// `vmalloc` gives non-zeroed pages) `ops` times.
fn create_drop_1p(space: &KernelSpace, ops: usize) -> Result<(), Error> {
    let prop = kvirt_prop();
    for _ in 0..ops {
        let frame = FrameAllocOptions::new_in(space).zeroed(false).alloc_frame()?;
        let area = space.try_map_frames(PAGE_SIZE, 0, [frame], prop)?;
        drop(black_box(area));
    }
    Ok(())
}

/// Runs `body` `warmup + runs` times on a fresh space and checks that the
/// space's counters are back afterwards.
fn run_area(
    cfg: &Config,
    ops: usize,
    mut body: impl FnMut(&KernelSpace) -> Result<(), Error>,
) -> Result<Stats, Error> {
    let space = kvirt_space();
    space.synchronize();
    let before = (space.phys_stats(), space.vmalloc_stats());
    let stats = timed(cfg, ops, || body(space))?;
    space.synchronize();
    ensure((space.phys_stats(), space.vmalloc_stats()) == before, || "an area workload leaked".into())?;
    Ok(stats)
}

/// Runs `create_drop_1p(spaces[t], ops)` on one thread per entry of
/// `spaces` at once, thread `t` on simulated CPU `t`; returns the wall time
/// from the first one's start to the last one's end ([`timed_threads`]).
fn churn_threads(spaces: &[&KernelSpace], ops: usize) -> Result<Duration, Error> {
    timed_threads(spaces.len(), kvirt::platform::hosted::set_current_cpu, |t, ()| {
        create_drop_1p(spaces[t], ops)
    })
}

/// Runs `setup(t)` and then `work(t, ..)` with what it made, on `threads`
/// threads at once (thread `t` with index `t`), and returns the wall time
/// of the work: from the first thread's start to the last one's end. The
/// threads start together, once every set-up is done, and each reads the
/// clock itself, so that neither the set-ups nor the threads' wake-up are
/// timed. A set-up that panics still arrives (the panic goes on after it),
/// so that no thread waits for ever.
///
/// The threads wait for each other spinning (yielding the CPU as they
/// spin), not asleep: a thread woken from a sleep is often put on the CPU
/// of the thread that woke it, behind it, and ran only when that one was
/// done (measured: one thread's whole run, some 3 ms, after the other's),
/// which timed two threads one after the other. A spinning thread holds a
/// CPU of its own whenever one is free.
pub(crate) fn timed_threads<S>(
    threads: usize,
    setup: impl Fn(usize) -> S + Sync,
    work: impl Fn(usize, S) -> Result<(), Error> + Sync,
) -> Result<Duration, Error> {
    let arrived = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<Duration, Error> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (arrived, setup, work) = (&arrived, &setup, &work);
                s.spawn(move || -> Result<(Instant, Instant), Error> {
                    use std::sync::atomic::Ordering;
                    let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup(t)));
                    arrived.fetch_add(1, Ordering::AcqRel);
                    while arrived.load(Ordering::Acquire) < threads {
                        std::thread::yield_now();
                    }
                    let begin = Instant::now();
                    match prepared {
                        Ok(prepared) => work(t, prepared)?,
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                    Ok((begin, Instant::now()))
                })
            })
            .collect();
        let mut spans = Vec::with_capacity(threads);
        for h in handles {
            spans.push(h.join().map_err(|_| Error("a benchmark thread panicked".into()))??);
        }
        let first = spans.iter().map(|s| s.0).min().ok_or("no thread ran")?;
        let last = spans.iter().map(|s| s.1).max().ok_or("no thread ran")?;
        Ok(last - first)
    })
}

/// Create + drop from `threads` threads at once on one space; ns per op of
/// the aggregate (wall time / all ops).
fn run_threads(cfg: &Config, threads: usize) -> Result<Stats, Error> {
    run_churn_on(cfg, &vec![kvirt_space(); threads])
}

/// Create + drop from 2 threads at once, each on a space of its own, so
/// that they share no lock and no line of kvirt's: what this machine gives
/// two threads at best, beside which the one-space row is read.
fn run_threads_apart(cfg: &Config) -> Result<Stats, Error> {
    run_churn_on(cfg, &[kvirt_space(), second_kvirt_space()])
}

/// Times `churn_threads(spaces, ..)` and checks that every space's
/// counters are back afterwards.
fn run_churn_on(cfg: &Config, spaces: &[&KernelSpace]) -> Result<Stats, Error> {
    let counters = || -> Vec<_> {
        spaces
            .iter()
            .map(|space| {
                space.synchronize();
                (space.phys_stats(), space.vmalloc_stats())
            })
            .collect()
    };
    let before = counters();
    let ops = cfg.thread_ops;
    let mut runs = Vec::new();
    for run in 0..cfg.warmup + cfg.runs {
        let elapsed = churn_threads(spaces, ops)?;
        if run >= cfg.warmup {
            runs.push(ns_per(elapsed, ops * spaces.len()));
        }
    }
    ensure(counters() == before, || "the threaded workload leaked".into())?;
    Ok(Stats::from_runs(runs, (ops * spaces.len()) as u64))
}

/// Create + drop of random-size areas of 1-100 pages.
fn run_random_sizes(cfg: &Config) -> Result<Stats, Error> {
    let rops = cfg.random_area_ops;
    let mut rng = Rng::new(100);
    let sizes: Vec<usize> = (0..rops).map(|_| rng.range(1, 100)).collect();
    run_area(cfg, rops, |space| {
        for &k in &sizes {
            let seg = FrameAllocOptions::new_in(space).zeroed(false).alloc_segment(k)?;
            let area = space.try_map_frames(k * PAGE_SIZE, 0, seg, kvirt_prop())?;
            drop(black_box(area));
        }
        Ok(())
    })
}

/// Create + drop of 2 MiB untracked areas, which must be 2 MiB aligned.
fn run_2m_aligned(cfg: &Config) -> Result<Stats, Error> {
    let ops = cfg.area_ops;
    run_area(cfg, ops, |space| {
        let dev = space.memory_map().iter().find(|r| r.kind == kvirt::platform::MemoryRegionKind::Device);
        let pa = dev.expect("a hosted space has a device window").range.start;
        for i in 0..ops {
            // SAFETY: the simulated device window, never accessed.
            let area =
                unsafe { space.try_map_untracked_frames(2 << 20, 0, pa..pa + (2 << 20), kvirt_prop()) }?;
            if i == 0 {
                ensure(area.start() % (2 << 20) == 0, || {
                    "a 2 MiB untracked area is not 2 MiB aligned".into()
                })?;
            }
            drop(black_box(area));
        }
        Ok(())
    })
}

/// Create + drop of 1-page areas with `busy_areas` live areas around.
fn run_busy(cfg: &Config) -> Result<Stats, Error> {
    let ops = cfg.area_ops;
    let space = kvirt_space();
    space.synchronize();
    let before = (space.phys_stats(), space.vmalloc_stats());
    let mut live: Vec<KVirtArea> = Vec::with_capacity(cfg.busy_areas);
    for _ in 0..cfg.busy_areas {
        let frame = FrameAllocOptions::new_in(space).zeroed(false).alloc_frame()?;
        live.push(space.try_map_frames(PAGE_SIZE, 0, [frame], kvirt_prop())?);
    }
    let stats = timed(cfg, ops, || create_drop_1p(space, ops))?;
    ensure(space.areas().len() == cfg.busy_areas, || "the busy list changed".into())?;
    drop(live);
    space.synchronize();
    ensure((space.phys_stats(), space.vmalloc_stats()) == before, || "the busy workload leaked".into())?;
    Ok(stats)
}

/// The churn row for `mode` on `cpus` threads: create+drop of 1-page
/// areas, counting the flushes CPU 0 carries out.
fn run_churn(cfg: &Config, lazy: bool, cpus: usize) -> Result<Churn, Error> {
    // Kept, as the area workloads' space is; each row sets its mode.
    static SPACE: std::sync::OnceLock<&'static KernelSpace> = std::sync::OnceLock::new();
    let space =
        *SPACE.get_or_init(|| KernelSpace::new_hosted(MachineConfig::new(KVIRT_RAM).cpus(CHURN_CPUS)).leak());
    space.set_purge_mode(if lazy { PurgeMode::lazy_for_cpus(cpus) } else { PurgeMode::Eager });
    space.synchronize();
    let before = (space.phys_stats(), space.vmalloc_stats());
    // SAFETY: only a counter of the machine is read.
    let cpu0 = unsafe { space.machine() }.expect("a hosted space").cpu(0);
    let ops = cfg.thread_ops;
    let (mut runs, mut flushes) = (Vec::new(), 0);
    for run in 0..cfg.warmup + cfg.runs {
        let flushes_before = cpu0.invalidations();
        let elapsed = churn_threads(&vec![space; cpus], ops)?;
        if run >= cfg.warmup {
            runs.push(ns_per(elapsed, ops * cpus));
            flushes += cpu0.invalidations() - flushes_before;
        }
    }
    space.synchronize();
    ensure((space.phys_stats(), space.vmalloc_stats()) == before, || "the churn workload leaked".into())?;
    let drops = (ops * cpus * cfg.runs) as f64;
    Ok(Churn {
        mode: if lazy { "lazy" } else { "eager" },
        cpus,
        stats: Stats::from_runs(runs, (ops * cpus) as u64),
        shootdowns_per_1000: flushes as f64 * 1000.0 / drops,
    })
}

/// The simulated CPUs of the churn's machine: every shoot-down reaches all
/// of them, whatever the threads.
const CHURN_CPUS: usize = 4;

const NO_SV48: &str = "n/a: the x86_64 crate has no Sv48 table";

const NO_ALLOCATOR: &str = "n/a: no kernel virtual-range allocator";
/// Why the shared-table rows have no cell for an implementation.
const NOT_SHARED: &str = "n/a: the shared-table rows compare page tables (kvirt-pt and the peers)";

/// Runs every workload for every implementation, the whole suite
/// `rounds` times in turn; each cell's median is over all rounds' runs.
///
/// # Errors
///
/// If an implementation returns wrong results or a workload leaks.
pub fn measure(quick: bool, only: Option<&str>, arch: Arch) -> Result<Results, Error> {
    let cfg = if quick { Config::quick() } else { Config::full() };
    let mut results = measure_round(&cfg, quick, only, arch)?;
    for round in 2..=cfg.rounds {
        eprintln!("round {round} of {}", cfg.rounds);
        let later = measure_round(&cfg, quick, only, arch)?;
        results.absorb(later, round);
    }
    Ok(results)
}

/// One round: every wanted workload on every implementation, once.
fn measure_round(cfg: &Config, quick: bool, only: Option<&str>, arch: Arch) -> Result<Results, Error> {
    let cfg = *cfg;
    // `--only`: a substring of the id, or with a trailing `$` its end.
    let wanted = |id: &str| {
        only.is_none_or(|o| match o.strip_suffix('$') {
            Some(end) => id.ends_with(end),
            None => id.contains(o),
        })
    };
    // The area and churn workloads do not depend on the paging format:
    // they run with the x86-64 pages only.
    let wanted_areas = |id: &str| arch == Arch::X86_64 && wanted(id);
    let machine = report::MachineInfo::probe();
    // Each area workload with its runner; the threaded ones report
    // throughput.
    type Runner = fn(&Config) -> Result<Stats, Error>;
    let area_workloads: [(Workload, Runner); 7] = [
        (workload("area-1p".into(), "area create+drop, 1 page".into(), "area"), |cfg| {
            run_area(cfg, cfg.area_ops, |space| create_drop_1p(space, cfg.area_ops))
        }),
        (
            workload(
                "area-1p-busy".into(),
                format!("area create+drop, 1 page, {} live areas", cfg.busy_areas),
                "area",
            ),
            run_busy,
        ),
        (
            workload("area-rand-1-100p".into(), "area create+drop, random 1-100 pages".into(), "area"),
            run_random_sizes,
        ),
        (
            workload("area-2m-aligned".into(), "area create+drop, 2 MiB aligned (untracked)".into(), "area"),
            run_2m_aligned,
        ),
        (workload("area-1p-1thread".into(), "area create+drop, 1 page, 1 thread".into(), "area"), |cfg| {
            run_threads(cfg, 1)
        }),
        (workload("area-1p-2threads".into(), "area create+drop, 1 page, 2 threads".into(), "area"), |cfg| {
            run_threads(cfg, 2)
        }),
        (
            workload(
                "area-1p-2threads-apart".into(),
                "area create+drop, 1 page, 2 threads, a space each".into(),
                "area",
            ),
            run_threads_apart,
        ),
    ];
    let shared_rows = [1, 2].map(|threads| {
        let plural = if threads == 1 { "" } else { "s" };
        let title = format!("map+unmap 1 x 4 KiB, one table, {threads} thread{plural}");
        (workload(format!("shared-1p-{threads}thread{plural}"), title, "page"), threads)
    });
    let huge = workload("untracked-1g".into(), "untracked 1 GiB map+unmap".into(), "1 GiB");
    let sizes: Vec<usize> =
        SIZES.into_iter().filter(|&n| page_workloads(n).iter().any(|w| wanted(&w.id))).collect();
    let run_huge_too = wanted(&huge.id);
    let mut progress = Progress {
        done: 0,
        total: sizes.len() * IMPLS.len()
            + usize::from(run_huge_too) * IMPLS.len()
            + area_workloads.iter().filter(|(w, _)| wanted_areas(&w.id)).count()
            + shared_rows.iter().filter(|(w, _)| wanted_areas(&w.id)).count()
            + if wanted_areas("churn") { 4 } else { 0 }
            + usize::from(wanted_areas("breakdown")),
        started: Instant::now(),
    };
    let mut cells = Vec::new();

    for n in sizes {
        let ws = page_workloads(n);
        let mut push = |name: &'static str, stats: [Stats; 4], progress: &mut Progress| {
            progress.step(&format!(
                "{n:>5} pages  {name:<10} map {:>8.1} ns/page  query {:>7.1} ns (chained {:>7.1})  unmap {:>8.1} ns/page",
                stats[0].ns_per_op, stats[1].ns_per_op, stats[2].ns_per_op, stats[3].ns_per_op
            ));
            for (w, s) in ws.iter().zip(stats) {
                cells.push(Measurement { workload: w.clone(), impl_name: name, result: Ok(s) });
            }
        };
        let window = ((cfg.pages_per_round / n).max(1)) * (n + 1);
        match arch {
            Arch::X86_64 => {
                push(<KvirtArea>::NAME, run_pages(&mut <KvirtArea>::new(), n, &cfg)?, &mut progress);
                push(<KvirtPt>::NAME, run_pages(&mut <KvirtPt>::new(), n, &cfg)?, &mut progress);
                push(X86Crate::NAME, run_pages(&mut X86Crate::new(), n, &cfg)?, &mut progress);
                push(<Multiarch>::NAME, run_pages(&mut <Multiarch>::new(), n, &cfg)?, &mut progress);
            }
            Arch::Sv48 => {
                let area = run_pages(&mut KvirtArea::<Sv48Layout>::new(), n, &cfg)?;
                push(<KvirtArea>::NAME, area, &mut progress);
                push(<KvirtPt>::NAME, run_pages(&mut KvirtPt::<Sv48Layout>::new(), n, &cfg)?, &mut progress);
                let multiarch = run_pages(&mut Multiarch::<Sv48Meta, Sv48Pte>::new(), n, &cfg)?;
                push(<Multiarch>::NAME, multiarch, &mut progress);
            }
        }
        push(Floor::NAME, run_pages(&mut Floor::new(window), n, &cfg)?, &mut progress);
        if arch == Arch::Sv48 {
            for w in &ws {
                cells.push(Measurement {
                    workload: w.clone(),
                    impl_name: X86Crate::NAME,
                    result: Err(NO_SV48),
                });
            }
        }
    }

    if run_huge_too {
        let huge_results: [(&'static str, Result<Stats, &'static str>); 5] = match arch {
            Arch::X86_64 => [
                (<KvirtArea>::NAME, Ok(run_huge(&mut <KvirtArea>::new(), &cfg)?)),
                (<KvirtPt>::NAME, Ok(run_huge(&mut <KvirtPt>::new(), &cfg)?)),
                (X86Crate::NAME, Ok(run_huge(&mut X86Crate::new(), &cfg)?)),
                (<Multiarch>::NAME, Ok(run_huge(&mut <Multiarch>::new(), &cfg)?)),
                (Floor::NAME, Ok(run_huge(&mut Floor::new(1), &cfg)?)),
            ],
            Arch::Sv48 => [
                (<KvirtArea>::NAME, Ok(run_huge(&mut KvirtArea::<Sv48Layout>::new(), &cfg)?)),
                (<KvirtPt>::NAME, Ok(run_huge(&mut KvirtPt::<Sv48Layout>::new(), &cfg)?)),
                (X86Crate::NAME, Err(NO_SV48)),
                (<Multiarch>::NAME, Ok(run_huge(&mut Multiarch::<Sv48Meta, Sv48Pte>::new(), &cfg)?)),
                (Floor::NAME, Ok(run_huge(&mut Floor::new(1), &cfg)?)),
            ],
        };
        for (name, result) in huge_results {
            if let Ok(stats) = &result {
                progress.step(&format!("untracked 1 GiB  {name:<10} {:>9.1} ns/op", stats.ns_per_op));
            }
            cells.push(Measurement { workload: huge.clone(), impl_name: name, result });
        }
    }

    for (w, threads) in shared_rows.iter().filter(|(w, _)| wanted_areas(&w.id)) {
        let results: [(&'static str, Result<Stats, &'static str>); 5] = [
            (<KvirtArea>::NAME, Err(NOT_SHARED)),
            (<KvirtPt>::NAME, Ok(shared::run(&<KvirtPt>::new(), *threads, &cfg)?)),
            (X86Crate::NAME, Ok(shared::run(&shared::Locked::new(X86Crate::new()), *threads, &cfg)?)),
            (<Multiarch>::NAME, Ok(shared::run(&shared::Locked::new(<Multiarch>::new()), *threads, &cfg)?)),
            (Floor::NAME, Err(NOT_SHARED)),
        ];
        let shown: Vec<String> = results
            .iter()
            .filter_map(|(name, r)| r.as_ref().ok().map(|s| format!("{name} {:.1}", s.ns_per_op)))
            .collect();
        progress.step(&format!("{} (ns/page): {}", w.title, shown.join(", ")));
        for (name, result) in results {
            cells.push(Measurement { workload: w.clone(), impl_name: name, result });
        }
    }

    for (w, run) in &area_workloads {
        if !wanted_areas(&w.id) {
            continue;
        }
        let stats = run(&cfg)?;
        let shown = if w.id.contains("thread") {
            format!("{}: {:.0} ops/s", w.title, stats.ops_per_s())
        } else {
            format!("{}: {:.1} ns/op", w.title, stats.ns_per_op)
        };
        progress.step(&shown);
        for name in IMPLS {
            let result = if name == <KvirtArea>::NAME { Ok(stats.clone()) } else { Err(NO_ALLOCATOR) };
            cells.push(Measurement { workload: w.clone(), impl_name: name, result });
        }
    }
    let mut churn = Vec::new();
    if wanted_areas("churn") {
        for cpus in [1, 2, CHURN_CPUS] {
            for lazy in [false, true] {
                let row = run_churn(&cfg, lazy, cpus)?;
                progress.step(&format!(
                    "churn {} on {} CPU(s): {:.1} ns per create+drop, {:.1} shoot-downs per 1000 drops",
                    row.mode, row.cpus, row.stats.ns_per_op, row.shootdowns_per_1000
                ));
                churn.push(row);
            }
        }
    }
    let mut parts = Vec::new();
    if wanted_areas("breakdown") {
        parts = breakdown::measure(&cfg)?;
        let shown: Vec<String> =
            parts.iter().map(|p| format!("{} {}", p.name, report::fmt_ns(p.stats.ns_per_op))).collect();
        progress.step(&format!("breakdown of a 1-page map+unmap (ns): {}", shown.join(", ")));
    }
    Ok(Results { quick, config: cfg, cells, machine, churn, breakdown: parts, arch })
}

/// `kvirt bench`.
///
/// # Errors
///
/// If a workload fails its checks or a file cannot be written.
pub fn run(options: &Options) -> Result<(), Error> {
    eprintln!(
        "kvirt bench{}: {} implementations, progress below; the table goes to stdout",
        if options.quick { " --quick" } else { "" },
        IMPLS.len()
    );
    let results = measure(options.quick, options.only.as_deref(), options.arch)?;
    let targets = report::targets(&results);
    println!("{}", report::text_table(&results, &targets));
    if let Some(path) = &options.json {
        std::fs::write(path, report::json(&results, &targets))
            .map_err(|e| Error(format!("writing {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &options.svg {
        std::fs::write(path, report::svg(&results))
            .map_err(|e| Error(format!("writing {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &options.markdown {
        let svg_link = options.svg.as_ref().map(|svg| report::relative_link(path, svg));
        // Measurements taken elsewhere (see `report::INCLUDED`), next to
        // the page when they exist.
        let included: Vec<String> = report::INCLUDED
            .iter()
            .filter_map(|name| std::fs::read_to_string(path.with_file_name(name)).ok())
            .collect();
        std::fs::write(path, report::markdown(&results, &targets, svg_link.as_deref(), &included))
            .map_err(|e| Error(format!("writing {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--arch sv48` runs kvirt and the multiarch table on Sv48 pages, and
    /// marks the x86-64-only peer unsupported.
    #[test]
    fn sv48_runs_kvirt_and_multiarch_and_marks_the_x86_64_crate_unsupported() {
        let r = measure(true, Some("4k-x16"), Arch::Sv48).unwrap();
        assert_eq!(r.arch, Arch::Sv48);
        for id in ["map-4k-x16", "query-4k-x16", "unmap-4k-x16"] {
            for name in [<KvirtArea>::NAME, <KvirtPt>::NAME, <Multiarch>::NAME, Floor::NAME] {
                let stats = r.get(id, name).unwrap_or_else(|| panic!("{id} {name} measured"));
                assert!(stats.ns_per_op > 0.0);
            }
            let cell = r.cells.iter().find(|c| c.workload.id == id && c.impl_name == X86Crate::NAME).unwrap();
            assert_eq!(cell.result, Err(NO_SV48));
        }
        assert!(r.churn.is_empty(), "the area workloads run on x86-64 only");
    }

    /// A later round's runs join every cell's, and the median is taken
    /// over all of them; the churn's shoot-downs are averaged per round.
    #[test]
    fn rounds_merge_every_cell_runs_and_average_the_shootdowns() {
        let cfg = Config::quick();
        let mut first = measure_round(&cfg, true, Some("churn"), Arch::X86_64).unwrap();
        let mut second = measure_round(&cfg, true, Some("churn"), Arch::X86_64).unwrap();
        assert!(!first.churn.is_empty());
        // Known runs, so that the merged median is known.
        for (row, runs) in
            first.churn.iter_mut().zip([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [5.0; 3], [7.0; 3]])
        {
            row.stats = Stats::from_runs(runs.to_vec(), row.stats.ops_per_run);
            row.shootdowns_per_1000 = 4.0;
        }
        for row in &mut second.churn {
            row.stats = Stats::from_runs(vec![100.0, 200.0, 300.0], row.stats.ops_per_run);
            row.shootdowns_per_1000 = 8.0;
        }
        // A cell in both rounds, and one unsupported in both.
        let cell = |runs: Vec<f64>| Measurement {
            workload: workload("w".into(), "w".into(), "op"),
            impl_name: <KvirtPt>::NAME,
            result: Ok(Stats::from_runs(runs, 1)),
        };
        let unsupported = Measurement {
            workload: workload("w".into(), "w".into(), "op"),
            impl_name: "x",
            result: Err(NO_SV48),
        };
        first.cells = vec![cell(vec![4.0, 5.0, 6.0]), unsupported.clone()];
        second.cells = vec![cell(vec![1.0, 2.0, 3.0]), unsupported];
        first.absorb(second, 2);
        let merged = first.cells[0].result.as_ref().unwrap();
        assert_eq!(merged.runs, [4.0, 5.0, 6.0, 1.0, 2.0, 3.0]);
        assert_eq!(merged.ns_per_op, 4.0);
        assert_eq!(first.cells[1].result, Err(NO_SV48));
        let row = &first.churn[0];
        assert_eq!(row.stats.runs, [1.0, 2.0, 3.0, 100.0, 200.0, 300.0]);
        assert_eq!(row.stats.ns_per_op, 100.0, "the upper median of six runs");
        assert_eq!(first.churn[1].stats.ns_per_op, 100.0);
        assert_eq!(row.shootdowns_per_1000, 6.0);
    }
}
