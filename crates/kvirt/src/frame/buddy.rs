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
mod tests {
    // Declared here too so the tests build whatever the crate root declares.
    extern crate std;

    use super::{BuddyAllocator, Inv, MAX_ORDER, NR_ORDERS};
    use alloc::format;
    use alloc::vec::Vec;

    /// An allocator of `nr_pages` pages with all of them free.
    fn all_free(nr_pages: usize) -> BuddyAllocator {
        let mut a = BuddyAllocator::new(nr_pages);
        a.add_free_range(0..nr_pages);
        assert!(a.inv());
        a
    }

    /// `(order, number of free blocks)` for the non-empty orders.
    fn shape(a: &BuddyAllocator) -> Vec<(usize, usize)> {
        (0..NR_ORDERS).filter(|&k| a.blocks[k] != 0).map(|k| (k, a.blocks[k])).collect()
    }

    fn alloc_ok(a: &mut BuddyAllocator, count: usize) -> usize {
        let pfn = a.alloc(count).expect("allocation should succeed");
        assert!(a.inv());
        pfn
    }

    fn dealloc_ok(a: &mut BuddyAllocator, pfn: usize, count: usize) {
        a.dealloc(pfn, count);
        assert!(a.inv());
    }

    #[test]
    fn new_allocator_has_every_page_reserved() {
        let mut a = BuddyAllocator::new(100);
        assert!(a.inv());
        assert_eq!(a.total_pages(), 100);
        assert_eq!(a.free_pages(), 0);
        assert!((0..100).all(|pfn| !a.is_free(pfn)));
        assert_eq!(a.alloc(1), None);
    }

    #[test]
    fn empty_allocator_is_consistent() {
        let mut a = BuddyAllocator::new(0);
        assert!(a.inv());
        a.add_free_range(0..0);
        assert_eq!(a.alloc(1), None);
        assert!(a.inv());
    }

    #[test]
    fn add_free_range_of_a_power_of_two_makes_one_block() {
        let a = all_free(64);
        assert_eq!(a.free_pages(), 64);
        assert!((0..64).all(|pfn| a.is_free(pfn)));
        assert_eq!(shape(&a), [(6, 1)]);
    }

    #[test]
    fn same_order_blocks_of_a_range_are_used_lowest_first() {
        let mut a = BuddyAllocator::new(64);
        a.add_free_range(16..48);
        assert_eq!(shape(&a), [(4, 2)]);
        assert_eq!(a.alloc(1), Some(16));
        assert_eq!(a.alloc(16), Some(32));
    }

    #[test]
    fn smallest_fragment_of_a_range_is_used_first() {
        let mut a = BuddyAllocator::new(1000);
        a.add_free_range(0..1000);
        // 992..1000 is the only order-3 block and the lowest-order one.
        assert_eq!(a.alloc(1), Some(992));
    }

    #[test]
    fn is_free_is_false_out_of_range() {
        let a = all_free(10);
        assert!(a.is_free(9));
        assert!(!a.is_free(10));
        assert!(!a.is_free(usize::MAX));
    }

    #[test]
    fn freed_page_is_reused_first() {
        let mut a = all_free(1024);
        // An alloc undone by a dealloc restores the exact state.
        let p = alloc_ok(&mut a, 1);
        dealloc_ok(&mut a, p, 1);
        assert_eq!(a.alloc(1), Some(p));
        // A page whose buddy is allocated heads the order-0 list when freed.
        let pages: Vec<usize> = (0..9).map(|_| alloc_ok(&mut a, 1)).collect();
        assert_eq!(pages, (1..10).collect::<Vec<_>>());
        dealloc_ok(&mut a, 3, 1);
        assert_eq!(a.alloc(1), Some(3));
        // Last in, first out among same-order blocks.
        dealloc_ok(&mut a, 5, 1);
        dealloc_ok(&mut a, 7, 1);
        assert_eq!(a.alloc(1), Some(7));
        assert_eq!(a.alloc(1), Some(5));
    }

    #[test]
    fn dropping_the_last_frame_of_a_sequence_reuses_it() {
        let mut a = all_free(256);
        for expected in 0..5 {
            assert_eq!(a.alloc(1), Some(expected));
        }
        // Page 4 merges with its free buddies, but the merged block is again
        // the lowest-order free block, so page 4 comes back.
        dealloc_ok(&mut a, 4, 1);
        assert_eq!(a.alloc(1), Some(4));
    }

    #[test]
    fn lowest_order_block_is_preferred() {
        let mut a = all_free(32);
        for expected in 0..16 {
            assert_eq!(a.alloc(1), Some(expected));
        }
        dealloc_ok(&mut a, 9, 1); // buddy 8 is allocated: an order-0 block
        assert_eq!(shape(&a), [(0, 1), (4, 1)]);
        assert_eq!(a.alloc(1), Some(9));
        assert_eq!(a.alloc(2), Some(16));
    }

    #[test]
    fn split_keeps_lower_half_and_frees_upper_halves() {
        let mut a = all_free(16);
        assert_eq!(a.alloc(1), Some(0));
        assert_eq!(shape(&a), [(0, 1), (1, 1), (2, 1), (3, 1)]);
        assert_eq!(a.alloc(1), Some(1));
        assert_eq!(a.alloc(2), Some(2));
        assert_eq!(a.alloc(4), Some(4));
        assert_eq!(a.alloc(8), Some(8));
        assert_eq!(a.alloc(1), None);
        assert_eq!(a.free_pages(), 0);
        assert!(a.inv());
    }

    #[test]
    fn buddies_merge_when_both_are_freed() {
        let mut a = all_free(16);
        let pages: Vec<usize> = (0..16).map(|_| alloc_ok(&mut a, 1)).collect();
        dealloc_ok(&mut a, 4, 1);
        dealloc_ok(&mut a, 5, 1);
        assert_eq!(shape(&a), [(1, 1)]);
        dealloc_ok(&mut a, 7, 1);
        dealloc_ok(&mut a, 6, 1);
        assert_eq!(shape(&a), [(2, 1)]);
        for &p in &pages {
            if !a.is_free(p) {
                dealloc_ok(&mut a, p, 1);
            }
        }
        assert_eq!(shape(&a), [(4, 1)]);
        assert_eq!(a.free_pages(), 16);
    }

    #[test]
    fn exhaustion_returns_none() {
        let mut a = all_free(37);
        let mut pages: Vec<usize> = (0..37).map(|_| alloc_ok(&mut a, 1)).collect();
        assert_eq!(a.alloc(1), None);
        assert_eq!(a.free_pages(), 0);
        pages.sort_unstable();
        assert_eq!(pages, (0..37).collect::<Vec<_>>());
        for p in pages {
            dealloc_ok(&mut a, p, 1);
        }
        assert_eq!(a.free_pages(), 37);
        assert_eq!(shape(&a), [(0, 1), (2, 1), (5, 1)]);
    }

    #[test]
    fn fragmented_memory_cannot_satisfy_a_contiguous_request() {
        let mut a = all_free(16);
        for _ in 0..16 {
            alloc_ok(&mut a, 1);
        }
        for p in (0..16).step_by(2) {
            dealloc_ok(&mut a, p, 1);
        }
        assert_eq!(a.free_pages(), 8);
        assert_eq!(a.alloc(2), None);
        assert!(a.alloc(1).is_some());
    }

    #[test]
    fn zero_and_oversized_requests_return_none() {
        let max = 1 << MAX_ORDER;
        let mut a = all_free(2 * max);
        assert_eq!(a.alloc(0), None);
        assert_eq!(a.alloc(max + 1), None);
        assert_eq!(a.alloc(usize::MAX), None);
        assert_eq!(a.free_pages(), 2 * max);
        assert_eq!(a.alloc(max), Some(0));
        assert_eq!(a.alloc(max), Some(max));
        assert_eq!(a.alloc(1), None);
        assert!(a.inv());
    }

    #[test]
    fn largest_blocks_do_not_merge_past_max_order() {
        let a = all_free(4 << MAX_ORDER);
        assert_eq!(shape(&a), [(MAX_ORDER as usize, 4)]);
    }

    #[test]
    fn power_of_two_runs_are_aligned() {
        let mut a = BuddyAllocator::new(3000);
        a.add_free_range(1..3000);
        let mut live = Vec::new();
        for round in 0..3 {
            for k in 0..=8 {
                let count = 1 << k;
                let p = alloc_ok(&mut a, count);
                assert_eq!(p % count, 0, "run of {count} pages at {p} is misaligned");
                live.push((p, count));
                // Perturb the free lists with a small odd allocation.
                live.push((alloc_ok(&mut a, 3 + round), 3 + round));
            }
        }
        for (p, count) in live {
            dealloc_ok(&mut a, p, count);
        }
        assert_eq!(a.free_pages(), 2999);
    }

    #[test]
    fn non_power_of_two_run_returns_tail() {
        let mut a = all_free(16);
        assert_eq!(a.alloc(5), Some(0));
        assert_eq!(a.free_pages(), 11);
        assert!((0..5).all(|p| !a.is_free(p)));
        assert!((5..16).all(|p| a.is_free(p)));
        // The tail 5..8 went back as [5] (order 0) and [6, 7] (order 1).
        assert_eq!(shape(&a), [(0, 1), (1, 1), (3, 1)]);
        assert_eq!(a.alloc(2), Some(6));
        assert_eq!(a.alloc(1), Some(5));
        // Three pages: an order-2 block is split off the order-3 one at 8.
        assert_eq!(a.alloc(3), Some(8));
        assert!(a.is_free(11));
        assert_eq!(a.alloc(1), Some(11));
        dealloc_ok(&mut a, 0, 5);
        dealloc_ok(&mut a, 5, 1);
        dealloc_ok(&mut a, 6, 2);
        dealloc_ok(&mut a, 8, 3);
        dealloc_ok(&mut a, 11, 1);
        assert_eq!(shape(&a), [(4, 1)]);
    }

    #[test]
    fn partial_free_of_a_run() {
        let mut a = all_free(64);
        let p = alloc_ok(&mut a, 8);
        dealloc_ok(&mut a, p + 2, 3);
        assert_eq!(a.free_pages(), 56 + 3);
        let free: Vec<bool> = (p..p + 8).map(|q| a.is_free(q)).collect();
        assert_eq!(free, [false, false, true, true, true, false, false, false]);
        dealloc_ok(&mut a, p + 6, 2);
        dealloc_ok(&mut a, p, 1);
        dealloc_ok(&mut a, p + 5, 1);
        dealloc_ok(&mut a, p + 1, 1);
        assert_eq!(a.free_pages(), 64);
        assert_eq!(shape(&a), [(6, 1)]);
    }

    #[test]
    fn partial_free_of_a_non_power_of_two_run() {
        let mut a = all_free(128);
        let p = alloc_ok(&mut a, 13);
        for (offset, count) in [(7, 5), (0, 1), (12, 1), (3, 4), (1, 2)] {
            dealloc_ok(&mut a, p + offset, count);
        }
        assert_eq!(shape(&a), [(7, 1)]);
    }

    #[test]
    fn freeing_everything_merges_back_whatever_the_order() {
        let mut a = all_free(1 << 12);
        let mut live = Vec::new();
        for i in 0..200 {
            let count = 1 + (i * 7919) % 23;
            live.push((alloc_ok(&mut a, count), count));
        }
        // Free in a scrambled order.
        let n = live.len();
        for i in 0..n {
            let (p, count) = live[(i * 37) % n];
            dealloc_ok(&mut a, p, count);
        }
        assert_eq!(a.free_pages(), 1 << 12);
        assert_eq!(shape(&a), [(12, 1)]);
    }

    #[test]
    fn range_not_aligned_to_max_order() {
        let range = 12_345..400_001;
        let mut a = BuddyAllocator::new(1 << 19);
        a.add_free_range(range.clone());
        assert!(a.inv());
        assert_eq!(a.free_pages(), range.len());
        assert!(!a.is_free(12_344) && a.is_free(12_345));
        assert!(a.is_free(400_000) && !a.is_free(400_001));
        // No aligned 2^18 block fits in the range, but 2^17 ones do.
        assert_eq!(a.alloc(1 << MAX_ORDER), None);
        let p = alloc_ok(&mut a, 1 << 17);
        assert_eq!(p % (1 << 17), 0);
        assert!(range.start <= p && p + (1 << 17) <= range.end);
        dealloc_ok(&mut a, p, 1 << 17);
        assert_eq!(a.free_pages(), range.len());
    }

    #[test]
    fn nr_pages_not_a_power_of_two() {
        let mut a = all_free(1000);
        // 1000 = 512 + 256 + 128 + 64 + 32 + 8
        let initial = [(3, 1), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1)];
        assert_eq!(shape(&a), initial);
        assert_eq!(a.alloc(1024), None);
        assert_eq!(a.alloc(1000), None);
        assert_eq!(a.alloc(512), Some(0));
        let mut pages = Vec::new();
        while let Some(p) = a.alloc(1) {
            pages.push(p);
        }
        assert_eq!(pages.len(), 1000 - 512);
        assert!(pages.iter().all(|&p| (512..1000).contains(&p)));
        assert!(a.inv());
        dealloc_ok(&mut a, 0, 512);
        for p in pages {
            dealloc_ok(&mut a, p, 1);
        }
        assert_eq!(shape(&a), initial);
    }

    #[test]
    fn add_free_range_with_odd_boundaries() {
        let mut a = BuddyAllocator::new(2000);
        a.add_free_range(3..1001);
        assert!(a.inv());
        a.add_free_range(1001..1500);
        assert!(a.inv());
        a.add_free_range(1777..1778);
        assert!(a.inv());
        assert_eq!(a.free_pages(), 1497 + 1);
        assert!(!a.is_free(2) && a.is_free(3));
        assert!(a.is_free(1000) && a.is_free(1001) && a.is_free(1499));
        assert!(!a.is_free(1500) && a.is_free(1777) && !a.is_free(1778));
        // Adjacent ranges merge exactly as one range would.
        let mut b = BuddyAllocator::new(2000);
        b.add_free_range(3..1500);
        b.add_free_range(1777..1778);
        assert_eq!(shape(&a), shape(&b));
    }

    #[test]
    fn ranges_added_out_of_order_merge_fully() {
        let mut a = BuddyAllocator::new(64);
        for range in [40..64, 1..2, 2..40, 0..1] {
            a.add_free_range(range);
            assert!(a.inv());
        }
        assert_eq!(shape(&a), [(6, 1)]);
    }

    #[test]
    fn reserved_holes_are_never_handed_out() {
        let mut a = BuddyAllocator::new(256);
        a.add_free_range(0..100);
        a.add_free_range(101..200);
        a.add_free_range(210..256);
        let mut pages = Vec::new();
        while let Some(p) = a.alloc(1) {
            pages.push(p);
        }
        assert_eq!(pages.len(), 255 - 10);
        assert!(pages.iter().all(|&p| p != 100 && !(200..210).contains(&p)));
        assert!(a.inv());
    }

    #[test]
    fn large_allocator_constructs_quickly() {
        let pages = 1 << 20; // 4 GiB of 4 KiB pages
        let mut a = BuddyAllocator::new(pages);
        a.add_free_range(0..pages);
        let one = a.alloc(1).unwrap();
        let five = a.alloc(5).unwrap();
        let many = a.alloc(512).unwrap();
        a.dealloc(five, 5);
        a.dealloc(one, 1);
        a.dealloc(many, 512);
        assert_eq!(a.free_pages(), pages);
        assert!(a.inv());
    }

    #[test]
    fn debug_output_is_a_short_summary() {
        let mut a = all_free(1000);
        let _ = a.alloc(1);
        let text = format!("{a:?}");
        assert!(text.contains("total_pages: 1000"), "{text}");
        assert!(text.contains("free_pages: 999"), "{text}");
        assert!(text.len() < 200, "{text}");
    }

    #[test]
    #[should_panic(expected = "double free of pfn 0")]
    fn double_free_panics() {
        let mut a = all_free(16);
        let p = a.alloc(1).unwrap();
        a.dealloc(p, 1);
        a.dealloc(p, 1);
    }

    #[test]
    #[should_panic(expected = "double free of pfn 5 (dealloc of 4 pages at pfn 4)")]
    fn double_free_inside_a_run_panics() {
        let mut a = all_free(16);
        for _ in 0..4 {
            let _ = a.alloc(4);
        }
        a.dealloc(5, 1);
        a.dealloc(4, 4);
    }

    #[test]
    fn double_free_leaves_the_allocator_unchanged() {
        let mut a = all_free(16);
        let p = a.alloc(8).unwrap();
        a.dealloc(p + 3, 1);
        let before = (a.free_pages(), shape(&a));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.dealloc(p, 8)));
        assert!(result.is_err());
        assert_eq!((a.free_pages(), shape(&a)), before);
        assert!(a.inv());
    }

    #[test]
    #[should_panic(expected = "dealloc of 2 pages at pfn 15 is out of bounds")]
    fn dealloc_out_of_bounds_panics() {
        let mut a = all_free(16);
        for _ in 0..16 {
            let _ = a.alloc(1);
        }
        a.dealloc(15, 2);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn dealloc_with_overflowing_range_panics() {
        let mut a = all_free(16);
        a.dealloc(usize::MAX, 2);
    }

    #[test]
    #[should_panic(expected = "add_free_range(5..6): pfn 5 is already free")]
    fn add_free_range_twice_panics() {
        let mut a = BuddyAllocator::new(16);
        a.add_free_range(0..10);
        a.add_free_range(5..6);
    }

    #[test]
    #[should_panic(expected = "add_free_range(0..11) is out of bounds")]
    fn add_free_range_out_of_bounds_panics() {
        let mut a = BuddyAllocator::new(10);
        a.add_free_range(0..11);
    }

    #[test]
    #[should_panic(expected = "add_free_range(6..5) is out of bounds or inverted")]
    fn inverted_add_free_range_panics() {
        let mut a = BuddyAllocator::new(10);
        let (start, end) = (6, 5);
        a.add_free_range(start..end);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    #[should_panic(expected = "more than the supported maximum")]
    fn too_many_pages_panics() {
        let _ = BuddyAllocator::new(u32::MAX as usize);
    }

    #[test]
    fn inv_detects_corruption() {
        let mut a = all_free(64);
        let _ = a.alloc(3);
        assert!(a.inv());
        a.free += 1;
        assert!(!a.inv());
        a.free -= 1;
        a.free_bits[0] ^= 1 << 63;
        assert!(!a.inv());
        a.free_bits[0] ^= 1 << 63;
        a.order[63] = 1;
        assert!(!a.inv());
        a.order[63] = 0;
        assert!(a.inv());
    }

    mod model {
        use super::super::{BuddyAllocator, Inv};
        use super::shape;
        use alloc::vec;
        use alloc::vec::Vec;
        use proptest::prelude::*;

        const N: usize = 4003;

        #[derive(Debug, Clone)]
        enum Op {
            Alloc(usize),
            /// Free live allocation `which % live.len()`, or the sub-run chosen
            /// by `part` (offset and length, each reduced modulo what fits).
            Free {
                which: usize,
                part: Option<(usize, usize)>,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (1usize..=40).prop_map(Op::Alloc),
                2 => (
                    any::<usize>(),
                    proptest::option::weighted(0.3, (any::<usize>(), any::<usize>())),
                )
                    .prop_map(|(which, part)| Op::Free { which, part }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn random_alloc_dealloc_matches_model(
                holes in proptest::collection::vec((0..N, 1usize..120), 0..5),
                ops in proptest::collection::vec(op(), 1..250),
            ) {
                let mut reserved = vec![false; N];
                for (start, len) in holes {
                    reserved[start..(start + len).min(N)].fill(true);
                }
                // Add the usable regions, each split in two and added back to
                // front, so adjacent add_free_range calls must merge.
                let mut a = BuddyAllocator::new(N);
                let mut start = 0;
                while start < N {
                    let end = (start..N).find(|&p| reserved[p] != reserved[start]).unwrap_or(N);
                    if !reserved[start] {
                        let mid = start + (end - start) / 3;
                        a.add_free_range(mid..end);
                        a.add_free_range(start..mid);
                    }
                    start = end;
                }
                let initial_free = reserved.iter().filter(|&&r| !r).count();
                prop_assert!(a.inv());
                prop_assert_eq!(a.free_pages(), initial_free);
                let initial_shape = shape(&a);

                let mut allocated = vec![false; N];
                let mut live: Vec<(usize, usize)> = Vec::new();
                let mut used = 0;
                for op in ops {
                    match op {
                        Op::Alloc(count) => {
                            if let Some(p) = a.alloc(count) {
                                prop_assert!(p + count <= N, "run {}+{} out of bounds", p, count);
                                for q in p..p + count {
                                    prop_assert!(!reserved[q], "pfn {} is in a reserved hole", q);
                                    prop_assert!(!allocated[q], "pfn {} handed out twice", q);
                                    allocated[q] = true;
                                }
                                if count.is_power_of_two() {
                                    prop_assert_eq!(p % count, 0);
                                }
                                used += count;
                                live.push((p, count));
                            } else {
                                // Fully merged free lists: the request may fail
                                // only if no aligned block of the rounded-up size
                                // is entirely free.
                                let size = count.next_power_of_two();
                                let fits = (0..N / size).any(|block| {
                                    (block * size..(block + 1) * size)
                                        .all(|q| !reserved[q] && !allocated[q])
                                });
                                prop_assert!(
                                    !fits,
                                    "alloc({}) failed although a block was free",
                                    count
                                );
                            }
                        }
                        Op::Free { which, part } => {
                            if live.is_empty() {
                                continue;
                            }
                            let (p, len) = live.swap_remove(which % live.len());
                            let (offset, count) = match part {
                                None => (0, len),
                                Some((offset, count)) => {
                                    let offset = offset % len;
                                    (offset, 1 + count % (len - offset))
                                }
                            };
                            a.dealloc(p + offset, count);
                            allocated[p + offset..p + offset + count].fill(false);
                            used -= count;
                            if offset > 0 {
                                live.push((p, offset));
                            }
                            if offset + count < len {
                                live.push((p + offset + count, len - offset - count));
                            }
                        }
                    }
                    prop_assert!(a.inv());
                    prop_assert_eq!(a.free_pages(), initial_free - used);
                    for q in 0..N {
                        prop_assert_eq!(a.is_free(q), !reserved[q] && !allocated[q]);
                    }
                }

                for (p, len) in live {
                    a.dealloc(p, len);
                }
                prop_assert!(a.inv());
                prop_assert_eq!(a.free_pages(), initial_free);
                // The fully merged decomposition is unique.
                prop_assert_eq!(shape(&a), initial_shape);
            }
        }
    }
}
