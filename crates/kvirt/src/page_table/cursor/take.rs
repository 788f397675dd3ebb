//! Taking mappings out of the table, and changing their property.
//!
//! [`CursorMut::take_next`] and [`CursorMut::protect_next`] both work on
//! "the next mapping in `va..va + len`", found by the cursor's one search
//! loop, `Cursor::next_present`. Taking also accepts a whole sub-tree whose
//! span lies in the search range: it is unhooked at once and handed out as
//! a [`StraySubtree`] in a [`PageTableFrag`], instead of being emptied
//! page by page. A huge page that straddles the search range is split
//! first (`split_huge`), so that neither operation reaches outside it.
//!
//! What is taken out still owns what it mapped, and lock-free walkers and
//! TLBs may still see it: its owner flushes the TLB before dropping it.
//! The nodes taking empties are detached by `reclaim.rs`.

use core::ops::Range;

use super::reclaim::StraySubtree;
use super::{CursorMut, Present, MAX_LEVELS};
use crate::addr::{is_aligned, Paddr, PagingLevel, Vaddr, PAGE_SIZE};
use crate::arch::x86_64::X86_64;
use crate::arch::{page_size, PagingFormat, PteKind};
use crate::frame::{AnyFrameMeta, Frame};
use crate::page_prop::PageProperty;
use crate::page_table::config::PageTableConfig;
use crate::page_table::error::PageTableAllocError;
use crate::page_table::item::MappedItem;
use crate::page_table::node::{alloc_node, free_node};

/// What [`CursorMut::take_next`] removed from the table.
///
/// It still owns what was mapped: flush the TLB for
/// [`va_range`](Self::va_range) on every CPU that may cache it, then drop
/// it (the platform's [`flush_tlb`](crate::platform::Platform::flush_tlb)
/// with [`TlbScope::AllCpus`](crate::platform::TlbScope::AllCpus), as
/// `KVirtArea`'s drop does).
#[must_use = "dropping a fragment before the TLB flush lets its frames be reused while still cached"]
#[derive(Debug)]
pub enum PageTableFrag<F: PagingFormat = X86_64> {
    /// One leaf mapping.
    Mapped {
        /// Where it was mapped.
        va: Vaddr,
        /// What was mapped.
        item: MappedItem,
    },
    /// A whole sub-tree, detached at once.
    StrayPageTable {
        /// The detached sub-tree.
        pt: StraySubtree<F>,
        /// The first address it mapped.
        va: Vaddr,
        /// The bytes it spans.
        len: usize,
        /// The leaf mappings it held (huge pages included, one each).
        num_frames: usize,
    },
}

impl<F: PagingFormat> PageTableFrag<F> {
    /// The virtual range the fragment covered.
    #[must_use]
    pub fn va_range(&self) -> Range<Vaddr> {
        match self {
            PageTableFrag::Mapped { va, item } => {
                let len = match item {
                    MappedItem::Tracked(..) => PAGE_SIZE,
                    MappedItem::Untracked(_, level, _) => page_size::<F>(*level),
                };
                *va..va.saturating_add(len)
            }
            PageTableFrag::StrayPageTable { va, len, .. } => *va..va.saturating_add(*len),
        }
    }
}

impl<C: PageTableConfig> CursorMut<'_, C> {
    /// Removes the next mapping in `va..va + len`: a leaf, or a whole
    /// sub-tree if its span lies inside. Huge pages straddling the search
    /// range are split first, so nothing outside it is unmapped. Moves past
    /// what it removed; returns `None`, at `va + len`, if nothing is mapped.
    ///
    /// # Panics
    ///
    /// Panics if `len` is misaligned or reaches past the range, or if
    /// memory runs out while splitting a huge page
    /// ([`try_take_next`](Self::try_take_next) reports that instead).
    pub fn take_next(&mut self, len: usize) -> Option<PageTableFrag<C::F>> {
        self.try_take_next(len).expect("out of memory while splitting a huge page")
    }

    /// [`take_next`](Self::take_next), but running out of memory while
    /// splitting a huge page is an error: the page table is then unchanged
    /// and the cursor stands in the mapping it could not split.
    ///
    /// # Panics
    ///
    /// Panics if `len` is misaligned or reaches past the range.
    pub fn try_take_next(&mut self, len: usize) -> Result<Option<PageTableFrag<C::F>>, PageTableAllocError> {
        let end = self.begin_take(len);
        loop {
            let c = &mut self.inner;
            let Some(present) = c.next_present(end, true) else {
                return Ok(None);
            };
            let (level, entry) = (c.level, c.cur_entry_range());
            let frag = match present {
                Present::Subtree(child) => {
                    let (pt, num_frames) = self.take_subtree(child);
                    PageTableFrag::StrayPageTable { pt, va: entry.start, len: entry.len(), num_frames }
                }
                Present::Page { pa, prop, tracked } => {
                    if entry.start < c.va || entry.end > end {
                        self.split_huge(end)?;
                        continue;
                    }
                    let item = match self.take_leaf(pa, tracked) {
                        Some(frame) => MappedItem::Tracked(frame, prop),
                        None => MappedItem::Untracked(pa, level, prop),
                    };
                    PageTableFrag::Mapped { va: entry.start, item }
                }
            };
            self.end_take(entry.end);
            return Ok(Some(frag));
        }
    }

    /// Checks a search of `len` bytes from `va` and returns its end. A
    /// cursor left deep in the tree at the start of a node (by `jump` or a
    /// rejected `try_map`) starts from the highest entry beginning at `va`,
    /// which may lie in the search range as a whole: a sub-tree is then
    /// taken whole whatever the cursor did before.
    ///
    /// # Panics
    ///
    /// As [`Cursor::search_end`](super::Cursor::search_end).
    pub(super) fn begin_take(&mut self, len: usize) -> Vaddr {
        let end = self.inner.search_end(len);
        let c = &mut self.inner;
        c.sync_path();
        while c.level < c.guard_level && is_aligned(c.va, page_size::<C::F>(c.level + 1)) {
            c.pop();
        }
        end
    }

    /// Moves past what was just taken, to `next`, and detaches the nodes
    /// that emptied.
    pub(super) fn end_take(&mut self, next: Vaddr) {
        self.inner.va = next;
        self.removed = true;
        self.reclaim_empty_path();
    }

    /// Unhooks the sub-tree the current entry points to (`child`, found by
    /// `next_present` as a `Present::Subtree`) and returns it with its leaf
    /// count.
    pub(super) fn take_subtree(&mut self, child: Paddr) -> (StraySubtree<C::F>, usize) {
        // The search range lies in the barrier.
        let (raw, num_frames) = self.unhook_subtree(child);
        let c = &self.inner;
        // SAFETY: the entry was just unhooked, and the sub-tree it points to
        // detached; this cursor owned it.
        (unsafe { StraySubtree::new(c.phys(), raw, c.level) }, num_frames)
    }

    /// Clears the current entry, a leaf mapping `pa` (found by
    /// `next_present` as a `Present::Page`, within the search range), and
    /// returns the frame if it is tracked: the entry's reference moves to
    /// it.
    pub(super) fn take_leaf(&mut self, pa: Paddr, tracked: bool) -> Option<Frame<dyn AnyFrameMeta>> {
        let c = &mut self.inner;
        c.cur_node().write(c.cur_index(), 0);
        // SAFETY: the tracked entry just cleared owned one reference to
        // the frame; it moves to the result.
        tracked.then(|| unsafe { c.phys().frame_of_entry(pa) })
    }

    /// Changes the property of the next mapping in `va..va + len` with `op`
    /// (splitting huge pages that straddle the search range) and returns the
    /// range changed; returns `None`, at `va + len`, if nothing is mapped.
    /// The caller flushes the TLB for the returned range.
    ///
    /// If `op` panics, the entry keeps its property and the panic goes on
    /// (a huge page around it may have been split already, which changes
    /// no translation).
    ///
    /// # Panics
    ///
    /// As for [`take_next`](Self::take_next).
    #[must_use = "the returned range must be flushed from the TLB"]
    pub fn protect_next(
        &mut self,
        len: usize,
        op: &mut impl FnMut(&mut PageProperty),
    ) -> Option<Range<Vaddr>> {
        self.try_protect_next(len, op).expect("out of memory while splitting a huge page")
    }

    /// [`protect_next`](Self::protect_next), but running out of memory
    /// while splitting a huge page is an error, as for
    /// [`try_take_next`](Self::try_take_next).
    ///
    /// # Panics
    ///
    /// Panics if `len` is misaligned or reaches past the range.
    #[must_use = "the returned range must be flushed from the TLB"]
    pub fn try_protect_next(
        &mut self,
        len: usize,
        op: &mut impl FnMut(&mut PageProperty),
    ) -> Result<Option<Range<Vaddr>>, PageTableAllocError> {
        let end = self.inner.search_end(len);
        loop {
            let c = &mut self.inner;
            let (pa, mut prop, tracked) = match c.next_present(end, false) {
                None => return Ok(None),
                Some(Present::Page { pa, prop, tracked }) => (pa, prop, tracked),
                Some(Present::Subtree(_)) => unreachable!("sub-trees are not asked for"),
            };
            let (level, entry) = (c.level, c.cur_entry_range());
            if entry.start < c.va || entry.end > end {
                self.split_huge(end)?;
                continue;
            }
            op(&mut prop);
            c.cur_node().write(c.cur_index(), C::F::encode_page(pa, level, prop, tracked));
            c.va = entry.end;
            return Ok(Some(entry));
        }
    }

    /// Splits the huge page at the current entry, and the pages it splits
    /// into, until the page holding `va` starts at `va` and ends by `end`;
    /// leaves the cursor on that page.
    ///
    /// Every node needed is allocated before any entry changes, so when
    /// memory runs out the page table is left exactly as it was.
    pub(super) fn split_huge(&mut self, end: Vaddr) -> Result<(), PageTableAllocError> {
        let c = &mut self.inner;
        let (va, top) = (c.va, c.level);
        let fits = |l: PagingLevel| {
            let size = page_size::<C::F>(l);
            is_aligned(va, size) && va.checked_add(size).is_some_and(|e| e <= end)
        };
        // A 4 KiB page always fits: `va` and `end` are page aligned.
        let target = (1..top).rev().find(|&l| fits(l)).unwrap_or(1);
        let mut fresh = [const { None }; MAX_LEVELS];
        for l in target..top {
            match alloc_node(c.phys(), l) {
                Ok(node) => fresh[l as usize] = Some(node),
                Err(e) => {
                    for node in fresh.iter_mut().filter_map(Option::take) {
                        // SAFETY: allocated above and never linked in.
                        unsafe { free_node(node) };
                    }
                    return Err(e);
                }
            }
        }
        for l in (target..top).rev() {
            let child = fresh[l as usize].take().expect("allocated above");
            let PteKind::Page { pa, prop, tracked } = C::F::decode(c.cur_raw(), l + 1) else {
                unreachable!("split_huge on a non-leaf entry")
            };
            debug_assert!(!tracked, "only untracked huge pages exist");
            let small = page_size::<C::F>(l);
            for j in 0..C::F::NR_ENTRIES {
                child.write(j, C::F::encode_page(pa + j * small, l, prop, false));
            }
            // The new node stays locked: it is inside the barrier.
            c.cur_node().write(c.cur_index(), C::F::encode_table(child.pa()));
            c.push(child);
        }
        Ok(())
    }
}
