//! Model-based test of kernel virtual areas (docs/DESIGN.md section 6): proptest
//! draws sequences of area operations and `kvirt-model` runs them.
//!
//! Each sequence runs on an isolated 16 MiB kernel space that holds six
//! frames for the whole run, next to a 4 MiB space whose frames must be
//! rejected as foreign. The operations create tracked areas (from the held
//! frames, fresh ones and foreign ones) and untracked ones (reserved low
//! memory, the device window with and without room for 2 MiB pages, held
//! frames, reversed, misaligned and too-high ranges), with sizes and
//! offsets around what they map, sometimes invalid; split at valid and bad
//! offsets through `split` and `try_split`; query; read and write bytes;
//! drop; and on a user page table of the space, map and take single pages
//! without a cursor, next to 2 MiB pages mapped and unmapped through one.
//! After every step [`kvirt_model::Model::check`] runs every check of
//! the model:
//!
//! * every invariant: each area's `inv()` and the space's `inv()`;
//! * refinement: the abstract page-table view of VMALLOC equals the model,
//!   and `query` agrees with both (and with the specification's ensures);
//! * reference counts: a tracked frame's count is the handles the test
//!   holds plus the entries that map it, and a frame no one references is
//!   free;
//! * the registry lists exactly the model's areas, with guards after them;
//! * a rejected call is predicted by the spec's panic condition, and by the
//!   model's own, independent statement of the preconditions, and changes
//!   nothing.
//!
//! At the end everything is dropped and the frame allocator, the page-table
//! frame count and VMALLOC are back where they started: nothing leaked.

use kvirt::kspace::{Aarch64Layout, KernelLayout, Sv39Layout, Sv48Layout, X86_64Layout};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use kvirt::PAGE_SIZE;
use kvirt_model::{run_sequence, Data, FramePick, Frames, Offset, Op, PaChoice, QueryAt, Setup, SplitAt};
use proptest::prelude::*;

const P: usize = PAGE_SIZE;
const SIZE_2M: usize = 2 << 20;
/// Frames the test holds for the whole run.
const POOL: usize = 6;

/// The properties the test maps with; the last one is user accessible.
fn props() -> [PageProperty; 7] {
    let k = PageProperty::new_kernel;
    [
        k(PageFlags::RW, CachePolicy::Writeback),
        k(PageFlags::R, CachePolicy::Writeback),
        k(PageFlags::RWX, CachePolicy::Uncacheable),
        k(PageFlags::RW, CachePolicy::WriteCombining),
        k(PageFlags::R | PageFlags::ACCESSED | PageFlags::DIRTY, CachePolicy::Writethrough),
        PageProperty {
            priv_flags: PrivilegedPageFlags::empty(),
            ..k(PageFlags::empty(), CachePolicy::WriteProtected)
        },
        PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback),
    ]
}

/// Where the size and offset of a new area come from: pages around what is
/// mapped, sometimes made invalid.
#[derive(Clone, Debug)]
struct Shape {
    /// Offset of the mapping, in pages (or in 2 MiB units plus the physical
    /// range's shift, for device ranges).
    offset: usize,
    /// Pages after the mapping: below 0 the mapping does not fit.
    extra: i8,
    /// Bytes added to the area size (0 most of the time).
    size_misalign: usize,
    /// Bytes added to the offset (0 most of the time).
    offset_misalign: usize,
    /// Which of [`props`].
    prop: usize,
}

impl Shape {
    /// The area size and map offset for a mapping of `len` bytes.
    fn sizes(&self, len: usize) -> (usize, usize) {
        let offset = self.offset * P;
        let size = (offset + len).saturating_add_signed(self.extra as isize * P as isize);
        (size + self.size_misalign, offset + self.offset_misalign)
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    let misalign = prop_oneof![8 => Just(0usize), 1 => 1..P];
    let extra = prop_oneof![1 => -2..0i8, 6 => 0..3i8];
    (0..4usize, extra, misalign.clone(), misalign, prop_oneof![10 => 0..6usize, 1 => Just(6usize)]).prop_map(
        |(offset, extra, size_misalign, offset_misalign, prop)| Shape {
            offset,
            extra,
            size_misalign,
            offset_misalign,
            prop,
        },
    )
}

fn frame_pick() -> impl Strategy<Value = FramePick> {
    prop_oneof![12 => (0..POOL).prop_map(FramePick::Held), 4 => Just(FramePick::Fresh), 1 => Just(FramePick::Foreign)]
}

fn tracked() -> impl Strategy<Value = Op> {
    (proptest::collection::vec(frame_pick(), 0..6), shape()).prop_map(|(picks, shape)| {
        let (size, offset) = shape.sizes(picks.len() * P);
        Op::CreateTracked {
            frames: Frames::Picks(picks),
            size,
            offset,
            keep: false,
            prop: props()[shape.prop],
        }
    })
}

/// A physical range and its shape (device ranges move the offset so that
/// it agrees with the physical start modulo 2 MiB most of the time, so
/// that huge pages can be used).
fn untracked() -> impl Strategy<Value = Op> {
    #[allow(clippy::reversed_empty_ranges)]
    let pa = prop_oneof![
        1 => Just((PaChoice::Abs(0..0), None)),
        // Reserved low memory; may run past it (rejected).
        4 => (0..256usize, 1..9usize).prop_map(|(start, pages)| (PaChoice::Abs(start * P..(start + pages) * P), None)),
        // The device window, possibly with 2 MiB pieces.
        4 => (0..3usize, prop_oneof![3 => Just(0usize), 1 => 1..3usize], 0..3usize, 0..3usize).prop_map(
            |(start_2m, shift, len_2m, pages)| {
                let pa = PaChoice::Device { offset: start_2m * SIZE_2M + shift * P, len: len_2m * SIZE_2M + pages * P };
                (pa, Some(shift))
            }
        ),
        1 => (1..256usize).prop_map(|start| (PaChoice::Abs(start * P..(start - 1) * P), None)),
        1 => (0..250usize, 1..P).prop_map(|(start, by)| (PaChoice::Abs(start * P + by..(start + 2) * P), None)),
        // A held frame: tracked, rejected.
        1 => (0..POOL).prop_map(|which| (PaChoice::Held { which, len: P }, None)),
        // Straddling 2^52.
        1 => Just((PaChoice::FormatLimit { below: P, len: 2 * P }, None)),
    ];
    (pa, shape()).prop_map(|((pa, shift), mut shape)| {
        let len = match &pa {
            PaChoice::Abs(r) => r.end.saturating_sub(r.start),
            PaChoice::Device { len, .. } | PaChoice::FormatLimit { len, .. } | PaChoice::Held { len, .. } => {
                *len
            }
        };
        if let Some(shift) = shift {
            shape.offset = if shape.offset < 3 { shape.offset * SIZE_2M / P + shift } else { 1 };
        }
        let (size, offset) = shape.sizes(len);
        Op::CreateUntracked { pa, size, offset, prop: props()[shape.prop] }
    })
}

/// An operation on the model's user page table: single pages mapped and
/// taken without a cursor (`PageTable::try_map_frame`, `try_take_page`) in
/// two 2 MiB slots, at the ends of their leaf nodes and next to them,
/// sometimes misaligned or outside the table; and 2 MiB pages of device
/// memory mapped over a slot and whole slots unmapped through a cursor, so
/// that the single pages meet huge pages to split and leaf nodes made by a
/// cursor.
fn pt_op() -> impl Strategy<Value = Op> {
    const HUGE: usize = SIZE_2M / P;
    let slot = (1..3usize).prop_map(|s| s * HUGE);
    let at = prop_oneof![
        14 => (slot.clone(), prop::sample::select(vec![0usize, 1, HUGE - 1])).prop_map(|(s, i)| (s + i, 0)),
        1 => (slot.clone(), 1..P).prop_map(|(s, misalign)| (s, misalign)),
        1 => prop::sample::select(vec![usize::MAX / P, 1 << 40]).prop_map(|page| (page, 0)),
    ];
    prop_oneof![
        4 => at.clone().prop_map(|(page, misalign)| Op::PtMapFrame { page, misalign }),
        4 => at.clone().prop_map(|(page, misalign)| Op::PtTakePage { page, misalign }),
        2 => (at, prop::sample::select(vec![1usize, 2, 3, HUGE])).prop_map(|((page, _), pages)| Op::PtTakeRange { page, pages }),
        1 => slot.clone().prop_map(|page| Op::PtMap { page, level: 2, tracked: false }),
        1 => slot.prop_map(|page| Op::PtUnmap { page, pages: HUGE }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => tracked(),
        4 => untracked(),
        2 => (any::<usize>(), any::<usize>(), prop::bool::weighted(0.3), prop_oneof![6 => Just(0usize), 1 => 1..P], any::<bool>())
            .prop_map(|(area, at, raw, misalign, fallible)| {
                let at = if raw { SplitAt::Offset(at % 12 * P + misalign) } else { SplitAt::Inside { at, misalign } };
                Op::Split { area, at, fallible }
            }),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(area, at)| Op::Query { area, at: QueryAt::Offset(at) }),
        2 => (any::<usize>(), any::<usize>(), 0..3 * P, any::<u8>()).prop_map(|(area, at, len, byte)| Op::Write {
            area,
            offset: Offset::Wrap { offset: at, extra: 2 },
            len,
            data: Data::Ramp(byte)
        }),
        2 => (any::<usize>(), any::<usize>(), 0..3 * P)
            .prop_map(|(area, at, len)| Op::Read { area, offset: Offset::Wrap { offset: at, extra: 2 }, len }),
        3 => any::<usize>().prop_map(|area| Op::Drop { area }),
        3 => pt_op(),
    ]
}

/// Runs `ops` after taking the pool of held frames; the model's first
/// failure, if any.
fn run<L: KernelLayout>(ops: &[Op]) -> Result<(), String> {
    let all: Vec<Op> = std::iter::once(Op::Alloc { frames: POOL }).chain(ops.iter().cloned()).collect();
    let setup = Setup { foreign_ram_size: Some(4 << 20), ..Setup::new(16 << 20) };
    run_sequence::<L>(&all, &setup, None).map(drop).map_err(|f| {
        let listing: Vec<String> = all.iter().enumerate().map(|(i, op)| format!("  {i}: {op}")).collect();
        format!("{f}\n{}", listing.join("\n"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_area_operations_refine_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let result = run::<X86_64Layout>(&ops);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// The same random sequences on the other formats (fewer cases each: the
/// generic code is the same, the encodings and leaf sizes differ).
macro_rules! on_other_formats {
    ($($name:ident: $layout:ty,)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            $(
                #[test]
                fn $name(ops in proptest::collection::vec(op(), 1..40)) {
                    let result = run::<$layout>(&ops);
                    prop_assert!(result.is_ok(), "{}", result.unwrap_err());
                }
            )*
        }
    };
}

on_other_formats! {
    random_area_operations_refine_the_model_on_sv39: Sv39Layout,
    random_area_operations_refine_the_model_on_sv48: Sv48Layout,
    random_area_operations_refine_the_model_on_aarch64: Aarch64Layout,
}

/// A fixed sequence through the interesting paths, so that a plain run
/// always covers them whatever the random cases draw.
#[test]
fn a_fixed_sequence_refines_the_model_on_every_format() {
    let prop = |i: usize| props()[i];
    let wrap = |offset| Offset::Wrap { offset, extra: 2 };
    let ops = vec![
        // A held frame twice and a fresh one, one page in.
        Op::CreateTracked {
            frames: Frames::Picks(vec![FramePick::Held(0), FramePick::Fresh, FramePick::Held(0)]),
            size: 4 * P,
            offset: P,
            keep: false,
            prop: prop(0),
        },
        // Two 2 MiB pages and a 4 KiB one of the device window.
        Op::CreateUntracked {
            pa: PaChoice::Device { offset: SIZE_2M, len: 2 * SIZE_2M + P },
            size: 3 * SIZE_2M + 2 * P,
            offset: SIZE_2M,
            prop: prop(2),
        },
        Op::CreateUntracked { pa: PaChoice::Abs(8 * P..12 * P), size: 6 * P, offset: 2 * P, prop: prop(0) },
        Op::Write { area: 2, offset: wrap(2 * P + 100), len: 5000, data: Data::Ramp(7) },
        Op::Read { area: 2, offset: wrap(2 * P), len: 3 * P },
        // Inside a 2 MiB page, then a query next to the cut.
        Op::Split { area: 1, at: SplitAt::Inside { at: 699, misalign: 0 }, fallible: false },
        Op::Query { area: 1, at: QueryAt::Offset(3 * P) },
        // A bad split panics and drops the area; a refused one hands it back.
        Op::Split { area: 0, at: SplitAt::Offset(2 * P + 1), fallible: true },
        Op::Split { area: 0, at: SplitAt::Offset(0), fallible: false },
        Op::Write { area: 0, offset: wrap(P - 3), len: 10, data: Data::Ramp(1) },
        // Too many frames, a held frame as untracked memory, a foreign frame.
        Op::CreateTracked {
            frames: Frames::Picks(vec![FramePick::Held(1)]),
            size: 0,
            offset: 0,
            keep: false,
            prop: prop(0),
        },
        Op::CreateUntracked { pa: PaChoice::Held { which: 2, len: P }, size: P, offset: 0, prop: prop(0) },
        Op::CreateTracked {
            frames: Frames::Picks(vec![FramePick::Held(3), FramePick::Foreign]),
            size: 2 * P,
            offset: 0,
            keep: false,
            prop: prop(0),
        },
        Op::Drop { area: 1 },
        Op::Drop { area: 0 },
        Op::Read { area: 0, offset: wrap(0), len: 10 },
        Op::Drop { area: 2 },
    ];
    for result in [
        run::<X86_64Layout>(&ops),
        run::<Sv39Layout>(&ops),
        run::<Sv48Layout>(&ops),
        run::<Aarch64Layout>(&ops),
    ] {
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }
}
