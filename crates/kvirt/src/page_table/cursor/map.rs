//! Mapping: putting leaves into the table.
//!
//! [`CursorMut::try_map`] maps one item at the cursor's address at the
//! item's level, creating the nodes on the way (each born locked, so it
//! joins the cursor's locked sub-tree) and replacing an empty node left
//! where a huge page goes. Nothing changes if the item is rejected, except
//! that nodes created for it and left empty are detached again.
//!
//! [`CursorMut::try_map_frames`] maps 4 KiB frames one after another. It is
//! the hot path of mapping an area: wherever the cursor stands in a leaf
//! node (a fresh cursor over a range inside an existing leaf node, or one
//! where `try_map` has just placed a frame), the rest of that node is
//! filled by
//! [`NodeGuard::fill_absent`](super::super::node::NodeGuard::fill_absent)
//! in a tight loop, with no walk and no check per page beyond the entry
//! being absent and the frame being of this table's space (all of whose
//! RAM the format can address: the table checked that when it was made).
//! `try_map` maps the first frame of every other node, creating it as
//! needed, and reports whatever stops a fill. So a small map inside an
//! existing leaf node is one fill: no `try_map` at all.

use super::on_local::on_local;
use super::{entry_range, may_detach, node_span, CursorMut};
use crate::addr::{is_aligned, Paddr, PagingLevel, PAGE_SIZE};
use crate::arch::{page_size, pte_index, PagingFormat, PteKind};
use crate::frame::{AnyFrameMeta, Frame, SlotMap};
use crate::page_prop::PageProperty;
use crate::page_table::config::PageTableConfig;
use crate::page_table::error::{MapError, MapErrorKind};
use crate::page_table::item::MappedItem;
use crate::page_table::node::{alloc_node, NodeGuard};

impl<C: PageTableConfig> CursorMut<'_, C> {
    /// Maps `item` at the current address and moves past it.
    ///
    /// # Panics
    ///
    /// Panics in the cases [`try_map`](Self::try_map) reports, with the
    /// reason: most notably "mapping over an already mapped page".
    pub fn map(&mut self, item: MappedItem) {
        if let Err(e) = self.try_map(item) {
            panic!("CursorMut::map at {:#x}: {}", self.inner.va, e.kind);
        }
    }

    /// Maps `item` at the current address and moves past it, or returns it
    /// with the reason. A rejected call changes nothing.
    ///
    /// A tracked frame is mapped at level 1; an untracked item at its level,
    /// where an empty page-table node left there is replaced.
    pub fn try_map(&mut self, item: MappedItem) -> Result<(), MapError> {
        self.try_map_encoded(item, C::F::encode_page)
    }

    /// [`try_map`](Self::try_map), writing the entry `encode` makes of the
    /// item (`PagingFormat::encode_page` or an encoder made by
    /// `PagingFormat::page_encoder` for the item's level, property and
    /// tracking).
    #[inline]
    fn try_map_encoded(
        &mut self,
        item: MappedItem,
        encode: impl FnOnce(Paddr, PagingLevel, PageProperty, bool) -> u64,
    ) -> Result<(), MapError> {
        let (pa, level, prop, tracked) = match &item {
            MappedItem::Tracked(frame, prop) => (frame.paddr(), 1, *prop, true),
            MappedItem::Untracked(pa, level, prop) => (*pa, *level, *prop, false),
        };
        let fail = |kind, item| Err(MapError { kind, item });
        if let MappedItem::Tracked(frame, _) = &item {
            // The entry will hold the frame's reference as a bare address
            // and take it back through this table's metadata array: the
            // frame's slot must be in that array (which is what owning
            // space means; no load of the slot needed).
            if frame.paddr_in(self.inner.phys().slot_map()).is_none() {
                return fail(MapErrorKind::ForeignFrame, item);
            }
        }
        if !(1..=C::F::HIGHEST_LEAF_LEVEL).contains(&level) {
            return fail(MapErrorKind::UnsupportedLevel, item);
        }
        let size = page_size::<C::F>(level);
        let c = &mut self.inner;
        if c.va >= c.barrier.end || size > c.barrier.end - c.va {
            return fail(MapErrorKind::OutOfRange, item);
        }
        if !is_aligned(c.va, size) || !is_aligned(pa, size) {
            return fail(MapErrorKind::Misaligned, item);
        }
        if !kvirt_core::area_args::paddr_range_fits(pa, size, C::F::PA_BITS) {
            return fail(MapErrorKind::PaddrTooLarge, item);
        }
        c.sync_path();
        // The guard covers at least one entry of `size` (the range does), so
        // it is at `level` or above.
        while c.level < level {
            c.pop();
        }
        while c.level > level {
            match C::F::decode(c.cur_raw(), c.level) {
                // SAFETY: the current entry points to `child`, and `va` is
                // below the barrier's end (checked above).
                PteKind::Table(child) => unsafe { c.descend(child) },
                PteKind::Page { .. } => return fail(MapErrorKind::AlreadyMapped, item),
                PteKind::Absent => {
                    let Ok(child) = alloc_node(c.phys(), c.level - 1) else {
                        self.reclaim_empty_path();
                        return fail(MapErrorKind::OutOfMemory, item);
                    };
                    c.cur_node().write(c.cur_index(), C::F::encode_table(child.pa()));
                    // The new node stays locked: it is inside the barrier.
                    c.push(child);
                }
            }
        }
        let raw = c.cur_raw();
        match C::F::decode(raw, level) {
            PteKind::Absent => {}
            // A sub-tree that maps nothing (nodes emptied and not reclaimed
            // yet, a kernel table's batch) gives way to the page.
            PteKind::Table(child)
                if may_detach::<C>(level - 1)
                // SAFETY: the current entry points to `child` and lies in
                // the barrier as a whole (the page does, checked above), so
                // the cursor holds the whole sub-tree, and no guard below
                // the current level.
                    && unsafe { c.maps_nothing_below(child, level - 1) } =>
            {
                let span = entry_range::<C>(c.va, level);
                self.retire_unmapped(child, span);
            }
            _ => return fail(MapErrorKind::AlreadyMapped, item),
        }
        let c = &mut self.inner;
        let (node, i) = (c.cur_node(), c.cur_index());
        node.write(i, encode(pa, level, prop, tracked));
        if let MappedItem::Tracked(frame, _) = item {
            // The entry now owns the frame's reference.
            let _ = frame.into_raw();
        }
        c.va += size;
        Ok(())
    }

    /// Maps tracked `frames` one 4 KiB page after another from the current
    /// address, exactly as [`try_map`](Self::try_map) would one at a time,
    /// but filling each leaf node that exists in a tight loop. Stops at the
    /// first frame `try_map` would reject and returns that rejection; the
    /// frames before it stay mapped.
    ///
    /// If the iterator panics, the frames it yielded before stay mapped, as
    /// if it had ended there, and the panic goes on; the table is
    /// consistent and the cursor usable, at an address no further than the
    /// end of what was mapped (`jump` before mapping on).
    ///
    /// Memory ordering: a leaf node's run of entries is published with one
    /// `Release` fence before it, so what this thread wrote before the call
    /// happens before a lock-free walk (`translate`, another CPU's MMU)
    /// that reads one of the new entries. What the iterator writes while it
    /// runs (a frame it allocates or fills as it goes) is not ordered so:
    /// to publish frame contents through the mapping itself, make the
    /// frames ready before the call, or order them yourself. (Another CPU
    /// that learns of the mapping by any synchronising means, such as a
    /// lock or a channel, sees everything.)
    pub fn try_map_frames<T: AnyFrameMeta + ?Sized>(
        &mut self,
        frames: impl IntoIterator<Item = Frame<T>>,
        prop: PageProperty,
    ) -> Result<(), MapError> {
        let mut frames = frames.into_iter();
        let encode = C::F::page_encoder(1, prop, true);
        // A frame taken from `frames` that a fill could not map.
        let mut rest = None;
        loop {
            // A fresh cursor over a range inside one existing leaf node
            // stands in it already: most small maps are this fill alone.
            self.fill_leaf(&mut frames, &mut rest, encode);
            let Some(next) = rest.take().or_else(|| frames.next()) else {
                return Ok(());
            };
            self.try_map_encoded(MappedItem::Tracked(Frame::into_dyn(next), prop), |pa, _, _, _| encode(pa))?;
        }
    }

    /// If the cursor stands in a leaf node holding its address (a fresh
    /// cursor whose guard is one, or `try_map` just wrote a page there),
    /// maps `frames` into the rest of that node directly, as long as the
    /// frames are ours and the entries absent. A frame taken that is not
    /// ours goes to `rest`; `try_map` deals with whatever stops the fill,
    /// and reports any error.
    #[inline]
    fn fill_leaf<T: AnyFrameMeta + ?Sized>(
        &mut self,
        frames: &mut impl Iterator<Item = Frame<T>>,
        rest: &mut Option<Frame<T>>,
        encode: impl Fn(Paddr) -> u64,
    ) {
        let c = &mut self.inner;
        // After a `jump`, the leaf on the path may not hold `va`.
        c.sync_path();
        if c.level != 1 {
            return;
        }
        let node_end = c.base[0].saturating_add(node_span::<C::F>(1));
        let limit = node_end.min(c.barrier.end);
        if c.va >= limit {
            return;
        }
        let from = pte_index::<C::F>(c.va, 1);
        let to = from + (limit - c.va) / PAGE_SIZE;
        c.va += fill_frames(c.cur_node(), from, to, frames, rest, encode) * PAGE_SIZE;
    }
}

/// Maps `frames` into the entries from `from` to `to` (exclusive) of
/// `leaf`, a level-1 node its caller holds, in order, for as long as the
/// frames last, are ours and the entries absent; returns how many it
/// mapped. A frame taken that is not ours goes to `rest`. The fill of every
/// run of frames, through a cursor or not.
#[inline(always)]
pub(super) fn fill_frames<T: AnyFrameMeta + ?Sized, I: Iterator<Item = Frame<T>>>(
    leaf: &NodeGuard<'_>,
    from: usize,
    to: usize,
    frames: &mut I,
    rest: &mut Option<Frame<T>>,
    encode: impl Fn(Paddr) -> u64,
) -> usize {
    let slots = leaf.phys().slot_map();
    let mut fill = |frames: &mut I| {
        leaf.fill_absent(from, to, || match claim_frame(frames.next()?, slots) {
            Ok(pa) => Some(encode(pa)),
            Err(frame) => {
                *rest = Some(frame);
                None
            }
        })
    };
    // The loop's stores would otherwise keep `frames`' position in memory
    // (see `on_local`). A larger iterator (a few frames held inline, as a
    // small area's are) costs more to move in and out than its short fill
    // saves: 20 more instructions for a 1-page area.
    if size_of::<I>() <= 6 * size_of::<usize>() {
        on_local(frames, fill)
    } else {
        fill(frames)
    }
}

/// The physical address of `frame`, whose reference the entry about to be
/// written for it takes over, if the frame is one of the table's (`slots`);
/// otherwise the frame, handed back. What every map of a tracked frame
/// does between finding the entry absent and writing it.
#[inline(always)]
pub(super) fn claim_frame<T: ?Sized>(frame: Frame<T>, slots: SlotMap) -> Result<Paddr, Frame<T>> {
    let Some(pa) = frame.paddr_in(slots) else {
        return Err(frame);
    };
    // The entry takes over the frame's reference.
    core::mem::forget(frame);
    Ok(pa)
}
