//! What a leaf entry maps, as cursors hand it in and out.
//!
//! An entry mapping a tracked frame owns one reference to it (see "Ownership"
//! in the module docs), so the owned form, [`MappedItem`], carries a
//! [`Frame`] and the borrowed form, [`MappedItemRef`], a [`FrameRef`].
//! Untracked memory is just an address and a level.

use crate::addr::{Paddr, PagingLevel};
use crate::frame::{AnyFrameMeta, Frame, FrameRef};
use crate::page_prop::PageProperty;

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
