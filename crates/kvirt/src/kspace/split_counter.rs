//! A count that many CPUs change at once, split so that they do not share
//! a cache line on every change (Linux's `percpu_counter`).
//!
//! Each of `N` slots keeps a signed *delta*, changed only through its own
//! cache line. Once a slot's delta reaches `BATCH` either way, the slot
//! moves it into the shared *total*, so the shared line is written once
//! per `BATCH` units rather than on every change:
//!
//! ```text
//!   slot 0: +12   slot 1: -3   ...   slot N-1: +40      (each |delta| < BATCH at rest)
//!        \            |                   /
//!         └───────────┴─── total: 16 320 ┘               (written once per BATCH)
//!
//!   value = total + Σ deltas
//! ```
//!
//! At rest the value is exact. [`at_least`](SplitCounter::at_least) reads
//! the total alone when it is decisive (the total lies within
//! `N * BATCH` of the value) and sums the slots only near the limit, so a
//! threshold far away costs one shared read. While other CPUs change the
//! counter, a read sees some of their changes and not others, as any read
//! of a changing count does.

use core::sync::atomic::{AtomicIsize, Ordering};

use crossbeam_utils::CachePadded;

/// Units a slot gathers before it adds them to the shared total.
const BATCH: isize = 64;

/// A count split over `N` slots (see the module documentation).
#[derive(Debug)]
pub(crate) struct SplitCounter<const N: usize> {
    /// The deltas not yet in `total`; each stays within `BATCH` of zero
    /// at rest.
    slots: [CachePadded<AtomicIsize>; N],
    /// The sum of every delta moved out of a slot.
    total: CachePadded<AtomicIsize>,
}

impl<const N: usize> SplitCounter<N> {
    pub(crate) fn new() -> Self {
        Self {
            slots: core::array::from_fn(|_| CachePadded::new(AtomicIsize::new(0))),
            total: CachePadded::default(),
        }
    }

    /// Adds `delta` through slot `slot % N`.
    pub(crate) fn add(&self, slot: usize, delta: isize) {
        let slot = &self.slots[slot % N];
        let now = slot.fetch_add(delta, Ordering::Relaxed) + delta;
        if now >= BATCH || now <= -BATCH {
            // Moves all the slot holds, whatever other changes reached it
            // meanwhile, so that racing adds cannot leave it beyond `BATCH`
            // (subtracting only `now` could, with the other's share counted
            // twice in the slot and the total). Two steps: the value is off
            // by what moved between them, never for good.
            let moved = slot.swap(0, Ordering::Relaxed);
            self.total.fetch_add(moved, Ordering::Relaxed);
        }
    }

    /// The value: the total and every slot's delta (never below zero, which
    /// only a read racing with changes could see).
    pub(crate) fn sum(&self) -> usize {
        let deltas = self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum::<isize>();
        (self.total.load(Ordering::Relaxed) + deltas).max(0).unsigned_abs()
    }

    /// Whether the value is at least `limit`: the total alone when it
    /// decides, the sum otherwise.
    pub(crate) fn at_least(&self, limit: usize) -> bool {
        // The value is an `isize`: a larger limit (such as `usize::MAX`,
        // "never") is out of its reach without a look.
        let Ok(signed_limit) = isize::try_from(limit) else { return false };
        let total = self.total.load(Ordering::Relaxed);
        // At rest each delta is above -BATCH and below BATCH.
        let slack = BATCH * N as isize;
        if total.saturating_add(slack) <= signed_limit {
            false
        } else if total.saturating_sub(slack) >= signed_limit {
            true
        } else {
            self.sum() >= limit
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn the_sum_is_exact_at_rest_whatever_slots_the_changes_took() {
        let c = SplitCounter::<4>::new();
        let mut want = 0isize;
        for i in 0..1000usize {
            let delta = (i % 7) as isize * 5 - 9;
            c.add(i * 3, delta);
            want += delta;
            if want >= 0 {
                assert_eq!(c.sum(), want.unsigned_abs(), "after {i} changes");
            }
        }
        // Every slot stays near zero; the rest went to the total.
        assert!(c.slots.iter().all(|s| s.load(Ordering::Relaxed).abs() < BATCH));
    }

    #[test]
    fn at_least_agrees_with_the_sum_on_both_sides_of_the_limit() {
        let c = SplitCounter::<8>::new();
        for i in 0..5000usize {
            c.add(i, 1);
            let value = i + 1;
            for limit in [0, value - 1, value, value + 1, value + 600, usize::MAX] {
                assert_eq!(c.at_least(limit), value >= limit, "value {value}, limit {limit}");
            }
        }
        for i in 0..5000usize {
            c.add(i * 5, -1);
            let value = 4999 - i;
            assert!(c.at_least(value));
            assert!(!c.at_least(value + 1), "value {value}");
        }
    }

    #[test]
    fn changes_from_several_threads_all_count() {
        let c = SplitCounter::<2>::new();
        std::thread::scope(|s| {
            for t in 0..4usize {
                let c = &c;
                s.spawn(move || {
                    // Changes near `BATCH` in size, so that racing adds
                    // to one slot often both reach it.
                    for i in 0..100_000usize {
                        c.add(t, 40);
                        if i % 2 == 1 {
                            c.add(t + 1, -70);
                        }
                    }
                });
            }
        });
        assert_eq!(c.sum(), 4 * (100_000 * 40 - 50_000 * 70));
        assert!(
            c.slots.iter().all(|s| s.load(Ordering::Relaxed).abs() < BATCH),
            "racing adds left a slot beyond BATCH: the fast path of at_least would misjudge"
        );
    }
}
