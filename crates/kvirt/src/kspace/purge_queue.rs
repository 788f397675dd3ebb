//! The lazy-purge protocol, apart from what is purged.
//!
//! A [`PurgeQueue`] holds things that were unmapped but may still be cached
//! in some CPU's TLB, so that one TLB invalidation can serve many of them.
//! Its one rule is the guarantee of lazy purging:
//!
//! > **Nothing leaves the queue to be released except after a flush that
//! > covers it.**
//!
//! ```text
//!   push(a) ─┐                      purge()
//!   push(b) ─┼─▶ [ a b c ]  ──take all, under the lock──▶ [ a b c ]
//!   push(c) ─┘       │                                        │
//!                    ▼                                        ▼
//!                 [ ] (new pushes land here)      flush(&[a b c]), then
//!                                                 release([a b c])
//! ```
//!
//! Why the rule holds: an item enters the queue only by `push` and leaves
//! only by `purge`, which takes the whole queue under its lock, hands the
//! taken items to `flush`, and only when `flush` has returned gives them
//! to `release`. An item pushed while another purge flushes is not in that
//! purge's batch (the batch was taken before), so it waits for a later
//! purge and its own flush. A panic in `flush` leaks the batch rather than
//! release it unflushed.
//!
//! Two purges may run at once, each with its own batch, and a purge that
//! finds the queue empty returns at once: so when `purge` returns, what was
//! queued before it has been released or is being released by a purge on
//! another CPU. Nothing here waits for another CPU, so a `release` may
//! push (a frame's drop hook may drop an area) and even purge again.
//!
//! The loom test (`tests/loom_purge.rs`, built with `--cfg loom`) runs this
//! very code over loom's mutex, with a model TLB that fails the test when
//! something is reused while a CPU still caches it.

use alloc::vec::Vec;
use core::mem::ManuallyDrop;

#[cfg(loom)]
use loom::sync::Mutex;
#[cfg(not(loom))]
use spin::Mutex;

/// Items waiting for a TLB flush (see the module documentation).
#[derive(Debug)]
pub struct PurgeQueue<T> {
    items: Mutex<Vec<T>>,
}

impl<T> Default for PurgeQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PurgeQueue<T> {
    /// An empty queue.
    #[must_use]
    pub fn new() -> Self {
        Self { items: Mutex::new(Vec::new()) }
    }

    #[cfg(not(loom))]
    fn lock(&self) -> spin::MutexGuard<'_, Vec<T>> {
        self.items.lock()
    }

    #[cfg(loom)]
    fn lock(&self) -> loom::sync::MutexGuard<'_, Vec<T>> {
        self.items.lock().unwrap()
    }

    /// Queues `item`.
    pub fn push(&self, item: T) {
        self.lock().push(item);
    }

    /// Takes every queued item; if there were any, calls `flush` with them
    /// and then `release`. Returns how many items it purged.
    pub fn purge(&self, flush: impl FnOnce(&[T]), release: impl FnOnce(Vec<T>)) -> usize {
        // Until `flush` has returned, a CPU may still reach the items: if
        // it unwinds they are leaked, not released.
        let batch = ManuallyDrop::new(core::mem::take(&mut *self.lock()));
        if batch.is_empty() {
            return 0;
        }
        flush(&batch);
        let batch = ManuallyDrop::into_inner(batch);
        let purged = batch.len();
        release(batch);
        purged
    }

    /// Runs `f` on the queued items, with the queue locked.
    pub fn with_pending<R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        f(&self.lock())
    }
}
