//! The page table itself: a root node, where its nodes live, and the queue
//! of nodes waiting to be reclaimed.
//!
//! This file holds what a table *is* (creation, the root, sharing the
//! kernel half with a user table, dropping); each other concept adds its
//! own methods to [`PageTable`] in its own file, so that this one depends
//! on none of them: cursors in `cursor`, lazy reclamation in
//! `cursor::reclaim`, lock-free walks and `translate` in `walk`, the
//! invariant check in `inv`.

use alloc::boxed::Box;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

use super::config::{KernelPtConfig, PageTableConfig, UserPtConfig};
use super::cursor::EmptyNodeQueues;
use super::error::PageTableAllocError;
use super::node::{alloc_node, free_node, release_entry, NodeRef};
use crate::addr::{Paddr, PAGE_SIZE};
use crate::arch::PagingFormat;
use crate::frame::PhysMem;

/// The 8-byte words of a node: one 4 KiB page.
const WORDS_PER_NODE: usize = PAGE_SIZE / 8;

/// A page table of configuration `C`.
///
/// ## The last page
///
/// The last page of the address space, `0xffff_ffff_ffff_f000..=usize::MAX`,
/// can never be mapped. Cursors work on a `Range<Vaddr>`, and a range
/// covering that page would have to end at 2^64, which no `usize` holds:
/// the highest range end is `0xffff_ffff_ffff_f000` (`usize::MAX` itself is
/// not page aligned, and an end that wrapped to 0 makes the range
/// reversed). The range [`Cursor::query`](super::Cursor::query) reports for
/// an entry that reaches the end of the space saturates at `usize::MAX`
/// instead.
///
/// Nothing is lost by it: kernel space ends at
/// [`KERNEL_END_VADDR`](crate::kspace::KERNEL_END_VADDR)
/// (`0xffff_ffff_ffff_0000`, 16 pages below), so no kernel virtual area,
/// linear mapping or kernel image is ever placed there; and no other
/// [`KernelLayout`](crate::kspace::KernelLayout) can claim the page either, since its kernel range is a
/// page-aligned `Range<Vaddr>` too.
pub struct PageTable<C: PageTableConfig> {
    /// The root node, owned (one reference).
    root: Paddr,
    /// The root's entries where `phys` reaches them: always
    /// `phys.phys_ptr(root)`, kept so that a lock-free walk reads its
    /// first entry without first loading where physical memory starts (one
    /// dependent load less on every lookup).
    root_entries: NonNull<[AtomicU64; WORDS_PER_NODE]>,
    /// Where the nodes live. Outlives the table (kernel-space lifetime rule).
    phys: NonNull<PhysMem>,
    /// Where guard nodes emptied by cursors wait for a batch; `None`: they
    /// are reclaimed at once (kernel spaces set queues up for their kernel
    /// page table).
    pub(super) empty_nodes: Option<Box<EmptyNodeQueues>>,
    _config: PhantomData<C>,
}

// SAFETY: the table's nodes (the root's entries, which `root_entries`
// points to, among them) are shared through locks and atomics; `PhysMem`
// is `Sync`.
unsafe impl<C: PageTableConfig> Send for PageTable<C> {}
// SAFETY: as for `Send`.
unsafe impl<C: PageTableConfig> Sync for PageTable<C> {}

impl<C: PageTableConfig> PageTable<C> {
    /// An empty page table whose nodes come from `phys` (a kernel space's
    /// physical memory: `PageTable::empty_in(&space)`, defined with the
    /// kernel space). If the root's children cannot be unmapped
    /// (`TOP_LEVEL_CAN_UNMAP == false`), they are all created now.
    ///
    /// # Panics
    ///
    /// If RAM reaches past the physical addresses `C::F` can put in an
    /// entry (`PagingFormat::PA_BITS`): every frame and node of `phys` may
    /// end up in one. A kernel space checks this for its own format when it
    /// is created; this catches a table of another format.
    pub(crate) fn empty(phys: &PhysMem) -> Result<Self, PageTableAllocError> {
        const { super::config::check_config::<C>() };
        assert!(
            kvirt_core::area_args::paddr_range_fits(0, phys.max_paddr(), C::F::PA_BITS),
            "PageTable: RAM reaches {:#x}, past the physical addresses the paging format can express",
            phys.max_paddr()
        );
        let root = alloc_node(phys, C::F::NR_LEVELS)?;
        let root_entries = NonNull::new(phys.phys_ptr(root.pa()).cast()).expect("RAM is reachable");
        let table = Self {
            root: root.pa(),
            root_entries,
            phys: NonNull::from(phys),
            empty_nodes: None,
            _config: PhantomData,
        };
        if !C::TOP_LEVEL_CAN_UNMAP {
            for i in C::TOP_LEVEL_INDEX_RANGE {
                let Ok(child) = alloc_node(phys, C::F::NR_LEVELS - 1) else {
                    // Dropping `table` releases the children made so far;
                    // it locks the root, so unlock it first.
                    drop(root);
                    return Err(PageTableAllocError);
                };
                root.write(i, C::F::encode_table(child.pa()));
            }
        }
        Ok(table)
    }

    pub(crate) fn phys(&self) -> &PhysMem {
        // SAFETY: the `PhysMem` outlives its page tables (kernel-space
        // lifetime rule).
        unsafe { self.phys.as_ref() }
    }

    /// The physical address of the root node (what goes into CR3).
    #[must_use]
    pub fn root_paddr(&self) -> Paddr {
        self.root
    }

    pub(crate) fn root_node(&self) -> NodeRef<'_> {
        // SAFETY: the table owns its root.
        unsafe { NodeRef::new(self.phys(), self.root) }
    }

    /// The root's entries, where `phys` reaches them: where a lock-free
    /// walk starts (see `walk`).
    #[inline(always)]
    pub(super) fn root_entries(&self) -> &[AtomicU64; WORDS_PER_NODE] {
        // SAFETY: `root_entries` is where `phys` reaches the root (field
        // invariant), a node page the table owns as long as it lives: RAM
        // (Platform contract 1), only ever accessed atomically while it is
        // a node.
        unsafe { self.root_entries.as_ref() }
    }

    /// Points `root_entries` at node `pa` instead of the root, breaking its
    /// invariant, and returns the node it pointed at: for unit tests of the
    /// invariant check.
    #[cfg(test)]
    pub(super) fn aim_root_entries_at(&mut self, pa: Paddr) -> Paddr {
        let old = self.root_entries.as_ptr().cast::<u8>() as usize - self.phys().phys_ptr(0) as usize;
        self.root_entries = NonNull::new(self.phys().phys_ptr(pa).cast()).expect("RAM is reachable");
        old
    }

    /// Whether `root_entries` is where `phys` reaches the root (for the
    /// invariant check).
    pub(super) fn root_entries_ok(&self) -> bool {
        self.root_entries.as_ptr().cast::<u8>() == self.phys().phys_ptr(self.root)
    }
}

impl<F: PagingFormat> PageTable<KernelPtConfig<F>> {
    /// A user page table sharing this kernel table's upper-half entries.
    ///
    /// The new table's root gets copies of this table's top-level entries,
    /// so the two share the kernel's second-level nodes. Those nodes are
    /// created with this table, never detached (so kernel mappings made
    /// later show in every user table) and freed when this table is
    /// dropped. A user table must therefore **not be walked by an MMU after
    /// the kernel table it was made from is dropped**: its kernel half would
    /// point to freed nodes. Keep the kernel table alive as long as any CPU
    /// may load a user table made from it.
    ///
    /// That rule binds only the `unsafe` act of loading a table into a CPU,
    /// which lies outside kvirt (see "Safety model" in the module docs).
    /// kvirt itself never follows the shared entries from a user table: its
    /// cursors and [`translate`](PageTable::translate) cover the lower half
    /// only, [`check_inv`](PageTable::check_inv) does not descend into them,
    /// and dropping it forgets them. So a user table may outlive its kernel
    /// table as a Rust value. That is why the result is an independent
    /// value rather than one that borrows the kernel table (a lifetime) or
    /// shares it (an `Arc`): either would only restrict safe code, which
    /// cannot misuse the shared entries, while the act the rule is about is
    /// `unsafe` in any case.
    pub fn create_user_page_table(&self) -> Result<PageTable<UserPtConfig<F>>, PageTableAllocError> {
        let user = PageTable::<UserPtConfig<F>>::empty(self.phys())?;
        let (root, kroot) = (user.root_node().lock(), self.root_node());
        for i in <KernelPtConfig<F>>::TOP_LEVEL_INDEX_RANGE {
            root.write(i, kroot.read(i));
        }
        drop(root);
        Ok(user)
    }
}

impl<C: PageTableConfig> Drop for PageTable<C> {
    fn drop(&mut self) {
        let root = self.root_node().lock();
        for i in C::TOP_LEVEL_INDEX_RANGE {
            let raw = root.read(i);
            root.write(i, 0);
            // SAFETY: `&mut self` means no cursor of this table is alive; the
            // entries in the table's own index range belong to it alone.
            unsafe { release_entry::<C::F>(self.phys(), raw, C::F::NR_LEVELS) };
        }
        // Entries outside our range (shared kernel entries in a user table)
        // are not ours: forget them.
        for i in 0..C::F::NR_ENTRIES {
            if root.read(i) != 0 {
                root.write(i, 0);
            }
        }
        // SAFETY: the root is ours and now empty.
        unsafe { free_node(root) };
    }
}

impl<C: PageTableConfig> fmt::Debug for PageTable<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTable").field("root", &format_args!("{:#x}", self.root)).finish()
    }
}
