//! `KernelSpace::map_kernel_image`: how a kernel maps its own image into
//! kvirt's page table before switching to it.

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::{
    KernelImageError, KernelSpace, FRAME_METADATA_VADDR_RANGE, KERNEL_CODE_BASE_VADDR, KERNEL_END_VADDR,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::sim::MachineConfig;
use kvirt::spec::Inv;
use kvirt::PAGE_SIZE;

const MIB: usize = 1 << 20;

fn rx() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RX, CachePolicy::Writeback)
}

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// A 64 MiB machine whose "kernel image" is reserved RAM at 2..6 MiB.
fn space_with_image() -> KernelSpace {
    KernelSpace::new_hosted(MachineConfig::new(64 * MIB).reserve(2 << 20..6 << 20))
}

#[test]
fn image_sections_are_mapped_with_their_own_rights_and_translate() {
    let mut space = space_with_image();
    let text = KERNEL_CODE_BASE_VADDR + 2 * MIB;
    // SAFETY: reserved simulated RAM that nothing else uses.
    unsafe { space.map_kernel_image(text, 2 * MIB..2 * MIB + 3 * PAGE_SIZE, rx()) }.unwrap();
    // SAFETY: as above.
    unsafe { space.map_kernel_image(text + 3 * PAGE_SIZE, 2 * MIB + 3 * PAGE_SIZE..3 * MIB, rw()) }.unwrap();
    assert_eq!(space.kernel_translate(text + 0x123), Some((2 * MIB + 0x123, rx())));
    assert_eq!(space.kernel_translate(text + 3 * PAGE_SIZE), Some((2 * MIB + 3 * PAGE_SIZE, rw())));
    assert_eq!(space.kernel_translate(text + MIB - 1), Some((3 * MIB - 1, rw())));
    assert_eq!(space.kernel_translate(text + MIB), None);
    assert_eq!(space.kernel_translate(text - 1), None);
    assert!(space.inv());
}

#[test]
fn the_simulated_mmu_reads_the_image_through_the_mapping() {
    let mut space = space_with_image();
    // SAFETY: the test writes only the Reserved image range, which nothing
    // else uses, and walks the space's own kernel table.
    let machine = unsafe { space.machine() }.unwrap().clone();
    machine.write_phys(4 * MIB as u64 + 8, b"kernel!").unwrap();
    let va = KERNEL_CODE_BASE_VADDR + 4 * MIB;
    // SAFETY: reserved simulated RAM that nothing else uses.
    unsafe { space.map_kernel_image(va, 4 * MIB..6 * MIB, rw()) }.unwrap();
    let cpu = machine.cpu(0);
    cpu.set_root(space.kernel_root_paddr() as u64);
    let mut buf = [0u8; 7];
    cpu.read(va + 8, &mut buf).unwrap();
    assert_eq!(&buf, b"kernel!");
}

#[test]
fn aligned_images_use_huge_pages() {
    let mut space = space_with_image();
    let va = KERNEL_CODE_BASE_VADDR + 2 * MIB;
    // SAFETY: reserved simulated RAM that nothing else uses.
    unsafe { space.map_kernel_image(va, 2 * MIB..6 * MIB, rw()) }.unwrap();
    let mut cursor = space.kernel_cursor(&(va..va + 4 * MIB)).unwrap();
    let (range, item) = cursor.query().unwrap();
    assert_eq!(range, va..va + 2 * MIB, "one 2 MiB leaf");
    assert_eq!(item.unwrap().level(), 2);
}

#[test]
fn page_table_nodes_of_the_image_count_as_set_up() {
    let mut space = space_with_image();
    let before = space.phys_stats();
    // SAFETY: reserved simulated RAM that nothing else uses.
    unsafe { space.map_kernel_image(KERNEL_CODE_BASE_VADDR, 2 * MIB..2 * MIB + PAGE_SIZE, rw()) }.unwrap();
    assert!(space.phys_stats().page_table_pages > before.page_table_pages);
    // A second part can still be mapped: the new nodes are not "in use".
    // SAFETY: as above.
    unsafe { space.map_kernel_image(KERNEL_CODE_BASE_VADDR + MIB, 3 * MIB..3 * MIB + PAGE_SIZE, rw()) }
        .unwrap();
}

#[test]
#[allow(clippy::reversed_empty_ranges)]
fn every_rejection_is_typed_and_changes_nothing() {
    let mut space = space_with_image();
    let base = KERNEL_CODE_BASE_VADDR;
    let before = space.phys_stats();
    let user = PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback);
    let (meta, _) =
        space.kernel_translate(FRAME_METADATA_VADDR_RANGE.start).expect("the metadata array is mapped");
    let mut try_map = |va, pa: core::ops::Range<usize>, prop| {
        // SAFETY: every call below is rejected before anything is mapped.
        unsafe { space.map_kernel_image(va, pa, prop) }
    };
    assert_eq!(
        try_map(base, 3 * MIB..2 * MIB, rw()),
        Err(KernelImageError::EmptyOrReversed(3 * MIB..2 * MIB))
    );
    assert_eq!(
        try_map(base, 2 * MIB..2 * MIB, rw()),
        Err(KernelImageError::EmptyOrReversed(2 * MIB..2 * MIB))
    );
    assert_eq!(try_map(base + 1, 2 * MIB..3 * MIB, rw()), Err(KernelImageError::Misaligned));
    assert_eq!(try_map(base, 2 * MIB..3 * MIB - 1, rw()), Err(KernelImageError::Misaligned));
    assert!(matches!(
        try_map(base - PAGE_SIZE, 2 * MIB..3 * MIB, rw()),
        Err(KernelImageError::OutsideKernelCode(_))
    ));
    assert!(matches!(
        try_map(KERNEL_END_VADDR - PAGE_SIZE, 2 * MIB..3 * MIB, rw()),
        Err(KernelImageError::OutsideKernelCode(_))
    ));
    assert!(matches!(try_map(base, 1 << 52..(1 << 52) + MIB, rw()), Err(KernelImageError::PaddrTooLarge(_))));
    // 6..7 MiB is usable RAM: handing it to the image would alias frames.
    assert_eq!(try_map(base, 5 * MIB..7 * MIB, rw()), Err(KernelImageError::TrackedPaddr(5 * MIB..7 * MIB)));
    // The frame metadata array is kvirt's own: never part of an image.
    let meta_page = meta..meta + PAGE_SIZE;
    assert_eq!(try_map(base, meta_page.clone(), rw()), Err(KernelImageError::TrackedPaddr(meta_page)));
    assert_eq!(try_map(base, 2 * MIB..3 * MIB, user), Err(KernelImageError::UserAccessible));
    assert_eq!(space.phys_stats(), before);
    assert_eq!(space.kernel_translate(base), None);
}

#[test]
fn mapping_over_a_mapped_page_is_rejected() {
    let mut space = space_with_image();
    let va = KERNEL_CODE_BASE_VADDR + 2 * MIB;
    // SAFETY: reserved simulated RAM that nothing else uses.
    unsafe { space.map_kernel_image(va + PAGE_SIZE, 2 * MIB..2 * MIB + PAGE_SIZE, rw()) }.unwrap();
    let before = space.phys_stats();
    // SAFETY: rejected before anything is mapped.
    let again = unsafe { space.map_kernel_image(va, 3 * MIB..3 * MIB + 4 * PAGE_SIZE, rw()) };
    assert_eq!(again, Err(KernelImageError::AlreadyMapped(va + PAGE_SIZE)));
    assert_eq!(space.phys_stats(), before);
    assert_eq!(space.kernel_translate(va), None, "nothing of the rejected call was mapped");
}

#[test]
fn the_image_is_mapped_before_the_space_is_used() {
    let mut space = space_with_image();
    let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
    // SAFETY: rejected before anything is mapped.
    let late = unsafe { space.map_kernel_image(KERNEL_CODE_BASE_VADDR, 2 * MIB..3 * MIB, rw()) };
    assert_eq!(late, Err(KernelImageError::SpaceInUse));
    drop(frame);
    // SAFETY: reserved simulated RAM that nothing else uses.
    unsafe { space.map_kernel_image(KERNEL_CODE_BASE_VADDR, 2 * MIB..3 * MIB, rw()) }.unwrap();
}
