//! Finding the CPUs: the local APIC IDs of the ACPI MADT.
//!
//! The RSDP comes from `hvm_start_info` (or, if the loader left it out,
//! from the BIOS area scan the ACPI specification describes); from it the
//! RSDT (or XSDT), and from that the table signed `APIC`, whose type-0
//! entries are the processors' local APICs. Read through the boot tables'
//! linear mapping, so before the switch to kvirt's page table (the ACPI
//! tables are not RAM kvirt maps).

use alloc::vec::Vec;

use kvirt::Paddr;

use crate::boot::read_phys;

/// The size of an ACPI table header.
const HEADER: usize = 36;

/// Finds the RSDP in the EBDA's first KiB or in `0xe0000..0x100000`.
fn scan_for_rsdp() -> Option<Paddr> {
    let ebda = Paddr::from(read_phys::<u16>(0x40e)) << 4;
    let areas = [ebda..ebda + 1024, 0xe_0000..0x10_0000];
    areas.into_iter().flat_map(|r| r.step_by(16)).find(|&pa| &read_phys::<[u8; 8]>(pa) == b"RSD PTR ")
}

/// The local APIC IDs of the enabled processors, in the MADT's order (the
/// bootstrap CPU first, as firmware lists it). `rsdp` is the loader's
/// pointer, or 0.
///
/// # Panics
///
/// If there is no RSDP or no MADT, or they are malformed.
pub fn local_apic_ids(rsdp: Paddr) -> Vec<u32> {
    let rsdp = if rsdp != 0 { rsdp } else { scan_for_rsdp().expect("no ACPI RSDP") };
    assert_eq!(&read_phys::<[u8; 8]>(rsdp), b"RSD PTR ", "no RSDP signature at {rsdp:#x}");
    let revision = read_phys::<u8>(rsdp + 15);
    let (root, entry_size) = if revision >= 2 && read_phys::<u64>(rsdp + 24) != 0 {
        (read_phys::<u64>(rsdp + 24) as Paddr, 8)
    } else {
        (read_phys::<u32>(rsdp + 16) as Paddr, 4)
    };
    let root_len = read_phys::<u32>(root + 4) as usize;
    let madt = (HEADER..root_len)
        .step_by(entry_size)
        .map(|off| {
            if entry_size == 8 {
                read_phys::<u64>(root + off) as Paddr
            } else {
                read_phys::<u32>(root + off) as Paddr
            }
        })
        .find(|&table| &read_phys::<[u8; 4]>(table) == b"APIC")
        .expect("no MADT (APIC table) in the ACPI root table");
    let madt_len = read_phys::<u32>(madt + 4) as usize;
    let mut ids = Vec::new();
    // Entries follow the header, the local APIC address and the flags.
    let mut off = HEADER + 8;
    while off + 2 <= madt_len {
        let (kind, len) = (read_phys::<u8>(madt + off), usize::from(read_phys::<u8>(madt + off + 1)));
        assert!(len >= 2, "a MADT entry of length {len}");
        // Type 0: processor local APIC (ACPI id, APIC id, flags: enabled).
        if kind == 0 && len >= 8 && read_phys::<u32>(madt + off + 4) & 1 != 0 {
            ids.push(u32::from(read_phys::<u8>(madt + off + 3)));
        }
        off += len;
    }
    ids
}
