//! Cursors: locked windows onto a page table.
//!
//! A cursor is created over a page-aligned range (its *barrier*), locks the
//! part of the tree covering it (see the `page_table` module docs for the
//! protocol, and `locking.rs` for its code) and keeps a current address
//! `va` plus the path of nodes from its guard node down to the node holding
//! `va`'s entry. Every node on that path, and every node below the guard
//! that intersects the barrier, is locked by the cursor, so the cursor
//! reads and writes those entries freely.
//!
//! This file holds the read-only [`Cursor`], the navigation every cursor
//! shares (the path, descending and popping, the search for the next
//! present entry) and the [`CursorMut`] type; what a `CursorMut` does is in
//! `map.rs` (mapping), `take.rs` (taking and protecting), `take_all.rs`
//! (taking a whole range at once) and `reclaim.rs`
//! (detaching the nodes it empties, and freeing them).
//!
//! ## How a cursor owns its locks
//!
//! The locks a cursor holds form a sub-tree: its guard node and every
//! existing node below it that intersects the barrier. The cursor keeps a
//! [`NodeGuard`] for each node on its path (`path[level - 1..guard_level]`);
//! the other nodes of the sub-tree it keeps locked without a guard
//! ([`NodeGuard::into_raw`]): those it passed on the way (popping a level
//! gives up its guard) and those it has not visited yet. Descending makes a
//! guard for the child again ([`NodeGuard::from_raw`]): the child lies
//! below the current node, so no guard of it exists. Dropping the cursor
//! gives up the path's guards too and releases the whole sub-tree with
//! `unlock_range`, which walks the same nodes `lock_range` locked.
//!
//! A node the cursor unhooks from the tree leaves that walk's reach, so the
//! cursor marks it stray and unlocks it at once, through a guard.

use alloc::vec::Vec;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Range;
use core::ptr::NonNull;

use super::config::{check_range, sign_extend, PageTableConfig};
use super::error::{OutOfCursorRange, RangeError};
use super::item::MappedItemRef;
use super::locking::{lock_range, unlock_range, Guard, LockTree};
use super::node::{NodeGuard, NodeRef, RamBase};
use super::table::PageTable;
use crate::addr::{align_down, is_page_aligned, Paddr, PagingLevel, Vaddr};
use crate::arch::{page_size, pte_index, PagingFormat, PteKind};
use crate::frame::{FrameRef, PhysMem};
use crate::page_prop::PageProperty;
use crate::platform::RcuReadGuard;

mod map;
mod on_local;
mod one;
mod reclaim;
mod take;
mod take_all;

pub(crate) use reclaim::EmptyNodeQueues;
pub use take::PageTableFrag;
pub use take_all::TakenRange;

/// The most levels a paging format may have.
const MAX_LEVELS: usize = 5;

impl<C: PageTableConfig> PageTable<C> {
    /// A read-only cursor over `range`.
    #[inline]
    pub fn cursor(&self, range: &Range<Vaddr>) -> Result<Cursor<'_, C>, RangeError> {
        Cursor::new(self, range)
    }

    /// A cursor over `range` that can change the mappings.
    #[inline]
    pub fn cursor_mut(&self, range: &Range<Vaddr>) -> Result<CursorMut<'_, C>, RangeError> {
        CursorMut::new(self, range)
    }
}

/// A read-only cursor: queries a locked range of a page table.
pub struct Cursor<'a, C: PageTableConfig> {
    pt: &'a PageTable<C>,
    /// The locked range. The cursor never touches entries outside it.
    barrier: Range<Vaddr>,
    /// The current address: page aligned, in `barrier.start..=barrier.end`.
    va: Vaddr,
    /// The level of the guard node, the highest node the cursor holds.
    guard_level: PagingLevel,
    /// The current level: `path[level - 1]` holds `va`'s entry.
    level: PagingLevel,
    /// `path[l - 1]` guards the node at level `l` on the way from the guard
    /// node to `va`: `Some` exactly for `level..=guard_level` while the
    /// cursor holds its locks, `None` everywhere once it released them.
    /// Dropping the cursor releases them (`unlock_all`), so the array
    /// itself needs no drop.
    path: ManuallyDrop<[Option<NodeGuard<'a>>; MAX_LEVELS]>,
    /// `base[l - 1]` is the lowest address `path[l - 1]` maps.
    base: [Vaddr; MAX_LEVELS],
    /// Cursors hold a CPU-local read-side section, which keeps them on
    /// their thread (the guard is not `Send`).
    _rcu: RcuReadGuard<'a>,
}

/// The present entry [`Cursor::next_present`] stopped at: the current entry.
enum Present {
    /// A leaf.
    Page { pa: Paddr, prop: PageProperty, tracked: bool },
    /// The non-empty node `pa`, to be taken whole.
    Subtree(Paddr),
}

/// The span of a node at `level`.
fn node_span<F: PagingFormat>(level: PagingLevel) -> usize {
    page_size::<F>(level + 1)
}

/// The range of the entry at `level` holding `va`: `start` and the exclusive
/// end, which saturates at `usize::MAX` for the very last entry of the space.
fn entry_range<C: PageTableConfig>(va: Vaddr, level: PagingLevel) -> Range<Vaddr> {
    let (start, end) = kvirt_core::paging::entry_range(va, C::F::ENTRY_BITS, level);
    start..end
}

/// Whether a node at `level` may be detached.
fn may_detach<C: PageTableConfig>(level: PagingLevel) -> bool {
    level < C::F::NR_LEVELS - 1 || (level == C::F::NR_LEVELS - 1 && C::TOP_LEVEL_CAN_UNMAP)
}

impl<'a, C: PageTableConfig> Cursor<'a, C> {
    #[inline(always)]
    fn new(pt: &'a PageTable<C>, range: &Range<Vaddr>) -> Result<Self, RangeError> {
        Self::new_with_guard_at_least(pt, range, 1)
    }

    /// Like [`new`](Self::new), but the guard node is at `min_guard_level`
    /// or above even if the range lies inside one entry of a lower node.
    /// Used to lock the parent of a node whose span reaches the end of the
    /// address space, where no `Range` can cover the whole span.
    #[inline(always)] // built in the caller's frame, not returned by a copy
    fn new_with_guard_at_least(
        pt: &'a PageTable<C>,
        range: &Range<Vaddr>,
        min_guard_level: PagingLevel,
    ) -> Result<Self, RangeError> {
        check_range::<C>(range)?;
        let rcu = RcuReadGuard::new(pt.phys().platform());
        let guard = lock_range(&PtTree::new(pt), range, min_guard_level);
        let guard_level = guard.level;
        let mut path = ManuallyDrop::new([const { None }; MAX_LEVELS]);
        let mut base = [0; MAX_LEVELS];
        // SAFETY: `lock_range` locked the guard node and gave up its guard
        // (`PtTree::lock`); this is the only one made again.
        path[guard_level as usize - 1] = Some(unsafe { NodeGuard::from_raw(guard.node) });
        base[guard_level as usize - 1] = guard.base;
        Ok(Self {
            pt,
            barrier: range.clone(),
            va: range.start,
            guard_level,
            level: guard_level,
            path,
            base,
            _rcu: rcu,
        })
    }

    #[inline]
    fn phys(&self) -> &'a PhysMem {
        self.pt.phys()
    }

    /// The node at `level` on the path (`level..=guard_level`).
    #[inline]
    fn node(&self, level: PagingLevel) -> &NodeGuard<'a> {
        self.path[level as usize - 1].as_ref().expect("the cursor holds the nodes on its path")
    }

    #[inline]
    fn cur_node(&self) -> &NodeGuard<'a> {
        self.node(self.level)
    }

    #[inline]
    fn cur_index(&self) -> usize {
        pte_index::<C::F>(self.va, self.level)
    }

    #[inline]
    fn cur_raw(&self) -> u64 {
        self.cur_node().read(self.cur_index())
    }

    /// The range of the current entry: `start` and the exclusive end, which
    /// saturates at `usize::MAX` for the very last entry of the space.
    #[inline]
    fn cur_entry_range(&self) -> Range<Vaddr> {
        entry_range::<C>(self.va, self.level)
    }

    /// Descends into `child`, the node at the current entry.
    #[inline(always)]
    fn push(&mut self, child: NodeGuard<'a>) {
        debug_assert!(self.level > 1);
        debug_assert_eq!(child.level(), self.level - 1, "page-table node at the wrong level");
        self.level -= 1;
        let l = self.level as usize - 1;
        debug_assert!(self.path[l].is_none(), "a second guard below the current level");
        self.path[l] = Some(child);
        self.base[l] = align_down(self.va, node_span::<C::F>(self.level));
    }

    /// Goes up a level. The node left stays locked, without a guard: it is
    /// part of the locked sub-tree, which `unlock_all` releases.
    #[inline]
    fn pop(&mut self) {
        debug_assert!(self.level < self.guard_level);
        if let Some(node) = self.path[self.level as usize - 1].take() {
            let _ = node.into_raw();
        }
        self.level += 1;
    }

    /// Descends into `child`, the node the current entry points to.
    ///
    /// # Safety
    ///
    /// The current entry points to `child`, and `va` lies in the barrier
    /// (below its end).
    #[inline]
    unsafe fn descend(&mut self, child: Paddr) {
        // SAFETY: the current entry holds `va`, so it intersects the barrier,
        // and points to `child`, a node below the current level.
        let child = unsafe { self.held_node(child) };
        self.push(child);
    }

    /// A guard for node `pa`, which this cursor holds locked without one.
    ///
    /// # Safety
    ///
    /// `pa` is the node of a table entry, below the current level, that
    /// intersects the barrier (so `lock_range` locked it, or the cursor
    /// created it locked), or a node the cursor unhooked since (without
    /// unlocking it); and no other guard of it exists: nodes below the
    /// current level have none in `path`, and the caller gives up or drops
    /// any guard it made before it makes another of the same node.
    #[inline]
    unsafe fn held_node(&self, pa: Paddr) -> NodeGuard<'a> {
        // SAFETY: the node is locked by this cursor, hence alive.
        let node = unsafe { NodeRef::new(self.phys(), pa) };
        // SAFETY: the caller's contract: the cursor owns the lock without a
        // guard, and this is the only guard of the node.
        unsafe { NodeGuard::from_raw(node) }
    }

    /// Whether `child`, the node the current entry points to, has no
    /// entries.
    ///
    /// # Safety
    ///
    /// As for [`descend`](Self::descend).
    #[inline]
    unsafe fn child_is_empty(&self, child: Paddr) -> bool {
        // SAFETY: the current entry holds `va`, so it intersects the barrier,
        // and points to `child`, a node below the current level; the guard
        // is given up before this returns.
        let child = unsafe { self.held_node(child) };
        let empty = child.nr_children() == 0;
        let _ = child.into_raw();
        empty
    }

    /// Whether the sub-tree of `node`, a node at `level` below the current
    /// level, maps nothing: no node in it holds a leaf (most often `node`
    /// itself is empty).
    ///
    /// # Safety
    ///
    /// The sub-tree lies in the barrier, so the cursor holds all its locks,
    /// and it holds a guard of none of its nodes.
    unsafe fn maps_nothing_below(&self, node: Paddr, level: PagingLevel) -> bool {
        // SAFETY: the caller's contract; the guard is given up below.
        let node = unsafe { self.held_node(node) };
        let nothing = node.nr_children() == 0
            || (0..C::F::NR_ENTRIES).all(|i| match C::F::decode(node.read(i), level) {
                PteKind::Absent => true,
                PteKind::Page { .. } => false,
                // SAFETY: the same holds one level down.
                PteKind::Table(child) => unsafe { self.maps_nothing_below(child, level - 1) },
            });
        let _ = node.into_raw();
        nothing
    }

    /// Pops levels until the current node holds `va`.
    #[inline]
    fn sync_path(&mut self) {
        while self.level < self.guard_level {
            let span = node_span::<C::F>(self.level);
            if align_down(self.va, span) == self.base[self.level as usize - 1] {
                break;
            }
            self.pop();
        }
    }

    /// Whether the current entry lies in `va..end`, as a whole.
    #[inline]
    fn cur_entry_within(&self, end: Vaddr) -> bool {
        let entry = self.cur_entry_range();
        entry.start >= self.va && entry.end <= end
    }

    /// Moves `va` to the end of the current entry, or to `end` if sooner.
    #[inline]
    fn skip_entry(&mut self, end: Vaddr) {
        self.va = self.cur_entry_range().end.min(end);
    }

    /// The current address.
    #[must_use]
    pub fn virt_addr(&self) -> Vaddr {
        self.va
    }

    /// The range the cursor locked.
    #[must_use]
    pub fn range(&self) -> Range<Vaddr> {
        self.barrier.clone()
    }

    /// What is mapped at the current address: the range of the whole entry
    /// (a huge page, or an absent slot at any level; it may extend past the
    /// cursor's range) and the item, if any. Does not move the cursor.
    pub fn query(&mut self) -> Result<(Range<Vaddr>, Option<MappedItemRef<'_>>), OutOfCursorRange> {
        if self.va >= self.barrier.end {
            return Err(OutOfCursorRange { va: self.va, range: self.barrier.clone() });
        }
        self.sync_path();
        loop {
            let raw = self.cur_raw();
            match C::F::decode(raw, self.level) {
                // SAFETY: the current entry points to `child`, and `va` is
                // below the barrier's end (checked above).
                PteKind::Table(child) => unsafe { self.descend(child) },
                PteKind::Absent => return Ok((self.cur_entry_range(), None)),
                PteKind::Page { pa, prop, tracked } => {
                    let item = if tracked {
                        let slot = NonNull::from(self.phys().slot(pa));
                        // SAFETY: the entry owns a reference to the frame and
                        // cannot change while the cursor, borrowed for the
                        // result's lifetime, holds the node lock.
                        MappedItemRef::Tracked(unsafe { FrameRef::from_slot(slot, pa) }, prop)
                    } else {
                        MappedItemRef::Untracked(pa, self.level, prop)
                    };
                    return Ok((self.cur_entry_range(), Some(item)));
                }
            }
        }
    }

    /// The end of a search of `len` bytes from `va`.
    ///
    /// # Panics
    ///
    /// Panics if `len` is misaligned or reaches past the cursor's range.
    #[inline]
    fn search_end(&self, len: usize) -> Vaddr {
        assert!(is_page_aligned(len), "length {len:#x} is not page aligned");
        assert!(
            len <= self.barrier.end.saturating_sub(self.va),
            "length {len:#x} from {:#x} reaches past the cursor's range {:#x?}",
            self.va,
            self.barrier
        );
        self.va + len
    }

    /// Moves to the first address in `va..va + len` at which something is
    /// mapped and returns it; if there is none, moves to `va + len` and
    /// returns `None`.
    ///
    /// # Panics
    ///
    /// Panics if `len` is not page aligned or `va + len` is past the range.
    pub fn find_next(&mut self, len: usize) -> Option<Vaddr> {
        let end = self.search_end(len);
        self.next_present(end, false).map(|_| self.va)
    }

    /// Moves to the next present entry in `va..end` and stops there, with
    /// `va` in it (and `level` at it); returns `None`, at `end`, if there is
    /// none. Absent entries and empty nodes are skipped; other nodes are
    /// descended into, unless `whole_subtrees` is set and the node's whole
    /// span lies in `va..end` and it may be detached: it then counts as one
    /// present entry.
    ///
    /// The one search loop of `find_next`, `take_next` and `protect_next`.
    /// Inlined into each, as the three loops it replaces were: called out
    /// of line, it made unmapping page by page about 15% slower.
    #[inline(always)]
    fn next_present(&mut self, end: Vaddr, whole_subtrees: bool) -> Option<Present> {
        loop {
            if self.va >= end {
                self.va = end;
                return None;
            }
            self.sync_path();
            match C::F::decode(self.cur_raw(), self.level) {
                PteKind::Absent => self.skip_entry(end),
                PteKind::Table(child) => {
                    // SAFETY: (here and below) the current entry points to
                    // `child`, and `va < end`, which is within the barrier.
                    if unsafe { self.child_is_empty(child) } {
                        self.skip_entry(end);
                    } else if whole_subtrees && self.cur_entry_within(end) && may_detach::<C>(self.level - 1)
                    {
                        return Some(Present::Subtree(child));
                    } else {
                        // SAFETY: as above.
                        unsafe { self.descend(child) };
                    }
                }
                PteKind::Page { pa, prop, tracked } => return Some(Present::Page { pa, prop, tracked }),
            }
        }
    }

    /// Moves to `va` (page aligned, within the range or at its end).
    pub fn jump(&mut self, va: Vaddr) -> Result<(), OutOfCursorRange> {
        if !is_page_aligned(va) || va < self.barrier.start || va > self.barrier.end {
            return Err(OutOfCursorRange { va, range: self.barrier.clone() });
        }
        self.va = va;
        Ok(())
    }

    /// Releases every lock, once. Inlined: `CursorMut::finish` calls it,
    /// then `Cursor`'s `Drop` calls it again, where it is one test, not a
    /// call with its prologue and epilogue.
    #[inline(always)]
    fn unlock_all(&mut self) {
        let Some(guard_node) = self.path[self.guard_level as usize - 1].take() else {
            return;
        };
        // The rest of the path: `Some` exactly below the guard, down to
        // the current level.
        let below = self.level as usize - 1..self.guard_level as usize - 1;
        for node in self.path[below].iter_mut().filter_map(Option::take) {
            let _ = node.into_raw();
        }
        debug_assert!(self.path.iter().all(Option::is_none), "a guard off the cursor's path");
        let guard = Guard {
            node: guard_node.into_raw(),
            level: self.guard_level,
            base: self.base[self.guard_level as usize - 1],
        };
        unlock_range(&PtTree::new(self.pt), &guard, &self.barrier);
    }
}

impl<C: PageTableConfig> Drop for Cursor<'_, C> {
    fn drop(&mut self) {
        self.unlock_all();
    }
}

impl<C: PageTableConfig> fmt::Debug for Cursor<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("range", &format_args!("{:#x?}", self.barrier))
            .field("va", &format_args!("{:#x}", self.va))
            .field("guard_level", &self.guard_level)
            .finish()
    }
}

/// The page table as a [`LockTree`]: the lock protocol's view of it.
///
/// The protocol takes and releases locks as it walks, many at a time,
/// without guards: `lock` gives up the guard it gets, keeping the lock, and
/// `unlock` makes one again to drop it. Only the cursor drives the protocol
/// over this adapter (it is private to this module), and the protocol
/// unlocks exactly the nodes it locked.
struct PtTree<'a, C: PageTableConfig> {
    pt: &'a PageTable<C>,
    /// Where the table's memory is reached, read out of it once for the
    /// walk down ([`LockTree::child`]).
    ram: RamBase<'a>,
}

impl<'a, C: PageTableConfig> PtTree<'a, C> {
    #[inline(always)]
    fn new(pt: &'a PageTable<C>) -> Self {
        Self { pt, ram: RamBase::of(pt.phys()) }
    }
}

impl<'a, C: PageTableConfig> LockTree for PtTree<'a, C> {
    type Node = NodeRef<'a>;

    fn root(&self) -> NodeRef<'a> {
        self.pt.root_node()
    }

    fn nr_levels(&self) -> u8 {
        C::F::NR_LEVELS
    }

    fn nr_entries(&self) -> usize {
        C::F::NR_ENTRIES
    }

    fn entry_size(&self, level: u8) -> usize {
        page_size::<C::F>(level)
    }

    fn index(&self, va: usize, level: u8) -> usize {
        pte_index::<C::F>(va, level)
    }

    fn canonical(&self, va: usize) -> usize {
        sign_extend::<C::F>(va)
    }

    fn child(&self, node: NodeRef<'a>, level: u8, index: usize) -> Option<NodeRef<'a>> {
        // SAFETY: `node` is a node of this table, whose `PhysMem` `ram` was
        // copied from, alive during the call (`NodeRef`'s invariant).
        let raw = unsafe { self.ram.read(node.pa(), index) };
        match C::F::decode(raw, level) {
            // SAFETY: the protocol runs inside the cursor's read-side
            // section, so a node reachable now is not reused before it ends;
            // a child of a node the caller holds cannot even be detached.
            PteKind::Table(child) => Some(unsafe { NodeRef::new(self.pt.phys(), child) }),
            PteKind::Absent | PteKind::Page { .. } => None,
        }
    }

    fn lock(&self, node: NodeRef<'a>) {
        let _ = node.lock().into_raw();
    }

    fn unlock(&self, node: NodeRef<'a>) {
        // SAFETY: the protocol unlocks only nodes it locked through `lock`,
        // which gave up their guards; the cursor gives up its own guards of
        // them before it calls `unlock_range` (`unlock_all`).
        drop(unsafe { NodeGuard::from_raw(node) });
    }

    fn is_stray(&self, node: NodeRef<'a>) -> bool {
        node.is_stray()
    }
}

/// A cursor that can change the mappings in its range.
pub struct CursorMut<'a, C: PageTableConfig> {
    inner: Cursor<'a, C>,
    /// Emptied nodes detached by this cursor: freed after a TLB flush of
    /// their spans and a grace period, when the cursor is dropped.
    detached: Vec<(u64, PagingLevel, Range<Vaddr>)>,
    /// Whether the cursor removed anything (so the guard may have emptied).
    removed: bool,
}

impl<'a, C: PageTableConfig> CursorMut<'a, C> {
    #[inline(always)]
    fn new(pt: &'a PageTable<C>, range: &Range<Vaddr>) -> Result<Self, RangeError> {
        Ok(Self::from_cursor(Cursor::new(pt, range)?))
    }

    #[inline(always)]
    fn from_cursor(inner: Cursor<'a, C>) -> Self {
        Self { inner, detached: Vec::new(), removed: false }
    }

    /// The current address.
    #[must_use]
    pub fn virt_addr(&self) -> Vaddr {
        self.inner.va
    }

    /// See [`Cursor::query`].
    pub fn query(&mut self) -> Result<(Range<Vaddr>, Option<MappedItemRef<'_>>), OutOfCursorRange> {
        self.inner.query()
    }

    /// See [`Cursor::find_next`].
    pub fn find_next(&mut self, len: usize) -> Option<Vaddr> {
        self.inner.find_next(len)
    }

    /// See [`Cursor::jump`].
    pub fn jump(&mut self, va: Vaddr) -> Result<(), OutOfCursorRange> {
        self.inner.jump(va)
    }
}

impl<C: PageTableConfig> fmt::Debug for CursorMut<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CursorMut").field(&self.inner).finish()
    }
}
