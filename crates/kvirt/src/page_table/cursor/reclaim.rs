//! Reclamation: detaching nodes from the tree and freeing them safely.
//!
//! A node leaves the tree in one of two ways:
//!
//! * taken whole by `take_next` ([`detach_subtree`]); its owner gets it as a
//!   [`StraySubtree`] and drops it after flushing the TLB;
//! * emptied by a cursor that unmapped its last entry. The cursor detaches
//!   the emptied nodes on its path below its guard node as it goes
//!   (`reclaim_empty_path`), and keeps them in `CursorMut::detached` until
//!   it is dropped, which flushes the TLB once for all of them.
//!
//! Either way the node is marked stray under its lock, so that a cursor
//! that reached it without locks and then locked it starts again, and it is
//! freed only after an RCU grace period, since lock-free walkers may still
//! see it.
//!
//! The guard node itself cannot be detached by the cursor holding it: that
//! needs its parent's lock, which a cursor never takes once it holds a
//! child (locks go parent before child). So when a dropped cursor leaves
//! its guard node empty, [`reclaim_empty_node`] locks the parent (with a
//! new cursor whose guard is the parent), detaches the node if it is still
//! empty, and goes on upwards, in a loop, as long as that empties the
//! parent too. A table with lazy reclamation (a kernel space's) queues the
//! emptied guard instead, and reclaims a batch at a time
//! ([`PageTable::reclaim_empty_nodes`]): a node emptied now is often filled
//! again at once.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;
use core::ptr::NonNull;

use crossbeam_utils::CachePadded;

use super::{entry_range, may_detach, node_span, Cursor, CursorMut};
use crate::addr::{Paddr, PagingLevel, Vaddr, PAGE_SIZE};
use crate::arch::x86_64::X86_64;
use crate::arch::{pte_index, PagingFormat, PteKind};
use crate::frame::PhysMem;
use crate::page_table::config::PageTableConfig;
use crate::page_table::node::{release_entry, NodeGuard, NodeRef};
use crate::page_table::table::PageTable;
use crate::platform::{TlbFlushOp, TlbScope};

/// How many emptied nodes one queue of a lazily reclaiming table keeps
/// before it reclaims them.
const EMPTY_NODE_BATCH: usize = 32;

/// Queues of emptied guard nodes per table: CPU `i` queues on queue
/// `i % EMPTY_NODE_QUEUES`.
const EMPTY_NODE_QUEUES: usize = 8;

/// Where a lazily reclaiming table's emptied guard nodes (start address,
/// level) wait for a batch: one queue per CPU, each on a cache line of its
/// own, off the table's line, which every cursor reads. CPUs dropping areas
/// at once work in VMALLOC arenas of their own, under page-table nodes of
/// their own; a node is queued once however often it empties (the
/// `queued` mark), and each CPU queues the nodes it empties on its own
/// queue, so they do not meet on a lock there.
///
/// A node may sit in two queues (emptied on two CPUs in turn); reclaiming
/// it twice is harmless, since each reclaim first checks that the node is
/// still there and still empty.
pub(crate) struct EmptyNodeQueues {
    queues: [CachePadded<spin::Mutex<Vec<EmptyNode>>>; EMPTY_NODE_QUEUES],
}

/// An emptied node, named by its place: the lowest address it maps and its
/// level. Reclaiming it first checks that a node is still there, empty.
type EmptyNode = (Vaddr, PagingLevel);

impl EmptyNodeQueues {
    fn new() -> Self {
        Self { queues: core::array::from_fn(|_| CachePadded::new(spin::Mutex::new(Vec::new()))) }
    }
}

impl fmt::Debug for EmptyNodeQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queued: usize = self.queues.iter().map(|q| q.lock().len()).sum();
        f.debug_struct("EmptyNodeQueues").field("queued", &queued).finish()
    }
}

impl<C: PageTableConfig> PageTable<C> {
    /// Makes emptied guard nodes wait for a batch (or for
    /// [`reclaim_empty_nodes`](Self::reclaim_empty_nodes)) instead of being
    /// reclaimed when the cursor that emptied them is dropped; turning it
    /// off reclaims what waits.
    pub(crate) fn set_lazy_reclaim(&mut self, lazy: bool) {
        match (lazy, self.empty_nodes.is_some()) {
            (true, false) => self.empty_nodes = Some(Box::new(EmptyNodeQueues::new())),
            (false, true) => {
                self.reclaim_empty_nodes();
                self.empty_nodes = None;
            }
            _ => {}
        }
    }

    /// Queues an emptied node on the calling CPU's queue; reclaims that
    /// queue when it is full.
    fn queue_empty_node(&self, queues: &EmptyNodeQueues, base: Vaddr, level: PagingLevel) {
        let cpu = self.phys().platform().current_cpu();
        let queue = &queues.queues[cpu % EMPTY_NODE_QUEUES];
        let full = {
            let mut queue = queue.lock();
            queue.push((base, level));
            queue.len() >= EMPTY_NODE_BATCH
        };
        if full {
            self.reclaim_queue(queue);
        }
    }

    /// Reclaims the nodes `queue` holds now that are still empty; returns
    /// whether it held any.
    fn reclaim_queue(&self, queue: &spin::Mutex<Vec<EmptyNode>>) -> bool {
        let batch = core::mem::take(&mut *queue.lock());
        let any = !batch.is_empty();
        for (base, level) in batch {
            reclaim_empty_node(self, base, level);
        }
        any
    }

    /// Whether the node at `level` mapping from `base` waits in a queue of
    /// emptied nodes (for the invariant check).
    pub(in crate::page_table) fn is_queued_empty(&self, base: Vaddr, level: PagingLevel) -> bool {
        self.empty_nodes.as_ref().is_some_and(|q| q.queues.iter().any(|q| q.lock().contains(&(base, level))))
    }

    /// Reclaims every queued node that is still empty (see
    /// `set_lazy_reclaim`, on for a kernel space's table). Nodes are freed after
    /// an RCU grace period.
    pub fn reclaim_empty_nodes(&self) {
        let Some(queues) = &self.empty_nodes else { return };
        // Reclaiming a node reclaims the ancestors it empties as well; the
        // loop picks up what other cursors queue meanwhile.
        loop {
            let mut reclaimed_any = false;
            for queue in &queues.queues {
                reclaimed_any |= self.reclaim_queue(queue);
            }
            if !reclaimed_any {
                return;
            }
        }
    }
}

/// A detached page-table sub-tree. Dropping it frees the nodes and releases
/// the tracked frames they map after an RCU grace period.
pub struct StraySubtree<F: PagingFormat = X86_64> {
    phys: NonNull<PhysMem>,
    /// The entry that pointed to it, and that entry's level. This value owns
    /// the entry: the sub-tree and what it maps.
    raw: u64,
    level: PagingLevel,
    _format: PhantomData<F>,
}

// SAFETY: the sub-tree is owned by this value alone; `PhysMem` is `Sync`.
unsafe impl<F: PagingFormat> Send for StraySubtree<F> {}

impl<F: PagingFormat> StraySubtree<F> {
    /// The sub-tree `raw` pointed to, from an entry at `level` of a table of
    /// `phys`.
    ///
    /// # Safety
    ///
    /// The entry was removed from the tree, the caller owned it and gives it
    /// to the result, and every node below it is marked stray and unlocked.
    pub(super) unsafe fn new(phys: &PhysMem, raw: u64, level: PagingLevel) -> Self {
        Self { phys: NonNull::from(phys), raw, level, _format: PhantomData }
    }
}

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
        phys.platform().call_rcu(Box::new(move || {
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

/// Marks a detached sub-tree stray and unlocks it; returns its leaf count.
///
/// # Safety
///
/// The caller holds the lock of every node of the sub-tree, and a guard of
/// none but its root, `node`.
pub(super) unsafe fn detach_subtree<F: PagingFormat>(node: NodeGuard<'_>) -> usize {
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

impl<'a, C: PageTableConfig> CursorMut<'a, C> {
    /// Queues `node`, emptied and already unhooked from its parent (whose
    /// entry at `entry_level` was `raw`), for freeing; marks it stray and
    /// unlocks it.
    pub(super) fn retire_empty(
        &mut self,
        node: NodeGuard<'a>,
        raw: u64,
        entry_level: PagingLevel,
        span: Range<Vaddr>,
    ) {
        debug_assert_eq!(C::F::decode(raw, entry_level), PteKind::Table(node.pa()));
        debug_assert_eq!(node.nr_children(), 0);
        node.mark_stray();
        drop(node);
        self.detached.push((raw, entry_level, span));
    }

    /// Unhooks the sub-tree the current entry points to (`child`), marks it
    /// stray and unlocks it; returns the entry, which now owns the sub-tree,
    /// and the sub-tree's leaf count. The entry must lie in the barrier as
    /// a whole.
    pub(super) fn unhook_subtree(&mut self, child: Paddr) -> (u64, usize) {
        let c = &mut self.inner;
        let raw = c.cur_raw();
        debug_assert_eq!(C::F::decode(raw, c.level), PteKind::Table(child));
        c.cur_node().write(c.cur_index(), 0);
        // SAFETY: the node was at the current entry, in the barrier, until
        // it was just unhooked; nodes below the current level have no guard.
        let child = unsafe { c.held_node(child) };
        // SAFETY: the sub-tree lies in the barrier: the cursor holds all its
        // locks, and a guard of none but `child`, made just above.
        (raw, unsafe { detach_subtree::<C::F>(child) })
    }

    /// Unhooks the sub-tree the current entry points to (`child`, which
    /// maps nothing: see `maps_nothing_below`), spanning `span`, and queues
    /// it for freeing with the nodes this cursor detached.
    pub(super) fn retire_unmapped(&mut self, child: Paddr, span: Range<Vaddr>) {
        let (raw, leaves) = self.unhook_subtree(child);
        debug_assert_eq!(leaves, 0, "a sub-tree given way to a page maps nothing");
        self.detached.push((raw, self.inner.level, span));
    }

    /// Detaches the nodes on the path, bottom up, that are empty and below
    /// the guard. The guard itself is left to `drop`. Inline up to the
    /// test of the cursor's level: a cursor standing at its guard (every
    /// small take in one leaf node) has nothing to detach and makes no
    /// call.
    #[inline]
    pub(super) fn reclaim_empty_path(&mut self) {
        if self.inner.level < self.inner.guard_level {
            self.reclaim_empty_path_below_guard();
        }
    }

    /// [`reclaim_empty_path`](Self::reclaim_empty_path)'s loop.
    #[inline(never)]
    fn reclaim_empty_path_below_guard(&mut self) {
        loop {
            let c = &mut self.inner;
            let level = c.level;
            if level >= c.guard_level || !may_detach::<C>(level) || c.cur_node().nr_children() != 0 {
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

    /// Detaches the node mapping `span_start..` from the guard node, if it is
    /// still there and still empty. The cursor is a fresh one over that
    /// node's span.
    fn detach_empty_child(&mut self, span_start: Vaddr) {
        let c = &mut self.inner;
        let level = c.guard_level;
        debug_assert_eq!(c.level, level, "a fresh cursor stands at its guard");
        let i = pte_index::<C::F>(span_start, level);
        let raw = c.node(level).read(i);
        if let PteKind::Table(child) = C::F::decode(raw, level) {
            // SAFETY: a fresh cursor stands at the start of its range, at its
            // guard node, whose entry there points to `child`: a node inside
            // the cursor's range (its span), locked by it, below the current
            // level, so with no guard yet.
            let child = unsafe { c.held_node(child) };
            if child.nr_children() == 0 && may_detach::<C>(level - 1) {
                c.node(level).write(i, 0);
                self.removed = true;
                let span = entry_range::<C>(span_start, level);
                self.retire_empty(child, raw, level, span);
            } else {
                // Filled again since it was queued: it stays, and may be
                // queued when it empties next.
                child.swap_queued(false);
                let _ = child.into_raw();
            }
        }
    }

    /// Ends the cursor's work, once: releases its locks, flushes the TLB for
    /// the nodes it detached and frees them after a grace period. Returns
    /// the base and level of its guard node if the cursor emptied it and it
    /// may be detached (by its parent's holder: see [`reclaim_empty_node`]).
    ///
    /// With `to_queue` (the cursor is dropped) and a lazily reclaiming
    /// table, the emptied guard is marked queued, and not returned if it
    /// was already: it waits in a queue once, however often it is emptied.
    fn finish(&mut self, to_queue: bool) -> Option<(Vaddr, PagingLevel)> {
        let c = &self.inner;
        let guard_level = c.guard_level;
        // `None` once finished: the locks are gone.
        let guard = c.path[guard_level as usize - 1].as_ref()?;
        let guard_emptied = self.removed && must_dispose(c.pt, guard, guard_level, to_queue);
        let guard_base = c.base[guard_level as usize - 1];
        self.inner.unlock_all();

        if !self.detached.is_empty() {
            self.free_detached();
        }
        guard_emptied.then_some((guard_base, guard_level))
    }

    /// Flushes the TLB for the nodes this cursor detached, once for all of
    /// them, and frees them after a grace period. Out of line: most
    /// cursors detach nothing.
    #[inline(never)]
    fn free_detached(&mut self) {
        let phys = self.inner.phys();
        // One invalidation covers every detached node's span.
        let start = self.detached.iter().map(|d| d.2.start).min().unwrap_or(0);
        let end = self.detached.iter().map(|d| d.2.end).max().unwrap_or(0);
        phys.platform().flush_tlb(TlbFlushOp::Range(start..end), TlbScope::AllCpus);
        for (raw, level, _) in self.detached.drain(..) {
            // SAFETY: `retire_empty` unhooked the entry, marked its node
            // stray and unlocked it; this cursor owned it.
            drop(unsafe { StraySubtree::<C::F>::new(phys, raw, level) });
        }
    }
}

impl<C: PageTableConfig> Drop for CursorMut<'_, C> {
    fn drop(&mut self) {
        let Some((base, level)) = self.finish(true) else { return };
        dispose_empty_node(self.inner.pt, base, level);
    }
}

/// Whether `guard`, a node at `level` that its holder may have emptied,
/// must go to [`dispose_empty_node`] once unlocked: it is empty, may be
/// detached, and, when the holder is done with it (`to_queue`) in a table
/// that queues emptied nodes, it is not queued already (it is marked
/// queued now: a node waits in a queue once, however often it empties).
pub(super) fn must_dispose<C: PageTableConfig>(
    pt: &PageTable<C>,
    guard: &NodeGuard<'_>,
    level: PagingLevel,
    to_queue: bool,
) -> bool {
    may_detach::<C>(level)
        && guard.nr_children() == 0
        && !(to_queue && pt.empty_nodes.is_some() && guard.swap_queued(true))
}

/// Queues the emptied node at `level` mapping from `base`, which its holder
/// has unlocked, or reclaims it at once in a table that does not queue.
pub(super) fn dispose_empty_node<C: PageTableConfig>(pt: &PageTable<C>, base: Vaddr, level: PagingLevel) {
    match &pt.empty_nodes {
        // Leave the node for a batch: a node emptied now is often filled
        // again at once (an area dropped and another created in the same
        // place), and reclaiming it would cost a TLB flush and a fresh
        // zeroed node.
        Some(queues) => pt.queue_empty_node(queues, base, level),
        None => reclaim_empty_node(pt, base, level),
    }
}

/// Detaches the emptied node at `level` mapping from `base`, if it is still
/// there and still empty, then each ancestor that this empties in turn.
///
/// Each step locks the parent of the node, with a cursor over the node's
/// span whose guard is one level up, detaches the node, and finishes that
/// cursor, which says whether the parent emptied. The span of a node at
/// the very top of the address space ends at 2^64, which no `Range` can
/// express: it stops one page short, and the guard level is forced instead.
fn reclaim_empty_node<C: PageTableConfig>(pt: &PageTable<C>, mut base: Vaddr, mut level: PagingLevel) {
    loop {
        let span_end = base.checked_add(node_span::<C::F>(level)).unwrap_or(usize::MAX - (PAGE_SIZE - 1));
        let parent = match Cursor::new_with_guard_at_least(pt, &(base..span_end), level + 1) {
            Ok(parent) => parent,
            Err(e) => {
                debug_assert!(false, "cannot lock the parent of an emptied node: {e}");
                return;
            }
        };
        let mut parent = CursorMut::from_cursor(parent);
        parent.detach_empty_child(base);
        match parent.finish(false) {
            Some(emptied) => (base, level) = emptied,
            None => return,
        }
    }
}
