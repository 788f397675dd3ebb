//! The node lock as a type.
//!
//! [`NodeRef::lock`] spins until it holds the node's lock and returns a
//! [`NodeGuard`]; dropping the guard unlocks the node. Everything that needs
//! the lock (writing an entry, filling absent entries, reading or changing
//! the child count, marking the node stray) is a method of the guard, so
//! it cannot be called without the lock.
//!
//! A cursor holds many locks at once, a whole sub-tree of them, and
//! releases them by walking that sub-tree again (see `locking.rs`). It keeps
//! guards only for the nodes on its current path; the others it keeps
//! locked without a guard: [`NodeGuard::into_raw`] gives up a guard but not
//! the lock, and [`NodeGuard::from_raw`], `unsafe`, makes a guard again for
//! a lock held that way. Those two and `lock` are the only ways to get a
//! guard (a new node is created locked, and its creator takes its lock with
//! `from_raw`).

use core::cell::Cell;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::sync::atomic::Ordering;

use super::NodeRef;
use crate::addr::{Paddr, PagingLevel, PAGE_SIZE};
use crate::frame::PhysMem;

/// A locked node. While it exists, no one else holds the node's lock.
///
/// Not `Sync`: the methods take `&self`, and two threads writing through
/// one guard at once would race on the child count. It may be sent to
/// another thread: the lock is not tied to one.
#[must_use = "dropping a guard unlocks the node"]
#[derive(Debug)]
pub(crate) struct NodeGuard<'a> {
    node: NodeRef<'a>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<'a> NodeRef<'a> {
    /// Spins until the node's lock is ours.
    #[inline]
    pub(crate) fn lock(self) -> NodeGuard<'a> {
        let lock = &self.meta().lock;
        while lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while lock.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        NodeGuard { node: self, _not_sync: PhantomData }
    }
}

impl<'a> NodeGuard<'a> {
    /// A guard for a node whose lock the caller holds without one.
    ///
    /// # Safety
    ///
    /// `node` is locked, the caller owns that lock (it gave up a guard with
    /// [`into_raw`](Self::into_raw), or created the node locked), and no
    /// other guard of the node exists: the result takes over the duty to
    /// unlock it.
    #[inline]
    pub(crate) unsafe fn from_raw(node: NodeRef<'a>) -> Self {
        debug_assert!(node.meta().lock.load(Ordering::Relaxed), "a guard for an unlocked node");
        Self { node, _not_sync: PhantomData }
    }

    /// Gives up the guard but keeps the node locked: the caller now owns the
    /// lock, and must make a guard again with [`from_raw`](Self::from_raw)
    /// to unlock it.
    #[inline]
    pub(crate) fn into_raw(self) -> NodeRef<'a> {
        ManuallyDrop::new(self).node
    }

    #[inline]
    pub(crate) fn pa(&self) -> Paddr {
        self.node.pa
    }

    #[inline]
    pub(crate) fn phys(&self) -> &'a PhysMem {
        self.node.phys
    }

    pub(crate) fn level(&self) -> PagingLevel {
        self.node.level()
    }

    /// Reads entry `index`.
    #[inline]
    pub(crate) fn read(&self, index: usize) -> u64 {
        self.node.read(index)
    }

    /// Writes entry `index`, keeping the child count in step.
    #[inline]
    pub(crate) fn write(&self, index: usize, raw: u64) {
        let entry = &self.node.entries()[index];
        // No other thread writes the entry while we hold the lock. The
        // hardware may set accessed/dirty bits in a present entry meanwhile,
        // but never turns an absent entry present or back, which is all
        // `old` is used for: a plain load and store (no locked exchange)
        // suffice.
        let old = entry.load(Ordering::Relaxed);
        entry.store(raw, Ordering::Release);
        // SAFETY: we hold the lock, which guards `nr_children`, on this
        // thread only (`NodeGuard` is not `Sync`); no other reference to the
        // count is alive during this call.
        let n = unsafe { &mut *self.node.meta().nr_children.get() };
        match (old == 0, raw == 0) {
            (true, false) => *n += 1,
            (false, true) => *n -= 1,
            _ => {}
        }
    }

    /// Writes `next()` into the absent entries from `from` on, stopping
    /// before `to`, at the first present entry, or when `next` returns
    /// `None`; returns how many it wrote.
    ///
    /// The writes are counted when the fill ends, and also if `next` (which
    /// may run the caller's code, such as a frame iterator) panics: the
    /// entries written so far are counted and the node stays consistent.
    ///
    /// `next` returns non-absent entries.
    #[inline]
    pub(crate) fn fill_absent(&self, from: usize, to: usize, mut next: impl FnMut() -> Option<u64>) -> usize {
        // One release for the whole fill: whatever this thread wrote before
        // it (a frame's contents, a node's initialisation) is seen by a
        // walker that reads a new entry with `Acquire`. Not what `next`
        // writes during the fill: a caller's frame iterator that makes or
        // fills frames as it goes publishes nothing through the entries
        // (`CursorMut::try_map_frames` says so). Each store could be
        // `Release` instead, but the compiler treats such a store as a write
        // to any memory, and would then keep the caller's iterator and the
        // count in memory across the loop: a store-to-load round trip per
        // entry, and the bound on a large map's speed.
        core::sync::atomic::fence(Ordering::Release);
        let mut written = self.count_on_drop();
        for entry in &self.node.entries()[from..to] {
            // Absent entries stay absent while we hold the lock (see `write`).
            if entry.load(Ordering::Relaxed) != 0 {
                break;
            }
            let Some(raw) = next() else { break };
            debug_assert_ne!(raw, 0, "fill_absent writes present entries");
            entry.store(raw, Ordering::Relaxed);
            written.delta += 1;
        }
        written.delta.unsigned_abs().into()
    }

    /// Clears every present entry from `from` to `to` (exclusive) and hands
    /// each old value to `taken`, after the entry is cleared and counted.
    /// Returns how many it cleared.
    ///
    /// `taken` runs the library's code only (it must not write through this
    /// guard); if it panics, the entries cleared so far are counted and the
    /// node stays consistent.
    #[inline]
    pub(crate) fn clear_present(&self, from: usize, to: usize, mut taken: impl FnMut(u64)) -> usize {
        let mut cleared = self.count_on_drop();
        for entry in &self.node.entries()[from..to] {
            // See `write`: the hardware may set accessed and dirty bits
            // meanwhile, which unmapping discards anyway.
            let raw = entry.load(Ordering::Relaxed);
            if raw == 0 {
                continue;
            }
            // `Relaxed`: a cleared entry publishes nothing. (A `Release`
            // store would keep `taken`'s state in memory, as in
            // `fill_absent`.)
            entry.store(0, Ordering::Relaxed);
            cleared.delta -= 1;
            taken(raw);
        }
        cleared.delta.unsigned_abs().into()
    }

    /// A change of the child count, made when dropped (on unwinding too),
    /// for a loop that writes many entries: counting each as it is written
    /// would load and store the count once per entry.
    #[inline(always)] // two words; a call would cost more than it
    fn count_on_drop(&self) -> ChildCountDelta {
        ChildCountDelta { count: self.node.meta().nr_children.get(), delta: 0 }
    }

    /// The number of non-absent entries.
    #[inline]
    pub(crate) fn nr_children(&self) -> u16 {
        // SAFETY: we hold the lock, which guards `nr_children`.
        unsafe { *self.node.meta().nr_children.get() }
    }

    /// Replaces the child count without writing an entry and returns the
    /// old one: for unit tests that corrupt a node to see the invariant
    /// check catch it.
    #[cfg(test)]
    pub(crate) fn swap_nr_children(&self, n: u16) -> u16 {
        // SAFETY: we hold the lock, which guards `nr_children`; no other
        // reference to the count is alive during this call.
        core::mem::replace(unsafe { &mut *self.node.meta().nr_children.get() }, n)
    }

    /// Whether the node is marked as waiting in its table's queue of
    /// emptied nodes.
    pub(crate) fn is_queued(&self) -> bool {
        // SAFETY: we hold the lock, which guards `queued`.
        unsafe { *self.node.meta().queued.get() }
    }

    /// Sets whether the node waits in its table's queue of emptied nodes;
    /// returns whether it did.
    #[inline]
    pub(crate) fn swap_queued(&self, queued: bool) -> bool {
        // SAFETY: we hold the lock, which guards `queued`; no other
        // reference to the flag is alive during this call.
        core::mem::replace(unsafe { &mut *self.node.meta().queued.get() }, queued)
    }

    /// Marks the node detached from the tree.
    pub(crate) fn mark_stray(&self) {
        self.node.meta().stray.store(true, Ordering::Release);
    }
}

impl Drop for NodeGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.node.meta().lock.store(false, Ordering::Release);
    }
}

/// Adds `delta` to a locked node's child count when dropped (see
/// [`NodeGuard::count_on_drop`]). Lives no longer than the guard that made
/// it, and is not `Send` (it holds a raw pointer).
struct ChildCountDelta {
    count: *mut u16,
    delta: i16,
}

impl Drop for ChildCountDelta {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the guard that made this holds the node's lock, which
        // guards the count, on this thread only, and outlives it; no
        // reference to the count is alive (a loop's callback may write
        // through the guard, but it has returned or unwound). A node has at
        // most `PAGE_SIZE / 8` entries, each counted once, so the count
        // stays within `0..=512`.
        let count = unsafe { &mut *self.count };
        *count = count.wrapping_add_signed(self.delta);
        debug_assert!(usize::from(*count) <= PAGE_SIZE / 8, "a node's child count left 0..=512");
    }
}
