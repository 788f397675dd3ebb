//! Model-based property test of the page table.
//!
//! Random sequences of map (4 KiB tracked or untracked, 2 MiB and 1 GiB
//! untracked), take_next, take_all, protect_next, query and find_next, and
//! the cursor-less `PageTable::try_map_frame`, `try_take_page` and
//! `try_take_range` (a cursor's `take_all` where it needs one), run inside a
//! 4 GiB window of the kernel half, on addresses drawn from a few slots per
//! level so that operations collide and huge pages get split. A
//! `BTreeMap<Vaddr, Leaf>` models the leaf mappings. Every operation's
//! result is predicted by the model (the exact fragment `take_next` returns,
//! the range `protect_next` changes, where `find_next` stops, what `query`
//! reports, including the size of an absent slot), and after every step:
//!
//! * the page table's view, walked with a read-only cursor (`find_next` +
//!   `query`), equals the model exactly;
//! * the number of page-table nodes equals what the model needs (the root,
//!   the 256 kernel L3 nodes, one L2 node per 1 GiB holding smaller pages,
//!   one L1 node per 2 MiB holding 4 KiB pages): emptied nodes are reclaimed;
//! * each tracked frame's reference count is 1 (the test's handle) plus the
//!   number of entries mapping it.
//!
//! At the end everything is unmapped and the counters of the space return
//! to their starting values.

use std::collections::BTreeMap;
use std::ops::Range;

use kvirt::frame::{AnyFrameMeta, Frame, FrameAllocOptions};
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{
    KernelPtConfig, MapErrorKind, MappedItem, MappedItemRef, PageTable, PageTableFrag, TakenRange,
};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};
use proptest::prelude::*;

use kvirt_model::{Leaf, PtModel, Taken, SZ_1G, SZ_2M};

const SZ_4K: usize = PAGE_SIZE;
/// The window: 4 GiB of VMALLOC starting at a 1 GiB boundary.
const WIN: Vaddr = 0xffff_c000_4000_0000;
const WIN_END: Vaddr = WIN + 4 * SZ_1G;
/// Untracked physical memory, above the test machine's RAM.
const UPA: Paddr = 0x1_0000_0000;
const NR_FRAMES: usize = 4;
/// Page-table nodes of an empty kernel table: the root and 256 L3 nodes.
const EMPTY_TABLE_NODES: usize = 1 + 256;

fn props() -> [PageProperty; 4] {
    [
        PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback),
        PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback),
        PageProperty::new_kernel(PageFlags::RX, CachePolicy::Uncacheable),
        PageProperty::new_kernel(PageFlags::RW | PageFlags::DIRTY, CachePolicy::WriteCombining),
    ]
}

/// A 4 KiB-aligned address built from slots: a 1 GiB index, a 2 MiB index
/// inside it and a 4 KiB index inside that. Few distinct values per level
/// make operations collide.
#[derive(Clone, Copy, Debug)]
struct Slot {
    gig: usize,
    mid: usize,
    small: usize,
}

impl Slot {
    fn va(self) -> Vaddr {
        WIN + self.gig * SZ_1G + self.mid * SZ_2M + self.small * SZ_4K
    }
}

fn slot() -> impl Strategy<Value = Slot> {
    let idx = || prop::sample::select(vec![0usize, 1, 255, 511]);
    (0..4usize, idx(), idx()).prop_map(|(gig, mid, small)| Slot { gig, mid, small })
}

/// A sub-range of the window between two slot boundaries (the window end
/// included), never empty.
fn sub_range() -> impl Strategy<Value = Range<Vaddr>> {
    let point = prop_oneof![4 => slot().prop_map(Slot::va), 1 => Just(WIN_END)];
    (point.clone(), point).prop_map(|(a, b)| {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        if lo == hi {
            if hi == WIN_END {
                lo - SZ_4K..hi
            } else {
                lo..hi + SZ_4K
            }
        } else {
            lo..hi
        }
    })
}

#[derive(Clone, Debug)]
enum MapKind {
    Tracked(usize),
    Untracked4K(usize),
    Untracked2M(usize),
    Untracked1G(usize),
}

#[derive(Clone, Debug)]
enum Op {
    /// Map at the slot (aligned down to the page size); `wide` uses a cursor
    /// over the whole window instead of just the page.
    Map { at: Slot, kind: MapKind, prop: usize, wide: bool },
    /// Up to `steps` calls of `take_next` over all of a cursor's range.
    Take { range: Range<Vaddr>, steps: usize },
    /// `skip` calls of `take_next`, then `take_all` over the rest of the
    /// cursor's range.
    TakeAll { range: Range<Vaddr>, skip: usize },
    /// Up to `steps` calls of `protect_next` setting `prop`.
    Protect { range: Range<Vaddr>, steps: usize, prop: usize },
    /// `query` at the slot, through a cursor over `range` if it holds the
    /// slot, or over the slot's page.
    Query { at: Slot, range: Range<Vaddr> },
    /// `find_next` over a cursor's range from a slot inside it (or from the
    /// start), then `query` where it stopped.
    FindNext { range: Range<Vaddr>, from: Slot },
    /// `PageTable::try_map_frame` of frame `frame` at the slot: a cursor's
    /// `try_map_frames` of it over the page.
    MapFrame { at: Slot, frame: usize, prop: usize },
    /// `PageTable::try_take_page` at the slot: a cursor's
    /// `take_next(PAGE_SIZE)` over the page.
    TakePage { at: Slot },
    /// `PageTable::try_take_range` of the range: a cursor's `take_all`
    /// over it.
    TakeRange { range: Range<Vaddr> },
}

/// A range of `1..=8` pages from a slot, cut at the end of its leaf
/// node's span: inside one leaf node, where `try_take_range` needs no
/// cursor if the node exists.
fn leaf_range() -> impl Strategy<Value = Range<Vaddr>> {
    (slot(), 1..=8usize).prop_map(|(at, pages)| {
        let start = at.va();
        start..(start + pages * SZ_4K).min(align_down(start, SZ_2M) + SZ_2M)
    })
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        3 => (0..NR_FRAMES).prop_map(MapKind::Tracked),
        3 => (0..8usize).prop_map(MapKind::Untracked4K),
        3 => (0..8usize).prop_map(MapKind::Untracked2M),
        1 => (0..8usize).prop_map(MapKind::Untracked1G),
    ];
    let steps = prop::sample::select(vec![1usize, 2, 3, usize::MAX]);
    prop_oneof![
        10 => (slot(), kind, 0..4usize, any::<bool>()).prop_map(|(at, kind, prop, wide)| Op::Map { at, kind, prop, wide }),
        4 => (sub_range(), steps.clone()).prop_map(|(range, steps)| Op::Take { range, steps }),
        3 => (sub_range(), 0..3usize).prop_map(|(range, skip)| Op::TakeAll { range, skip }),
        3 => (sub_range(), steps, 0..4usize).prop_map(|(range, steps, prop)| Op::Protect { range, steps, prop }),
        2 => (slot(), sub_range()).prop_map(|(at, range)| Op::Query { at, range }),
        2 => (sub_range(), slot()).prop_map(|(range, from)| Op::FindNext { range, from }),
        5 => (slot(), 0..NR_FRAMES, 0..4usize).prop_map(|(at, frame, prop)| Op::MapFrame { at, frame, prop }),
        4 => slot().prop_map(|at| Op::TakePage { at }),
        3 => prop_oneof![leaf_range(), sub_range()].prop_map(|range| Op::TakeRange { range }),
    ]
}

fn align_down(va: usize, align: usize) -> usize {
    va & !(align - 1)
}

struct World {
    space: KernelSpace,
    /// Nodes of the space's own kernel page table (linear mapping etc.).
    space_nodes: usize,
    pt: PageTable<KernelPtConfig>,
    frames: Vec<Frame<dyn AnyFrameMeta>>,
    model: PtModel,
}

impl World {
    fn leaf_of(&self, item: &MappedItemRef<'_>) -> Leaf {
        let (tracked, size) = match item {
            MappedItemRef::Tracked(f, _) => {
                self.assert_ours(f.paddr());
                (true, SZ_4K)
            }
            MappedItemRef::Untracked(_, level, _) => (false, SZ_4K << (9 * (*level as usize - 1))),
        };
        Leaf { pa: item.paddr(), size, prop: item.prop(), tracked }
    }

    fn assert_ours(&self, pa: Paddr) {
        assert!(
            self.frames.iter().any(|f| f.paddr() == pa),
            "a tracked entry maps {pa:#x}, not one of our frames"
        );
    }

    /// What the model's `take_next` says of a fragment (whose drop
    /// releases what it took).
    fn taken_of(&self, frag: PageTableFrag) -> Taken {
        match frag {
            PageTableFrag::Mapped { va, item } => {
                let m = match &item {
                    MappedItem::Tracked(f, p) => {
                        self.assert_ours(f.paddr());
                        Leaf { pa: f.paddr(), size: SZ_4K, prop: *p, tracked: true }
                    }
                    MappedItem::Untracked(pa, l, p) => {
                        Leaf { pa: *pa, size: SZ_4K << (9 * (*l as usize - 1)), prop: *p, tracked: false }
                    }
                };
                Taken::Leaf(va, m)
            }
            PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
                Taken::SubTree { va, len, num_frames }
            }
        }
    }

    fn item(&self, kind: &MapKind, prop: PageProperty) -> (MappedItem, Leaf) {
        match *kind {
            MapKind::Tracked(i) => {
                let m = Leaf { pa: self.frames[i].paddr(), size: SZ_4K, prop, tracked: true };
                (MappedItem::Tracked(self.frames[i].clone(), prop), m)
            }
            MapKind::Untracked4K(k) => {
                let m = Leaf { pa: UPA + k * SZ_4K, size: SZ_4K, prop, tracked: false };
                (MappedItem::Untracked(m.pa, 1, prop), m)
            }
            MapKind::Untracked2M(k) => {
                let m = Leaf { pa: UPA + k * SZ_2M, size: SZ_2M, prop, tracked: false };
                (MappedItem::Untracked(m.pa, 2, prop), m)
            }
            MapKind::Untracked1G(k) => {
                let m = Leaf { pa: UPA + k * SZ_1G, size: SZ_1G, prop, tracked: false };
                (MappedItem::Untracked(m.pa, 3, prop), m)
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        let props = props();
        match op {
            Op::Map { at, kind, prop, wide } => {
                let (item, m) = self.item(kind, props[*prop]);
                let va = align_down(at.va(), m.size);
                let range = if *wide { WIN..WIN_END } else { va..va + m.size };
                let mut c = self.pt.cursor_mut(&range).unwrap();
                c.jump(va).unwrap();
                let free = self.model.is_free(va..va + m.size);
                match c.try_map(item) {
                    Ok(()) => {
                        assert!(
                            free,
                            "mapped {m:x?} at {va:#x} over {:x?}",
                            self.model.first_intersecting(va, va + m.size)
                        );
                        assert_eq!(c.virt_addr(), va + m.size);
                        self.model.map.insert(va, m);
                    }
                    Err(e) => {
                        assert!(!free, "map of {m:x?} at {va:#x} failed with {:?}", e.kind);
                        assert_eq!(e.kind, MapErrorKind::AlreadyMapped);
                        assert_eq!(c.virt_addr(), va);
                        let back = match &e.item {
                            MappedItem::Tracked(f, p) => (f.paddr(), SZ_4K, *p),
                            MappedItem::Untracked(pa, l, p) => (*pa, SZ_4K << (9 * (*l as usize - 1)), *p),
                        };
                        assert_eq!(back, (m.pa, m.size, m.prop), "the item comes back unchanged");
                    }
                }
            }
            Op::Take { range, steps } => {
                let mut c = self.pt.cursor_mut(range).unwrap();
                for _ in 0..*steps {
                    let va = c.virt_addr();
                    let (expected, next) = self.model.take_next(va, range.end);
                    let got = c.take_next(range.end - va);
                    assert_eq!(c.virt_addr(), next, "cursor after take_next from {va:#x}");
                    let got = got.map(|frag| self.taken_of(frag));
                    assert_eq!(got, expected, "take_next from {va:#x} to {:#x}", range.end);
                    if got.is_none() {
                        break;
                    }
                }
            }
            Op::TakeAll { range, skip } => {
                let mut c = self.pt.cursor_mut(range).unwrap();
                for _ in 0..*skip {
                    let va = c.virt_addr();
                    let (expected, next) = self.model.take_next(va, range.end);
                    let got = c.take_next(range.end - va);
                    assert_eq!(got.is_some(), expected.is_some(), "take_next from {va:#x}");
                    assert_eq!(c.virt_addr(), next, "cursor after take_next from {va:#x}");
                }
                let from = c.virt_addr();
                let expected = self.model.take_all(from..range.end, &mut |_| {});
                let taken = c.take_all(range.end - from);
                assert_eq!(c.virt_addr(), range.end, "cursor after take_all from {from:#x}");
                check_taken(&taken, &expected, &(from..range.end));
                // Dropped here: the reference counts checked after the step
                // show each tracked frame got its reference back.
            }
            Op::Protect { range, steps, prop } => {
                let new = props[*prop];
                let mut c = self.pt.cursor_mut(range).unwrap();
                for _ in 0..*steps {
                    let va = c.virt_addr();
                    let (expected, next) = self.model.protect_next(va, range.end, new);
                    let got = c.protect_next(range.end - va, &mut |p: &mut PageProperty| *p = new);
                    assert_eq!(got, expected, "protect_next from {va:#x} to {:#x}", range.end);
                    assert_eq!(c.virt_addr(), next);
                    if got.is_none() {
                        break;
                    }
                }
            }
            Op::Query { at, range } => {
                let va = at.va();
                let range = if range.contains(&va) { range.clone() } else { va..va + SZ_4K };
                let mut c = self.pt.cursor(&range).unwrap();
                c.jump(va).unwrap();
                let (r, item) = c.query().unwrap();
                let got = (r, item.as_ref().map(|i| self.leaf_of(i)));
                assert_eq!(got, self.model.query(va), "query at {va:#x}");
            }
            Op::MapFrame { at, frame, prop } => {
                let (va, frame, prop) = (at.va(), &self.frames[*frame], props[*prop]);
                let m = Leaf { pa: frame.paddr(), size: SZ_4K, prop, tracked: true };
                let free = self.model.is_free(va..va + SZ_4K);
                match self.pt.try_map_frame(va, frame.clone(), prop) {
                    Ok(()) => {
                        assert!(free, "mapped a frame at {va:#x} over {:x?}", self.model.covering(va));
                        self.model.map.insert(va, m);
                    }
                    Err(e) => {
                        assert!(!free, "try_map_frame at {va:#x} failed with {:?}", e.kind);
                        assert_eq!(e.kind, MapErrorKind::AlreadyMapped);
                        match e.item {
                            MappedItem::Tracked(f, p) => {
                                assert_eq!((&f, p), (frame, prop), "the frame comes back")
                            }
                            other => panic!("{other:?} came back for a frame"),
                        }
                    }
                }
            }
            Op::TakeRange { range } => {
                let expected = self.model.take_all(range.clone(), &mut |_| {});
                let mut taken = TakenRange::new();
                self.pt.try_take_range(range, &mut taken).expect("a range of the window, memory to split");
                check_taken(&taken, &expected, range);
                // What the flush covers, as documented: all of a range
                // inside one leaf node's span (taken in place, or after a
                // huge page around it was split); a cursor's from the first
                // mapping it took.
                let in_one_leaf = range.len() < SZ_2M && range.start / SZ_2M == (range.end - 1) / SZ_2M;
                if let (Some(cover), Some(first)) =
                    (taken.va_range(), expected.1.iter().map(|s| s.start).min())
                {
                    let start = if in_one_leaf { range.start } else { first };
                    assert_eq!(cover.start, start, "try_take_range of {range:#x?} covers {cover:#x?}");
                    if in_one_leaf {
                        assert_eq!(cover.end, range.end, "try_take_range of {range:#x?} covers {cover:#x?}");
                    }
                }
            }
            Op::TakePage { at } => {
                let va = at.va();
                let (expected, _) = self.model.take_next(va, va + SZ_4K);
                let got = self.pt.try_take_page(va).expect("a page of the window, memory to split");
                assert_eq!(got.map(|frag| self.taken_of(frag)), expected, "try_take_page at {va:#x}");
            }
            Op::FindNext { range, from } => {
                let from = if range.contains(&from.va()) { from.va() } else { range.start };
                let mut c = self.pt.cursor(range).unwrap();
                c.jump(from).unwrap();
                let found = c.find_next(range.end - from);
                assert_eq!(found, self.model.find_next(from, range.end), "find_next from {from:#x}");
                assert_eq!(c.virt_addr(), found.unwrap_or(range.end));
                if let Some(va) = found {
                    let (r, item) = c.query().unwrap();
                    let got = (r, item.as_ref().map(|i| self.leaf_of(i)));
                    assert_eq!(got, self.model.query(va));
                }
            }
        }
    }

    /// The page table's leaves in the window, walked with a read-only
    /// cursor.
    fn view(&self) -> BTreeMap<Vaddr, Leaf> {
        let mut c = self.pt.cursor(&(WIN..WIN_END)).unwrap();
        let mut out = BTreeMap::new();
        while let Some(va) = c.find_next(WIN_END - c.virt_addr()) {
            let (r, item) = c.query().unwrap();
            assert_eq!(r.start, va, "a walk from a leaf's end finds the next leaf's start");
            let m = self.leaf_of(item.as_ref().expect("found a mapping"));
            assert_eq!(r.len(), m.size);
            out.insert(va, m);
            c.jump(r.end).unwrap();
        }
        out
    }

    fn check(&self) {
        assert_eq!(self.view(), self.model.map, "page table view vs model");
        self.space.synchronize();
        assert_eq!(
            self.space.phys_stats().page_table_pages - self.space_nodes,
            EMPTY_TABLE_NODES + self.model.nodes(),
            "page-table nodes in use by the table under test"
        );
        for (i, f) in self.frames.iter().enumerate() {
            let entries = self.model.map.values().filter(|m| m.tracked && m.pa == f.paddr()).count();
            assert_eq!(
                f.reference_count(),
                1 + entries as u64,
                "frame {i}: our handle plus {entries} entries"
            );
        }
    }
}

/// Checks what a `take_all` over `search` took against the model's
/// prediction (`PtModel::take_all`): as many mappings, and a cover
/// inside the search that holds every span taken.
fn check_taken(taken: &TakenRange, (mappings, spans): &(usize, Vec<Range<Vaddr>>), search: &Range<Vaddr>) {
    assert_eq!(taken.num_mappings(), *mappings, "take_all of {search:#x?}");
    assert_eq!(taken.is_empty(), spans.is_empty());
    match taken.va_range() {
        None => assert!(spans.is_empty(), "take_all took {spans:#x?} but covers nothing"),
        Some(cover) => {
            assert!(search.start <= cover.start && cover.end <= search.end, "{cover:#x?} outside the search");
            for span in spans {
                assert!(cover.start <= span.start && span.end <= cover.end, "{span:#x?} not covered");
            }
        }
    }
}

fn run(ops: &[Op]) {
    let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20));
    let start = space.phys_stats();
    let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
    let frames: Vec<_> =
        (0..NR_FRAMES).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into_dyn()).collect();
    let mut world =
        World { pt, frames, model: PtModel::default(), space_nodes: start.page_table_pages, space };
    let baseline = world.space.phys_stats();
    assert_eq!(baseline.page_table_pages - start.page_table_pages, EMPTY_TABLE_NODES);
    for op in ops {
        world.apply(op);
        world.check();
    }
    // Unmap everything.
    world.apply(&Op::Take { range: WIN..WIN_END, steps: usize::MAX });
    assert!(world.model.map.is_empty());
    world.check();
    assert_eq!(world.space.phys_stats(), baseline, "nothing leaked");
    let World { space, pt, frames, .. } = world;
    drop(frames);
    drop(pt);
    space.synchronize();
    assert_eq!(space.phys_stats(), start);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn page_table_refines_the_model(ops in prop::collection::vec(op(), 1..64)) {
        run(&ops);
    }
}

/// A fixed sequence covering the interesting interactions, so they are
/// exercised on every run whatever the random cases draw.
#[test]
fn fixed_sequence_refines_the_model() {
    let s = |gig, mid, small| Slot { gig, mid, small };
    let ops = vec![
        Op::Map { at: s(0, 0, 0), kind: MapKind::Untracked1G(1), prop: 0, wide: false },
        Op::Map { at: s(1, 1, 0), kind: MapKind::Untracked2M(2), prop: 1, wide: true },
        Op::Map { at: s(1, 1, 1), kind: MapKind::Tracked(0), prop: 2, wide: false },
        Op::Map { at: s(1, 2, 1), kind: MapKind::Tracked(0), prop: 2, wide: false },
        Op::Map { at: s(2, 255, 511), kind: MapKind::Untracked4K(3), prop: 3, wide: true },
        Op::Protect { range: s(0, 1, 1).va()..s(0, 1, 2).va(), steps: usize::MAX, prop: 3 },
        Op::Query { at: s(0, 1, 1), range: WIN..WIN_END },
        Op::Query { at: s(2, 255, 0), range: WIN..WIN_END },
        Op::Query { at: s(2, 1, 0), range: WIN..WIN_END },
        Op::Query { at: s(3, 1, 0), range: WIN..WIN_END },
        Op::FindNext { range: s(0, 255, 0).va()..WIN_END, from: s(1, 0, 0) },
        Op::Take { range: s(0, 0, 1).va()..s(1, 2, 0).va(), steps: 3 },
        Op::Take { range: s(0, 0, 0).va()..WIN_END, steps: 2 },
        Op::Map { at: s(0, 0, 0), kind: MapKind::Untracked2M(0), prop: 0, wide: false },
        Op::Take { range: s(2, 0, 0).va()..s(3, 0, 0).va(), steps: usize::MAX },
        Op::Map { at: s(2, 0, 0), kind: MapKind::Untracked1G(0), prop: 0, wide: false },
        Op::Map { at: s(3, 1, 1), kind: MapKind::Tracked(1), prop: 0, wide: false },
        Op::Map { at: s(3, 1, 255), kind: MapKind::Tracked(2), prop: 1, wide: false },
        Op::Map { at: s(3, 255, 0), kind: MapKind::Untracked2M(1), prop: 2, wide: true },
        // A 1 GiB page straddling the start (split), a leaf node emptied
        // in one pass, and a 2 MiB page taken whole.
        Op::TakeAll { range: s(2, 255, 1).va()..s(3, 511, 0).va(), skip: 0 },
        Op::Map { at: s(1, 1, 1), kind: MapKind::Tracked(3), prop: 0, wide: false },
        Op::TakeAll { range: WIN..WIN_END, skip: 1 },
        // Without a cursor: the first page of a leaf node made by a cursor
        // (which try_map_frame falls back to), the second in place, one
        // refused; a page taken in place, the last one with the node
        // reclaimed, one absent, and one inside a 2 MiB page (split).
        Op::MapFrame { at: s(0, 1, 0), frame: 0, prop: 0 },
        Op::MapFrame { at: s(0, 1, 1), frame: 1, prop: 1 },
        Op::MapFrame { at: s(0, 1, 1), frame: 2, prop: 2 },
        Op::TakePage { at: s(0, 1, 0) },
        Op::TakePage { at: s(0, 1, 0) },
        Op::TakePage { at: s(0, 1, 1) },
        Op::Map { at: s(1, 255, 0), kind: MapKind::Untracked2M(3), prop: 3, wide: false },
        Op::TakePage { at: s(1, 255, 255) },
        Op::MapFrame { at: s(1, 255, 255), frame: 3, prop: 0 },
        // Ranges inside one leaf node, without a cursor: part of it, then
        // the rest with the node reclaimed; one inside a 2 MiB page
        // (through a cursor, which splits it), and one across leaf nodes.
        Op::MapFrame { at: s(0, 1, 1), frame: 0, prop: 0 },
        Op::MapFrame { at: s(0, 1, 2), frame: 1, prop: 1 },
        Op::MapFrame { at: s(0, 1, 4), frame: 2, prop: 2 },
        Op::TakeRange { range: s(0, 1, 2).va()..s(0, 1, 4).va() },
        Op::TakeRange { range: s(0, 1, 0).va()..s(0, 1, 255).va() },
        Op::Map { at: s(2, 1, 0), kind: MapKind::Untracked2M(1), prop: 0, wide: false },
        Op::TakeRange { range: s(2, 1, 1).va()..s(2, 1, 3).va() },
        Op::TakeRange { range: s(1, 255, 1).va()..s(2, 1, 255).va() },
    ];
    run(&ops);
}
