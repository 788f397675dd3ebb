//! The model's own tests: a tour of every kind of operation passes on both
//! layouts, a wrong model or a leak is a typed failure (not a panic), a
//! session decoded as it goes sees where the cursor is, and single pages
//! mapped and taken without a cursor go through each case they tell apart.

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::{
    Aarch64Layout, KernelLayout, KernelSpace, Sv39Layout, Sv48Layout, TinyLayout, X86_64Layout,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::sim::MachineConfig;
use kvirt::PAGE_SIZE;
use kvirt_model::{
    run_sequence, Checks, CursorOp, Data, FramePick, Frames, Item, Model, ModelFault, Offset, Op, PaChoice,
    Protect, QueryAt, Setup, SplitAt,
};

const P: usize = PAGE_SIZE;

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// Every kind of operation, with sizes that fit the tiny layout too.
fn tour() -> Vec<Op> {
    vec![
        Op::Alloc { frames: 3 },
        Op::CreateTracked {
            frames: Frames::Picks(vec![FramePick::Held(0), FramePick::Fresh, FramePick::Foreign]),
            size: 4 * P,
            offset: 0,
            keep: false,
            prop: rw(),
        },
        Op::CreateTracked {
            frames: Frames::Picks(vec![FramePick::Held(0), FramePick::Fresh]),
            size: 3 * P,
            offset: P,
            keep: true,
            prop: rw(),
        },
        Op::Stage { pages: 2 },
        Op::CreateTracked { frames: Frames::Staged, size: 2 * P, offset: 0, keep: false, prop: rw() },
        Op::CreateUntracked { pa: PaChoice::Abs(4 * P..9 * P), size: 5 * P, offset: 0, prop: rw() },
        Op::CreateUntracked {
            pa: PaChoice::Device { offset: 0, len: 4 * P },
            size: 4 * P,
            offset: 0,
            prop: rw(),
        },
        Op::CreateUntracked { pa: PaChoice::Held { which: 1, len: P }, size: P, offset: 0, prop: rw() },
        Op::Write { area: 2, offset: Offset::Wrap { offset: P - 3, extra: 0 }, len: 10, data: Data::Seed(3) },
        Op::Read { area: 2, offset: Offset::Abs(P - 5), len: 20 },
        Op::Query { area: 0, at: QueryAt::Page { page: 1, byte: 7 } },
        Op::Query { area: 1, at: QueryAt::Addr(0) },
        Op::Split { area: 3, at: SplitAt::Inside { at: 0, misalign: 0 }, fallible: false },
        Op::Split { area: 0, at: SplitAt::Offset(P + 1), fallible: true },
        Op::Split { area: 0, at: SplitAt::Offset(0), fallible: false },
        Op::Hog { pages: 5 },
        Op::Hog { pages: 0 },
        Op::PtMap { page: 5, level: 1, tracked: true },
        Op::PtMap { page: 8, level: 2, tracked: false },
        Op::PtProtect { page: 8, pages: 1 },
        Op::PtUnmap { page: 9, pages: 2 },
        Op::PtQuery { page: 5 },
        Op::PtMapFrame { page: 6, misalign: 0 },
        Op::PtTakePage { page: 8, misalign: 0 },
        Op::PtTakePage { page: 6, misalign: 0 },
        Op::PtTakeRange { page: 4, pages: 6 },
        Op::PtSession {
            range: 0..16 * P,
            ops: vec![
                CursorOp::Jump(3 * P),
                CursorOp::Map { item: Item::Held(0), prop: rw() },
                CursorOp::Query,
                CursorOp::FindNext(13 * P),
                CursorOp::Take { len: 3 * P, all: true },
                CursorOp::Protect { len: P, how: Protect::ReadOnly, all: false },
                CursorOp::Take { len: P + 1, all: false },
            ],
        },
        Op::Drop { area: 1 },
        Op::DropHeld { which: 0 },
        Op::DropHog { which: 0 },
    ]
}

#[test]
fn a_tour_of_every_operation_passes_on_both_layouts() {
    let setup = Setup { foreign_ram_size: Some(4 << 20), ..Setup::new(16 << 20) };
    let checks = run_sequence::<X86_64Layout>(&tour(), &setup, None).unwrap_or_else(|f| panic!("{f}"));
    assert!(checks > 1000, "only {checks} checks");
    let setup = Setup { foreign_ram_size: Some(4 << 20), ..Setup::new(4 << 20) };
    let mut states = Vec::new();
    run_sequence::<TinyLayout>(&tour(), &setup, Some(&mut |h| states.push(h)))
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(states.len(), tour().len());
    assert_ne!(states.first(), states.last(), "the tour changes the state");
}

#[test]
fn a_wrong_model_is_a_failure_of_the_step_that_shows_it() {
    let setup = Setup { fault: Some(ModelFault::TrackedViewOffByOne), ..Setup::new(16 << 20) };
    let ops = [
        Op::Alloc { frames: 1 },
        Op::CreateTracked { frames: Frames::Fresh(1), size: 2 * P, offset: 0, keep: false, prop: rw() },
    ];
    let f = run_sequence::<X86_64Layout>(&ops, &setup, None).expect_err("the planted fault is found");
    assert_eq!((f.step, f.check), (1, "refinement: kernel_view equals the model"), "{f}");
}

#[test]
fn a_frame_taken_behind_the_models_back_is_a_leak() {
    let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
    let mut model = Model::new(&space, None);
    model.step(&Op::Alloc { frames: 2 }).expect("two frames");
    model.check(Checks::Full).expect("the model holds them");
    let stray = FrameAllocOptions::new_in(&space).alloc_frame().expect("a frame");
    let f = model.check(Checks::Light).expect_err("a data page the model does not know");
    assert_eq!(f.check, "data pages in use = live frames");
    let f = model.finish(Checks::Light).expect_err("the stray frame is still in use");
    assert_eq!(f.check, "no leak at the end");
    drop(stray);
}

#[test]
fn a_session_decoded_as_it_goes_sees_the_cursor() {
    let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
    let mut model = Model::new(&space, None);
    let mut seen = Vec::new();
    let mut plan =
        vec![CursorOp::Map { item: Item::Untracked { pa: 1 << 32, level: 2 }, prop: rw() }, CursorOp::Query];
    plan.reverse();
    let ran = model
        .step_session(2 << 20..8 << 20, &mut |view| {
            seen.push((view.va, view.model.map.len()));
            plan.pop()
        })
        .expect("a valid session");
    assert_eq!(ran.len(), 2);
    assert_eq!(seen, [(2 << 20, 0), (4 << 20, 1), (4 << 20, 1)], "the cursor moves past the 2 MiB page");
    model.check(Checks::Full).expect("the model follows the table");
    model.finish(Checks::Full).expect("nothing leaked");
}

/// Single pages and ranges without a cursor (`PageTable::try_map_frame`,
/// `try_take_page`, `try_take_range`) through each case they tell apart, on a layout whose
/// level-2 pages hold `huge` 4 KiB pages: every step must give the result
/// the model predicts (`Model::step`), pass every check, and leave the
/// table as asserted here.
fn single_pages<L: KernelLayout>(huge: usize) {
    let space = KernelSpace::<L>::hosted_with_layout(MachineConfig::new(16 << 20));
    let mut model = Model::new(&space, None);
    let table_pages = || {
        space.synchronize();
        space.phys_stats().page_table_pages
    };
    let empty = table_pages();
    let step = |model: &mut Model<'_, L>, op: Op| {
        model.step(&op).unwrap_or_else(|f| panic!("{op}: {f}"));
        model.check(Checks::Full).unwrap_or_else(|f| panic!("after {op}: {f}"));
    };
    let leaves = |model: &Model<'_, L>| -> Vec<(usize, usize, bool)> {
        model.pt_model().map.iter().map(|(&va, l)| (va / P, l.size / P, l.tracked)).collect()
    };
    let (a, b) = (huge + 1, huge + 2);

    // Onto an absent page (no leaf node yet: through a cursor): mapped,
    // with the nodes down to a leaf.
    step(&mut model, Op::PtMapFrame { page: a, misalign: 0 });
    assert_eq!(leaves(&model), [(a, 1, true)]);
    assert!(table_pages() > empty, "nodes were made for the page");
    let pa = model.pt_model().map[&(a * P)].pa;
    // Onto the present page: refused, the new frame handed back and freed
    // (the checks count it), the old one still mapped.
    step(&mut model, Op::PtMapFrame { page: a, misalign: 0 });
    assert_eq!(leaves(&model), [(a, 1, true)]);
    assert_eq!(model.pt_model().map[&(a * P)].pa, pa, "the first frame stays");
    // A second page of the same leaf node (locked alone, no cursor).
    step(&mut model, Op::PtMapFrame { page: b, misalign: 0 });
    assert_eq!(leaves(&model), [(a, 1, true), (b, 1, true)]);
    // Take a present page: the leaf node keeps the other one.
    let with_two = table_pages();
    step(&mut model, Op::PtTakePage { page: a, misalign: 0 });
    assert_eq!(leaves(&model), [(b, 1, true)]);
    assert_eq!(table_pages(), with_two, "the leaf node stays");
    // Take an absent page: nothing.
    step(&mut model, Op::PtTakePage { page: a, misalign: 0 });
    assert_eq!(leaves(&model), [(b, 1, true)]);
    // Take the last page of its leaf node: the emptied nodes are reclaimed.
    step(&mut model, Op::PtTakePage { page: b, misalign: 0 });
    assert_eq!(leaves(&model), []);
    assert_eq!(table_pages(), empty, "every emptied node is reclaimed");

    // A huge page (through a cursor); a page inside it is mapped already.
    let h = 2 * huge;
    step(&mut model, Op::PtMap { page: h, level: 2, tracked: false });
    assert_eq!(leaves(&model), [(h, huge, false)]);
    step(&mut model, Op::PtMapFrame { page: h + 3, misalign: 0 });
    assert_eq!(leaves(&model), [(h, huge, false)]);
    // Taking a page inside it splits it and takes that piece alone.
    step(&mut model, Op::PtTakePage { page: h + 3, misalign: 0 });
    let rest = leaves(&model);
    assert_eq!(rest.len(), huge - 1);
    assert!(rest.iter().all(|&(page, size, tracked)| size == 1 && !tracked && page != h + 3));
    // Its neighbour's leaf node now exists: taken there without a cursor.
    step(&mut model, Op::PtTakePage { page: h + 2, misalign: 0 });
    assert_eq!(leaves(&model).len(), huge - 2);

    // A range inside that leaf node (without a cursor), and one across the
    // end of the split page into the next 2 MiB, where nothing is mapped
    // (through a cursor): every page in them taken.
    for (page, pages) in [(h, 2), (h + huge - 1, 2)] {
        let before = leaves(&model);
        step(&mut model, Op::PtTakeRange { page, pages });
        let kept: Vec<_> = before.into_iter().filter(|&(p, ..)| !(page..page + pages).contains(&p)).collect();
        assert_eq!(leaves(&model), kept, "{pages} pages from {page}");
    }
    // An empty range, and one beyond the table: typed errors.
    step(&mut model, Op::PtTakeRange { page: h, pages: 0 });
    step(&mut model, Op::PtTakeRange { page: 1 << 40, pages: 1 });
    // With no memory left, a range that cuts a huge page stops there:
    // before taking anything where it cuts the page's start, after taking
    // what lies before the page where it cuts its end.
    let g = 3 * huge;
    step(&mut model, Op::PtMap { page: g, level: 2, tracked: false });
    step(&mut model, Op::PtMapFrame { page: g - 1, misalign: 0 });
    let mut hogs = 0;
    while space.phys_stats().free_pages > 0 {
        let free = space.phys_stats().free_pages;
        let mut pages = free;
        while space.phys_stats().free_pages == free {
            step(&mut model, Op::Hog { pages });
            pages = pages.div_ceil(2);
        }
        hogs += 1;
    }
    let huge_page = (g, huge, false);
    step(&mut model, Op::PtTakeRange { page: g + 1, pages: 2 });
    assert!(leaves(&model).contains(&huge_page) && leaves(&model).contains(&(g - 1, 1, true)));
    step(&mut model, Op::PtTakeRange { page: g - 1, pages: 3 });
    assert!(leaves(&model).contains(&huge_page) && !leaves(&model).contains(&(g - 1, 1, true)));
    for which in (0..hogs).rev() {
        step(&mut model, Op::DropHog { which });
    }

    // Misaligned, the last page of the address space, beyond the table:
    // typed errors, nothing changed.
    let before = (leaves(&model), table_pages());
    for (page, misalign) in
        [(h, 8), (h + 3, P - 1), (usize::MAX / P, 0), (1 << 40, 0), (usize::MAX / P, P - 1)]
    {
        step(&mut model, Op::PtMapFrame { page, misalign });
        step(&mut model, Op::PtTakePage { page, misalign });
        assert_eq!((leaves(&model), table_pages()), before, "page {page:#x} + {misalign:#x}");
    }
    model.finish(Checks::Full).expect("nothing leaked");
}

#[test]
fn single_pages_without_a_cursor_are_predicted_on_every_layout() {
    single_pages::<TinyLayout>(4);
    single_pages::<X86_64Layout>(512);
    single_pages::<Sv39Layout>(512);
    single_pages::<Sv48Layout>(512);
    single_pages::<Aarch64Layout>(512);
}
