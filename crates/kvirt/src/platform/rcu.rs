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
//! point) before the panic goes on to whoever ran the batch.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::RcuCallback;

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

        fn rcu_read_unlock(&self) {
            self.$field.read_unlock();
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
        Self { readers: AtomicUsize::new(0), queue: spin::Mutex::new(Vec::new()) }
    }

    /// Enters a read-side section.
    pub fn read_lock(&self) {
        self.readers.fetch_add(1, Ordering::SeqCst);
    }

    /// Leaves a read-side section; the last reader out runs what is queued.
    pub fn read_unlock(&self) {
        if self.readers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.run_if_quiescent();
        }
    }

    /// Queues `callback`, or runs it now if no reader is active.
    pub fn call(&self, callback: RcuCallback) {
        self.queue.lock().push(RcuCallbackBox(callback));
        self.run_if_quiescent();
    }

    /// Runs every queued callback if no reader is active now. A callback
    /// queued while readers are active runs when the last one leaves.
    pub fn barrier(&self) {
        self.run_if_quiescent();
    }

    fn run_if_quiescent(&self) {
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
                callback();
            }
        }
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
            self.rcu.queue.lock().extend(&mut self.batch);
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
        rcu.read_unlock();
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
        let unlock = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rcu.read_unlock()));
        assert!(unlock.is_err(), "the panic goes on to whoever ran the batch");
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the callback before the panicking one ran");
        rcu.barrier();
        assert_eq!(ran.load(Ordering::SeqCst), 3, "the callbacks after it ran at the next quiescent point");
        assert!(rcu.queue.lock().is_empty());
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
