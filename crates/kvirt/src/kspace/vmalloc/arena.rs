//! One VMALLOC arena: a range allocator with a small pool of freed ranges
//! in front of it.
//!
//! Creating and dropping small areas of the same size, over and over, is
//! what kernels do most with VMALLOC (stacks, buffers, short-lived
//! mappings). Each round trip through the range allocator costs a split and
//! a merge of its free block: four to six B-tree operations on two indexes.
//! So an arena keeps a few ranges freed whole, of at most
//! [`POOL_MAX_LEN`] bytes, and gives one back to the next allocation of
//! exactly its length and a compatible alignment, as Linux's `vmap_node`s
//! keep pools of freed areas by size. A full pool keeps what it holds and
//! lets further frees through: when frees outnumber allocations (many
//! areas dropped at once), the ranges merge into the allocator's free
//! blocks as they used to, rather than each waiting in the pool and
//! leaving a hole between free blocks when it is evicted:
//!
//! ```text
//!   free(range)   small, and the pool not full:  check it as the
//!                         allocator would, then push it on the pool
//!                 else:   the allocator
//!   alloc(len)    a pooled range of that length (the most recent first),
//!                 else the allocator, once the pool is given back to it
//! ```
//!
//! A pool so serves a run of allocations of one size. The first allocation
//! it cannot serve gives it back: pooled ranges never outlive the pattern
//! that filled them, to sit as allocated holes between the allocator's
//! free blocks (a hole below a large free block would, for one, move the
//! next 1 GiB-aligned area off the arena's start), and a mix of sizes costs
//! what it cost without a pool, one free per range.
//!
//! What a full pool lets through still comes in runs: areas dropped in
//! the order they were made (or the reverse) free ranges that touch, and
//! the allocator would merge each into the free block before it, four
//! B-tree operations a range. So a range freed next to the one the arena
//! last gave the allocator starts a *run*, and each range that touches the
//! run joins it after one lookup that checks it; the run reaches the
//! allocator as one free when the arena is next drained:
//!
//! ```text
//!   free(range)   past the pool: joins the run if it touches it,
//!                 starts a new one if it touches the last range freed,
//!                 else goes to the allocator
//! ```
//!
//! A pooled range, and the run, are free for every question asked of the
//! arena: they are still allocated in the range allocator, but
//! [`Arena::overlaps_free`] counts them free, a free that overlaps one is
//! refused as the allocator would refuse it, and [`Arena::drain`] gives
//! them back to the allocator before anything reads its free blocks
//! (statistics, listings, and the retry of an allocation that found no
//! room).

use alloc::vec::Vec;
use core::ops::Range;

use super::super::range_alloc::{RangeAllocError, RangeAllocator};
use crate::addr::{Vaddr, PAGE_SIZE};
use crate::inv::Inv;

/// The most ranges a pool keeps.
const POOL_SIZE: usize = 8;

/// The longest range a pool keeps (a guard included): 64 pages.
pub(super) const POOL_MAX_LEN: usize = 64 * PAGE_SIZE;

/// An arena's allocator and its pool of freed ranges (see the module
/// documentation).
#[derive(Debug)]
pub(super) struct Arena {
    /// The free space, less the pooled ranges.
    tree: RangeAllocator,
    /// Ranges freed whole and kept for reuse, the most recent last: each
    /// non-empty, at most `POOL_MAX_LEN` long, accepted by `tree.free`
    /// when it was pooled (so inside the arena, granule-aligned and
    /// allocated in `tree`), and apart from the others. At most
    /// `POOL_SIZE` of them; the vector never grows past that capacity.
    pool: Vec<Range<Vaddr>>,
    /// Ranges freed one after another, each touching the run so far,
    /// gathered into one: non-empty, each piece accepted by
    /// `tree.check_free` when it joined (so inside the arena,
    /// granule-aligned and allocated in `tree`), and apart from the pooled
    /// ranges.
    run: Option<Range<Vaddr>>,
    /// The range `free` last gave the allocator: a hint, with no
    /// invariant, of where the next run may start.
    last: Option<Range<Vaddr>>,
}

impl Arena {
    pub(super) fn new(range: Range<Vaddr>) -> Self {
        Self {
            tree: RangeAllocator::new(range, PAGE_SIZE),
            pool: Vec::with_capacity(POOL_SIZE),
            run: None,
            last: None,
        }
    }

    /// The arena's range.
    pub(super) fn managed_range(&self) -> Range<Vaddr> {
        self.tree.managed_range()
    }

    /// Allocates `len` bytes aligned to `align`: a pooled range of exactly
    /// that length if one is aligned, else from the allocator, after the
    /// pool is given back to it.
    pub(super) fn alloc(&mut self, len: usize, align: usize) -> Result<Range<Vaddr>, RangeAllocError> {
        if len <= POOL_MAX_LEN && align.is_power_of_two() {
            let fits = |r: &Range<Vaddr>| r.len() == len && r.start & (align - 1) == 0;
            if let Some(i) = self.pool.iter().rposition(fits) {
                return Ok(self.pool.remove(i));
            }
        }
        self.drain();
        self.tree.alloc(len, align)
    }

    /// Frees `range`, with the allocator's errors for what it would refuse
    /// (a range overlapping a pooled one, or the run, counts as free
    /// already).
    pub(super) fn free(&mut self, range: Range<Vaddr>) -> Result<(), RangeAllocError> {
        self.refuse_held(&range)?;
        if range.len() <= POOL_MAX_LEN && self.pool.len() < POOL_SIZE {
            self.tree.check_free(&range)?;
            self.pool.push(range);
            return Ok(());
        }
        let joins = self.run.as_ref().is_some_and(|run| touch(run, &range));
        if !joins && !self.last.as_ref().is_some_and(|last| touch(last, &range)) {
            self.tree.free(range.clone())?;
            self.last = Some(range);
            return Ok(());
        }
        self.tree.check_free(&range)?;
        if !joins {
            // A new run: the one before goes to the allocator.
            self.give_back_run();
        }
        let run = self.run.get_or_insert(range.clone());
        *run = run.start.min(range.start)..run.end.max(range.end);
        Ok(())
    }

    /// Frees `range` to the allocator itself, if nothing of it is pooled:
    /// for a run of ranges freed at once, which no pool would keep.
    pub(super) fn free_to_tree(&mut self, range: Range<Vaddr>) -> Result<(), RangeAllocError> {
        self.refuse_held(&range)?;
        self.tree.free(range)
    }

    /// Refuses a free that overlaps a held range (pooled, or the run), as
    /// the allocator refuses one that overlaps free space: its own errors
    /// first, in its order, then `DoubleFree` or `OverlappingFree`.
    fn refuse_held(&self, range: &Range<Vaddr>) -> Result<(), RangeAllocError> {
        let Some(held) = overlapping(self.held(), range) else { return Ok(()) };
        let inside = held.start <= range.start && range.end <= held.end;
        self.tree.check_free(range)?;
        Err(if inside { RangeAllocError::DoubleFree } else { RangeAllocError::OverlappingFree })
    }

    /// Gives every pooled range, and the run, back to the allocator.
    #[inline]
    pub(super) fn drain(&mut self) {
        if !self.pool.is_empty() || self.run.is_some() {
            self.give_back_held();
        }
    }

    /// `drain`'s work, out of the way of an allocation that finds nothing
    /// held (so that the allocator's own code is inlined there).
    #[inline(never)]
    fn give_back_held(&mut self) {
        while let Some(range) = self.pool.pop() {
            self.give_back(range);
        }
        self.give_back_run();
    }

    /// Gives the run, if any, back to the allocator.
    fn give_back_run(&mut self) {
        if let Some(run) = self.run.take() {
            self.give_back(run.clone());
            self.last = Some(run);
        }
    }

    /// The ranges freed but still allocated in the allocator: the pooled
    /// ones and the run.
    fn held(&self) -> impl Iterator<Item = &Range<Vaddr>> {
        self.pool.iter().chain(&self.run)
    }

    /// The allocator, with nothing pooled: what its free blocks say is all
    /// that is free.
    pub(super) fn drained(&mut self) -> &mut RangeAllocator {
        self.drain();
        &mut self.tree
    }

    /// The allocator, read-only (a pooled range shows as allocated).
    #[cfg(test)]
    pub(super) fn tree(&self) -> &RangeAllocator {
        &self.tree
    }

    /// Whether some byte of `range` is free (pooled ranges and the run are
    /// free).
    pub(super) fn overlaps_free(&self, range: Range<Vaddr>) -> bool {
        overlapping(self.held(), &range).is_some() || self.tree.overlaps_free(range)
    }

    fn give_back(&mut self, range: Range<Vaddr>) {
        let freed = self.tree.free(range.clone());
        debug_assert!(freed.is_ok(), "a held range {range:#x?} was refused: {freed:?}");
    }

    /// The allocator's invariant, and the pool's (see `pool`).
    pub(super) fn check(&self) -> Result<(), &'static str> {
        self.tree.check()?;
        if self.pool.len() > POOL_SIZE {
            return Err("a VMALLOC pool holds too many ranges");
        }
        for (i, r) in self.pool.iter().enumerate() {
            if r.is_empty() || r.len() > POOL_MAX_LEN {
                return Err("a VMALLOC pool holds a range it should not");
            }
            if self.tree.check_free(r).is_err() {
                return Err("a pooled VMALLOC range is not allocated in its arena");
            }
            if overlapping(&self.pool[i + 1..], r).is_some() {
                return Err("two pooled VMALLOC ranges overlap");
            }
        }
        if let Some(run) = &self.run {
            if run.is_empty() || self.tree.check_free(run).is_err() {
                return Err("the VMALLOC run is not allocated in its arena");
            }
            if overlapping(&self.pool, run).is_some() {
                return Err("the VMALLOC run overlaps a pooled range");
            }
        }
        Ok(())
    }

    /// The pooled ranges (unit tests).
    #[cfg(test)]
    pub(super) fn pooled(&self) -> &[Range<Vaddr>] {
        &self.pool
    }
}

/// The first of `ranges` that shares a byte with `range`.
fn overlapping<'a>(
    ranges: impl IntoIterator<Item = &'a Range<Vaddr>>,
    range: &Range<Vaddr>,
) -> Option<&'a Range<Vaddr>> {
    ranges.into_iter().find(|r| r.start < range.end && range.start < r.end)
}

/// Whether `a` and `b` are next to each other, with no byte between.
fn touch(a: &Range<Vaddr>, b: &Range<Vaddr>) -> bool {
    a.end == b.start || b.end == a.start
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kspace::range_alloc::probes_of;

    const ARENA: Range<Vaddr> = 0x1000_0000..0x2000_0000;
    const P: usize = PAGE_SIZE;

    #[test]
    fn a_freed_small_range_is_given_to_the_next_allocation_of_its_length() {
        let mut a = Arena::new(ARENA);
        let (r, s) = (a.alloc(2 * P, P).unwrap(), a.alloc(2 * P, P).unwrap());
        let _fence = a.alloc(2 * P, P).unwrap();
        a.free(r.clone()).unwrap();
        a.free(s.clone()).unwrap();
        assert_eq!(a.pooled(), [r.clone(), s.clone()]);
        assert_eq!(a.alloc(2 * P, P), Ok(s), "the last pooled range, not a new one");
        assert_eq!(a.alloc(2 * P, P), Ok(r));
        assert!(a.pooled().is_empty());
        assert!(a.check().is_ok());
    }

    #[test]
    fn an_allocation_the_pool_cannot_serve_gives_the_pool_back_first() {
        let mut a = Arena::new(ARENA);
        let r = a.alloc(2 * P, P).unwrap();
        a.free(r.clone()).unwrap();
        assert_eq!(a.pooled(), core::slice::from_ref(&r));
        // Another length: the pool goes back, and the range with it is
        // the allocator's again (here, the start of what it hands out).
        assert_eq!(a.alloc(3 * P, P), Ok(r.start..r.start + 3 * P));
        assert!(a.pooled().is_empty());
        assert!(a.check().is_ok());
    }

    #[test]
    fn a_pooled_range_is_given_only_to_an_allocation_it_is_aligned_for() {
        let mut a = Arena::new(ARENA);
        let _pad = a.alloc(P, P).unwrap();
        let r = a.alloc(2 * P, P).unwrap();
        let _fence = a.alloc(P, P).unwrap();
        assert_ne!(r.start % (4 * P), 0);
        a.free(r.clone()).unwrap();
        let aligned = a.alloc(2 * P, 4 * P).unwrap();
        assert_eq!(aligned.start % (4 * P), 0);
        assert_ne!(aligned, r);
        assert!(a.pooled().is_empty(), "the miss gave the pool back");
        assert!(a.tree.is_free(r));
    }

    #[test]
    fn a_pooled_range_counts_as_free() {
        let mut a = Arena::new(ARENA);
        let r = a.alloc(2 * P, P).unwrap();
        let _next = a.alloc(2 * P, P).unwrap();
        a.free(r.clone()).unwrap();
        assert!(a.overlaps_free(r.start..r.start + P));
        assert_eq!(a.free(r.clone()), Err(RangeAllocError::DoubleFree));
        assert_eq!(a.free(r.start + P..r.end + P), Err(RangeAllocError::OverlappingFree));
        assert_eq!(
            a.free(r.start + 1..r.end),
            Err(RangeAllocError::Misaligned),
            "the allocator's errors first"
        );
        assert_eq!(a.free_to_tree(r.clone()), Err(RangeAllocError::DoubleFree));
        assert_eq!(a.pooled(), core::slice::from_ref(&r), "refused frees change nothing");
        a.drained();
        assert!(a.pooled().is_empty());
        assert!(a.tree.is_free(r));
        assert!(a.check().is_ok());
    }

    #[test]
    fn a_full_pool_lets_further_frees_through_to_the_allocator() {
        let mut a = Arena::new(ARENA);
        let ranges: Vec<_> = (0..=POOL_SIZE).map(|_| a.alloc(P, P).unwrap()).collect();
        let _fence = a.alloc(P, P).unwrap();
        for r in &ranges {
            a.free(r.clone()).unwrap();
        }
        assert_eq!(a.pooled(), &ranges[..POOL_SIZE]);
        assert!(a.tree.is_free(ranges[POOL_SIZE].clone()));
        assert!(a.check().is_ok());
    }

    #[test]
    fn a_large_range_goes_to_the_tree() {
        let mut a = Arena::new(ARENA);
        let r = a.alloc(POOL_MAX_LEN + P, P).unwrap();
        a.free(r.clone()).unwrap();
        assert!(a.pooled().is_empty());
        assert!(a.tree.is_free(r));
    }

    /// An arena with `n` one-page ranges allocated side by side (a fence
    /// after them), and a twin arena that has them too.
    fn side_by_side(n: usize) -> (Arena, Arena, Vec<Range<Vaddr>>) {
        let (mut a, mut twin) = (Arena::new(ARENA), Arena::new(ARENA));
        let ranges: Vec<_> = (0..n).map(|_| a.alloc(P, P).unwrap()).collect();
        for r in &ranges {
            assert_eq!(twin.alloc(P, P).as_ref(), Ok(r));
        }
        let _fence = (a.alloc(P, P).unwrap(), twin.alloc(P, P).unwrap());
        (a, twin, ranges)
    }

    #[test]
    fn frees_in_address_order_past_a_full_pool_gather_into_one_run() {
        let n = POOL_SIZE + 10;
        let (mut a, mut twin, ranges) = side_by_side(n);
        for r in &ranges[..=POOL_SIZE + 1] {
            a.free(r.clone()).unwrap();
        }
        assert_eq!(a.pooled(), &ranges[..POOL_SIZE]);
        // The first past the pool goes to the allocator; the next touches
        // it and starts a run, which each further one joins with a single
        // lookup, where the allocator would merge it into a free block.
        assert!(a.tree.is_free(ranges[POOL_SIZE].clone()));
        assert_eq!(a.run, Some(ranges[POOL_SIZE + 1].clone()));
        for r in &ranges[POOL_SIZE + 2..] {
            let (joined, probes) = probes_of(|| a.free(r.clone()));
            assert_eq!(joined, Ok(()));
            assert!(probes <= 2, "joining the run looks the range up once ({probes} probes)");
        }
        assert_eq!(a.run, Some(ranges[POOL_SIZE + 1].start..ranges[n - 1].end));
        assert!(a.check().is_ok());
        assert!(ranges.iter().all(|r| a.overlaps_free(r.clone())));
        for r in &ranges {
            twin.free_to_tree(r.clone()).unwrap();
        }
        let (_, one_tree_free) = probes_of(|| {
            let mut t = side_by_side(2).0;
            t.free_to_tree(ranges[0].clone()).unwrap();
            t.free_to_tree(ranges[1].clone())
        });
        assert!(one_tree_free >= 4, "a merging free costs the allocator more ({one_tree_free} probes)");
        // Given back, the run leaves the allocator as freeing each range
        // would have.
        assert!(a.drained().free_ranges().eq(twin.drained().free_ranges()));
        assert!(a.run.is_none());
        assert!(a.check().is_ok());
    }

    #[test]
    fn frees_in_reverse_address_order_gather_too() {
        let n = POOL_SIZE + 10;
        let (mut a, mut twin, ranges) = side_by_side(n);
        for r in ranges.iter().rev() {
            a.free(r.clone()).unwrap();
            twin.free_to_tree(r.clone()).unwrap();
        }
        // The last POOL_SIZE ranges are pooled, the next goes to the
        // allocator, and all below it form the run.
        assert_eq!(a.run, Some(ranges[0].start..ranges[n - POOL_SIZE - 2].end));
        assert!(a.check().is_ok());
        assert!(a.drained().free_ranges().eq(twin.drained().free_ranges()));
    }

    #[test]
    fn a_range_that_touches_neither_the_run_nor_the_last_free_goes_to_the_allocator() {
        let (mut a, _, ranges) = side_by_side(POOL_SIZE + 6);
        for r in &ranges[..POOL_SIZE + 3] {
            a.free(r.clone()).unwrap();
        }
        let run = a.run.clone();
        assert!(run.is_some());
        // Skips a range: it goes to the allocator, the run waits.
        let apart = ranges[POOL_SIZE + 4].clone();
        a.free(apart.clone()).unwrap();
        assert!(a.tree.is_free(apart.clone()));
        assert_eq!(a.run, run);
        // One touching that last free (and not the run) starts a new run,
        // and the old one goes to the allocator.
        let next = ranges[POOL_SIZE + 5].clone();
        a.free(next.clone()).unwrap();
        assert_eq!(a.run, Some(next));
        assert!(a.tree.is_free(run.unwrap()));
        assert!(a.check().is_ok());
    }

    #[test]
    fn the_run_counts_as_free() {
        let (mut a, _, ranges) = side_by_side(POOL_SIZE + 5);
        for r in &ranges {
            a.free(r.clone()).unwrap();
        }
        let run = a.run.clone().unwrap();
        assert!(run.len() >= 3 * P);
        let inside = run.start + P..run.start + 2 * P;
        assert_eq!(a.free(inside.clone()), Err(RangeAllocError::DoubleFree));
        assert_eq!(a.free(run.end - P..run.end + P), Err(RangeAllocError::OverlappingFree));
        assert_eq!(
            a.free(run.start + 1..run.end),
            Err(RangeAllocError::Misaligned),
            "the allocator's errors first"
        );
        assert_eq!(a.free_to_tree(inside), Err(RangeAllocError::DoubleFree));
        // A range touching the run joins it only if the allocator would
        // take it: the last free, already the allocator's, would not.
        let last = ranges[POOL_SIZE].clone();
        assert_eq!(last.end, run.start);
        assert_eq!(a.free(last), Err(RangeAllocError::DoubleFree));
        assert_eq!(a.run, Some(run.clone()), "refused frees change nothing");
        assert_eq!(a.pooled(), &ranges[..POOL_SIZE]);
        // An allocation the pool cannot serve gives the run back first.
        // All freed ranges are then one free block, whose low end the
        // allocator hands out (best fit).
        let big = a.alloc(4 * P, P).unwrap();
        assert!(a.run.is_none() && a.pooled().is_empty());
        assert_eq!(big, ranges[0].start..ranges[0].start + 4 * P);
        assert!(a.tree.is_free(big.end..run.end));
        assert!(a.check().is_ok());
    }

    #[test]
    fn the_check_finds_a_run_that_is_free_in_the_tree() {
        let mut a = Arena::new(ARENA);
        let r = a.alloc(P, P).unwrap();
        a.run = Some(r.clone());
        assert!(a.check().is_ok());
        a.tree.free(r).unwrap();
        assert_eq!(a.check(), Err("the VMALLOC run is not allocated in its arena"));
    }

    #[test]
    fn the_check_finds_a_pooled_range_that_is_free_in_the_tree() {
        let mut a = Arena::new(ARENA);
        let r = a.alloc(P, P).unwrap();
        a.pool.push(r.clone());
        assert!(a.check().is_ok());
        a.tree.free(r).unwrap();
        assert_eq!(a.check(), Err("a pooled VMALLOC range is not allocated in its arena"));
    }
}
