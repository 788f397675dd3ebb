//! Binary buddy allocator for physical page frames.
//!
//! # Model
//!
//! The allocator manages the page frame numbers (pfns) `0..nr_pages`. A freshly
//! built allocator considers every page reserved; the boot code then calls
//! [`BuddyAllocator::add_free_range`] once for each usable region of the
//! firmware memory map. After that, [`BuddyAllocator::alloc`] hands out runs of
//! physically contiguous pages and [`BuddyAllocator::dealloc`] takes them back.
//! The allocator never reads or writes the pages themselves: all of its
//! bookkeeping lives in side arrays on the kernel heap, so it can manage memory
//! that is not mapped, or (in tests) memory that is only simulated.
//!
//! # Orders and blocks
//!
//! Free memory is kept as *blocks*. A block of order `k` is the run of `2^k`
//! pages starting at a pfn that is a multiple of `2^k`, for `0 <= k <=`
//! [`MAX_ORDER`]; the largest block is `2^18` pages, 1 GiB of 4 KiB pages. The
//! *buddy* of the order-`k` block at `pfn` is the order-`k` block at
//! `pfn ^ 2^k`; together they form the order-`k + 1` block at
//! `pfn & !2^k`. Every free page belongs to exactly one free block, and the
//! allocator keeps the free blocks fully merged: no two buddies of the same
//! order are ever both free blocks. Because aligned blocks nest, this makes the
//! decomposition of the free pages into blocks unique, whatever order the
//! pages were freed in. A block never extends past `nr_pages`, so a page count
//! that is not a power of two simply leaves the top of the range in smaller
//! blocks.
//!
//! # Side arrays and their encoding
//!
//! There is one doubly-linked free list per order. The lists are *intrusive*,
//! but the links are stored in arrays indexed by pfn rather than in the pages:
//!
//! * `next[pfn]` and `prev[pfn]` (`u32`) link the head page of a free block to
//!   its neighbours in the list of its order. A link stores `pfn + 1`, and `0`
//!   means "no neighbour". The per-order list heads use the same encoding.
//! * `order[pfn]` (`u8`) is `k + 1` if `pfn` is the first page of a free block
//!   of order `k`, and `0` for every other page (allocated, reserved, or a
//!   free page that is not the first of its block). This is how a dealloc finds out in O(1) whether a
//!   buddy is free and of the right order to merge with.
//! * `free_bits` (`u64` words) has bit `pfn` set iff the page is free. It makes
//!   `is_free` O(1) and lets the double-free check in `dealloc` and
//!   `add_free_range` test 64 pages per word.
//!
//! Links are 32 bits wide to halve the memory cost, which limits the allocator
//! to `u32::MAX - 1` pages (16 TiB of 4 KiB pages). With these encodings an
//! all-zero array means "every page reserved, every list empty", which is
//! exactly the initial state. The arrays are therefore created with
//! `vec![0; n]`, which asks the global allocator for *zeroed* memory; a
//! `calloc`-style allocator gets that straight from fresh, lazily committed
//! pages, so building the allocator for a large machine costs neither the time
//! to write every element nor resident memory for pages that never become
//! free. About 9.1 bytes per managed page are needed (9.1 MiB for 4 GiB of
//! RAM), plus a fixed header.
//!
//! # Allocation and freeing
//!
//! `alloc(count)` rounds `count` up to the order `k = ceil(log2(count))`,
//! picks the lowest order `j >= k` whose list is non-empty (a bit mask of
//! non-empty lists makes this one instruction), and takes the block at the head
//! of that list. While `j > k` the block is halved: the upper half goes back on
//! the free list of the lower order and the lower half is kept. The caller gets
//! the first pfn of the order-`k` block, so a run of `2^k` pages is always
//! aligned to `2^k` pages. If `count` is not a power of two, the unused tail of
//! the block, `count..2^k`, is freed again at once, so only `count` pages are
//! ever taken; only power-of-two runs carry an alignment guarantee.
//!
//! `dealloc(pfn, count)` accepts any run of allocated pages, not only whole
//! allocations, so a caller may give back part of an allocation. It first
//! checks that every page of the run is in bounds and not already free (and
//! panics otherwise), then cuts the run into the largest aligned blocks it
//! contains and frees each one, from the top down: while the block's buddy is
//! a free block of the same order, the buddy is unlinked and the two are
//! merged into one block of the next order; the final block is pushed on its
//! list.
//!
//! The lists are LIFO: a freed block goes to the head of its list, and `alloc`
//! takes the head. Together with "lowest order first", this means a page that
//! was just freed is the next one handed out when it could not merge with its
//! buddy (it then heads the order-0 list), and an `alloc` undone by a `dealloc`
//! leaves the allocator exactly as it was, so allocating again yields the same
//! pfn. A freed page that did merge is not always next: a smaller free block
//! elsewhere is preferred to the merged one. Reusing recently freed pages is
//! also friendly to caches and TLBs.
//! Runs are cut into blocks from the top down, so of several blocks of one
//! order that a range or run yields, the lowest ends up at the head of its list
//! (after `add_free_range(0..n)` on a large machine, the 1 GiB blocks are used
//! from pfn 0 upwards). Lowest order first still takes precedence: a small
//! fragment at the edge of a range is used before a large aligned block.
//!
//! # Complexity
//!
//! Allocating, and freeing one block, take O([`MAX_ORDER`]) list operations,
//! each O(1). Freeing a run of `count` pages costs O(`count` / 64) for the
//! double-free check plus O([`MAX_ORDER`]) per block the run decomposes into
//! (at most `2 * MAX_ORDER` blocks, plus one per `2^MAX_ORDER` pages). Nothing
//! on the `alloc` and `dealloc` paths allocates heap memory or recurses, and
//! `alloc` never panics: it returns `None` when no suitable block exists.
//! [`BuddyAllocator::inv`] re-checks every invariant in O(`nr_pages`) for tests.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::inv::Inv;

/// The largest block order: blocks hold at most `2^MAX_ORDER` pages (1 GiB of
/// 4 KiB pages). This is also the largest run `alloc` can satisfy.
pub const MAX_ORDER: u32 = 18;

/// Number of orders, and so of free lists: `0..=MAX_ORDER`.
const NR_ORDERS: usize = MAX_ORDER as usize + 1;

/// Bits per word of the free bitmap.
const WORD_BITS: usize = u64::BITS as usize;

/// Buddy allocator over page frame numbers `0..nr_pages`.
///
/// See the [module documentation](self) for the design.
pub struct BuddyAllocator {
    /// Number of managed pages; pfns are `0..nr_pages`.
    nr_pages: usize,
    /// Number of free pages.
    free: usize,
    /// Head of the free list of each order, encoded as `pfn + 1` (`0`: empty).
    heads: [u32; NR_ORDERS],
    /// Number of blocks on the free list of each order.
    blocks: [usize; NR_ORDERS],
    /// Bit `k` is set iff the free list of order `k` is non-empty.
    nonempty: u32,
    /// Next block in the same free list, encoded as `pfn + 1` (`0`: none).
    next: Vec<u32>,
    /// Previous block in the same free list, encoded as `pfn + 1` (`0`: none).
    prev: Vec<u32>,
    /// `k + 1` if the pfn is the first page of a free block of order `k`, else `0`.
    order: Vec<u8>,
    /// Bit `pfn` is set iff the page is free.
    free_bits: Vec<u64>,
}

/// Encodes a pfn as a list link (`pfn + 1`).
fn link(pfn: usize) -> u32 {
    debug_assert!(pfn < u32::MAX as usize - 1);
    // `new` guarantees `nr_pages < u32::MAX`, so `pfn + 1 < u32::MAX` and the
    // cast cannot truncate (a checked conversion would add a panic path).
    #[allow(clippy::cast_possible_truncation)]
    let link = (pfn + 1) as u32;
    link
}

/// Decodes a list link; `None` for the empty link `0`.
fn unlink(link: u32) -> Option<usize> {
    link.checked_sub(1).map(|pfn| pfn as usize)
}

/// The `order` array tag of a free block head of order `k`.
fn tag(k: usize) -> u8 {
    debug_assert!(k < NR_ORDERS);
    // `k <= MAX_ORDER < 255`, so this cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let tag = k as u8 + 1;
    tag
}

/// Order of the largest block that ends at `end` (i.e. `end` is aligned to its
/// size) and fits in `len` pages, `1 <= len <= end`.
fn largest_block_ending_at(end: usize, len: usize) -> usize {
    debug_assert!(1 <= len && len <= end);
    let align = end.trailing_zeros();
    let fit = len.ilog2();
    align.min(fit).min(MAX_ORDER) as usize
}

/// Splits the pfn range `start..end` of the free bitmap into `(word, mask)`
/// pairs, one per bitmap word the range touches.
fn bit_spans(start: usize, end: usize) -> impl Iterator<Item = (usize, u64)> {
    let mut pfn = start;
    core::iter::from_fn(move || {
        if pfn >= end {
            return None;
        }
        let bit = pfn % WORD_BITS;
        let span = (WORD_BITS - bit).min(end - pfn);
        let mask = if span == WORD_BITS { u64::MAX } else { ((1u64 << span) - 1) << bit };
        let word = pfn / WORD_BITS;
        pfn += span;
        Some((word, mask))
    })
}

impl BuddyAllocator {
    /// Creates an allocator for the pfns `0..nr_pages`, all of them reserved:
    /// nothing can be allocated until [`add_free_range`](Self::add_free_range)
    /// is called.
    ///
    /// The side arrays are allocated zeroed and never written here, so the
    /// cost is independent of `nr_pages` when the heap hands out lazily
    /// committed zero pages.
    ///
    /// # Panics
    ///
    /// Panics if `nr_pages > u32::MAX - 1` (links are 32 bits wide).
    #[must_use]
    pub fn new(nr_pages: usize) -> Self {
        assert!(
            nr_pages < u32::MAX as usize,
            "buddy: {nr_pages} pages is more than the supported maximum of {}",
            u32::MAX - 1
        );
        Self {
            nr_pages,
            free: 0,
            heads: [0; NR_ORDERS],
            blocks: [0; NR_ORDERS],
            nonempty: 0,
            next: vec![0; nr_pages],
            prev: vec![0; nr_pages],
            order: vec![0; nr_pages],
            free_bits: vec![0; nr_pages.div_ceil(WORD_BITS)],
        }
    }

    /// Marks the pfns in `range` free. Meant to be called once per usable
    /// region of the memory map at boot; ranges need not be aligned, and
    /// adjacent ranges merge as if they had been added as one. An empty range
    /// is accepted and does nothing.
    ///
    /// # Panics
    ///
    /// Panics if `range.start > range.end`, if `range.end > nr_pages`, or if
    /// any page in the range is already free.
    pub fn add_free_range(&mut self, range: Range<usize>) {
        let Range { start, end } = range;
        assert!(
            start <= end && end <= self.nr_pages,
            "buddy: add_free_range({start}..{end}) is out of bounds or inverted \
             (the allocator manages {} pages)",
            self.nr_pages
        );
        if let Some(pfn) = self.first_free_in(start, end) {
            panic!("buddy: add_free_range({start}..{end}): pfn {pfn} is already free");
        }
        self.release(start, end);
    }

    /// Allocates `count` physically contiguous pages and returns the first
    /// pfn, or `None` if `count` is `0`, larger than `2^MAX_ORDER`, or no free
    /// block of order `ceil(log2(count))` exists.
    ///
    /// A power-of-two run of `2^k` pages is aligned to `2^k` pages. For other
    /// counts a block of the next power of two is taken and its unused tail
    /// freed again at once, so exactly `count` pages are allocated (the start
    /// is still aligned to that power of two, but callers should not rely on
    /// it). Among suitable blocks the one of the lowest order is used, and
    /// among those the most recently freed one.
    #[must_use = "dropping the returned pfn leaks the pages"]
    pub fn alloc(&mut self, count: usize) -> Option<usize> {
        if count == 0 || count > 1 << MAX_ORDER {
            return None;
        }
        let want = count.next_power_of_two().trailing_zeros() as usize;
        let fitting = self.nonempty >> want;
        if fitting == 0 {
            return None;
        }
        let mut k = want + fitting.trailing_zeros() as usize;
        let pfn = unlink(self.heads[k])?;
        self.remove_block(pfn, k);
        while k > want {
            k -= 1;
            self.push_block(pfn + (1 << k), k);
        }
        let size = 1 << want;
        if count < size {
            // The tail pages are still marked free in the bitmap and counted in
            // `free`; only their blocks need to go back on the lists.
            self.free_blocks(pfn + count, pfn + size);
        }
        for (word, mask) in bit_spans(pfn, pfn + count) {
            self.free_bits[word] &= !mask;
        }
        self.free -= count;
        Some(pfn)
    }

    /// Frees the `count` pages starting at `pfn`. They must have been handed
    /// out by [`alloc`](Self::alloc), but need not be a whole allocation: any
    /// run of allocated pages may be freed on its own (e.g. `alloc(8)` followed
    /// by `dealloc(pfn + 2, 3)`). Freed pages are merged with free buddies as
    /// far as possible. `count == 0` does nothing (after the bounds check).
    ///
    /// The allocator cannot tell an allocated page from a reserved one, so
    /// freeing a page that was never added with `add_free_range` is not
    /// detected; it simply becomes free.
    ///
    /// # Panics
    ///
    /// Panics if `pfn + count` overflows or exceeds `nr_pages`, or if any page
    /// of the run is already free (a double free). Every page is checked, and
    /// nothing is changed when it panics.
    pub fn dealloc(&mut self, pfn: usize, count: usize) {
        let end = match pfn.checked_add(count) {
            Some(end) if end <= self.nr_pages => end,
            _ => panic!(
                "buddy: dealloc of {count} pages at pfn {pfn} is out of bounds \
                 (the allocator manages {} pages)",
                self.nr_pages
            ),
        };
        if let Some(free) = self.first_free_in(pfn, end) {
            panic!("buddy: double free of pfn {free} (dealloc of {count} pages at pfn {pfn})");
        }
        self.release(pfn, end);
    }

    /// Number of free pages.
    #[must_use]
    pub fn free_pages(&self) -> usize {
        self.free
    }

    /// Number of managed pages (`nr_pages`), free or not.
    #[must_use]
    pub fn total_pages(&self) -> usize {
        self.nr_pages
    }

    /// Whether page `pfn` is free. Pages outside `0..nr_pages` are not.
    #[must_use]
    pub fn is_free(&self, pfn: usize) -> bool {
        pfn < self.nr_pages && self.free_bits[pfn / WORD_BITS] & (1 << (pfn % WORD_BITS)) != 0
    }

    /// Checks every internal invariant and returns whether all hold:
    ///
    /// * each free list is a well-formed doubly-linked list whose blocks are
    ///   tagged with the list's order, aligned to it, inside `0..nr_pages`,
    ///   and counted correctly; the non-empty mask matches the list heads;
    /// * no free block has a free buddy of the same order (fully merged);
    /// * the free blocks are disjoint, every page inside them is free, every
    ///   other page is not, and every tagged block head is on a list;
    /// * pages that are not block heads have no tag and no links;
    /// * the free count equals both the bitmap population and the total size
    ///   of the listed blocks, and no bitmap bit lies past `nr_pages`.
    ///
    /// O(`nr_pages`); meant for tests and debugging.
    fn holds(&self) -> bool {
        self.lists_ok().is_some_and(|listed| self.pages_ok(listed) && self.bitmap_ok())
    }

    /// Walks the free lists; returns the number of listed blocks if they are
    /// consistent.
    fn lists_ok(&self) -> Option<usize> {
        let mut listed = 0;
        let mut listed_pages = 0;
        for k in 0..NR_ORDERS {
            let size = 1usize << k;
            if (self.nonempty >> k) & 1 != u32::from(self.heads[k] != 0) {
                return None;
            }
            let mut prev = 0;
            let mut cur = self.heads[k];
            let mut seen = 0;
            while let Some(pfn) = unlink(cur) {
                let ok = seen < self.blocks[k]
                    && pfn < self.nr_pages
                    && self.prev[pfn] == prev
                    && self.order[pfn] == tag(k)
                    && pfn % size == 0
                    && pfn + size <= self.nr_pages
                    && (k == NR_ORDERS - 1 || self.order.get(pfn ^ size) != Some(&tag(k)));
                if !ok {
                    return None;
                }
                seen += 1;
                prev = cur;
                cur = self.next[pfn];
            }
            if seen != self.blocks[k] {
                return None;
            }
            listed += seen;
            listed_pages += seen * size;
        }
        (listed_pages == self.free).then_some(listed)
    }

    /// Scans every page: block heads and their pages against the bitmap and
    /// tags, and the number of tagged heads against the `listed` count.
    fn pages_ok(&self, listed: usize) -> bool {
        if self.next.len() != self.nr_pages
            || self.prev.len() != self.nr_pages
            || self.order.len() != self.nr_pages
        {
            return false;
        }
        let untagged = |range: Range<usize>| {
            self.order[range.clone()].iter().all(|&t| t == 0)
                && self.next[range.clone()].iter().all(|&l| l == 0)
                && self.prev[range].iter().all(|&l| l == 0)
        };
        let mut heads = 0;
        let mut pfn = 0;
        while pfn < self.nr_pages {
            if self.order[pfn] == 0 {
                if self.is_free(pfn) || self.next[pfn] != 0 || self.prev[pfn] != 0 {
                    return false;
                }
                pfn += 1;
                continue;
            }
            let k = usize::from(self.order[pfn] - 1);
            if k >= NR_ORDERS {
                return false;
            }
            let end = pfn + (1 << k);
            if end > self.nr_pages || self.first_reserved_in(pfn, end).is_some() || !untagged(pfn + 1..end) {
                return false;
            }
            heads += 1;
            pfn = end;
        }
        heads == listed
    }

    /// Checks the bitmap's length, population and the bits past `nr_pages`.
    fn bitmap_ok(&self) -> bool {
        if self.free_bits.len() != self.nr_pages.div_ceil(WORD_BITS) {
            return false;
        }
        let tail = self.nr_pages % WORD_BITS;
        if tail != 0 && self.free_bits[self.nr_pages / WORD_BITS] >> tail != 0 {
            return false;
        }
        let population: usize = self.free_bits.iter().map(|w| w.count_ones() as usize).sum();
        population == self.free
    }

    /// First free pfn in `start..end`, if any.
    fn first_free_in(&self, start: usize, end: usize) -> Option<usize> {
        bit_spans(start, end).find_map(|(word, mask)| {
            let hits = self.free_bits[word] & mask;
            (hits != 0).then(|| word * WORD_BITS + hits.trailing_zeros() as usize)
        })
    }

    /// First pfn in `start..end` that is not free, if any.
    fn first_reserved_in(&self, start: usize, end: usize) -> Option<usize> {
        bit_spans(start, end).find_map(|(word, mask)| {
            let misses = !self.free_bits[word] & mask;
            (misses != 0).then(|| word * WORD_BITS + misses.trailing_zeros() as usize)
        })
    }

    /// Makes the (checked, currently not free) pages `start..end` free.
    fn release(&mut self, start: usize, end: usize) {
        for (word, mask) in bit_spans(start, end) {
            self.free_bits[word] |= mask;
        }
        self.free += end - start;
        self.free_blocks(start, end);
    }

    /// Puts the pages `start..end`, already counted as free, on the free lists
    /// as the largest aligned blocks they contain, merging with buddies. The
    /// blocks are freed from the top down, so the lowest one ends up at the
    /// head of its list and a range is handed out from its low end first.
    fn free_blocks(&mut self, start: usize, end: usize) {
        let mut end = end;
        while end > start {
            let k = largest_block_ending_at(end, end - start);
            end -= 1 << k;
            self.free_block(end, k);
        }
    }

    /// Puts the order-`k` block at `pfn` on the free lists, first merging it
    /// with its buddy as long as the buddy is a free block of the same order.
    fn free_block(&mut self, mut pfn: usize, mut k: usize) {
        while k < NR_ORDERS - 1 {
            let buddy = pfn ^ (1 << k);
            if self.order.get(buddy) != Some(&tag(k)) {
                break;
            }
            self.remove_block(buddy, k);
            pfn &= !(1 << k);
            k += 1;
        }
        self.push_block(pfn, k);
    }

    /// Pushes the order-`k` block at `pfn` on the head of its free list.
    fn push_block(&mut self, pfn: usize, k: usize) {
        let old = self.heads[k];
        if let Some(old) = unlink(old) {
            self.prev[old] = link(pfn);
        }
        self.next[pfn] = old;
        self.prev[pfn] = 0;
        self.order[pfn] = tag(k);
        self.heads[k] = link(pfn);
        self.blocks[k] += 1;
        self.nonempty |= 1 << k;
    }

    /// Unlinks the order-`k` block at `pfn` from its free list and clears its
    /// tag and links.
    fn remove_block(&mut self, pfn: usize, k: usize) {
        let (next, prev) = (self.next[pfn], self.prev[pfn]);
        match unlink(prev) {
            Some(prev) => self.next[prev] = next,
            None => self.heads[k] = next,
        }
        if let Some(next) = unlink(next) {
            self.prev[next] = prev;
        }
        self.next[pfn] = 0;
        self.prev[pfn] = 0;
        self.order[pfn] = 0;
        self.blocks[k] -= 1;
        if self.heads[k] == 0 {
            self.nonempty &= !(1 << k);
        }
    }
}

impl fmt::Debug for BuddyAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Prints `{order: blocks}` for the non-empty orders only.
        struct PerOrder<'a>(&'a [usize; NR_ORDERS]);
        impl fmt::Debug for PerOrder<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter().enumerate().filter(|&(_, &n)| n != 0)).finish()
            }
        }
        f.debug_struct("BuddyAllocator")
            .field("total_pages", &self.nr_pages)
            .field("free_pages", &self.free)
            .field("free_blocks_by_order", &PerOrder(&self.blocks))
            .finish_non_exhaustive()
    }
}

/// The invariant listed on `holds` above.
impl Inv for BuddyAllocator {
    fn check(&self) -> Result<(), &'static str> {
        if self.holds() {
            Ok(())
        } else {
            Err("the buddy allocator's free lists, bitmap and counts disagree")
        }
    }
}

#[cfg(test)]
mod tests;
