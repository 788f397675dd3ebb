//! Kernel spaces over firmware memory maps they cannot use: each defect is
//! a typed `PhysMemError` (inside `KernelSpaceError::PhysMem`) whose message
//! names it, and a usable map next to each shows what the defect was.
//!
//! Every map describes RAM of a real 4 MiB simulated machine (the platform
//! contract asks that RAM in the map be reachable), and the defects are
//! found before any of it is touched.

use std::sync::Arc;

use kvirt::frame::PhysMemError;
use kvirt::kspace::{KernelSpace, KernelSpaceError};
use kvirt::platform::hosted::SimPlatform;
use kvirt::platform::{MemoryRegion, MemoryRegionKind};
use kvirt::sim::{Machine, MachineConfig};
use kvirt::Paddr;

const MIB: Paddr = 1 << 20;
/// The RAM of every test machine.
const RAM: Paddr = 4 * MIB;

fn region(start: Paddr, end: Paddr, kind: MemoryRegionKind) -> MemoryRegion {
    MemoryRegion { range: start..end, kind }
}

fn usable(start: Paddr, end: Paddr) -> MemoryRegion {
    region(start, end, MemoryRegionKind::Usable)
}

fn reserved(start: Paddr, end: Paddr) -> MemoryRegion {
    region(start, end, MemoryRegionKind::Reserved)
}

/// A kernel space over a fresh 4 MiB machine, described by `map`.
fn space_over(map: &[MemoryRegion]) -> Result<KernelSpace, KernelSpaceError> {
    let machine = Arc::new(Machine::new(MachineConfig::new(RAM)));
    // SAFETY: a new machine, used by this space alone.
    let platform = unsafe { SimPlatform::new(machine) };
    // SAFETY: every map's RAM lies inside the machine's 4 MiB, which reads
    // as zero.
    unsafe { KernelSpace::new(Box::new(platform), map, true) }
}

/// The `PhysMemError` a map is rejected with, and the message of the
/// `KernelSpaceError` around it.
fn rejection(map: &[MemoryRegion]) -> (PhysMemError, String) {
    match space_over(map) {
        Err(e @ KernelSpaceError::PhysMem(_)) => {
            let message = e.to_string();
            let KernelSpaceError::PhysMem(inner) = e else { unreachable!() };
            assert!(message.starts_with("bad physical memory: "), "{message}");
            (inner, message)
        }
        Err(other) => panic!("expected a PhysMem error, got {other:?}"),
        Ok(_) => panic!("the map {map:#x?} was accepted"),
    }
}

#[test]
fn the_maps_the_tests_start_from_are_usable() {
    let space = space_over(&[reserved(0, MIB), usable(MIB, RAM)]).expect("a usable map");
    assert_eq!(space.max_paddr(), RAM);
    assert!(space_over(&[usable(0, RAM)]).is_ok());
}

#[test]
fn a_region_with_a_misaligned_end_is_a_bad_region() {
    let bad = usable(MIB, 2 * MIB + 0x800);
    let (e, message) = rejection(&[reserved(0, MIB), bad.clone()]);
    assert_eq!(e, PhysMemError::BadRegion(bad));
    assert!(message.contains("0x100000..0x200800 (Usable)"), "{message}");
    assert!(message.contains("empty or not page aligned"), "{message}");
}

#[test]
fn a_region_with_a_misaligned_start_is_a_bad_region() {
    let bad = reserved(0x800, MIB);
    let (e, message) = rejection(&[bad.clone(), usable(MIB, RAM)]);
    assert_eq!(e, PhysMemError::BadRegion(bad));
    assert!(message.contains("0x800..0x100000 (Reserved)"), "{message}");
}

#[test]
fn an_empty_region_is_a_bad_region() {
    let empty = usable(2 * MIB, 2 * MIB);
    let (e, message) = rejection(&[usable(0, MIB), empty.clone()]);
    assert_eq!(e, PhysMemError::BadRegion(empty));
    assert!(message.contains("0x200000..0x200000"), "{message}");
}

#[test]
fn overlapping_ram_regions_are_refused_and_named() {
    let (low, high) = (usable(0, 2 * MIB), reserved(MIB, RAM));
    // Given in either order, the pair is named in address order.
    for map in [[low.clone(), high.clone()], [high.clone(), low.clone()]] {
        let (e, message) = rejection(&map);
        assert_eq!(e, PhysMemError::OverlappingRegions(low.clone(), high.clone()));
        assert!(
            message.contains("0x0..0x200000 (Usable) and 0x100000..0x400000 (Reserved) overlap"),
            "{message}"
        );
    }
    // Touching is not overlapping.
    assert!(space_over(&[usable(0, 2 * MIB), reserved(2 * MIB, RAM)]).is_ok());
}

#[test]
fn a_map_whose_usable_regions_cannot_hold_the_metadata_is_refused() {
    // 4 MiB of RAM has 1024 pages: 64 KiB of 64-byte slots.
    let needed = 1024 * kvirt::frame::META_SLOT_SIZE;
    let (e, message) = rejection(&[reserved(0, RAM - 0x1000), usable(RAM - 0x1000, RAM)]);
    assert_eq!(e, PhysMemError::NoRoomForMetadata { needed });
    assert!(message.contains("no usable region can hold 0x10000 bytes of frame metadata"), "{message}");
    // Reserved RAM never holds it, however large.
    let (e, _) = rejection(&[reserved(0, RAM)]);
    assert_eq!(e, PhysMemError::NoRoomForMetadata { needed });
    // A usable region of exactly that size holds it, and nothing else: the
    // kernel page table then finds no memory.
    assert_eq!(
        space_over(&[reserved(0, RAM - needed), usable(RAM - needed, RAM)]).err(),
        Some(KernelSpaceError::OutOfMemory)
    );
}

#[test]
fn a_map_without_ram_is_refused() {
    let (e, message) = rejection(&[]);
    assert_eq!(e, PhysMemError::NoRam);
    assert!(message.contains("the memory map has no RAM"), "{message}");
    // Device memory is not RAM.
    let device = region(RAM, 2 * RAM, MemoryRegionKind::Device);
    assert_eq!(rejection(&[device]).0, PhysMemError::NoRam);
}

#[test]
fn device_regions_are_not_checked_as_ram() {
    // A misaligned device region overlapping RAM is no error: only RAM
    // regions get metadata slots.
    let device = region(RAM - 0x800, RAM + 0x10, MemoryRegionKind::Device);
    assert!(space_over(&[usable(0, RAM), device]).is_ok());
}
