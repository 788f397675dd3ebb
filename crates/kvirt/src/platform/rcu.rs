//! A counting RCU for kernels that have none of their own.
//!
//! Readers increment a shared counter on entry and decrement it on exit;
//! callbacks queued while any reader is active run when the counter next
//! drops to zero. It is correct on any number of CPUs (a callback runs only
//! when no read-side section is active at all, which is stronger than a
//! grace period), but readers share one cache line and a steady stream of
//! overlapping readers postpones callbacks, so it suits small kernels and
//! the demo kernel rather than large SMP systems.
//!
//! A callback that panics does not lose the others: those taken with it
//! that had not run yet go back to the queue (to run at the next quiescent
//! point) before the panic goes on to whoever ran the batch, in
//! [`call`](CountingRcu::call) or [`barrier`](CountingRcu::barrier). In
//! [`read_unlock`](CountingRcu::read_unlock), which must not unwind, it
//! aborts the process instead.
//!
//! [`barrier`](CountingRcu::barrier) waits (spinning) until every callback
//! queued before it has run, on whichever CPU: callbacks run one batch at
//! a time, in queue order, and are counted as they finish (a panicking
//! one counts as run). It must not be called inside a read-side section
//! or from a callback, either of which would wait for itself.
//!
//! Whoever finds another CPU running a batch leaves a note (`wanted`)
//! rather than wait; the runner looks again after letting go, so a reader
//! that leaves while the runner is deciding that readers are still active
//! is not missed (without the note, the callbacks would wait for the next
//! reader or call).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::RcuCallback;
use crate::abort::AbortOnUnwind;

/// Writes the four RCU methods of a [`Platform`](super::Platform)
/// implementation as calls to its [`CountingRcu`] field `$field`:
/// `kvirt::counting_rcu_methods!(rcu);` inside the `impl` block. The
/// implementation's safety comment still owes contract 4, which
/// `CountingRcu` meets as its documentation says.
#[macro_export]
macro_rules! counting_rcu_methods {
    ($field:ident) => {
        fn rcu_read_lock(&self) {
            self.$field.read_lock();
        }

        unsafe fn rcu_read_unlock(&self) {
            // SAFETY: the caller's promise (it began the section it ends)
            // is `read_unlock`'s.
            unsafe { self.$field.read_unlock() };
        }

        fn call_rcu(&self, callback: $crate::platform::RcuCallback) {
            self.$field.call(callback);
        }

        fn rcu_barrier(&self) {
            self.$field.barrier();
        }
    };
}

/// A counting RCU (see the module documentation).
#[derive(Debug, Default)]
pub struct CountingRcu {
    readers: AtomicUsize,
    queue: spin::Mutex<Vec<RcuCallbackBox>>,
    /// Held while a batch runs: batches run one at a time, so callbacks
    /// finish in queue order.
    runner: spin::Mutex<()>,
    /// Set by whoever wanted to run callbacks while another held `runner`.
    wanted: AtomicBool,
    /// Callbacks queued so far.
    queued: AtomicUsize,
    /// Callbacks run so far (a panicking one included).
    completed: AtomicUsize,
}

struct RcuCallbackBox(RcuCallback);

impl core::fmt::Debug for RcuCallbackBox {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RcuCallback")
    }
}

impl CountingRcu {
    /// A new instance with no readers and no callbacks.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            readers: AtomicUsize::new(0),
            queue: spin::Mutex::new(Vec::new()),
            runner: spin::Mutex::new(()),
            wanted: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
        }
    }

    /// Enters a read-side section.
    pub fn read_lock(&self) {
        self.readers.fetch_add(1, Ordering::SeqCst);
    }

    /// Leaves a read-side section; the last reader out runs what is queued.
    ///
    /// # Safety
    ///
    /// The caller entered that section itself with [`read_lock`](Self::read_lock)
    /// and leaves it once: leaving a section someone else is in would let
    /// callbacks run, and free what that section reads, while it still
    /// reads it.
    ///
    /// # Aborts
    ///
    /// If a callback it runs panics. Ending a section must not unwind (the
    /// [`Platform`](super::Platform) contract, rule 5: kvirt ends its
    /// sections in the middle of its own work), and a callback queued
    /// through [`call`](Self::call) by code other than kvirt may panic.
    pub unsafe fn read_unlock(&self) {
        let before = self.readers.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "CountingRcu::read_unlock without read_lock");
        if before == 1 {
            let abort_on_unwind = AbortOnUnwind(
                "kvirt: an RCU callback panicked while CountingRcu::read_unlock ran it; aborting",
            );
            self.run_if_quiescent();
            core::mem::forget(abort_on_unwind);
        }
    }

    /// Queues `callback`, or runs it now if no reader is active.
    pub fn call(&self, callback: RcuCallback) {
        {
            let mut queue = self.queue.lock();
            queue.push(RcuCallbackBox(callback));
            self.queued.fetch_add(1, Ordering::SeqCst);
        }
        self.run_if_quiescent();
    }

    /// Waits until every callback queued before the call has run: runs
    /// them when no reader is active, or waits for whoever does.
    pub fn barrier(&self) {
        let target = self.queued.load(Ordering::SeqCst);
        loop {
            self.run_if_quiescent();
            if self.completed.load(Ordering::SeqCst) >= target {
                return;
            }
            core::hint::spin_loop();
        }
    }

    fn run_if_quiescent(&self) {
        self.wanted.store(true, Ordering::SeqCst);
        while self.wanted.load(Ordering::SeqCst) {
            // Another CPU (or this one, further up the stack: a callback
            // that queues one) is running a batch: it sees the note when
            // it lets go (see the module documentation).
            let Some(_runner) = self.runner.try_lock() else { return };
            self.wanted.store(false, Ordering::SeqCst);
            self.run_batches();
        }
    }

    /// Runs queued callbacks, batch after batch, while no reader is active.
    /// The caller holds `runner`.
    fn run_batches(&self) {
        loop {
            // The queue lock orders this check after the push of every
            // callback we take: a reader that entered after the push cannot
            // have seen the retired object (it was unreachable before the
            // push), so readers == 0 here means no one can still hold it.
            let batch = {
                let mut queue = self.queue.lock();
                if queue.is_empty() || self.readers.load(Ordering::SeqCst) != 0 {
                    return;
                }
                core::mem::take(&mut *queue)
            };
            let mut rest = Requeue { rcu: self, batch: batch.into_iter() };
            for RcuCallbackBox(callback) in &mut rest.batch {
                let _counted = Completed(&self.completed);
                callback();
            }
        }
    }
}

/// Counts a callback as run when dropped, after it returns or unwinds.
struct Completed<'a>(&'a AtomicUsize);

impl Drop for Completed<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The callbacks of a batch not run yet; dropped with some left only if a
/// callback unwinds, and then gives them back to the queue.
struct Requeue<'a> {
    rcu: &'a CountingRcu,
    batch: alloc::vec::IntoIter<RcuCallbackBox>,
}

impl Drop for Requeue<'_> {
    fn drop(&mut self) {
        if self.batch.len() != 0 {
            // Back at the front: they were queued before anything queued
            // since, and `barrier` counts on callbacks finishing in order.
            let mut queue = self.rcu.queue.lock();
            let later = core::mem::take(&mut *queue);
            queue.extend(&mut self.batch);
            queue.extend(later);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use core::sync::atomic::AtomicBool;

    #[test]
    fn callback_waits_for_active_reader() {
        let rcu = CountingRcu::new();
        let ran = Arc::new(AtomicBool::new(false));
        rcu.read_lock();
        let r = ran.clone();
        rcu.call(Box::new(move || r.store(true, Ordering::SeqCst)));
        assert!(!ran.load(Ordering::SeqCst));
        // SAFETY: this test entered the section above.
        unsafe { rcu.read_unlock() };
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_callback_leaves_the_others_queued_for_the_next_quiescent_point() {
        let rcu = CountingRcu::new();
        let ran = Arc::new(AtomicUsize::new(0));
        rcu.read_lock();
        for i in 0..4 {
            let ran = ran.clone();
            rcu.call(Box::new(move || {
                assert_ne!(i, 1, "the second callback panics");
                ran.fetch_add(1, Ordering::SeqCst);
            }));
        }
        // Leave the section with the callbacks still queued, so that
        // `barrier` (which may unwind, unlike `read_unlock`) runs them.
        rcu.readers.fetch_sub(1, Ordering::SeqCst);
        let barrier = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rcu.barrier()));
        assert!(barrier.is_err(), "the panic goes on to whoever ran the batch");
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the callback before the panicking one ran");
        rcu.barrier();
        assert_eq!(ran.load(Ordering::SeqCst), 3, "the callbacks after it ran at the next quiescent point");
        assert!(rcu.queue.lock().is_empty());
    }

    #[test]
    fn barrier_waits_for_a_reader_on_another_thread() {
        let rcu = Arc::new(CountingRcu::new());
        let ran = Arc::new(AtomicBool::new(false));
        let (entered, leave) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let reader = {
            let (rcu, entered, leave) = (rcu.clone(), entered.clone(), leave.clone());
            std::thread::spawn(move || {
                rcu.read_lock();
                entered.store(true, Ordering::SeqCst);
                while !leave.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                // SAFETY: this thread entered the section above.
                unsafe { rcu.read_unlock() };
            })
        };
        while !entered.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let r = ran.clone();
        rcu.call(Box::new(move || r.store(true, Ordering::SeqCst)));
        assert!(!ran.load(Ordering::SeqCst), "the reader is still inside");
        leave.store(true, Ordering::SeqCst);
        rcu.barrier();
        assert!(ran.load(Ordering::SeqCst), "barrier returned before the callback ran");
        reader.join().unwrap();
    }

    #[test]
    fn callback_runs_at_once_without_readers() {
        let rcu = CountingRcu::new();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        rcu.call(Box::new(move || r.store(true, Ordering::SeqCst)));
        assert!(ran.load(Ordering::SeqCst));
    }
}
