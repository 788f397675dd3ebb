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
//!                    (+ its allowance) gives its BATCH oldest pages back
//!   keep(n):         the list may hold n pages more than HIGH, until n
//!                    pages have been allocated from it
//!   anything else:   the buddy allocator, as before
//! ```
//!
//! The allowance is for bursts. A lazy purge frees thousands of frames
//! on one CPU at once, which that CPU's next areas will want back; with
//! only `HIGH` pages kept, nearly all of them went to the buddy allocator
//! and came back from it a batch at a time, and two CPUs churning areas
//! on one space met on its lock and its lines (in `perf`, the buddy
//! allocator's share of the time doubled against two spaces apart). The
//! purge announces its batch (`keep`), the list holds it, and each page
//! allocated from the list uses up one page of the allowance, so a list
//! grows past `HIGH` only by what a burst freed and its CPU has not taken
//! back yet: when the burst is over (`settle`), the allowance shrinks to
//! what the list holds beyond `HIGH`, so frees the purge announced but did
//! not make (frames still referenced elsewhere, untracked mappings) leave
//! no room behind. Linux tunes its per-CPU lists' high mark up after many
//! frees for the same reason. The allowance is capped (`max_extra`: a
//! sixteenth of memory a list, and at most `MAX_EXTRA` pages), the room
//! for it is reserved when it is granted (a free never grows a list's
//! vector: no heap allocation under its lock; without the memory, the
//! allowance is what the vector has room for), and a drain forgets it. An
//! allocation that finds no page drains every list and allocates with
//! all of them locked (`drain_and_alloc`), so no page a burst keeps can
//! be missed by it.
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
use crate::inv::Inv;

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
/// The most pages a list keeps beyond `HIGH` after a burst of frees
/// (`PageCache::keep`): 32 MiB of 4 KiB pages, whatever the memory.
const MAX_EXTRA: usize = 8192;

/// One CPU's list.
#[derive(Debug)]
struct List {
    /// Page frame numbers; the most recently freed last. Invariant: never
    /// longer than `HIGH + extra` between calls, and its capacity is at
    /// least `HIGH + extra + 1`, so a free never grows it (no heap
    /// allocation under the lock).
    pages: Vec<usize>,
    /// Pages beyond `HIGH` the list may hold: what a burst of frees on this
    /// CPU announced ([`PageCache::keep`]) and allocations here have not
    /// used up since. Invariant: at most the cache's `max_extra`.
    extra: usize,
}

impl List {
    /// Gives every page back to `buddy` and forgets the allowance.
    fn give_back(&mut self, buddy: &mut BuddyAllocator) {
        self.extra = 0;
        for pfn in self.pages.drain(..) {
            buddy.dealloc(pfn, 1);
        }
    }
}

/// The per-CPU lists of one allocator (see the module documentation).
#[derive(Debug)]
pub(super) struct PageCache {
    lists: [CachePadded<spin::Mutex<List>>; LISTS],
    /// The most a list may hold beyond `HIGH` after a burst.
    max_extra: usize,
}

impl PageCache {
    /// Lists for an allocator of `total_pages` pages.
    pub(super) fn new(total_pages: usize) -> Self {
        Self {
            lists: core::array::from_fn(|_| {
                CachePadded::new(spin::Mutex::new(List { pages: Vec::with_capacity(HIGH + 1), extra: 0 }))
            }),
            max_extra: (total_pages / (2 * LISTS)).min(MAX_EXTRA),
        }
    }

    /// One free page for `cpu`, or `None` if there is no free page at all.
    pub(super) fn alloc(&self, cpu: usize, buddy: &spin::Mutex<BuddyAllocator>) -> Option<usize> {
        let mut list = self.lists[cpu % LISTS].lock();
        if list.pages.is_empty() {
            let mut buddy = buddy.lock();
            list.pages.extend(core::iter::from_fn(|| buddy.alloc(1)).take(BATCH));
            // Taken in address order; hand out the lowest first.
            list.pages.reverse();
        }
        if let Some(pfn) = list.pages.pop() {
            list.extra = list.extra.saturating_sub(1);
            return Some(pfn);
        }
        drop(list);
        self.drain_and_alloc(buddy, 1)
    }

    /// Frees one page, on `cpu`'s list.
    pub(super) fn dealloc(&self, cpu: usize, pfn: usize, buddy: &spin::Mutex<BuddyAllocator>) {
        let mut list = self.lists[cpu % LISTS].lock();
        debug_assert!(list.pages.len() < list.pages.capacity(), "a free would grow a page list");
        list.pages.push(pfn);
        if list.pages.len() > HIGH + list.extra {
            let mut buddy = buddy.lock();
            for pfn in list.pages.drain(..BATCH) {
                buddy.dealloc(pfn, 1);
            }
        }
    }

    /// Lets `cpu`'s list keep up to `pages` more freed pages than `HIGH`
    /// (at most `max_extra` in all), until as many are allocated on that
    /// CPU: what a lazy purge announces before it frees a batch of frames
    /// that the same CPU's next areas will want back.
    pub(super) fn keep(&self, cpu: usize, pages: usize) {
        self.keep_with(cpu, pages, |len| {
            let mut bigger = Vec::new();
            let _ = bigger.try_reserve_exact(len);
            bigger
        });
    }

    /// [`keep`](Self::keep), with the vector that would hold `len` pages
    /// made by `reserve`, which may give less room (none when the heap has
    /// no memory): the allowance is then what the list has room for.
    fn keep_with(&self, cpu: usize, pages: usize, reserve: impl FnOnce(usize) -> Vec<usize>) {
        let slot = &self.lists[cpu % LISTS];
        let (extra, capacity) = {
            let list = slot.lock();
            (list.extra.saturating_add(pages).min(self.max_extra), list.pages.capacity())
        };
        // The room for it, made outside the lock: the heap may take its
        // memory from this very allocator. Without the memory (a purge may
        // run because memory is short) the allowance is what the vector has
        // room for already.
        let mut bigger = if capacity <= HIGH + extra { reserve(HIGH + extra + 1) } else { Vec::new() };
        let mut list = slot.lock();
        if bigger.capacity() > list.pages.capacity() {
            bigger.extend_from_slice(&list.pages);
            core::mem::swap(&mut list.pages, &mut bigger);
        }
        let room = list.pages.capacity() - HIGH - 1;
        list.extra = list.extra.max(extra.min(room));
        drop(list);
        // The old vector (or the unused new one), freed unlocked.
        drop(bigger);
    }

    /// Ends a burst on `cpu`'s list (after the frees [`keep`](Self::keep)
    /// announced): the allowance shrinks to what the list holds beyond
    /// `HIGH`, so frees the burst announced but did not make (a frame
    /// still referenced elsewhere, an untracked mapping) leave no room for
    /// later ones.
    pub(super) fn settle(&self, cpu: usize) {
        let mut list = self.lists[cpu % LISTS].lock();
        list.extra = list.extra.min(list.pages.len().saturating_sub(HIGH));
    }

    /// Gives every cached page back to the buddy allocator and takes
    /// `count` contiguous pages from it, every list locked throughout: a
    /// page another CPU frees meanwhile waits for the lock, instead of
    /// landing on a list the drain has passed while the allocation fails.
    /// The last try of an allocation that found no page.
    pub(super) fn drain_and_alloc(&self, buddy: &spin::Mutex<BuddyAllocator>, count: usize) -> Option<usize> {
        let mut lists = self.lock_all();
        let mut buddy = buddy.lock();
        for list in &mut lists {
            list.give_back(&mut buddy);
        }
        buddy.alloc(count)
    }

    /// Gives every cached page back to the buddy allocator, and forgets
    /// every list's allowance beyond `HIGH`.
    pub(super) fn drain(&self, buddy: &spin::Mutex<BuddyAllocator>) {
        for list in &self.lists {
            let mut list = list.lock();
            list.give_back(&mut buddy.lock());
        }
    }

    /// Runs `f` with the number of cached pages and the allocator, with no
    /// page moving between the two meanwhile.
    pub(super) fn with_all<R>(
        &self,
        buddy: &spin::Mutex<BuddyAllocator>,
        f: impl FnOnce(usize, &BuddyAllocator) -> R,
    ) -> R {
        let lists = self.lock_all();
        let cached = lists.iter().map(|l| l.pages.len()).sum();
        let buddy = buddy.lock();
        f(cached, &buddy)
    }

    /// Every list locked, in list order: the order of every path that
    /// takes more than one list, each before the buddy allocator. The
    /// guards are in an array, not a `Vec`, so a caller that then locks the
    /// allocator frees no heap memory under its lock when they go.
    fn lock_all(&self) -> [spin::MutexGuard<'_, List>; LISTS] {
        core::array::from_fn(|i| self.lists[i].lock())
    }

    /// How many pages `cpu`'s list holds.
    #[cfg(test)]
    pub(super) fn len(&self, cpu: usize) -> usize {
        self.lists[cpu % LISTS].lock().pages.len()
    }

    /// Whether page `pfn` is on a list.
    #[cfg(test)]
    fn contains(&self, pfn: usize) -> bool {
        self.lists.iter().any(|l| l.lock().pages.contains(&pfn))
    }
}

impl Inv for PageCache {
    /// Every list's invariant (see `List`): its allowance within the cap,
    /// no longer than `HIGH` and its allowance, and room for one more
    /// page.
    fn check(&self) -> Result<(), &'static str> {
        for list in &self.lists {
            let list = list.lock();
            if list.extra > self.max_extra {
                return Err("a free-page list's allowance is over its cap");
            }
            if list.pages.len() > HIGH + list.extra {
                return Err("a free-page list is longer than HIGH and its allowance");
            }
            if list.pages.capacity() <= HIGH + list.extra {
                return Err("a free-page list has no room reserved for its allowance");
            }
        }
        Ok(())
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

    /// Lists over an allocator of `pages` free pages, in a memory large
    /// enough for any allowance these tests grant.
    fn setup(pages: usize) -> (PageCache, spin::Mutex<BuddyAllocator>) {
        (PageCache::new(1 << 20), buddy(pages))
    }

    fn cached(c: &PageCache, b: &spin::Mutex<BuddyAllocator>) -> (usize, usize) {
        c.with_all(b, |cached, buddy| (cached, buddy.free_pages()))
    }

    #[test]
    fn an_empty_list_takes_a_batch_and_hands_out_the_lowest_page_first() {
        let (c, b) = setup(64);
        assert_eq!(c.alloc(0, &b), Some(0));
        assert_eq!(c.alloc(0, &b), Some(1));
        assert_eq!(cached(&c, &b), (BATCH - 2, 64 - BATCH));
    }

    #[test]
    fn a_freed_page_is_the_next_one_handed_out_on_that_cpu() {
        let (c, b) = setup(64);
        let pfn = c.alloc(3, &b).unwrap();
        c.dealloc(3, pfn, &b);
        assert!(c.contains(pfn));
        assert_eq!(c.alloc(3, &b), Some(pfn));
        assert!(!c.contains(pfn));
    }

    #[test]
    fn cpus_use_their_own_lists() {
        let (c, b) = setup(64);
        let (p0, p1) = (c.alloc(0, &b).unwrap(), c.alloc(1, &b).unwrap());
        assert_eq!((p0, p1), (0, BATCH), "CPU 1 took its own batch");
        c.dealloc(1, p0, &b);
        assert_eq!(c.alloc(1, &b), Some(p0));
        assert_eq!(c.alloc(LISTS + 1, &b), Some(BATCH + 1), "CPU LISTS + 1 shares CPU 1's list");
    }

    #[test]
    fn a_list_longer_than_high_gives_its_oldest_batch_back() {
        let total = 2 * HIGH;
        let (c, b) = setup(total);
        let pages = free_fresh(&c, &b, 0, HIGH + 1);
        assert_eq!(cached(&c, &b), (HIGH + 1 - BATCH, total - (HIGH + 1) + BATCH));
        assert!(pages[..BATCH].iter().all(|&p| !c.contains(p)), "the oldest went back");
        assert!(pages[BATCH..].iter().all(|&p| c.contains(p)));
    }

    /// Frees `n` pages on `cpu`, taken straight from the buddy allocator.
    fn free_fresh(c: &PageCache, b: &spin::Mutex<BuddyAllocator>, cpu: usize, n: usize) -> Vec<usize> {
        let pages: Vec<_> = (0..n).map(|_| b.lock().alloc(1).unwrap()).collect();
        for &pfn in &pages {
            c.dealloc(cpu, pfn, b);
        }
        pages
    }

    #[test]
    fn a_burst_announced_by_keep_stays_on_the_list_until_it_is_used() {
        let total = 4 * HIGH;
        let (c, b) = setup(total);
        c.keep(0, 300);
        free_fresh(&c, &b, 0, HIGH + 300);
        assert_eq!(cached(&c, &b), (HIGH + 300, total - HIGH - 300), "nothing went back");
        // 300 pages handed out use the allowance up: the next free over
        // HIGH gives a batch back again.
        for _ in 0..300 {
            c.alloc(0, &b).unwrap();
        }
        assert_eq!(cached(&c, &b).0, HIGH);
        free_fresh(&c, &b, 0, 1);
        assert_eq!(cached(&c, &b).0, HIGH + 1 - BATCH);
    }

    #[test]
    fn the_allowance_is_the_list_s_own() {
        let total = 4 * HIGH;
        let (c, b) = setup(total);
        c.keep(0, 300);
        free_fresh(&c, &b, 1, HIGH + 1);
        assert_eq!(cached(&c, &b).0, HIGH + 1 - BATCH, "CPU 1's list keeps HIGH pages only");
    }

    #[test]
    fn the_allowance_is_capped_by_the_memory_size() {
        let total = 4 * HIGH;
        // Memory of 16 * 2 * LISTS pages: an allowance of 16 a list at most.
        let (c, b) = (PageCache::new(16 * 2 * LISTS), buddy(total));
        c.keep(0, 300);
        free_fresh(&c, &b, 0, HIGH + 16);
        assert_eq!(cached(&c, &b).0, HIGH + 16);
        free_fresh(&c, &b, 0, 1);
        assert_eq!(cached(&c, &b).0, HIGH + 17 - BATCH, "past the cap a batch goes back");
    }

    #[test]
    fn a_drain_forgets_the_allowance() {
        let total = 4 * HIGH;
        let (c, b) = setup(total);
        c.keep(0, 300);
        free_fresh(&c, &b, 0, HIGH + 100);
        c.drain(&b);
        assert_eq!(cached(&c, &b), (0, total));
        free_fresh(&c, &b, 0, HIGH + 1);
        assert_eq!(cached(&c, &b).0, HIGH + 1 - BATCH);
    }

    #[test]
    fn keep_reserves_the_room_it_grants() {
        let c = PageCache::new(1 << 20);
        c.keep(2, 1000);
        let list = c.lists[2].lock();
        assert_eq!(list.extra, 1000);
        assert!(list.pages.capacity() > HIGH + list.extra, "a free must never grow the vector");
    }

    #[test]
    fn without_heap_memory_a_burst_keeps_only_the_room_the_list_has() {
        let (c, b) = setup(4 * (HIGH + 1000));
        // An earlier burst of 100 left room beyond `HIGH` (settling shrinks
        // the allowance, not the vector).
        c.keep(1, 100);
        c.settle(1);
        // No memory for a bigger vector: the allowance is the room there
        // is, and a free never grows the vector under the lock.
        let room = {
            let list = c.lists[1].lock();
            assert_eq!(list.extra, 0, "settled");
            list.pages.capacity() - (HIGH + 1)
        };
        assert!((100..1000).contains(&room), "the earlier burst left room for some of this one: {room}");
        let mut asked = 0;
        c.keep_with(1, 1000, |len| {
            asked = len;
            Vec::new()
        });
        assert_eq!(asked, HIGH + 1000 + 1, "the room asked for is the whole burst");
        let (extra, capacity) = {
            let list = c.lists[1].lock();
            (list.extra, list.pages.capacity())
        };
        assert_eq!(extra, room, "the allowance is the room the vector has");
        free_fresh(&c, &b, 1, HIGH + 1000);
        let list = c.lists[1].lock();
        assert_eq!(list.pages.capacity(), capacity, "no free grew the vector");
        assert!(list.pages.len() <= HIGH + room + 1, "{} pages kept", list.pages.len());
        drop(list);
        c.check().unwrap();
    }

    #[test]
    fn settling_a_burst_leaves_only_the_room_it_used() {
        let total = 4 * HIGH;
        let (c, b) = setup(total);
        c.keep(0, 300);
        free_fresh(&c, &b, 0, HIGH + 100);
        c.settle(0);
        assert_eq!(c.lists[0].lock().extra, 100, "the 200 pages announced and not freed are no room");
        free_fresh(&c, &b, 0, 1);
        assert_eq!(cached(&c, &b).0, HIGH + 101 - BATCH);
    }

    #[test]
    fn a_tiny_memory_gives_no_allowance() {
        let (c, b) = (PageCache::new(15), buddy(4 * HIGH));
        c.keep(0, usize::MAX);
        free_fresh(&c, &b, 0, HIGH + 1);
        assert_eq!(cached(&c, &b).0, HIGH + 1 - BATCH);
    }

    #[test]
    fn several_pages_are_found_on_the_lists_when_the_allocator_has_none() {
        let (c, b) = setup(BATCH);
        c.keep(0, 10);
        let pfn = c.alloc(0, &b).unwrap();
        assert_eq!(cached(&c, &b), (BATCH - 1, 0), "every other page is on CPU 0's list");
        let run = c.drain_and_alloc(&b, 4).expect("four pages from the drained list");
        assert!(run % 4 == 0 && !(run..run + 4).contains(&pfn));
        assert_eq!(cached(&c, &b), (0, BATCH - 1 - 4));
        assert_eq!(c.lists[0].lock().extra, 0, "a drain forgets the allowance");
    }

    #[cfg(feature = "std")]
    #[test]
    fn keep_alloc_dealloc_and_drain_racing_on_one_list_keep_its_invariants() {
        extern crate std;
        let total = 4096;
        let (c, b) = setup(total);
        std::thread::scope(|s| {
            for t in 0..4usize {
                let (c, b) = (&c, &b);
                s.spawn(move || {
                    // CPUs 0, LISTS, 2 * LISTS ...: all on list 0.
                    let cpu = t * LISTS;
                    let mut held = Vec::with_capacity(2048);
                    for i in 0..3000usize {
                        match (i * 7 + t) % 11 {
                            0 => c.keep(cpu, [0, 1, 500, usize::MAX][i % 4]),
                            1 if t == 0 && i % 97 == 0 => c.drain(b),
                            1 if i % 5 == 0 => c.settle(cpu),
                            2..=5 => {
                                if let Some(p) = c.alloc(cpu, b) {
                                    held.push(p);
                                }
                            }
                            _ => {
                                if let Some(p) = held.pop() {
                                    c.dealloc(cpu, p, b);
                                }
                            }
                        }
                        if let Err(clause) = c.check() {
                            panic!("{clause}");
                        }
                    }
                    for p in held {
                        c.dealloc(cpu, p, b);
                    }
                });
            }
        });
        let (cached_pages, free) = cached(&c, &b);
        assert_eq!(cached_pages + free, total, "no page lost or counted twice");
        c.drain(&b);
        assert_eq!(cached(&c, &b), (0, total));
    }

    #[test]
    fn the_invariant_check_names_each_broken_clause() {
        // A list after a burst, broken by `f` (as no call ever leaves it).
        let broken = |f: fn(&mut List)| {
            let (c, b) = setup(4 * HIGH);
            c.keep(0, 300);
            free_fresh(&c, &b, 0, HIGH + 300);
            assert_eq!(c.check(), Ok(()));
            f(&mut c.lists[0].lock());
            c.check()
        };
        assert_eq!(broken(|l| l.extra = 1 << 30), Err("a free-page list's allowance is over its cap"));
        assert_eq!(broken(|l| l.extra = 0), Err("a free-page list is longer than HIGH and its allowance"));
        assert_eq!(
            broken(|l| l.pages.shrink_to_fit()),
            Err("a free-page list has no room reserved for its allowance")
        );
    }

    #[test]
    fn when_the_allocator_runs_dry_the_lists_are_drained() {
        let (c, b) = setup(BATCH);
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
