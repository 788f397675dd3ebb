//! The VMALLOC range allocator: where kernel virtual areas live.
//!
//! A locked wrapper over [`RangeAllocator`] that adds one guard page after
//! every area, so that an overrun of one area faults instead of running
//! into its neighbour:
//!
//! ```text
//!   | area A ........ | guard | area B .... | guard |      free      |
//! ```
//!
//! The guard belongs to the allocation of the area before it and is freed
//! with it.
//!
//! ## Per-CPU arenas
//!
//! A large VMALLOC region is cut into contiguous *arenas*, a power of two
//! of them, of a power-of-two length (the last one also takes the rest),
//! each with its own allocator and lock (Linux's `vmap_node`s serve the
//! same end):
//!
//! ```text
//!   VMALLOC  | arena 0          | arena 1          | ... | arena N-1        |
//!              CPU 0, N, 2N ...   CPU 1, N+1 ...
//! ```
//!
//! An allocation is tried in the calling CPU's arena first (CPU index modulo
//! N), then in the others in turn, and never spans two arenas. Threads on
//! different CPUs so take different locks *and* get addresses far apart,
//! which puts their areas under different page-table nodes: creating and
//! dropping areas from several CPUs scales instead of meeting on one lock
//! and one node. A region smaller than `2 * MIN_ARENA` (such as a test
//! layout's) is one arena. [`Vmalloc::stats`] describes the union of the
//! arenas' free space, as if it were one allocator: free blocks that touch
//! across an arena boundary count as one.
//!
//! ## Pools of freed ranges
//!
//! Each arena keeps up to eight small freed ranges in a pool and hands one
//! to the next allocation of its length, so that creating and dropping
//! areas of one size costs no split and merge of free blocks (`arena`).
//! Past a full pool, ranges freed side by side (areas dropped in the order
//! they were made) gather into one run, given to the allocator as one free.
//! Pooled ranges and the run are free to every reader: statistics and the
//! invariant checks see them as free, and an allocation a pool cannot
//! serve gives them back before it looks for room.

use alloc::vec::Vec;
use core::ops::Range;

use crossbeam_utils::CachePadded;

mod arena;

use self::arena::Arena;
use super::range_alloc::{RangeAllocError, RangeAllocStats};
use crate::addr::{Vaddr, PAGE_SIZE};
use crate::inv::Inv;

/// The bytes of unmapped guard after every area.
pub const GUARD_SIZE: usize = PAGE_SIZE;

/// The smallest arena: an arena must hold the largest areas a kernel asks
/// for (1 GiB-aligned huge mappings with room to spare).
const MIN_ARENA: usize = 1 << 40;

/// The most arenas (enough for the CPUs that create areas at once); a
/// power of two, as every arena count is.
pub(crate) const MAX_ARENAS: usize = 8;
const _: () = assert!(MAX_ARENAS.is_power_of_two());

/// The largest power of two at most `x` (which is not 0).
fn prev_power_of_two(x: usize) -> usize {
    1 << (usize::BITS - 1 - x.leading_zeros())
}

/// Statistics of the VMALLOC region.
pub type VmallocStats = RangeAllocStats;

/// The VMALLOC allocator of one kernel space.
#[derive(Debug)]
pub(crate) struct Vmalloc {
    /// The arenas, in address order; together they cover the region.
    arenas: Vec<CachePadded<spin::Mutex<Arena>>>,
    /// The region's start and the length of every arena but the last (which
    /// also takes the remainder).
    start: Vaddr,
    arena_len: usize,
}

/// Where a VMALLOC region's arenas are: enough to tell which arena an
/// address is in. The area registry shards by it, so that CPUs working in
/// their own arenas meet on no registry lock either.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArenaMap {
    start: Vaddr,
    /// The arenas' length is `1 << shift` (if there are several).
    shift: u32,
    /// At least 1 and at most `MAX_ARENAS`.
    count: usize,
}

impl ArenaMap {
    /// How many arenas there are.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The index of the arena holding `va` (the last one for anything past
    /// the region, the first for anything before it).
    pub(crate) fn index(&self, va: Vaddr) -> usize {
        let i = va.saturating_sub(self.start) >> self.shift;
        i.min(self.count - 1)
    }
}

impl Vmalloc {
    pub(crate) fn new(range: Range<Vaddr>) -> Self {
        // Powers of two, both the count and the length (whole pages, as
        // `MIN_ARENA` is) when there are several, so that a CPU's arena is a
        // mask and an address's a shift; the last one runs to the end of
        // the region.
        let n = prev_power_of_two((range.len() / MIN_ARENA).clamp(1, MAX_ARENAS));
        let arena_len = if n == 1 { range.len() } else { prev_power_of_two(range.len() / n) };
        let arenas = (0..n)
            .map(|i| {
                let start = range.start + i * arena_len;
                let end = if i + 1 == n { range.end } else { start + arena_len };
                CachePadded::new(spin::Mutex::new(Arena::new(start..end)))
            })
            .collect();
        Self { arenas, start: range.start, arena_len }
    }

    /// Where the arenas are, for whoever groups things by arena.
    pub(crate) fn arena_map(&self) -> ArenaMap {
        // One arena takes every address, whatever the shift.
        ArenaMap { start: self.start, shift: self.arena_len.trailing_zeros(), count: self.arenas.len() }
    }

    fn arena_index(&self, va: Vaddr) -> usize {
        self.arena_map().index(va)
    }

    /// The arena holding `va`.
    fn arena_of(&self, va: Vaddr) -> &spin::Mutex<Arena> {
        &self.arenas[self.arena_index(va)]
    }

    /// Allocates `size` bytes aligned to `align`, followed by a guard, in
    /// `cpu`'s arena if it has room and else in another. Returns the area's
    /// range (without the guard).
    pub(crate) fn alloc(
        &self,
        size: usize,
        align: usize,
        cpu: usize,
    ) -> Result<Range<Vaddr>, RangeAllocError> {
        let with_guard = size.checked_add(GUARD_SIZE).ok_or(RangeAllocError::Exhausted)?;
        let n = self.arenas.len();
        let mut result = Err(RangeAllocError::Exhausted);
        // An arena whose pool cannot serve the request gives the pool back
        // before it looks for room (`arena`): `Exhausted` means no room,
        // pools included.
        for i in 0..n {
            result = self.arenas[cpu.wrapping_add(i) & (n - 1)].lock().alloc(with_guard, align);
            if !matches!(result, Err(RangeAllocError::Exhausted)) {
                break;
            }
        }
        let range = result?;
        Ok(range.start..range.start + size)
    }

    /// The largest area [`alloc`](Self::alloc) can ever place: an arena,
    /// less the guard.
    pub(crate) fn max_size(&self) -> usize {
        self.arenas.iter().map(|a| a.lock().managed_range().len()).max().unwrap_or(0) - GUARD_SIZE
    }

    /// Frees `range` (part or all of an allocation, so inside one arena).
    /// A small range waits in its arena's pool for the next allocation of
    /// its length (see `arena`).
    pub(crate) fn free(&self, range: Range<Vaddr>) -> Result<(), RangeAllocError> {
        self.arena_of(range.start).lock().free(range)
    }

    /// Frees each of `ranges` (each part or all of an allocation; empty ones
    /// are skipped), as [`free`](Self::free) on each would, but one run at a
    /// time: ranges that follow one another in the slice and in the address
    /// space, in one arena, are freed together, with one lock and one
    /// allocator update. A lazy purge's dead areas were mostly placed one
    /// after the other, so thousands of them are a handful of runs.
    ///
    /// A run that cannot be freed whole is freed range by range, so that
    /// exactly the ranges that `free` would accept are freed. Returns the
    /// first range that was refused, with why.
    pub(crate) fn free_all(&self, ranges: &[Range<Vaddr>]) -> Result<(), (Range<Vaddr>, RangeAllocError)> {
        let mut result = Ok(());
        let mut rest = ranges;
        while let Some((first, after)) = rest.split_first() {
            if first.is_empty() {
                rest = after;
                continue;
            }
            let arena = self.arena_index(first.start);
            let (mut end, mut n) = (first.end, 1);
            for r in after {
                if r.start != end || self.arena_index(r.start) != arena {
                    break;
                }
                (end, n) = (end.max(r.end), n + 1);
            }
            let (run, next) = rest.split_at(n);
            let mut allocator = self.arenas[arena].lock();
            if allocator.free_to_tree(first.start..end).is_err() {
                for r in run.iter().filter(|r| !r.is_empty()) {
                    if let (Err(e), Ok(())) = (allocator.free(r.clone()), &result) {
                        result = Err((r.clone(), e));
                    }
                }
            }
            rest = next;
        }
        result
    }

    /// The statistics of the union of the arenas' free space.
    pub(crate) fn stats(&self) -> VmallocStats {
        let mut total = VmallocStats::default();
        // Free bytes running up to the current arena's start.
        let mut run = 0;
        for arena in &self.arenas {
            let mut arena = arena.lock();
            let a = arena.drained();
            let (r, s) = (a.managed_range(), a.stats());
            total.total_bytes += s.total_bytes;
            total.free_bytes += s.free_bytes;
            total.fragments += s.fragments;
            total.largest_free = total.largest_free.max(s.largest_free);
            let first = a.free_ranges().next().filter(|b| b.start == r.start);
            let last = a.free_ranges().next_back().filter(|b| b.end == r.end);
            if run > 0 && first.is_some() {
                // That block continues the run: one fragment, not two.
                total.fragments -= 1;
            }
            run = match (first, last) {
                (Some(f), _) if f == r => run + r.len(),
                (first, last) => {
                    let joined = run + first.map_or(0, |f| f.len());
                    total.largest_free = total.largest_free.max(joined);
                    last.map_or(0, |l| l.len())
                }
            };
            total.largest_free = total.largest_free.max(run);
        }
        total
    }

    /// The allocator of the first arena (the bottom of VMALLOC, where the
    /// areas of CPU 0 go): for unit tests that corrupt it to see the
    /// invariant checks catch it.
    #[cfg(test)]
    pub(crate) fn lock_allocator(
        &self,
    ) -> impl core::ops::DerefMut<Target = super::range_alloc::RangeAllocator> + '_ {
        struct Drained<'a>(spin::MutexGuard<'a, Arena>);
        impl core::ops::Deref for Drained<'_> {
            type Target = super::range_alloc::RangeAllocator;
            fn deref(&self) -> &Self::Target {
                self.0.tree()
            }
        }
        impl core::ops::DerefMut for Drained<'_> {
            fn deref_mut(&mut self) -> &mut Self::Target {
                self.0.drained()
            }
        }
        let mut arena = self.arenas[0].lock();
        arena.drain();
        Drained(arena)
    }

    /// Whether no byte of `range` is free (it is allocated). O(log n) per
    /// arena it touches.
    pub(crate) fn is_allocated(&self, range: Range<Vaddr>) -> bool {
        self.arenas.iter().all(|a| {
            let a = a.lock();
            let r = a.managed_range();
            let piece = range.start.max(r.start)..range.end.min(r.end);
            piece.is_empty() || !a.overlaps_free(piece)
        })
    }
}

/// Every arena's range allocator holds its invariant.
impl Inv for Vmalloc {
    fn check(&self) -> Result<(), &'static str> {
        self.arenas.iter().try_for_each(|a| a.lock().check())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kspace::range_alloc::probes_of;

    const REGION: Range<Vaddr> = 0xffff_c000_0000_0000..0xffff_e000_0000_0000;

    #[test]
    fn a_large_region_is_cut_into_arenas_that_cover_it() {
        let v = Vmalloc::new(REGION);
        assert_eq!(v.arenas.len(), MAX_ARENAS);
        let ranges: Vec<_> = v.arenas.iter().map(|a| a.lock().managed_range()).collect();
        assert_eq!(ranges[0].start, REGION.start);
        assert_eq!(ranges.last().unwrap().end, REGION.end);
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn an_odd_region_has_power_of_two_arenas_and_the_last_takes_the_rest() {
        let start = 0xffff_c000_0000_0000;
        // Room for six arenas and some: four (a power of two) of
        // `MIN_ARENA` (a power of two), the last taking the rest.
        let v = Vmalloc::new(start..start + 6 * MIN_ARENA + 5 * (MIN_ARENA / 8));
        let ranges: Vec<_> = v.arenas.iter().map(|a| a.lock().managed_range()).collect();
        assert_eq!(ranges.len(), 4);
        assert_eq!(v.arena_len, MIN_ARENA);
        assert_eq!(ranges[3], start + 3 * MIN_ARENA..start + 6 * MIN_ARENA + 5 * (MIN_ARENA / 8));
        // The arena of an address is the one whose allocator manages it.
        let map = v.arena_map();
        for (i, r) in ranges.iter().enumerate() {
            for va in [r.start, r.start + PAGE_SIZE, r.end - PAGE_SIZE] {
                assert_eq!(map.index(va), i, "{va:#x}");
            }
        }
        assert_eq!(map.index(start - PAGE_SIZE), 0, "below the region: the first");
        assert_eq!(map.index(usize::MAX), 3, "past the region: the last");
    }

    #[test]
    fn a_small_region_is_one_arena() {
        let v = Vmalloc::new(0x2_0000..0x3_0000);
        assert_eq!(v.arenas.len(), 1);
        assert_eq!(v.alloc(PAGE_SIZE, PAGE_SIZE, 5), Ok(0x2_0000..0x2_1000));
    }

    #[test]
    fn cpus_allocate_in_their_own_arenas() {
        let v = Vmalloc::new(REGION);
        let a = v.alloc(PAGE_SIZE, PAGE_SIZE, 0).unwrap();
        let b = v.alloc(PAGE_SIZE, PAGE_SIZE, 1).unwrap();
        let c = v.alloc(PAGE_SIZE, PAGE_SIZE, MAX_ARENAS + 1).unwrap();
        assert_eq!(a.start, REGION.start);
        assert_eq!(b.start, REGION.start + v.arena_len);
        assert_eq!(c.start, b.end + GUARD_SIZE, "CPU N + 1 shares CPU 1's arena");
    }

    #[test]
    fn a_full_arena_falls_back_to_the_next() {
        let v = Vmalloc::new(REGION);
        let whole = v.alloc(v.arena_len - GUARD_SIZE, PAGE_SIZE, 0).unwrap();
        assert_eq!(whole.start, REGION.start);
        let next = v.alloc(PAGE_SIZE, PAGE_SIZE, 0).unwrap();
        assert_eq!(next.start, REGION.start + v.arena_len);
        assert_eq!(v.alloc(2 * v.arena_len, PAGE_SIZE, 0), Err(RangeAllocError::Exhausted));
    }

    #[test]
    fn stats_describe_the_union_as_one_allocator() {
        let v = Vmalloc::new(REGION);
        let len = REGION.len();
        let stats = |free, largest, fragments| VmallocStats {
            total_bytes: len,
            free_bytes: free,
            largest_free: largest,
            fragments,
        };
        assert_eq!(v.stats(), stats(len, len, 1));
        let a0_end = REGION.start + v.arena_len;
        // Arena 0 full: the free rest runs over the boundaries of arenas
        // 1..N as one block.
        let whole0 = v.alloc(v.arena_len - GUARD_SIZE, PAGE_SIZE, 0).unwrap();
        assert_eq!(v.stats(), stats(len - v.arena_len, len - v.arena_len, 1));
        // Only the last page of arena 0 kept.
        v.free(whole0.start..a0_end - PAGE_SIZE).unwrap();
        assert_eq!(v.stats(), stats(len - PAGE_SIZE, len - v.arena_len, 2));
        // Arena 1 starts with an area: the free rest no longer touches
        // arena 0.
        let b = v.alloc(PAGE_SIZE, PAGE_SIZE, 1).unwrap();
        assert_eq!(b.start, a0_end);
        let rest = REGION.end - (b.end + GUARD_SIZE);
        assert_eq!(v.stats(), stats(len - 3 * PAGE_SIZE, rest, 2));
        // Arena 0 free again, but not joined to anything across the area.
        v.free(a0_end - PAGE_SIZE..a0_end).unwrap();
        assert_eq!(v.stats(), stats(len - 2 * PAGE_SIZE, rest, 2));
        v.free(b.start..b.end + GUARD_SIZE).unwrap();
        assert_eq!(v.stats(), stats(len, len, 1));
        assert!(v.inv());
    }

    #[test]
    fn is_allocated_looks_at_every_arena_a_range_touches() {
        let v = Vmalloc::new(REGION);
        let boundary = REGION.start + v.arena_len;
        let a = v.alloc(v.arena_len - GUARD_SIZE, PAGE_SIZE, 0).unwrap();
        assert!(v.is_allocated(a.start..boundary));
        assert!(!v.is_allocated(a.start..boundary + PAGE_SIZE), "arena 1 is free");
        let b = v.alloc(PAGE_SIZE, PAGE_SIZE, 1).unwrap();
        assert!(v.is_allocated(a.start..b.end + GUARD_SIZE));
    }

    // ---- Freeing a batch (`free_all`) ----------------------------------

    /// `n` one-page areas placed one after another in CPU `cpu`'s arena,
    /// each with its guard: what a purge gives back.
    fn adjacent(v: &Vmalloc, n: usize, cpu: usize) -> Vec<Range<Vaddr>> {
        (0..n)
            .map(|_| v.alloc(PAGE_SIZE, PAGE_SIZE, cpu).unwrap())
            .map(|r| r.start..r.end + GUARD_SIZE)
            .collect()
    }

    #[test]
    fn an_allocation_that_finds_no_room_takes_back_the_pooled_ranges() {
        let v = Vmalloc::new(0x2_0000..0x3_0000);
        let small: Vec<_> = (0..8).map(|_| v.alloc(PAGE_SIZE, PAGE_SIZE, 0).unwrap()).collect();
        assert_eq!(v.alloc(PAGE_SIZE, PAGE_SIZE, 0), Err(RangeAllocError::Exhausted));
        for r in &small {
            v.free(r.start..r.end + GUARD_SIZE).unwrap();
        }
        // Pooled, yet free to every reader.
        assert_eq!(v.stats().free_bytes, 0x1_0000);
        assert!(!v.is_allocated(small[3].clone()));
        let small: Vec<_> = (0..8).map(|_| v.alloc(PAGE_SIZE, PAGE_SIZE, 0).unwrap()).collect();
        for r in &small {
            v.free(r.start..r.end + GUARD_SIZE).unwrap();
        }
        assert_eq!(v.alloc(15 * PAGE_SIZE, PAGE_SIZE, 0), Ok(0x2_0000..0x2_f000), "the pools joined again");
        assert!(v.inv());
    }

    /// One free by the range allocator of `range`'s arena itself.
    fn tree_free(v: &Vmalloc, range: Range<Vaddr>) -> Result<(), RangeAllocError> {
        v.arena_of(range.start).lock().drained().free(range)
    }

    #[test]
    fn free_all_frees_adjacent_ranges_as_one_run() {
        let (v, whole) = (Vmalloc::new(REGION), Vmalloc::new(REGION));
        let (ranges, same) = (adjacent(&v, 100, 0), adjacent(&whole, 100, 0));
        let (freed, batch_probes) = probes_of(|| v.free_all(&ranges));
        assert_eq!(freed, Ok(()));
        let run = same[0].start..same[99].end;
        let (freed, one_free_probes) = probes_of(|| tree_free(&whole, run));
        assert_eq!(freed, Ok(()));
        assert_eq!(batch_probes, one_free_probes, "a hundred adjacent ranges cost one free");
        assert_eq!(v.stats(), whole.stats());
        assert_eq!(v.stats().free_bytes, REGION.len());
        assert!(v.inv());
    }

    #[test]
    fn free_all_frees_ranges_that_are_not_adjacent_one_by_one() {
        let v = Vmalloc::new(REGION);
        let ranges = adjacent(&v, 6, 0);
        // Every other one, out of order, an empty one between.
        let batch = [ranges[4].clone(), ranges[0].clone(), ranges[0].end..ranges[0].end, ranges[2].clone()];
        assert_eq!(v.free_all(&batch), Ok(()));
        for (i, r) in ranges.iter().enumerate() {
            assert_eq!(v.is_allocated(r.clone()), i % 2 == 1, "range {i}");
        }
        assert!(v.inv());
    }

    #[test]
    fn free_all_ends_a_run_at_an_arena_boundary() {
        let (v, twin) = (Vmalloc::new(REGION), Vmalloc::new(REGION));
        let boundary = REGION.start + v.arena_len;
        let mut batch = alloc::vec![];
        for v in [&v, &twin] {
            let a = v.alloc(v.arena_len - GUARD_SIZE, PAGE_SIZE, 0).unwrap();
            batch = alloc::vec![a.start..boundary];
            batch.extend(adjacent(v, 3, 1));
        }
        assert_eq!(batch[1].start, boundary);
        let (freed, probes) = probes_of(|| v.free_all(&batch));
        assert_eq!(freed, Ok(()));
        // What it costs: one free in each arena.
        let (_, two_frees) = probes_of(|| {
            tree_free(&twin, batch[0].clone()).unwrap();
            tree_free(&twin, batch[1].start..batch[3].end).unwrap();
        });
        assert_eq!(probes, two_frees);
        assert_eq!(v.stats().free_bytes, REGION.len());
        assert!(v.inv());
    }

    #[test]
    fn free_all_frees_the_rest_of_a_run_around_a_refused_range() {
        let v = Vmalloc::new(REGION);
        let ranges = adjacent(&v, 5, 0);
        v.free(ranges[2].clone()).unwrap();
        let before = v.stats().free_bytes;
        assert_eq!(v.free_all(&ranges), Err((ranges[2].clone(), RangeAllocError::DoubleFree)));
        assert_eq!(v.stats().free_bytes, before + 4 * 2 * PAGE_SIZE, "the other four are freed");
        assert_eq!(v.stats().free_bytes, REGION.len());
        assert!(v.inv());
    }
}
