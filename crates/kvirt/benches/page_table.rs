//! Page-table benchmarks: map, query and unmap of 4 KiB pages.
//!
//! Each operation is measured two ways, for N = 1, 16 and 512 pages:
//!
//! * `one_cursor`: one cursor over the N pages does all of them;
//! * `cursor_per_page`: a new cursor per page, each walking from the root
//!   (what a caller that handles one page at a time pays).
//!
//! The pages are untracked and lie in one 2 MiB region of an isolated
//! hosted kernel space. Another mapping in the same 1 GiB keeps the L2 node
//! alive, so the map benchmarks pay for the L1 node the first page needs
//! and the unmap benchmarks for reclaiming it (as a real map/unmap cycle
//! does), but not for higher levels. Only the measured operation is timed:
//! the mapping before an unmap and the unmapping after a map are not.
//!
//! `map_frames_4k` maps 512 tracked frames with one cursor's
//! `try_map_frames`, from the two iterators a caller holding a `Vec` of
//! frames has at hand: the `Vec` itself (`into_iter`, whose buffer the map
//! frees at its end) and `drain(..)` (the caller keeps the buffer). The
//! fill keeps either iterator's position in registers; before it did, the
//! `Drain` mapped at half the speed.
//!
//! `cargo bench -p kvirt --bench page_table -- --test` runs each benchmark
//! once, as a smoke test.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvirt::frame::{AnyFrameMeta, Frame, FrameAllocOptions};
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

/// The 2 MiB region the benchmarks use.
const BASE: Vaddr = 0xffff_c000_4000_0000;
/// A page in the same 1 GiB that stays mapped, keeping the L2 node.
const PIN: Vaddr = BASE + 100 * (2 << 20);
const PA: Paddr = 0x1_0000_0000;
const SIZES: [usize; 3] = [1, 16, 512];

struct Fixture {
    // Declared before `space`, so it is dropped first.
    pt: PageTable<KernelPtConfig>,
    space: KernelSpace,
}

impl Fixture {
    fn new() -> Self {
        let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20));
        let pt = PageTable::<KernelPtConfig>::empty_in(&space).expect("page table");
        pt.cursor_mut(&(PIN..PIN + PAGE_SIZE)).unwrap().map(MappedItem::Untracked(PA, 1, prop()));
        Fixture { pt, space }
    }

    fn map_one_cursor(&self, n: usize) {
        let mut c = self.pt.cursor_mut(&(BASE..BASE + n * PAGE_SIZE)).unwrap();
        for i in 0..n {
            c.map(MappedItem::Untracked(PA + i * PAGE_SIZE, 1, prop()));
        }
    }

    fn map_per_page(&self, n: usize) {
        for i in 0..n {
            let va = BASE + i * PAGE_SIZE;
            let mut c = self.pt.cursor_mut(&(va..va + PAGE_SIZE)).unwrap();
            c.map(MappedItem::Untracked(PA + i * PAGE_SIZE, 1, prop()));
        }
    }

    fn query_one_cursor(&self, n: usize) {
        let mut c = self.pt.cursor(&(BASE..BASE + n * PAGE_SIZE)).unwrap();
        for i in 0..n {
            c.jump(BASE + i * PAGE_SIZE).unwrap();
            let (range, item) = c.query().unwrap();
            black_box((range, item.map(|item| item.paddr())));
        }
    }

    fn query_per_page(&self, n: usize) {
        for i in 0..n {
            let va = BASE + i * PAGE_SIZE;
            let mut c = self.pt.cursor(&(va..va + PAGE_SIZE)).unwrap();
            let (range, item) = c.query().unwrap();
            black_box((range, item.map(|item| item.paddr())));
        }
    }

    /// Unmaps page by page (a search of one page each, so a whole L1 node
    /// is never taken at once).
    fn unmap_one_cursor(&self, n: usize) {
        let mut c = self.pt.cursor_mut(&(BASE..BASE + n * PAGE_SIZE)).unwrap();
        for _ in 0..n {
            // Untracked memory in a table no CPU uses: no TLB flush needed.
            drop(black_box(c.take_next(PAGE_SIZE).expect("a mapped page")));
        }
    }

    fn unmap_per_page(&self, n: usize) {
        for i in 0..n {
            let va = BASE + i * PAGE_SIZE;
            let mut c = self.pt.cursor_mut(&(va..va + PAGE_SIZE)).unwrap();
            // Untracked memory in a table no CPU uses: no TLB flush needed.
            drop(black_box(c.take_next(PAGE_SIZE).expect("a mapped page")));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Let deferred frees run before the space goes.
        self.space.synchronize();
    }
}

fn prop() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// Times `measured` alone, `iters` times, with `before` and `after` around
/// each run untimed.
fn timed(
    iters: u64,
    mut before: impl FnMut(),
    mut measured: impl FnMut(),
    mut after: impl FnMut(),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        before();
        let start = Instant::now();
        measured();
        total += start.elapsed();
        after();
    }
    total
}

fn map(c: &mut Criterion) {
    let f = Fixture::new();
    let mut group = c.benchmark_group("page_table/map_4k");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("one_cursor", n), &n, |b, &n| {
            b.iter_custom(|iters| timed(iters, || {}, || f.map_one_cursor(n), || f.unmap_one_cursor(n)));
        });
        group.bench_with_input(BenchmarkId::new("cursor_per_page", n), &n, |b, &n| {
            b.iter_custom(|iters| timed(iters, || {}, || f.map_per_page(n), || f.unmap_one_cursor(n)));
        });
    }
    group.finish();
}

fn query(c: &mut Criterion) {
    let f = Fixture::new();
    let mut group = c.benchmark_group("page_table/query_4k");
    for n in SIZES {
        f.map_one_cursor(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("one_cursor", n), &n, |b, &n| {
            b.iter(|| f.query_one_cursor(n));
        });
        group.bench_with_input(BenchmarkId::new("cursor_per_page", n), &n, |b, &n| {
            b.iter(|| f.query_per_page(n));
        });
        f.unmap_one_cursor(n);
    }
    group.finish();
}

fn unmap(c: &mut Criterion) {
    let f = Fixture::new();
    let mut group = c.benchmark_group("page_table/unmap_4k");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("one_cursor", n), &n, |b, &n| {
            b.iter_custom(|iters| timed(iters, || f.map_one_cursor(n), || f.unmap_one_cursor(n), || {}));
        });
        group.bench_with_input(BenchmarkId::new("cursor_per_page", n), &n, |b, &n| {
            b.iter_custom(|iters| timed(iters, || f.map_one_cursor(n), || f.unmap_per_page(n), || {}));
        });
    }
    group.finish();
}

fn map_frames(c: &mut Criterion) {
    const N: usize = 512;
    let f = Fixture::new();
    let pool: Vec<Frame<()>> =
        FrameAllocOptions::new_in(&f.space).alloc_segment(N).expect("frames").into_iter().collect();
    let range = BASE..BASE + N * PAGE_SIZE;
    let frames: RefCell<Vec<Frame<dyn AnyFrameMeta>>> = RefCell::new(Vec::with_capacity(N));
    let make = || frames.borrow_mut().extend(pool.iter().map(|frame| frame.clone().into_dyn()));
    let map = |from: Vec<Frame<dyn AnyFrameMeta>>| {
        let mut cursor = f.pt.cursor_mut(&range).expect("a kernel range");
        cursor.try_map_frames(from, prop()).expect("free pages");
    };
    let map_drain = || {
        let mut cursor = f.pt.cursor_mut(&range).expect("a kernel range");
        cursor.try_map_frames(frames.borrow_mut().drain(..), prop()).expect("free pages");
    };
    // A table no CPU uses: no TLB flush needed.
    let unmap = || drop(black_box(f.pt.cursor_mut(&range).expect("a kernel range").take_all(range.len())));
    let mut group = c.benchmark_group("page_table/map_frames_4k");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function(BenchmarkId::new("into_iter", N), |b| {
        b.iter_custom(|iters| timed(iters, make, || map(std::mem::take(&mut *frames.borrow_mut())), unmap));
    });
    group.bench_function(BenchmarkId::new("drain", N), |b| {
        b.iter_custom(|iters| timed(iters, make, map_drain, unmap));
    });
    group.finish();
}

criterion_group!(benches, map, query, unmap, map_frames);
criterion_main!(benches);
