//! Configuration and the firmware memory map.

use super::*;
use crate::{Region, RegionKind};

const MIB: PhysAddr = 1 << 20;
const GIB: PhysAddr = 1 << 30;

fn region(range: core::ops::Range<PhysAddr>, kind: RegionKind) -> Region {
    Region { range, kind }
}

/// Checks the map's invariants: sorted, contiguous RAM pieces covering
/// `0..ram_size` with no two neighbours of one kind, then the device window.
fn check_invariants(machine: &Machine) {
    let map = machine.memory_map();
    let (device, ram) = map.split_last().expect("the map is never empty");
    assert_eq!(device.kind, RegionKind::Device);
    assert_eq!(device.range, machine.device_window());
    let mut cursor = 0;
    let mut last_kind = None;
    for piece in ram {
        assert_eq!(piece.range.start, cursor, "{map:#x?}");
        assert!(piece.range.start < piece.range.end, "{map:#x?}");
        assert_ne!(piece.kind, RegionKind::Device);
        assert_ne!(Some(piece.kind), last_kind, "unmerged: {map:#x?}");
        cursor = piece.range.end;
        last_kind = Some(piece.kind);
    }
    assert_eq!(cursor, machine.ram_size() as PhysAddr);
    assert!(device.range.start >= cursor);
}

#[test]
fn memory_map_reserves_low_memory_and_ends_with_the_device_window() {
    let machine = small_machine();
    check_invariants(&machine);
    assert_eq!(
        machine.memory_map(),
        [
            region(0..MIB, RegionKind::Reserved),
            region(MIB..4 * MIB, RegionKind::Usable),
            region(GIB..2 * GIB, RegionKind::Device),
        ]
    );
}

#[test]
fn memory_map_carves_out_reserved_ranges() {
    let config = MachineConfig::new(16 << 20).reserve(0x40_0000..0x40_2000).reserve(0xf0_0000..0x100_0000);
    let machine = Machine::new(config);
    check_invariants(&machine);
    assert_eq!(
        machine.memory_map()[..5],
        [
            region(0..MIB, RegionKind::Reserved),
            region(MIB..0x40_0000, RegionKind::Usable),
            region(0x40_0000..0x40_2000, RegionKind::Reserved),
            region(0x40_2000..0xf0_0000, RegionKind::Usable),
            region(0xf0_0000..0x100_0000, RegionKind::Reserved),
        ]
    );
}

#[test]
fn memory_map_merges_overlapping_and_adjacent_reservations() {
    let config = MachineConfig::new(16 << 20)
        .reserve(0x30_0000..0x50_0000)
        .reserve(0x20_0000..0x40_0000)
        .reserve(0x50_0000..0x51_0000)
        .reserve(0x8_0000..0x10_1000)
        .reserve(0x60_0000..0x60_0000);
    let machine = Machine::new(config);
    check_invariants(&machine);
    assert_eq!(
        machine.memory_map()[..4],
        [
            region(0..0x10_1000, RegionKind::Reserved),
            region(0x10_1000..0x20_0000, RegionKind::Usable),
            region(0x20_0000..0x51_0000, RegionKind::Reserved),
            region(0x51_0000..0x100_0000, RegionKind::Usable),
        ]
    );
}

#[test]
fn memory_map_of_ram_smaller_than_low_memory_is_all_reserved() {
    let machine = Machine::new(MachineConfig::new(0x8_0000));
    check_invariants(&machine);
    assert_eq!(
        machine.memory_map(),
        [region(0..0x8_0000, RegionKind::Reserved), region(GIB..2 * GIB, RegionKind::Device),]
    );
}

#[test]
fn memory_map_of_fully_reserved_ram_has_no_usable_piece() {
    let machine = Machine::new(MachineConfig::new(2 << 20).reserve(MIB..2 * MIB));
    check_invariants(&machine);
    assert_eq!(machine.memory_map().len(), 2);
}

#[test]
fn ram_size_is_rounded_up_to_4k() {
    let machine = Machine::new(MachineConfig::new(MIB as usize + 1));
    assert_eq!(machine.ram_size(), 0x10_1000);
    check_invariants(&machine);
}

#[test]
fn device_window_is_the_first_gib_boundary_above_ram() {
    for (ram, start) in [(0, GIB), (4096, GIB), (GIB - 4096, GIB), (GIB, GIB), (GIB + 4096, 2 * GIB)] {
        let machine = Machine::new(MachineConfig::new(ram as usize));
        assert_eq!(machine.device_window(), start..start + GIB, "ram {ram:#x}");
        check_invariants(&machine);
    }
}

#[test]
#[should_panic(expected = "at least one CPU")]
fn config_rejects_zero_cpus() {
    let _ = MachineConfig::new(MIB as usize).cpus(0);
}

#[test]
#[should_panic(expected = "not 4 KiB aligned")]
fn config_rejects_unaligned_reservations() {
    let _ = MachineConfig::new(4 << 20).reserve(0x20_0000..0x20_0800);
}

#[test]
#[should_panic(expected = "not inside RAM")]
fn config_rejects_reservations_outside_ram() {
    let _ = MachineConfig::new(4 << 20).reserve(0x30_0000..0x50_0000);
}

#[test]
#[should_panic(expected = "reversed")]
fn config_rejects_reversed_reservations() {
    #[allow(clippy::reversed_empty_ranges)]
    let range = 0x30_0000..0x20_0000;
    let _ = MachineConfig::new(4 << 20).reserve(range);
}
