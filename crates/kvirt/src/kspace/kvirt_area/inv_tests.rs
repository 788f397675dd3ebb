//! `KVirtArea::check` (with `check_with_space`) and `KernelSpace::check`
//! catch each kind of corruption they name. Every test breaks one thing,
//! expects the clause, and repairs it (both checks must pass again), so
//! that the space drops cleanly; the tests that forge an area with a broken
//! range `mem::forget` it instead, since its drop would free that range.

use super::*;
use crate::frame::{FrameAllocOptions, REF_COUNT_MAX, REF_COUNT_UNUSED};
use crate::kspace::AreaKind;
use crate::page_prop::{CachePolicy, PageFlags};
use crate::page_table::MappedItem;
use crate::spec::Inv;

const P: usize = PAGE_SIZE;

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// A fresh space and an area of 4 pages with 2 frames mapped from page 1,
/// both intact.
fn space_and_area() -> (KernelSpace, KVirtArea) {
    let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20));
    let frames = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
    let area = space.try_map_frames(4 * P, P, frames, rw()).unwrap();
    assert_eq!((space.check(), area.check()), (Ok(()), Ok(())));
    (space, area)
}

fn assert_repaired(space: &KernelSpace, area: &KVirtArea) {
    assert_eq!((space.check(), area.check()), (Ok(()), Ok(())), "the test did not repair what it broke");
}

#[test]
fn a_used_slot_with_an_impossible_count_is_reported() {
    let (space, area) = space_and_area();
    let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
    let slot = space.phys().slot(frame.paddr());
    let old = slot.swap_ref_count(REF_COUNT_MAX + 1);
    assert_eq!(space.check(), Err("a used slot is neither shared nor unique"));
    slot.swap_ref_count(old);
    assert_repaired(&space, &area);
}

#[test]
fn a_free_page_whose_slot_is_in_use_is_reported() {
    let (space, area) = space_and_area();
    let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
    let pa = frame.paddr();
    drop(frame);
    let slot = space.phys().slot(pa);
    assert_eq!(slot.swap_ref_count(1), REF_COUNT_UNUSED);
    assert_eq!(space.check(), Err("a page is free in the allocator but its slot is in use, or the reverse"));
    slot.swap_ref_count(REF_COUNT_UNUSED);
    assert_repaired(&space, &area);
}

#[test]
fn a_mapped_frame_with_a_dead_count_is_reported_through_the_page_table() {
    let (space, area) = space_and_area();
    let Some(MappedItemRef::Tracked(frame, _)) = area.query(area.mapped_range().start) else {
        panic!("a tracked frame is mapped there");
    };
    let slot = space.phys().slot(frame.paddr());
    let old = slot.swap_ref_count(REF_COUNT_MAX + 1);
    // `KernelSpace::check` starts with the kernel page table's invariant.
    assert_eq!(space.check(), Err("a tracked leaf is not a live 4 KiB frame"));
    slot.swap_ref_count(old);
    assert_repaired(&space, &area);
}

#[test]
fn a_vmalloc_block_missing_from_the_size_index_is_reported() {
    let (space, area) = space_and_area();
    let stray = area.end() + 64 * P;
    assert_eq!(space.vmalloc().lock_allocator().by_end_mut().insert(stray + P, stray), None);
    assert_eq!(space.check(), Err("the VMALLOC allocator's invariant is broken"));
    space.vmalloc().lock_allocator().by_end_mut().remove(&(stray + P));
    assert_repaired(&space, &area);
}

#[test]
fn an_area_range_freed_behind_its_back_is_reported() {
    let (space, area) = space_and_area();
    space.vmalloc().free(area.range()).unwrap();
    assert_eq!(space.check(), Err("an area's range is free in VMALLOC"));
    assert_eq!(area.check(), Err("the area or its guard is free in VMALLOC"));
    // Best fit takes back exactly the freed block: an allocation of one
    // page less than the area, plus its guard page.
    let again = space.vmalloc().alloc(area.size() - GUARD_SIZE, P, 0).unwrap();
    assert_eq!(again.start, area.start());
    assert_repaired(&space, &area);
}

#[test]
fn a_freed_guard_is_reported() {
    let (space, area) = space_and_area();
    let guard = area.end()..area.end() + GUARD_SIZE;
    space.vmalloc().free(guard.clone()).unwrap();
    assert_eq!(area.check(), Err("the area or its guard is free in VMALLOC"));
    // The area sits at the bottom of VMALLOC and the guard merged with the
    // free rest above it: the lowest page of that one block is the guard.
    let mut vmalloc = space.vmalloc().lock_allocator();
    assert_eq!(vmalloc.free_ranges().count(), 1);
    assert_eq!(vmalloc.alloc(GUARD_SIZE, P), Ok(guard));
    drop(vmalloc);
    assert_repaired(&space, &area);
}

#[test]
fn a_registry_entry_unlike_the_area_is_reported() {
    let (space, area) = space_and_area();
    let registry = &space.inner().registry;
    let info = registry.remove(area.start()).unwrap();
    registry.insert(AreaInfo { mapped: area.range(), ..info.clone() });
    assert_eq!(area.check(), Err("the area is not registered as it is"));
    registry.remove(area.start());
    assert_eq!(area.check(), Err("the area is not registered as it is"));
    registry.insert(info);
    assert_repaired(&space, &area);
}

#[test]
fn overlapping_registry_entries_are_reported() {
    let (space, area) = space_and_area();
    let registry = &space.inner().registry;
    let overlapping = area.start() + P..area.end() + P;
    registry.insert(AreaInfo {
        range: overlapping.clone(),
        mapped: overlapping.clone(),
        kind: AreaKind::Tracked,
        label: None,
    });
    assert_eq!(space.check(), Err("two areas overlap"));
    registry.remove(overlapping.start);
    assert_repaired(&space, &area);
}

#[test]
fn a_registry_entry_outside_vmalloc_is_reported() {
    let (space, area) = space_and_area();
    let registry = &space.inner().registry;
    let linear = X86_64Layout::LINEAR_MAPPING_VADDR_RANGE.expect("x86-64 has a linear mapping");
    let outside = linear.start..linear.start + P;
    registry.insert(AreaInfo {
        range: outside.clone(),
        mapped: outside.clone(),
        kind: AreaKind::Untracked,
        label: None,
    });
    assert_eq!(space.check(), Err("an area is outside VMALLOC"));
    registry.remove(outside.start);
    assert_repaired(&space, &area);
}

#[test]
fn a_mapping_in_the_guard_or_the_unmapped_part_is_reported() {
    let (space, area) = space_and_area();
    // Reserved low memory: never handed out, so it may be mapped untracked.
    let low: Paddr = 0x8000;
    for page in [area.end(), area.start()] {
        let pt = &space.inner().kernel_pt;
        let mut cursor = pt.cursor_mut(&(page..page + P)).unwrap();
        cursor.map(MappedItem::Untracked(low, 1, rw()));
        drop(cursor);
        assert_eq!(
            area.check(),
            Err("something is mapped in the area outside its mapped part, or in its guard")
        );
        let mut cursor = pt.cursor_mut(&(page..page + P)).unwrap();
        let frag = cursor.take_next(P).expect("the page just mapped");
        drop(cursor);
        space.platform().flush_tlb(TlbFlushOp::Range(page..page + P), TlbScope::AllCpus);
        drop(frag);
        assert_repaired(&space, &area);
    }
}

/// An area with `range` and `mapped` in `space`, built without allocating
/// or registering anything: it must be forgotten, not dropped.
fn forged(
    space: &KernelSpace,
    range: Range<Vaddr>,
    mapped: Range<Vaddr>,
) -> core::mem::ManuallyDrop<KVirtArea> {
    core::mem::ManuallyDrop::new(KVirtArea {
        range,
        mapped,
        walk_start: space.inner().kernel_pt.root_walk_start(),
        right: None,
        left: None,
        space: SpaceRef::new(&space.inner),
    })
}

#[test]
fn an_area_with_a_broken_range_is_reported() {
    let (space, area) = space_and_area();
    let linear = X86_64Layout::LINEAR_MAPPING_VADDR_RANGE.unwrap().start;
    let vmalloc = X86_64Layout::VMALLOC_VADDR_RANGE.start;
    let cases = [
        (0x1000..0x2000, 0x1000..0x1000, "the area is outside kernel space"),
        (linear..linear + P, linear..linear, "the area is outside VMALLOC"),
        (vmalloc + 1..vmalloc + P, vmalloc + 1..vmalloc + 1, "the area is empty or misaligned"),
        (vmalloc + P..vmalloc + P, vmalloc + P..vmalloc + P, "the area is empty or misaligned"),
        (
            vmalloc..vmalloc + P,
            vmalloc..vmalloc + 2 * P,
            "the mapped part is not a page-aligned part of the area",
        ),
        (
            vmalloc..vmalloc + 2 * P,
            vmalloc + 1..vmalloc + P,
            "the mapped part is not a page-aligned part of the area",
        ),
    ];
    for (range, mapped, clause) in cases {
        let bad = forged(&space, range, mapped);
        assert_eq!(bad.check(), Err(clause));
    }
    assert_repaired(&space, &area);
}
