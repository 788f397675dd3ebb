//! Taking a whole range out of the table at once.
//!
//! [`CursorMut::take_all`] removes every mapping in `va..va + len` into one
//! [`TakenRange`]: what [`take_next`](CursorMut::take_next) would hand out
//! fragment by fragment, without a fragment per page. It is the hot path of
//! unmapping an area, the mirror of
//! [`try_map_frames`](CursorMut::try_map_frames): the search loop finds the
//! first mapping of each leaf node, and the rest of the node is cleared by
//! [`NodeGuard::clear_present`](super::super::node::NodeGuard::clear_present)
//! in a tight loop, with no walk per page. Sub-trees whose span lies in the
//! range are taken whole, and huge pages that straddle its ends are split
//! first, exactly as `take_next` does (they share the code).

use alloc::vec::Vec;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut, Range};

use smallvec::SmallVec;

use super::reclaim::StraySubtree;
use super::{node_span, CursorMut, Present};
use crate::addr::{Vaddr, PAGE_SIZE};
use crate::arch::x86_64::X86_64;
use crate::arch::{pte_index, PagingFormat, PteKind};
use crate::frame::{AnyFrameMeta, Frame};
use crate::page_table::config::PageTableConfig;
use crate::page_table::error::PageTableAllocError;
use crate::page_table::node::NodeGuard;

/// Tracked frames a [`TakenRange`] holds without allocating: 128 bytes of
/// handles, so that unmapping an area of up to 16 pages (64 KiB) needs no
/// heap.
const INLINE_FRAMES: usize = 16;

/// Everything [`CursorMut::take_all`] removed from the table.
///
/// Like a [`PageTableFrag`](super::PageTableFrag), it still owns what was
/// mapped (a reference to each tracked frame, and the sub-trees taken
/// whole): flush the TLB for [`va_range`](Self::va_range) on every CPU that
/// may cache it, then drop it.
#[must_use = "dropping what was taken before the TLB flush lets its frames be reused while still cached"]
pub struct TakenRange<F: PagingFormat = X86_64> {
    /// The tracked frames taken, each owning the reference its entry owned.
    /// The first few are kept inline: unmapping a small area allocates
    /// nothing.
    frames: SmallVec<[Frame<dyn AnyFrameMeta>; INLINE_FRAMES]>,
    /// The sub-trees taken whole.
    subtrees: Subtrees<F>,
    /// The leaf mappings removed: one per page or huge page, those of the
    /// sub-trees included.
    num_mappings: usize,
    /// The lowest and the highest address of what was taken (`None` while
    /// nothing was).
    span: Option<Range<Vaddr>>,
}

impl<F: PagingFormat> TakenRange<F> {
    /// An empty collection, for [`CursorMut::try_take_all`] or
    /// [`PageTable::try_take_range`](crate::page_table::PageTable::try_take_range)
    /// to fill.
    pub const fn new() -> Self {
        Self {
            frames: SmallVec::new_const(),
            subtrees: Subtrees(ManuallyDrop::new(Vec::new())),
            num_mappings: 0,
            span: None,
        }
    }

    /// The leaf mappings taken: one per page or huge page, those of the
    /// sub-trees taken whole included.
    #[must_use]
    pub fn num_mappings(&self) -> usize {
        self.num_mappings
    }

    /// Whether nothing was taken.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.num_mappings == 0 && self.subtrees.is_empty()
    }

    /// A virtual range covering everything taken (`None` if nothing was):
    /// what the TLB flush must cover.
    #[must_use]
    pub fn va_range(&self) -> Option<Range<Vaddr>> {
        self.span.clone()
    }

    /// Releases what was taken, in place, leaving an empty collection: what
    /// dropping it does, for one kept in a `ManuallyDrop` (so that an unwind
    /// before the flush leaks it) that is not worth copying out.
    #[inline]
    pub(crate) fn release(&mut self) {
        *self = Self::new();
    }

    /// Clears every present entry of `leaf`, a level-1 node its caller
    /// holds, in `range` (which lies in it), and takes over what they
    /// owned; returns how many it cleared. All of `range` counts as taken
    /// (for the flush) if anything was.
    pub(super) fn take_from_leaf(&mut self, leaf: &NodeGuard<'_>, range: Range<Vaddr>) -> usize {
        let from = pte_index::<F>(range.start, 1);
        let to = from + range.len() / PAGE_SIZE;
        // Reserved first, so that no push below allocates.
        self.frames.reserve(to - from);
        let (phys, frames) = (leaf.phys(), &mut self.frames);
        let cleared = leaf.clear_present(from, to, |raw| {
            if let PteKind::Page { pa, tracked: true, .. } = F::decode(raw, 1) {
                // SAFETY: the tracked entry just cleared owned one
                // reference to the frame; it moves to the handle.
                frames.push(unsafe { phys.frame_of_entry(pa) });
            }
        });
        if cleared != 0 {
            self.num_mappings += cleared;
            self.cover(range);
        }
        cleared
    }

    /// Notes that `range` was taken.
    fn cover(&mut self, range: Range<Vaddr>) {
        self.span = Some(match self.span.take() {
            None => range,
            Some(span) => span.start.min(range.start)..span.end.max(range.end),
        });
    }
}

/// The sub-trees a [`TakenRange`] took whole: a `Vec` whose drop is
/// skipped, inline, while it never allocated. Most unmaps take no sub-tree,
/// and dropping even an empty `Vec` of values with a destructor is an
/// out-of-line call, some 20 instructions on every unmap.
struct Subtrees<F: PagingFormat>(ManuallyDrop<Vec<StraySubtree<F>>>);

impl<F: PagingFormat> Drop for Subtrees<F> {
    #[inline]
    fn drop(&mut self) {
        // A `Vec` with no capacity holds no element and no allocation:
        // leaving it undropped leaks nothing.
        if self.0.capacity() != 0 {
            release_subtrees(&mut self.0);
        }
    }
}

/// Drops the sub-trees (each queues its nodes' release after a grace
/// period), leaving an empty `Vec` with no allocation.
#[inline(never)]
fn release_subtrees<F: PagingFormat>(subtrees: &mut Vec<StraySubtree<F>>) {
    drop(core::mem::take(subtrees));
}

impl<F: PagingFormat> Deref for Subtrees<F> {
    type Target = Vec<StraySubtree<F>>;

    fn deref(&self) -> &Vec<StraySubtree<F>> {
        &self.0
    }
}

impl<F: PagingFormat> DerefMut for Subtrees<F> {
    fn deref_mut(&mut self) -> &mut Vec<StraySubtree<F>> {
        &mut self.0
    }
}

impl<F: PagingFormat> Default for TakenRange<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: PagingFormat> fmt::Debug for TakenRange<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TakenRange")
            .field("span", &format_args!("{:#x?}", self.span))
            .field("num_mappings", &self.num_mappings)
            .field("tracked_frames", &self.frames.len())
            .field("subtrees", &self.subtrees.len())
            .finish()
    }
}

impl<C: PageTableConfig> CursorMut<'_, C> {
    /// Removes every mapping in `va..va + len`, as repeated
    /// [`take_next`](Self::take_next) calls would, and returns them
    /// together; moves to `va + len`.
    ///
    /// # Panics
    ///
    /// As [`take_next`](Self::take_next): if `len` is misaligned or reaches
    /// past the range, or if memory runs out while splitting a huge page
    /// ([`try_take_all`](Self::try_take_all) reports that instead). What was
    /// taken before such a panic is leaked, not released: the TLB may still
    /// cache it.
    #[inline]
    pub fn take_all(&mut self, len: usize) -> TakenRange<C::F> {
        let mut taken = core::mem::ManuallyDrop::new(TakenRange::new());
        if let Err(e) = self.try_take_all(len, &mut taken) {
            panic!("CursorMut::take_all at {:#x}: {e}", self.inner.va);
        }
        core::mem::ManuallyDrop::into_inner(taken)
    }

    /// [`take_all`](Self::take_all) into `taken`, but running out of memory
    /// while splitting a huge page is an error: the mappings from the
    /// cursor's address on are then unchanged, the cursor stands in the
    /// mapping it could not split, and `taken` holds what was taken before
    /// (flush it before dropping it, as always).
    ///
    /// # Panics
    ///
    /// Panics if `len` is not page aligned or reaches past the range.
    pub fn try_take_all(
        &mut self,
        len: usize,
        taken: &mut TakenRange<C::F>,
    ) -> Result<(), PageTableAllocError> {
        let end = self.begin_take(len);
        loop {
            let c = &mut self.inner;
            let Some(present) = c.next_present(end, true) else {
                return Ok(());
            };
            let entry = c.cur_entry_range();
            match present {
                Present::Subtree(child) => {
                    let (pt, num_frames) = self.take_subtree(child);
                    taken.subtrees.push(pt);
                    taken.num_mappings += num_frames;
                }
                Present::Page { .. } if c.level == 1 => {
                    // The rest of this leaf node in one pass: 4 KiB leaves
                    // never straddle the search range.
                    let limit = c.base[0].saturating_add(node_span::<C::F>(1)).min(end);
                    taken.take_from_leaf(c.cur_node(), c.va..limit);
                    self.end_take(limit);
                    continue;
                }
                Present::Page { pa, tracked, .. } => {
                    if entry.start < c.va || entry.end > end {
                        self.split_huge(end)?;
                        continue;
                    }
                    if let Some(frame) = self.take_leaf(pa, tracked) {
                        taken.frames.push(frame);
                    }
                    taken.num_mappings += 1;
                }
            }
            taken.cover(entry.clone());
            self.end_take(entry.end);
        }
    }
}
