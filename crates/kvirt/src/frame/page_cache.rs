//! Per-CPU lists of free single pages in front of the buddy allocator.
//!
//! Single pages are what page-table nodes and most frames are, and they
//! come and go in pairs (a node and a frame for an area, both freed when it
//! is dropped). Taking the buddy allocator's lock for each would make every
//! CPU that creates areas meet on that one lock, so each CPU keeps a short
//! LIFO list of free pages instead, as Linux's per-CPU page lists do:
//!
//! ```text
//!   alloc one page:  pop from this CPU's list; an empty list first takes
//!                    BATCH pages from the buddy allocator
//!   free one page:   push onto this CPU's list; a list longer than HIGH
//!                    gives its BATCH oldest pages back
//!   anything else:   the buddy allocator, as before
//! ```
//!
//! A page on a list is free: its slot is unused and `PhysMem::stats` counts
//! it (the invariant check drains the lists before it compares slots with
//! the allocator). A request the buddy allocator cannot
//! serve drains every list back into it and tries again, so caching never
//! makes an allocation fail.
//!
//! Locks: a list's lock is taken before the buddy allocator's, never after;
//! `stats` takes every list's lock (in order) and then the allocator's, so
//! it sees no page in flight between the two.

use alloc::vec::Vec;

use crossbeam_utils::CachePadded;

use super::buddy::BuddyAllocator;

/// Pages a list takes from or gives back to the buddy allocator at once.
/// A lazy purge frees thousands of pages on one CPU while the others
/// allocate theirs: batches of 8 took the allocator's lock four times as
/// often and made two CPUs' create+drop churn slower than one's (Linux
/// moves 63 at once; 64 gained little more here, and lists stay short
/// enough for small machines).
const BATCH: usize = 32;
/// The longest a list grows before it gives pages back.
const HIGH: usize = 4 * BATCH;
/// Lists: CPU `i` uses list `i % LISTS`.
const LISTS: usize = 8;

/// The per-CPU lists of one allocator (see the module documentation).
#[derive(Debug)]
pub(super) struct PageCache {
    /// Page frame numbers; the most recently freed last.
    lists: [CachePadded<spin::Mutex<Vec<usize>>>; LISTS],
}

impl PageCache {
    pub(super) fn new() -> Self {
        Self {
            lists: core::array::from_fn(|_| CachePadded::new(spin::Mutex::new(Vec::with_capacity(HIGH + 1)))),
        }
    }

    /// One free page for `cpu`, or `None` if there is no free page at all.
    pub(super) fn alloc(&self, cpu: usize, buddy: &spin::Mutex<BuddyAllocator>) -> Option<usize> {
        let mut list = self.lists[cpu % LISTS].lock();
        if list.is_empty() {
            let mut buddy = buddy.lock();
            list.extend(core::iter::from_fn(|| buddy.alloc(1)).take(BATCH));
            // Taken in address order; hand out the lowest first.
            list.reverse();
        }
        if let Some(pfn) = list.pop() {
            return Some(pfn);
        }
        drop(list);
        self.drain(buddy);
        buddy.lock().alloc(1)
    }

    /// Frees one page, on `cpu`'s list.
    pub(super) fn dealloc(&self, cpu: usize, pfn: usize, buddy: &spin::Mutex<BuddyAllocator>) {
        let mut list = self.lists[cpu % LISTS].lock();
        list.push(pfn);
        if list.len() > HIGH {
            let mut buddy = buddy.lock();
            for pfn in list.drain(..BATCH) {
                buddy.dealloc(pfn, 1);
            }
        }
    }

    /// Gives every cached page back to the buddy allocator.
    pub(super) fn drain(&self, buddy: &spin::Mutex<BuddyAllocator>) {
        for list in &self.lists {
            let mut list = list.lock();
            let mut buddy = buddy.lock();
            for pfn in list.drain(..) {
                buddy.dealloc(pfn, 1);
            }
        }
    }

    /// Runs `f` with the number of cached pages and the allocator, with no
    /// page moving between the two meanwhile.
    pub(super) fn with_all<R>(
        &self,
        buddy: &spin::Mutex<BuddyAllocator>,
        f: impl FnOnce(usize, &BuddyAllocator) -> R,
    ) -> R {
        let lists: Vec<_> = self.lists.iter().map(|l| l.lock()).collect();
        let cached = lists.iter().map(|l| l.len()).sum();
        f(cached, &buddy.lock())
    }

    /// Whether page `pfn` is on a list.
    #[cfg(test)]
    fn contains(&self, pfn: usize) -> bool {
        self.lists.iter().any(|l| l.lock().contains(&pfn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buddy(pages: usize) -> spin::Mutex<BuddyAllocator> {
        let mut b = BuddyAllocator::new(pages);
        b.add_free_range(0..pages);
        spin::Mutex::new(b)
    }

    fn cached(c: &PageCache, b: &spin::Mutex<BuddyAllocator>) -> (usize, usize) {
        c.with_all(b, |cached, buddy| (cached, buddy.free_pages()))
    }

    #[test]
    fn an_empty_list_takes_a_batch_and_hands_out_the_lowest_page_first() {
        let (c, b) = (PageCache::new(), buddy(64));
        assert_eq!(c.alloc(0, &b), Some(0));
        assert_eq!(c.alloc(0, &b), Some(1));
        assert_eq!(cached(&c, &b), (BATCH - 2, 64 - BATCH));
    }

    #[test]
    fn a_freed_page_is_the_next_one_handed_out_on_that_cpu() {
        let (c, b) = (PageCache::new(), buddy(64));
        let pfn = c.alloc(3, &b).unwrap();
        c.dealloc(3, pfn, &b);
        assert!(c.contains(pfn));
        assert_eq!(c.alloc(3, &b), Some(pfn));
        assert!(!c.contains(pfn));
    }

    #[test]
    fn cpus_use_their_own_lists() {
        let (c, b) = (PageCache::new(), buddy(64));
        let (p0, p1) = (c.alloc(0, &b).unwrap(), c.alloc(1, &b).unwrap());
        assert_eq!((p0, p1), (0, BATCH), "CPU 1 took its own batch");
        c.dealloc(1, p0, &b);
        assert_eq!(c.alloc(1, &b), Some(p0));
        assert_eq!(c.alloc(LISTS + 1, &b), Some(BATCH + 1), "CPU LISTS + 1 shares CPU 1's list");
    }

    #[test]
    fn a_list_longer_than_high_gives_its_oldest_batch_back() {
        let total = 2 * HIGH;
        let (c, b) = (PageCache::new(), buddy(total));
        let pages: Vec<_> = (0..HIGH + 1).map(|_| b.lock().alloc(1).unwrap()).collect();
        for &pfn in &pages {
            c.dealloc(0, pfn, &b);
        }
        assert_eq!(cached(&c, &b), (HIGH + 1 - BATCH, total - (HIGH + 1) + BATCH));
        assert!(pages[..BATCH].iter().all(|&p| !c.contains(p)), "the oldest went back");
        assert!(pages[BATCH..].iter().all(|&p| c.contains(p)));
    }

    #[test]
    fn when_the_allocator_runs_dry_the_lists_are_drained() {
        let (c, b) = (PageCache::new(), buddy(BATCH));
        // CPU 0 caches every page, then frees one; CPU 1 still gets it.
        let pfn = c.alloc(0, &b).unwrap();
        assert_eq!(cached(&c, &b), (BATCH - 1, 0));
        c.dealloc(0, pfn, &b);
        let got: Vec<_> = (0..BATCH).map(|_| c.alloc(1, &b).unwrap()).collect();
        assert_eq!(got.len(), BATCH);
        assert_eq!(c.alloc(1, &b), None, "every page is in use");
        assert_eq!(cached(&c, &b), (0, 0));
    }
}
