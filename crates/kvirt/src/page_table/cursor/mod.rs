//! Cursors: locked windows onto a page table.
//!
//! A cursor is created over a page-aligned range (its *barrier*), locks the
//! part of the tree covering it (see the `page_table` module docs) and keeps
//! a current address `va` plus the path of nodes from its guard node down to
//! the node holding `va`'s entry. Every node on that path, and every node
//! below the guard that intersects the barrier, is locked by the cursor, so
//! the cursor reads and writes those entries freely.
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
use core::marker::PhantomData;
use core::ops::Range;
use core::ptr::NonNull;

use super::config::{check_range, sign_extend, PageTableConfig};
use super::error::{MapError, MapErrorKind, OutOfCursorRange, PageTableAllocError, RangeError};
use super::item::{MappedItem, MappedItemRef};
use super::locking::{lock_range, unlock_range, Guard, LockTree};
use super::node::{alloc_node, free_node, release_entry, NodeGuard, NodeRef};
use super::table::PageTable;
use crate::addr::{align_down, is_aligned, is_page_aligned, Paddr, PagingLevel, Vaddr};
use crate::arch::x86_64::X86_64;
use crate::arch::{page_size, pte_index, PagingFormat, PteKind};
use crate::frame::{AnyFrameMeta, Frame, FrameRef, PhysMem};
use crate::page_prop::PageProperty;
use crate::platform::{RcuReadGuard, TlbFlushOp, TlbScope};

/// The most levels a paging format may have.
const MAX_LEVELS: usize = 5;

impl<C: PageTableConfig> PageTable<C> {
    /// A read-only cursor over `range`.
    pub fn cursor(&self, range: &Range<Vaddr>) -> Result<Cursor<'_, C>, RangeError> {
        Cursor::new(self, range)
    }

    /// A cursor over `range` that can change the mappings.
    pub fn cursor_mut(&self, range: &Range<Vaddr>) -> Result<CursorMut<'_, C>, RangeError> {
        CursorMut::new(self, range)
    }

    /// Makes emptied guard nodes wait for a batch (or for
    /// [`reclaim_empty_nodes`](Self::reclaim_empty_nodes)) instead of being
    /// reclaimed when the cursor that emptied them is dropped.
    pub(crate) fn set_lazy_reclaim(&mut self, lazy: bool) {
        self.lazy_reclaim = lazy;
    }

    /// Queues an emptied node; reclaims the queue when it is full.
    pub(crate) fn queue_empty_node(&self, base: Vaddr, level: PagingLevel) {
        let full = {
            let mut queue = self.empty_nodes.lock();
            if !queue.contains(&(base, level)) {
                queue.push((base, level));
            }
            queue.len() >= EMPTY_NODE_BATCH
        };
        if full {
            self.reclaim_empty_nodes();
        }
    }

    /// Reclaims every queued node that is still empty (see
    /// `set_lazy_reclaim`, on for a kernel space's table). Nodes are freed after
    /// an RCU grace period.
    pub fn reclaim_empty_nodes(&self) {
        // Reclaiming a node may empty its parent, which is queued in turn.
        loop {
            let queue = core::mem::take(&mut *self.empty_nodes.lock());
            if queue.is_empty() {
                return;
            }
            for (base, level) in queue {
                reclaim_empty_node(self, base, level);
            }
        }
    }
}

/// How many emptied nodes a lazily reclaiming table keeps before it
/// reclaims them.
const EMPTY_NODE_BATCH: usize = 32;

/// A read-only cursor.
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
    path: [Option<NodeGuard<'a>>; MAX_LEVELS],
    /// `base[l - 1]` is the lowest address `path[l - 1]` maps.
    base: [Vaddr; MAX_LEVELS],
    _rcu: RcuReadGuard<'a>,
    /// Cursors hold a CPU-local read-side section: they stay on their thread.
    _not_send: PhantomData<*const ()>,
}

/// The span of a node at `level`.
fn node_span<F: PagingFormat>(level: PagingLevel) -> usize {
    page_size::<F>(level + 1)
}

impl<'a, C: PageTableConfig> Cursor<'a, C> {
    pub(super) fn new(pt: &'a PageTable<C>, range: &Range<Vaddr>) -> Result<Self, RangeError> {
        Self::new_with_guard_at_least(pt, range, 1)
    }

    /// Like [`new`](Self::new), but the guard node is at `min_guard_level`
    /// or above even if the range lies inside one entry of a lower node.
    /// Used to lock the parent of a node whose span reaches the end of the
    /// address space, where no `Range` can cover the whole span.
    fn new_with_guard_at_least(
        pt: &'a PageTable<C>,
        range: &Range<Vaddr>,
        min_guard_level: PagingLevel,
    ) -> Result<Self, RangeError> {
        check_range::<C>(range)?;
        let rcu = RcuReadGuard::new(pt.phys().platform());
        let guard = lock_range(&PtTree(pt), range, min_guard_level);
        let guard_level = guard.level;
        let mut path = [const { None }; MAX_LEVELS];
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
            _not_send: PhantomData,
        })
    }

    fn phys(&self) -> &'a PhysMem {
        self.pt.phys()
    }

    /// The node at `level` on the path (`level..=guard_level`).
    fn node(&self, level: PagingLevel) -> &NodeGuard<'a> {
        self.path[level as usize - 1].as_ref().expect("the cursor holds the nodes on its path")
    }

    fn cur_node(&self) -> &NodeGuard<'a> {
        self.node(self.level)
    }

    fn cur_index(&self) -> usize {
        pte_index::<C::F>(self.va, self.level)
    }

    fn cur_raw(&self) -> u64 {
        self.cur_node().read(self.cur_index())
    }

    /// The range of the current entry: `start` and the exclusive end, which
    /// saturates at `usize::MAX` for the very last entry of the space.
    fn cur_entry_range(&self) -> Range<Vaddr> {
        entry_range::<C>(self.va, self.level)
    }

    /// Descends into `child`, the node at the current entry.
    fn push(&mut self, child: NodeGuard<'a>) {
        debug_assert!(self.level > 1);
        self.level -= 1;
        debug_assert_eq!(child.level(), self.level, "page-table node at the wrong level");
        let l = self.level as usize - 1;
        debug_assert!(self.path[l].is_none(), "a second guard below the current level");
        self.path[l] = Some(child);
        self.base[l] = align_down(self.va, node_span::<C::F>(self.level));
    }

    /// Goes up a level. The node left stays locked, without a guard: it is
    /// part of the locked sub-tree, which `unlock_all` releases.
    fn pop(&mut self) {
        debug_assert!(self.level < self.guard_level);
        if let Some(node) = self.path[self.level as usize - 1].take() {
            let _ = node.into_raw();
        }
        self.level += 1;
    }

    /// Descends into the existing node `child` at the current entry.
    fn descend(&mut self, child: Paddr) {
        // SAFETY: the current entry holds `va`, which lies in the barrier,
        // and points to `child` (see `held_node`).
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
    unsafe fn held_node(&self, pa: Paddr) -> NodeGuard<'a> {
        // SAFETY: the node is locked by this cursor, hence alive.
        let node = unsafe { NodeRef::new(self.phys(), pa) };
        // SAFETY: the caller's contract: the cursor owns the lock without a
        // guard, and this is the only guard of the node.
        unsafe { NodeGuard::from_raw(node) }
    }

    /// Whether `child`, the node at the current entry, has no entries.
    fn child_is_empty(&self, child: Paddr) -> bool {
        // SAFETY: the current entry holds `va`, which lies in the barrier,
        // and points to `child`; the guard is given up before this returns.
        let child = unsafe { self.held_node(child) };
        let empty = child.nr_children() == 0;
        let _ = child.into_raw();
        empty
    }

    /// Pops levels until the current node holds `va`.
    fn sync_path(&mut self) {
        while self.level < self.guard_level {
            let span = node_span::<C::F>(self.level);
            if align_down(self.va, span) == self.base[self.level as usize - 1] {
                break;
            }
            self.pop();
        }
    }

    /// Moves `va` to the end of the current entry, or to `end` if sooner.
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
                PteKind::Table(child) => self.descend(child),
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
        loop {
            if self.va >= end {
                self.va = end;
                return None;
            }
            self.sync_path();
            match C::F::decode(self.cur_raw(), self.level) {
                PteKind::Absent => self.skip_entry(end),
                PteKind::Table(child) => {
                    if self.child_is_empty(child) {
                        self.skip_entry(end);
                    } else {
                        self.descend(child);
                    }
                }
                PteKind::Page { .. } => return Some(self.va),
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

    /// Releases every lock, once.
    fn unlock_all(&mut self) {
        let Some(guard_node) = self.path[self.guard_level as usize - 1].take() else {
            return;
        };
        for node in self.path.iter_mut().filter_map(Option::take) {
            let _ = node.into_raw();
        }
        let guard = Guard {
            node: guard_node.into_raw(),
            level: self.guard_level,
            base: self.base[self.guard_level as usize - 1],
        };
        unlock_range(&PtTree(self.pt), &guard, &self.barrier);
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
struct PtTree<'a, C: PageTableConfig>(&'a PageTable<C>);

impl<'a, C: PageTableConfig> LockTree for PtTree<'a, C> {
    type Node = NodeRef<'a>;

    fn root(&self) -> NodeRef<'a> {
        self.0.root_node()
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
        match C::F::decode(node.read(index), level) {
            // SAFETY: the protocol runs inside the cursor's read-side
            // section, so a node reachable now is not reused before it ends;
            // a child of a node the caller holds cannot even be detached.
            PteKind::Table(child) => Some(unsafe { NodeRef::new(self.0.phys(), child) }),
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

/// What [`CursorMut::take_next`] removed from the table.
///
/// It still owns what was mapped: flush the TLB for
/// [`va_range`](Self::va_range) on every CPU that may cache it, then drop
/// it (a `TlbFlusher` does both in order).
#[must_use = "dropping a fragment before the TLB flush lets its frames be reused while still cached"]
#[derive(Debug)]
pub enum PageTableFrag<F: PagingFormat = X86_64> {
    /// One leaf mapping.
    Mapped {
        /// Where it was mapped.
        va: Vaddr,
        /// What was mapped.
        item: MappedItem,
    },
    /// A whole sub-tree, detached at once.
    StrayPageTable {
        /// The detached sub-tree.
        pt: StraySubtree<F>,
        /// The first address it mapped.
        va: Vaddr,
        /// The bytes it spans.
        len: usize,
        /// The leaf mappings it held (huge pages included, one each).
        num_frames: usize,
    },
}

impl<F: PagingFormat> PageTableFrag<F> {
    /// The virtual range the fragment covered.
    #[must_use]
    pub fn va_range(&self) -> Range<Vaddr> {
        match self {
            PageTableFrag::Mapped { va, item } => {
                let len = match item {
                    MappedItem::Tracked(..) => crate::addr::PAGE_SIZE,
                    MappedItem::Untracked(_, level, _) => page_size::<F>(*level),
                };
                *va..va.saturating_add(len)
            }
            PageTableFrag::StrayPageTable { va, len, .. } => *va..va.saturating_add(*len),
        }
    }
}

/// A detached page-table sub-tree. Dropping it frees the nodes and releases
/// the tracked frames they map after an RCU grace period.
pub struct StraySubtree<F: PagingFormat = X86_64> {
    phys: NonNull<PhysMem>,
    /// The entry that pointed to it, and that entry's level.
    raw: u64,
    level: PagingLevel,
    _format: PhantomData<F>,
}

// SAFETY: the sub-tree is owned by this value alone; `PhysMem` is `Sync`.
unsafe impl<F: PagingFormat> Send for StraySubtree<F> {}

impl<F: PagingFormat> fmt::Debug for StraySubtree<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StraySubtree").field("entry", &format_args!("{:#x}", self.raw)).finish()
    }
}

/// A pointer to a `PhysMem` that an RCU callback takes to another thread.
/// A pointer, not its address: the callback must use it with its provenance.
struct SendPhys(NonNull<PhysMem>);

// SAFETY: `PhysMem` is `Sync`, so it may be used through a shared pointer
// from any thread; whoever dereferences the pointer answers for its life.
unsafe impl Send for SendPhys {}

impl SendPhys {
    /// The pointer. A method, so that a closure captures the whole wrapper
    /// (which is `Send`) rather than its field (which is not).
    fn get(self) -> NonNull<PhysMem> {
        self.0
    }
}

impl<F: PagingFormat> Drop for StraySubtree<F> {
    fn drop(&mut self) {
        // SAFETY: the `PhysMem` outlives its page tables and their parts.
        let phys = unsafe { self.phys.as_ref() };
        let (phys_ptr, raw, level) = (SendPhys(self.phys), self.raw, self.level);
        phys.platform().call_rcu(alloc::boxed::Box::new(move || {
            // SAFETY: the space waits for its callbacks before it is freed
            // (`KernelSpace::drop` calls `rcu_barrier`), so the `PhysMem`
            // is still alive.
            let phys = unsafe { phys_ptr.get().as_ref() };
            // SAFETY: this value owned the detached sub-tree's entry; the
            // grace period has passed, so no lock-free walker still reaches
            // it. Flushing the TLB for it before dropping this value is the
            // duty of its owner (see `PageTableFrag`).
            unsafe { release_entry::<F>(phys, raw, level) };
        }));
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
    pub(super) fn new(pt: &'a PageTable<C>, range: &Range<Vaddr>) -> Result<Self, RangeError> {
        Ok(Self { inner: Cursor::new(pt, range)?, detached: Vec::new(), removed: false })
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

    /// Maps `item` at the current address and moves past it.
    ///
    /// # Panics
    ///
    /// Panics in the cases [`try_map`](Self::try_map) reports, with the
    /// reason: most notably "mapping over an already mapped page".
    pub fn map(&mut self, item: MappedItem) {
        if let Err(e) = self.try_map(item) {
            panic!("CursorMut::map at {:#x}: {}", self.inner.va, e.kind);
        }
    }

    /// Maps `item` at the current address and moves past it, or returns it
    /// with the reason. A rejected call changes nothing.
    ///
    /// A tracked frame is mapped at level 1; an untracked item at its level,
    /// where an empty page-table node left there is replaced.
    pub fn try_map(&mut self, item: MappedItem) -> Result<(), MapError> {
        let (pa, level, prop, tracked) = match &item {
            MappedItem::Tracked(frame, prop) => (frame.paddr(), 1, *prop, true),
            MappedItem::Untracked(pa, level, prop) => (*pa, *level, *prop, false),
        };
        let fail = |kind, item| Err(MapError { kind, item });
        if let MappedItem::Tracked(frame, _) = &item {
            // The entry will hold the frame's reference as a bare address
            // and take it back through this table's metadata array.
            if !core::ptr::eq(frame.phys(), self.inner.phys()) {
                return fail(MapErrorKind::ForeignFrame, item);
            }
        }
        if !(1..=C::F::HIGHEST_LEAF_LEVEL).contains(&level) {
            return fail(MapErrorKind::UnsupportedLevel, item);
        }
        let size = page_size::<C::F>(level);
        let c = &mut self.inner;
        if c.va >= c.barrier.end || size > c.barrier.end - c.va {
            return fail(MapErrorKind::OutOfRange, item);
        }
        if !is_aligned(c.va, size) || !is_aligned(pa, size) {
            return fail(MapErrorKind::Misaligned, item);
        }
        if C::F::PA_BITS < usize::BITS && pa.checked_add(size).is_none_or(|end| end > 1 << C::F::PA_BITS) {
            return fail(MapErrorKind::PaddrTooLarge, item);
        }
        c.sync_path();
        // The guard covers at least one entry of `size` (the range does), so
        // it is at `level` or above.
        while c.level < level {
            c.pop();
        }
        while c.level > level {
            match C::F::decode(c.cur_raw(), c.level) {
                PteKind::Table(child) => c.descend(child),
                PteKind::Page { .. } => return fail(MapErrorKind::AlreadyMapped, item),
                PteKind::Absent => {
                    let Ok(child) = alloc_node(c.phys(), c.level - 1) else {
                        self.reclaim_empty_path();
                        return fail(MapErrorKind::OutOfMemory, item);
                    };
                    c.cur_node().write(c.cur_index(), C::F::encode_table(child.pa()));
                    // The new node stays locked: it is inside the barrier.
                    c.push(child);
                }
            }
        }
        let raw = c.cur_raw();
        match C::F::decode(raw, level) {
            PteKind::Absent => {}
            PteKind::Table(child) if c.child_is_empty(child) && Self::may_detach(level - 1) => {
                c.cur_node().write(c.cur_index(), 0);
                // SAFETY: the node was at the current entry, which holds
                // `va` and lies in the barrier, until it was just unhooked;
                // `child_is_empty` gave up its guard.
                let child = unsafe { c.held_node(child) };
                let span = entry_range::<C>(c.va, level);
                self.retire_empty(child, raw, level, span);
            }
            _ => return fail(MapErrorKind::AlreadyMapped, item),
        }
        let c = &mut self.inner;
        let (node, i) = (c.cur_node(), c.cur_index());
        node.write(i, C::F::encode_page(pa, level, prop, tracked));
        if let MappedItem::Tracked(frame, _) = item {
            // The entry now owns the frame's reference.
            let _ = frame.into_raw();
        }
        c.va += size;
        Ok(())
    }

    /// Maps tracked `frames` one 4 KiB page after another from the current
    /// address, exactly as [`try_map`](Self::try_map) would one at a time,
    /// but filling each leaf node in a tight loop once the first frame in
    /// it is mapped. Stops at the first frame `try_map` would reject and
    /// returns that rejection; the frames before it stay mapped.
    ///
    /// If the iterator panics, the frames it yielded before stay mapped, as
    /// if it had ended there, and the panic goes on; the table is
    /// consistent and the cursor usable, at an address no further than the
    /// end of what was mapped (`jump` before mapping on).
    pub fn try_map_frames<T: AnyFrameMeta + ?Sized>(
        &mut self,
        frames: impl IntoIterator<Item = Frame<T>>,
        prop: PageProperty,
    ) -> Result<(), MapError> {
        let mut frames = frames.into_iter();
        let slots = self.inner.phys().slot_map();
        let encode = C::F::page_encoder(1, prop, true);
        // A frame taken from `frames` that the fill below could not map.
        let mut rest = None;
        while let Some(first) = rest.take().or_else(|| frames.next()) {
            self.try_map(MappedItem::Tracked(Frame::into_dyn(first), prop))?;
            let c = &mut self.inner;
            if c.level != 1 {
                continue;
            }
            // `try_map` left the cursor in the leaf node it wrote, just past
            // that page: fill the rest of the node directly, as long as the
            // frames are ours and the entries absent. `try_map` deals with
            // whatever stops the fill (and reports any error).
            let node_end = c.base[0].saturating_add(node_span::<C::F>(1));
            let limit = node_end.min(c.barrier.end);
            if c.va >= limit {
                continue;
            }
            let from = pte_index::<C::F>(c.va, 1);
            let to = from + (limit - c.va) / crate::addr::PAGE_SIZE;
            let written = c.cur_node().fill_absent(from, to, || {
                let frame = frames.next()?;
                let Some(pa) = frame.paddr_in(slots) else {
                    rest = Some(frame);
                    return None;
                };
                // The entry takes over the frame's reference.
                core::mem::forget(frame);
                Some(encode(pa))
            });
            c.va += written * crate::addr::PAGE_SIZE;
        }
        Ok(())
    }

    /// Whether a node at `level` may be detached.
    fn may_detach(level: PagingLevel) -> bool {
        level < C::F::NR_LEVELS - 1 || (level == C::F::NR_LEVELS - 1 && C::TOP_LEVEL_CAN_UNMAP)
    }

    /// Queues `node`, emptied and already unhooked from its parent (whose
    /// entry at `entry_level` was `raw`), for freeing; marks it stray and
    /// unlocks it.
    fn retire_empty(&mut self, node: NodeGuard<'a>, raw: u64, entry_level: PagingLevel, span: Range<Vaddr>) {
        debug_assert_eq!(C::F::decode(raw, entry_level), PteKind::Table(node.pa()));
        debug_assert_eq!(node.nr_children(), 0);
        node.mark_stray();
        drop(node);
        self.detached.push((raw, entry_level, span));
    }

    /// Detaches the nodes on the path, bottom up, that are empty and below
    /// the guard. The guard itself is left to `drop`.
    fn reclaim_empty_path(&mut self) {
        loop {
            let c = &mut self.inner;
            let level = c.level;
            if level >= c.guard_level || !Self::may_detach(level) || c.cur_node().nr_children() != 0 {
                return;
            }
            let base = c.base[level as usize - 1];
            let node = c.path[level as usize - 1].take().expect("the cursor holds the nodes on its path");
            c.level += 1;
            let parent = c.cur_node();
            let i = pte_index::<C::F>(base, level + 1);
            let raw = parent.read(i);
            parent.write(i, 0);
            let span = base..base.saturating_add(node_span::<C::F>(level));
            self.retire_empty(node, raw, level + 1, span);
        }
    }

    /// Splits the huge page at the current entry, and the pages it splits
    /// into, until the page holding `va` starts at `va` and ends by `end`;
    /// leaves the cursor on that page.
    ///
    /// Every node needed is allocated before any entry changes, so when
    /// memory runs out the page table is left exactly as it was.
    fn split_huge(&mut self, end: Vaddr) -> Result<(), PageTableAllocError> {
        let c = &mut self.inner;
        let (va, top) = (c.va, c.level);
        let fits = |l: PagingLevel| {
            let size = page_size::<C::F>(l);
            is_aligned(va, size) && va.checked_add(size).is_some_and(|e| e <= end)
        };
        // A 4 KiB page always fits: `va` and `end` are page aligned.
        let target = (1..top).rev().find(|&l| fits(l)).unwrap_or(1);
        let mut fresh = [const { None }; MAX_LEVELS];
        for l in target..top {
            match alloc_node(c.phys(), l) {
                Ok(node) => fresh[l as usize] = Some(node),
                Err(e) => {
                    for node in fresh.iter_mut().filter_map(Option::take) {
                        // SAFETY: allocated above and never linked in.
                        unsafe { free_node(node) };
                    }
                    return Err(e);
                }
            }
        }
        for l in (target..top).rev() {
            let child = fresh[l as usize].take().expect("allocated above");
            let PteKind::Page { pa, prop, tracked } = C::F::decode(c.cur_raw(), l + 1) else {
                unreachable!("split_huge on a non-leaf entry")
            };
            debug_assert!(!tracked, "only untracked huge pages exist");
            let small = page_size::<C::F>(l);
            for j in 0..C::F::NR_ENTRIES {
                child.write(j, C::F::encode_page(pa + j * small, l, prop, false));
            }
            // The new node stays locked: it is inside the barrier.
            c.cur_node().write(c.cur_index(), C::F::encode_table(child.pa()));
            c.push(child);
        }
        Ok(())
    }

    /// Removes the next mapping in `va..va + len`: a leaf, or a whole
    /// sub-tree if its span lies inside. Huge pages straddling the search
    /// range are split first, so nothing outside it is unmapped. Moves past
    /// what it removed; returns `None`, at `va + len`, if nothing is mapped.
    ///
    /// # Panics
    ///
    /// Panics if `len` is misaligned or reaches past the range, or if
    /// memory runs out while splitting a huge page
    /// ([`try_take_next`](Self::try_take_next) reports that instead).
    pub fn take_next(&mut self, len: usize) -> Option<PageTableFrag<C::F>> {
        self.try_take_next(len).expect("out of memory while splitting a huge page")
    }

    /// [`take_next`](Self::take_next), but running out of memory while
    /// splitting a huge page is an error: the page table is then unchanged
    /// and the cursor stands in the mapping it could not split.
    ///
    /// # Panics
    ///
    /// Panics if `len` is misaligned or reaches past the range.
    pub fn try_take_next(&mut self, len: usize) -> Result<Option<PageTableFrag<C::F>>, PageTableAllocError> {
        let end = self.inner.search_end(len);
        // A cursor left deep in the tree at the start of a node (by `jump`
        // or a rejected `try_map`) starts from the highest entry beginning
        // at `va`, which may lie in the search range as a whole: a sub-tree
        // is then taken whole whatever the cursor did before.
        let c = &mut self.inner;
        c.sync_path();
        while c.level < c.guard_level && is_aligned(c.va, page_size::<C::F>(c.level + 1)) {
            c.pop();
        }
        loop {
            let c = &mut self.inner;
            if c.va >= end {
                c.va = end;
                return Ok(None);
            }
            c.sync_path();
            let level = c.level;
            let entry = c.cur_entry_range();
            let raw = c.cur_raw();
            match C::F::decode(raw, level) {
                PteKind::Absent => c.skip_entry(end),
                PteKind::Table(child) => {
                    if c.child_is_empty(child) {
                        c.skip_entry(end);
                    } else if entry.start >= c.va && entry.end <= end && Self::may_detach(level - 1) {
                        c.cur_node().write(c.cur_index(), 0);
                        // SAFETY: the node was at the current entry, which
                        // lies in the barrier, until it was just unhooked;
                        // `child_is_empty` gave up its guard.
                        let child = unsafe { c.held_node(child) };
                        // SAFETY: the sub-tree lies in the search range, so
                        // in the barrier, and below the current level.
                        let num_frames = unsafe { detach_subtree::<C::F>(child) };
                        self.inner.va = entry.end;
                        self.removed = true;
                        self.reclaim_empty_path();
                        return Ok(Some(PageTableFrag::StrayPageTable {
                            pt: StraySubtree {
                                phys: NonNull::from(self.inner.phys()),
                                raw,
                                level,
                                _format: PhantomData,
                            },
                            va: entry.start,
                            len: entry.len(),
                            num_frames,
                        }));
                    } else {
                        c.descend(child);
                    }
                }
                PteKind::Page { pa, prop, tracked } => {
                    if entry.start < c.va || entry.end > end {
                        self.split_huge(end)?;
                        continue;
                    }
                    c.cur_node().write(c.cur_index(), 0);
                    let item = if tracked {
                        let slot = NonNull::from(c.phys().slot(pa));
                        // SAFETY: the entry owned one reference to the frame;
                        // it moves to the returned item.
                        MappedItem::Tracked(unsafe { Frame::<dyn AnyFrameMeta>::from_slot(slot) }, prop)
                    } else {
                        MappedItem::Untracked(pa, level, prop)
                    };
                    c.va = entry.end;
                    self.removed = true;
                    self.reclaim_empty_path();
                    return Ok(Some(PageTableFrag::Mapped { va: entry.start, item }));
                }
            }
        }
    }

    /// Changes the property of the next mapping in `va..va + len` with `op`
    /// (splitting huge pages that straddle the search range) and returns the
    /// range changed; returns `None`, at `va + len`, if nothing is mapped.
    /// The caller flushes the TLB for the returned range.
    ///
    /// If `op` panics, the entry keeps its property and the panic goes on
    /// (a huge page around it may have been split already, which changes
    /// no translation).
    ///
    /// # Panics
    ///
    /// As for [`take_next`](Self::take_next).
    #[must_use = "the returned range must be flushed from the TLB"]
    pub fn protect_next(
        &mut self,
        len: usize,
        op: &mut impl FnMut(&mut PageProperty),
    ) -> Option<Range<Vaddr>> {
        self.try_protect_next(len, op).expect("out of memory while splitting a huge page")
    }

    /// [`protect_next`](Self::protect_next), but running out of memory
    /// while splitting a huge page is an error, as for
    /// [`try_take_next`](Self::try_take_next).
    ///
    /// # Panics
    ///
    /// Panics if `len` is misaligned or reaches past the range.
    #[must_use = "the returned range must be flushed from the TLB"]
    pub fn try_protect_next(
        &mut self,
        len: usize,
        op: &mut impl FnMut(&mut PageProperty),
    ) -> Result<Option<Range<Vaddr>>, PageTableAllocError> {
        let end = self.inner.search_end(len);
        loop {
            let c = &mut self.inner;
            if c.va >= end {
                c.va = end;
                return Ok(None);
            }
            c.sync_path();
            let level = c.level;
            let entry = c.cur_entry_range();
            match C::F::decode(c.cur_raw(), level) {
                PteKind::Absent => c.skip_entry(end),
                PteKind::Table(child) => {
                    if c.child_is_empty(child) {
                        c.skip_entry(end);
                    } else {
                        c.descend(child);
                    }
                }
                PteKind::Page { pa, mut prop, tracked } => {
                    if entry.start < c.va || entry.end > end {
                        self.split_huge(end)?;
                        continue;
                    }
                    op(&mut prop);
                    c.cur_node().write(c.cur_index(), C::F::encode_page(pa, level, prop, tracked));
                    c.va = entry.end;
                    return Ok(Some(entry));
                }
            }
        }
    }
}

fn entry_range<C: PageTableConfig>(va: Vaddr, level: PagingLevel) -> Range<Vaddr> {
    let size = page_size::<C::F>(level);
    let start = align_down(va, size);
    start..start.saturating_add(size)
}

/// Marks a detached sub-tree stray and unlocks it; returns its leaf count.
///
/// # Safety
///
/// The caller holds the lock of every node of the sub-tree, and a guard of
/// none but its root, `node`.
unsafe fn detach_subtree<F: PagingFormat>(node: NodeGuard<'_>) -> usize {
    let level = node.level();
    let mut leaves = 0;
    for i in 0..F::NR_ENTRIES {
        match F::decode(node.read(i), level) {
            PteKind::Absent => {}
            PteKind::Page { .. } => leaves += 1,
            PteKind::Table(child) => {
                // SAFETY: a node of the sub-tree, alive while we hold its
                // parent's lock.
                let child = unsafe { NodeRef::new(node.phys(), child) };
                // SAFETY: the caller holds its lock, and has no guard of it.
                let child = unsafe { NodeGuard::from_raw(child) };
                // SAFETY: the same holds for the child's sub-tree.
                leaves += unsafe { detach_subtree::<F>(child) };
            }
        }
    }
    node.mark_stray();
    leaves
}

impl<C: PageTableConfig> Drop for CursorMut<'_, C> {
    fn drop(&mut self) {
        let c = &self.inner;
        let guard_emptied =
            self.removed && Self::may_detach(c.guard_level) && c.node(c.guard_level).nr_children() == 0;
        let guard_level = c.guard_level;
        let guard_base = c.base[guard_level as usize - 1];
        self.inner.unlock_all();

        let platform = self.inner.phys().platform();
        if !self.detached.is_empty() {
            // One invalidation covers every detached node's span.
            let start = self.detached.iter().map(|d| d.2.start).min().unwrap_or(0);
            let end = self.detached.iter().map(|d| d.2.end).max().unwrap_or(0);
            platform.flush_tlb(TlbFlushOp::Range(start..end), TlbScope::AllCpus);
        }
        for (raw, level, _) in self.detached.drain(..) {
            drop(StraySubtree {
                phys: NonNull::from(self.inner.phys()),
                raw,
                level,
                _format: PhantomData::<C::F>,
            });
        }

        if guard_emptied {
            if self.inner.pt.lazy_reclaim {
                // Leave the node for a batch: a node emptied now is often
                // filled again at once (an area dropped and another
                // created in the same place), and reclaiming it would cost
                // a TLB flush and a fresh zeroed node.
                self.inner.pt.queue_empty_node(guard_base, guard_level);
            } else {
                reclaim_empty_node(self.inner.pt, guard_base, guard_level);
            }
        }
    }
}

/// Detaches the node at `level` mapping from `base`, if it is still there
/// and still empty, by locking its parent (a cursor over the node's span,
/// with its guard one level up). That cursor's own drop continues upwards.
/// The span of a node at the very top of the address space ends at 2^64,
/// which no `Range` can express: it stops one page short, and the guard
/// level is forced instead.
fn reclaim_empty_node<C: PageTableConfig>(pt: &PageTable<C>, base: Vaddr, level: PagingLevel) {
    let span_end =
        base.checked_add(node_span::<C::F>(level)).unwrap_or(usize::MAX - (crate::addr::PAGE_SIZE - 1));
    match Cursor::new_with_guard_at_least(pt, &(base..span_end), level + 1) {
        Ok(parent) => {
            let mut parent = CursorMut { inner: parent, detached: Vec::new(), removed: false };
            parent.reclaim_empty_child(base);
        }
        Err(e) => debug_assert!(false, "cannot lock the parent of an emptied node: {e}"),
    }
}

impl<C: PageTableConfig> CursorMut<'_, C> {
    /// Detaches the empty node mapping `span_start..` from the guard, if it
    /// is still there and still empty.
    fn reclaim_empty_child(&mut self, span_start: Vaddr) {
        let c = &mut self.inner;
        let level = c.guard_level;
        debug_assert_eq!(c.level, level, "a fresh cursor stands at its guard");
        let i = pte_index::<C::F>(span_start, level);
        let raw = c.node(level).read(i);
        if let PteKind::Table(child) = C::F::decode(raw, level) {
            if c.child_is_empty(child) && Self::may_detach(level - 1) {
                c.node(level).write(i, 0);
                self.removed = true;
                // SAFETY: the node was a child of the guard node, inside the
                // cursor's range (its span), until it was just unhooked;
                // `child_is_empty` gave up its guard.
                let child = unsafe { c.held_node(child) };
                let span = entry_range::<C>(span_start, level);
                self.retire_empty(child, raw, level, span);
            }
        }
    }
}

impl<C: PageTableConfig> fmt::Debug for CursorMut<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CursorMut").field(&self.inner).finish()
    }
}
