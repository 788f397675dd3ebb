//! The page table's structural invariant, checked by walking the tree.

use super::node::NodeRef;
use super::{PageTable, PageTableConfig, PtNodeMeta};
use crate::addr::{is_aligned, PagingLevel};
use crate::arch::{page_size, PagingFormat, PteKind};
use crate::frame::REF_COUNT_MAX;

impl<C: PageTableConfig> PageTable<C> {
    /// Checks the invariant of every node reachable from the root; returns
    /// the number of nodes, or what is broken.
    ///
    /// For every node: its slot holds `PtNodeMeta` of the right level, one
    /// reference (its parent entry's), it is not stray, and its child count
    /// equals its non-absent entries. For every leaf: the physical address
    /// is aligned to the page size, the level may hold leaves, and a tracked
    /// leaf is a 4 KiB frame of RAM with a live reference count whose
    /// metadata is not a page-table node's.
    ///
    /// Entries of the root outside the table's own index range (the copies
    /// of the kernel's entries in a user table) are counted in the root's
    /// child count but not followed: the nodes they point to belong to the
    /// kernel table, which may be gone already.
    ///
    /// Meant for quiescent points: nodes are locked one at a time, so
    /// concurrent changes elsewhere in the tree may be seen half-done.
    pub fn check_inv(&self) -> Result<usize, &'static str> {
        let mut nodes = 0;
        self.check_node(self.root_node(), C::F::NR_LEVELS, &mut nodes)?;
        Ok(nodes)
    }

    fn check_node(
        &self,
        node: NodeRef<'_>,
        level: PagingLevel,
        nodes: &mut usize,
    ) -> Result<(), &'static str> {
        *nodes += 1;
        let phys = self.phys();
        let slot = phys.slot(node.pa());
        if slot.ref_count() != 1 {
            return Err("a page-table node does not have exactly one reference");
        }
        if node.meta().level != level {
            return Err("a page-table node's level is wrong");
        }
        if node.is_stray() {
            return Err("a reachable page-table node is marked stray");
        }
        node.lock();
        let mut children = alloc::vec::Vec::new();
        let mut present = 0u16;
        for i in 0..C::F::NR_ENTRIES {
            match C::F::decode(node.read(i), level) {
                PteKind::Absent => {}
                PteKind::Table(child) => {
                    present += 1;
                    if level < C::F::NR_LEVELS || C::TOP_LEVEL_INDEX_RANGE.contains(&i) {
                        children.push(child);
                    }
                }
                PteKind::Page { pa, tracked, .. } => {
                    present += 1;
                    if level > C::F::HIGHEST_LEAF_LEVEL || !is_aligned(pa, page_size::<C::F>(level)) {
                        node.unlock();
                        return Err("a leaf is at a level that cannot map pages, or is misaligned");
                    }
                    if tracked {
                        let ok = level == 1 && pa < phys.max_paddr() && {
                            let rc = phys.slot(pa).ref_count();
                            (1..=REF_COUNT_MAX).contains(&rc)
                        };
                        if !ok {
                            node.unlock();
                            return Err("a tracked leaf is not a live 4 KiB frame");
                        }
                    }
                }
            }
        }
        let count_ok = node.nr_children() == present;
        node.unlock();
        if !count_ok {
            return Err("a node's child count differs from its non-absent entries");
        }
        for child in children {
            if child >= phys.max_paddr() {
                return Err("a table entry points outside RAM");
            }
            // SAFETY: the child was reachable a moment ago; the check runs at
            // a quiescent point (see above), under the platform's RCU in any
            // case through the table's own lifetime rules.
            let child_node = unsafe { NodeRef::new(phys, child) };
            // The metadata must be a node's before anything else is read.
            let is_node = {
                let slot = phys.slot(child);
                // SAFETY: a reachable node's slot holds metadata.
                let meta = unsafe { slot.as_dyn_meta() };
                // SAFETY: the metadata lives while the node is reachable,
                // which it is at a quiescent point.
                crate::frame::meta::meta_is::<PtNodeMeta>(unsafe { &*meta })
            };
            if !is_node {
                return Err("a table entry points to a frame that is not a page-table node");
            }
            self.check_node(child_node, level - 1, nodes)?;
        }
        Ok(())
    }
}
