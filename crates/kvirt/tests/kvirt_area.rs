//! The reference's KVirtArea behaviours, on the default space and on
//! isolated spaces.

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::{
    paddr_to_vaddr, KVirtArea, KVirtAreaError, KernelSpace, MappedItemRef, LINEAR_MAPPING_BASE_VADDR,
    VMALLOC_VADDR_RANGE,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::sim::MachineConfig;
use kvirt::spec::Inv;
use kvirt::PAGE_SIZE;

fn prop() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

fn small_space() -> KernelSpace {
    KernelSpace::new_hosted(MachineConfig::new(64 << 20))
}

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
    // SAFETY: reserved simulated RAM that nothing else uses.
    let area = unsafe { space.try_map_untracked_frames(2 * PAGE_SIZE, 0, pa.clone(), prop()) }.unwrap();
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
    assert_eq!(keep.reference_count(), 1);
    drop(keep);
    space.synchronize();
    assert_eq!((space.phys_stats(), space.vmalloc_stats()), before);
    // SAFETY: nothing is mapped.
    let fresh = unsafe { space.try_map_untracked_frames(PAGE_SIZE, 0, 0..0, prop()) }.unwrap();
    assert_eq!(fresh.start(), start, "the freed range is reused");
    assert!(fresh.query(fresh.start()).is_none());
}

#[test]
fn kvirt_area_untracked_drop() {
    let space = small_space();
    // SAFETY: nothing is mapped.
    let area = unsafe { space.try_map_untracked_frames(PAGE_SIZE, 0, 0..0, prop()) }.unwrap();
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

#[test]
fn huge_untracked_mapping_uses_huge_pages() {
    let space = small_space();
    let dev = space.machine().unwrap().device_window();
    let pa = dev.start as usize..dev.start as usize + (1 << 30);
    // SAFETY: the simulated device window.
    let area = unsafe { space.try_map_untracked_frames(1 << 30, 0, pa.clone(), prop()) }.unwrap();
    assert_eq!(area.query(area.start() + 12345), Some(MappedItemRef::Untracked(pa.start, 3, prop())));
    let two_m = pa.start..pa.start + (4 << 20);
    // SAFETY: as above.
    let area2 = unsafe { space.try_map_untracked_frames(4 << 20, 0, two_m.clone(), prop()) }.unwrap();
    assert_eq!(
        area2.query(area2.start() + (2 << 20)),
        Some(MappedItemRef::Untracked(two_m.start + (2 << 20), 2, prop()))
    );
    assert!(space.inv());
}

#[test]
fn every_rejection_changes_nothing() {
    let space = small_space();
    let snapshot = |s: &KernelSpace| (s.phys_stats(), s.vmalloc_stats(), s.areas());
    let keep = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
    let before = snapshot(&space);
    let frames = || keep.clone().into_iter();
    let user = PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback);
    let tracked = |size, off, p| space.try_map_frames(size, off, frames(), p).map(drop);
    assert_eq!(tracked(0, 0, prop()), Err(KVirtAreaError::ZeroSize));
    assert_eq!(tracked(PAGE_SIZE + 1, 0, prop()), Err(KVirtAreaError::MisalignedSize(PAGE_SIZE + 1)));
    assert_eq!(tracked(8 * PAGE_SIZE, 1, prop()), Err(KVirtAreaError::MisalignedOffset(1)));
    assert!(matches!(
        tracked(8 * PAGE_SIZE, 8 * PAGE_SIZE, prop()),
        Err(KVirtAreaError::OffsetOutOfArea { .. })
    ));
    assert!(matches!(
        tracked(4 * PAGE_SIZE, PAGE_SIZE, prop()),
        Err(KVirtAreaError::MappingExceedsArea { .. })
    ));
    assert_eq!(tracked(8 * PAGE_SIZE, 0, user), Err(KVirtAreaError::UserAccessible));
    let untracked = |size, off, pa: std::ops::Range<usize>| {
        // SAFETY: every call here is rejected before mapping anything.
        unsafe { space.try_map_untracked_frames(size, off, pa, prop()) }.map(drop)
    };
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 0x2000..0x1000;
    assert!(matches!(untracked(PAGE_SIZE, 0, reversed), Err(KVirtAreaError::ReversedPaddrRange(_))));
    assert!(matches!(untracked(PAGE_SIZE, 0, 0x1000..0x1800), Err(KVirtAreaError::MisalignedPaddr(_))));
    let tracked_pa = keep.paddr()..keep.paddr() + PAGE_SIZE;
    assert!(matches!(untracked(PAGE_SIZE, 0, tracked_pa), Err(KVirtAreaError::TrackedPaddr(_))));
    assert!(matches!(
        untracked(PAGE_SIZE, 0, 1 << 52..(1 << 52) + PAGE_SIZE),
        Err(KVirtAreaError::PaddrTooLarge(_))
    ));
    assert!(matches!(
        untracked(2 * PAGE_SIZE, usize::MAX & !0xfff, 0..PAGE_SIZE),
        Err(KVirtAreaError::OffsetOutOfArea { .. })
    ));
    assert!(matches!(
        untracked(usize::MAX & !0xfff, 2 * PAGE_SIZE, 0..usize::MAX & !0xfff),
        Err(KVirtAreaError::MappingExceedsArea { .. })
    ));
    space.synchronize();
    assert_eq!(snapshot(&space), before);
}

#[test]
#[should_panic(expected = "outside the area")]
fn query_at_end_panics() {
    // SAFETY: nothing is mapped.
    let area = unsafe { KVirtArea::map_untracked_frames(PAGE_SIZE, 0, 0..0, prop()) };
    let _ = area.query(area.end());
}

#[test]
#[should_panic(expected = "exceeds the area size")]
fn too_many_frames_panics() {
    let frames = FrameAllocOptions::new().alloc_segment(3).unwrap();
    let _ = KVirtArea::map_frames(2 * PAGE_SIZE, 0, frames, prop());
}

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
        Err(kvirt::kspace::AreaAccessError::Unmapped(area.start() + 2 * PAGE_SIZE))
    );
    assert!(matches!(
        area.read_bytes(3 * PAGE_SIZE - 1, &mut back[..2]),
        Err(kvirt::kspace::AreaAccessError::OutOfBounds { .. })
    ));
}
