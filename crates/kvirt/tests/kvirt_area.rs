//! KVirtArea: the reference's behaviours, the cases where docs/DESIGN.md section 4
//! asks for better, and what the simulated machine sees, on the default space
//! and on isolated spaces.
//!
//! Tests that compare counters (free frames, page-table frames, VMALLOC, the
//! registry) run on an isolated space: other tests of this binary use the
//! default space at the same time.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use kvirt::frame::{AnyFrameMeta, Frame, FrameAllocOptions, PhysStats};
use kvirt::kspace::{
    paddr_to_vaddr, AreaAccessError, AreaInfo, AreaKind, KVirtArea, KVirtAreaError, KernelSpace,
    MappedItemRef, PurgeMode, PurgeStats, SplitError, VmallocStats, GUARD_SIZE, LINEAR_MAPPING_BASE_VADDR,
    VMALLOC_VADDR_RANGE,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::sim::{Access, FaultKind, Machine, MachineConfig, MemError};
use kvirt::spec::{self, kernel_view, mapping_at, Inv, PageTableView};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

mod support;

use support::hooked::{hooked_space, Hooks};
use support::memory::take_every_free_frame;

const P: usize = PAGE_SIZE;
const SIZE_2M: usize = 2 << 20;
const SIZE_1G: usize = 1 << 30;
/// The end of the reserved low memory of every simulated machine: RAM that
/// the frame allocator never hands out, so it may be mapped untracked.
const LOW_MEMORY_END: Paddr = 0x10_0000;

fn prop() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

fn user_prop() -> PageProperty {
    PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback)
}

fn small_space() -> KernelSpace {
    KernelSpace::new_hosted(MachineConfig::new(64 << 20))
}

/// CPU 0 of the machine under `space`, running the space's kernel table.
fn kernel_cpu(space: &KernelSpace) -> &kvirt::sim::Cpu {
    // SAFETY: the CPU runs the space's own kernel table, and the tests read
    // and write through it only what their areas map (frames they hold,
    // device memory, Reserved RAM), faults apart.
    let cpu = unsafe { space.machine() }.expect("a hosted space").cpu(0);
    cpu.set_root(space.kernel_root_paddr() as u64);
    cpu
}

/// The simulated device window of `space` (1 GiB, 1 GiB aligned, not RAM).
fn device_window(space: &KernelSpace) -> Range<Paddr> {
    let device = space.memory_map().iter().find(|r| r.kind == kvirt::platform::MemoryRegionKind::Device);
    device.expect("the hosted machine has a device window").range.clone()
}

/// Maps `pa` untracked in `space`.
fn untracked(
    space: &KernelSpace,
    area_size: usize,
    map_offset: usize,
    pa: Range<Paddr>,
    prop: PageProperty,
) -> Result<KVirtArea, KVirtAreaError> {
    // SAFETY: every test maps only the reserved low memory or the device
    // window of a simulated machine, which no Rust object owns.
    unsafe { space.try_map_untracked_frames(area_size, map_offset, pa, prop) }
}

/// Everything a rejected call must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    phys: PhysStats,
    vmalloc: VmallocStats,
    areas: Vec<AreaInfo>,
    vmalloc_view: PageTableView,
}

fn snapshot(space: &KernelSpace) -> Snapshot {
    space.synchronize();
    Snapshot {
        phys: space.phys_stats(),
        vmalloc: space.vmalloc_stats(),
        areas: space.areas(),
        vmalloc_view: kernel_view(space, &VMALLOC_VADDR_RANGE),
    }
}

/// The 4 KiB page at `va` of an untracked item that maps it.
fn untracked_page(item: &MappedItemRef<'_>, va: Vaddr) -> Paddr {
    let MappedItemRef::Untracked(pa, level, _) = item else { panic!("untracked expected, got {item:?}") };
    let size = P << (9 * (*level as usize - 1));
    pa + (va % size) / P * P
}

/// The upstream tests of `kspace/test.rs` (digest section 7), kept as they
/// were written against the reference.
mod reference {
    use super::*;

    #[test]
    fn kvirt_area_tracked_map_pages() {
        let frames = FrameAllocOptions::new().alloc_segment(2).unwrap();
        let start_pa = frames.paddr();
        let area = KVirtArea::map_frames(2 * PAGE_SIZE, 0, frames, prop());
        assert_eq!(area.size(), 2 * PAGE_SIZE);
        assert!(VMALLOC_VADDR_RANGE.start <= area.start() && area.end() <= VMALLOC_VADDR_RANGE.end);
        for i in 0..2 {
            let item = area.query(area.start() + i * PAGE_SIZE).expect("mapped");
            let MappedItemRef::Tracked(frame, p) = item else { panic!("tracked expected") };
            assert_eq!(frame.paddr(), start_pa + i * PAGE_SIZE);
            assert_eq!(p, prop());
        }
        assert!(area.inv());
    }

    #[test]
    fn kvirt_area_untracked_map_pages() {
        let space = small_space();
        // The first MiB is reserved on the simulated machine: not tracked.
        let pa = 0x8000..0xa000;
        let area = untracked(&space, 2 * PAGE_SIZE, 0, pa.clone(), prop()).unwrap();
        for i in 0..2 {
            let item = area.query(area.start() + i * PAGE_SIZE).unwrap();
            assert_eq!(item, MappedItemRef::Untracked(pa.start + i * PAGE_SIZE, 1, prop()));
        }
        assert!(area.inv());
        assert!(space.inv());
    }

    #[test]
    fn kvirt_area_tracked_drop() {
        let space = small_space();
        let before = (space.phys_stats(), space.vmalloc_stats());
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let keep = frame.clone();
        let area = space.try_map_frames(PAGE_SIZE, 0, [frame], prop()).unwrap();
        assert_eq!(keep.reference_count(), 2);
        let start = area.start();
        drop(area);
        space.synchronize();
        assert_eq!(keep.reference_count(), 1);
        drop(keep);
        space.synchronize();
        assert_eq!((space.phys_stats(), space.vmalloc_stats()), before);
        let fresh = untracked(&space, PAGE_SIZE, 0, 0..0, prop()).unwrap();
        assert_eq!(fresh.start(), start, "the freed range is reused");
        assert!(fresh.query(fresh.start()).is_none());
    }

    #[test]
    fn kvirt_area_untracked_drop() {
        let space = small_space();
        let area = untracked(&space, PAGE_SIZE, 0, 0..0, prop()).unwrap();
        assert!(area.query(area.start()).is_none());
        drop(area);
        assert!(space.areas().is_empty());
    }

    #[test]
    fn manual_paddr_to_vaddr() {
        assert_eq!(paddr_to_vaddr(0x1000), LINEAR_MAPPING_BASE_VADDR + 0x1000);
    }

    #[test]
    fn linear_mapping_covers_ram() {
        let space = small_space();
        let (pa, p) = space.kernel_translate(paddr_to_vaddr(0x12_3456)).unwrap();
        assert_eq!(pa, 0x12_3456);
        assert!(p.flags.contains(PageFlags::W));
    }
}

/// docs/DESIGN.md section 4: every invalid call is rejected before anything is
/// allocated, with the error naming the broken precondition, and the
/// executable spec's panic conditions say so too.
/// `try_map_frames` gathers a few frames without the heap and more in a
/// `Vec`, picked by what the iterator says of its length: either way, and
/// whatever the iterator says, the frames are mapped in order or refused.
mod frame_lists {
    use super::*;

    /// Yields `frames` while claiming it yields at most one.
    struct Understated(std::vec::IntoIter<Frame<()>>);

    impl Iterator for Understated {
        type Item = Frame<()>;
        fn next(&mut self) -> Option<Frame<()>> {
            self.0.next()
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (0, Some(1))
        }
    }

    fn alloc(space: &KernelSpace, n: usize) -> Vec<Frame<()>> {
        (0..n).map(|_| FrameAllocOptions::new_in(space).alloc_frame().unwrap()).collect()
    }

    fn assert_maps_in_order(area: &KVirtArea, pas: &[Paddr]) {
        for (i, &pa) in pas.iter().enumerate() {
            let Some(MappedItemRef::Tracked(frame, _)) = area.query(area.start() + i * P) else {
                panic!("page {i} is not a tracked frame")
            };
            assert_eq!(frame.paddr(), pa, "page {i}");
        }
        assert!(area.inv());
    }

    #[test]
    fn frames_are_mapped_in_order_whether_the_iterator_is_exact_unsized_or_lying() {
        let space = small_space();
        for n in [1, 4, 5, 16] {
            let frames = alloc(&space, n);
            let pas: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
            let exact = space.try_map_frames(n * P, 0, frames, prop()).unwrap();
            assert_maps_in_order(&exact, &pas);
            drop(exact);

            let frames = alloc(&space, n);
            let pas: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
            let unsized_ =
                space.try_map_frames(n * P, 0, frames.into_iter().filter(|_| true), prop()).unwrap();
            assert_maps_in_order(&unsized_, &pas);
            drop(unsized_);

            let frames = alloc(&space, n);
            let pas: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
            let lying = space.try_map_frames(n * P, 0, Understated(frames.into_iter()), prop()).unwrap();
            assert_maps_in_order(&lying, &pas);
        }
        assert!(space.inv());
    }

    #[test]
    fn a_foreign_frame_is_refused_among_few_frames_and_among_many() {
        let space = small_space();
        let other = small_space();
        let foreign = FrameAllocOptions::new_in(&other).alloc_frame().unwrap();
        let before = snapshot(&space);
        for n in [1, 7] {
            let mut frames = alloc(&space, n);
            frames.push(foreign.clone());
            let result = space.try_map_frames((n + 1) * P, 0, frames, prop()).map(drop);
            assert_eq!(result, Err(KVirtAreaError::ForeignFrame(foreign.paddr())), "{n} frames of ours");
            assert_eq!(snapshot(&space), before, "{n} frames of ours");
        }
        assert_eq!(foreign.reference_count(), 1);
    }
}

mod rejected {
    use super::*;

    /// One rejected call: what it returns, and whether the spec's panic
    /// condition (or, for exhaustion, `is_resource_error`) predicts it.
    struct Case {
        name: &'static str,
        result: Result<(), KVirtAreaError>,
        expected: fn(&KVirtAreaError) -> bool,
        predicted: bool,
    }

    fn tracked_case(
        space: &KernelSpace,
        name: &'static str,
        (area_size, map_offset): (usize, usize),
        frames: Vec<Frame<()>>,
        prop: PageProperty,
        expected: fn(&KVirtAreaError) -> bool,
    ) -> Case {
        let n = frames.len();
        let predicted = spec::map_frames_panic_condition(area_size, map_offset, n, &prop);
        let result = space.try_map_frames(area_size, map_offset, frames, prop).map(drop);
        let predicted = predicted || result.as_ref().is_err_and(spec::is_resource_error);
        Case { name, result, expected, predicted }
    }

    fn untracked_case(
        space: &KernelSpace,
        name: &'static str,
        (area_size, map_offset): (usize, usize),
        pa: Range<Paddr>,
        prop: PageProperty,
        expected: fn(&KVirtAreaError) -> bool,
    ) -> Case {
        let predicted = spec::map_untracked_frames_panic_condition(space, area_size, map_offset, &pa, &prop);
        let result = untracked(space, area_size, map_offset, pa, prop).map(drop);
        let predicted = predicted || result.as_ref().is_err_and(spec::is_resource_error);
        Case { name, result, expected, predicted }
    }

    fn check(space: &KernelSpace, before: &Snapshot, case: Case) {
        let Case { name, result, expected, predicted } = case;
        let err = result.expect_err(name);
        assert!(expected(&err), "{name}: unexpected error {err:?}");
        assert!(predicted, "{name}: the spec's panic condition does not predict {err:?}");
        assert!(!err.to_string().is_empty());
        assert_eq!(&snapshot(space), before, "{name}: the rejected call changed the space");
    }

    #[test]
    fn every_rejection_changes_nothing() {
        use KVirtAreaError as E;
        let space = small_space();
        let keep = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let other = small_space();
        let foreign = FrameAllocOptions::new_in(&other).alloc_frame().unwrap();
        let other_before = snapshot(&other);
        let before = snapshot(&space);
        let frames = |n: usize| keep.clone().into_iter().take(n).collect::<Vec<_>>();
        let top = usize::MAX & !(P - 1);
        let vmalloc_len = VMALLOC_VADDR_RANGE.len();
        let tracked_pa = keep.paddr()..keep.paddr() + P;
        let max_pa = space.max_paddr();
        // The metadata array is the first thing in usable RAM, right after
        // the reserved low memory.
        let meta = LOW_MEMORY_END;
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 0x2000..0x1000;
        let cases = [
            tracked_case(&space, "tracked: zero size", (0, 0), frames(4), prop(), |e| *e == E::ZeroSize),
            tracked_case(&space, "tracked: zero size, no frame", (0, 0), frames(0), prop(), |e| {
                *e == E::ZeroSize
            }),
            tracked_case(&space, "tracked: misaligned size", (P + 1, 0), frames(1), prop(), |e| {
                *e == E::MisalignedSize(P + 1)
            }),
            tracked_case(&space, "tracked: misaligned offset", (8 * P, 1), frames(1), prop(), |e| {
                *e == E::MisalignedOffset(1)
            }),
            tracked_case(&space, "tracked: offset at the end", (8 * P, 8 * P), frames(0), prop(), |e| {
                *e == E::OffsetOutOfArea { map_offset: 8 * P, area_size: 8 * P }
            }),
            tracked_case(&space, "tracked: offset past the end", (8 * P, 16 * P), frames(1), prop(), |e| {
                *e == E::OffsetOutOfArea { map_offset: 16 * P, area_size: 8 * P }
            }),
            tracked_case(&space, "tracked: too many frames", (4 * P, P), frames(4), prop(), |e| {
                *e == E::MappingExceedsArea { map_offset: P, len: 4 * P, area_size: 4 * P }
            }),
            tracked_case(
                &space,
                "tracked: offset plus length overflows",
                (top, top - P),
                frames(2),
                prop(),
                |e| matches!(e, E::MappingExceedsArea { .. }),
            ),
            tracked_case(&space, "tracked: user accessible", (8 * P, 0), frames(4), user_prop(), |e| {
                *e == E::UserAccessible
            }),
            tracked_case(
                &space,
                "tracked: user and global",
                (8 * P, 0),
                frames(1),
                PageProperty {
                    priv_flags: PrivilegedPageFlags::USER | PrivilegedPageFlags::GLOBAL,
                    ..prop()
                },
                |e| *e == E::UserAccessible,
            ),
            tracked_case(&space, "tracked: VMALLOC exhausted", (vmalloc_len, 0), frames(1), prop(), |e| {
                *e == E::VmallocExhausted(VMALLOC_VADDR_RANGE.len())
            }),
            untracked_case(&space, "untracked: reversed", (P, 0), reversed.clone(), prop(), |e| {
                matches!(e, E::ReversedPaddrRange(_))
            }),
            untracked_case(&space, "untracked: reversed, zero size", (0, 0), reversed, prop(), |e| {
                matches!(e, E::ReversedPaddrRange(_))
            }),
            untracked_case(&space, "untracked: zero size", (0, 0), 0..0, prop(), |e| *e == E::ZeroSize),
            untracked_case(&space, "untracked: misaligned size", (P + 8, 0), 0..0, prop(), |e| {
                *e == E::MisalignedSize(P + 8)
            }),
            untracked_case(&space, "untracked: misaligned offset", (4 * P, 8), 0..P, prop(), |e| {
                *e == E::MisalignedOffset(8)
            }),
            untracked_case(
                &space,
                "untracked: offset at the end, empty",
                (4 * P, 4 * P),
                0..0,
                prop(),
                |e| *e == E::OffsetOutOfArea { map_offset: 4 * P, area_size: 4 * P },
            ),
            untracked_case(&space, "untracked: offset far out", (2 * P, top), 0..P, prop(), |e| {
                matches!(e, E::OffsetOutOfArea { .. })
            }),
            untracked_case(&space, "untracked: misaligned start", (4 * P, 0), 0x1800..0x3000, prop(), |e| {
                matches!(e, E::MisalignedPaddr(_))
            }),
            untracked_case(&space, "untracked: misaligned end", (4 * P, 0), 0x1000..0x1800, prop(), |e| {
                matches!(e, E::MisalignedPaddr(_))
            }),
            untracked_case(&space, "untracked: exceeds the area", (2 * P, P), 0x1000..0x3000, prop(), |e| {
                *e == E::MappingExceedsArea { map_offset: P, len: 2 * P, area_size: 2 * P }
            }),
            untracked_case(
                &space,
                "untracked: offset plus length overflows",
                (top, 2 * P),
                0..top,
                prop(),
                |e| matches!(e, E::MappingExceedsArea { .. }),
            ),
            untracked_case(&space, "untracked: beyond 2^52", (P, 0), 1 << 52..(1 << 52) + P, prop(), |e| {
                matches!(e, E::PaddrTooLarge(_))
            }),
            untracked_case(
                &space,
                "untracked: straddles 2^52",
                (2 * P, 0),
                (1 << 52) - P..(1 << 52) + P,
                prop(),
                |e| matches!(e, E::PaddrTooLarge(_)),
            ),
            untracked_case(&space, "untracked: an allocated frame", (P, 0), tracked_pa, prop(), |e| {
                matches!(e, E::TrackedPaddr(_))
            }),
            untracked_case(&space, "untracked: a free frame", (P, 0), max_pa - P..max_pa, prop(), |e| {
                matches!(e, E::TrackedPaddr(_))
            }),
            untracked_case(
                &space,
                "untracked: from low memory into the metadata array",
                (2 * P, 0),
                LOW_MEMORY_END - P..LOW_MEMORY_END + P,
                prop(),
                |e| matches!(e, E::TrackedPaddr(_)),
            ),
            untracked_case(
                &space,
                "untracked: the frame metadata array",
                (P, 0),
                meta..meta + P,
                prop(),
                |e| matches!(e, E::TrackedPaddr(_)),
            ),
            untracked_case(&space, "untracked: all of RAM", (SIZE_1G, 0), 0..SIZE_1G, prop(), |e| {
                matches!(e, E::TrackedPaddr(_))
            }),
            untracked_case(&space, "untracked: user accessible", (P, 0), 0..P, user_prop(), |e| {
                *e == E::UserAccessible
            }),
            untracked_case(&space, "untracked: VMALLOC exhausted", (vmalloc_len, 0), 0..0, prop(), |e| {
                *e == E::VmallocExhausted(VMALLOC_VADDR_RANGE.len())
            }),
            untracked_case(
                &space,
                "untracked: VMALLOC exhausted, huge aligned",
                (vmalloc_len, 0),
                device_window(&space),
                prop(),
                |e| matches!(e, E::VmallocExhausted(_)),
            ),
        ];
        for case in cases {
            check(&space, &before, case);
        }
        for (i, frame) in keep.clone().into_iter().enumerate() {
            assert_eq!(frame.reference_count(), 2, "frame {i}: the rejected calls kept a reference");
        }

        // A frame of another space is rejected, and is handed back to its
        // own allocator only when its last handle goes.
        let foreign_pa = foreign.paddr();
        assert!(spec::map_frames_foreign_frame_condition(&space, std::slice::from_ref(&foreign)));
        assert!(!spec::map_frames_foreign_frame_condition(&other, std::slice::from_ref(&foreign)));
        assert!(!spec::map_frames_foreign_frame_condition(&space, &frames(4)));
        let result = space.try_map_frames(P, 0, [foreign.clone()], prop()).map(drop);
        assert_eq!(result, Err(E::ForeignFrame(foreign_pa)));
        assert_eq!(snapshot(&space), before);
        assert_eq!(foreign.reference_count(), 1);
        assert_eq!(snapshot(&other), other_before);
        let mixed = frames(2).into_iter().map(Frame::into_dyn).chain([foreign.clone().into_dyn()]);
        let result = space.try_map_frames(4 * P, 0, mixed, prop()).map(drop);
        assert_eq!(result, Err(E::ForeignFrame(foreign_pa)));
        assert_eq!(snapshot(&space), before);
        assert!(space.inv());
        drop(foreign);
    }

    #[test]
    fn running_out_of_page_table_memory_changes_nothing() {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        let hoard = take_every_free_frame(&space);
        assert_eq!(space.phys_stats().free_pages, 0);
        let before = snapshot(&space);
        let result = space.try_map_frames(2 * P, P, [hoard[0].clone()], prop()).map(drop);
        assert_eq!(result, Err(KVirtAreaError::OutOfMemory));
        assert_eq!(snapshot(&space), before);
        assert_eq!(hoard[0].reference_count(), 1);
        let result = untracked(&space, P, 0, 0..P, prop()).map(drop);
        assert_eq!(result, Err(KVirtAreaError::OutOfMemory));
        assert_eq!(snapshot(&space), before);
        // A 1 GiB page goes straight into a top-level node, which the kernel
        // table always has: no memory needed.
        let huge = untracked(&space, SIZE_1G, 0, device_window(&space), prop()).unwrap();
        assert!(huge.query(huge.start()).is_some());
        drop(huge);
        assert_eq!(snapshot(&space), before);
        assert!(space.inv());
    }

    #[test]
    fn running_out_of_page_table_memory_in_lazy_mode_leaves_nothing_queued() {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
        let hoard = take_every_free_frame(&space);
        let (vmalloc, phys) = (space.vmalloc_stats(), space.phys_stats());
        // Read at once, without the purge that `snapshot` runs first.
        let result = space.try_map_frames(2 * P, P, [hoard[0].clone()], prop()).map(drop);
        assert_eq!(result, Err(KVirtAreaError::OutOfMemory));
        assert_eq!(space.vmalloc_stats(), vmalloc, "the refused area's range is free again");
        assert_eq!(space.phys_stats(), phys);
        assert_eq!(hoard[0].reference_count(), 1, "the refused call's reference is gone");
        assert!(space.inv());
    }

    #[test]
    fn a_rejected_untracked_range_stays_unmapped() {
        let space = small_space();
        let keep = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        keep.write_bytes(0, &[0x5a; 16]).unwrap();
        let r = untracked(&space, P, 0, keep.paddr()..keep.paddr() + P, prop());
        assert!(matches!(r, Err(KVirtAreaError::TrackedPaddr(_))));
        let mut back = [0; 16];
        keep.read_bytes(0, &mut back).unwrap();
        assert_eq!(back, [0x5a; 16]);
        assert!(kernel_view(&space, &VMALLOC_VADDR_RANGE).is_empty());
    }
}

/// The panicking constructors on the default space: one test per broken
/// precondition, each checking that the message names it.
mod panics {
    use super::*;

    fn frames(n: usize) -> Vec<Frame<()>> {
        (0..n).map(|_| FrameAllocOptions::new().alloc_frame().unwrap()).collect()
    }

    fn map_untracked(area_size: usize, map_offset: usize, pa: Range<Paddr>, prop: PageProperty) {
        // SAFETY: every call here panics before mapping anything.
        drop(unsafe { KVirtArea::map_untracked_frames(area_size, map_offset, pa, prop) });
    }

    #[allow(clippy::reversed_empty_ranges)]
    fn reversed() -> Range<Paddr> {
        0x2000..0x1000
    }

    macro_rules! panics {
        ($($name:ident, $expected:literal, $body:expr;)*) => {$(
            #[test]
            #[should_panic(expected = $expected)]
            fn $name() {
                $body;
            }
        )*};
    }

    const TOP: usize = usize::MAX & !(PAGE_SIZE - 1);

    /// Runs `f`, checks that it panics with exactly `message`, and panics
    /// with it again (for `should_panic`), for messages with a run-time
    /// physical address in them.
    fn panics_with(message: &str, f: impl FnOnce()) -> ! {
        let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("the call must panic");
        let got = payload.downcast_ref::<String>().map(String::as_str);
        assert_eq!(got, Some(message));
        std::panic::resume_unwind(payload)
    }

    // Each expected message is the whole panic message (or, where it holds a
    // run-time address, its start, and `panics_with` checks all of it): the
    // function, then the `KVirtAreaError` naming the precondition.
    panics! {
        map_frames_of_zero_size_panics, "KVirtArea::map_frames: the area size is zero",
            KVirtArea::map_frames(0, 0, frames(1), prop());
        map_frames_of_misaligned_size_panics,
            "KVirtArea::map_frames: the area size 0x1001 is not a multiple of PAGE_SIZE",
            KVirtArea::map_frames(P + 1, 0, frames(1), prop());
        map_frames_at_misaligned_offset_panics,
            "KVirtArea::map_frames: the map offset 0x10 is not aligned to PAGE_SIZE",
            KVirtArea::map_frames(2 * P, 0x10, frames(1), prop());
        map_frames_at_offset_equal_to_size_panics,
            "KVirtArea::map_frames: the map offset 0x2000 is not inside the area of 0x2000 bytes",
            KVirtArea::map_frames(2 * P, 2 * P, frames(0), prop());
        map_frames_at_offset_past_the_end_panics,
            "KVirtArea::map_frames: the map offset 0x3000 is not inside the area of 0x2000 bytes",
            KVirtArea::map_frames(2 * P, 3 * P, frames(1), prop());
        too_many_frames_panics,
            "KVirtArea::map_frames: the map offset 0x0 plus the 0x3000 bytes to map exceeds the area size 0x2000",
            KVirtArea::map_frames(2 * PAGE_SIZE, 0, frames(3), prop());
        map_frames_overflowing_offset_plus_length_panics,
            "KVirtArea::map_frames: the map offset 0xffffffffffffe000 plus the 0x2000 bytes to map exceeds \
             the area size 0xfffffffffffff000",
            KVirtArea::map_frames(TOP, TOP - P, frames(2), prop());
        map_frames_user_accessible_panics, "KVirtArea::map_frames: kernel virtual areas cannot be user accessible",
            KVirtArea::map_frames(P, 0, frames(1), user_prop());
        map_frames_of_a_foreign_frame_panics, "KVirtArea::map_frames: frame 0x", {
            let other = small_space();
            let frame = FrameAllocOptions::new_in(&other).alloc_frame().unwrap();
            let keep = frame.clone();
            let message = format!("KVirtArea::map_frames: frame {:#x} belongs to another kernel space", frame.paddr());
            panics_with(&message, || {
                let r = catch_unwind(AssertUnwindSafe(|| KVirtArea::map_frames(P, 0, [frame], prop())));
                // The frame handed in was released on the way out.
                assert_eq!(keep.reference_count(), 1);
                std::panic::resume_unwind(r.unwrap_err())
            })
        };
        map_frames_larger_than_vmalloc_panics,
            "KVirtArea::map_frames: VMALLOC has no free range of 0x200000000000 bytes",
            KVirtArea::map_frames(VMALLOC_VADDR_RANGE.len(), 0, frames(1), prop());
        map_untracked_reversed_panics,
            "KVirtArea::map_untracked_frames: the provided physical range 0x2000..0x1000 is reversed",
            map_untracked(P, 0, reversed(), prop());
        map_untracked_of_zero_size_panics, "KVirtArea::map_untracked_frames: the area size is zero",
            map_untracked(0, 0, 0..0, prop());
        map_untracked_of_misaligned_size_panics,
            "KVirtArea::map_untracked_frames: the area size 0xfff is not a multiple of PAGE_SIZE",
            map_untracked(P - 1, 0, 0..0, prop());
        map_untracked_at_misaligned_offset_panics,
            "KVirtArea::map_untracked_frames: the map offset 0x800 is not aligned to PAGE_SIZE",
            map_untracked(2 * P, 0x800, 0..0, prop());
        map_untracked_at_offset_equal_to_size_panics,
            "KVirtArea::map_untracked_frames: the map offset 0x2000 is not inside the area of 0x2000 bytes",
            map_untracked(2 * P, 2 * P, 0..0, prop());
        map_untracked_at_offset_past_the_end_panics,
            "KVirtArea::map_untracked_frames: the map offset 0x3000 is not inside the area of 0x2000 bytes",
            map_untracked(2 * P, 3 * P, 0..0, prop());
        map_untracked_of_misaligned_start_panics,
            "KVirtArea::map_untracked_frames: the provided physical range 0x800..0x2000 is not aligned to PAGE_SIZE",
            map_untracked(2 * P, 0, 0x800..0x2000, prop());
        map_untracked_of_misaligned_end_panics,
            "KVirtArea::map_untracked_frames: the provided physical range 0x1000..0x1800 is not aligned to PAGE_SIZE",
            map_untracked(2 * P, 0, 0x1000..0x1800, prop());
        map_untracked_exceeding_the_area_panics,
            "KVirtArea::map_untracked_frames: the map offset 0x1000 plus the 0x2000 bytes to map exceeds \
             the area size 0x2000",
            map_untracked(2 * P, P, 0..2 * P, prop());
        map_untracked_overflowing_offset_plus_length_panics,
            "KVirtArea::map_untracked_frames: the map offset 0x2000 plus the 0xfffffffffffff000 bytes to map \
             exceeds the area size 0xfffffffffffff000",
            map_untracked(TOP, 2 * P, 0..TOP, prop());
        map_untracked_beyond_the_format_panics,
            "KVirtArea::map_untracked_frames: the provided physical range 0x10000000000000..0x10000000001000 \
             is beyond what the paging format can map",
            map_untracked(P, 0, 1 << 52..(1 << 52) + P, prop());
        map_untracked_of_tracked_memory_panics, "KVirtArea::map_untracked_frames: the provided physical range 0x", {
            let frame = FrameAllocOptions::new().alloc_frame().unwrap();
            let pa = frame.paddr()..frame.paddr() + P;
            let message = format!(
                "KVirtArea::map_untracked_frames: the provided physical range {pa:#x?} contains tracked physical addresses"
            );
            panics_with(&message, || map_untracked(P, 0, pa.clone(), prop()))
        };
        map_untracked_of_free_ram_panics, "KVirtArea::map_untracked_frames: the provided physical range 0x", {
            let max = kvirt::kspace::max_paddr();
            let pa = max - P..max;
            let message = format!(
                "KVirtArea::map_untracked_frames: the provided physical range {pa:#x?} contains tracked physical addresses"
            );
            panics_with(&message, || map_untracked(P, 0, pa.clone(), prop()))
        };
        map_untracked_user_accessible_panics,
            "KVirtArea::map_untracked_frames: kernel virtual areas cannot be user accessible",
            map_untracked(P, 0, 0..P, user_prop());
        map_untracked_larger_than_vmalloc_panics,
            "KVirtArea::map_untracked_frames: VMALLOC has no free range of 0x200000000000 bytes",
            map_untracked(VMALLOC_VADDR_RANGE.len(), 0, 0..0, prop());
    }
}

/// Untracked mappings: `0..0`, huge pages, where areas are placed.
mod untracked {
    use super::*;

    #[test]
    fn empty_physical_range_maps_nothing() {
        let space = small_space();
        let before = space.phys_stats();
        for (size, offset) in [(P, 0), (4 * P, 0), (4 * P, P), (4 * P, 3 * P), (SIZE_2M, 0)] {
            let area = untracked(&space, size, offset, 0..0, prop()).unwrap();
            assert_eq!(area.size(), size);
            assert!(area.mapped_range().is_empty());
            assert!(kernel_view(&space, &area.range()).is_empty());
            for va in area.range().step_by(P) {
                assert!(area.query(va).is_none());
                assert!(space.kernel_translate(va).is_none());
            }
            assert_eq!(space.areas()[0].mapped_pages(), 0);
            assert!(area.inv());
            // No page-table node is made for an empty area.
            assert_eq!(space.phys_stats(), before);
        }
        assert!(space.areas().is_empty());
        assert!(space.inv());
    }

    /// The format can encode every address below 2^52, so a range may end
    /// exactly there (its last page is the last one a PTE can hold). Found
    /// by planting `>=` for `>` in the proven check: Verus failed, and no
    /// test did until this one.
    #[test]
    fn a_range_ending_at_the_format_limit_is_mapped() {
        let space = small_space();
        let pa = (1usize << 52) - SIZE_2M..1 << 52;
        let area = untracked(&space, SIZE_2M, 0, pa.clone(), prop()).unwrap();
        assert_eq!(
            area.query(area.start() + SIZE_2M - 1),
            Some(MappedItemRef::Untracked(pa.start, 2, prop()))
        );
        drop(area);
        assert!(space.inv());
    }

    #[test]
    fn huge_untracked_mapping_uses_huge_pages() {
        let space = small_space();
        let dev = device_window(&space);
        let pa = dev.start..dev.start + SIZE_1G;
        let area = untracked(&space, SIZE_1G, 0, pa.clone(), prop()).unwrap();
        assert_eq!(area.query(area.start() + 12345), Some(MappedItemRef::Untracked(pa.start, 3, prop())));
        let two_m = pa.start..pa.start + (4 << 20);
        let area2 = untracked(&space, 4 << 20, 0, two_m.clone(), prop()).unwrap();
        assert_eq!(
            area2.query(area2.start() + (2 << 20)),
            Some(MappedItemRef::Untracked(two_m.start + (2 << 20), 2, prop()))
        );
        assert!(space.inv());
    }

    /// Page-table nodes emptied by dropped areas wait for a batch before
    /// they are reclaimed; a huge mapping over their span reclaims them
    /// first instead of failing.
    #[test]
    fn a_huge_mapping_where_dropped_areas_left_empty_nodes_uses_huge_pages() {
        let space = small_space();
        let dev = device_window(&space);
        // At the bottom of VMALLOC, where the 1 GiB-aligned area goes next:
        // a leaf, and the level-2 node above it, emptied and kept.
        for _ in 0..3 {
            let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
            drop(space.try_map_frames(P, 0, [frame], prop()).unwrap());
        }
        let pa = dev.start..dev.start + SIZE_1G;
        let area = untracked(&space, SIZE_1G, 0, pa.clone(), prop()).unwrap();
        assert_eq!(area.query(area.start() + 12345), Some(MappedItemRef::Untracked(pa.start, 3, prop())));
        drop(area);
        assert!(space.inv());
    }

    /// The levels of the leaves `view` has in `range`, in address order.
    fn levels(view: &PageTableView) -> Vec<usize> {
        view.values().map(|m| m.size).collect()
    }

    #[test]
    fn untracked_mapping_uses_the_largest_pages_the_physical_range_allows() {
        let space = small_space();
        let dev = device_window(&space).start;
        // Push VMALLOC's next free address off any huge alignment first.
        let _pad = untracked(&space, P, 0, 0..0, prop()).unwrap();
        // 4K, then one 2M page, then 4K: the area is placed so that the
        // mapping's virtual and physical addresses agree modulo 2 MiB.
        let pa = dev + SIZE_2M - P..dev + 2 * SIZE_2M + P;
        let area = untracked(&space, 4 * SIZE_2M, SIZE_2M - P, pa.clone(), prop()).unwrap();
        let view = kernel_view(&space, &area.range());
        assert_eq!(levels(&view), vec![P, SIZE_2M, P]);
        for va in area.mapped_range().step_by(P) {
            assert_eq!(
                untracked_page(&area.query(va).unwrap(), va),
                pa.start + (va - area.mapped_range().start)
            );
        }
        // A 2 MiB-aligned range at a 2 MiB-aligned offset.
        let area = untracked(&space, 3 * SIZE_2M, SIZE_2M, dev..dev + SIZE_2M, prop()).unwrap();
        assert_eq!(area.start() % SIZE_2M, 0);
        assert_eq!(levels(&kernel_view(&space, &area.range())), vec![SIZE_2M]);
        assert!(space.inv());
    }

    #[test]
    fn untracked_areas_may_map_the_same_physical_range_twice() {
        let space = small_space();
        let a = untracked(&space, 2 * P, 0, 0x3000..0x5000, prop()).unwrap();
        let b = untracked(&space, 2 * P, 0, 0x3000..0x5000, prop()).unwrap();
        a.write_bytes(P + 5, b"shared").unwrap();
        let mut back = [0; 6];
        b.read_bytes(P + 5, &mut back).unwrap();
        assert_eq!(&back, b"shared");
        assert!(space.inv());
    }
}

/// docs/DESIGN.md section 4: at least one unmapped page between neighbours.
mod guard {
    use super::*;

    fn assert_guarded(space: &KernelSpace) {
        let areas = space.areas();
        for pair in areas.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(b.range.start >= a.range.end + GUARD_SIZE, "{a} and {b} have no guard between them");
            assert!(space.kernel_translate(a.range.end).is_none(), "the guard after {a} is mapped");
            assert!(kernel_view(space, &(a.range.end..b.range.start)).is_empty());
        }
        let last = areas.last().unwrap();
        assert!(space.kernel_translate(last.range.end).is_none());
    }

    #[test]
    fn consecutive_areas_are_separated_by_an_unmapped_page() {
        let space = small_space();
        let f = |n| FrameAllocOptions::new_in(&space).alloc_segment(n).unwrap();
        let dev = device_window(&space).start;
        let a = space.try_map_frames(2 * P, 0, f(2), prop()).unwrap();
        let b = space.try_map_frames(3 * P, 0, f(3), prop()).unwrap();
        // Areas are carved one after the other: exactly one guard page.
        assert_eq!(b.start(), a.end() + GUARD_SIZE);
        let c = untracked(&space, SIZE_2M, 0, dev..dev + SIZE_2M, prop()).unwrap();
        // Best fit puts this one in the hole that aligning `c` left.
        let d = untracked(&space, P, 0, 0..P, prop()).unwrap();
        assert_eq!(d.start(), b.end() + GUARD_SIZE);
        let e = untracked(&space, SIZE_1G, 0, dev..dev + SIZE_1G, prop()).unwrap();
        let g = space.try_map_frames(P, 0, f(1), prop()).unwrap();
        assert_guarded(&space);
        drop(b);
        let b = space.try_map_frames(2 * P, 0, f(2), prop()).unwrap();
        assert_guarded(&space);
        assert!(space.inv());
        drop((a, b, c, d, e, g));
    }

    /// Splits a 4-page tracked area at `at` and drops one half.
    fn split_and_drop(space: &KernelSpace, at: usize, drop_right: bool) -> KVirtArea {
        let frames = FrameAllocOptions::new_in(space).alloc_segment(4).unwrap();
        let area = space.try_map_frames(4 * P, 0, frames, prop()).unwrap();
        let (left, right) = area.split(at);
        if drop_right {
            drop(right);
            left
        } else {
            drop(left);
            right
        }
    }

    #[test]
    fn the_left_half_of_a_split_keeps_a_guard_when_the_right_half_goes() {
        let space = small_space();
        let left = split_and_drop(&space, P, true);
        assert!(left.inv(), "{:?}", left.check());
        // VMALLOC keeps the page after the left half: a new area cannot
        // start right after it.
        let next = untracked(&space, P, 0, 0..P, prop()).unwrap();
        assert!(next.start() >= left.end() + GUARD_SIZE, "{next:?} touches {left:?}");
        assert_guarded(&space);
        assert!(space.inv());
        let total = VMALLOC_VADDR_RANGE.len();
        assert_eq!(space.vmalloc_stats().free_bytes, total - (P + GUARD_SIZE) - (P + GUARD_SIZE));
        drop(left);
        drop(next);
        assert_eq!(space.vmalloc_stats().free_bytes, total);
        assert_eq!(space.vmalloc_stats().fragments, 1);
    }

    #[test]
    fn the_right_half_of_a_split_keeps_its_guard_when_the_left_half_goes() {
        let space = small_space();
        let right = split_and_drop(&space, 3 * P, false);
        assert!(right.inv());
        let before = untracked(&space, 2 * P, 0, 0..0, prop()).unwrap();
        assert!(before.end() + GUARD_SIZE <= right.start());
        let after = untracked(&space, P, 0, 0..0, prop()).unwrap();
        assert!(after.start() >= right.end() + GUARD_SIZE);
        assert_guarded(&space);
        drop((before, right, after));
        assert_eq!(space.vmalloc_stats().fragments, 1);
        assert_eq!(space.vmalloc_stats().free_bytes, VMALLOC_VADDR_RANGE.len());
    }

    #[test]
    fn every_drop_order_of_three_split_pieces_frees_everything() {
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let space = small_space();
            let frames = FrameAllocOptions::new_in(&space).alloc_segment(6).unwrap();
            let area = space.try_map_frames(6 * P, 0, frames, prop()).unwrap();
            let (a, rest) = area.split(2 * P);
            let (b, c) = rest.split(2 * P);
            let mut pieces = [Some(a), Some(b), Some(c)];
            for i in order {
                drop(pieces[i].take());
                for live in pieces.iter().flatten() {
                    assert!(live.inv(), "{order:?}: {:?}", live.check());
                }
                assert!(space.inv(), "{order:?}: {:?}", space.check());
                if pieces.iter().any(Option::is_some) {
                    // Whatever is left stays guarded from new areas.
                    let probe = untracked(&space, P, 0, 0..0, prop()).unwrap();
                    for live in pieces.iter().flatten() {
                        assert!(
                            probe.end() + GUARD_SIZE <= live.start()
                                || probe.start() >= live.end() + GUARD_SIZE,
                            "{order:?}: {probe:?} touches {live:?}"
                        );
                    }
                }
            }
            assert_eq!(space.vmalloc_stats().fragments, 1, "{order:?}");
            assert_eq!(space.vmalloc_stats().free_bytes, VMALLOC_VADDR_RANGE.len(), "{order:?}");
        }
    }

    #[test]
    fn writing_past_the_end_of_an_area_faults_on_the_mmu() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let a = space.try_map_frames(2 * P, 0, frames, prop()).unwrap();
        let b =
            space.try_map_frames(P, 0, FrameAllocOptions::new_in(&space).alloc_segment(1).unwrap(), prop());
        let b = b.unwrap();
        let cpu = kernel_cpu(&space);
        cpu.write(a.end() - 8, &[1; 8]).unwrap();
        let err = cpu.write(a.end() - 8, &[1; 16]).unwrap_err();
        let MemError::Fault(fault) = err else { panic!("fault expected, got {err:?}") };
        assert_eq!(fault.va, a.end());
        assert!(matches!(fault.kind, FaultKind::NotPresent { .. }));
        let mut first = [0xff; 8];
        b.read_bytes(0, &mut first).unwrap();
        assert_eq!(first, [0; 8], "the overrun reached the next area");
    }
}

/// The VMALLOC allocator behind the areas: alignment, exhaustion, stats.
mod vmalloc {
    use super::*;

    fn fresh() -> VmallocStats {
        let total = VMALLOC_VADDR_RANGE.len();
        VmallocStats { total_bytes: total, free_bytes: total, largest_free: total, fragments: 1 }
    }

    #[test]
    fn a_fresh_space_has_all_of_vmalloc_free_in_one_block() {
        assert_eq!(small_space().vmalloc_stats(), fresh());
    }

    #[test]
    fn stats_follow_create_and_drop_patterns() {
        let space = small_space();
        let total = VMALLOC_VADDR_RANGE.len();
        let area = |pages: usize| untracked(&space, pages * P, 0, 0..0, prop()).unwrap();
        let stats = |free: usize, largest: usize, fragments: usize| VmallocStats {
            total_bytes: total,
            free_bytes: free,
            largest_free: largest,
            fragments,
        };
        let (a, b, c) = (area(1), area(2), area(3));
        let used = (1 + 2 + 3 + 3) * P; // three areas and three guards
        assert_eq!(space.vmalloc_stats(), stats(total - used, total - used, 1));
        drop(b);
        assert_eq!(space.vmalloc_stats(), stats(total - used + 3 * P, total - used, 2));
        drop(a);
        assert_eq!(space.vmalloc_stats(), stats(total - used + 5 * P, total - used, 2));
        // Best fit: a 2-page area (plus guard) goes into the 5-page hole.
        let d = area(2);
        assert_eq!(d.start(), VMALLOC_VADDR_RANGE.start);
        assert_eq!(space.vmalloc_stats(), stats(total - used + 2 * P, total - used, 2));
        drop(c);
        assert_eq!(space.vmalloc_stats(), stats(total - 3 * P, total - 3 * P, 1));
        drop(d);
        assert_eq!(space.vmalloc_stats(), fresh());
    }

    #[test]
    fn untracked_huge_mappings_get_2m_and_1g_aligned_ranges() {
        let space = small_space();
        let dev = device_window(&space).start;
        let total = VMALLOC_VADDR_RANGE.len();
        let small = untracked(&space, P, 0, 0..0, prop()).unwrap();
        assert_eq!(small.start(), VMALLOC_VADDR_RANGE.start);
        let two_m = untracked(&space, SIZE_2M, 0, dev..dev + SIZE_2M, prop()).unwrap();
        assert_eq!(two_m.start(), VMALLOC_VADDR_RANGE.start + SIZE_2M);
        let after_2m = two_m.end() + GUARD_SIZE;
        assert_eq!(
            space.vmalloc_stats(),
            VmallocStats {
                total_bytes: total,
                free_bytes: total - 2 * P - SIZE_2M - P,
                largest_free: VMALLOC_VADDR_RANGE.end - after_2m,
                fragments: 2,
            }
        );
        let one_g = untracked(&space, SIZE_1G, 0, dev..dev + SIZE_1G, prop()).unwrap();
        assert_eq!(one_g.start(), VMALLOC_VADDR_RANGE.start + SIZE_1G);
        assert_eq!(space.vmalloc_stats().fragments, 3);
        assert_eq!(one_g.query(one_g.start()), Some(MappedItemRef::Untracked(dev, 3, prop())));
        assert_eq!(two_m.query(two_m.start()), Some(MappedItemRef::Untracked(dev, 2, prop())));
        // An unaligned physical range needs no alignment: it fills a hole.
        let low = untracked(&space, 2 * P, 0, 0x1000..0x3000, prop()).unwrap();
        assert_eq!(low.start(), small.end() + GUARD_SIZE);
        drop((small, two_m, one_g, low));
        assert_eq!(space.vmalloc_stats(), fresh());
    }

    /// Fills VMALLOC with areas of the largest size, the last one
    /// `leave` bytes short.
    fn fill_vmalloc(space: &KernelSpace, leave: usize) -> Vec<KVirtArea> {
        let max = space.max_area_size();
        let arenas = VMALLOC_VADDR_RANGE.len() / (max + GUARD_SIZE);
        assert_eq!(arenas * (max + GUARD_SIZE), VMALLOC_VADDR_RANGE.len(), "equal arenas");
        let areas: Vec<_> = (0..arenas)
            .map(|i| {
                let size = if i + 1 == arenas { max - leave } else { max };
                untracked(space, size, 0, 0..0, prop()).unwrap()
            })
            .collect();
        assert_eq!(areas[0].start(), VMALLOC_VADDR_RANGE.start);
        areas
    }

    #[test]
    fn an_area_larger_than_an_arena_is_refused_and_changes_nothing() {
        let space = small_space();
        let max = space.max_area_size();
        assert!(max >= 1 << 40 && max < VMALLOC_VADDR_RANGE.len());
        assert_eq!(
            untracked(&space, max + P, 0, 0..0, prop()).map(drop),
            Err(KVirtAreaError::VmallocExhausted(max + P))
        );
        assert_eq!(space.vmalloc_stats(), fresh());
        let biggest = untracked(&space, max, 0, 0..0, prop()).unwrap();
        assert_eq!(biggest.start(), VMALLOC_VADDR_RANGE.start);
    }

    #[test]
    fn exhaustion_is_reported_and_undone_by_drop() {
        let space = small_space();
        let all = fill_vmalloc(&space, 0);
        assert_eq!(all.last().unwrap().end(), VMALLOC_VADDR_RANGE.end - GUARD_SIZE);
        assert_eq!(
            space.vmalloc_stats(),
            VmallocStats {
                total_bytes: VMALLOC_VADDR_RANGE.len(),
                free_bytes: 0,
                largest_free: 0,
                fragments: 0
            }
        );
        let before = snapshot(&space);
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let before_frame = snapshot(&space);
        assert_eq!(
            space.try_map_frames(P, 0, [frame.clone()], prop()).map(drop),
            Err(KVirtAreaError::VmallocExhausted(P))
        );
        assert_eq!(frame.reference_count(), 1);
        assert_eq!(snapshot(&space), before_frame);
        drop(frame);
        assert_eq!(untracked(&space, P, 0, 0..P, prop()).map(drop), Err(KVirtAreaError::VmallocExhausted(P)));
        assert_eq!(snapshot(&space), before);
        drop(all);
        assert_eq!(space.vmalloc_stats(), fresh());
        let again = untracked(&space, P, 0, 0..P, prop()).unwrap();
        assert_eq!(again.start(), VMALLOC_VADDR_RANGE.start);
    }

    #[test]
    fn untracked_mapping_falls_back_to_small_pages_without_aligned_room() {
        let space = small_space();
        let dev = device_window(&space).start;
        // Leave only the top 3 MiB of VMALLOC free: room for 2 MiB plus a
        // guard, but not at a 2 MiB-aligned address.
        let filler = fill_vmalloc(&space, 3 * SIZE_2M / 2);
        let area = untracked(&space, SIZE_2M, 0, dev..dev + SIZE_2M, prop()).unwrap();
        assert_eq!(area.start(), filler.last().unwrap().end() + GUARD_SIZE);
        assert_ne!(area.start() % SIZE_2M, 0);
        let view = kernel_view(&space, &area.range());
        assert_eq!(view.len(), SIZE_2M / P);
        assert!(view.values().all(|m| m.size == P));
        assert_eq!(untracked_page(&area.query(area.end() - 1).unwrap(), area.end() - 1), dev + SIZE_2M - P);
        assert!(area.inv());
        drop((filler, area));
        assert_eq!(space.vmalloc_stats(), fresh());
    }

    #[test]
    fn many_areas_created_and_dropped_leave_one_block() {
        let space = small_space();
        let mut live = Vec::new();
        for i in 0..200 {
            let frames = FrameAllocOptions::new_in(&space).alloc_segment(1 + i % 3).unwrap();
            live.push(space.try_map_frames((3 + i % 5) * P, 0, frames, prop()).unwrap());
        }
        // Drop every other one: holes, then the rest.
        let mut odd = Vec::new();
        for (i, a) in live.into_iter().enumerate() {
            if i % 2 == 1 {
                odd.push(a);
            }
        }
        assert_eq!(space.vmalloc_stats().fragments, 101);
        assert!(space.inv());
        drop(odd);
        space.synchronize();
        assert_eq!(space.vmalloc_stats(), fresh());
        assert!(space.inv());
    }
}

/// `query`: strict bounds, exact properties, the specification's postconditions.
mod query {
    use super::*;

    #[test]
    fn spec_predicates_reject_wrong_answers() {
        let space = small_space();
        let dev = device_window(&space).start;
        let area = untracked(&space, 2 * SIZE_2M, 0, dev..dev + SIZE_2M, prop()).unwrap();
        let (va, unmapped) = (area.start() + 3 * P + 7, area.start() + SIZE_2M + P);
        let view = kernel_view(&space, &(area.start()..area.end()));
        let right = area.query(va);
        assert_eq!(right, Some(MappedItemRef::Untracked(dev, 2, prop())));
        assert!(spec::query_some_condition(&view, va) && spec::query_some_ensures(&view, va, &right));
        let ro = PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback);
        for wrong in [
            None,
            Some(MappedItemRef::Untracked(dev + P, 2, prop())),
            Some(MappedItemRef::Untracked(dev, 1, prop())),
            Some(MappedItemRef::Untracked(dev, 2, ro)),
        ] {
            assert!(!spec::query_some_ensures(&view, va, &wrong), "{wrong:?} accepted at {va:#x}");
        }
        assert!(!spec::query_some_condition(&view, unmapped));
        assert!(spec::query_none_ensures(&area.query(unmapped)));
        assert!(!spec::query_none_ensures(&right));
    }

    #[test]
    #[should_panic(expected = "outside the area")]
    fn query_at_end_panics() {
        // SAFETY: nothing is mapped.
        let area = unsafe { KVirtArea::map_untracked_frames(PAGE_SIZE, 0, 0..0, prop()) };
        let _ = area.query(area.end());
    }

    #[test]
    #[should_panic(expected = "outside the area")]
    fn query_below_start_panics() {
        let area = KVirtArea::map_frames(P, 0, FrameAllocOptions::new().alloc_segment(1).unwrap(), prop());
        let _ = area.query(area.start() - 1);
    }

    #[test]
    #[should_panic(expected = "outside the area")]
    fn query_at_end_of_a_full_area_panics() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let area = space.try_map_frames(2 * P, 0, frames, prop()).unwrap();
        let _ = area.query(area.end());
    }

    /// The halves of a wholly mapped 4-page area split in the middle, each
    /// mapped all through, with their space.
    fn mapped_halves() -> (KernelSpace, KVirtArea, KVirtArea) {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let (left, right) = space.try_map_frames(4 * P, 0, frames, prop()).unwrap().split(2 * P);
        assert!(left.query(left.start()).is_some() && left.query(left.end() - 1).is_some());
        assert!(right.query(right.start()).is_some() && right.query(right.end() - 1).is_some());
        (space, left, right)
    }

    #[test]
    #[should_panic(expected = "outside the area")]
    fn query_of_a_left_half_at_the_right_half_s_mapped_page_panics() {
        let (_space, left, right) = mapped_halves();
        let _ = left.query(right.start());
    }

    #[test]
    #[should_panic(expected = "outside the area")]
    fn query_of_a_right_half_at_the_left_half_s_mapped_page_panics() {
        let (_space, left, right) = mapped_halves();
        let _ = right.query(left.end() - 1);
    }

    #[test]
    #[should_panic(expected = "outside the area")]
    fn query_far_past_a_partly_mapped_area_panics() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(1).unwrap();
        let area = space.try_map_frames(3 * P, P, frames, prop()).unwrap();
        assert!(area.query(area.start()).is_none());
        assert!(area.query(area.end() - 1).is_none());
        let _ = area.query(usize::MAX);
    }

    #[test]
    fn query_at_the_last_byte_returns_the_last_page() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap();
        let last = frames.paddr() + 2 * P;
        let area = space.try_map_frames(3 * P, 0, frames, prop()).unwrap();
        let Some(MappedItemRef::Tracked(frame, p)) = area.query(area.end() - 1) else { panic!("tracked") };
        assert_eq!((frame.paddr(), p), (last, prop()));
        let mid = area.query(area.start() + P + 123).unwrap();
        assert_eq!(mid, area.query(area.start() + P).unwrap());
    }

    /// The properties a kernel area may carry: all but user-accessible ones.
    fn kernel_props() -> impl Iterator<Item = PageProperty> {
        PageProperty::all().filter(|p| !p.priv_flags.contains(PrivilegedPageFlags::USER))
    }

    fn check_prop(space: &KernelSpace, area: &KVirtArea, p: PageProperty, tracked: bool, level: u8) {
        let va = area.mapped_range().start;
        let item = area.query(va).unwrap_or_else(|| panic!("{p:?} not mapped"));
        assert_eq!(item.prop(), p, "query changed the property");
        assert_eq!(item.level(), level);
        assert_eq!(matches!(item, MappedItemRef::Tracked(..)), tracked);
        assert_eq!(space.kernel_translate(va).unwrap().1, p, "translate changed the property");
        let view = kernel_view(space, &area.range());
        let m = mapping_at(&view, va).unwrap();
        assert_eq!((m.prop, m.tracked), (p, tracked));
        assert!(spec::query_some_ensures(&view, va, &Some(item)));
    }

    #[test]
    fn query_returns_exactly_the_mapped_property() {
        let space = small_space();
        let dev = device_window(&space).start;
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let mut count = 0;
        for p in kernel_props() {
            let area = space.try_map_frames(2 * P, P, [frame.clone()], p).unwrap();
            check_prop(&space, &area, p, true, 1);
            let area = untracked(&space, P, 0, 0x5000..0x6000, p).unwrap();
            check_prop(&space, &area, p, false, 1);
            let area = untracked(&space, SIZE_2M, 0, dev..dev + SIZE_2M, p).unwrap();
            check_prop(&space, &area, p, false, 2);
            let area = untracked(&space, SIZE_1G, 0, dev..dev + SIZE_1G, p).unwrap();
            check_prop(&space, &area, p, false, 3);
            count += 1;
        }
        assert_eq!(count, 32 * 5 * 2);
        space.synchronize();
        assert_eq!(frame.reference_count(), 1);
        assert!(space.inv());
    }

    #[test]
    fn query_satisfies_the_spec_postconditions_on_every_page() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap();
        let dev = device_window(&space).start;
        let areas = [
            space.try_map_frames(6 * P, 2 * P, frames, prop()).unwrap(),
            untracked(&space, 4 * P, P, 0x2000..0x4000, prop()).unwrap(),
            untracked(&space, 3 * SIZE_2M, SIZE_2M, dev + SIZE_2M..dev + 2 * SIZE_2M, prop()).unwrap(),
        ];
        for area in &areas {
            let view = kernel_view(&space, &area.range());
            for va in area.range().step_by(P).flat_map(|va| [va, va + 1, va + P - 1]) {
                let r = area.query(va);
                if spec::query_some_condition(&view, va) {
                    assert!(spec::query_some_ensures(&view, va, &r), "{va:#x}: {r:?}");
                    assert!(area.mapped_range().contains(&va));
                } else {
                    assert!(spec::query_none_ensures(&r), "{va:#x}: {r:?}");
                    assert!(!area.mapped_range().contains(&va));
                }
                assert!(spec::query_requires(area, va));
            }
            assert!(!spec::query_requires(area, area.end()));
        }
    }
}

/// `split`, including inside an untracked huge page.
mod split {
    use super::*;

    #[test]
    fn split_then_drop_halves_unmaps_each_part() {
        let space = small_space();
        let base = space.phys_stats();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let area = space.try_map_frames(4 * PAGE_SIZE, 0, frames, prop()).unwrap();
        let (left, right) = area.split(PAGE_SIZE);
        assert!(left.inv() && right.inv());
        assert!(left.query(left.start()).is_some());
        assert!(right.query(right.start() + 2 * PAGE_SIZE).is_some());
        drop(left);
        assert!(right.query(right.start()).is_some());
        drop(right);
        space.synchronize();
        assert_eq!(space.phys_stats(), base);
        assert!(space.inv());
    }

    /// Splits an untracked huge mapping of `huge` bytes at `at` and drops
    /// one half; the other keeps exactly its pages.
    fn split_huge_then_drop_one_half(huge: usize, at: usize, drop_left: bool) {
        let space = small_space();
        let baseline = snapshot(&space);
        let dev = device_window(&space).start;
        let area = untracked(&space, huge, 0, dev..dev + huge, prop()).unwrap();
        let (start, end) = (area.start(), area.end());
        let (left, right) = area.split(at);
        assert_eq!((left.range(), right.range()), (start..start + at, start + at..end));
        assert!(left.inv(), "left half: {:?}", left.check());
        assert!(right.inv(), "right half: {:?}", right.check());
        assert!(space.inv());
        let (kept, dropped, gone) =
            if drop_left { (right, left, start..start + at) } else { (left, right, start + at..end) };
        drop(dropped);
        assert!(kept.inv(), "kept half: {:?}", kept.check());
        assert!(space.inv(), "{:?}", space.check());
        assert!(kernel_view(&space, &gone).is_empty(), "the dropped half is still mapped");
        // Every page of a small half, a sample of a large one.
        let stride = if kept.size() <= 4 * SIZE_2M { P } else { 61 * P };
        let pages = kept.range().step_by(stride).chain([kept.end() - P]);
        for va in pages {
            let expect = dev + (va - start);
            let item = kept.query(va).expect("the kept half is mapped");
            assert_eq!(untracked_page(&item, va), expect, "wrong page at {va:#x}");
            assert_eq!(item.prop(), prop());
            assert_eq!(space.kernel_translate(va + 7), Some((expect + 7, prop())));
        }
        let view = kernel_view(&space, &kept.range());
        assert!(view.values().all(|m| m.va >= kept.start() && m.va + m.size <= kept.end()));
        drop(kept);
        assert_eq!(snapshot(&space), baseline);
    }

    #[test]
    fn split_inside_a_2m_page_then_dropping_the_left_half_keeps_the_right() {
        split_huge_then_drop_one_half(SIZE_2M, P, true);
        split_huge_then_drop_one_half(SIZE_2M, SIZE_2M - P, true);
        split_huge_then_drop_one_half(SIZE_2M, 100 * P, true);
    }

    #[test]
    fn split_inside_a_2m_page_then_dropping_the_right_half_keeps_the_left() {
        split_huge_then_drop_one_half(SIZE_2M, P, false);
        split_huge_then_drop_one_half(SIZE_2M, 300 * P, false);
    }

    #[test]
    fn split_inside_a_1g_page_then_dropping_one_half_keeps_the_other() {
        split_huge_then_drop_one_half(SIZE_1G, SIZE_2M + P, true);
        split_huge_then_drop_one_half(SIZE_1G, 3 * P, false);
    }

    #[test]
    fn dropping_half_of_a_split_huge_page_needs_no_memory() {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        let dev = device_window(&space).start;
        let area = untracked(&space, SIZE_1G, 0, dev..dev + SIZE_1G, prop()).unwrap();
        let (left, right) = area.split(SIZE_2M + 5 * P);
        let hoard = take_every_free_frame(&space);
        let start = left.start();
        drop(left);
        assert!(space.kernel_translate(start + SIZE_2M + 4 * P).is_none());
        assert_eq!(space.kernel_translate(right.start()), Some((dev + SIZE_2M + 5 * P, prop())));
        assert!(right.inv());
        drop(right);
        drop(hoard);
        assert!(space.inv());
    }

    #[test]
    fn split_without_memory_for_the_huge_page_panics_and_drops_the_area() {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        let dev = device_window(&space).start;
        let baseline = snapshot(&space);
        let area = untracked(&space, SIZE_2M, 0, dev..dev + SIZE_2M, prop()).unwrap();
        let hoard = take_every_free_frame(&space);
        let err = catch_unwind(AssertUnwindSafe(|| area.split(P))).unwrap_err();
        let msg = err.downcast_ref::<&str>().map(|s| s.to_string()).or(err.downcast_ref::<String>().cloned());
        assert!(msg.unwrap().contains("out of memory"));
        drop(hoard);
        assert_eq!(snapshot(&space), baseline);
        assert!(space.inv());
    }

    #[test]
    fn try_split_without_memory_hands_the_area_back_unchanged() {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        let dev = device_window(&space).start;
        let mut area = untracked(&space, SIZE_1G, 0, dev..dev + SIZE_1G, prop()).unwrap();
        let range = area.range();
        let mut hoard = take_every_free_frame(&space);
        // Splitting the 1 GiB page down to 4 KiB pages at the split point
        // takes two nodes: with none, and with only one, nothing changes.
        for spare in 0..2 {
            let before = snapshot(&space);
            let (back, e) = area.try_split(SIZE_2M + P).unwrap_err();
            assert_eq!(e, SplitError::OutOfMemory, "with {spare} spare pages");
            assert_eq!(back.range(), range);
            assert_eq!(snapshot(&space), before, "a refused split changed the space ({spare} spare pages)");
            assert_eq!(back.query(range.start + SIZE_2M + P), Some(MappedItemRef::Untracked(dev, 3, prop())));
            area = back;
            drop(hoard.pop());
        }
        drop(hoard.pop());
        let (left, right) = area.try_split(SIZE_2M + P).expect("two free pages are enough");
        assert_eq!(right.query(right.start()), Some(MappedItemRef::Untracked(dev + SIZE_2M + P, 1, prop())));
        assert!(left.inv() && right.inv() && space.inv());
    }

    #[test]
    fn try_split_in_lazy_mode_purges_for_the_nodes_it_needs() {
        let space = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
        let dev = device_window(&space).start;
        let area = untracked(&space, SIZE_1G, 0, dev..dev + SIZE_1G, prop()).unwrap();
        // Two frames whose only references an area holds: dropped lazily,
        // they wait in the purge queue, and are the only free memory a
        // purge can give back.
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let victim = space.try_map_frames(2 * P, 0, frames, prop()).unwrap();
        let hoard = take_every_free_frame(&space);
        drop(victim);
        assert_eq!(space.phys_stats().free_pages, 0);
        let purges = space.purge_stats().purges;
        // Splitting the 1 GiB page at a 4 KiB boundary takes two nodes.
        let (left, right) = area.try_split(SIZE_2M + P).expect("the purge gave back two pages");
        assert_eq!(space.purge_stats().purges, purges + 1, "the split purged once");
        assert_eq!(right.query(right.start()), Some(MappedItemRef::Untracked(dev + SIZE_2M + P, 1, prop())));
        assert!(left.inv() && right.inv() && space.inv());
        drop(hoard);
    }

    /// Frame metadata whose drop hook drops an area it was handed (and
    /// then purges the space, nested in the purge that runs it).
    #[derive(Debug)]
    struct DropsArea {
        slot: Arc<Mutex<Option<KVirtArea>>>,
        space: Weak<KernelSpace>,
        ran: Arc<std::sync::atomic::AtomicBool>,
    }

    impl AnyFrameMeta for DropsArea {
        fn on_drop(&mut self, _paddr: Paddr) {
            self.ran.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(self.slot.lock().unwrap().take());
            if let Some(space) = self.space.upgrade() {
                space.purge();
            }
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// A hostile drop hook, run by `try_split`'s purge (lazy mode, no free
    /// page for the nodes), drops the split sibling of the area being split
    /// and purges again: the sibling's drop locks nodes next to the split
    /// point, so a cursor held across the purge would deadlock. (From an
    /// independent review.)
    #[test]
    fn a_purge_inside_try_split_may_drop_the_split_sibling() {
        let space = Arc::new(KernelSpace::new_hosted(MachineConfig::new(16 << 20)));
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
        let dev = device_window(&space).start;
        let area = untracked(&space, SIZE_1G, 0, dev..dev + SIZE_1G, prop()).unwrap();
        let (left, right) = area.split(SIZE_2M);
        let slot = Arc::new(Mutex::new(Some(left)));
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let meta = DropsArea { slot: slot.clone(), space: Arc::downgrade(&space), ran: ran.clone() };
        let frame = FrameAllocOptions::new_in(&*space).alloc_frame_with(meta).unwrap();
        let victim = space.try_map_frames(P, 0, [frame], prop()).unwrap();
        let hoard = take_every_free_frame(&space);
        drop(victim);
        assert_eq!(space.phys_stats().free_pages, 0);
        let (a, b) = right.try_split(SIZE_2M + P).expect("the purge gave back a page");
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        assert!(slot.lock().unwrap().is_none());
        assert!(a.inv(), "{:?}", a.check());
        assert!(b.inv(), "{:?}", b.check());
        assert_eq!(space.check(), Ok(()));
        drop(hoard);
        drop(a);
        assert_eq!(space.check(), Ok(()));
        drop(b);
        space.synchronize();
        assert_eq!(space.check(), Ok(()));
        assert!(space.areas().is_empty());
    }

    /// Stops the thread `armed` at its first read-side section after the
    /// area at `start` has left the registry, until released.
    #[cfg(feature = "check-contracts")]
    #[derive(Debug, Default)]
    struct Gate {
        space: OnceLock<Weak<KernelSpace>>,
        armed: Mutex<Option<(std::thread::ThreadId, Vaddr)>>,
        state: Mutex<u8>, // 0 idle, 1 parked, 2 released
        cv: std::sync::Condvar,
    }

    // SAFETY: the hook blocks, reads the registry, never unwinds (but on a
    // poisoned lock after a failure) and touches no RAM.
    #[cfg(feature = "check-contracts")]
    unsafe impl Hooks for Arc<Gate> {
        fn on_read_lock(&self) {
            let mut armed = self.armed.lock().unwrap();
            let Some((thread, start)) = *armed else { return };
            if std::thread::current().id() != thread {
                return;
            }
            let Some(space) = self.space.get().and_then(Weak::upgrade) else { return };
            if space.areas().iter().any(|a| a.range.start == start) {
                return;
            }
            *armed = None;
            drop(armed);
            let mut state = self.state.lock().unwrap();
            *state = 1;
            self.cv.notify_all();
            while *state != 2 {
                state = self.cv.wait(state).unwrap();
            }
        }
    }

    /// The right half's drop, on another thread, is held at its first
    /// read-side section after it left the registry (inside the drop
    /// contract's check), while the left half is dropped. The check once
    /// ran after the halves settled their shared page: the left half had
    /// then freed the right half's first page, and the check panicked
    /// though nothing was wrong. (From an independent review.)
    #[test]
    #[cfg(feature = "check-contracts")]
    fn halves_dropped_at_once_keep_the_drop_contract() {
        let gate = Arc::new(Gate::default());
        // SAFETY: neither the hooks nor the test touch the machine.
        let (_machine, space) = unsafe { hooked_space(MachineConfig::new(64 << 20), |_| gate.clone()) };
        let space = Arc::new(space);
        gate.space.set(Arc::downgrade(&space)).unwrap();
        let frames = FrameAllocOptions::new_in(&*space).alloc_segment(4).unwrap();
        let area = space.try_map_frames(4 * P, 0, frames, prop()).unwrap();
        let (left, right) = area.split(2 * P);
        let r_start = right.start();
        let g = gate.clone();
        let t = std::thread::spawn(move || {
            *g.armed.lock().unwrap() = Some((std::thread::current().id(), r_start));
            drop(right);
        });
        {
            let mut state = gate.state.lock().unwrap();
            while *state != 1 && !t.is_finished() {
                let (s, _) = gate.cv.wait_timeout(state, std::time::Duration::from_millis(50)).unwrap();
                state = s;
            }
        }
        let parked = *gate.state.lock().unwrap() == 1;
        drop(left);
        *gate.state.lock().unwrap() = 2;
        gate.cv.notify_all();
        let joined = t.join();
        assert!(parked, "the right half's drop never paused after leaving the registry");
        assert!(joined.is_ok(), "the right half's drop panicked");
        space.synchronize();
        assert_eq!(space.check(), Ok(()));
    }

    #[test]
    fn try_split_at_a_bad_offset_hands_the_area_back() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let mut area = space.try_map_frames(2 * P, 0, frames, prop()).unwrap();
        let before = snapshot(&space);
        for offset in [0, 1, P + 1, 2 * P, 3 * P, usize::MAX] {
            let (back, e) = area.try_split(offset).unwrap_err();
            assert_eq!(e, SplitError::BadOffset { offset, size: 2 * P });
            assert_eq!(snapshot(&space), before, "try_split at {offset:#x} changed the space");
            area = back;
        }
        assert!(area.inv());
    }

    #[test]
    fn split_at_a_huge_page_boundary_splits_no_page() {
        let space = small_space();
        let dev = device_window(&space).start;
        let area = untracked(&space, 2 * SIZE_2M, 0, dev..dev + 2 * SIZE_2M, prop()).unwrap();
        let pt_pages = space.phys_stats().page_table_pages;
        let (left, right) = area.split(SIZE_2M);
        assert_eq!(space.phys_stats().page_table_pages, pt_pages);
        assert_eq!(left.query(left.start()), Some(MappedItemRef::Untracked(dev, 2, prop())));
        assert_eq!(right.query(right.start()), Some(MappedItemRef::Untracked(dev + SIZE_2M, 2, prop())));
        drop(left);
        assert_eq!(right.query(right.end() - 1), Some(MappedItemRef::Untracked(dev + SIZE_2M, 2, prop())));
    }

    #[test]
    fn split_updates_the_registry() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let area = space.try_map_frames(6 * P, P, frames, prop()).unwrap();
        area.set_label("to split");
        let start = area.start();
        let (a, rest) = area.split(2 * P);
        let (b, c) = rest.split(2 * P);
        let listed: Vec<_> =
            space.areas().iter().map(|i| (i.range.clone(), i.mapped_pages(), i.label)).collect();
        assert_eq!(
            listed,
            vec![
                (start..start + 2 * P, 1, Some("to split")),
                (start + 2 * P..start + 4 * P, 1, Some("to split")),
                (start + 4 * P..start + 6 * P, 0, Some("to split")),
            ]
        );
        assert!(a.inv() && b.inv() && c.inv());
        drop((b, a, c));
        assert!(space.areas().is_empty());
    }

    #[test]
    fn split_at_bad_offsets_panics_and_drops_the_area() {
        let space = small_space();
        let baseline = snapshot(&space);
        for offset in [0, 4 * P, 5 * P, P + 1, usize::MAX] {
            let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
            let area = space.try_map_frames(4 * P, 0, frames, prop()).unwrap();
            let err = catch_unwind(AssertUnwindSafe(|| area.split(offset))).unwrap_err();
            let msg = err.downcast_ref::<String>().unwrap();
            assert!(msg.contains("must be page aligned and strictly inside the area"), "{msg}");
            assert_eq!(snapshot(&space), baseline);
        }
    }
}

/// The area registry (like `/proc/vmallocinfo`).
mod registry {
    use super::*;

    #[test]
    fn registry_lists_live_areas_with_range_size_pages_kind_and_label() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap();
        let t = space.try_map_frames(5 * P, P, frames, prop()).unwrap();
        t.set_label("ring buffer");
        let u = untracked(&space, 2 * P, 0, 0..2 * P, prop()).unwrap();
        let e = untracked(&space, 3 * P, 0, 0..0, prop()).unwrap();
        e.set_label("empty");
        let list = space.areas();
        assert_eq!(
            list,
            vec![
                AreaInfo {
                    range: t.range(),
                    mapped: t.start() + P..t.start() + 4 * P,
                    kind: AreaKind::Tracked,
                    label: Some("ring buffer"),
                },
                AreaInfo { range: u.range(), mapped: u.range(), kind: AreaKind::Untracked, label: None },
                AreaInfo {
                    range: e.range(),
                    mapped: e.start()..e.start(),
                    kind: AreaKind::Untracked,
                    label: Some("empty")
                },
            ]
        );
        assert_eq!(list.iter().map(AreaInfo::size).collect::<Vec<_>>(), vec![5 * P, 2 * P, 3 * P]);
        assert_eq!(list.iter().map(AreaInfo::mapped_pages).collect::<Vec<_>>(), vec![3, 2, 0]);
        let line = list[0].to_string();
        assert!(line.starts_with(&format!("{:#018x}-{:#018x}", t.start(), t.end())), "{line}");
        assert!(
            line.contains("pages=3") && line.contains("tracked") && line.ends_with("ring buffer"),
            "{line}"
        );
        assert!(list[1].to_string().contains("untracked"));
        drop(u);
        assert_eq!(space.areas().len(), 2);
        drop((t, e));
        assert!(space.areas().is_empty());
    }

    #[test]
    fn relabelling_replaces_the_label() {
        let space = small_space();
        let a = untracked(&space, P, 0, 0..0, prop()).unwrap();
        a.set_label("first");
        a.set_label("second");
        assert_eq!(space.areas()[0].label, Some("second"));
    }
}

/// Byte access through an area.
mod bytes {
    use super::*;

    #[test]
    fn byte_access_round_trips() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let area = space.try_map_frames(3 * PAGE_SIZE, 0, frames, prop()).unwrap();
        let data: Vec<u8> = (0..300).map(|i| i as u8).collect();
        area.write_bytes(PAGE_SIZE - 100, &data).unwrap();
        let mut back = vec![0; 300];
        area.read_bytes(PAGE_SIZE - 100, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            area.read_bytes(2 * PAGE_SIZE, &mut back[..1]),
            Err(AreaAccessError::Unmapped(area.start() + 2 * PAGE_SIZE))
        );
        assert!(matches!(
            area.read_bytes(3 * PAGE_SIZE - 1, &mut back[..2]),
            Err(AreaAccessError::OutOfBounds { .. })
        ));
    }

    #[derive(Debug)]
    struct Typed(#[allow(dead_code)] u64);
    kvirt::impl_frame_meta!(Typed);

    #[test]
    fn byte_access_errors_name_the_first_bad_page_and_touch_nothing() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let keep = frames.clone();
        let area = space.try_map_frames(4 * P, P, frames, prop()).unwrap();
        let size = area.size();
        let mut buf = [0u8; 8];
        assert_eq!(area.read_bytes(0, &mut buf), Err(AreaAccessError::Unmapped(area.start())));
        // A write that runs from a mapped page into an unmapped one fails
        // before writing anything.
        assert_eq!(
            area.write_bytes(3 * P - 4, &[9; 8]),
            Err(AreaAccessError::Unmapped(area.start() + 3 * P))
        );
        keep.read_bytes(2 * P - 4, &mut buf[..4]).unwrap();
        assert_eq!(buf[..4], [0; 4]);
        assert_eq!(area.read_bytes(size, &mut []), Ok(()));
        assert_eq!(
            area.read_bytes(size - 4, &mut buf),
            Err(AreaAccessError::OutOfBounds { offset: size - 4, len: 8, size })
        );
        assert_eq!(
            area.write_bytes(usize::MAX, &[0; 2]),
            Err(AreaAccessError::OutOfBounds { offset: usize::MAX, len: 2, size })
        );
        assert!(matches!(area.read_bytes(size + 1, &mut []), Err(AreaAccessError::OutOfBounds { .. })));

        let dev = device_window(&space).start;
        let mmio = untracked(&space, 2 * P, 0, dev..dev + 2 * P, prop()).unwrap();
        assert_eq!(mmio.read_bytes(P + 1, &mut buf), Err(AreaAccessError::NotRam(mmio.start() + P + 1)));

        let typed = FrameAllocOptions::new_in(&space).alloc_frame_with(Typed(7)).unwrap();
        let t = space.try_map_frames(P, 0, [typed], prop()).unwrap();
        assert_eq!(t.write_bytes(0, &[1]), Err(AreaAccessError::TypedFrame(t.start())));
        assert_eq!(t.read_bytes(10, &mut buf), Err(AreaAccessError::TypedFrame(t.start() + 10)));
        for e in [AreaAccessError::NotRam(1), AreaAccessError::TypedFrame(1), AreaAccessError::Unmapped(1)] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn untracked_low_memory_is_byte_accessible_and_shared_with_the_frame_view() {
        let space = small_space();
        let area = untracked(&space, 4 * P, P, 0x6000..0x9000, prop()).unwrap();
        let data: Vec<u8> = (0..3 * P).map(|i| (i * 7) as u8).collect();
        area.write_bytes(P, &data).unwrap();
        let mut back = vec![0; 3 * P];
        area.read_bytes(P, &mut back).unwrap();
        assert_eq!(back, data);
        let mut phys = vec![0; 3 * P];
        // SAFETY: Reserved RAM that this test's area maps and nothing else uses.
        unsafe { space.machine() }.unwrap().read_phys(0x6000u64, &mut phys).unwrap();
        assert_eq!(phys, data);
    }

    #[test]
    fn frames_mapped_by_an_area_show_what_the_area_wrote() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap();
        let keep = frames.clone();
        let area = space.try_map_frames(3 * P, 0, frames, prop()).unwrap();
        area.write_bytes(P + 10, b"kvirt").unwrap();
        let mut back = [0; 5];
        keep.read_bytes(P + 10, &mut back).unwrap();
        assert_eq!(&back, b"kvirt");
    }
}

/// Byte access obeys the area's property, page by page, as the MMU would:
/// a write needs `R` and `W`, a read `R`. A refused call touches nothing.
mod access_rights {
    use super::*;

    fn with_flags(flags: PageFlags) -> PageProperty {
        PageProperty::new_kernel(flags, CachePolicy::Writeback)
    }

    #[test]
    fn an_untracked_read_only_area_refuses_writes_and_writes_nothing() {
        let space = small_space();
        // Two views of the same reserved low memory: a writable one to
        // put data there, and a read-only one.
        let rw = untracked(&space, 2 * P, 0, 0x6000..0x8000, prop()).unwrap();
        let ro = untracked(&space, 2 * P, 0, 0x6000..0x8000, with_flags(PageFlags::R)).unwrap();
        let data: Vec<u8> = (0..2 * P).map(|i| (i * 3) as u8).collect();
        rw.write_bytes(0, &data).unwrap();
        assert_eq!(ro.write_bytes(P - 2, b"nope"), Err(AreaAccessError::NotWritable(ro.start() + P - 2)));
        assert_eq!(ro.write_bytes(0, &[0; 2 * P]), Err(AreaAccessError::NotWritable(ro.start())));
        let mut phys = vec![0; 2 * P];
        // SAFETY: Reserved RAM that this test's areas map and nothing else uses.
        unsafe { space.machine() }.unwrap().read_phys(0x6000u64, &mut phys).unwrap();
        assert_eq!(phys, data, "a refused write wrote something");
        let mut back = vec![0; 2 * P];
        ro.read_bytes(0, &mut back).unwrap();
        assert_eq!(back, data, "a read-only area is readable");
    }

    #[test]
    fn a_tracked_read_only_area_refuses_writes_and_writes_nothing() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let keep = frames.clone();
        keep.write_bytes(P - 3, b"kept").unwrap();
        let ro = space.try_map_frames(3 * P, P, frames, with_flags(PageFlags::R)).unwrap();
        assert_eq!(
            ro.write_bytes(2 * P - 3, b"over"),
            Err(AreaAccessError::NotWritable(ro.start() + 2 * P - 3))
        );
        // Unmapped comes first: the first page of the range decides.
        assert_eq!(ro.write_bytes(P - 1, b"xy"), Err(AreaAccessError::Unmapped(ro.start() + P - 1)));
        let mut back = [0; 4];
        keep.read_bytes(P - 3, &mut back).unwrap();
        assert_eq!(&back, b"kept", "a refused write wrote something");
        ro.read_bytes(2 * P - 3, &mut back).unwrap();
        assert_eq!(&back, b"kept", "a read-only area is readable");
    }

    #[test]
    fn an_area_without_read_permission_refuses_reads_and_leaves_the_buffer() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(1).unwrap();
        let keep = frames.clone();
        keep.write_bytes(0, b"secret").unwrap();
        let none = space.try_map_frames(P, 0, frames, with_flags(PageFlags::empty())).unwrap();
        let mut buf = *b"buffer";
        assert_eq!(none.read_bytes(0, &mut buf), Err(AreaAccessError::NotReadable(none.start())));
        assert_eq!(&buf, b"buffer");
        assert_eq!(none.write_bytes(1, b"x"), Err(AreaAccessError::NotWritable(none.start() + 1)));
        let low = untracked(&space, P, 0, 0x6000..0x7000, with_flags(PageFlags::X)).unwrap();
        assert_eq!(low.read_bytes(5, &mut buf), Err(AreaAccessError::NotReadable(low.start() + 5)));
        let mut back = [0; 6];
        keep.read_bytes(0, &mut back).unwrap();
        assert_eq!(&back, b"secret");
        for e in [AreaAccessError::NotWritable(1), AreaAccessError::NotReadable(1)] {
            assert!(e.to_string().contains("0x1"), "{e}");
        }
    }

    #[test]
    fn byte_access_is_refused_where_the_mmu_refuses_it() {
        let space = small_space();
        let cpu = kernel_cpu(&space);
        for flags in
            [PageFlags::R, PageFlags::W, PageFlags::RW, PageFlags::RX, PageFlags::RWX, PageFlags::empty()]
        {
            let area = untracked(&space, P, 0, 0x6000..0x7000, with_flags(flags)).unwrap();
            let mut byte = [0];
            let cpu_read = cpu.read(area.start(), &mut byte).is_ok();
            let cpu_write = cpu.write(area.start(), &[7]).is_ok();
            assert_eq!(area.read_bytes(0, &mut byte).is_ok(), cpu_read, "read with {flags:?}");
            assert_eq!(area.write_bytes(0, &[7]).is_ok(), cpu_write, "write with {flags:?}");
            drop(area);
        }
    }
}

/// What the simulated MMU sees through the kernel page table.
mod mmu {
    use super::*;

    #[test]
    fn mmu_reads_what_write_bytes_wrote() {
        let space = small_space();
        let cpu = kernel_cpu(&space);
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let area = space.try_map_frames(3 * P, P, frames, prop()).unwrap();
        let data: Vec<u8> = (0..200).map(|i| i as u8 ^ 0xa5).collect();
        area.write_bytes(2 * P - 100, &data).unwrap();
        let mut back = vec![0; 200];
        cpu.read(area.start() + 2 * P - 100, &mut back).unwrap();
        assert_eq!(back, data);
        cpu.write(area.start() + P, b"from the cpu").unwrap();
        let mut seen = [0; 12];
        area.read_bytes(P, &mut seen).unwrap();
        assert_eq!(&seen, b"from the cpu");
        let low = untracked(&space, P, 0, 0x7000..0x8000, prop()).unwrap();
        low.write_bytes(8, b"low").unwrap();
        let mut three = [0; 3];
        cpu.read(low.start() + 8, &mut three).unwrap();
        assert_eq!(&three, b"low");
    }

    fn assert_faults_after_drop(space: &KernelSpace, area: KVirtArea) {
        let cpu = kernel_cpu(space);
        let va = area.mapped_range().start;
        cpu.translate(va, Access::READ).expect("mapped before the drop");
        let entries = cpu.tlb_entries();
        assert!(entries > 0);
        drop(area);
        let mut byte = [0];
        let err = cpu.read(va, &mut byte).unwrap_err();
        assert!(
            matches!(err, MemError::Fault(f) if f.va == va && matches!(f.kind, FaultKind::NotPresent { .. })),
            "{err:?}: the TLB kept the dropped area's translation"
        );
    }

    #[test]
    fn mmu_faults_at_a_dropped_tracked_area() {
        let space = small_space();
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let area = space.try_map_frames(2 * P, 0, frames, prop()).unwrap();
        assert_faults_after_drop(&space, area);
    }

    #[test]
    fn mmu_faults_at_a_dropped_huge_untracked_area() {
        let space = small_space();
        let dev = device_window(&space).start;
        let area = untracked(&space, SIZE_2M, 0, dev..dev + SIZE_2M, prop()).unwrap();
        assert_faults_after_drop(&space, area);
        let area = untracked(&space, SIZE_1G, 0, dev..dev + SIZE_1G, prop()).unwrap();
        assert_faults_after_drop(&space, area);
    }

    #[test]
    fn mmu_faults_at_a_dropped_half_of_a_split_area() {
        let space = small_space();
        let dev = device_window(&space).start;
        let area = untracked(&space, SIZE_2M, 0, dev..dev + SIZE_2M, prop()).unwrap();
        let (left, right) = area.split(SIZE_2M / 2);
        let cpu = kernel_cpu(&space);
        // The huge page's TLB entry covers both halves.
        cpu.translate(right.start(), Access::READ).unwrap();
        drop(left);
        let err = cpu.translate(right.start() - P, Access::READ).unwrap_err();
        assert!(matches!(err.kind, FaultKind::NotPresent { .. }), "{err:?}");
        let t = cpu.translate(right.start(), Access::READ).unwrap();
        assert_eq!(t.pa, (dev + SIZE_2M / 2) as u64);
    }

    /// What the drop-order test sees, in the order it happened.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        /// A TLB flush through the platform, with the VMALLOC free bytes at
        /// that moment (`None` before the space exists).
        Flush { op: TlbFlushOp, vmalloc_free: Option<usize> },
        /// The drop hook of the watched frame ran; `translated` says whether
        /// CPU 0 could still translate the area's address then.
        FrameReleased { paddr: Paddr, translated: bool },
    }

    /// The shared record of the drop-order test.
    #[derive(Debug)]
    struct Recorder {
        events: Mutex<Vec<Event>>,
        machine: Arc<Machine>,
        /// The space the platform belongs to, set once it exists.
        space: OnceLock<Weak<KernelSpace>>,
        /// The address whose translation the frame's drop hook probes.
        watched_va: OnceLock<Vaddr>,
    }

    impl Recorder {
        /// Records `event`; a lock poisoned by a failed assertion elsewhere
        /// does not stop the record (a platform hook must not unwind).
        fn push(&self, event: Event) {
            self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(event);
        }
    }

    // SAFETY: recording reads VMALLOC counters, touches no RAM and does not
    // unwind (`push` goes on past a poisoned lock).
    unsafe impl Hooks for Arc<Recorder> {
        /// Records the flush with the VMALLOC free bytes at that moment.
        fn on_flush(&self, op: &TlbFlushOp, _scope: TlbScope) {
            let space = self.space.get().and_then(Weak::upgrade);
            let vmalloc_free = space.map(|s| s.vmalloc_stats().free_bytes);
            self.push(Event::Flush { op: op.clone(), vmalloc_free });
        }
    }

    /// Typed metadata whose drop hook records when the frame is released,
    /// and whether CPU 0 could still reach it through the dropped area.
    #[derive(Debug)]
    struct Watched {
        recorder: Arc<Recorder>,
    }

    impl AnyFrameMeta for Watched {
        fn on_drop(&mut self, paddr: Paddr) {
            let va = *self.recorder.watched_va.get().expect("set before the drop");
            let translated = self.recorder.machine.cpu(0).translate(va, Access::READ).is_ok();
            self.recorder.push(Event::FrameReleased { paddr, translated });
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// docs/DESIGN.md section 4: `Drop` issues the TLB invalidation of the range
    /// before the frame is released and before the range goes back to
    /// VMALLOC.
    /// A space over a recording platform, with the recorder wired to it.
    fn recording_space() -> (Arc<Machine>, Arc<Recorder>, Arc<KernelSpace>) {
        let mut recorder = None;
        // SAFETY: the recorder only translates through CPU 0's MMU (the
        // kernel page table, which a CPU may walk) and reads VMALLOC
        // counters; the tests that use it do the same.
        let (machine, space) = unsafe {
            hooked_space(MachineConfig::new(64 << 20), |machine| {
                let made = Arc::new(Recorder {
                    events: Mutex::new(Vec::new()),
                    machine: machine.clone(),
                    space: OnceLock::new(),
                    watched_va: OnceLock::new(),
                });
                recorder = Some(made.clone());
                made
            })
        };
        let (recorder, space) = (recorder.expect("made with the space"), Arc::new(space));
        recorder.space.set(Arc::downgrade(&space)).unwrap();
        (machine, recorder, space)
    }

    /// A 2-page area with a watched frame on its second page, the frame's
    /// address, and the page's translation cached in CPU 0's TLB.
    fn watched_area(space: &KernelSpace, recorder: &Arc<Recorder>) -> (KVirtArea, Paddr) {
        let frame = FrameAllocOptions::new_in(space)
            .alloc_frame_with(Watched { recorder: recorder.clone() })
            .unwrap();
        let paddr = frame.paddr();
        let area = space.try_map_frames(2 * P, P, [frame], prop()).unwrap();
        recorder.watched_va.set(area.mapped_range().start).unwrap();
        let cpu = recorder.machine.cpu(0);
        cpu.set_root(space.kernel_root_paddr() as u64);
        cpu.translate(area.mapped_range().start, Access::READ).expect("mapped");
        (area, paddr)
    }

    #[test]
    fn drop_flushes_before_frames_and_range_are_released() {
        let (_machine, recorder, space) = recording_space();
        let before = space.vmalloc_stats();

        let (area, paddr) = watched_area(&space, &recorder);
        let mapped = area.mapped_range();
        let alive = space.vmalloc_stats();
        assert_eq!(alive.free_bytes, before.free_bytes - 2 * P - GUARD_SIZE);
        // The translation is cached in CPU 0's TLB: only a flush removes it.
        recorder.events.lock().unwrap().clear();

        drop(area);

        let events = recorder.events.lock().unwrap().clone();
        let flush = events
            .iter()
            .position(|e| matches!(e, Event::Flush { op: TlbFlushOp::Range(r), .. } if *r == mapped))
            .unwrap_or_else(|| panic!("no flush of {mapped:#x?}: {events:?}"));
        let released = events
            .iter()
            .position(|e| matches!(e, Event::FrameReleased { .. }))
            .unwrap_or_else(|| panic!("the frame was not released: {events:?}"));
        assert!(flush < released, "the frame was released before the flush: {events:?}");
        assert_eq!(events[released], Event::FrameReleased { paddr, translated: false });
        let Event::Flush { vmalloc_free, .. } = &events[flush] else { unreachable!() };
        assert_eq!(*vmalloc_free, Some(alive.free_bytes), "the range was freed before the flush");
        // After the drop the range and its guard are free again.
        assert_eq!(space.vmalloc_stats(), before);
        assert!(space.areas().is_empty());
        assert!(space.inv());
    }

    /// Lazy purge keeps the guarantee: a lazy drop unmaps at once but
    /// neither flushes nor releases; the purge flushes once, on all CPUs,
    /// and only then frees the range and releases the frame.
    #[test]
    fn lazy_drop_defers_flush_and_release_to_the_purge() {
        let (machine, recorder, space) = recording_space();
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
        let before = space.vmalloc_stats();

        let (area, paddr) = watched_area(&space, &recorder);
        let mapped = area.mapped_range();
        let alive = space.vmalloc_stats();
        let cpu = machine.cpu(0);
        recorder.events.lock().unwrap().clear();

        drop(area);

        // Unmapped and unregistered at once; nothing flushed or released.
        assert_eq!(recorder.events.lock().unwrap().clone(), Vec::<Event>::new());
        assert!(space.areas().is_empty());
        let mut cursor = space.kernel_cursor(&mapped).unwrap();
        assert_eq!(cursor.find_next(mapped.len()), None, "still mapped after the drop");
        drop(cursor);
        assert_eq!(space.vmalloc_stats(), alive, "the range was freed before a flush");
        assert_eq!(
            space.purge_stats(),
            PurgeStats { pending_areas: 1, pending_pages: 3, purges: 0, purged_areas: 0, flushes: 0 }
        );
        // The stale translation is still cached, and the frame behind it
        // is still the area's. (The invariant is checked with areas
        // pending in `lazy_purge_flushes_once_for_many_drops`: checking
        // reclaims emptied page-table nodes, with flushes of their own.)
        assert!(cpu.translate(mapped.start, Access::READ).is_ok());

        space.purge();

        let events = recorder.events.lock().unwrap().clone();
        assert_eq!(events.len(), 2, "one flush, one release: {events:?}");
        let Event::Flush { op: TlbFlushOp::Range(r), vmalloc_free } = &events[0] else {
            panic!("the purge did not flush first: {events:?}");
        };
        assert!(r.start <= mapped.start && mapped.end <= r.end, "the flush {r:#x?} misses {mapped:#x?}");
        assert_eq!(*vmalloc_free, Some(alive.free_bytes), "the range was freed before the flush");
        assert_eq!(events[1], Event::FrameReleased { paddr, translated: false });
        assert_eq!(space.vmalloc_stats(), before);
        assert_eq!(
            space.purge_stats(),
            PurgeStats { pending_areas: 0, pending_pages: 0, purges: 1, purged_areas: 1, flushes: 1 }
        );
        assert!(space.inv());
    }

    /// One purge serves many drops with a single flush over their span.
    #[test]
    fn lazy_purge_flushes_once_for_many_drops() {
        let (_machine, recorder, space) = recording_space();
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
        let before = space.vmalloc_stats();
        let areas: Vec<_> = (0..8)
            .map(|_| {
                let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
                space.try_map_frames(P, 0, [frame], prop()).unwrap()
            })
            .collect();
        let spans: Vec<_> = areas.iter().map(KVirtArea::mapped_range).collect();
        recorder.events.lock().unwrap().clear();
        drop(areas);
        assert_eq!(space.purge_stats().pending_areas, 8);
        assert!(space.inv());
        recorder.events.lock().unwrap().clear();
        space.purge();
        let flushes: Vec<_> = recorder
            .events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Flush { op: TlbFlushOp::Range(r), .. } => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(flushes.len(), 1, "{flushes:#x?}");
        for s in &spans {
            assert!(flushes[0].start <= s.start && s.end <= flushes[0].end);
        }
        assert_eq!(space.vmalloc_stats(), before);
        assert!(space.inv());
    }

    /// Reaching the threshold purges from the drop itself.
    #[test]
    fn lazy_drop_purges_at_the_threshold() {
        let (_machine, _recorder, space) = recording_space();
        // Each one-page area holds two VMALLOC pages with its guard.
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: 6 });
        for i in 1..=3 {
            drop(space.try_map_frames(
                P,
                0,
                [FrameAllocOptions::new_in(&space).alloc_frame().unwrap()],
                prop(),
            ));
            let stats = space.purge_stats();
            if i < 3 {
                assert_eq!((stats.pending_areas, stats.purges), (i, 0));
            } else {
                assert_eq!((stats.pending_areas, stats.purges, stats.purged_areas), (0, 1, 3));
            }
        }
        // Going eager purges what is queued.
        drop(space.try_map_frames(P, 0, [FrameAllocOptions::new_in(&space).alloc_frame().unwrap()], prop()));
        assert_eq!(space.purge_stats().pending_areas, 1);
        space.set_purge_mode(PurgeMode::Eager);
        assert_eq!(space.purge_stats().pending_areas, 0);
        assert_eq!(space.purge_mode(), PurgeMode::Eager);
        assert!(space.inv());
    }

    /// The drop that reaches the threshold purges its own CPU's queue, and
    /// the other CPUs' queues only while the pages still queued are at the
    /// threshold.
    #[test]
    fn a_drop_at_the_threshold_purges_its_own_cpu_first() {
        let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20).cpus(2));
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: 6 });
        let drop_one_on = |cpu| {
            kvirt::platform::hosted::set_current_cpu(cpu);
            let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
            drop(space.try_map_frames(P, 0, [frame], prop()));
            kvirt::platform::hosted::set_current_cpu(0);
        };
        let counts = || {
            let s = space.purge_stats();
            (s.pending_areas, s.pending_pages, s.purges, s.purged_areas)
        };
        // Two pages an area, its guard included.
        drop_one_on(1);
        drop_one_on(0);
        assert_eq!(counts(), (2, 4, 0, 0));
        // CPU 0 reaches 6 pages: its own queue (4 pages) goes, CPU 1's
        // stays, as 2 pages are below the threshold.
        drop_one_on(0);
        assert_eq!(counts(), (1, 2, 1, 2));
        assert!(space.inv());

        // With a lower threshold, CPU 0's own queue is not enough: the
        // drop purges CPU 1's queue too.
        drop_one_on(1);
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: 4 });
        drop_one_on(0);
        assert_eq!(counts(), (0, 0, 3, 5));
        assert!(space.inv());
    }

    /// An eager drop that takes back the first page of a right half dropped
    /// before it (that half's guard for us) flushes that page and its own
    /// mapped pages in one flush, not one each.
    #[test]
    fn an_eager_drop_taking_back_a_page_flushes_once() {
        let (_machine, recorder, space) = recording_space();
        let frames = FrameAllocOptions::new_in(&*space).alloc_segment(4).unwrap();
        let area = space.try_map_frames(4 * P, 0, frames, prop()).unwrap();
        let (left, right) = area.split(2 * P);
        let (mapped, page) = (left.mapped_range(), right.start());
        drop(right);
        let seen = recorder.events.lock().unwrap().len();
        drop(left);
        let flushes: Vec<Range<Vaddr>> = recorder.events.lock().unwrap()[seen..]
            .iter()
            .filter_map(|e| match e {
                Event::Flush { op: TlbFlushOp::Range(r), .. } if r.contains(&page) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(flushes.len(), 1, "one flush covers the page: {flushes:#x?}");
        assert_eq!(flushes[0], mapped.start..page + P, "and the left half's mapped pages");
        assert_eq!(space.check(), Ok(()));
    }

    /// A right half dropped before its left neighbour leaves its first page
    /// (which it mapped) as the left half's guard, and the left half frees
    /// it. With the halves' drops queued on different CPUs' purge queues,
    /// the left half's queue may be purged first: its flush must cover that
    /// page, or the page goes back to VMALLOC while another CPU still
    /// caches its old translation. (Found by an independent review.)
    #[test]
    fn a_page_a_split_half_leaves_its_neighbour_is_flushed_before_reuse() {
        let space = KernelSpace::new_hosted(MachineConfig::new(32 << 20).cpus(2));
        // SAFETY: the test only sets the CPUs' roots and reads their TLBs.
        let machine = unsafe { space.machine() }.expect("a hosted space").clone();
        for cpu in 0..2 {
            machine.cpu(cpu).set_root(space.kernel_root_paddr() as u64);
        }
        kvirt::platform::hosted::set_current_cpu(0);
        space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: 2 });
        let frames: Vec<_> =
            (0..3).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap()).collect();
        let area = space.try_map_frames(3 * P, 0, frames, prop()).unwrap();
        let a = area.start();
        let (l, r) = area.split(P);
        let (r1, r2) = r.split(P);
        // CPU 1 caches the page of the middle half.
        machine.cpu(1).translate(a + P, Access::READ).expect("mapped");
        // The middle half goes first, from CPU 1: its flush waits in CPU 1's
        // queue, and its first page becomes the left half's guard.
        kvirt::platform::hosted::set_current_cpu(1);
        drop(r1);
        kvirt::platform::hosted::set_current_cpu(0);
        // CPU 0's queue reaches the threshold and is purged alone, twice.
        drop(l);
        drop(r2);
        assert_eq!(space.purge_stats().pending_areas, 1, "the middle half still waits on CPU 1's queue");
        let frames: Vec<_> =
            (0..3).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap()).collect();
        let new = space.try_map_frames(3 * P, 0, frames, prop()).unwrap();
        assert_eq!(new.start(), a, "the freed pages are reused");
        let stale: Vec<_> = machine
            .cpu(1)
            .tlb_snapshot()
            .into_iter()
            .filter(|(page, _)| page.start < new.end() && new.start() < page.end)
            .collect();
        assert!(
            stale.is_empty(),
            "the new area {:#x?} reuses a page CPU 1 still caches: {stale:x?}",
            new.range()
        );
        assert_eq!(space.check(), Ok(()));
    }
}

/// docs/DESIGN.md section 4: page-table nodes and frames come back.
mod leaks {
    use super::*;

    /// Three threads create areas, read them through lock-free
    /// translations and a kernel cursor, and drop them, while a fourth
    /// switches the purge mode between eager and lazy (with small
    /// thresholds) 2000 times: afterwards nothing waits, nothing leaked,
    /// and the space is consistent. (From an independent review.)
    #[test]
    fn switching_purge_modes_while_threads_churn_leaks_nothing() {
        let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20).cpus(4));
        let baseline = space.phys_stats();
        std::thread::scope(|s| {
            for cpu in 0..3 {
                let space = &space;
                s.spawn(move || {
                    kvirt::platform::hosted::set_current_cpu(cpu);
                    for i in 0..300 {
                        let n = 1 + i % 5;
                        let frames: Vec<_> =
                            (0..n).map(|_| FrameAllocOptions::new_in(space).alloc_frame().unwrap()).collect();
                        let area = space.try_map_frames(n * P, 0, frames, prop()).unwrap();
                        for k in 0..n {
                            assert!(space.kernel_translate(area.start() + k * P).is_some());
                        }
                        {
                            let mut c = space.kernel_cursor(&area.range()).unwrap();
                            assert_eq!(c.find_next(area.size()), Some(area.start()));
                        }
                        drop(area);
                    }
                });
            }
            s.spawn(|| {
                kvirt::platform::hosted::set_current_cpu(3);
                for i in 0..2000 {
                    space.set_purge_mode(if i % 2 == 0 {
                        PurgeMode::Lazy { max_pending_pages: 1 + i % 7 }
                    } else {
                        PurgeMode::Eager
                    });
                    std::thread::yield_now();
                }
            });
        });
        space.set_purge_mode(PurgeMode::Eager);
        space.synchronize();
        assert_eq!(space.purge_stats().pending_areas, 0);
        assert!(space.inv());
        let after = space.phys_stats();
        assert_eq!(
            after.used_pages, baseline.used_pages,
            "frames or nodes leaked: {baseline:?} -> {after:?}"
        );
    }

    #[test]
    fn dropping_every_area_returns_frames_and_page_table_nodes() {
        let space = small_space();
        let baseline = snapshot(&space);
        let dev = device_window(&space).start;
        let mut areas = Vec::new();
        for i in 0..64 {
            let frames = FrameAllocOptions::new_in(&space).alloc_segment(1 + i % 8).unwrap();
            areas.push(
                space.try_map_frames((1 + i % 8) * P + (i % 3) * P, (i % 3) * P, frames, prop()).unwrap(),
            );
            areas.push(untracked(&space, SIZE_2M + P, P, dev..dev + SIZE_2M, prop()).unwrap());
            areas.push(untracked(&space, 2 * P, 0, 0x1000 * (1 + i)..0x1000 * (2 + i), prop()).unwrap());
        }
        assert!(space.phys_stats().page_table_pages > baseline.phys.page_table_pages);
        assert!(space.inv());
        // Drop in an order unlike creation.
        while !areas.is_empty() {
            let i = (areas.len() * 7 + 3) % areas.len();
            drop(areas.swap_remove(i));
        }
        assert_eq!(snapshot(&space), baseline);
        assert!(space.inv());
    }

    /// A kernel space reclaims emptied page-table nodes in batches. A node
    /// waits in that queue once, however often it is emptied; a reclaim
    /// that finds it filled again leaves it, and it is queued afresh the
    /// next time it empties.
    #[test]
    fn a_node_filled_again_before_its_reclaim_is_reclaimed_when_it_empties_next() {
        let space = small_space();
        let baseline = snapshot(&space);
        let one_page = |space: &KernelSpace| {
            let frame = FrameAllocOptions::new_in(space).alloc_frame().unwrap();
            space.try_map_frames(P, 0, [frame], prop()).unwrap()
        };
        // The same range each time, so the same leaf, emptied three times
        // (no check in between: `inv` reclaims the queue first).
        for _ in 0..3 {
            drop(one_page(&space));
        }
        // Filled again, then the queue is reclaimed: the leaf is in use.
        let area = one_page(&space);
        space.synchronize();
        assert!(space.phys_stats().page_table_pages > baseline.phys.page_table_pages);
        // Emptied once more: queued again, so reclaimed now.
        drop(area);
        assert_eq!(snapshot(&space), baseline);
        assert!(space.inv());
    }

    #[test]
    fn a_shared_frame_stays_alive_until_its_last_mapping_goes() {
        let space = small_space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let pa = frame.paddr();
        let a = space.try_map_frames(P, 0, [frame.clone()], prop()).unwrap();
        let b = space.try_map_frames(2 * P, 0, [frame.clone(), frame.clone()], prop()).unwrap();
        assert_eq!(frame.reference_count(), 4);
        assert_eq!(spec::frame_ref_count(&space, pa), 4);
        drop(frame);
        drop(a);
        space.synchronize();
        assert_eq!(spec::frame_ref_count(&space, pa), 2);
        b.write_bytes(P, b"still here").unwrap();
        let mut back = [0; 10];
        b.read_bytes(0, &mut back).unwrap();
        assert_eq!(&back, b"still here");
        drop(b);
        space.synchronize();
        assert_eq!(spec::frame_ref_count(&space, pa), 0);
        assert!(space.inv());
    }
}

/// A caller-supplied callback that panics while an area is made or used
/// (the frame iterator of `try_map_frames`, a frame's `as_untyped` during
/// byte access) leaves the space consistent and leaks nothing. Unwinding
/// through an area's drop (possible only through the platform: a frame's
/// drop hook that panics aborts) still gives the range back.
mod panicking_callbacks {
    use kvirt::frame::AnyUFrameMeta;

    use super::*;

    /// Metadata whose `as_untyped` panics.
    #[derive(Debug)]
    struct PanickingAsUntyped;

    impl AnyFrameMeta for PanickingAsUntyped {
        fn as_untyped(&self) -> Option<&dyn AnyUFrameMeta> {
            panic!("as_untyped panics");
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// Hooks making `call_rcu` panic once, the first time it is called
    /// after a TLB flush of `armed_by`: in `KVirtArea::drop`, while the
    /// fragments taken out of the page table are released.
    #[derive(Debug, Default)]
    struct PanicAfterFlush {
        armed_by: Mutex<Option<Range<Vaddr>>>,
        armed: std::sync::atomic::AtomicBool,
    }

    // SAFETY: only `on_call_rcu` panics (rule 5 lets `call_rcu` unwind),
    // and the one callback it refuses that way is never run, so rule 4
    // holds for the others; no hook touches RAM.
    unsafe impl Hooks for Arc<PanicAfterFlush> {
        fn on_flush(&self, op: &TlbFlushOp, _scope: TlbScope) {
            if matches!((op, &*self.armed_by.lock().unwrap()), (TlbFlushOp::Range(r), Some(a)) if r == a) {
                self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }

        fn on_call_rcu(&self) {
            if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                panic!("call_rcu panics");
            }
        }
    }

    /// If releasing what an area mapped unwinds (here: the platform's
    /// `call_rcu` panics for a detached sub-tree), the area's range and
    /// registry entry have been given back already.
    #[test]
    fn an_area_drop_unwinding_while_releasing_its_pages_still_frees_its_range() {
        let hooks = Arc::new(PanicAfterFlush::default());
        // SAFETY: neither the hooks nor the test touch the machine.
        let (_, space) = unsafe { hooked_space(MachineConfig::new(64 << 20), |_| hooks.clone()) };
        let before = snapshot(&space);
        // 4 MiB of frames: the mapped part holds a whole 2 MiB-aligned span,
        // whose leaf node the drop takes out as one detached sub-tree.
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(1024).unwrap();
        let area = space.try_map_frames(1024 * P, 0, frames, prop()).unwrap();
        *hooks.armed_by.lock().unwrap() = Some(area.mapped_range());
        let result = catch_unwind(AssertUnwindSafe(|| drop(area)));
        assert!(result.is_err(), "the platform's panic reaches the caller");
        assert!(space.areas().is_empty(), "the area is unregistered");
        assert_eq!(space.vmalloc_stats(), before.vmalloc, "the area's range and guard are free");
        assert_eq!(kernel_view(&space, &VMALLOC_VADDR_RANGE), before.vmalloc_view, "nothing stays mapped");
        assert_eq!(space.check(), Ok(()));
    }

    #[test]
    fn a_frame_iterator_panicking_while_an_area_is_made_changes_nothing() {
        let space = small_space();
        let before = snapshot(&space);
        for panic_at in [0, 1, 3] {
            let frames = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
            let mut handed_over = 0;
            let result = catch_unwind(AssertUnwindSafe(|| {
                let frames = frames.into_iter().inspect(|_| {
                    assert_ne!(handed_over, panic_at, "the frame iterator panics");
                    handed_over += 1;
                });
                space.try_map_frames(4 * P, 0, frames, prop())
            }));
            assert!(result.is_err(), "the iterator's panic reaches the caller (panic at {panic_at})");
            assert_eq!(space.check(), Ok(()), "panic at {panic_at}");
            assert_eq!(snapshot(&space), before, "panic at {panic_at}");
        }
        let frames = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let area = space.try_map_frames(4 * P, 0, frames, prop()).unwrap();
        assert!(area.inv());
        drop(area);
        assert_eq!(snapshot(&space), before);
    }

    #[test]
    fn an_as_untyped_panicking_during_byte_access_leaves_the_area_intact() {
        let space = small_space();
        let before = snapshot(&space);
        let opts = FrameAllocOptions::new_in(&space);
        let untyped = opts.alloc_frame().unwrap().into_dyn();
        let typed = opts.alloc_frame_with(PanickingAsUntyped).unwrap().into_dyn();
        let area = space.try_map_frames(2 * P, 0, [untyped, typed], prop()).unwrap();
        area.write_bytes(P - 4, b"kept").unwrap();
        // Each access reaches the second page, whose `as_untyped` panics
        // while the pages are checked, before any byte is copied.
        let write = catch_unwind(AssertUnwindSafe(|| area.write_bytes(P - 2, b"lost")));
        assert!(write.is_err());
        let mut buf = [0xaa; 8];
        let read = catch_unwind(AssertUnwindSafe(|| area.read_bytes(P - 4, &mut buf)));
        assert!(read.is_err());
        assert_eq!(buf, [0xaa; 8], "the buffer is untouched");
        assert_eq!(area.check(), Ok(()));
        assert_eq!(space.check(), Ok(()));
        let mut back = [0; 4];
        area.read_bytes(P - 4, &mut back).unwrap();
        assert_eq!(&back, b"kept", "the panicking write wrote nothing");
        drop(area);
        assert_eq!(snapshot(&space), before);
    }
}
