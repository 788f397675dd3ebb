//! The multi-level page table.
//!
//! A [`PageTable<C>`] is a tree of 4 KiB nodes in the shape its paging
//! format `C::F` prescribes. All access goes through cursors:
//! [`Cursor`] (query, find, jump) and [`CursorMut`] (also map, take, protect),
//! each created over a page-aligned range that it locks for its lifetime.
//!
//! ## Locking (CortenMM)
//!
//! A cursor walks down from the root **without locks** (inside an RCU
//! read-side section) to the lowest node that covers its whole range, locks
//! that *guard node*, re-checks that it is still attached (not `stray`),
//! and then locks, top-down, every existing node below it that intersects
//! the range. Locks are always taken parent before child, so cursors never
//! deadlock.
//!
//! A node is the unit of locking. Cursors over disjoint ranges lock
//! disjoint nodes, and run in parallel, when their guards differ: ranges
//! under one upper node, each inside its own existing lower node (say two
//! 2 MiB regions with level-1 nodes, in one 1 GiB region), lock only those
//! lower nodes and pass the shared upper one without locking it. Two
//! disjoint ranges inside one leaf node (one 2 MiB region on x86-64), or
//! inside one absent entry (a region whose nodes do not exist yet), share
//! their guard and take turns.
//!
//! The walk descends into an entry only if the range lies strictly inside
//! it: a range that covers a whole entry keeps the lock of the node holding
//! that entry, because the cursor may need to replace it (map a huge page,
//! detach a sub-tree).
//!
//! ```text
//!   root (L4)            walk without locks
//!     └─ L3 node             │
//!          └─ L2 node  <── guard: locked, re-checked not stray
//!               ├─ L1 node  <── locked (intersects the range)
//!               └─ L1 node  <── locked (intersects the range)
//! ```
//!
//! ## Reclamation
//!
//! A node detached from the tree (a sub-tree taken whole, or a node emptied
//! by unmapping) is marked `stray` under its lock and freed only after the
//! TLB flush covering its span and an RCU grace period
//! ([`Platform::call_rcu`](crate::platform::Platform::call_rcu)), since
//! lock-free walkers and hardware paging-structure caches may still see it.
//! Nodes emptied by unmapping are reclaimed as soon as the cursor that
//! emptied them is dropped, so the number of page-table frames in use
//! returns to its old value once everything mapped is unmapped.
//!
//! ## Ownership
//!
//! An entry mapping a tracked frame owns one reference to it; an entry
//! pointing to a node owns the node. Untracked entries own nothing.
//!
//! ## Safety model
//!
//! Changing a page table is safe; *using* one is not. `map` may put any
//! untracked physical address in a table, and a fragment from `take_next`
//! releases its frames when dropped, flushed or not. Neither can cause
//! undefined behaviour by itself: a table affects memory only once a CPU
//! walks it, and making a CPU walk a table (loading CR3) and dereferencing
//! addresses it maps are `unsafe` acts outside kvirt, whose callers take on
//! the duty to flush before frames are reused. The kernel's own table, which
//! safe code runs on, is never exposed mutably: a kernel space hands out
//! read-only cursors only, and its areas flush before they release
//! anything.

mod cursor;
mod inv;
#[doc(hidden)]
pub mod locking;
mod node;
mod walk;

use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;
use core::ptr::NonNull;

pub use cursor::{Cursor, CursorMut, MapError, MapErrorKind, PageTableFrag};
pub(crate) use node::{NodeRef, PtNodeMeta};

use crate::addr::{is_page_aligned, Paddr, PagingLevel, Vaddr};
use crate::arch::x86_64::X86_64;
use crate::arch::{page_size, PagingFormat, PteKind};
use crate::frame::{AnyFrameMeta, Frame, FrameRef, PhysMem};
use crate::kspace::{KernelLayout, KernelSpace};
use crate::page_prop::PageProperty;

/// The shape and address range of one kind of page table.
///
/// A safe trait: kvirt checks its constants at compile time wherever a
/// table of the configuration is made (the root entries must be a
/// non-empty part of a node), and nothing else about it can break memory
/// safety: a table is its own tree, and only
/// [`create_user_page_table`](PageTable::create_user_page_table), defined
/// for kvirt's own configurations, shares nodes between two tables.
pub trait PageTableConfig: fmt::Debug + Send + Sync + 'static {
    /// The paging format.
    type F: PagingFormat;
    /// The root entries this kind of table may use.
    const TOP_LEVEL_INDEX_RANGE: Range<usize>;
    /// Whether the children of the root may be detached. Kernel tables keep
    /// them for ever, so that user tables can share them.
    const TOP_LEVEL_CAN_UNMAP: bool;
}

/// The kernel (upper) half of an address space in format `F`: the upper
/// half of the root's entries.
#[derive(Clone, Copy, Debug)]
pub struct KernelPtConfig<F: PagingFormat = X86_64>(PhantomData<F>);

impl<F: PagingFormat> PageTableConfig for KernelPtConfig<F> {
    type F = F;
    const TOP_LEVEL_INDEX_RANGE: Range<usize> = F::NR_ENTRIES / 2..F::NR_ENTRIES;
    const TOP_LEVEL_CAN_UNMAP: bool = false;
}

/// The user (lower) half of an address space in format `F`.
#[derive(Clone, Copy, Debug)]
pub struct UserPtConfig<F: PagingFormat = X86_64>(PhantomData<F>);

impl<F: PagingFormat> PageTableConfig for UserPtConfig<F> {
    type F = F;
    const TOP_LEVEL_INDEX_RANGE: Range<usize> = 0..F::NR_ENTRIES / 2;
    const TOP_LEVEL_CAN_UNMAP: bool = true;
}

/// The first and last virtual address a configuration covers.
#[must_use]
pub fn vaddr_bounds<C: PageTableConfig>() -> (Vaddr, Vaddr) {
    let top = page_size::<C::F>(C::F::NR_LEVELS);
    let first = C::TOP_LEVEL_INDEX_RANGE.start * top;
    let last = C::TOP_LEVEL_INDEX_RANGE.end * top - 1;
    (sign_extend::<C::F>(first), sign_extend::<C::F>(last))
}

fn sign_extend<F: PagingFormat>(va: Vaddr) -> Vaddr {
    let bits = F::VA_BITS;
    if F::SIGN_EXTEND && bits < usize::BITS && va & (1 << (bits - 1)) != 0 {
        va | !((1usize << bits) - 1)
    } else {
        va
    }
}

/// What a leaf entry maps, owned: taken out of the table or about to go in.
#[derive(Debug)]
pub enum MappedItem {
    /// A tracked 4 KiB frame; the entry owns one reference to it.
    Tracked(Frame<dyn AnyFrameMeta>, PageProperty),
    /// Untracked physical memory `pa` mapped by a leaf at `level`.
    Untracked(Paddr, PagingLevel, PageProperty),
}

/// What a leaf entry maps, borrowed from the table.
#[derive(Debug, Clone)]
pub enum MappedItemRef<'a> {
    /// A tracked 4 KiB frame.
    Tracked(FrameRef<'a, dyn AnyFrameMeta>, PageProperty),
    /// Untracked physical memory `pa` mapped by a leaf at `level`.
    Untracked(Paddr, PagingLevel, PageProperty),
}

impl MappedItemRef<'_> {
    /// The physical address of the mapped page.
    #[must_use]
    pub fn paddr(&self) -> Paddr {
        match self {
            MappedItemRef::Tracked(f, _) => f.paddr(),
            MappedItemRef::Untracked(pa, _, _) => *pa,
        }
    }

    /// The property of the mapping.
    #[must_use]
    pub fn prop(&self) -> PageProperty {
        match self {
            MappedItemRef::Tracked(_, p) | MappedItemRef::Untracked(_, _, p) => *p,
        }
    }

    /// The level of the leaf (1 for tracked frames).
    #[must_use]
    pub fn level(&self) -> PagingLevel {
        match self {
            MappedItemRef::Tracked(..) => 1,
            MappedItemRef::Untracked(_, l, _) => *l,
        }
    }
}

impl PartialEq for MappedItemRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (MappedItemRef::Tracked(a, p), MappedItemRef::Tracked(b, q)) => a.paddr() == b.paddr() && p == q,
            (MappedItemRef::Untracked(a, l, p), MappedItemRef::Untracked(b, m, q)) => {
                a == b && l == m && p == q
            }
            _ => false,
        }
    }
}

/// Why a cursor could not be created over a range.
///
/// No range can cover the last page of the address space
/// (`0xffff_ffff_ffff_f000..`): its exclusive end would be 2^64 (see
/// [`PageTable`], "The last page").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// `start == end`.
    Empty,
    /// `start > end`.
    Reversed,
    /// `start` or `end` is not page aligned.
    Misaligned,
    /// The range leaves the addresses this kind of table covers.
    OutOfBounds,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RangeError::Empty => "the range is empty",
            RangeError::Reversed => "the range is reversed",
            RangeError::Misaligned => "the range is not page aligned",
            RangeError::OutOfBounds => "the range is outside the page table's address range",
        })
    }
}

/// A virtual address outside a cursor's range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfCursorRange {
    /// The address.
    pub va: Vaddr,
    /// The cursor's range.
    pub range: Range<Vaddr>,
}

impl fmt::Display for OutOfCursorRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "address {:#x} is outside the cursor's range {:#x?} (or misaligned)", self.va, self.range)
    }
}

/// Checks a cursor range against configuration `C`.
pub(crate) fn check_range<C: PageTableConfig>(range: &Range<Vaddr>) -> Result<(), RangeError> {
    if range.start == range.end {
        return Err(RangeError::Empty);
    }
    if range.start > range.end {
        return Err(RangeError::Reversed);
    }
    if !is_page_aligned(range.start) || !is_page_aligned(range.end) {
        return Err(RangeError::Misaligned);
    }
    let (first, last) = vaddr_bounds::<C>();
    if range.start < first || range.end - 1 > last {
        return Err(RangeError::OutOfBounds);
    }
    Ok(())
}

/// The greedy split of `len` bytes at `va -> pa` into the largest aligned
/// pages: yields `(pa, level)` for each page in order.
///
/// # Panics
///
/// Panics if `va`, `pa` or `len` is not page aligned.
pub fn largest_pages<F: PagingFormat>(
    mut va: Vaddr,
    mut pa: Paddr,
    mut len: usize,
) -> impl Iterator<Item = (Paddr, PagingLevel)> {
    assert!(
        is_page_aligned(va) && is_page_aligned(pa) && is_page_aligned(len),
        "largest_pages: va {va:#x}, pa {pa:#x} and len {len:#x} must be page aligned"
    );
    core::iter::from_fn(move || {
        if len == 0 {
            return None;
        }
        let level = (1..=F::HIGHEST_LEAF_LEVEL)
            .rev()
            .find(|&l| {
                let size = page_size::<F>(l);
                size <= len && va % size == 0 && pa % size == 0
            })
            .expect("level 1 always fits");
        let size = page_size::<F>(level);
        let item = (pa, level);
        va = va.wrapping_add(size);
        pa += size;
        len -= size;
        Some(item)
    })
}

/// A page table of configuration `C`.
///
/// ## The last page
///
/// The last page of the address space, `0xffff_ffff_ffff_f000..=usize::MAX`,
/// can never be mapped. Cursors work on a `Range<Vaddr>`, and a range
/// covering that page would have to end at 2^64, which no `usize` holds:
/// the highest range end is `0xffff_ffff_ffff_f000` (`usize::MAX` itself is
/// not page aligned, and an end that wrapped to 0 makes the range
/// reversed). The range [`Cursor::query`] reports for an entry that reaches
/// the end of the space saturates at `usize::MAX` instead.
///
/// Nothing is lost by it: kernel space ends at
/// [`KERNEL_END_VADDR`](crate::kspace::KERNEL_END_VADDR)
/// (`0xffff_ffff_ffff_0000`, 16 pages below), so no kernel virtual area,
/// linear mapping or kernel image is ever placed there; and no other
/// [`KernelLayout`] can claim the page either, since its kernel range is a
/// page-aligned `Range<Vaddr>` too.
pub struct PageTable<C: PageTableConfig> {
    /// The root node, owned (one reference).
    root: Paddr,
    /// Where the nodes live. Outlives the table (kernel-space lifetime rule).
    phys: NonNull<PhysMem>,
    /// Whether guard nodes emptied by cursors wait in `empty_nodes` for a
    /// batch instead of being reclaimed at once (kernel spaces turn it on
    /// for their kernel page table).
    lazy_reclaim: bool,
    /// Nodes (start address, level) emptied and not yet reclaimed.
    empty_nodes: spin::Mutex<alloc::vec::Vec<(Vaddr, PagingLevel)>>,
    _config: PhantomData<C>,
}

/// How many emptied nodes a lazily reclaiming table keeps before it
/// reclaims them.
const EMPTY_NODE_BATCH: usize = 32;

// SAFETY: the table's nodes are shared through locks and atomics; `PhysMem`
// is `Sync`.
unsafe impl<C: PageTableConfig> Send for PageTable<C> {}
// SAFETY: as for `Send`.
unsafe impl<C: PageTableConfig> Sync for PageTable<C> {}

/// No memory was left for a page-table node (creating a page table, or
/// splitting a huge page in [`CursorMut::try_take_next`] and
/// [`CursorMut::try_protect_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTableAllocError;

impl fmt::Display for PageTableAllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of memory for page-table nodes")
    }
}

impl<C: PageTableConfig> PageTable<C> {
    /// An empty page table whose nodes come from `space`. If the root's
    /// children cannot be unmapped (`TOP_LEVEL_CAN_UNMAP == false`), they are
    /// all created now.
    pub fn empty_in<L: KernelLayout>(space: &KernelSpace<L>) -> Result<Self, PageTableAllocError> {
        Self::empty(space.phys())
    }

    pub(crate) fn empty(phys: &PhysMem) -> Result<Self, PageTableAllocError> {
        const {
            crate::arch::check_shape::<C::F>();
            let r = C::TOP_LEVEL_INDEX_RANGE;
            assert!(
                r.start < r.end && r.end <= C::F::NR_ENTRIES,
                "PageTableConfig: TOP_LEVEL_INDEX_RANGE must be a non-empty range of the root's entries"
            );
        };
        let root = alloc_node(phys, C::F::NR_LEVELS)?;
        let table = Self {
            root: root.pa(),
            phys: NonNull::from(phys),
            lazy_reclaim: false,
            empty_nodes: spin::Mutex::new(alloc::vec::Vec::new()),
            _config: PhantomData,
        };
        if !C::TOP_LEVEL_CAN_UNMAP {
            for i in C::TOP_LEVEL_INDEX_RANGE {
                let Ok(child) = alloc_node(phys, C::F::NR_LEVELS - 1) else {
                    // Dropping `table` releases the children made so far.
                    root.unlock();
                    return Err(PageTableAllocError);
                };
                root.write(i, C::F::encode_table(child.pa()));
                child.unlock();
            }
        }
        root.unlock();
        Ok(table)
    }

    pub(crate) fn phys(&self) -> &PhysMem {
        // SAFETY: the `PhysMem` outlives its page tables (kernel-space
        // lifetime rule).
        unsafe { self.phys.as_ref() }
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
                cursor::reclaim_empty_node(self, base, level);
            }
        }
    }

    /// The physical address of the root node (what goes into CR3).
    #[must_use]
    pub fn root_paddr(&self) -> Paddr {
        self.root
    }

    /// A read-only cursor over `range`.
    pub fn cursor(&self, range: &Range<Vaddr>) -> Result<Cursor<'_, C>, RangeError> {
        Cursor::new(self, range)
    }

    /// A cursor over `range` that can change the mappings.
    pub fn cursor_mut(&self, range: &Range<Vaddr>) -> Result<CursorMut<'_, C>, RangeError> {
        CursorMut::new(self, range)
    }

    pub(crate) fn root_node(&self) -> NodeRef<'_> {
        // SAFETY: the table owns its root.
        unsafe { NodeRef::new(self.phys(), self.root) }
    }

    /// Reads the leaf mapping `va` by a plain walk, like the hardware does
    /// (no locks; a snapshot). Returns the physical address `va` translates
    /// to and the property.
    ///
    /// Only addresses of this table's own range are translated (`None`
    /// otherwise): a user table does not follow the kernel entries it
    /// shares, which belong to the kernel table and may be freed before it.
    #[must_use]
    pub fn translate(&self, va: Vaddr) -> Option<(Paddr, PageProperty)> {
        let _rcu = crate::platform::RcuReadGuard::new(self.phys().platform());
        // SAFETY: we are in a read-side section, so a node reachable now is
        // not freed before it ends.
        let leaf = unsafe { self.walk_unlocked(va) }?;
        Some((leaf.pa + va % page_size::<C::F>(leaf.level), leaf.prop))
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
        let (root, kroot) = (user.root_node(), self.root_node());
        root.lock();
        for i in <KernelPtConfig<F>>::TOP_LEVEL_INDEX_RANGE {
            root.write(i, kroot.read(i));
        }
        root.unlock();
        Ok(user)
    }
}

impl<C: PageTableConfig> Drop for PageTable<C> {
    fn drop(&mut self) {
        let root = self.root_node();
        root.lock();
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
        root.unlock();
        // SAFETY: the root is ours and now empty.
        unsafe { free_node(self.phys(), self.root) };
    }
}

impl<C: PageTableConfig> fmt::Debug for PageTable<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTable").field("root", &format_args!("{:#x}", self.root)).finish()
    }
}

/// Allocates a zeroed node at `level`, returned locked.
pub(crate) fn alloc_node(phys: &PhysMem, level: PagingLevel) -> Result<NodeRef<'_>, PageTableAllocError> {
    let pa = phys.alloc_pages(1, true).map_err(|_| PageTableAllocError)?;
    // SAFETY: the page was just allocated.
    let frame = unsafe { phys.init_frame(pa, PtNodeMeta::new_locked(level)) };
    phys.count_page_table_pages(1);
    // The node's reference now belongs to whichever entry (or table) will
    // point to it.
    let pa = frame.into_raw();
    // SAFETY: the node is alive: its reference was just given up to the
    // caller, who stores it in an entry or the table.
    Ok(unsafe { NodeRef::new(phys, pa) })
}

/// Drops the node's own reference (its entries must be released already).
///
/// # Safety
///
/// The caller owns the node's reference and no one can reach the node.
pub(crate) unsafe fn free_node(phys: &PhysMem, pa: Paddr) {
    // Counted first: returning the page is the last thing this does with
    // `phys`, which may be freed as soon as no page is in use (see the
    // `kspace` module docs, "Lifetime").
    phys.count_page_table_pages(-1);
    // SAFETY: the caller owns the reference, which `alloc_node` created for
    // a `PtNodeMeta` frame.
    drop(unsafe { Frame::<PtNodeMeta>::from_slot(NonNull::from(phys.slot(pa))) });
}

/// Releases what an entry found at `level` owns: a tracked frame's
/// reference, or a whole sub-tree.
///
/// # Safety
///
/// The entry was removed from the tree, the caller owned it, and no one can
/// reach what it points to any more.
pub(crate) unsafe fn release_entry<F: PagingFormat>(phys: &PhysMem, raw: u64, level: PagingLevel) {
    match F::decode(raw, level) {
        PteKind::Absent | PteKind::Page { tracked: false, .. } => {}
        PteKind::Page { pa, tracked: true, .. } => {
            // SAFETY: a tracked entry owns one reference to its frame.
            drop(unsafe { Frame::<dyn AnyFrameMeta>::from_slot(NonNull::from(phys.slot(pa))) });
        }
        PteKind::Table(child) => {
            // SAFETY: the caller owns the sub-tree, which no one else can
            // reach: reading its entries directly is fine.
            let node = unsafe { NodeRef::new(phys, child) };
            // An empty node owns nothing: skip the scan of its entries (a
            // kernel table's drop would otherwise read all 512 entries of
            // each of its 256 pre-allocated, mostly empty second-level
            // nodes). The lock is uncontended; it only guards the count.
            node.lock();
            let empty = node.nr_children() == 0;
            node.unlock();
            if !empty {
                for i in 0..F::NR_ENTRIES {
                    let raw = node.read(i);
                    // SAFETY: the sub-tree's entries are owned with it.
                    unsafe { release_entry::<F>(phys, raw, level - 1) };
                }
            }
            // SAFETY: the entry owned the node, now emptied of ownership.
            unsafe { free_node(phys, child) };
        }
    }
}
