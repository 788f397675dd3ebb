//! Per-CPU TLBs: caching, staleness and the flushes.

use super::*;
use crate::{Access, FaultKind};

/// A machine with a 4 KiB page at 0x1000 -> 0x2000 and a 2 MiB page at
/// 0x20_0000 -> 0x40_0000, loaded into CPU 0 and 1.
fn setup(machine: &Machine) -> Tables<'_> {
    let mut tables = Tables::new(machine);
    tables.map_4k(0x1000, 0x2000, P | RW);
    tables.map_2m(0x20_0000, 0x40_0000, P | RW);
    machine.cpu(0).set_root(tables.root);
    machine.cpu(1).set_root(tables.root);
    tables
}

fn pa_of(machine: &Machine, cpu: usize, va: usize) -> PhysAddr {
    machine.cpu(cpu).translate(va, Access::READ).unwrap().pa
}

#[test]
fn tlb_caches_successful_translations_only() {
    let machine = small_machine();
    let _tables = setup(&machine);
    let cpu = machine.cpu(0);
    assert_eq!(cpu.tlb_entries(), 0);
    assert!(cpu.translate(0x9000, Access::READ).is_err());
    assert!(cpu.translate(0x1000, Access::EXECUTE).is_ok());
    assert_eq!(cpu.tlb_entries(), 1);
    cpu.translate(0x1ff0, Access::WRITE).unwrap();
    assert_eq!(cpu.tlb_entries(), 1, "same page, same entry");
    cpu.translate(0x3f_0000, Access::READ).unwrap();
    assert_eq!(cpu.tlb_entries(), 2);
}

#[test]
fn tlb_returns_stale_translation_until_flushed() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    assert_eq!(pa_of(&machine, 0, 0x1010), 0x2010);
    tables.map_4k(0x1000, 0x5000, P | RW);
    assert_eq!(pa_of(&machine, 0, 0x1010), 0x2010, "stale until flushed");
    machine.cpu(0).flush_page(0x1fff);
    assert_eq!(pa_of(&machine, 0, 0x1010), 0x5010);
}

#[test]
fn tlb_returns_stale_translation_of_an_unmapped_page() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    pa_of(&machine, 0, 0x1000);
    tables.set(0x1000, 1, 0);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0x2000);
    machine.cpu(0).flush_page(0x1000);
    let fault = machine.cpu(0).translate(0x1000, Access::READ).unwrap_err();
    assert_eq!(fault.kind, FaultKind::NotPresent { level: 1 });
}

#[test]
fn tlb_serves_every_offset_of_a_cached_large_page() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    pa_of(&machine, 0, 0x20_0000);
    tables.map_2m(0x20_0000, 0x60_0000, P | RW);
    assert_eq!(pa_of(&machine, 0, 0x3f_fff8), 0x5f_fff8);
    let t = machine.cpu(0).translate(0x30_0000, Access::READ).unwrap();
    assert_eq!(t.page_size, MIB2);
}

#[test]
fn tlb_flush_page_drops_a_large_page_from_any_address_inside() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    pa_of(&machine, 0, 0x20_0000);
    tables.map_2m(0x20_0000, 0x60_0000, P | RW);
    machine.cpu(0).flush_page(0x3a_b000);
    assert_eq!(pa_of(&machine, 0, 0x20_0000), 0x60_0000);
}

#[test]
fn tlb_flush_page_leaves_other_pages() {
    let machine = small_machine();
    let _tables = setup(&machine);
    let cpu = machine.cpu(0);
    pa_of(&machine, 0, 0x1000);
    pa_of(&machine, 0, 0x20_0000);
    cpu.flush_page(0x2000);
    assert_eq!(cpu.tlb_entries(), 2);
    cpu.flush_page(0x1000);
    assert_eq!(cpu.tlb_entries(), 1);
}

#[test]
fn tlb_flush_range_drops_entries_intersecting_the_range() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    tables.map_4k(0x5000, 0x6000, P);
    let cpu = machine.cpu(0);
    for va in [0x1000, 0x5000, 0x20_0000] {
        pa_of(&machine, 0, va);
    }
    cpu.flush_range(0x2000..0x5000);
    assert_eq!(cpu.tlb_entries(), 3, "touches neither page");
    cpu.flush_range(0x1000..0x1000);
    assert_eq!(cpu.tlb_entries(), 3, "empty range");
    cpu.flush_range(0x4fff..0x5001);
    assert_eq!(cpu.tlb_entries(), 2);
    cpu.flush_range(0x3f_ffff..0x40_0000);
    assert_eq!(cpu.tlb_entries(), 1, "last byte of the 2 MiB page");
    cpu.flush_range(0..usize::MAX);
    assert_eq!(cpu.tlb_entries(), 0);
}

#[test]
fn tlb_flush_range_gives_new_translation_after() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    pa_of(&machine, 0, 0x1000);
    tables.map_4k(0x1000, 0x7000, P);
    machine.cpu(0).flush_range(0..0x10_0000);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0x7000);
}

#[test]
fn tlb_flush_range_handles_the_top_of_the_address_space() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    tables.map_1g(0xffff_ffff_c000_0000, 0, P | G);
    let cpu = machine.cpu(0);
    cpu.translate(usize::MAX, Access::READ).unwrap();
    cpu.flush_range(0..0x1000);
    assert_eq!(cpu.tlb_entries(), 1);
    cpu.flush_range(usize::MAX - 1..usize::MAX);
    assert_eq!(cpu.tlb_entries(), 0);
}

#[test]
fn tlb_flush_all_drops_global_entries_too() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    tables.map_4k(0x1000, 0x2000, P | G);
    let cpu = machine.cpu(0);
    pa_of(&machine, 0, 0x1000);
    pa_of(&machine, 0, 0x20_0000);
    tables.map_4k(0x1000, 0x8000, P | G);
    cpu.flush_all();
    assert_eq!(cpu.tlb_entries(), 0);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0x8000);
}

#[test]
fn tlb_set_root_keeps_only_global_entries() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    tables.map_4k(0x5000, 0x6000, P | G);
    let cpu = machine.cpu(0);
    for va in [0x1000, 0x5000, 0x20_0000] {
        pa_of(&machine, 0, va);
    }
    tables.map_4k(0x1000, 0x9000, P);
    tables.map_4k(0x5000, 0xa000, P | G);
    cpu.set_root(tables.root);
    assert_eq!(cpu.tlb_entries(), 1);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0x9000, "non-global flushed");
    assert_eq!(pa_of(&machine, 0, 0x5000), 0x6000, "global survives");
}

#[test]
fn tlb_global_entry_survives_a_switch_to_another_address_space() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    tables.map_4k(0x5000, 0x6000, P | G);
    let cpu = machine.cpu(0);
    pa_of(&machine, 0, 0x5000);
    let other = tables.alloc_table();
    cpu.set_root(other);
    assert_eq!(cpu.root(), other);
    assert_eq!(pa_of(&machine, 0, 0x5000), 0x6000);
    let fault = cpu.translate(0x1000, Access::READ).unwrap_err();
    assert_eq!(fault.kind, FaultKind::NotPresent { level: 4 });
}

#[test]
fn tlb_is_per_cpu() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    pa_of(&machine, 0, 0x1000);
    tables.map_4k(0x1000, 0xb000, P);
    assert_eq!(pa_of(&machine, 1, 0x1000), 0xb000);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0x2000);
    machine.cpu(0).flush_page(0x1000);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0xb000);
}

#[test]
fn tlb_hit_without_the_rights_faults_once_and_drops_the_entry() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    tables.map_4k(0x1000, 0x2000, P);
    let cpu = machine.cpu(0);
    cpu.flush_all();
    cpu.translate(0x1000, Access::READ).unwrap();
    tables.map_4k(0x1000, 0x2000, P | RW);
    let fault = cpu.translate(0x1000, Access::WRITE).unwrap_err();
    assert_eq!(fault.kind, FaultKind::Protection, "spurious fault");
    assert_eq!(cpu.tlb_entries(), 0);
    assert!(cpu.translate(0x1000, Access::WRITE).unwrap().writable);
}

#[test]
fn tlb_keeps_rights_that_were_revoked_until_flushed() {
    let machine = small_machine();
    let mut tables = setup(&machine);
    let cpu = machine.cpu(0);
    cpu.translate(0x1000, Access::WRITE).unwrap();
    tables.map_4k(0x1000, 0x2000, P);
    assert!(cpu.translate(0x1000, Access::WRITE).is_ok());
    cpu.flush_page(0x1000);
    assert!(cpu.translate(0x1000, Access::WRITE).is_err());
}

#[test]
fn set_root_reads_the_new_tables() {
    let machine = small_machine();
    let mut first = setup(&machine);
    let root_a = first.root;
    let root_b = first.alloc_table();
    first.root = root_b;
    first.map_4k(0x1000, 0xc000, P);
    let cpu = machine.cpu(0);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0x2000);
    cpu.set_root(root_b);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0xc000);
    cpu.set_root(root_a);
    assert_eq!(pa_of(&machine, 0, 0x1000), 0x2000);
}

#[test]
#[should_panic(expected = "not a 4 KiB aligned address")]
fn set_root_rejects_an_unaligned_root() {
    small_machine().cpu(0).set_root(0x10_0008);
}

#[test]
fn translate_rejects_non_canonical_addresses_without_caching() {
    let machine = small_machine();
    let _tables = setup(&machine);
    let cpu = machine.cpu(0);
    let fault = cpu.translate(0x8000_0000_1000, Access::READ).unwrap_err();
    assert_eq!(fault.kind, FaultKind::NonCanonical);
    assert_eq!(cpu.tlb_entries(), 0);
}
