//! Lock-free walks: how the hardware reads the table.
//!
//! A walk reads entries from the root down without taking any lock, as a
//! CPU's MMU does: [`RamBase::read`], which is allowed on an unlocked node
//! (it is `NodeRef::read` with where memory starts kept in a register). A
//! [`Walker`] holds what a walk starts from. What keeps the nodes it
//! passes alive is the caller's business: an RCU read-side section (a
//! [`ReadSection`], public), or owning the mapping walked to (a kernel
//! virtual area's queries).
//!
//! A walk need not start at the root. Whoever owns the mappings of a range
//! can keep a [`WalkStart`]: the lowest node on the path of each of its
//! pages, found once they are all mapped. While they stay mapped, that
//! node stays on their path and alive (emptying it, or a node above it,
//! would take them away), so walks of the range start there and skip the
//! levels above: a kernel virtual area inside one leaf node's span reads
//! one entry per query instead of one per level.

use core::marker::PhantomData;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use super::config::{vaddr_bounds, PageTableConfig};
use super::node::{NodeGuard, RamBase};
use super::table::PageTable;
use crate::addr::{Paddr, PagingLevel, Vaddr, PAGE_SIZE};
use crate::arch::{offset_mask, pte_index, PagingFormat, PteKind};
use crate::page_prop::PageProperty;
use crate::platform::RcuReadGuard;

/// The leaf a walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leaf {
    /// The physical address of the whole page (not of `va`).
    pub(crate) pa: Paddr,
    pub(crate) level: PagingLevel,
    pub(crate) prop: PageProperty,
    pub(crate) tracked: bool,
}

impl<C: PageTableConfig> PageTable<C> {
    /// Reads the leaf mapping `va` by a plain walk, like the hardware does
    /// (no locks; a snapshot). Returns the physical address `va` translates
    /// to and the property.
    ///
    /// Only addresses of this table's own range are translated (`None`
    /// otherwise): a user table does not follow the kernel entries it
    /// shares, which belong to the kernel table and may be freed before it.
    ///
    /// The walk runs in a read-side section of its own; many walks in a
    /// row share one through [`read_section`](Self::read_section).
    #[must_use]
    #[inline(always)] // small, and what the caller ignores is not computed
    pub fn translate(&self, va: Vaddr) -> Option<(Paddr, PageProperty)> {
        self.read_section().translate(va)
    }

    /// The physical address `va` translates to: [`translate`](Self::translate)
    /// without the property, which it does not decode.
    ///
    /// Cheaper than `translate(va).map(|(pa, _)| pa)` beyond the decoding:
    /// there, `None` is a value the property cannot take, so telling it
    /// from `Some` reads the decoded property, and a chain of queries, each
    /// waiting for the last, waits for that too.
    #[must_use]
    #[inline(always)] // as `translate`
    pub fn translate_addr(&self, va: Vaddr) -> Option<Paddr> {
        self.read_section().translate_addr(va)
    }

    /// Opens a read-side section in which any number of walks run without
    /// one of their own (see [`ReadSection`]).
    #[inline(always)] // two calls into the platform, and a few pointers
    pub fn read_section(&self) -> ReadSection<'_, C> {
        ReadSection { walker: self.walker(), table: self, _rcu: RcuReadGuard::new(self.phys().platform()) }
    }

    /// Where every walk can start: the root.
    #[inline]
    pub(crate) fn root_walk_start(&self) -> WalkStart {
        WalkStart::new(self.root_entries(), C::F::NR_LEVELS)
    }

    /// The lowest node on the path of every page of `range`, a non-empty,
    /// page-aligned range of the table's: walks of any address in `range`
    /// may start there ([`walk_unlocked_from`](Self::walk_unlocked_from))
    /// while every page of `range` stays mapped. It stops at the node
    /// where the first and last page of `range` lie under different
    /// entries, and at one whose entry for them is a huge page or absent.
    ///
    /// # Safety
    ///
    /// No node on the path of a page of `range` may be freed during the
    /// call: the caller owns the mappings of `range`, all present, and no
    /// one else can remove them (then every node on the path of one holds
    /// an entry leading to it and cannot be emptied).
    pub(crate) unsafe fn walk_start_for(&self, range: &Range<Vaddr>) -> WalkStart {
        debug_assert!(!range.is_empty() && range.start % PAGE_SIZE == 0 && range.end % PAGE_SIZE == 0);
        let (first, last) = (range.start, range.end - PAGE_SIZE);
        let ram = RamBase::of(self.phys());
        let mut start = self.root_walk_start();
        while start.level() > 1
            && pte_index::<C::F>(first, start.level()) == pte_index::<C::F>(last, start.level())
        {
            // SAFETY: `start` is a node of this table on the path of
            // `first` (the root, then a child of one), and it and its child
            // there stay alive (caller contract).
            match unsafe { start.child::<C::F>(ram, first) } {
                Some(child) => start = child,
                None => break,
            }
        }
        start
    }

    /// Whether `start` is the node at its level on the path of `va`: for
    /// the invariant checks of those who keep one.
    pub(crate) fn is_on_path(&self, start: WalkStart, va: Vaddr) -> bool {
        let _rcu = RcuReadGuard::new(self.phys().platform());
        let ram = RamBase::of(self.phys());
        let mut node = self.root_walk_start();
        while node.level() > start.level() {
            // SAFETY: `node` is a node of this table (the root, then a child
            // of one), reached from the root inside a read-side section, as
            // its child is: neither is freed before the section ends.
            match unsafe { node.child::<C::F>(ram, va) } {
                Some(child) => node = child,
                None => return false,
            }
        }
        node == start
    }

    /// Walks to the leaf mapping `va` without locks, starting at `start`
    /// instead of the root.
    ///
    /// # Safety
    ///
    /// - `start` is this table's [`root_walk_start`](Self::root_walk_start),
    ///   or was made by its [`walk_start_for`](Self::walk_start_for) for a
    ///   range holding `va` (or by [`WalkStart::at_leaf`] of a leaf node
    ///   of this table into which all of such a range was mapped), and the
    ///   mapping at `va` has been neither
    ///   removed nor replaced since (a huge page split into smaller ones
    ///   that map the same counts as kept).
    /// - The caller owns the mapping at `va`, present, and no one else can
    ///   remove it during the call.
    #[inline(always)]
    pub(crate) unsafe fn walk_unlocked_from(&self, start: WalkStart, va: Vaddr) -> Option<Leaf> {
        // SAFETY: `start` is a node of this table on the path of `va`
        // (first point): the root is on every path, and a node found on
        // the path of a page stays there while the page stays mapped, since
        // only removing it could empty that node, or one on its way from
        // the root. So it is alive, and for the same reason every node from
        // it down to `va`'s present entry stays alive during the call
        // (second point).
        let entries = unsafe { start.entries() };
        // SAFETY: as just said.
        unsafe { self.walker().walk_from(entries, start.level(), va) }
    }
}

/// A node of a table where lock-free walks can start instead of the root,
/// and its level (see the module docs for when that is allowed): the
/// root ([`PageTable::root_walk_start`]), or a node found for a range
/// ([`PageTable::walk_start_for`], [`WalkStart::at_leaf`]).
///
/// One word: the node's level is kept in the low bits of the address of
/// its entries, which are 8-byte aligned, so that an area's handle stays
/// 64 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalkStart {
    /// Where the node's table's `PhysMem` reaches the node's entries, plus
    /// the node's level (`1..=7`, [`LEVEL_BITS`]).
    tagged: *const AtomicU64,
}

/// The low bits of [`WalkStart::tagged`] that hold the level: free in the
/// address of an `AtomicU64`, 8-byte aligned.
const LEVEL_BITS: usize = 0b111;
const _: () = assert!(core::mem::align_of::<AtomicU64>() > LEVEL_BITS);

// SAFETY: a `WalkStart` is an address and a level; it is dereferenced only
// through its unsafe `entries`, whose callers vouch that the node is
// alive, and a node's entries are atomics, read and written from any
// thread.
unsafe impl Send for WalkStart {}
// SAFETY: as for `Send`: shared, it gives access to nothing.
unsafe impl Sync for WalkStart {}

impl WalkStart {
    #[inline(always)]
    fn new(entries: &[AtomicU64; PAGE_SIZE / 8], level: PagingLevel) -> Self {
        debug_assert!((1..=LEVEL_BITS).contains(&usize::from(level)));
        let entries: *const AtomicU64 = entries.as_ptr();
        Self { tagged: entries.map_addr(|a| a | usize::from(level)) }
    }

    /// Where walks of a range can start once all of it was mapped into
    /// `node`, a leaf node its caller locked: what
    /// [`PageTable::walk_start_for`] of the range would find then.
    #[inline(always)]
    pub(crate) fn at_leaf(node: &NodeGuard<'_>) -> Self {
        debug_assert_eq!(node.level(), 1);
        // SAFETY: the node is one of `node.phys()`'s, alive: we hold its
        // lock.
        unsafe { Self::at(RamBase::of(node.phys()), node.pa(), 1) }
    }

    /// The node at `pa`, of level `level`.
    ///
    /// # Safety
    ///
    /// The page at `pa` is a page-table node of the `PhysMem` `ram` was
    /// made of, alive during the call.
    #[inline(always)]
    unsafe fn at(ram: RamBase<'_>, pa: Paddr, level: PagingLevel) -> Self {
        // SAFETY: the caller's contract is `entries`'.
        let entries = unsafe { ram.entries(pa) };
        let entries = <&[AtomicU64; PAGE_SIZE / 8]>::try_from(entries).expect("a node is a page of entries");
        Self::new(entries, level)
    }

    /// The child node on the path of `va`, if the entry there leads to
    /// one.
    ///
    /// # Safety
    ///
    /// The node is one of a table of format `F` over the `PhysMem` `ram`
    /// was made of, and it and the child stay alive during the call.
    #[inline(always)]
    unsafe fn child<F: PagingFormat>(self, ram: RamBase<'_>, va: Vaddr) -> Option<Self> {
        let level = self.level();
        // SAFETY: the node is alive (caller contract).
        let raw = unsafe { self.entries() }[pte_index::<F>(va, level)].load(Ordering::Acquire);
        let PteKind::Table(child) = F::decode(raw, level) else { return None };
        // SAFETY: `child` is a node of the same table (an entry of one of
        // its nodes leads to it), alive (caller contract).
        Some(unsafe { Self::at(ram, child, level - 1) })
    }

    /// The node's entries.
    ///
    /// # Safety
    ///
    /// The node is alive, as long as the result is used.
    #[inline(always)]
    unsafe fn entries<'a>(self) -> &'a [AtomicU64; PAGE_SIZE / 8] {
        let entries = self.tagged.map_addr(|a| a & !LEVEL_BITS).cast::<[AtomicU64; PAGE_SIZE / 8]>();
        // SAFETY: `entries` is where the node's entries are reached (field
        // invariant), a page of them, alive (caller contract).
        unsafe { &*entries }
    }

    /// The node's level.
    #[inline(always)]
    pub(crate) fn level(self) -> PagingLevel {
        // At most 7, so the cast is exact.
        (self.tagged.addr() & LEVEL_BITS) as PagingLevel
    }
}

/// Where one table's lock-free walks start, read out of the table once:
/// the root's entries and where physical memory is reached. A walk then
/// loads entries and nothing else. A [`ReadSection`] keeps one for all its
/// walks; without it, each walk would first load the table's fields (the
/// root's entries behind the table's address, where memory starts behind
/// its `PhysMem`) and, at each level, where memory starts once more.
///
/// Type invariant: `root` and `ram` are those of one table of
/// configuration `C` (its root's entries, its `PhysMem`), borrowed for
/// `'a`; [`PageTable::walker`] is the only way to make a `Walker`.
pub(crate) struct Walker<'a, C: PageTableConfig> {
    /// The table's root entries.
    root: &'a [AtomicU64; PAGE_SIZE / 8],
    /// Where the table's nodes are reached.
    ram: RamBase<'a>,
    _config: PhantomData<C>,
}

impl<C: PageTableConfig> PageTable<C> {
    /// Where this table's lock-free walks start (see [`Walker`]).
    #[inline(always)]
    fn walker(&self) -> Walker<'_, C> {
        Walker { root: self.root_entries(), ram: RamBase::of(self.phys()), _config: PhantomData }
    }
}

impl<C: PageTableConfig> Walker<'_, C> {
    /// Walks to the leaf mapping `va` without locks.
    ///
    /// # Safety
    ///
    /// No node on the path to `va` may be freed during the call: either the
    /// caller is inside an RCU read-side section of the platform, or it owns
    /// a mapping at `va` that no one else can remove (then every node on the
    /// path holds an entry leading to it and cannot be emptied).
    #[inline(always)]
    pub(crate) unsafe fn walk(&self, va: Vaddr) -> Option<Leaf> {
        let (first, last) = vaddr_bounds::<C>();
        if !(first..=last).contains(&va) {
            return None;
        }
        // SAFETY: the root is a node of the walker's table on every path
        // (type invariant), alive as long as the table; the rest is the
        // caller's contract.
        unsafe { self.walk_from(self.root, C::F::NR_LEVELS, va) }
    }

    /// Walks to the leaf mapping `va` from `entries`, those of a node at
    /// `level` on its path.
    ///
    /// # Safety
    ///
    /// `entries` are those of a node of the walker's table at `level` on
    /// the path of `va`; and as for [`walk`](Self::walk).
    #[inline(always)]
    unsafe fn walk_from(
        &self,
        entries: &[AtomicU64; PAGE_SIZE / 8],
        mut level: PagingLevel,
        va: Vaddr,
    ) -> Option<Leaf> {
        let mut raw = entries[pte_index::<C::F>(va, level)].load(Ordering::Acquire);
        loop {
            match C::F::decode(raw, level) {
                PteKind::Absent => return None,
                PteKind::Page { pa, prop, tracked } => return Some(Leaf { pa, level, prop, tracked }),
                PteKind::Table(child) => {
                    level -= 1;
                    // SAFETY: `child` is a node of the walker's table, whose
                    // `PhysMem` `ram` was copied from (type invariant), not
                    // freed during the call (caller contract).
                    raw = unsafe { self.ram.read(child, pte_index::<C::F>(va, level)) };
                }
            }
        }
    }
}

/// Lock-free walks of one page table inside one read-side section.
///
/// While a `ReadSection` lives, no page-table node that a walk can reach
/// is freed: a node that cursors detach meanwhile waits for the section to
/// end (see "Reclamation" in the module documentation). Its walks
/// therefore need no section each. [`PageTable::translate`] opens and
/// closes one per call, which is two calls into the platform; a run of
/// translations (say, of every page of a buffer handed to a device) pays
/// for that once.
///
/// Each walk is still a snapshot: cursors on other CPUs go on mapping and
/// unmapping, and a later walk sees their changes.
///
/// It is an RCU read-side section, with the rules of one:
///
/// * It stays on the thread (CPU) that opened it: it is neither `Send` nor
///   `Sync`.
///
///   ```compile_fail,E0277
///   fn moves_to_another_thread<T: Send>() {}
///   moves_to_another_thread::<kvirt::page_table::ReadSection<'static, kvirt::page_table::KernelPtConfig>>();
///   ```
/// * Nothing that waits for a grace period may run inside it, on its
///   thread: [`Platform::rcu_barrier`](crate::platform::Platform::rcu_barrier),
///   and so [`KernelSpace::synchronize`](crate::kspace::KernelSpace::synchronize),
///   its invariant check, or dropping the last handle of a kernel space.
///   That would wait for the section itself: forever on a kernel's RCU
///   (the hosted platform panics instead).
/// * In a kernel it is also atomic mode (no preemption until it ends), so
///   it should not last long.
#[must_use = "a read-side section ends when dropped"]
pub struct ReadSection<'a, C: PageTableConfig> {
    /// The table's walks start here: read out of it once, for all of them.
    walker: Walker<'a, C>,
    table: &'a PageTable<C>,
    _rcu: RcuReadGuard<'a>,
}

impl<C: PageTableConfig> ReadSection<'_, C> {
    /// [`PageTable::translate`], inside this section.
    #[must_use]
    #[inline(always)] // as `PageTable::translate`
    pub fn translate(&self, va: Vaddr) -> Option<(Paddr, PageProperty)> {
        // SAFETY: we are in a read-side section, so a node reachable now is
        // not freed before it ends.
        let leaf = unsafe { self.walker.walk(va) }?;
        Some((leaf.pa + (va & offset_mask::<C::F>(leaf.level)), leaf.prop))
    }

    /// [`PageTable::translate_addr`], inside this section.
    #[must_use]
    #[inline(always)] // as `PageTable::translate`
    pub fn translate_addr(&self, va: Vaddr) -> Option<Paddr> {
        // SAFETY: as in `translate`.
        let leaf = unsafe { self.walker.walk(va) }?;
        Some(leaf.pa + (va & offset_mask::<C::F>(leaf.level)))
    }
}

impl<C: PageTableConfig> core::fmt::Debug for ReadSection<'_, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadSection").field("root", &self.table.root_paddr()).finish()
    }
}

#[cfg(test)]
mod tests {
    use alloc::format;
    use alloc::string::String;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;
    use crate::arch::x86_64::X86_64;
    use crate::kspace::KernelSpace;
    use crate::page_table::UserPtConfig;

    /// In debug builds a walk checks that each node it reaches is RAM, as
    /// `PhysMem::phys_ptr` does: an entry leading outside RAM (a kvirt bug)
    /// panics instead of reading outside physical memory.
    #[cfg(debug_assertions)]
    #[test]
    fn a_walk_to_a_node_outside_ram_panics_in_debug_builds() {
        let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(16 << 20));
        let pt = PageTable::<UserPtConfig<X86_64>>::empty(space.phys()).unwrap();
        let va = 0x4000_0000;
        let index = pte_index::<X86_64>(va, X86_64::NR_LEVELS);
        let outside = space.phys().max_paddr();
        pt.root_node().lock().write(index, X86_64::encode_table(outside));
        let walk = catch_unwind(AssertUnwindSafe(|| pt.translate(va)));
        pt.root_node().lock().write(index, 0);
        let payload = walk.expect_err("the walk reached past RAM without a panic");
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some(format!("physical address {outside:#x} is not RAM").as_str())
        );
    }
}
