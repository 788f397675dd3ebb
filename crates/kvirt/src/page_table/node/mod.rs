//! Page-table nodes: frames whose metadata carries a lock.
//!
//! A node is a 4 KiB frame holding `F::NR_ENTRIES` 64-bit entries, read and
//! written only with atomic operations (lock-free walkers read them while a
//! lock holder writes). Its metadata slot holds [`PtNodeMeta`]:
//!
//! * `lock`: a spin lock. Whoever holds it may change the node's entries.
//! * `stray`: set, under the lock, when the node is detached from the tree.
//!   A walker that reached the node without locks and then locked it
//!   retries from the root if it finds the flag set.
//! * `nr_children`: the number of non-absent entries, guarded by the lock;
//!   a node whose count drops to zero is reclaimed.
//! * `level`: the node's level, fixed at creation.
//!
//! The reference that keeps a node alive is owned by the entry pointing to
//! it (or, for the root, by the page table).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::addr::{Paddr, PagingLevel};
use crate::frame::PhysMem;

mod lifecycle;

pub(crate) use lifecycle::{alloc_node, free_node, release_entry};

/// The metadata of a page-table node.
#[derive(Debug)]
pub(crate) struct PtNodeMeta {
    /// The node lock (see the module documentation).
    lock: AtomicBool,
    /// Set once, under the lock, when the node leaves the tree.
    stray: AtomicBool,
    /// The node's level.
    pub(crate) level: PagingLevel,
    /// Non-absent entries. Read and written only with `lock` held.
    nr_children: UnsafeCell<u16>,
}

// SAFETY: `nr_children` is accessed only by the holder of `lock`, whose
// acquire/release operations order those accesses; the rest is atomic or
// immutable.
unsafe impl Sync for PtNodeMeta {}

crate::impl_frame_meta!(PtNodeMeta);

impl PtNodeMeta {
    /// Metadata for a new node, created locked by its creator.
    pub(crate) fn new_locked(level: PagingLevel) -> Self {
        Self {
            lock: AtomicBool::new(true),
            stray: AtomicBool::new(false),
            level,
            nr_children: UnsafeCell::new(0),
        }
    }
}

/// A node, named by its physical address, seen through its `PhysMem`.
///
/// Copies are cheap and carry no reference: whoever uses one must know the
/// node is alive (locked, reachable under an RCU read-side section, or
/// owned).
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeRef<'a> {
    phys: &'a PhysMem,
    pa: Paddr,
}

impl<'a> NodeRef<'a> {
    /// # Safety
    ///
    /// The page at `pa` is a page-table node of `phys` that stays alive, or
    /// at least unreused, while the result is used (the caller holds an RCU
    /// read-side section from before the node could be detached, or owns
    /// it).
    pub(crate) unsafe fn new(phys: &'a PhysMem, pa: Paddr) -> Self {
        Self { phys, pa }
    }

    #[inline]
    pub(crate) fn pa(self) -> Paddr {
        self.pa
    }

    #[inline]
    pub(crate) fn phys(self) -> &'a PhysMem {
        self.phys
    }

    #[inline]
    pub(crate) fn meta(self) -> &'a PtNodeMeta {
        let slot = self.phys.slot(self.pa);
        // SAFETY: the page is a node (type invariant), so its slot holds a
        // `PtNodeMeta` at the start of the storage, alive as long as the
        // node is.
        unsafe { &*slot.storage_ptr().cast::<PtNodeMeta>() }
    }

    pub(crate) fn level(self) -> PagingLevel {
        self.meta().level
    }

    /// All the words of the node's page, as entries.
    #[inline]
    fn entries(self) -> &'a [AtomicU64] {
        let ptr = self.phys.phys_ptr(self.pa).cast::<AtomicU64>();
        // SAFETY: the node's page is RAM (Platform contract 1), page (so
        // 8-byte) aligned, holds `PAGE_SIZE / 8` words, and is only ever
        // accessed atomically while it is a node.
        unsafe { core::slice::from_raw_parts(ptr, crate::addr::PAGE_SIZE / 8) }
    }

    #[inline]
    fn entry(self, index: usize) -> &'a AtomicU64 {
        &self.entries()[index]
    }

    /// Reads entry `index` (allowed without the lock).
    #[inline]
    pub(crate) fn read(self, index: usize) -> u64 {
        self.entry(index).load(Ordering::Acquire)
    }

    /// Writes entry `index`, keeping `nr_children` in step.
    ///
    /// The caller holds the lock (checked in debug builds).
    #[inline]
    pub(crate) fn write(self, index: usize, raw: u64) {
        debug_assert!(self.is_locked(), "page-table node written without its lock");
        let entry = self.entry(index);
        // No other thread writes the entry while we hold the lock. The
        // hardware may set accessed/dirty bits in a present entry meanwhile,
        // but never turns an absent entry present or back, which is all
        // `old` is used for: a plain load and store (no locked exchange)
        // suffice.
        let old = entry.load(Ordering::Relaxed);
        entry.store(raw, Ordering::Release);
        let meta = self.meta();
        // SAFETY: the caller holds the lock, which guards `nr_children`.
        let n = unsafe { &mut *meta.nr_children.get() };
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
    /// Each write is counted as it is made, so if `next` (which may run
    /// the caller's code, such as a frame iterator) panics, the entries
    /// written so far are counted and the node stays consistent.
    ///
    /// The caller holds the lock (checked in debug builds); `next` returns
    /// non-absent entries.
    #[inline]
    pub(crate) fn fill_absent(self, from: usize, to: usize, mut next: impl FnMut() -> Option<u64>) -> usize {
        debug_assert!(self.is_locked(), "page-table node written without its lock");
        // A raw pointer, not a `&mut` held across the calls of `next`.
        let nr_children = self.meta().nr_children.get();
        let mut written = 0;
        for entry in &self.entries()[from..to] {
            // Absent entries stay absent while we hold the lock (see `write`).
            if entry.load(Ordering::Relaxed) != 0 {
                break;
            }
            let Some(raw) = next() else { break };
            debug_assert_ne!(raw, 0, "fill_absent writes present entries");
            entry.store(raw, Ordering::Release);
            // SAFETY: the caller holds the lock, which guards `nr_children`;
            // no reference to it is alive here. At most `PAGE_SIZE / 8`
            // entries exist, so the count cannot overflow.
            unsafe { *nr_children += 1 };
            written += 1;
        }
        written
    }

    /// The number of non-absent entries. The caller holds the lock.
    #[inline]
    pub(crate) fn nr_children(self) -> u16 {
        debug_assert!(self.is_locked());
        // SAFETY: the caller holds the lock, which guards `nr_children`.
        unsafe { *self.meta().nr_children.get() }
    }

    /// Replaces the child count without writing an entry and returns the
    /// old one: for unit tests that corrupt a node to see the invariant
    /// check catch it. The caller holds the lock.
    #[cfg(test)]
    pub(crate) fn swap_nr_children(self, n: u16) -> u16 {
        debug_assert!(self.is_locked());
        // SAFETY: the caller holds the lock, which guards `nr_children`.
        core::mem::replace(unsafe { &mut *self.meta().nr_children.get() }, n)
    }

    #[inline]
    pub(crate) fn lock(self) {
        let lock = &self.meta().lock;
        while lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while lock.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    #[inline]
    pub(crate) fn unlock(self) {
        debug_assert!(self.is_locked());
        self.meta().lock.store(false, Ordering::Release);
    }

    pub(crate) fn is_locked(self) -> bool {
        self.meta().lock.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn is_stray(self) -> bool {
        self.meta().stray.load(Ordering::Acquire)
    }

    /// Marks the node detached. The caller holds the lock.
    pub(crate) fn mark_stray(self) {
        debug_assert!(self.is_locked());
        self.meta().stray.store(true, Ordering::Release);
    }
}
