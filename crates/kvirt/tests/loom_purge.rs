//! Model checking of the lazy-purge protocol with loom.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p kvirt --release --test
//! loom_purge`. The test drives the library's own queue
//! (`kvirt::kspace::purge_queue::PurgeQueue`, over loom's mutex under
//! `--cfg loom`) against a model machine:
//!
//! - an MMU with one page table entry per page and one CPU's TLB, whose
//!   walk-and-fill is atomic (a lock), as on hardware;
//! - a free pool that pages go to when the queue releases them;
//! - a reuser that takes a page from the pool and fails the test if any
//!   TLB still caches it: the guarantee under test is that no page is
//!   reused before a flush that covers it.
//!
//! Loom runs every interleaving of a CPU that walks (caching what it
//! finds), CPUs that unmap and queue pages and purge, and the reuser. A
//! queue that released before flushing, or skipped the flush, lets the
//! reuser see a cached page in some interleaving.
#![cfg(loom)]

use kvirt::kspace::purge_queue::PurgeQueue;
use loom::sync::{Arc, Mutex};
use loom::thread;

/// Pages of the model.
const PAGES: usize = 2;

/// The model MMU: a page table entry and one CPU's cached translation per
/// page.
#[derive(Default)]
struct Mmu {
    mapped: [bool; PAGES],
    cached: [bool; PAGES],
}

/// The machine the queue runs on.
struct Machine {
    mmu: Mutex<Mmu>,
    queue: PurgeQueue<usize>,
    free: Mutex<Vec<usize>>,
    reused: Mutex<usize>,
}

impl Machine {
    fn new() -> Arc<Self> {
        Arc::new(Machine {
            mmu: Mutex::new(Mmu { mapped: [true; PAGES], cached: [false; PAGES] }),
            queue: PurgeQueue::new(),
            free: Mutex::new(Vec::new()),
            reused: Mutex::new(0),
        })
    }

    /// A CPU touches `page`: the walk caches the translation if the entry
    /// is there.
    fn touch(&self, page: usize) {
        let mut mmu = self.mmu.lock().unwrap();
        if mmu.mapped[page] {
            mmu.cached[page] = true;
        }
    }

    /// A lazy drop: unmap at once, queue for the purge.
    fn drop_lazily(&self, page: usize) {
        self.mmu.lock().unwrap().mapped[page] = false;
        self.queue.push(page);
    }

    /// A purge: flush what the batch covers on every CPU, then release it
    /// to the free pool.
    fn purge(&self) {
        self.queue.purge(
            |batch| {
                let mut mmu = self.mmu.lock().unwrap();
                for &page in batch {
                    mmu.cached[page] = false;
                }
            },
            |batch| self.free.lock().unwrap().extend(batch),
        );
    }

    /// The reuser: a page taken from the free pool must be cached nowhere.
    fn reuse(&self) {
        let page = self.free.lock().unwrap().pop();
        if let Some(page) = page {
            assert!(!self.mmu.lock().unwrap().cached[page], "page {page} reused while a TLB caches it");
            *self.reused.lock().unwrap() += 1;
        }
    }
}

/// One page: a CPU walks it while another drops it lazily and purges, and
/// a third reuses whatever the pool holds.
#[test]
fn no_page_is_reused_before_a_flush_covers_it() {
    loom::model(|| {
        let m = Machine::new();
        let walker = {
            let m = m.clone();
            thread::spawn(move || m.touch(0))
        };
        let dropper = {
            let m = m.clone();
            thread::spawn(move || {
                m.drop_lazily(0);
                m.purge();
            })
        };
        let reuser = {
            let m = m.clone();
            thread::spawn(move || m.reuse())
        };
        for t in [walker, dropper, reuser] {
            t.join().unwrap();
        }
        m.reuse();
    });
}

/// Two pages dropped and purged on two CPUs at once: a page queued while
/// the other CPU's purge flushes is not released by that purge unflushed.
#[test]
fn concurrent_purges_release_only_what_they_flushed() {
    loom::model(|| {
        let m = Machine::new();
        // Both pages are cached before anything is dropped.
        m.touch(0);
        m.touch(1);
        let droppers: Vec<_> = (0..PAGES)
            .map(|page| {
                let m = m.clone();
                thread::spawn(move || {
                    m.drop_lazily(page);
                    m.purge();
                })
            })
            .collect();
        let reuser = {
            let m = m.clone();
            thread::spawn(move || {
                m.reuse();
                m.reuse();
            })
        };
        for t in droppers {
            t.join().unwrap();
        }
        reuser.join().unwrap();
        // Every page was released, by the purge that flushed it: none is
        // left queued or lost.
        assert!(m.queue.with_pending(<[_]>::is_empty));
        assert_eq!(m.free.lock().unwrap().len() + *m.reused.lock().unwrap(), PAGES);
    });
}

/// A purge that finds the queue empty because another CPU took the batch
/// still returns only after that batch was flushed: a CPU that purges and
/// then reads the page must not find it cached.
#[test]
fn purge_returns_only_after_every_earlier_drop_is_flushed() {
    loom::model(|| {
        let m = Machine::new();
        m.touch(0);
        m.drop_lazily(0);
        let other = {
            let m = m.clone();
            thread::spawn(move || m.purge())
        };
        m.purge();
        assert!(
            !m.mmu.lock().unwrap().cached[0],
            "purge returned while a TLB still caches a page dropped before it"
        );
        other.join().unwrap();
    });
}
