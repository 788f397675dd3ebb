//! The model's own tests: a tour of every kind of operation passes on both
//! layouts, a wrong model or a leak is a typed failure (not a panic), and a
//! session decoded as it goes sees where the cursor is.

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::{KernelSpace, TinyLayout, X86_64Layout};
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
