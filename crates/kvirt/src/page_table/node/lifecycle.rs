//! The life of a node: allocation, freeing, and the release of what entries
//! own.
//!
//! A node is born locked, from a zeroed page of the table's `PhysMem`
//! ([`alloc_node`] returns its guard), and its one reference goes to the
//! entry (or table) that will point to it. It dies, still locked, when that
//! owner is gone and no one can reach it ([`free_node`] takes its guard). Between the two, an entry pointing to it owns
//! it, and dropping such an entry ([`release_entry`]) releases the whole
//! sub-tree below, with every tracked frame it maps.

use core::ptr::NonNull;

use super::{NodeGuard, NodeRef, PtNodeMeta};
use crate::addr::PagingLevel;
use crate::arch::{PagingFormat, PteKind};
use crate::frame::{Frame, PhysMem};
use crate::page_table::error::PageTableAllocError;

/// Allocates a zeroed node at `level`, returned locked.
pub(crate) fn alloc_node(phys: &PhysMem, level: PagingLevel) -> Result<NodeGuard<'_>, PageTableAllocError> {
    let pa = phys.alloc_pages(1, true).map_err(|_| PageTableAllocError)?;
    // SAFETY: the page was just allocated.
    let frame = unsafe { phys.init_frame(pa, PtNodeMeta::new_locked(level)) };
    phys.count_page_table_pages(1);
    // The node's reference now belongs to whichever entry (or table) will
    // point to it.
    let pa = frame.into_raw();
    // SAFETY: the node is alive: its reference was just given up to the
    // caller, who stores it in an entry or the table.
    let node = unsafe { NodeRef::new(phys, pa) };
    // SAFETY: the node was created locked (`new_locked`) and no one else
    // knows it yet: its lock is ours, and this is its first guard.
    Ok(unsafe { NodeGuard::from_raw(node) })
}

/// Drops the node's own reference (its entries must be released already).
/// The node dies locked: its lock goes with its metadata.
///
/// # Safety
///
/// The caller owns the node's reference and no one can reach the node.
pub(crate) unsafe fn free_node(node: NodeGuard<'_>) {
    let node = node.into_raw();
    let phys = node.phys();
    // Counted first: returning the page is the last thing this does with
    // `phys`, which may be freed as soon as no page is in use (see the
    // `kspace` module docs, "Lifetime").
    phys.count_page_table_pages(-1);
    // SAFETY: the caller owns the reference, which `alloc_node` created for
    // a `PtNodeMeta` frame.
    drop(unsafe { Frame::<PtNodeMeta>::from_slot(NonNull::from(phys.slot(node.pa()))) });
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
            // SAFETY: the tracked entry, removed and owned by the caller,
            // owned one reference to its frame.
            drop(unsafe { phys.frame_of_entry(pa) });
        }
        PteKind::Table(child) => {
            // SAFETY: the caller owns the sub-tree, which no one else can
            // reach.
            let node = unsafe { NodeRef::new(phys, child) };
            // The lock is uncontended; it only guards the count.
            let node = node.lock();
            // An empty node owns nothing: skip the scan of its entries (a
            // kernel table's drop would otherwise read all 512 entries of
            // each of its 256 pre-allocated, mostly empty second-level
            // nodes).
            if node.nr_children() != 0 {
                for i in 0..F::NR_ENTRIES {
                    let raw = node.read(i);
                    // SAFETY: the sub-tree's entries are owned with it.
                    unsafe { release_entry::<F>(phys, raw, level - 1) };
                }
            }
            // SAFETY: the entry owned the node, now emptied of ownership.
            unsafe { free_node(node) };
        }
    }
}
