//! Single pages and ranges on the model's user page table without a
//! cursor: `PageTable::try_map_frame`, `PageTable::try_take_page` and
//! `PageTable::try_take_range`. Each has exactly the effect and the errors
//! of the cursor sequence its docs name (a cursor over `va..va +
//! PAGE_SIZE`, then `try_map_frames` of the one frame, or
//! `try_take_next(PAGE_SIZE)`; a cursor over the range, then
//! `try_take_all` of all of it), so [`PtModel`](crate::PtModel)
//! predicts it as it predicts that sequence: the result (which error, the
//! frame handed back, which leaf taken, a huge page split), and afterwards
//! the page table's view of the page and its node count, as after a raw
//! cursor session.

use std::ops::Range;

use kvirt::arch::effective_property;
use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::KernelLayout;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{MapErrorKind, MappedItem, RangeError, TakePageError, TakeRangeError, TakenRange};
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::{Vaddr, PAGE_SIZE};

use super::session::{check_taken, expect_range_error, refused_split, taken_of};
use super::{Model, Outcome};
use crate::pt::{Leaf, Taken};

/// The address of page `page` plus `misalign` bytes (wrapping: any address
/// can be named).
fn single_va(page: usize, misalign: usize) -> Vaddr {
    page.wrapping_mul(PAGE_SIZE).wrapping_add(misalign)
}

/// The page at `va` as the single-page calls check it, in a table covering
/// `bounds`: `va..va + PAGE_SIZE`, or the error `cursor_mut` gives for it
/// (a misaligned `va` is `Misaligned` even where the range would overflow,
/// and the very last page of the address space, which no range holds, is
/// `OutOfBounds`).
fn single_page(va: Vaddr, bounds: (Vaddr, Vaddr)) -> Result<Range<Vaddr>, RangeError> {
    if va % PAGE_SIZE != 0 {
        return Err(RangeError::Misaligned);
    }
    let range = va..va.checked_add(PAGE_SIZE).ok_or(RangeError::OutOfBounds)?;
    match expect_range_error(&range, bounds) {
        Some(e) => Err(e),
        None => Ok(range),
    }
}

impl<L: KernelLayout> Model<'_, L> {
    /// `try_map_frame` of a fresh tracked frame at `page * PAGE_SIZE +
    /// misalign`.
    pub(super) fn pt_map_frame(&mut self, page: usize, misalign: usize) -> Outcome {
        let va = single_va(page, misalign);
        let frame = match FrameAllocOptions::new_in(self.space).alloc_frame() {
            Ok(f) => f,
            Err(e) => {
                let free = self.space.phys_stats().free_pages;
                return self.expect(free == 0, "a single frame fails only with no free page", || {
                    format!("alloc_frame failed ({e:?}) with {free} free pages")
                });
            }
        };
        let pa = frame.paddr();
        self.bytes.remove(&pa);
        // Whatever happens, this frame's count is checked next: one
        // reference per entry that maps it, or free.
        self.touched.push(pa);
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        let page_range = single_page(va, Self::pt_bounds());
        let predicted = match &page_range {
            Err(RangeError::Misaligned) => Err(MapErrorKind::Misaligned),
            Err(_) => Err(MapErrorKind::OutOfRange),
            Ok(r) if self.pt_model.first_intersecting(r.start, r.end).is_some() => {
                Err(MapErrorKind::AlreadyMapped)
            }
            Ok(_) => Ok(()),
        };
        self.space.synchronize();
        let nodes_before = self.space.phys_stats().page_table_pages;
        let model_nodes_before = self.pt_model.nodes();
        let scarce = self.scarce();
        let pt = self.pt.as_ref().expect("the page table lives until `finish`");
        match (pt.try_map_frame(va, frame, prop), predicted) {
            (Ok(()), Ok(())) => {
                let prop = effective_property::<L::Format>(prop);
                self.pt_model.map.insert(va, Leaf { pa, size: PAGE_SIZE, prop, tracked: true });
                self.add_ref(pa);
            }
            (Ok(()), Err(predicted)) => {
                return Err(self.fail(
                    "pt map_frame agrees with the model",
                    format!("try_map_frame at {va:#x} succeeded, the model predicts {predicted:?}"),
                ));
            }
            (Err(e), predicted) => {
                let back = matches!(&e.item, MappedItem::Tracked(f, p) if f.paddr() == pa && *p == prop);
                self.expect(back, "a refused frame comes back", || {
                    format!(
                        "try_map_frame at {va:#x} refused {pa:#x} ({:?}) and handed back {:x?}",
                        e.kind, e.item
                    )
                })?;
                if e.kind == MapErrorKind::OutOfMemory && predicted.is_ok() {
                    self.expect(scarce, "out of memory only when memory is short", || {
                        format!("try_map_frame at {va:#x} ran out of memory")
                    })?;
                } else {
                    self.expect(Err(e.kind) == predicted, "pt map_frame agrees with the model", || {
                        format!(
                            "try_map_frame at {va:#x}: got {:?}, the model predicts {predicted:?}",
                            e.kind
                        )
                    })?;
                }
                // The frame handed back goes with the error.
            }
        }
        self.check_single_page(page_range.ok(), nodes_before, model_nodes_before)
    }

    /// `try_take_page` at `page * PAGE_SIZE + misalign`.
    pub(super) fn pt_take_page(&mut self, page: usize, misalign: usize) -> Outcome {
        let va = single_va(page, misalign);
        let page_range = single_page(va, Self::pt_bounds());
        self.space.synchronize();
        let nodes_before = self.space.phys_stats().page_table_pages;
        let model_nodes_before = self.pt_model.nodes();
        let scarce = self.scarce();
        let saved = self.pt_model.clone();
        let predicted = match &page_range {
            Ok(r) => Ok(self.pt_model.take_next(r.start, r.end).0),
            Err(e) => Err(TakePageError::Range(e.clone())),
        };
        let pt = self.pt.as_ref().expect("the page table lives until `finish`");
        match (pt.try_take_page(va), predicted) {
            (Ok(got), Ok(predicted)) => {
                let taken = got.as_ref().map(taken_of::<L::Format>);
                self.expect(taken == predicted, "pt take_page agrees with the model", || {
                    format!("try_take_page at {va:#x}: got {taken:x?}, the model predicts {predicted:x?}")
                })?;
                if let Some(Taken::Leaf(_, leaf)) = &taken {
                    if leaf.tracked {
                        self.drop_ref(leaf.pa);
                    }
                }
                if got.is_some() {
                    self.space.platform().flush_tlb(TlbFlushOp::Range(va..va + PAGE_SIZE), TlbScope::AllCpus);
                }
                drop(got);
            }
            (Err(TakePageError::OutOfMemory), Ok(_)) => {
                self.pt_model = saved;
                refused_split(self.checker(), &self.pt_model, va, scarce)?;
            }
            (got, predicted) => {
                let got = got.map(|frag| frag.as_ref().map(taken_of::<L::Format>));
                let same_error = matches!((&got, &predicted), (Err(g), Err(p)) if g == p);
                self.expect(same_error, "pt take_page agrees with the model", || {
                    format!("try_take_page at {va:#x}: got {got:x?}, the model predicts {predicted:x?}")
                })?;
            }
        }
        self.check_single_page(page_range.ok(), nodes_before, model_nodes_before)
    }

    /// `try_take_range` of `pages` pages from page `page`, clipped to the
    /// table (so possibly empty).
    pub(super) fn pt_take_range(&mut self, page: usize, pages: usize) -> Outcome {
        let range = Self::pt_range(page, pages);
        let expected = expect_range_error(&range, Self::pt_bounds());
        self.space.synchronize();
        let nodes_before = self.space.phys_stats().page_table_pages;
        let model_nodes_before = self.pt_model.nodes();
        let scarce = self.scarce();
        // A huge page the range cuts at its start: split first, so where
        // the take stops if memory runs out there.
        let cut_start = self
            .pt_model
            .map
            .range(..=range.start)
            .next_back()
            .is_some_and(|(&start, leaf)| start < range.start && range.start < start + leaf.size);
        let pt = self.pt.as_ref().expect("the page table lives until `finish`");
        let mut taken = TakenRange::new();
        let got = pt.try_take_range(&range, &mut taken);
        let stop = match (&got, &expected) {
            (Err(TakeRangeError::Range(e)), Some(want)) => {
                self.expect(e == want, "pt take_range agrees with the model", || {
                    format!("try_take_range of {range:#x?}: got {e:?}, the model predicts {want:?}")
                })?;
                self.expect(taken.is_empty(), "a refused take_range takes nothing", || {
                    format!("{taken:x?}")
                })?;
                return self.check_single_page(None, nodes_before, model_nodes_before);
            }
            (Ok(()), None) => range.end,
            (Err(TakeRangeError::OutOfMemory), None) => {
                // Stopped in the huge page cut at the start if it is still
                // whole (nothing taken), else in the one cut at the end:
                // everything before that was taken.
                let whole_at_start = cut_start && {
                    let mut c = pt.cursor(&range).map_err(|e| self.fail("pt cursor", format!("{e:?}")))?;
                    c.query().is_ok_and(|(r, _)| r.start < range.start)
                };
                let stop = if whole_at_start {
                    range.start
                } else {
                    self.pt_model.map.range(..range.end).next_back().map_or(range.end, |(&start, _)| start)
                };
                refused_split(self.checker(), &self.pt_model, stop.max(range.start), scarce)?;
                stop
            }
            (got, want) => {
                return Err(self.fail(
                    "pt take_range agrees with the model",
                    format!("try_take_range of {range:#x?}: got {got:?}, the model predicts {want:?}"),
                ));
            }
        };
        // The model takes what the table took: everything in the range up
        // to where it stopped.
        let mut dropped = Vec::new();
        let took = self.pt_model.take_all(range.start..stop.max(range.start), &mut |pa| dropped.push(pa));
        for pa in dropped {
            self.drop_ref(pa);
        }
        check_taken(self.checker(), &taken, &took, &range)?;
        if let Some(cover) = taken.va_range() {
            self.space.platform().flush_tlb(TlbFlushOp::Range(cover), TlbScope::AllCpus);
        }
        drop(taken);
        self.check_pt_session(&range, nodes_before, model_nodes_before)
    }

    /// After a single-page call: as after a session over the page, if it is
    /// one of the table (its view equals the model, page-table pages
    /// changed as the model's nodes did); else nothing may have changed.
    fn check_single_page(
        &self,
        page: Option<Range<Vaddr>>,
        nodes_before: usize,
        model_nodes_before: usize,
    ) -> Outcome {
        if let Some(range) = page {
            return self.check_pt_session(&range, nodes_before, model_nodes_before);
        }
        self.space.synchronize();
        let now = self.space.phys_stats().page_table_pages;
        self.expect(
            now == nodes_before && self.pt_model.nodes() == model_nodes_before,
            "page-table pages follow the model's nodes",
            || format!("page-table pages went from {nodes_before} to {now} in a refused single-page call"),
        )
    }
}
