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
//! A second rule makes `purge` mean what a caller expects of it:
//!
//! > **When `purge` returns, everything pushed before the call has been
//! > flushed.**
//!
//! Taking a batch and flushing it happen under a second lock, `flushing`:
//! a purge that finds the queue empty because another CPU took the batch
//! still waits until that CPU's flush has returned. (Without it, a CPU
//! could purge, tell another CPU its dropped area is gone, and that CPU
//! could still reach it through its TLB: the demo kernel's stale-TLB check
//! caught exactly this.) The release runs after `flushing` is let go, so
//! purges of one queue flush one at a time but release in parallel, and a
//! `release` may push (a frame's drop hook may drop an area) and even
//! purge again without waiting for itself. What another CPU's purge took
//! may therefore still be being released when `purge` returns; it is
//! unreachable from every TLB by then.
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
    /// Held from taking a batch until its flush has returned.
    flushing: Mutex<()>,
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
        Self { items: Mutex::new(Vec::new()), flushing: Mutex::new(()) }
    }

    #[cfg(not(loom))]
    fn lock(&self) -> spin::MutexGuard<'_, Vec<T>> {
        self.items.lock()
    }

    #[cfg(loom)]
    fn lock(&self) -> loom::sync::MutexGuard<'_, Vec<T>> {
        self.items.lock().unwrap()
    }

    #[cfg(not(loom))]
    fn lock_flushing(&self) -> spin::MutexGuard<'_, ()> {
        self.flushing.lock()
    }

    #[cfg(loom)]
    fn lock_flushing(&self) -> loom::sync::MutexGuard<'_, ()> {
        self.flushing.lock().unwrap()
    }

    /// Queues `item`.
    pub fn push(&self, item: T) {
        self.lock().push(item);
    }

    /// Takes every queued item; if there were any, calls `flush` with them
    /// and then `release`. Returns how many items it purged. Returns only
    /// once everything pushed before the call has been flushed, by this
    /// purge or by one that took it first.
    pub fn purge(&self, flush: impl FnOnce(&[T]), release: impl FnOnce(Vec<T>)) -> usize {
        let batch = {
            let _flushing = self.lock_flushing();
            // Until `flush` has returned, a CPU may still reach the items:
            // if it unwinds they are leaked, not released.
            let batch = ManuallyDrop::new(core::mem::take(&mut *self.lock()));
            if batch.is_empty() {
                return 0;
            }
            flush(&batch);
            batch
        };
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
