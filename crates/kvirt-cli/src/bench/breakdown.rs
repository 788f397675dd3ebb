//! Where kvirt's 1-page map and unmap spend their time: the same
//! operation measured with one more piece of work at a time, so that each
//! difference names a cost.
//!
//! Every step runs on a raw `PageTable<KernelPtConfig>` of a hosted space
//! with two simulated CPUs (what `kvirt-pt` uses), at one page of
//! VMALLOC's range:
//!
//! | step | adds |
//! |---|---|
//! | `rcu` | a read-side section entered and left: the hosted platform's (a per-thread counter; `membarrier` on the reclaiming side); a kernel's is a preemption count |
//! | `cursor` | a `CursorMut` over the page, created and dropped: its read-side section, the walk down and the node lock |
//! | `untracked` | mapping an untracked page and taking it back: the PTE stores |
//! | `tracked` | the same with a tracked frame: its reference count, up and down |
//! | `no-cursor` | `tracked`'s map and take without a cursor (`PageTable::try_map_frame`, `try_take_page`): the leaf node locked alone |
//! | `walk` | a lock-free walk to a page mapped in an existing leaf node (`PageTable::translate_addr`): a read-side section and the entries on the way |
//! | `leaf-lock` | `PageTable::try_take_page` of a page that is not mapped, in an existing leaf node: the same section, the walk down by the lock protocol, and the leaf node locked (a locked compare-exchange), checked not to be stray and unlocked; its own cost (less `walk`) is what this adds to a lock-free walk: the lock, and the lock protocol's walk down, which costs more than `translate_addr`'s (so an upper bound of the lock's price; `lock-op` is the lock alone) |
//! | `lock-op` | the node lock's own instructions, on a byte in cache: a compare-exchange (acquire) taking it and a release store giving it back, what locking a node costs wherever it is found |
//! | `reclaim` | the same with no neighbour in the leaf node, so the node is allocated at the map and reclaimed at the unmap |
//! | `flush` | the unmap's shoot-down of the page on both CPUs, alone |
//! | `area` | `KVirtArea::map_frames` of one page and its drop: the same leaf-only map and take as `no-cursor` (an area's creation and drop map and take a page inside an existing leaf node without a cursor) and `flush`'s shoot-down, plus VMALLOC, the area registry and the area's own bookkeeping; a kernel space keeps an emptied leaf node for a batch, so no node is allocated or reclaimed per area |
//! | `512-untracked` | per page, 512 untracked pages mapped through one cursor and taken back (no flush) |
//! | `512-tracked` | the same with 512 distinct tracked frames: the reference counts of frames whose metadata is not in cache |
//! | `512-fill` | per page, the map alone of 512 tracked frames by one cursor's `try_map_frames`, as `kvirt-pt`'s 512-page map, into two leaf nodes that exist (as the floor's do) |
//!
//! The leaf node of the first four steps stays alive (a neighbour page is
//! mapped) except in `reclaim`. `512-fill`'s range straddles two leaf
//! nodes, as the benchmark's 512-page ranges do, and a page mapped on
//! either side keeps both alive; only its map is timed (the frames' new
//! handles are made before it, and the range is taken back after).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvirt::frame::{Frame, FrameAllocOptions};
use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable};
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::PAGE_SIZE;

use super::impls::kvirt_prop;
use super::mapper::BASE_VA;
use super::{Config, Stats};
use crate::{ensure, Error};

/// One step of the breakdown.
#[derive(Clone, Debug)]
pub struct Step {
    /// Short name (JSON, tables).
    pub name: &'static str,
    /// What it measures.
    pub what: &'static str,
    /// The steps whose work it includes (its own cost is its time less
    /// theirs).
    pub builds_on: &'static [&'static str],
    /// Time per operation.
    pub stats: Stats,
}

/// The steps, in order (see the module documentation).
pub const STEPS: [(&str, &[&str], &str); 14] = [
    ("rcu", &[], "a read-side section entered and left (hosted: a per-thread counter, no locked instruction)"),
    ("cursor", &["rcu"], "CursorMut over the page, created and dropped (+ walk down, node lock)"),
    ("untracked", &["cursor"], "+ map an untracked page and take it back (PTE stores)"),
    ("tracked", &["untracked"], "+ a tracked frame instead (reference count up and down)"),
    (
        "no-cursor",
        &["rcu"],
        "`tracked` without a cursor: `PageTable::try_map_frame` + `try_take_page` (the leaf node locked alone)",
    ),
    ("walk", &[], "a lock-free walk to a mapped page (`PageTable::translate_addr`: a read-side section, the entries on the way)"),
    (
        "leaf-lock",
        &["walk"],
        "`PageTable::try_take_page` of a page not mapped, in an existing leaf node: + the leaf node found by the lock protocol, locked, checked and unlocked",
    ),
    ("lock-op", &[], "a node lock's instructions alone: a compare-exchange taking it, a release store giving it back"),
    ("reclaim", &["tracked"], "+ no neighbour: the leaf node allocated and reclaimed"),
    ("flush", &[], "the unmap's shoot-down of the page on both CPUs, alone"),
    (
        "area",
        &["no-cursor", "flush"],
        "KVirtArea::map_frames of 1 page + drop (adds VMALLOC, registry, area; the space keeps the leaf node)",
    ),
    ("512-untracked", &[], "per page: 512 untracked pages mapped one by one by one cursor and taken back by its `take_all` (no flush)"),
    (
        "512-tracked",
        &["512-untracked"],
        "per page: the same with 512 distinct tracked frames (their reference counts)",
    ),
    (
        "512-fill",
        &[],
        "per page: the map alone of 512 tracked frames by one cursor's `try_map_frames`, into two leaf nodes that exist",
    ),
];

/// Pages of the last two steps' ranges.
const RANGE: usize = 512;

/// Times `times` calls of `step`, each doing `ops_per_call` operations.
fn each(cfg: &Config, times: usize, ops_per_call: usize, mut step: impl FnMut()) -> Result<Stats, Error> {
    super::timed(cfg, times * ops_per_call, || {
        (0..times).for_each(|_| step());
        Ok(())
    })
}

/// Times the `map` of `times` rounds of `pages` pages each: every round
/// makes its input with `prepare` and undoes the map with `undo`, neither
/// of them timed.
fn each_map<T>(
    cfg: &Config,
    times: usize,
    pages: usize,
    mut prepare: impl FnMut() -> T,
    mut map: impl FnMut(T),
    mut undo: impl FnMut(),
) -> Stats {
    let mut runs = Vec::new();
    for run in 0..cfg.warmup + cfg.runs {
        let mut spent = Duration::ZERO;
        for _ in 0..times {
            let input = prepare();
            let t = Instant::now();
            map(input);
            spent += t.elapsed();
            undo();
        }
        if run >= cfg.warmup {
            runs.push(super::ns_per(spent, times * pages));
        }
    }
    Stats::from_runs(runs, (times * pages) as u64)
}

/// Measures every step.
///
/// # Errors
///
/// If memory runs out or the space's counters are not back afterwards.
pub fn measure(cfg: &Config) -> Result<Vec<Step>, Error> {
    let space = super::kvirt_space();
    let pt = PageTable::<KernelPtConfig>::empty_in(space)?;
    let frame: Frame<()> = FrameAllocOptions::new_in(space).alloc_frame()?;
    let (va, neighbour, lone) = (BASE_VA, BASE_VA + PAGE_SIZE, BASE_VA + (4 << 20));
    let page = va..va + PAGE_SIZE;
    let prop = kvirt_prop();
    let map_take = |va: usize, item: MappedItem| {
        let mut cursor = pt.cursor_mut(&(va..va + PAGE_SIZE)).expect("a kernel range");
        cursor.map(item);
        cursor.jump(va).expect("inside the cursor");
        drop(black_box(cursor.take_next(PAGE_SIZE)));
    };
    space.synchronize();
    let before = space.phys_stats();
    // An untracked page that keeps the leaf node around it alive.
    let pin_node = |at: usize| {
        pt.cursor_mut(&(at..at + PAGE_SIZE)).expect("a kernel range").map(MappedItem::Untracked(0, 1, prop))
    };
    let unpin_node =
        |at: usize| drop(pt.cursor_mut(&(at..at + PAGE_SIZE)).expect("a kernel range").take_next(PAGE_SIZE));
    pin_node(neighbour);
    let ops = cfg.area_ops;
    let pa = frame.paddr();
    let platform = space.platform();
    let lock_byte = AtomicBool::new(false);
    let mut results = vec![
        each(cfg, ops, 1, || {
            platform.rcu_read_lock();
            // SAFETY: the line above began the section, on this thread.
            unsafe { platform.rcu_read_unlock() };
        })?,
        each(cfg, ops, 1, || drop(black_box(pt.cursor_mut(&page).expect("a kernel range"))))?,
        each(cfg, ops, 1, || map_take(va, MappedItem::Untracked(pa, 1, prop)))?,
        each(cfg, ops, 1, || map_take(va, MappedItem::Tracked(frame.clone().into_dyn(), prop)))?,
        each(cfg, ops, 1, || {
            pt.try_map_frame(va, frame.clone(), prop).expect("a free page");
            drop(black_box(pt.try_take_page(va).expect("a kernel page")));
        })?,
        // The neighbour is mapped (untracked, at physical address 0); `va`
        // is not, in the same leaf node.
        each(cfg, ops, 1, || assert_eq!(black_box(pt.translate_addr(black_box(neighbour))), Some(0)))?,
        each(cfg, ops, 1, || {
            assert!(black_box(pt.try_take_page(black_box(va))).expect("a kernel page").is_none())
        })?,
        // What `NodeRef::lock` and a guard's drop do to the node's lock.
        each(cfg, ops, 1, || {
            let lock = black_box(&lock_byte);
            while lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {}
            lock.store(false, Ordering::Release);
        })?,
        each(cfg, ops, 1, || map_take(lone, MappedItem::Tracked(frame.clone().into_dyn(), prop)))?,
        each(cfg, ops, 1, || platform.flush_tlb(TlbFlushOp::Range(page.clone()), TlbScope::AllCpus))?,
        each(cfg, ops, 1, || {
            let area = space.try_map_frames(PAGE_SIZE, 0, [frame.clone()], prop).expect("an area");
            drop(black_box(area));
        })?,
    ];
    // 512 pages (the same 2 MiB, leaf node kept by the page after them).
    let pool: Vec<Frame<()>> = FrameAllocOptions::new_in(space).alloc_segment(RANGE)?.into_iter().collect();
    let range = BASE_VA + (8 << 20)..BASE_VA + (8 << 20) + RANGE * PAGE_SIZE;
    pin_node(range.end);
    let map_take_range = |tracked: bool| {
        let mut cursor = pt.cursor_mut(&range).expect("a kernel range");
        for (i, frame) in pool.iter().enumerate() {
            let item = if tracked {
                MappedItem::Tracked(frame.clone().into_dyn(), prop)
            } else {
                MappedItem::Untracked(frame.paddr(), 1, prop)
            };
            cursor.jump(range.start + i * PAGE_SIZE).expect("inside the cursor");
            cursor.map(item);
        }
        cursor.jump(range.start).expect("inside the cursor");
        drop(black_box(cursor.take_all(range.len())));
    };
    let ranges = (ops / RANGE).max(8);
    results.push(each(cfg, ranges, RANGE, || map_take_range(false))?);
    results.push(each(cfg, ranges, RANGE, || map_take_range(true))?);
    unpin_node(range.end);
    // Half a leaf node's span into the next: both nodes kept by the pages
    // around the range.
    let half = RANGE / 2 * PAGE_SIZE;
    let fill = BASE_VA + (16 << 20) + half..BASE_VA + (16 << 20) + half + RANGE * PAGE_SIZE;
    pin_node(fill.start - PAGE_SIZE);
    pin_node(fill.end);
    results.push(each_map(
        cfg,
        ranges,
        RANGE,
        || pool.iter().map(|f| f.clone().into_dyn()).collect::<Vec<_>>(),
        |frames| {
            let mut cursor = pt.cursor_mut(&fill).expect("a kernel range");
            cursor.try_map_frames(frames, prop).expect("free pages");
        },
        || drop(black_box(pt.cursor_mut(&fill).expect("a kernel range").take_all(fill.len()))),
    ));
    unpin_node(fill.end);
    unpin_node(fill.start - PAGE_SIZE);
    drop(pool);
    unpin_node(neighbour);
    space.synchronize();
    ensure(space.phys_stats() == before, || "the breakdown leaked".into())?;
    Ok(STEPS
        .iter()
        .zip(results)
        .map(|(&(name, builds_on, what), stats)| Step { name, what, builds_on, stats })
        .collect())
}
