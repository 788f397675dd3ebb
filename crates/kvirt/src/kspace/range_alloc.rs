//! Virtual-address range allocator for the kernel's VMALLOC region.
//!
//! [`RangeAllocator`] hands out page-granular sub-ranges of one fixed range of
//! addresses (the *managed range*), in the spirit of Linux's `vmap_area`
//! allocator. It only knows what is **free**: an allocation is not recorded
//! anywhere, so any allocated range, or any sub-range of one, can be given back
//! with [`RangeAllocator::free`].
//!
//! # Design
//!
//! Free space is a set of *blocks*, kept in two indexes that always describe
//! the same blocks:
//!
//! * `by_end: BTreeMap<end, start>` orders blocks by address (blocks never
//!   overlap, so ordering by end is ordering by start). `free` uses it to
//!   detect overlap with free space and to find the neighbours to merge
//!   with; [`RangeAllocator::free_ranges`] walks it. It is keyed by the
//!   *end* because the two commonest changes keep a block's end: `alloc`
//!   carves from a block's low end, and `free` of a range just below a free
//!   block merges into that block. Either rewrites the entry's value in
//!   place instead of removing a key and inserting another.
//! * `by_size: SizeIndex` orders blocks by length (ties by address).
//!   `alloc` uses it to find the best-fitting block, and
//!   [`RangeAllocator::stats`] reads the largest block from it. It keeps the
//!   largest block in a field of its own and the others in a
//!   `BTreeSet<(len, start)>`: a VMALLOC region is mostly one large block
//!   (its untouched top) that small areas are carved from and freed back
//!   into, and that block stays the largest through such changes, so they
//!   touch no tree at all.
//!
//! Blocks are non-empty, granule-aligned, inside the managed range,
//! non-overlapping and never adjacent: `free` always merges with free
//! neighbours, so a free range is always exactly one block.
//! [`RangeAllocator::inv`] checks all of this.
//!
//! # Allocation policy
//!
//! A request for `size` bytes aligned to `align` is placed as follows.
//!
//! 1. **Best fit, cheaply.** The first few blocks of length `>= size`, in
//!    size order, are tried; the first one that holds an aligned sub-range of
//!    `size` bytes wins. When `align` is the granule, the very first candidate
//!    always fits, so this is plain best fit.
//! 2. **Guaranteed fit.** Otherwise the smallest block of length
//!    `>= size + align - granule` is taken: a block start is granule-aligned,
//!    so at most `align - granule` bytes are skipped to reach an aligned
//!    address, and such a block always fits.
//! 3. **Last resort.** Only if no block is that long, the remaining blocks of
//!    length in `size..size + align - granule` are scanned, so that
//!    [`RangeAllocError::Exhausted`] really means that no free block can hold
//!    the request.
//!
//! Inside the chosen block the allocation is carved from the **low end**:
//! it starts at `align_up(block.start, align)`, and the bytes before and after
//! it stay free as up to two remainders.
//!
//! ```text
//!   block.start    at = align_up(block.start, align)      at + size     block.end
//!        |                |                                   |              |
//!        v                v                                   v              v
//!        +----------------+-----------------------------------+--------------+
//!        |  left rest     |         allocated (size)          |  right rest  |
//!        |  (stays free)  |                                   | (stays free) |
//!        +----------------+-----------------------------------+--------------+
//!         < align bytes
//! ```
//!
//! Why: best fit leaves the large blocks whole for the requests that need
//! them, notably huge-page-aligned mappings (2 MiB, 1 GiB) that a first-fit
//! policy would find chopped up by small areas. Carving from the low end keeps
//! successive areas next to each other, so related mappings share page-table
//! pages and free space stays in few, large blocks at the top of the region.
//!
//! # Complexity
//!
//! With `n` free blocks: `alloc` is `O(log n)` in steps 1 and 2, which serve
//! every request whose alignment is the granule and every aligned request
//! that some block can hold with full alignment slack. `free`, `is_free` and
//! `overlaps_free` are `O(log n)`; `stats` is `O(log n)` (free bytes and
//! fragment count are counters, the largest block is the last size entry).
//! Each of these makes a bounded number of B-tree operations (at most 13 in
//! the unit test `alloc_and_free_probe_the_trees_at_most_logarithmically_often`,
//! with 10 and with 10 000 free blocks alike), each `O(log n)`.
//!
//! **Not `O(log n)`:** step 3 costs `O(log n + m)`, `m` being the number of
//! blocks with a length in `size..size + align - granule`, because whether
//! such a block holds an aligned sub-range depends on its start modulo
//! `align`, which neither index orders by (the unit test
//! `aligned_alloc_without_slack_scans_the_short_candidates` pins it at
//! `m + 7` probes). It runs only when no free block is `size + align -
//! granule` bytes long, which for a VMALLOC arena (4 TiB on x86-64,
//! requests aligned to at most 1 GiB) means the arena is all but exhausted. `inv` is `O(n log n)`
//! (one size-index lookup per block). Memory is two tree entries per free
//! block.
//!
//! # Limits
//!
//! Addresses are `usize` and ranges are `Range<usize>`, so the managed range
//! ends at most at `usize::MAX`; with a granule of 4096 the last granule of the
//! address space (`usize::MAX - 4095..=usize::MAX`) cannot be managed. All
//! arithmetic is checked: sizes and alignments near `usize::MAX` are rejected
//! with [`RangeAllocError::Misaligned`] or [`RangeAllocError::Exhausted`],
//! never by a panic or a wrapped address. Every call that returns an error
//! leaves the allocator exactly as it was.

use alloc::collections::{BTreeMap, BTreeSet};
use core::fmt;
use core::ops::Range;

use crate::inv::Inv;

/// How many best-fit candidates `alloc` checks for an aligned fit before it
/// falls back to a block that is long enough for any alignment offset.
const FAST_PATH_CANDIDATES: usize = 4;

/// Allocates page-granular sub-ranges of a fixed range of usize addresses.
///
/// See the [module documentation](self) for the design and the policy.
#[derive(Debug, Clone)]
pub struct RangeAllocator {
    /// The managed range; never empty, granule-aligned at both ends.
    range: Range<usize>,
    /// Allocation unit in bytes; a power of two.
    granule: usize,
    /// Free blocks by address, keyed by their end: `end -> start`.
    by_end: BTreeMap<usize, usize>,
    /// Free blocks by size: `(len, start)`.
    by_size: SizeIndex,
    /// Sum of the lengths of all free blocks.
    free_bytes: usize,
}

/// Why a `RangeAllocator` call was rejected. A rejected call changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAllocError {
    /// `alloc` was asked for zero bytes.
    ZeroSize,
    /// A size or a freed range is not a multiple of the granule, or an
    /// alignment is not a power of two at least as large as the granule.
    Misaligned,
    /// No free block can hold the requested size with its alignment.
    Exhausted,
    /// `free` was given an empty or reversed range, or one that is not inside
    /// the managed range.
    OutOfRange,
    /// `free` was given a range that is entirely free already.
    DoubleFree,
    /// `free` was given a range that is partly free already.
    OverlappingFree,
}

impl fmt::Display for RangeAllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroSize => "cannot allocate a range of zero bytes",
            Self::Misaligned => {
                "size or range is not a multiple of the granule, or the alignment is not a power of two at least as large as the granule"
            }
            Self::Exhausted => "no free block can hold the requested size with its alignment",
            Self::OutOfRange => "range is empty, reversed, or not inside the managed range",
            Self::DoubleFree => "range is already entirely free",
            Self::OverlappingFree => "range is already partly free",
        })
    }
}

impl core::error::Error for RangeAllocError {}

/// A snapshot of a [`RangeAllocator`]'s occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeAllocStats {
    /// Length of the managed range in bytes.
    pub total_bytes: usize,
    /// Bytes in free blocks.
    pub free_bytes: usize,
    /// Length of the largest free block in bytes (0 when nothing is free).
    pub largest_free: usize,
    /// Number of free blocks (maximal free ranges).
    pub fragments: usize,
}

// Tree probes of the calling thread, for the unit tests that bound them:
// one per lookup, insertion, removal or iterator seek, and one per block an
// iterator then yields. Each probe is one O(log n) B-tree operation or one
// iterator step, so an operation's probes bound its cost in tree steps.
#[cfg(test)]
std::thread_local! {
    static PROBES: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// What `f` returns, and the tree probes it made on this thread.
#[cfg(test)]
pub(super) fn probes_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = PROBES.with(core::cell::Cell::get);
    let result = f();
    (result, PROBES.with(core::cell::Cell::get) - before)
}

/// Counts `n` tree probes (unit tests only; nothing otherwise).
fn probe(n: usize) {
    #[cfg(test)]
    PROBES.with(|p| p.set(p.get() + n));
    #[cfg(not(test))]
    let _ = n;
}

/// `iter`, counting a probe for its seek and one for every item it yields.
#[cfg(test)]
fn probed<I: Iterator>(iter: I) -> impl Iterator<Item = I::Item> {
    probe(1);
    iter.inspect(|_| probe(1))
}

/// `iter` itself: outside the unit tests there is nothing to count.
#[cfg(not(test))]
fn probed<I: Iterator>(iter: I) -> I {
    iter
}

/// Rounds `addr` up to a multiple of `align` (a power of two), or `None` if
/// that is past `usize::MAX`.
fn align_up(addr: usize, align: usize) -> Option<usize> {
    let mask = align - 1;
    addr.checked_add(mask).map(|a| a & !mask)
}

/// The start of the lowest `align`-aligned sub-range of `size` bytes inside
/// `start..end`, if there is one.
fn fit_in(start: usize, end: usize, size: usize, align: usize) -> Option<usize> {
    let at = align_up(start, align)?;
    let stop = at.checked_add(size)?;
    (stop <= end).then_some(at)
}

impl RangeAllocator {
    /// Creates an allocator whose whole `range` is free.
    ///
    /// `range` must be non-empty and aligned to `granule` (a power of two,
    /// e.g. 4096), else panic with a clear message.
    pub fn new(range: Range<usize>, granule: usize) -> Self {
        assert!(granule.is_power_of_two(), "RangeAllocator::new: granule {granule:#x} is not a power of two");
        assert!(
            range.start < range.end,
            "RangeAllocator::new: managed range {:#x}..{:#x} is empty or reversed",
            range.start,
            range.end
        );
        assert!(
            range.start % granule == 0 && range.end % granule == 0,
            "RangeAllocator::new: managed range {:#x}..{:#x} is not aligned to the granule {granule:#x}",
            range.start,
            range.end
        );
        let mut this = Self {
            range: range.clone(),
            granule,
            by_end: BTreeMap::new(),
            by_size: SizeIndex::default(),
            free_bytes: 0,
        };
        this.insert_block(range.start, range.end);
        this.free_bytes = range.end - range.start;
        this
    }

    /// Allocates `size` bytes aligned to `align` (power of two >= granule).
    /// O(log n) in the number of free fragments, except for an aligned
    /// request that no free block can hold with full alignment slack:
    /// O(log n + m) then (see the [module documentation](self)).
    ///
    /// The block is chosen by best fit and carved from its low end (see the
    /// [module documentation](self)). Errors, checked in this order:
    /// [`ZeroSize`](RangeAllocError::ZeroSize) for `size == 0`,
    /// [`Misaligned`](RangeAllocError::Misaligned) for a size that is not a
    /// multiple of the granule or a bad alignment, and
    /// [`Exhausted`](RangeAllocError::Exhausted) when no free block can hold
    /// the request.
    pub fn alloc(&mut self, size: usize, align: usize) -> Result<Range<usize>, RangeAllocError> {
        if size == 0 {
            return Err(RangeAllocError::ZeroSize);
        }
        if !self.granule_aligned(size) || !align.is_power_of_two() || align < self.granule {
            return Err(RangeAllocError::Misaligned);
        }
        let (start, end, at) = self.find_block(size, align).ok_or(RangeAllocError::Exhausted)?;
        // `fit_in` checked that `at + size <= end`, so nothing below overflows.
        let stop = at + size;
        if stop < end {
            // The right rest keeps the block's end, so its address entry
            // stays and only its start moves.
            probe(1);
            self.by_size.replace((end - start, start), (end - stop, stop));
            *self.by_end.get_mut(&end).expect("the indexes hold the same blocks") = stop;
        } else {
            self.remove_block(start, end);
        }
        if start < at {
            self.insert_block(start, at);
        }
        self.free_bytes -= size;
        Ok(at..stop)
    }

    /// Returns a previously allocated range (or any sub-range of one; the
    /// allocator does not remember allocations, it only knows what is free).
    /// Rejects (leaving the state unchanged) a range that overlaps free space:
    /// DoubleFree if entirely free, OverlappingFree if partly. Merges with
    /// free neighbours. O(log n).
    ///
    /// Errors, checked in this order: [`OutOfRange`](RangeAllocError::OutOfRange)
    /// for an empty or reversed range or one not inside the managed range,
    /// [`Misaligned`](RangeAllocError::Misaligned) if either end is not a
    /// multiple of the granule, then [`DoubleFree`](RangeAllocError::DoubleFree)
    /// or [`OverlappingFree`](RangeAllocError::OverlappingFree).
    pub fn free(&mut self, range: Range<usize>) -> Result<(), RangeAllocError> {
        let first_after = self.checked_free(&range)?;
        let Range { start, end } = range;
        // No block overlaps the range, so that same block is also the first
        // one starting at or after `end`: the right neighbour, if it touches.
        let right = first_after.filter(|&(rs, _)| rs == end);
        probe(1);
        let left = self.by_end.get(&start).map(|&ls| (ls, start));
        let merged_start = left.map_or(start, |(ls, _)| ls);
        if let Some((ls, le)) = left {
            self.remove_block(ls, le);
        }
        match right {
            Some((rs, re)) => {
                // The merged block keeps the right neighbour's end: its
                // address entry stays and only its start moves.
                probe(1);
                self.by_size.replace((re - rs, rs), (re - merged_start, merged_start));
                *self.by_end.get_mut(&re).expect("the indexes hold the same blocks") = merged_start;
            }
            None => self.insert_block(merged_start, end),
        }
        self.free_bytes += end - start;
        Ok(())
    }

    /// Whether [`free`](Self::free) would accept `range`, with the error
    /// it would return; changes nothing.
    pub fn check_free(&self, range: &Range<usize>) -> Result<(), RangeAllocError> {
        self.checked_free(range).map(|_| ())
    }

    /// `free`'s checks, in its order. Returns the first block ending after
    /// the range's start, if any, which then lies entirely after the range.
    fn checked_free(&self, range: &Range<usize>) -> Result<Option<(usize, usize)>, RangeAllocError> {
        let Range { start, end } = *range;
        if start >= end || start < self.range.start || end > self.range.end {
            return Err(RangeAllocError::OutOfRange);
        }
        if !self.granule_aligned(start) || !self.granule_aligned(end) {
            return Err(RangeAllocError::Misaligned);
        }
        // The first block ending after `start` is the only candidate for
        // overlap: every later block starts after it ends.
        let first_after = probed(self.by_end.range(start + 1..)).next().map(|(&be, &bs)| (bs, be));
        if let Some((bs, be)) = first_after {
            if bs < end {
                // Blocks are never adjacent, so an entirely free range lies
                // inside a single block.
                return Err(if bs <= start && end <= be {
                    RangeAllocError::DoubleFree
                } else {
                    RangeAllocError::OverlappingFree
                });
            }
        }
        Ok(first_after)
    }

    /// Occupancy counters. O(log n): free bytes and the fragment count are
    /// counters, the largest free block is the last entry of the size index.
    pub fn stats(&self) -> RangeAllocStats {
        RangeAllocStats {
            total_bytes: self.range.end - self.range.start,
            free_bytes: self.free_bytes,
            largest_free: self.by_size.top.map_or(0, |(len, _)| len),
            fragments: self.by_end.len(),
        }
    }

    /// The range given to [`RangeAllocator::new`].
    // Introspection for tests and debugging; VMALLOC does not need it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn managed_range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The allocation unit given to [`RangeAllocator::new`].
    // Introspection for tests and debugging; VMALLOC does not need it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn granule(&self) -> usize {
        self.granule
    }

    /// The free blocks (maximal free ranges), in ascending address order.
    // Introspection for tests and debugging; VMALLOC does not need it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn free_ranges(&self) -> impl DoubleEndedIterator<Item = Range<usize>> + '_ {
        self.by_end.iter().map(|(&end, &start)| start..end)
    }

    /// True iff `range` lies entirely in free space. An empty or reversed
    /// range is never reported free (as `free` rejects it). O(log n).
    // Introspection for tests and debugging; VMALLOC does not need it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn is_free(&self, range: Range<usize>) -> bool {
        if range.start >= range.end {
            return false;
        }
        // Only the first block ending after `range.start` can hold it.
        matches!(
            probed(self.by_end.range(range.start + 1..)).next(),
            Some((&end, &start)) if start <= range.start && end >= range.end
        )
    }

    /// True iff some byte of `range` is free. An empty or reversed range
    /// has no byte, so it never is. O(log n): only the first block ending
    /// after `range.start` can reach into it.
    pub fn overlaps_free(&self, range: Range<usize>) -> bool {
        if range.start >= range.end {
            return false;
        }
        matches!(probed(self.by_end.range(range.start + 1..)).next(), Some((_, &start)) if start < range.end)
    }

    /// The address index itself: for unit tests elsewhere in the crate
    /// that corrupt it to see the invariant checks catch it.
    #[cfg(test)]
    pub(crate) fn by_end_mut(&mut self) -> &mut BTreeMap<usize, usize> {
        &mut self.by_end
    }

    /// All internal invariants: address index and size index describe the
    /// same blocks, blocks are non-empty, granule-aligned, inside the managed
    /// range, sorted, non-overlapping and never adjacent (always merged),
    /// counters match. O(n) blocks with one O(log n) lookup each, for tests
    /// and debug assertions.
    fn holds(&self) -> bool {
        let g = self.granule;
        let Range { start: lo, end: hi } = self.range;
        if !g.is_power_of_two() || lo >= hi || lo % g != 0 || hi % g != 0 {
            return false;
        }
        if self.by_end.len() != self.by_size.len() || !self.by_size.holds() {
            return false;
        }
        let mut sum: usize = 0;
        let mut prev_end: Option<usize> = None;
        for (&end, &start) in &self.by_end {
            let well_formed = start < end && start % g == 0 && end % g == 0;
            let inside = lo <= start && end <= hi;
            // `prev == start` would be two adjacent, unmerged blocks.
            let apart = prev_end.is_none_or(|prev| prev < start);
            if !(well_formed && inside && apart) {
                return false;
            }
            // Equal lengths and one distinct size entry per address entry
            // make the two indexes hold the same blocks.
            if !self.by_size.contains(&(end - start, start)) {
                return false;
            }
            sum = match sum.checked_add(end - start) {
                Some(sum) => sum,
                None => return false,
            };
            prev_end = Some(end);
        }
        sum == self.free_bytes
    }

    /// Finds the block to carve `size` bytes aligned to `align` from, as
    /// `(block start, block end, aligned start)`. `size` and `align` are
    /// validated: non-zero multiples of the granule, `align` a power of two.
    fn find_block(&self, size: usize, align: usize) -> Option<(usize, usize, usize)> {
        // Blocks lie inside the managed range, so `start + len` cannot overflow.
        let try_block = |(len, start): (usize, usize)| {
            let end = start + len;
            fit_in(start, end, size, align).map(|at| (start, end, at))
        };
        // 1. Best fit: the few smallest blocks that are long enough. With
        //    no alignment beyond the granule's (every area's) the smallest
        //    fits at its start, so it is the answer, found by one lookup.
        if align == self.granule {
            return self.by_size.smallest_from((size, 0)).and_then(try_block);
        }
        let fast = self.by_size.range((size, 0), None).take(FAST_PATH_CANDIDATES).find_map(try_block);
        if fast.is_some() {
            return fast;
        }
        let Some(need) = size.checked_add(align - self.granule) else {
            // No block can be that long; scan every candidate left.
            return self.by_size.range((size, 0), None).skip(FAST_PATH_CANDIDATES).find_map(try_block);
        };
        // 2. The smallest block with room for any alignment offset.
        if let Some(hit) = self.by_size.range((need, 0), None).next() {
            let found = try_block(hit);
            debug_assert!(found.is_some(), "a block of size + align - granule always fits");
            if found.is_some() {
                return found;
            }
        }
        // 3. Last resort: the shorter candidates step 1 did not look at.
        self.by_size.range((size, 0), Some((need, 0))).skip(FAST_PATH_CANDIDATES).find_map(try_block)
    }

    /// Whether `x` is a multiple of the granule: a mask, not a division
    /// (`new` checked that the granule is a power of two).
    fn granule_aligned(&self, x: usize) -> bool {
        x & (self.granule - 1) == 0
    }

    fn insert_block(&mut self, start: usize, end: usize) {
        probe(1);
        self.by_end.insert(end, start);
        self.by_size.insert((end - start, start));
    }

    fn remove_block(&mut self, start: usize, end: usize) {
        probe(1);
        self.by_end.remove(&end);
        self.by_size.remove(&(end - start, start));
    }
}

/// The free blocks as `(len, start)` keys, in key order: the largest in
/// `top`, the others in `rest`.
///
/// Invariant (checked by [`SizeIndex::holds`]): `top` is `None` only when
/// `rest` is empty too, and every key in `rest` is smaller than `top`. So
/// changing the largest block so that it stays the largest writes one
/// field, and the index as a whole is still one ordered set of keys.
#[derive(Debug, Clone, Default)]
struct SizeIndex {
    top: Option<(usize, usize)>,
    rest: BTreeSet<(usize, usize)>,
}

impl SizeIndex {
    fn holds(&self) -> bool {
        match self.top {
            None => self.rest.is_empty(),
            Some(top) => self.rest.last().is_none_or(|&last| last < top),
        }
    }

    fn len(&self) -> usize {
        self.rest.len() + usize::from(self.top.is_some())
    }

    fn contains(&self, key: &(usize, usize)) -> bool {
        self.top.as_ref() == Some(key) || self.rest.contains(key)
    }

    fn insert(&mut self, key: (usize, usize)) {
        probe(1);
        match self.top {
            Some(top) if key < top => {
                self.rest.insert(key);
            }
            _ => {
                if let Some(old) = self.top.replace(key) {
                    self.rest.insert(old);
                }
            }
        }
    }

    fn remove(&mut self, key: &(usize, usize)) {
        probe(1);
        if self.top.as_ref() == Some(key) {
            self.top = self.rest.pop_last();
        } else {
            self.rest.remove(key);
        }
    }

    /// Replaces the key `old` by `new`; when `old` is the largest and `new`
    /// still is, without touching the tree.
    fn replace(&mut self, old: (usize, usize), new: (usize, usize)) {
        let stays_top = self.top == Some(old) && self.rest.last().is_none_or(|&last| last < new);
        if stays_top {
            self.top = Some(new);
        } else {
            self.remove(&old);
            self.insert(new);
        }
    }

    /// The smallest key `>= lo`: `range(lo, None).next()` as one lookup
    /// (one probe), without the iterator adapters.
    fn smallest_from(&self, lo: (usize, usize)) -> Option<(usize, usize)> {
        probe(1);
        let in_rest = self.rest.range(lo..).next().copied();
        in_rest.or(self.top.filter(|&top| top >= lo))
    }

    /// The keys from `lo` (inclusive) to `hi` (exclusive; `None`: no bound),
    /// in order, counting a probe for the seek and one per key yielded.
    fn range(
        &self,
        lo: (usize, usize),
        hi: Option<(usize, usize)>,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        use core::ops::Bound::{Excluded, Included, Unbounded};
        let rest = self.rest.range((Included(lo), hi.map_or(Unbounded, Excluded))).copied();
        let top = self.top.filter(|&top| top >= lo && hi.is_none_or(|hi| top < hi));
        probed(rest.chain(top))
    }
}

/// The invariant listed on `holds` above.
impl Inv for RangeAllocator {
    fn check(&self) -> Result<(), &'static str> {
        if self.holds() {
            Ok(())
        } else {
            Err("the range allocator's indexes, blocks or counters disagree")
        }
    }
}

#[cfg(test)]
mod tests;
