//! Lock-free walks: how the hardware reads the table.
//!
//! A walk reads entries from the root down without taking any lock, as a
//! CPU's MMU does: [`RamBase::read`], which is allowed on an unlocked node
//! (it is `NodeRef::read` with where memory starts kept in a register). A
//! [`Walker`] holds what a walk starts from. What keeps the nodes it
//! passes alive is the caller's business: an RCU read-side section (a
//! [`ReadSection`], public), or owning the mapping walked to (a kernel
//! virtual area's queries).

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use super::config::{vaddr_bounds, PageTableConfig};
use super::node::RamBase;
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

    /// Walks to the leaf mapping `va` without locks.
    ///
    /// # Safety
    ///
    /// No node on the path to `va` may be freed during the call: either the
    /// caller is inside an RCU read-side section of the platform, or it owns
    /// a mapping at `va` that no one else can remove (then every node on the
    /// path holds an entry leading to it and cannot be emptied).
    #[inline]
    pub(crate) unsafe fn walk_unlocked(&self, va: Vaddr) -> Option<Leaf> {
        // SAFETY: the caller's contract is the walk's.
        unsafe { self.walker().walk(va) }
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
    /// As for [`PageTable::walk_unlocked`] on the walker's table.
    #[inline(always)]
    pub(crate) unsafe fn walk(&self, va: Vaddr) -> Option<Leaf> {
        let (first, last) = vaddr_bounds::<C>();
        if !(first..=last).contains(&va) {
            return None;
        }
        let mut level = C::F::NR_LEVELS;
        let mut raw = self.root[pte_index::<C::F>(va, level)].load(Ordering::Acquire);
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
