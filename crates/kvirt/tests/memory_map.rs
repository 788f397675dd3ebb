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

/// Holes in RAM: a `Device` region, or addresses the map leaves out,
/// below the end of RAM. They have frame metadata slots (the array covers
/// every page below the end of RAM) but are not RAM: the platform promises
/// nothing about reaching them through its physical window, so byte access
/// through an area refuses them.
mod holes_below_the_end_of_ram {
    use kvirt::kspace::{AreaAccessError, KVirtArea};
    use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
    use kvirt::PAGE_SIZE as P;

    use super::*;

    /// Reserved RAM just below the hole.
    const LOW_RAM: Paddr = 2 * MIB - 2 * P;
    /// The device registers.
    const DEVICE: Paddr = 2 * MIB;
    /// Addresses the map leaves out.
    const GAP: Paddr = 2 * MIB + 4 * P;
    /// Reserved RAM just above the hole.
    const HIGH_RAM: Paddr = 2 * MIB + 8 * P;
    const END: Paddr = 2 * MIB + 10 * P;

    /// A space over a 4 MiB machine whose map has a device region and a
    /// gap in the middle of its RAM, with reserved RAM on both sides, and
    /// an untracked area over all of `LOW_RAM..END` (pages 0-1 RAM, 2-5
    /// device, 6-9 nothing, 10-11 RAM). The machine itself has RAM there,
    /// so a wrong access would succeed silently.
    fn space_with_a_hole() -> (KernelSpace, Arc<Machine>, KVirtArea) {
        let machine = Arc::new(Machine::new(MachineConfig::new(RAM)));
        let map = [
            reserved(0, MIB),
            usable(MIB, LOW_RAM),
            reserved(LOW_RAM, DEVICE),
            region(DEVICE, GAP, MemoryRegionKind::Device),
            reserved(HIGH_RAM, END),
            usable(END, RAM),
        ];
        // SAFETY: a new machine for this space alone; the test's clone only
        // reads RAM that the space's area maps (reserved low and high RAM).
        let platform = unsafe { SimPlatform::new(machine.clone()) };
        // SAFETY: the map's RAM lies inside the machine's 4 MiB, which reads
        // as zero.
        let space = unsafe { KernelSpace::new(Box::new(platform), &map, true) }.expect("a usable map");
        assert_eq!(space.max_paddr(), RAM);
        let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
        // SAFETY: the range is reserved RAM and a hole of the map on a
        // simulated machine, which no Rust object owns.
        let area = unsafe { space.try_map_untracked_frames(12 * P, 0, LOW_RAM..END, prop) }
            .expect("not allocatable");
        (space, machine, area)
    }

    #[test]
    fn ram_on_both_sides_of_the_hole_is_byte_accessible() {
        let (_space, machine, area) = space_with_a_hole();
        for (offset, pa) in [(0, LOW_RAM), (10 * P, HIGH_RAM)] {
            let data: Vec<u8> = (0..2 * P).map(|i| (i % 251) as u8).collect();
            area.write_bytes(offset, &data).expect("RAM");
            let mut back = vec![0; 2 * P];
            area.read_bytes(offset, &mut back).expect("RAM");
            assert_eq!(back, data);
            machine.read_phys(pa as u64, &mut back).expect("RAM");
            assert_eq!(back, data, "written at {pa:#x}");
        }
    }

    #[test]
    fn a_device_region_below_the_end_of_ram_is_not_ram() {
        let (_space, machine, area) = space_with_a_hole();
        let at = |offset: usize| area.start() + offset;
        let mut buf = [0u8; 8];
        assert_eq!(area.read_bytes(3 * P + 5, &mut buf), Err(AreaAccessError::NotRam(at(3 * P + 5))));
        assert_eq!(area.write_bytes(2 * P, &[1; 8]), Err(AreaAccessError::NotRam(at(2 * P))));
        // From RAM into the device region: refused before anything is
        // written.
        assert_eq!(area.write_bytes(2 * P - 4, &[1; 8]), Err(AreaAccessError::NotRam(at(2 * P))));
        let mut phys = vec![0xffu8; 4 * P + 4];
        machine.read_phys((DEVICE - 4) as u64, &mut phys).expect("the machine has RAM there");
        assert!(phys.iter().all(|&b| b == 0), "a refused write wrote something");
    }

    #[test]
    fn addresses_missing_from_the_map_below_the_end_of_ram_are_not_ram() {
        let (_space, machine, area) = space_with_a_hole();
        let at = |offset: usize| area.start() + offset;
        let mut buf = [0u8; 8];
        assert_eq!(area.read_bytes(7 * P, &mut buf), Err(AreaAccessError::NotRam(at(7 * P))));
        // From the gap into RAM, and from RAM across the whole hole.
        assert_eq!(area.write_bytes(10 * P - 2, &[1; 4]), Err(AreaAccessError::NotRam(at(10 * P - 2))));
        assert_eq!(area.write_bytes(P, &[1; 10 * P]), Err(AreaAccessError::NotRam(at(2 * P))));
        let mut phys = vec![0xffu8; 12 * P];
        machine.read_phys(LOW_RAM as u64, &mut phys).expect("the machine has RAM there");
        assert!(phys.iter().all(|&b| b == 0), "a refused write wrote something");
    }
}

/// `MemoryRegion::carve`: RAM cut into Usable and Reserved pieces.
#[allow(
    clippy::reversed_empty_ranges,
    clippy::single_range_in_vec_init,
    reason = "the tests hand `carve` one-range lists and reversed ranges on purpose"
)]
mod carve {
    use kvirt::platform::{MemoryRegion, MemoryRegionKind};

    fn region(start: usize, end: usize, kind: MemoryRegionKind) -> MemoryRegion {
        MemoryRegion { range: start..end, kind }
    }

    #[test]
    fn reserved_ranges_are_cut_out_grown_to_pages_and_merged() {
        use MemoryRegionKind::{Reserved, Usable};
        let ram = [0x10_0000..0x20_0000, 0x1000..0x8_0800];
        let reserved = [0x2800..0x3001, 0x3000..0x4000, 0x1f_f000..0x30_0000, 0x50_0000..0x60_0000];
        let map = MemoryRegion::carve(&ram, &reserved);
        assert_eq!(
            map,
            [
                region(0x1000, 0x2000, Usable),
                region(0x2000, 0x4000, Reserved),
                region(0x4000, 0x8_0000, Usable),
                region(0x10_0000, 0x1f_f000, Usable),
                region(0x1f_f000, 0x20_0000, Reserved),
            ]
        );
    }

    #[test]
    fn empty_and_reversed_ranges_give_nothing() {
        assert!(MemoryRegion::carve(&[0x2000..0x1000, 0x1800..0x1900], &[]).is_empty());
        let map = MemoryRegion::carve(&[0x1000..0x3000], &[0x2000..0x1000]);
        assert_eq!(map, [region(0x1000, 0x3000, MemoryRegionKind::Usable)]);
    }
}
