//! The device window and the sim device.

use super::*;
use crate::{SIM_DEVICE_ID, SIM_DEVICE_VERSION};

fn read_u32(machine: &Machine, pa: PhysAddr) -> u32 {
    let mut buf = [0; 4];
    machine.read_phys(pa, &mut buf).unwrap();
    u32::from_le_bytes(buf)
}

fn read_u64(machine: &Machine, pa: PhysAddr) -> u64 {
    let mut buf = [0; 8];
    machine.read_phys(pa, &mut buf).unwrap();
    u64::from_le_bytes(buf)
}

#[test]
fn device_reads_the_sim_device_id_and_version() {
    let machine = small_machine();
    let base = machine.device_window().start;
    assert_eq!(read_u32(&machine, base), SIM_DEVICE_ID);
    assert_eq!(read_u32(&machine, base + 4), SIM_DEVICE_VERSION);
    assert_eq!(read_u64(&machine, base + 8), 0, "scratch starts at 0");
}

#[test]
fn device_scratch_register_round_trips() {
    let machine = small_machine();
    let base = machine.device_window().start;
    machine.write_phys(base + 8, &0xdead_beef_cafe_f00du64.to_le_bytes()).unwrap();
    assert_eq!(read_u64(&machine, base + 8), 0xdead_beef_cafe_f00d);
    machine.write_phys(base + 9, &[0x11, 0x22]).unwrap();
    assert_eq!(read_u64(&machine, base + 8), 0xdead_beef_ca22_110d);
}

#[test]
fn device_scratch_register_is_per_machine() {
    let first = small_machine();
    let second = small_machine();
    let scratch = first.device_window().start + 8;
    first.write_phys(scratch, &[7; 8]).unwrap();
    assert_eq!(read_u64(&first, scratch), 0x0707_0707_0707_0707);
    assert_eq!(read_u64(&second, scratch), 0);
}

#[test]
fn device_ignores_writes_to_read_only_and_unknown_registers() {
    let machine = small_machine();
    let base = machine.device_window().start;
    machine.write_phys(base, &[0; 8]).unwrap();
    machine.write_phys(base + 0x100, &[0; 8]).unwrap();
    assert_eq!(read_u32(&machine, base), SIM_DEVICE_ID);
    assert_eq!(read_u32(&machine, base + 4), SIM_DEVICE_VERSION);
    assert_eq!(read_u64(&machine, base + 0x100), u64::MAX);
}

#[test]
fn device_unknown_addresses_read_all_ones() {
    let machine = small_machine();
    let window = machine.device_window();
    for pa in [window.start + 0x10, window.start + 0x1000, window.end - 8] {
        assert_eq!(read_u64(&machine, pa), u64::MAX, "pa {pa:#x}");
    }
}

#[test]
fn device_read_spanning_registers_and_open_bus() {
    let machine = small_machine();
    let base = machine.device_window().start;
    machine.write_phys(base + 8, &[0x42; 8]).unwrap();
    let mut buf = [0; 12];
    machine.read_phys(base + 6, &mut buf).unwrap();
    let version = SIM_DEVICE_VERSION.to_le_bytes();
    assert_eq!(buf[..2], version[2..]);
    assert_eq!(buf[2..10], [0x42; 8]);
    assert_eq!(buf[10..], [0xff; 2]);
}
