//! Virtual memory accesses through a CPU, and CPUs used from many threads.

use super::*;
use crate::{Access, BusError, FaultKind, MemError, PageFault, SIM_DEVICE_ID};

#[test]
fn cpu_write_and_read_cross_page_boundaries() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x30_0000, P | RW);
    tables.map_4k(0x2000, 0x20_0000, P | RW);
    let cpu = machine.cpu(0);
    cpu.set_root(tables.root);
    let data: Vec<u8> = (1..=16).collect();
    cpu.write(0x1ff8, &data).unwrap();
    let mut low = [0; 8];
    let mut high = [0; 8];
    machine.read_phys(0x30_0ff8, &mut low).unwrap();
    machine.read_phys(0x20_0000, &mut high).unwrap();
    assert_eq!([low, high].concat(), data);
    let mut back = [0; 16];
    cpu.read(0x1ff8, &mut back).unwrap();
    assert_eq!(back[..], data[..]);
}

#[test]
fn cpu_reads_through_a_large_page() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_2m(0xffff_8000_0000_0000, 0x20_0000, P | RW);
    machine.write_phys(0x21_2345, b"kvirt").unwrap();
    let cpu = machine.cpu(1);
    cpu.set_root(tables.root);
    let mut buf = [0; 5];
    cpu.read(0xffff_8000_0001_2345, &mut buf).unwrap();
    assert_eq!(&buf, b"kvirt");
}

#[test]
fn cpu_write_faults_on_a_read_only_page_after_writing_the_pages_before() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x30_0000, P | RW);
    tables.map_4k(0x2000, 0x30_1000, P);
    let cpu = machine.cpu(0);
    cpu.set_root(tables.root);
    let err = cpu.write(0x1ffc, &[0xaa; 8]).unwrap_err();
    assert_eq!(
        err,
        MemError::Fault(PageFault { va: 0x2000, access: Access::WRITE, kind: FaultKind::Protection })
    );
    let mut buf = [0; 8];
    machine.read_phys(0x30_0ffc, &mut buf).unwrap();
    assert_eq!(buf, [0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0]);
}

#[test]
fn cpu_read_reports_a_fault_on_an_unmapped_page() {
    let machine = small_machine();
    let tables = Tables::new(&machine);
    machine.cpu(0).set_root(tables.root);
    let err = machine.cpu(0).read(0x4000, &mut [0; 4]).unwrap_err();
    assert!(matches!(
        err,
        MemError::Fault(PageFault { va: 0x4000, kind: FaultKind::NotPresent { level: 4 }, .. })
    ));
}

#[test]
fn cpu_read_reports_a_bus_error_for_an_unbacked_frame() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x8000_0000, P);
    machine.cpu(0).set_root(tables.root);
    let err = machine.cpu(0).read(0x1000, &mut [0; 4]).unwrap_err();
    assert_eq!(err, MemError::Bus(BusError::Unbacked { pa: 0x8000_0000 }));
    assert!(err.to_string().contains("0x80000000"), "{err}");
}

#[test]
fn cpu_accesses_the_device_through_a_mapping() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    let mmio = 0xffff_c000_0000_0000;
    tables.map_4k(mmio, machine.device_window().start, P | RW | XD);
    let cpu = machine.cpu(0);
    cpu.set_root(tables.root);
    let mut id = [0; 4];
    cpu.read(mmio, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), SIM_DEVICE_ID);
    cpu.write(mmio + 8, &0x1122_3344_5566_7788u64.to_le_bytes()).unwrap();
    let mut scratch = [0; 8];
    cpu.read(mmio + 8, &mut scratch).unwrap();
    assert_eq!(u64::from_le_bytes(scratch), 0x1122_3344_5566_7788);
}

#[test]
fn cpu_empty_accesses_touch_nothing() {
    let machine = small_machine();
    let cpu = machine.cpu(0);
    cpu.read(0x1000, &mut []).unwrap();
    cpu.write(0x1000, &[]).unwrap();
    assert_eq!(cpu.tlb_entries(), 0);
}

#[test]
fn cpus_report_their_index_and_start_with_root_zero() {
    let machine = Machine::new(MachineConfig::new(1 << 20).cpus(3));
    assert_eq!(machine.nr_cpus(), 3);
    for index in 0..3 {
        assert_eq!(machine.cpu(index).index(), index);
        assert_eq!(machine.cpu(index).root(), 0);
    }
}

#[test]
#[should_panic(expected = "CPU index 2 is out of range: the machine has 2 CPUs")]
fn machine_cpu_out_of_range_panics() {
    small_machine().cpu(2);
}

/// Threads translating while another thread flips a PTE with atomic stores
/// always see one of the two valid translations.
#[test]
fn walks_race_soundly_with_atomic_pte_updates() {
    let machine = small_machine();
    let mut tables = Tables::new(&machine);
    tables.map_4k(0x1000, 0x2000, P);
    let slot = tables.entry_addr(0x1000, 1);
    let rounds = if cfg!(miri) { 20 } else { 2000 };
    std::thread::scope(|scope| {
        for index in 0..machine.nr_cpus() {
            let machine = &machine;
            let root = tables.root;
            scope.spawn(move || {
                let cpu = machine.cpu(index);
                cpu.set_root(root);
                for _ in 0..rounds {
                    let pa = cpu.translate(0x1008, Access::READ).unwrap().pa;
                    assert!(pa == 0x2008 || pa == 0x3008, "pa {pa:#x}");
                    cpu.flush_page(0x1000);
                }
            });
        }
        for round in 0..rounds {
            let frame = if round % 2 == 0 { 0x3000 } else { 0x2000 };
            machine.write_phys_u64(slot, frame | P).unwrap();
        }
    });
}
