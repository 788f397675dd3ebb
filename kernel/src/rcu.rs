//! RCU with grace periods counted per CPU, for kvirt's deferred frees.
//!
//! The kernel has no preemption and its interrupt handlers never enter a
//! read-side section, so a section runs start to end on one CPU. Each CPU
//! keeps two numbers in its [`PerCpu`](crate::percpu::PerCpu):
//!
//! * `rcu_nesting`: how deep in read-side sections it is now;
//! * `rcu_quiescent`: how many outermost sections it has left. Leaving one
//!   is a quiescent state.
//!
//! [`Rcu::call`] queues a callback with a snapshot of every CPU's
//! `rcu_quiescent`. The callback may run once every online CPU has passed a
//! quiescent state since the snapshot: its count moved past the snapshot
//! (so the section it was in, if any, ended), or it is outside any section
//! now (so every section it had begun has ended). A section that begins
//! after the snapshot cannot reach what the caller unlinked before calling,
//! which is what kvirt's contract asks: the callback runs only after every
//! section that had begun before the call has ended.
//!
//! An idle CPU is outside any section and so never holds a grace period
//! up; a CPU that keeps entering sections passes a quiescent state at every
//! exit. Callbacks queue in order and snapshots only grow, so they become
//! ready in order: the queue runs from the front. Ready callbacks run at
//! the end of an outermost section, in [`Rcu::call`] and in
//! [`Rcu::barrier`], which waits until every callback queued before it has
//! run, on any CPU (callers are never inside a section or a callback,
//! either of which would wait for itself).
//!
//! All accesses are `SeqCst`: a CPU's increment of its nesting is ordered
//! before its section's loads of page-table entries, and a checker's read
//! of the nesting after the caller's unlinking stores.

use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kvirt::platform::RcuCallback;

use crate::percpu::{self, MAX_CPUS};

/// A queued callback and the quiescent counts it waits past.
struct Waiting {
    snapshot: [u64; MAX_CPUS],
    callback: RcuCallback,
}

/// The kernel's RCU (see the module documentation).
#[derive(Debug, Default)]
pub struct Rcu {
    queue: spin::Mutex<VecDeque<Waiting>>,
    /// Held by the CPU running callbacks: one at a time, so they complete
    /// in queue order (which [`barrier`](Self::barrier) counts on).
    runner: spin::Mutex<()>,
    /// Set by whoever wanted to run callbacks while another held `runner`:
    /// the runner looks again when it lets go, so a quiescent state
    /// reported while it was deciding is not missed.
    wanted: AtomicBool,
    /// Callbacks queued so far.
    queued: AtomicU64,
    /// Callbacks run so far (they run in queue order).
    completed: AtomicU64,
}

impl core::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Waiting")
    }
}

impl Rcu {
    /// An RCU with nothing queued.
    pub const fn new() -> Self {
        Self {
            queue: spin::Mutex::new(VecDeque::new()),
            runner: spin::Mutex::new(()),
            wanted: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        }
    }

    /// Enters a read-side section on this CPU.
    pub fn read_lock(&self) {
        percpu::this().rcu_nesting.fetch_add(1, Ordering::SeqCst);
    }

    /// Leaves the innermost read-side section; leaving the outermost one is
    /// a quiescent state, after which ready callbacks run.
    ///
    /// # Safety
    ///
    /// The caller entered that section itself with [`read_lock`](Self::read_lock)
    /// on this CPU and leaves it once: leaving a section another piece of
    /// code is in (kvirt's, around a page-table walk) would let what it
    /// reads be freed under it.
    pub unsafe fn read_unlock(&self) {
        let cpu = percpu::this();
        if cpu.rcu_nesting.fetch_sub(1, Ordering::SeqCst) == 1 {
            cpu.rcu_quiescent.fetch_add(1, Ordering::SeqCst);
            if self.queued.load(Ordering::SeqCst) != self.completed.load(Ordering::SeqCst) {
                self.run_ready();
            }
        }
    }

    /// Queues `callback` to run after a grace period.
    pub fn call(&self, callback: RcuCallback) {
        let mut snapshot = [0; MAX_CPUS];
        for (cpu, count) in snapshot.iter_mut().enumerate().take(percpu::online()) {
            *count = percpu::of(cpu).rcu_quiescent.load(Ordering::SeqCst);
        }
        {
            let mut queue = self.queue.lock();
            queue.push_back(Waiting { snapshot, callback });
            self.queued.fetch_add(1, Ordering::SeqCst);
        }
        if percpu::this().rcu_nesting.load(Ordering::SeqCst) == 0 {
            self.run_ready();
        }
    }

    /// Waits until every callback queued before the call has run.
    pub fn barrier(&self) {
        let target = self.queued.load(Ordering::SeqCst);
        while self.completed.load(Ordering::SeqCst) < target {
            self.run_ready();
            core::hint::spin_loop();
        }
    }

    /// Whether every CPU has passed a quiescent state since `snapshot`.
    fn grace_period_over(snapshot: &[u64; MAX_CPUS]) -> bool {
        (0..percpu::online()).all(|cpu| {
            let data = percpu::of(cpu);
            data.rcu_nesting.load(Ordering::SeqCst) == 0
                || data.rcu_quiescent.load(Ordering::SeqCst) > snapshot[cpu]
        })
    }

    /// Runs the ready callbacks at the front of the queue, one at a time
    /// and outside the queue's lock (a callback may queue another), without
    /// waiting for the others. If another CPU (or this one, further up the
    /// stack) is running them already, leaves it a note (`wanted`) instead.
    pub fn run_ready(&self) {
        self.wanted.store(true, Ordering::SeqCst);
        while self.wanted.load(Ordering::SeqCst) {
            let Some(_runner) = self.runner.try_lock() else { return };
            self.wanted.store(false, Ordering::SeqCst);
            loop {
                let ready = {
                    let mut queue = self.queue.lock();
                    match queue.front() {
                        Some(first) if Self::grace_period_over(&first.snapshot) => queue.pop_front(),
                        _ => None,
                    }
                };
                let Some(waiting) = ready else { break };
                (waiting.callback)();
                self.completed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
