//! One 4 KiB page mapped or taken without a cursor.
//!
//! Most of what a kernel maps and unmaps is one page at a time, and a
//! cursor is more than one page needs: it keeps a path of guards, a list
//! of the nodes it detaches and the bookkeeping to reclaim them, and it
//! costs about as much to make and drop as the page's own work.
//! [`PageTable::try_map_frame`] and [`PageTable::try_take_page`] take the
//! common case directly, under the same lock protocol, and so does
//! [`PageTable::try_take_range`] for a range inside one leaf node (most
//! small kernel areas):
//!
//! 1. enter a read-side section and walk down to the page's leaf node as
//!    `lock_range` over the page would, and lock it (`locking::lock_leaf`:
//!    the same protocol, for the one case where it ends at a leaf);
//! 2. if the leaf node exists, map (the entry is absent, the frame this
//!    table's space's) or take (the range) right there, through the leaf's guard; a
//!    leaf the take empties is queued or reclaimed after it is unlocked,
//!    by the very code a cursor's drop runs;
//! 3. in any other case (no leaf yet, something in the way, a huge page to
//!    split, an error), unlock (if the leaf was locked) having changed
//!    nothing, and do the same through a cursor over the page (the
//!    range).
//!
//! So each call has exactly the effect and the result of its cursor
//! sequence, which its docs name (but for the range a `try_take_range` in
//! place reports for the flush: all of the range, not from its first
//! mapping): the fast path only leaves out work that cannot arise there (no
//! node to create or split).

use core::ops::Range;

use super::map::{claim_frame, fill_frames};
use super::reclaim::{dispose_empty_node, must_dispose};
use super::{node_span, PtTree};
use crate::addr::{align_down, is_page_aligned, Vaddr, PAGE_SIZE};
use crate::arch::{pte_index, PagingFormat, PteKind};
use crate::frame::{AnyFrameMeta, Frame};
use crate::page_prop::PageProperty;
use crate::page_table::config::{check_range, PageTableConfig};
use crate::page_table::error::{
    MapError, MapErrorKind, PageTableAllocError, RangeError, TakePageError, TakeRangeError,
};
use crate::page_table::item::MappedItem;
use crate::page_table::locking;
use crate::page_table::node::NodeGuard;
use crate::page_table::table::PageTable;
use crate::page_table::{PageTableFrag, TakenRange, WalkStart};
use crate::platform::RcuReadGuard;

impl<C: PageTableConfig> PageTable<C> {
    /// Maps the tracked `frame` as the 4 KiB page at `va`, creating the
    /// nodes on the way: what a cursor over `va..va + PAGE_SIZE` does with
    /// [`try_map_frames`](super::CursorMut::try_map_frames) of this one
    /// frame, without making one when the leaf node is there already (see
    /// the module docs). It locks as that cursor would, so a thread holding
    /// a cursor whose nodes it needs waits for ever (see "Locking" in the
    /// `page_table` module docs).
    ///
    /// # Errors
    ///
    /// The cursor's errors, which carry the frame back: `Misaligned` if `va`
    /// is not page aligned, `OutOfRange` if the page lies outside the
    /// addresses this table covers (or is the very last page of the address
    /// space, which no range can hold), and `try_map_frames`' own
    /// (`AlreadyMapped`, `ForeignFrame`, `OutOfMemory`). The table is then
    /// unchanged.
    pub fn try_map_frame<T: AnyFrameMeta + ?Sized>(
        &self,
        va: Vaddr,
        frame: Frame<T>,
        prop: PageProperty,
    ) -> Result<(), MapError> {
        let range = match page_range::<C>(va) {
            Ok(range) => range,
            Err(e) => {
                let kind = match e {
                    RangeError::Misaligned => MapErrorKind::Misaligned,
                    _ => MapErrorKind::OutOfRange,
                };
                return Err(MapError { kind, item: MappedItem::Tracked(Frame::into_dyn(frame), prop) });
            }
        };
        let Some(frame) = self.map_in_leaf(&range, frame, prop) else {
            return Ok(());
        };
        let mut cursor = self.cursor_mut(&range).expect("the range was checked");
        cursor.try_map_frames(core::iter::once(frame), prop)
    }

    /// Step 1 and 2 of the module docs for a map: maps `frame` at
    /// `range.start` if its leaf node exists and nothing is in the way;
    /// otherwise changes nothing and hands `frame` back.
    ///
    /// The fill of [`fill_in_leaf`](Self::fill_in_leaf) for its one-frame
    /// case, written out: one entry checked and written, with no frame
    /// iterator or deferred child count around it (the common 1-page map
    /// retired 63 instructions fewer so, 3 ns).
    #[inline]
    fn map_in_leaf<T: AnyFrameMeta + ?Sized>(
        &self,
        range: &Range<Vaddr>,
        frame: Frame<T>,
        prop: PageProperty,
    ) -> Option<Frame<T>> {
        let _rcu = RcuReadGuard::new(self.phys().platform());
        let Some(leaf) = lock_leaf(self, range) else {
            return Some(frame);
        };
        let index = pte_index::<C::F>(range.start, 1);
        // Absent entries stay absent while we hold the lock (`NodeGuard::write`).
        if leaf.read(index) != 0 {
            return Some(frame);
        }
        let pa = match claim_frame(frame, leaf.phys().slot_map()) {
            Ok(pa) => pa,
            Err(frame) => return Some(frame),
        };
        leaf.write(index, C::F::encode_page(pa, 1, prop, true));
        None
    }

    /// Maps `frames` into `range` (page aligned, in this table), in order,
    /// without a cursor, if the range lies inside one leaf node's span
    /// (short of all of it) and that node exists: as a cursor's
    /// [`try_map_frames`](super::CursorMut::try_map_frames) over `range`
    /// would, up to where it stops (the frames run out, a frame is not of
    /// this table's space and goes to `rest`, or an entry is present).
    /// Returns how many pages it mapped and where walks of them can start
    /// (the leaf node), or `None`, having changed nothing,
    /// where a cursor must (no leaf node, or a range beyond one). What a
    /// `KVirtArea`'s creation does first.
    pub(crate) fn fill_in_leaf<T: AnyFrameMeta + ?Sized>(
        &self,
        range: &Range<Vaddr>,
        frames: &mut impl Iterator<Item = Frame<T>>,
        rest: &mut Option<Frame<T>>,
        prop: PageProperty,
    ) -> Option<(usize, WalkStart)> {
        let _rcu = RcuReadGuard::new(self.phys().platform());
        let leaf = lock_leaf(self, range)?;
        let from = pte_index::<C::F>(range.start, 1);
        let to = from + range.len() / PAGE_SIZE;
        let mapped = fill_frames(&leaf, from, to, frames, rest, C::F::page_encoder(1, prop, true));
        Some((mapped, WalkStart::at_leaf(&leaf)))
    }

    /// Removes the mapping of the 4 KiB page at `va`, splitting a huge page
    /// that holds it: what a cursor over `va..va + PAGE_SIZE` does with
    /// [`try_take_next`](super::CursorMut::try_take_next)`(PAGE_SIZE)`,
    /// without making one when the page is one of several in an existing
    /// leaf node (see the module docs). Returns `None` if nothing is mapped
    /// there. It locks as that cursor would (see
    /// [`try_map_frame`](Self::try_map_frame)).
    ///
    /// What is returned still owns what was mapped: flush the TLB for its
    /// [`va_range`](PageTableFrag::va_range) before dropping it.
    ///
    /// The result is several words, returned through memory. Keeping it
    /// where it lands until the flush is done, and only then taking it out
    /// of its `Result`, is measurably faster than taking it out at once
    /// (`?`, `expect`): that move copies it with wide loads right behind
    /// the narrow stores that wrote it, which x86-64 CPUs cannot forward
    /// and wait for (about 6 ns a call in the 1-page unmap benchmark).
    ///
    /// # Errors
    ///
    /// [`TakePageError::Range`] if `va` is not a page of this table (as
    /// [`cursor_mut`](Self::cursor_mut) reports it), and
    /// [`TakePageError::OutOfMemory`] if splitting a huge page needed a node
    /// that could not be allocated. The table is then unchanged.
    pub fn try_take_page(&self, va: Vaddr) -> Result<Option<PageTableFrag<C::F>>, TakePageError> {
        let range = page_range::<C>(va).map_err(TakePageError::Range)?;
        if let Some(item) = self.take_in_leaf(&range) {
            return Ok(item.map(|item| PageTableFrag::Mapped { va, item }));
        }
        let mut cursor = self.cursor_mut(&range).expect("the range was checked");
        cursor.try_take_next(PAGE_SIZE).map_err(|_| TakePageError::OutOfMemory)
    }

    /// Removes every mapping in `range` into `taken`: what a cursor over
    /// `range` does with [`try_take_all`](super::CursorMut::try_take_all)`(range.len(), taken)`,
    /// without making one when the range lies inside one leaf node's span
    /// (short of all of it) and that node exists (see the module docs).
    /// Unmapping a small kernel area is this call. It locks as that cursor
    /// would (see [`try_map_frame`](Self::try_map_frame)).
    ///
    /// What `taken` receives still owns what was mapped: flush the TLB for
    /// its [`va_range`](TakenRange::va_range) before dropping it. If
    /// anything was taken, that range covers all of `range` when `range`
    /// lies inside one leaf node's span (with or without a cursor: a huge
    /// page around it is split first), which is more than `try_take_all`'s
    /// where the first pages are unmapped; otherwise, as `try_take_all`'s,
    /// it starts at the first mapping taken. A `taken` that already holds
    /// something keeps it: what this call takes is added, and its range
    /// grows to cover both.
    ///
    /// # Errors
    ///
    /// [`TakeRangeError::Range`] if `range` is not one
    /// [`cursor_mut`](Self::cursor_mut) accepts (the table is unchanged),
    /// and [`TakeRangeError::OutOfMemory`] if a huge page that `range` cuts
    /// could not be split, with the cursor's partial result (see there).
    pub fn try_take_range(
        &self,
        range: &Range<Vaddr>,
        taken: &mut TakenRange<C::F>,
    ) -> Result<(), TakeRangeError> {
        check_range::<C>(range).map_err(TakeRangeError::Range)?;
        self.take_range_into(range, taken).map_err(|PageTableAllocError| TakeRangeError::OutOfMemory)
    }

    /// [`try_take_range`](Self::try_take_range) of a range already checked
    /// as [`cursor_mut`](Self::cursor_mut) checks one (an area's mapped
    /// part): what `KVirtArea`'s drop does, without checking it again.
    #[inline]
    pub(crate) fn take_range_into(
        &self,
        range: &Range<Vaddr>,
        taken: &mut TakenRange<C::F>,
    ) -> Result<(), PageTableAllocError> {
        if self.take_in_leaf_into(range, taken) {
            return Ok(());
        }
        let mut cursor = self.cursor_mut(range).expect("the range was checked");
        cursor.try_take_all(range.len(), taken)
    }

    /// Step 1 and 2 of the module docs for [`try_take_range`](Self::try_take_range)
    /// of `range` (checked): takes everything mapped in it into `taken`, as
    /// a cursor's [`try_take_all`](super::CursorMut::try_take_all) would, if
    /// the range lies inside one leaf node's span (short of all of it) and
    /// that node exists; returns `false`, having changed nothing, otherwise.
    /// `taken`'s range then covers all of `range` if anything was taken.
    fn take_in_leaf_into(&self, range: &Range<Vaddr>, taken: &mut TakenRange<C::F>) -> bool {
        let _rcu = RcuReadGuard::new(self.phys().platform());
        let Some(leaf) = lock_leaf(self, range) else {
            return false;
        };
        if taken.take_from_leaf(&leaf, range.clone()) != 0 {
            self.release_taken_leaf(leaf, range.start);
        }
        true
    }

    /// Step 1 and 2 of the module docs for a take: `Some` with what the
    /// cursor would take (the item, or `None` if nothing is mapped there),
    /// if the leaf node exists; otherwise `None`, having changed nothing.
    #[inline(always)]
    fn take_in_leaf(&self, range: &Range<Vaddr>) -> Option<Option<MappedItem>> {
        let _rcu = RcuReadGuard::new(self.phys().platform());
        let leaf = lock_leaf(self, range)?;
        let index = pte_index::<C::F>(range.start, 1);
        let PteKind::Page { pa, prop, tracked } = C::F::decode(leaf.read(index), 1) else {
            // Absent (a leaf node's entries are pages, never tables).
            return Some(None);
        };
        leaf.write(index, 0);
        self.release_taken_leaf(leaf, range.start);
        Some(Some(if tracked {
            // SAFETY: the tracked entry just cleared owned one reference to
            // the frame; it moves to the handle.
            MappedItem::Tracked(unsafe { self.phys().frame_of_entry(pa) }, prop)
        } else {
            MappedItem::Untracked(pa, 1, prop)
        }))
    }

    /// Unlocks `leaf`, the leaf node holding `va`, after a take removed
    /// something from it; a leaf that emptied goes where a cursor's drop
    /// would send it (queued or reclaimed: `dispose_empty_node`).
    fn release_taken_leaf(&self, leaf: NodeGuard<'_>, va: Vaddr) {
        let emptied = must_dispose(self, &leaf, 1, true);
        drop(leaf);
        if emptied {
            dispose_empty_node(self, align_down(va, node_span::<C::F>(1)), 1);
        }
    }
}

/// `va..va + PAGE_SIZE`, checked as [`PageTable::cursor_mut`] checks a
/// range (a misaligned `va` is `Misaligned` even where `va + PAGE_SIZE`
/// would overflow).
fn page_range<C: PageTableConfig>(va: Vaddr) -> Result<Range<Vaddr>, RangeError> {
    if !is_page_aligned(va) {
        return Err(RangeError::Misaligned);
    }
    let range = va..va.checked_add(PAGE_SIZE).ok_or(RangeError::OutOfBounds)?;
    check_range::<C>(&range)?;
    Ok(range)
}

/// Locks the leaf node holding `range` (checked), if the range lies inside
/// one leaf node's span, short of all of it, and that node exists;
/// otherwise locks nothing (`locking::lock_leaf`). Called inside a
/// read-side section, which the lock-free walk down needs.
#[inline(always)]
fn lock_leaf<'a, C: PageTableConfig>(pt: &'a PageTable<C>, range: &Range<Vaddr>) -> Option<NodeGuard<'a>> {
    let leaf = locking::lock_leaf(&PtTree::new(pt), range)?;
    // SAFETY: `lock_leaf` locked the leaf and gave up its guard
    // (`PtTree::lock`); this is the only guard made again, which unlocks
    // it when dropped, as `PtTree::unlock` would.
    Some(unsafe { NodeGuard::from_raw(leaf) })
}
