//! Raw cursor sessions on the model's user page table: a cursor over any
//! range must give the predicted typed error or a cursor; then `jump`,
//! `try_map` of any item, `take_next`, `protect_next`, `query` and
//! `find_next`, each predicted by [`PtModel`] (documented panics included).
//! After a session the table's view of the range must equal the model and
//! page-table pages must have changed as the model's nodes did (no node
//! leaked or freed early).

use std::ops::Range;

use kvirt::arch::{effective_property, page_size, PagingFormat};
use kvirt::kspace::KernelLayout;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{
    vaddr_bounds, MapErrorKind, MappedItem, MappedItemRef, PageTableFrag, RangeError, TakenRange,
    UserPtConfig,
};
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::spec;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use super::{Checker, Model, Outcome};
use crate::op::{CursorOp, Item};
use crate::pt::{Leaf, PtModel, Taken};
use crate::{panic, Failure};

/// What a session's next operation may depend on.
#[derive(Debug)]
pub struct SessionView<'a, F: PagingFormat> {
    /// The cursor's range.
    pub range: Range<Vaddr>,
    /// Where the cursor is.
    pub va: Vaddr,
    /// The model of the table.
    pub model: &'a PtModel<F>,
    /// How many frame handles the model holds.
    pub held: usize,
}

/// The error `cursor` / `cursor_mut` must return for `range` in a table
/// covering `bounds` (first and last address).
pub(super) fn expect_range_error(range: &Range<Vaddr>, (first, last): (Vaddr, Vaddr)) -> Option<RangeError> {
    if range.start == range.end {
        Some(RangeError::Empty)
    } else if range.start > range.end {
        Some(RangeError::Reversed)
    } else if range.start % PAGE_SIZE != 0 || range.end % PAGE_SIZE != 0 {
        Some(RangeError::Misaligned)
    } else if range.start < first || range.end - 1 > last {
        Some(RangeError::OutOfBounds)
    } else {
        None
    }
}

/// The length of an entry's range as a cursor reports it (its end
/// saturates at `usize::MAX` at the top of the address space).
fn entry_len(r: &Range<Vaddr>) -> usize {
    if r.end == usize::MAX {
        r.end - r.start + 1
    } else {
        r.len()
    }
}

/// A leaf as the model has it.
fn leaf_of<F: PagingFormat>(item: &MappedItemRef<'_>) -> Leaf {
    let tracked = matches!(item, MappedItemRef::Tracked(..));
    Leaf { pa: item.paddr(), size: page_size::<F>(item.level()), prop: item.prop(), tracked }
}

/// What a cursor's `query` returned, as the model has it: the entry's
/// range and leaf, or the address and range of the refusal.
type QueryResult = Result<(Range<Vaddr>, Option<Leaf>), (Vaddr, Range<Vaddr>)>;

/// `query` at `va` of a cursor over `range` returned `got`: checks it
/// against `model`. An emptied node stays attached while the cursor that
/// emptied it holds it, so an absent slot may be smaller than the model's.
fn check_query<F: PagingFormat>(
    ck: Checker<'_>,
    model: &PtModel<F>,
    range: &Range<Vaddr>,
    va: Vaddr,
    got: QueryResult,
) -> Outcome {
    match got {
        Err(e) => {
            ck.expect(va >= range.end && e == (va, range.clone()), "pt query agrees with the model", || {
                format!("query at {va:#x} in {range:#x?} failed: {e:x?}")
            })
        }
        Ok((r, got)) => {
            ck.expect(va < range.end, "pt query agrees with the model", || {
                format!("query at the end {va:#x} of the range succeeded")
            })?;
            match model.covering(va) {
                Some((s, leaf)) => ck.expect(
                    (&r, got) == (&(s..s + leaf.size), Some(leaf)),
                    "pt query agrees with the model",
                    || format!("query at {va:#x}: got {r:#x?} {got:x?}, the model has {leaf:x?} at {s:#x}"),
                ),
                None => {
                    let len = entry_len(&r);
                    let absent = model.absent_size(va);
                    let slot_sizes = (1..=F::NR_LEVELS).map(page_size::<F>);
                    ck.expect(
                        got.is_none()
                            && slot_sizes.clone().any(|s| s == len)
                            && len <= absent
                            && r.start == va & !(len - 1),
                        "pt query agrees with the model",
                        || format!("query at {va:#x}: got {r:#x?} {got:x?}, the model has an absent slot of {absent:#x}"),
                    )
                }
            }
        }
    }
}

impl<L: KernelLayout> Model<'_, L> {
    /// The user page table's bounds.
    pub(super) fn pt_bounds() -> (Vaddr, Vaddr) {
        vaddr_bounds::<UserPtConfig<L::Format>>()
    }

    /// `pages` pages from page `page`, clipped to the user page table.
    pub(super) fn pt_range(page: usize, pages: usize) -> Range<Vaddr> {
        let (_, last) = Self::pt_bounds();
        let va = page.saturating_mul(PAGE_SIZE);
        va.min(last + 1)..va.saturating_add(pages.saturating_mul(PAGE_SIZE)).min(last + 1)
    }

    pub(super) fn pt_map(&mut self, page: usize, level: u8, tracked: bool) -> Outcome {
        let level = if tracked { 1 } else { level };
        let size =
            if (1..=L::Format::NR_LEVELS).contains(&level) { page_size::<L::Format>(level) } else { 0 };
        let range = Self::pt_range(page, size / PAGE_SIZE);
        if range.len() != size || size == 0 {
            return Ok(());
        }
        let item = if tracked {
            Item::Fresh
        } else {
            Item::Untracked { pa: self.machine.device.start + range.start, level }
        };
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        let mut ops = [CursorOp::Map { item, prop }].into_iter();
        self.session(range, &mut |_| ops.next()).map(drop)
    }

    pub(super) fn pt_unmap(&mut self, page: usize, pages: usize, protect: bool) -> Outcome {
        let range = Self::pt_range(page, pages);
        if range.is_empty() {
            return Ok(());
        }
        let len = range.len();
        let op = if protect {
            CursorOp::Protect { len, how: crate::op::Protect::ReadOnly, all: true }
        } else {
            CursorOp::Take { len, all: true }
        };
        let mut ops = [op].into_iter();
        self.session(range, &mut |_| ops.next()).map(drop)
    }

    pub(super) fn pt_query(&mut self, page: usize) -> Outcome {
        let range = Self::pt_range(page, 1);
        if range.is_empty() {
            return Ok(());
        }
        let pt = self.pt.as_ref().expect("the page table lives until `finish`");
        let mut cursor = pt.cursor(&range).map_err(|e| self.fail("pt cursor", format!("{e:?}")))?;
        let got = cursor
            .query()
            .map(|(r, item)| (r, item.map(|i| leaf_of::<L::Format>(&i))))
            .map_err(|e| (e.va, e.range));
        check_query(self.checker(), &self.pt_model, &range, range.start, got)
    }

    /// A session over `range` with operations from `next`; returns them.
    pub(super) fn session(
        &mut self,
        range: Range<Vaddr>,
        next: &mut dyn FnMut(&super::SessionView<'_, L::Format>) -> Option<CursorOp>,
    ) -> Result<Vec<CursorOp>, Failure> {
        let expected = expect_range_error(&range, Self::pt_bounds());
        self.space.synchronize();
        let nodes_before = self.space.phys_stats().page_table_pages;
        let model_nodes_before = self.pt_model.nodes();
        let ck = super::Checker { step: self.steps, checks: &self.checks };
        let pt = self.pt.as_ref().expect("the page table lives until `finish`");
        let got = pt.cursor(&range).err();
        ck.expect(got == expected, "cursor creation as predicted", || {
            format!("Cursor::new over {range:#x?}: {got:?}, the model expects {expected:?}")
        })?;
        let mut c = match pt.cursor_mut(&range) {
            Ok(c) => {
                ck.expect(expected.is_none(), "cursor creation as predicted", || {
                    format!("CursorMut::new over {range:#x?} succeeded, the model expects {expected:?}")
                })?;
                c
            }
            Err(e) => {
                return ck
                    .expect(Some(e.clone()) == expected, "cursor creation as predicted", || {
                        format!("CursorMut::new over {range:#x?}: {e:?}, the model expects {expected:?}")
                    })
                    .map(|()| Vec::new());
            }
        };
        let limit = 1usize.checked_shl(L::Format::PA_BITS).unwrap_or(usize::MAX);
        let (space, foreign) = (self.space, self.foreign);
        let model = &mut self.pt_model;
        let (refs, touched) = (&mut self.refs, &mut self.touched);
        let mut add_ref = |pa: Paddr, n: i64| {
            let count = refs.entry(pa).or_default();
            *count = count.checked_add_signed(n).expect("the model counts no fewer references than it holds");
            if *count == 0 {
                refs.remove(&pa);
            }
            touched.push(pa);
        };
        let mut ran = Vec::new();
        let mut frags: Vec<PageTableFrag<L::Format>> = Vec::new();
        let mut takens: Vec<TakenRange<L::Format>> = Vec::new();
        let mut va = range.start;
        loop {
            ck.expect(c.virt_addr() == va, "the cursor's address", || {
                format!("the cursor is at {:#x}, the model at {va:#x}", c.virt_addr())
            })?;
            let view = super::SessionView { range: range.clone(), va, model, held: self.held.len() };
            let Some(op) = next(&view) else { break };
            ran.push(op.clone());
            match op {
                CursorOp::Jump(to) => {
                    let ok = to % PAGE_SIZE == 0 && range.start <= to && to <= range.end;
                    let got = c.jump(to).map_err(|e| (e.va, e.range));
                    ck.expect(
                        got.is_ok() == ok && got.as_ref().err().is_none_or(|e| *e == (to, range.clone())),
                        "jump as predicted",
                        || format!("jump to {to:#x} in {range:#x?}: {got:x?}"),
                    )?;
                    if ok {
                        va = to;
                    }
                }
                CursorOp::Map { item, prop } => {
                    let scarce = space.phys_stats().free_pages < super::SLACK_PAGES;
                    let (item, is_foreign) = match item {
                        Item::Fresh => match kvirt::frame::FrameAllocOptions::new_in(space).alloc_frame() {
                            Ok(f) => {
                                self.bytes.remove(&f.paddr());
                                (MappedItem::Tracked(f.into_dyn(), prop), false)
                            }
                            Err(e) => {
                                let free = space.phys_stats().free_pages;
                                ck.expect(free == 0, "a single frame fails only with no free page", || {
                                    format!("alloc_frame failed ({e:?}) with {free} free pages")
                                })?;
                                continue;
                            }
                        },
                        Item::Held(i) => {
                            if self.held.is_empty() {
                                continue;
                            }
                            (
                                MappedItem::Tracked(self.held[i % self.held.len()].clone().into_dyn(), prop),
                                false,
                            )
                        }
                        Item::Foreign { pa, level } => {
                            let f = foreign.map(|s| kvirt::frame::FrameAllocOptions::new_in(s).alloc_frame());
                            match f {
                                Some(Ok(f)) => {
                                    self.foreign_frames.push(f.clone());
                                    (MappedItem::Tracked(f.into_dyn(), prop), true)
                                }
                                _ => (MappedItem::Untracked(pa, level, prop), false),
                            }
                        }
                        Item::Untracked { pa, level } => (MappedItem::Untracked(pa, level, prop), false),
                    };
                    let (pa, level, tracked) = match &item {
                        MappedItem::Tracked(f, _) => (f.paddr(), 1, true),
                        MappedItem::Untracked(pa, level, _) => (*pa, *level, false),
                    };
                    let predicted = if is_foreign {
                        Err(MapErrorKind::ForeignFrame)
                    } else if !(1..=L::Format::HIGHEST_LEAF_LEVEL).contains(&level) {
                        Err(MapErrorKind::UnsupportedLevel)
                    } else {
                        let size = page_size::<L::Format>(level);
                        if va >= range.end || size > range.end - va {
                            Err(MapErrorKind::OutOfRange)
                        } else if va % size != 0 || pa % size != 0 {
                            Err(MapErrorKind::Misaligned)
                        } else if pa.checked_add(size).is_none_or(|end| end > limit) {
                            Err(MapErrorKind::PaddrTooLarge)
                        } else if model.first_intersecting(va, va + size).is_some() {
                            Err(MapErrorKind::AlreadyMapped)
                        } else {
                            Ok(size)
                        }
                    };
                    match (c.try_map(item).map_err(|e| e.kind), predicted) {
                        (Ok(()), Ok(size)) => {
                            let prop = effective_property::<L::Format>(prop);
                            model.map.insert(va, Leaf { pa, size, prop, tracked });
                            if tracked {
                                add_ref(pa, 1);
                            }
                            va += size;
                        }
                        (Err(MapErrorKind::OutOfMemory), Ok(_)) => {
                            ck.expect(scarce, "out of memory only when memory is short", || {
                                format!("try_map at {va:#x} ran out of memory")
                            })?;
                        }
                        (got, predicted) => {
                            ck.expect(got.is_err() && got.err() == predicted.err(), "pt map agrees with the model", || {
                                format!("try_map at {va:#x}, level {level}: got {got:?}, the model predicts {predicted:?}")
                            })?;
                        }
                    }
                }
                CursorOp::Take { len, all } | CursorOp::Protect { len, all, .. } => {
                    let how = match op {
                        CursorOp::Protect { how, .. } => Some(how),
                        _ => None,
                    };
                    let valid = len % PAGE_SIZE == 0 && len <= range.end - va;
                    if !valid {
                        let msg = panic::catch(|| match how {
                            Some(how) => drop(c.protect_next(len, &mut |p: &mut PageProperty| how.apply(p))),
                            None => drop(c.take_next(len)),
                        });
                        ck.expect(
                            matches!(&msg, Err(m) if m.contains("page aligned") || m.contains("reaches past")),
                            "a search past the cursor's range panics",
                            || format!("a search of {len:#x} from {va:#x} in {range:#x?}: {msg:?}"),
                        )?;
                        continue;
                    }
                    let end = va + len;
                    loop {
                        let saved = model.clone();
                        let scarce = space.phys_stats().free_pages < super::SLACK_PAGES;
                        let done = match how {
                            Some(how) => {
                                let (predicted, next) = model.protect_next_with(va, end, |p| {
                                    how.apply(p);
                                    *p = effective_property::<L::Format>(*p);
                                });
                                let got =
                                    c.try_protect_next(end - va, &mut |p: &mut PageProperty| how.apply(p));
                                match got {
                                    Ok(got) => {
                                        ck.expect(got == predicted, "pt protect agrees with the model", || {
                                            format!("protect_next from {va:#x} to {end:#x}: got {got:x?}, the model predicts {predicted:x?}")
                                        })?;
                                        va = next;
                                        got.is_none()
                                    }
                                    Err(_) => {
                                        *model = saved;
                                        va = c.virt_addr();
                                        refused_split(ck, model, va, scarce)?;
                                        true
                                    }
                                }
                            }
                            None => {
                                let (predicted, next) = model.take_next(va, end);
                                match c.try_take_next(end - va) {
                                    Ok(got) => {
                                        let taken = got.as_ref().map(taken_of::<L::Format>);
                                        ck.expect(taken == predicted, "pt take agrees with the model", || {
                                            format!("take_next from {va:#x} to {end:#x}: got {taken:x?}, the model predicts {predicted:x?}")
                                        })?;
                                        let gone = |r: Range<Vaddr>| {
                                            saved.map.range(r).filter(|(_, l)| l.tracked).map(|(_, l)| l.pa)
                                        };
                                        let gone: Vec<Paddr> = match &taken {
                                            Some(Taken::Leaf(va, l)) => gone(*va..*va + l.size).collect(),
                                            Some(Taken::SubTree { va, len, .. }) => {
                                                gone(*va..*va + len).collect()
                                            }
                                            None => Vec::new(),
                                        };
                                        for pa in gone {
                                            add_ref(pa, -1);
                                        }
                                        frags.extend(got);
                                        va = next;
                                        taken.is_none()
                                    }
                                    Err(_) => {
                                        *model = saved;
                                        va = c.virt_addr();
                                        refused_split(ck, model, va, scarce)?;
                                        true
                                    }
                                }
                            }
                        };
                        if done || !all {
                            break;
                        }
                    }
                }
                CursorOp::TakeAll { len } => {
                    let valid = len % PAGE_SIZE == 0 && len <= range.end - va;
                    if !valid {
                        let msg = panic::catch(|| drop(c.take_all(len)));
                        ck.expect(
                            matches!(&msg, Err(m) if m.contains("page aligned") || m.contains("reaches past")),
                            "a search past the cursor's range panics",
                            || format!("take_all of {len:#x} from {va:#x} in {range:#x?}: {msg:?}"),
                        )?;
                        continue;
                    }
                    let scarce = space.phys_stats().free_pages < super::SLACK_PAGES;
                    let end = va + len;
                    let mut taken = TakenRange::new();
                    let got = c.try_take_all(len, &mut taken);
                    // Everything before where the cursor stopped was taken:
                    // the whole search, or up to the huge page it could not
                    // split.
                    let stop = c.virt_addr();
                    let took = model.take_all(va..stop, &mut |pa| add_ref(pa, -1));
                    check_taken(ck, &taken, &took, &(va..end))?;
                    va = stop;
                    match got {
                        Ok(()) => ck.expect(stop == end, "take_all ends at the end of its search", || {
                            format!("take_all of {len:#x} stopped at {stop:#x}, not {end:#x}")
                        })?,
                        Err(_) => refused_split(ck, model, va, scarce)?,
                    }
                    takens.push(taken);
                }
                CursorOp::Query => {
                    let got = c
                        .query()
                        .map(|(r, item)| (r, item.map(|i| leaf_of::<L::Format>(&i))))
                        .map_err(|e| (e.va, e.range));
                    check_query(ck, model, &range, va, got)?;
                }
                CursorOp::FindNext(len) => {
                    let valid = len % PAGE_SIZE == 0 && len <= range.end - va;
                    if !valid {
                        let msg = panic::catch(|| c.find_next(len));
                        ck.expect(
                            matches!(&msg, Err(m) if m.contains("page aligned") || m.contains("reaches past")),
                            "a search past the cursor's range panics",
                            || format!("find_next of {len:#x} from {va:#x} in {range:#x?}: {msg:?}"),
                        )?;
                        continue;
                    }
                    let predicted = model.find_next(va, va + len);
                    let got = c.find_next(len);
                    ck.expect(got == predicted, "pt find_next agrees with the model", || {
                        format!("find_next({len:#x}) from {va:#x}: got {got:x?}, the model predicts {predicted:x?}")
                    })?;
                    va = predicted.unwrap_or(va + len);
                }
            }
        }
        drop(c);
        if !frags.is_empty() || takens.iter().any(|t| !t.is_empty()) {
            space.platform().flush_tlb(TlbFlushOp::Range(range.clone()), TlbScope::AllCpus);
        }
        drop(frags);
        drop(takens);
        self.check_pt_session(&range, nodes_before, model_nodes_before)?;
        Ok(ran)
    }

    /// After a session over `range`: the leaves the table shows there equal
    /// the model's, and page-table pages changed as the model's nodes did.
    pub(super) fn check_pt_session(
        &self,
        range: &Range<Vaddr>,
        nodes_before: usize,
        model_nodes_before: usize,
    ) -> Outcome {
        let pt = self.pt.as_ref().expect("the page table lives until `finish`");
        let view =
            spec::view_of(&mut pt.cursor(range).map_err(|e| self.fail("pt cursor", format!("{e:?}")))?);
        let mut model = spec::PageTableView::new();
        if let Some((s, _)) = self.pt_model.first_intersecting(range.start, range.end) {
            for (&va, l) in self.pt_model.map.range(s..range.end) {
                model.insert(va, l.to_spec_in::<L::Format>(va));
            }
        }
        self.expect(view == model, "refinement: the user page table equals the model", || {
            crate::view::describe_diff(&view, &model)
        })?;
        self.space.synchronize();
        let now = self.space.phys_stats().page_table_pages;
        let (got, want) = (
            now as isize - nodes_before as isize,
            self.pt_model.nodes() as isize - model_nodes_before as isize,
        );
        self.expect(got == want, "page-table pages follow the model's nodes", || {
            format!(
                "page-table pages changed by {got} in calls over {range:#x?}, the model's nodes by {want}"
            )
        })
    }
}

/// Checks what a `take_all` over `search` (a cursor's, or
/// `try_take_range`'s) put in `taken` against what the model took there
/// ([`PtModel::take_all`](crate::pt::PtModel::take_all)): as many mappings, and a range to flush that covers
/// every span taken, inside the search.
pub(super) fn check_taken<F: PagingFormat>(
    ck: Checker<'_>,
    taken: &TakenRange<F>,
    (mappings, spans): &(usize, Vec<Range<Vaddr>>),
    search: &Range<Vaddr>,
) -> Outcome {
    ck.expect(taken.num_mappings() == *mappings, "pt take_all agrees with the model", || {
        format!("take_all in {search:#x?}: took {} mappings, the model {mappings}", taken.num_mappings())
    })?;
    let covered = match taken.va_range() {
        None => spans.is_empty(),
        Some(cover) => {
            search.start <= cover.start
                && cover.end <= search.end
                && spans.iter().all(|s| cover.start <= s.start && s.end <= cover.end)
        }
    };
    ck.expect(covered, "take_all's range covers what it took, inside its search", || {
        format!("take_all in {search:#x?} covers {:x?}, took {spans:x?}", taken.va_range())
    })
}

/// A fragment as the model has it.
pub(super) fn taken_of<F: PagingFormat>(frag: &PageTableFrag<F>) -> Taken {
    match frag {
        PageTableFrag::Mapped { va, item } => {
            let leaf = match item {
                MappedItem::Tracked(f, p) => Leaf { pa: f.paddr(), size: PAGE_SIZE, prop: *p, tracked: true },
                MappedItem::Untracked(pa, l, p) => {
                    Leaf { pa: *pa, size: page_size::<F>(*l), prop: *p, tracked: false }
                }
            };
            Taken::Leaf(*va, leaf)
        }
        PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
            Taken::SubTree { va: *va, len: *len, num_frames: *num_frames }
        }
    }
}

/// After a `try_take_next` or `try_protect_next` that ran out of memory
/// (the model is back as it was): memory must be short, and the cursor, at
/// `va`, must stand in a huge page it had to split.
pub(super) fn refused_split<F: PagingFormat>(
    ck: Checker<'_>,
    model: &PtModel<F>,
    va: Vaddr,
    scarce: bool,
) -> Outcome {
    let huge = model.map.range(..=va).next_back().filter(|(start, leaf)| va < *start + leaf.size);
    ck.expect(
        scarce && huge.is_some_and(|(_, leaf)| leaf.size > PAGE_SIZE),
        "out of memory only for a split, when memory is short",
        || format!("out of memory at {va:#x} (memory short: {scarce}), huge page there: {huge:x?}"),
    )
}
