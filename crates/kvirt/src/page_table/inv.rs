//! The page table's structural invariant, checked by walking the tree.

use super::config::{sign_extend, PageTableConfig};
use super::node::{NodeRef, PtNodeMeta};
use super::table::PageTable;
use crate::addr::{is_aligned, PagingLevel, Vaddr, PAGE_SIZE};
use crate::arch::{page_size, PagingFormat, PteKind};
use crate::frame::REF_COUNT_MAX;
use crate::inv::Inv;
use crate::platform::RcuReadGuard;

/// The structural invariant of [`PageTable::check_inv`].
impl<C: PageTableConfig> Inv for PageTable<C> {
    fn check(&self) -> Result<(), &'static str> {
        self.check_inv().map(|_| ())
    }
}

impl<C: PageTableConfig> PageTable<C> {
    /// Checks the invariant of every node reachable from the root; returns
    /// the number of nodes (a census the models compare), or what is
    /// broken. [`Inv::check`] is the same check without the count.
    ///
    /// For the table: the pointer it keeps to its root's entries is where
    /// physical memory maps the root.
    ///
    /// For every node: its slot holds `PtNodeMeta` of the right level, one
    /// reference (its parent entry's), it is not stray, its child count
    /// equals its non-absent entries, and if it is marked queued, it waits
    /// in the table's queue of emptied nodes. For every leaf: the physical address
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
    /// concurrent changes elsewhere in the tree may be seen half-done (a
    /// spurious error, never a read of freed memory: the whole walk is one
    /// read-side section, so a node another thread detaches meanwhile is
    /// not freed before the walk is over). Like any walk, it must not run
    /// inside a platform callback that forbids sections.
    pub fn check_inv(&self) -> Result<usize, &'static str> {
        if !self.root_entries_ok() {
            return Err("the table's root entries pointer is not where physical memory maps its root");
        }
        // Every child is found under its parent's lock and read after that
        // lock is gone; only the section keeps it from being freed between.
        let _section = RcuReadGuard::new(self.phys().platform());
        let mut nodes = 0;
        self.check_node(self.root_node(), C::F::NR_LEVELS, 0, &mut nodes)?;
        Ok(nodes)
    }

    fn check_node(
        &self,
        node: NodeRef<'_>,
        level: PagingLevel,
        base: Vaddr,
        nodes: &mut usize,
    ) -> Result<(), &'static str> {
        *nodes += 1;
        let phys = self.phys();
        let slot = phys.slot(node.pa());
        if slot.ref_count() != 1 {
            return Err("a page-table node does not have exactly one reference");
        }
        if node.level() != level {
            return Err("a page-table node's level is wrong");
        }
        if node.is_stray() {
            return Err("a reachable page-table node is marked stray");
        }
        let guard = node.lock();
        let mut children = alloc::vec::Vec::new();
        let mut present = 0u16;
        for i in 0..C::F::NR_ENTRIES {
            match C::F::decode(guard.read(i), level) {
                PteKind::Absent => {}
                PteKind::Table(child) => {
                    present += 1;
                    if level < C::F::NR_LEVELS || C::TOP_LEVEL_INDEX_RANGE.contains(&i) {
                        let child_base = sign_extend::<C::F>(base.wrapping_add(i * page_size::<C::F>(level)));
                        children.push((child, child_base));
                    }
                }
                PteKind::Page { pa, tracked, .. } => {
                    present += 1;
                    if level > C::F::HIGHEST_LEAF_LEVEL || !is_aligned(pa, page_size::<C::F>(level)) {
                        return Err("a leaf is at a level that cannot map pages, or is misaligned");
                    }
                    if tracked {
                        let ok = level == 1 && pa < phys.max_paddr() && {
                            let rc = phys.slot(pa).ref_count();
                            (1..=REF_COUNT_MAX).contains(&rc)
                        };
                        if !ok {
                            return Err("a tracked leaf is not a live 4 KiB frame");
                        }
                    }
                }
            }
        }
        let count_ok = guard.nr_children() == present;
        let queued = guard.is_queued();
        drop(guard);
        if !count_ok {
            return Err("a node's child count differs from its non-absent entries");
        }
        if queued && !self.is_queued_empty(base, level) {
            return Err("a node marked queued is not in the queue of emptied nodes");
        }
        for (child, child_base) in children {
            if !phys.is_ram(&(child..child + PAGE_SIZE)) {
                return Err("a table entry points outside RAM");
            }
            // SAFETY: the child was reachable under its parent's lock inside
            // `check_inv`'s read-side section, which is still open: a node is
            // freed only after a grace period that begins once it is detached.
            let child_node = unsafe { NodeRef::new(phys, child) };
            // The metadata must be a node's before anything else is read.
            let is_node = {
                let slot = phys.slot(child);
                // SAFETY: a reachable node's slot holds metadata.
                let meta = unsafe { slot.as_dyn_meta() };
                // SAFETY: the metadata lives until the node is freed, which
                // waits for the open section (as above).
                crate::frame::meta::meta_is::<PtNodeMeta>(unsafe { &*meta })
            };
            if !is_node {
                return Err("a table entry points to a frame that is not a page-table node");
            }
            self.check_node(child_node, level - 1, child_base, nodes)?;
        }
        Ok(())
    }
}

/// `check_inv` catches each kind of corruption it names. Every test breaks
/// one thing in a user page table, expects the clause, and puts the thing
/// back so that the table drops cleanly.
///
/// The clause "a leaf is at a level that cannot map pages, or is
/// misaligned" cannot be reached this way: both formats' `decode` masks a
/// leaf's address to its page size and reads a leaf bit at a level without
/// leaves as a table (checked by `arch::check_format_conformance` and the
/// `pte_decode` fuzz target), so it guards against a wrong format only.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Paddr, Vaddr, PAGE_SIZE};
    use crate::arch::pte_index;
    use crate::arch::x86_64::X86_64;
    use crate::frame::{Frame, FrameAllocOptions, REF_COUNT_MAX};
    use crate::kspace::KernelSpace;
    use crate::page_prop::{CachePolicy, PageFlags, PageProperty};
    use crate::page_table::{MappedItem, UserPtConfig};

    type F = X86_64;
    type Pt = PageTable<UserPtConfig<F>>;

    /// A 1 GiB-aligned user address, so its level-2 and level-3 nodes have
    /// free entries right after it.
    const UVA: Vaddr = 0x4000_0000;

    fn prop() -> PageProperty {
        PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback)
    }

    /// A fresh space, a user table of it with one tracked frame mapped at
    /// `UVA`, and `f` run on them; the table must be intact again after `f`.
    fn with_table(f: impl FnOnce(&KernelSpace, &Pt, &Path<'_>)) {
        let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(16 << 20));
        let pt = Pt::empty(space.phys()).unwrap();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        pt.cursor_mut(&(UVA..UVA + PAGE_SIZE)).unwrap().map(MappedItem::Tracked(frame.into(), prop()));
        assert_eq!(pt.check_inv(), Ok(4), "a root and one node per level below it");
        let path = Path::to(&pt, UVA);
        f(&space, &pt, &path);
        assert_eq!(pt.check_inv(), Ok(4), "the test did not restore the table");
    }

    /// The nodes on the way to `va`'s 4 KiB leaf: `nodes[l]` is the node
    /// at level `l` (index 0 unused).
    struct Path<'a> {
        nodes: [NodeRef<'a>; 5],
    }

    impl<'a> Path<'a> {
        fn to(pt: &'a Pt, va: Vaddr) -> Self {
            let mut nodes = [pt.root_node(); 5];
            for level in (1..4u8).rev() {
                let parent = nodes[level as usize + 1];
                let PteKind::Table(child) = F::decode(parent.read(pte_index::<F>(va, level + 1)), level + 1)
                else {
                    panic!("no table at level {level}");
                };
                // SAFETY: the child is a node of the table, which outlives
                // the path and is not changed concurrently.
                nodes[level as usize] = unsafe { NodeRef::new(pt.phys(), child) };
            }
            Self { nodes }
        }

        fn node(&self, level: PagingLevel) -> NodeRef<'a> {
            self.nodes[level as usize]
        }
    }

    /// Writes `raw` at entry `index` of `node` under its lock; returns what
    /// was there.
    fn swap_entry(node: NodeRef<'_>, index: usize, raw: u64) -> u64 {
        let node = node.lock();
        let old = node.read(index);
        node.write(index, raw);
        old
    }

    /// Breaks entry `index` of `node` with `raw`, expects `clause`, and
    /// restores the entry.
    fn expect_with_entry(pt: &Pt, node: NodeRef<'_>, index: usize, raw: u64, clause: &str) {
        let old = swap_entry(node, index, raw);
        assert_eq!(pt.check_inv(), Err(clause));
        swap_entry(node, index, old);
    }

    /// A page that is free in the allocator (its slot is `UNUSED`).
    fn free_page(space: &KernelSpace) -> Paddr {
        let frame = FrameAllocOptions::new_in(space).alloc_frame().unwrap();
        let pa = frame.paddr();
        drop(frame);
        pa
    }

    #[test]
    fn a_root_entries_pointer_off_the_root_is_reported() {
        let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(16 << 20));
        let mut pt = Pt::empty(space.phys()).unwrap();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        pt.cursor_mut(&(UVA..UVA + PAGE_SIZE)).unwrap().map(MappedItem::Tracked(frame.into(), prop()));
        let other = Path::to(&pt, UVA).node(3).pa();
        let root = pt.aim_root_entries_at(other);
        assert_eq!(root, pt.root_paddr());
        assert_eq!(
            pt.check_inv(),
            Err("the table's root entries pointer is not where physical memory maps its root")
        );
        pt.aim_root_entries_at(root);
        assert_eq!(pt.check_inv(), Ok(4));
    }

    #[test]
    fn a_tracked_leaf_of_a_free_frame_is_reported() {
        with_table(|space, pt, path| {
            let raw = F::encode_page(free_page(space), 1, prop(), true);
            let leaf = pte_index::<F>(UVA, 1);
            expect_with_entry(pt, path.node(1), leaf, raw, "a tracked leaf is not a live 4 KiB frame");
        });
    }

    #[test]
    fn a_wrong_child_count_is_reported() {
        with_table(|_, pt, path| {
            let node = path.node(1);
            let old = node.lock().swap_nr_children(2);
            assert_eq!(pt.check_inv(), Err("a node's child count differs from its non-absent entries"));
            node.lock().swap_nr_children(old);
        });
    }

    #[test]
    fn a_node_with_a_second_reference_is_reported() {
        with_table(|space, pt, path| {
            let slot = space.phys().slot(path.node(2).pa());
            let old = slot.swap_ref_count(2);
            assert_eq!(pt.check_inv(), Err("a page-table node does not have exactly one reference"));
            slot.swap_ref_count(old);
        });
    }

    #[test]
    fn a_node_reached_at_the_wrong_level_is_reported() {
        with_table(|_, pt, path| {
            // The level-1 node, linked a second time as a level-2 node.
            let raw = F::encode_table(path.node(1).pa());
            let next = pte_index::<F>(UVA, 3) + 1;
            expect_with_entry(pt, path.node(3), next, raw, "a page-table node's level is wrong");
        });
    }

    #[test]
    fn a_table_entry_to_a_data_frame_is_reported() {
        with_table(|space, pt, path| {
            let data: Frame<()> = FrameAllocOptions::new_in(space).alloc_frame().unwrap();
            let raw = F::encode_table(data.paddr());
            let next = pte_index::<F>(UVA, 2) + 1;
            expect_with_entry(
                pt,
                path.node(2),
                next,
                raw,
                "a table entry points to a frame that is not a page-table node",
            );
            assert_eq!(data.reference_count(), 1);
        });
    }

    #[test]
    fn a_table_entry_outside_ram_is_reported() {
        with_table(|space, pt, path| {
            let raw = F::encode_table(space.phys().max_paddr());
            let next = pte_index::<F>(UVA, 2) + 1;
            expect_with_entry(pt, path.node(2), next, raw, "a table entry points outside RAM");
        });
    }

    #[test]
    fn a_tracked_leaf_with_an_impossible_count_is_reported() {
        with_table(|space, pt, path| {
            let PteKind::Page { pa, .. } = F::decode(path.node(1).read(pte_index::<F>(UVA, 1)), 1) else {
                panic!("the leaf is mapped");
            };
            let slot = space.phys().slot(pa);
            let old = slot.swap_ref_count(REF_COUNT_MAX + 1);
            assert_eq!(pt.check_inv(), Err("a tracked leaf is not a live 4 KiB frame"));
            slot.swap_ref_count(old);
        });
    }

    /// A stray mark cannot be taken back, so this test does not restore the
    /// table; dropping a table with a stray node is harmless (the mark only
    /// tells lock-free walkers to retry).
    #[test]
    fn a_reachable_stray_node_is_reported() {
        let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(16 << 20));
        let pt = Pt::empty(space.phys()).unwrap();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        pt.cursor_mut(&(UVA..UVA + PAGE_SIZE)).unwrap().map(MappedItem::Tracked(frame.into(), prop()));
        Path::to(&pt, UVA).node(2).lock().mark_stray();
        assert_eq!(pt.check_inv(), Err("a reachable page-table node is marked stray"));
    }
}
