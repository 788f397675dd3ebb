//! Machine-wide properties: laziness, thread safety, formatting.

use super::*;
use crate::{Cpu, MemError, PageFault};

/// The process's resident set size in bytes, if `/proc` says.
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
#[cfg_attr(miri, ignore = "allocates 4 GiB and reads /proc")]
fn four_gib_machine_costs_little_resident_memory() {
    let Some(before) = resident_bytes() else {
        println!("note: /proc/self/status is unavailable; skipping the VmRSS check");
        return;
    };
    let machine = Machine::new(MachineConfig::default());
    assert_eq!(machine.ram_size(), 4 << 30);
    for pa in [0, 1 << 31, (4 << 30) - 8] {
        machine.write_phys(pa, &[1; 8]).unwrap();
    }
    let after = resident_bytes().expect("VmRSS was readable a moment ago");
    let grown = after.saturating_sub(before);
    assert!(grown < 64 << 20, "a 4 GiB machine made the process {grown} bytes bigger");
    drop(machine);
}

#[test]
fn machine_and_cpu_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Machine>();
    assert_send_sync::<Cpu>();
    assert_send_sync::<MemError>();
    assert_send_sync::<PageFault>();
}

#[test]
fn machine_debug_is_brief() {
    let machine = small_machine();
    let text = format!("{machine:?}");
    assert!(text.contains("ram_size: 0x400000"), "{text}");
    assert!(text.contains("nr_cpus: 2"), "{text}");
    assert!(text.len() < 200, "{text}");
    let cpu = format!("{:?}", machine.cpu(1));
    assert!(cpu.contains("index: 1"), "{cpu}");
}

#[test]
#[cfg_attr(miri, ignore = "allocates 4 GiB")]
fn default_machine_has_4_gib_and_2_cpus() {
    let machine = Machine::new(MachineConfig::default());
    assert_eq!(machine.ram_size(), 4 << 30);
    assert_eq!(machine.nr_cpus(), 2);
    assert_eq!(machine.device_window(), (4 << 30)..(5 << 30));
}
