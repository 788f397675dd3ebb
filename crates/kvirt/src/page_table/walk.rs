//! Lock-free walks: how the hardware reads the table.
//!
//! A walk reads entries from the root down without taking any lock, as a
//! CPU's MMU does; only [`NodeRef::read`] is needed, which is allowed on an
//! unlocked node. What keeps the nodes it passes alive is the caller's
//! business (an RCU read-side section, or owning the mapping walked to).

use super::config::{vaddr_bounds, PageTableConfig};
use super::node::NodeRef;
use super::table::PageTable;
use crate::addr::{Paddr, PagingLevel, Vaddr};
use crate::arch::{page_size, pte_index, PagingFormat, PteKind};
use crate::page_prop::PageProperty;

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
    #[must_use]
    #[inline(always)] // small, and what the caller ignores is not computed
    pub fn translate(&self, va: Vaddr) -> Option<(Paddr, PageProperty)> {
        let _rcu = crate::platform::RcuReadGuard::new(self.phys().platform());
        // SAFETY: we are in a read-side section, so a node reachable now is
        // not freed before it ends.
        let leaf = unsafe { self.walk_unlocked(va) }?;
        Some((leaf.pa + va % page_size::<C::F>(leaf.level), leaf.prop))
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
        let _rcu = crate::platform::RcuReadGuard::new(self.phys().platform());
        // SAFETY: as in `translate`: a node reachable now is not freed
        // before the read-side section ends.
        let leaf = unsafe { self.walk_unlocked(va) }?;
        Some(leaf.pa + va % page_size::<C::F>(leaf.level))
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
        let (first, last) = vaddr_bounds::<C>();
        if !(first..=last).contains(&va) {
            return None;
        }
        // Read once: each entry read is an Acquire load, after which the
        // compiler would otherwise load the table's fields again.
        let phys = self.phys();
        let mut level = C::F::NR_LEVELS;
        let mut raw = self.read_root(pte_index::<C::F>(va, level));
        loop {
            match C::F::decode(raw, level) {
                PteKind::Absent => return None,
                PteKind::Page { pa, prop, tracked } => return Some(Leaf { pa, level, prop, tracked }),
                PteKind::Table(child) => {
                    // SAFETY: the node is not freed during the call (caller
                    // contract).
                    let node = unsafe { NodeRef::new(phys, child) };
                    level -= 1;
                    raw = node.read(pte_index::<C::F>(va, level));
                }
            }
        }
    }
}
