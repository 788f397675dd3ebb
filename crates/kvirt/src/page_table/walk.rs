//! Lock-free walks: how the hardware reads the table.

use super::node::NodeRef;
use super::{vaddr_bounds, PageTable, PageTableConfig};
use crate::addr::{Paddr, PagingLevel, Vaddr};
use crate::arch::{pte_index, PagingFormat, PteKind};
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
        let mut node = self.root_node();
        let mut level = C::F::NR_LEVELS;
        loop {
            match C::F::decode(node.read(pte_index::<C::F>(va, level)), level) {
                PteKind::Absent => return None,
                PteKind::Page { pa, prop, tracked } => return Some(Leaf { pa, level, prop, tracked }),
                PteKind::Table(child) => {
                    // SAFETY: the node is not freed during the call (caller
                    // contract).
                    node = unsafe { NodeRef::new(self.phys(), child) };
                    level -= 1;
                }
            }
        }
    }
}
