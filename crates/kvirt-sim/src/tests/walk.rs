//! The raw page walk: translations, faults and access rights.

use super::*;
use crate::{walk, Access, FaultKind, PageFault, Translation};

const USER_READ: Access = Access { user: true, ..Access::READ };

fn not_present(level: u8) -> FaultKind {
    FaultKind::NotPresent { level }
}

#[test]
fn walk_maps_4k_page_with_offset() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    let va = 0x0000_1234_5678_9000;
    tables.map_4k(va, 0x7_6543_2000, P | RW);
    let t = walk(&machine, tables.root, va + 0xabc, Access::READ).unwrap();
    assert_eq!(
        t,
        Translation {
            pa: 0x7_6543_2abc,
            page_size: KIB4,
            readable: true,
            writable: true,
            user: false,
            supervisor: true,
            executable: true,
            user_executable: true,
            global: false,
        }
    );
}

#[test]
fn walk_maps_2m_page_with_offset() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    let va = 0x0000_0040_0060_0000;
    tables.map_2m(va, 0x1_2340_0000, P);
    let t = walk(&machine, tables.root, va + 0x1f_fffe, Access::READ).unwrap();
    assert_eq!(t.pa, 0x1_235f_fffe);
    assert_eq!(t.page_size, MIB2);
    assert!(!t.writable);
}

#[test]
fn walk_maps_2m_page_with_pat_bit_at_12() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    let va = 0x20_0000;
    tables.map_2m(va, 0x80_0000 | 1 << 12, P | RW);
    let t = walk(&machine, tables.root, va + 0x1234, Access::WRITE).unwrap();
    assert_eq!(t.pa, 0x80_1234, "the PAT bit is not part of the frame");
    assert_eq!(t.page_size, MIB2);
}

#[test]
fn walk_maps_1g_page_with_offset() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    let va = 0x0000_0080_4000_0000;
    tables.map_1g(va, 0x3_c000_0000, P | RW | US);
    let t = walk(&machine, tables.root, va + 0x3fff_ffff, USER_READ).unwrap();
    assert_eq!(t.pa, 0x3_ffff_ffff);
    assert_eq!(t.page_size, GIB1);
    assert!(t.user && t.writable);
}

#[test]
fn walk_maps_1g_page_with_pat_bit_at_12() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_1g(0, 0x4000_0000 | 1 << 12, P);
    let t = walk(&machine, tables.root, 0x1000, Access::READ).unwrap();
    assert_eq!(t.pa, 0x4000_1000);
}

#[test]
fn walk_treats_bit_7_of_a_4k_entry_as_pat() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x5000, 0x9000, P | PS);
    let t = walk(&machine, tables.root, 0x5008, Access::READ).unwrap();
    assert_eq!((t.pa, t.page_size), (0x9008, KIB4));
}

#[test]
fn walk_maps_high_half_addresses() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    let va = 0xffff_8000_0000_0000;
    tables.map_4k(va, 0x20_0000, P | G);
    tables.map_2m(0xffff_ffff_ffe0_0000, 0x40_0000, P);
    let t = walk(&machine, tables.root, va + 8, Access::READ).unwrap();
    assert_eq!(t.pa, 0x20_0008);
    assert!(t.global);
    let top = walk(&machine, tables.root, usize::MAX, Access::READ).unwrap();
    assert_eq!(top.pa, 0x5f_ffff);
}

#[test]
fn walk_reports_not_present_at_each_level() {
    for level in 1..=4u8 {
        let machine = small_machine();
        let mut tables = Tables::new(&machine);
        let va = 0x7f12_3456_7000;
        tables.map_4k(va, 0x10_0000, P);
        tables.update(va, level, |entry| entry & !P);
        let fault = walk(&machine, tables.root, va, Access::READ).unwrap_err();
        assert_eq!(fault, PageFault { va, access: Access::READ, kind: not_present(level) });
    }
}

#[test]
fn walk_of_an_empty_root_is_not_present_at_level_4() {
    let machine = small_machine();
    let tables = Tables::new(&machine);
    let fault = walk(&machine, tables.root, 0x1000, Access::WRITE).unwrap_err();
    assert_eq!(fault.kind, not_present(4));
}

#[test]
fn walk_rejects_non_canonical_addresses() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_1g(0, 0, P);
    for va in [
        0x0000_8000_0000_0000,
        0xffff_7fff_ffff_ffff,
        0x0001_0000_0000_0000,
        0x8000_0000_0000_0000,
        0x7fff_ffff_ffff_ffff,
        0x0010_0000_0000_1000,
    ] {
        let fault = walk(&machine, tables.root, va, Access::READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::NonCanonical, "va {va:#x}");
    }
    for va in [0x0000_7fff_ffff_ffff, 0xffff_8000_0000_0000] {
        let fault = walk(&machine, tables.root, va, Access::READ).unwrap_err();
        assert_eq!(fault.kind, not_present(4), "va {va:#x} is canonical");
    }
}

#[test]
fn walk_rejects_page_size_bit_in_pml4_entry() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x1000, P);
    tables.update(0x1000, 4, |entry| entry | PS);
    let fault = walk(&machine, tables.root, 0x1000, Access::READ).unwrap_err();
    assert_eq!(fault.kind, FaultKind::ReservedBit { level: 4 });
}

#[test]
fn walk_rejects_each_reserved_bit_of_a_2m_entry() {
    for bit in 13..=20 {
        let machine = small_machine();
        let mut tables = Tables::new(&machine);
        tables.map_2m(0x20_0000, 0x40_0000 | 1 << bit, P);
        let fault = walk(&machine, tables.root, 0x20_0000, Access::READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::ReservedBit { level: 2 }, "bit {bit}");
    }
}

#[test]
fn walk_rejects_each_reserved_bit_of_a_1g_entry() {
    for bit in 13..=29 {
        let machine = small_machine();
        let mut tables = Tables::new(&machine);
        tables.map_1g(0x4000_0000, 0x4000_0000 | 1 << bit, P);
        let fault = walk(&machine, tables.root, 0x4000_0000, Access::READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::ReservedBit { level: 3 }, "bit {bit}");
    }
}

#[test]
fn walk_reports_reserved_bit_before_protection() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_2m(0, 1 << 13, P);
    let fault = walk(&machine, tables.root, 0, Access::WRITE).unwrap_err();
    assert_eq!(fault.kind, FaultKind::ReservedBit { level: 2 });
}

#[test]
fn walk_ignores_software_bits_52_to_62_and_9_to_11() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    let ignored = 0x7ff0_0000_0000_0e00;
    tables.map_4k(0x3000, 0xa000 | ignored, P | RW);
    for level in 2..=4 {
        tables.update(0x3000, level, |entry| entry | ignored);
    }
    let t = walk(&machine, tables.root, 0x3004, Access::WRITE).unwrap();
    assert_eq!(t.pa, 0xa004);
    assert!(!t.global);
}

#[test]
fn walk_uses_address_bits_up_to_51() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x3000, 0x000f_ffff_ffff_f000, P);
    let t = walk(&machine, tables.root, 0x3fff, Access::READ).unwrap();
    assert_eq!(t.pa, 0x000f_ffff_ffff_ffff);
}

#[test]
fn walk_reports_tables_outside_ram() {
    let machine = small_machine();
    let ram_end = machine.ram_size() as PhysAddr;
    let fault = walk(&machine, ram_end, 0, Access::READ).unwrap_err();
    assert_eq!(fault.kind, FaultKind::BadTableAddress { level: 4 });

    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x1000, P);
    for (level, bad) in [(4, ram_end), (3, machine.device_window().start), (2, 1 << 40)] {
        let saved = tables.get(0x1000, level);
        tables.set(0x1000, level, bad | TABLE);
        let fault = walk(&machine, tables.root, 0x1000, Access::READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::BadTableAddress { level: level - 1 });
        tables.set(0x1000, level, saved);
    }
    assert!(walk(&machine, tables.root, 0x1000, Access::READ).is_ok());
}

#[test]
fn walk_reads_root_like_cr3_ignoring_flag_bits() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x2000, P);
    let t = walk(&machine, tables.root | 0x18, 0x1000, Access::READ).unwrap();
    assert_eq!(t.pa, 0x2000);
}

#[test]
fn walk_ands_writable_over_all_levels() {
    for level in 1..=4u8 {
        let machine = small_machine();
        let mut tables = Tables::new(&machine);
        tables.map_4k(0x1000, 0x2000, P | RW);
        tables.update(0x1000, level, |entry| entry & !RW);
        let read = walk(&machine, tables.root, 0x1000, Access::READ).unwrap();
        assert!(!read.writable, "level {level}");
        let fault = walk(&machine, tables.root, 0x1000, Access::WRITE).unwrap_err();
        assert_eq!(fault.kind, FaultKind::Protection, "level {level}");
    }
}

#[test]
fn walk_ands_user_over_all_levels() {
    for level in 1..=4u8 {
        let machine = small_machine();
        let mut tables = Tables::new(&machine);
        tables.map_4k(0x1000, 0x2000, P | US);
        assert!(walk(&machine, tables.root, 0x1000, USER_READ).is_ok());
        tables.update(0x1000, level, |entry| entry & !US);
        let fault = walk(&machine, tables.root, 0x1000, USER_READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::Protection, "level {level}");
        let t = walk(&machine, tables.root, 0x1000, Access::READ).unwrap();
        assert!(!t.user, "level {level}");
    }
}

#[test]
fn walk_ands_no_execute_over_all_levels() {
    for level in 1..=4u8 {
        let machine = small_machine();
        let mut tables = Tables::new(&machine);
        tables.map_4k(0x1000, 0x2000, P);
        assert!(walk(&machine, tables.root, 0x1000, Access::EXECUTE).is_ok());
        tables.update(0x1000, level, |entry| entry | XD);
        let fault = walk(&machine, tables.root, 0x1000, Access::EXECUTE).unwrap_err();
        assert_eq!(fault.kind, FaultKind::Protection, "level {level}");
        let t = walk(&machine, tables.root, 0x1000, Access::READ).unwrap();
        assert!(!t.executable, "level {level}");
    }
}

#[test]
fn walk_ands_rights_for_large_pages_too() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_2m(0x20_0000, 0x20_0000, P | RW | US);
    tables.update(0x20_0000, 3, |entry| entry & !US);
    let fault = walk(&machine, tables.root, 0x20_0000, USER_READ).unwrap_err();
    assert_eq!(fault.kind, FaultKind::Protection);
    assert!(walk(&machine, tables.root, 0x20_0000, Access::WRITE).is_ok());
}

#[test]
fn walk_faults_supervisor_write_to_read_only_page() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x2000, P | US);
    let fault = walk(&machine, tables.root, 0x1ff8, Access::WRITE).unwrap_err();
    assert_eq!(fault, PageFault { va: 0x1ff8, access: Access::WRITE, kind: FaultKind::Protection });
}

#[test]
fn walk_lets_supervisor_read_and_execute_user_pages() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x2000, P | US);
    assert!(walk(&machine, tables.root, 0x1000, Access::READ).is_ok());
    assert!(walk(&machine, tables.root, 0x1000, Access::EXECUTE).is_ok());
}

#[test]
fn walk_checks_every_right_of_a_combined_access() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x2000, P | RW | US | XD);
    let user_write = Access { write: true, user: true, execute: false };
    assert!(walk(&machine, tables.root, 0x1000, user_write).is_ok());
    let user_exec = Access { execute: true, ..USER_READ };
    let fault = walk(&machine, tables.root, 0x1000, user_exec).unwrap_err();
    assert_eq!(fault.kind, FaultKind::Protection);
}

#[test]
fn walk_takes_global_bit_from_the_leaf_only() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x2000, P);
    for level in 2..=4 {
        tables.update(0x1000, level, |entry| entry | G);
    }
    assert!(!walk(&machine, tables.root, 0x1000, Access::READ).unwrap().global);
    tables.update(0x1000, 1, |entry| entry | G);
    assert!(walk(&machine, tables.root, 0x1000, Access::READ).unwrap().global);
}

#[test]
fn walk_does_not_set_accessed_or_dirty_bits() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x2000, P | RW);
    let before: Vec<u64> = (1..=4).map(|level| tables.get(0x1000, level)).collect();
    walk(&machine, tables.root, 0x1000, Access::WRITE).unwrap();
    let after: Vec<u64> = (1..=4).map(|level| tables.get(0x1000, level)).collect();
    assert_eq!(before, after);
}

#[test]
fn faults_and_accesses_display_readably() {
    let fault = PageFault {
        va: 0x1000,
        access: Access { user: true, ..Access::WRITE },
        kind: FaultKind::NotPresent { level: 2 },
    };
    assert_eq!(fault.to_string(), "page fault on user write at 0x1000: level 2 entry not present");
    assert_eq!(Access::EXECUTE.to_string(), "supervisor execute");
    assert_eq!(Access::default(), Access::READ);
}
