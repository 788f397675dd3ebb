//! Page-table nodes: frames whose metadata carries a lock.
//!
//! A node is a 4 KiB frame holding `F::NR_ENTRIES` 64-bit entries, read and
//! written only with atomic operations (lock-free walkers read them while a
//! lock holder writes). Its metadata slot holds [`PtNodeMeta`]: a spin lock,
//! a `stray` mark, the count of non-absent entries and the node's level.
//!
//! Two handles name a node:
//!
//! * [`NodeRef`], unlocked: it can read entries (what lock-free walkers do)
//!   and tell whether the node is stray, nothing else.
//! * [`NodeGuard`] (`guard.rs`), the node locked: the only way to write
//!   entries, to read or change the child count and to mark the node stray.
//!   [`NodeRef::lock`] makes one, and dropping it unlocks the node.
//!
//! So "the caller holds the lock" is a type, not a convention.
//!
//! The reference that keeps a node alive is owned by the entry pointing to
//! it (or, for the root, by the page table); `lifecycle.rs` creates and frees
//! nodes and releases what entries own.

use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::addr::{Paddr, PagingLevel};
use crate::frame::PhysMem;

mod guard;
mod lifecycle;

pub(crate) use guard::NodeGuard;
pub(crate) use lifecycle::{alloc_node, free_node, release_entry};

/// The metadata of a page-table node.
#[derive(Debug)]
pub(crate) struct PtNodeMeta {
    /// The node lock: set while a [`NodeGuard`] of the node exists, or
    /// while the guard's holder keeps the lock without one
    /// ([`NodeGuard::into_raw`]).
    lock: AtomicBool,
    /// Set once, under the lock, when the node leaves the tree. A walker
    /// that reached the node without locks and then locked it retries from
    /// the root if it finds the flag set.
    stray: AtomicBool,
    /// The node's level, fixed at creation.
    level: PagingLevel,
    /// The number of non-absent entries; a node whose count drops to zero
    /// is reclaimed. Read and written only through a [`NodeGuard`], that
    /// is, by the holder of `lock`.
    nr_children: UnsafeCell<u16>,
    /// Set while the node waits in its table's queue of emptied nodes (see
    /// `cursor::reclaim`), so that a node emptied again and again is queued
    /// once. Read and written only through a [`NodeGuard`], as
    /// `nr_children` is.
    queued: UnsafeCell<bool>,
}

// SAFETY: `nr_children` and `queued` are accessed only through a `NodeGuard`, which exists
// only while `lock` is held and is not `Sync`, so the accesses of one holder
// happen on one thread, and the lock's acquire/release operations order them
// against the next holder's; the rest is atomic or immutable.
unsafe impl Sync for PtNodeMeta {}

crate::impl_frame_meta!(PtNodeMeta);

impl PtNodeMeta {
    /// Metadata for a new node, created locked by its creator.
    pub(super) fn new_locked(level: PagingLevel) -> Self {
        Self {
            lock: AtomicBool::new(true),
            stray: AtomicBool::new(false),
            level,
            nr_children: UnsafeCell::new(0),
            queued: UnsafeCell::new(false),
        }
    }
}

/// Where a table's physical memory is reached ([`PhysMem::ram_base`]),
/// copied out of its `PhysMem`: a loop that reads many nodes (a lock-free
/// walk) keeps it in a register instead of loading it for each node, as
/// [`NodeRef::read`] does. Borrows the `PhysMem`, which debug builds also
/// check each node against, as [`PhysMem::phys_ptr`] does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RamBase<'a> {
    base: NonNull<u8>,
    phys: &'a PhysMem,
}

impl<'a> RamBase<'a> {
    #[inline]
    pub(crate) fn of(phys: &'a PhysMem) -> Self {
        Self { base: phys.ram_base(), phys }
    }

    /// All the words of the node's page at `pa`, as entries: the one place
    /// a node's entries are reached, for [`NodeRef`] and lock-free walks.
    ///
    /// # Safety
    ///
    /// As for [`NodeRef::new`]: the page at `pa` is a page-table node of
    /// the `PhysMem` this was copied from, alive (or at least unreused)
    /// for `'a`.
    #[inline(always)]
    pub(crate) unsafe fn entries(self, pa: Paddr) -> &'a [AtomicU64] {
        debug_assert!(self.phys.is_ram(&(pa..pa + 1)), "physical address {pa:#x} is not RAM");
        let ptr = self.base.as_ptr().wrapping_add(pa).cast::<AtomicU64>();
        // SAFETY: the node's page is RAM of `phys` (caller contract), which
        // is borrowed, so `ram_base + pa` reaches it (`PhysMem::phys_ptr`,
        // Platform contract 1); it is page (so 8-byte) aligned, holds
        // `PAGE_SIZE / 8` words, and is only ever accessed atomically while
        // it is a node, which it stays for `'a` (caller contract).
        unsafe { core::slice::from_raw_parts(ptr, crate::addr::PAGE_SIZE / 8) }
    }

    /// Reads entry `index` of the node at `pa`, as [`NodeRef::read`] does
    /// (allowed without the lock).
    ///
    /// # Safety
    ///
    /// As for [`entries`](Self::entries), during the call.
    #[inline(always)]
    pub(crate) unsafe fn read(self, pa: Paddr, index: usize) -> u64 {
        // SAFETY: the caller's contract is `entries`'.
        let entries = unsafe { self.entries(pa) };
        entries[index].load(Ordering::Acquire)
    }
}

/// A node, named by its physical address, seen through its `PhysMem`:
/// unlocked, so it can only be read (see the module docs).
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
    fn meta(self) -> &'a PtNodeMeta {
        // SAFETY: the page is a page-table node of `phys` (type invariant),
        // a page `phys` handed out, which has a slot.
        let slot = unsafe { self.phys.slot_unchecked(self.pa) };
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
        // SAFETY: the page is a node of `phys`, alive while `self` is used
        // (type invariant: `NodeRef::new`'s contract).
        unsafe { RamBase::of(self.phys).entries(self.pa) }
    }

    /// Reads entry `index` (allowed without the lock).
    #[inline]
    pub(crate) fn read(self, index: usize) -> u64 {
        self.entries()[index].load(Ordering::Acquire)
    }

    /// Whether the node was detached from the tree.
    #[inline]
    pub(crate) fn is_stray(self) -> bool {
        self.meta().stray.load(Ordering::Acquire)
    }
}
