//! Physical memory accesses and bus errors.

use super::*;
use crate::BusError;

#[test]
fn ram_starts_zeroed() {
    let machine = small_machine();
    let mut buf = vec![0xff; 4096];
    machine.read_phys(0x20_0000, &mut buf).unwrap();
    assert!(buf.iter().all(|&byte| byte == 0));
    assert_eq!(machine.read_phys_u64(0x3f_fff8), Ok(0));
}

#[test]
fn write_phys_round_trips_at_unaligned_addresses() {
    let machine = small_machine();
    let data: Vec<u8> = (0..=40).collect();
    for pa in [0x1000, 0x1003, 0x2007, 0x3f_ffd7] {
        machine.write_phys(pa, &data).unwrap();
        let mut back = vec![0; data.len()];
        machine.read_phys(pa, &mut back).unwrap();
        assert_eq!(back, data, "pa {pa:#x}");
    }
}

#[test]
fn partial_word_writes_keep_neighbouring_bytes() {
    let machine = small_machine();
    machine.write_phys_u64(0x1000, u64::MAX).unwrap();
    machine.write_phys(0x1002, &[0, 0]).unwrap();
    let mut buf = [0; 8];
    machine.read_phys(0x1000, &mut buf).unwrap();
    assert_eq!(buf, [0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff]);
}

#[test]
fn word_accesses_use_host_byte_order() {
    let machine = small_machine();
    machine.write_phys_u64(0x1000, 0x0807_0605_0403_0201).unwrap();
    let mut buf = [0; 8];
    machine.read_phys(0x1000, &mut buf).unwrap();
    assert_eq!(u64::from_ne_bytes(buf), 0x0807_0605_0403_0201);
    assert_eq!(machine.read_phys_u64(0x1000), Ok(0x0807_0605_0403_0201));
}

#[test]
fn ram_base_is_page_aligned_and_shows_physical_writes() {
    let machine = small_machine();
    let base = machine.ram_base();
    assert_eq!(base.as_ptr() as usize % 4096, 0);
    machine.write_phys(0x2345, &[0x5a]).unwrap();
    let ptr = base.as_ptr().wrapping_add(0x2345);
    // SAFETY: 0x2345 is inside the machine's RAM, which lives until the end
    // of this test, and no other thread accesses it.
    let byte = unsafe { ptr.read() };
    assert_eq!(byte, 0x5a);
}

#[test]
fn accesses_past_ram_are_unbacked() {
    let machine = small_machine();
    let end = machine.ram_size() as PhysAddr;
    assert_eq!(machine.read_phys(end, &mut [0; 1]), Err(BusError::Unbacked { pa: end }));
    assert_eq!(
        machine.write_phys(end - 4, &[0; 8]),
        Err(BusError::Unbacked { pa: end }),
        "a copy may not run past the end of RAM"
    );
    assert_eq!(machine.read_phys_u64(end), Err(BusError::Unbacked { pa: end }));
    assert_eq!(machine.write_phys_u64(end, 0), Err(BusError::Unbacked { pa: end }));
}

#[test]
fn accesses_outside_ram_and_the_window_are_unbacked() {
    let machine = small_machine();
    let window = machine.device_window();
    for pa in [window.start - 8, window.end, u64::MAX - 3] {
        assert_eq!(machine.read_phys(pa, &mut [0; 4]), Err(BusError::Unbacked { pa }), "pa {pa:#x}");
    }
    assert_eq!(machine.read_phys(window.end - 4, &mut [0; 8]), Err(BusError::Unbacked { pa: window.end }));
}

#[test]
fn a_copy_may_not_straddle_ram_and_the_device_window() {
    let machine = Machine::new(MachineConfig::new(1 << 30));
    assert_eq!(machine.device_window().start, 1 << 30);
    assert_eq!(machine.read_phys((1 << 30) - 4, &mut [0; 8]), Err(BusError::Unbacked { pa: 1 << 30 }));
}

#[test]
fn atomic_word_accesses_must_be_aligned_ram() {
    let machine = small_machine();
    assert_eq!(machine.read_phys_u64(0x1004), Err(BusError::Misaligned { pa: 0x1004 }));
    assert_eq!(machine.write_phys_u64(0x1001, 0), Err(BusError::Misaligned { pa: 0x1001 }));
    let device = machine.device_window().start;
    assert_eq!(machine.read_phys_u64(device), Err(BusError::Unbacked { pa: device }));
}

#[test]
fn empty_accesses_always_succeed() {
    let machine = small_machine();
    assert_eq!(machine.read_phys(u64::MAX, &mut []), Ok(()));
    assert_eq!(machine.write_phys(u64::MAX, &[]), Ok(()));
}

#[test]
fn bus_errors_display_the_address() {
    assert_eq!(
        BusError::Misaligned { pa: 0x1001 }.to_string(),
        "physical address 0x1001 is not 8-byte aligned"
    );
    assert_eq!(
        BusError::Unbacked { pa: 0x40 }.to_string(),
        "physical address 0x40 is not backed by RAM or a device"
    );
}
