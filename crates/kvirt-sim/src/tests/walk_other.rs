//! The RISC-V and AArch64 walkers, on entries written by hand from each
//! architecture's specification.

use crate::{Access, FaultKind, Machine, MachineConfig, Paging};

const ROOT: u64 = 0x10_0000;
const L2: u64 = 0x10_1000;
const L1: u64 = 0x10_2000;
const PAGE: u64 = 0x20_3000;

fn machine(paging: Paging) -> Machine {
    let m = Machine::new(MachineConfig::new(4 << 20).paging(paging));
    m.cpu(0).set_root(ROOT);
    m
}

fn user(access: Access) -> Access {
    Access { user: true, ..access }
}

mod riscv {
    use super::*;

    const V: u64 = 1;
    const R: u64 = 2;
    const W: u64 = 4;
    const X: u64 = 8;
    const U: u64 = 16;
    const A: u64 = 64;
    const D: u64 = 128;

    fn pte(pa: u64, bits: u64) -> u64 {
        (pa >> 12) << 10 | bits
    }

    /// Sv39 tables for the top 256 GiB: `0xffff_ffc0_0000_0000` is root
    /// index 256; the leaf at `leaf` maps page 1 of the first 2 MiB.
    fn sv39(leaf: u64) -> (Machine, usize) {
        let m = machine(Paging::Sv39);
        m.write_phys_u64(ROOT + 8 * 256, pte(L2, V)).unwrap();
        m.write_phys_u64(L2, pte(L1, V)).unwrap();
        m.write_phys_u64(L1 + 8, pte(PAGE, leaf)).unwrap();
        (m, 0xffff_ffc0_0000_1000)
    }

    #[test]
    fn a_readable_writable_leaf_translates() {
        let (m, va) = sv39(V | R | W | A | D);
        let t = m.cpu(0).translate(va + 0x12, Access::WRITE).unwrap();
        assert_eq!((t.pa, t.page_size), (PAGE + 0x12, 4096));
        assert!(m.cpu(0).translate(va, Access::EXECUTE).is_err());
        assert!(m.cpu(0).translate(va, user(Access::READ)).is_err(), "not a U page");
    }

    #[test]
    fn a_clear_accessed_bit_faults_and_a_clear_dirty_bit_faults_writes() {
        let (m, va) = sv39(V | R | W | D);
        assert_eq!(
            m.cpu(0).translate(va, Access::READ).unwrap_err().kind,
            FaultKind::AccessFlag { level: 1 }
        );
        let (m, va) = sv39(V | R | W | A);
        m.cpu(0).translate(va, Access::READ).expect("reads need only A");
        assert_eq!(m.cpu(0).translate(va, Access::WRITE).unwrap_err().kind, FaultKind::Protection, "TLB hit");
        m.cpu(0).flush_all();
        assert_eq!(
            m.cpu(0).translate(va, Access::WRITE).unwrap_err().kind,
            FaultKind::AccessFlag { level: 1 }
        );
    }

    #[test]
    fn supervisor_accesses_to_user_pages_fault() {
        let (m, va) = sv39(V | R | X | U | A);
        assert!(m.cpu(0).translate(va, user(Access::EXECUTE)).is_ok());
        assert_eq!(m.cpu(0).translate(va, Access::READ).unwrap_err().kind, FaultKind::Protection);
    }

    #[test]
    fn reserved_encodings_fault() {
        let (m, va) = sv39(V | W | A | D);
        assert_eq!(
            m.cpu(0).translate(va, Access::READ).unwrap_err().kind,
            FaultKind::ReservedBit { level: 1 }
        );
        let (m, va) = sv39(V | R | A | (1 << 54));
        assert_eq!(
            m.cpu(0).translate(va, Access::READ).unwrap_err().kind,
            FaultKind::ReservedBit { level: 1 }
        );
        // A table entry with A set, and a table pointer at the last level.
        let (m, va) = sv39(V | R | A);
        m.write_phys_u64(L2, pte(L1, V | A)).unwrap();
        assert_eq!(
            m.cpu(0).translate(va, Access::READ).unwrap_err().kind,
            FaultKind::ReservedBit { level: 2 }
        );
        let (m, va) = sv39(V);
        assert_eq!(
            m.cpu(0).translate(va, Access::READ).unwrap_err().kind,
            FaultKind::ReservedBit { level: 1 }
        );
    }

    #[test]
    fn superpages_must_be_aligned() {
        let m = machine(Paging::Sv39);
        m.write_phys_u64(ROOT + 8 * 256, pte(L2, V)).unwrap();
        m.write_phys_u64(L2, pte(0x20_0000, V | R | A)).unwrap();
        m.write_phys_u64(L2 + 8, pte(0x20_1000, V | R | A)).unwrap();
        let va = 0xffff_ffc0_0000_0000;
        let t = m.cpu(0).translate(va + 0x1234, Access::READ).unwrap();
        assert_eq!((t.pa, t.page_size), (0x20_1234, 2 << 20));
        let fault = m.cpu(0).translate(va + (2 << 20), Access::READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::ReservedBit { level: 2 });
    }

    #[test]
    fn sv39_addresses_are_sign_extended_from_bit_38() {
        let (m, _) = sv39(V | R | A);
        let fault = m.cpu(0).translate(0xffff_ff00_0000_0000, Access::READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::NonCanonical);
        assert!(Paging::Sv48.is_canonical(0xffff_ff00_0000_0000));
    }

    #[test]
    fn sv48_walks_four_levels() {
        let m = machine(Paging::Sv48);
        let l3 = 0x10_3000;
        m.write_phys_u64(ROOT + 8 * 256, pte(l3, V)).unwrap();
        m.write_phys_u64(l3, pte(L2, V)).unwrap();
        m.write_phys_u64(L2, pte(L1, V)).unwrap();
        m.write_phys_u64(L1, pte(PAGE, V | R | A)).unwrap();
        let t = m.cpu(0).translate(0xffff_8000_0000_0008, Access::READ).unwrap();
        assert_eq!(t.pa, PAGE + 8);
    }
}

mod aarch64 {
    use super::*;

    const TABLE: u64 = 0b11;
    const PAGE_DESC: u64 = 0b11;
    const BLOCK: u64 = 0b01;
    const AP_EL0: u64 = 1 << 6;
    const AP_RO: u64 = 1 << 7;
    const AF: u64 = 1 << 10;
    const NG: u64 = 1 << 11;
    const PXN: u64 = 1 << 53;
    const AP_TABLE_RO: u64 = 1 << 62;

    /// Tables for `0xffff_8000_0000_0000` (level-0 index 256); the leaf
    /// at `leaf` maps its page 1.
    fn tables(leaf: u64) -> (Machine, usize) {
        let m = machine(Paging::Aarch64);
        let l1 = 0x10_3000;
        m.write_phys_u64(ROOT + 8 * 256, l1 | TABLE).unwrap();
        m.write_phys_u64(l1, L2 | TABLE).unwrap();
        m.write_phys_u64(L2, L1 | TABLE).unwrap();
        m.write_phys_u64(L1 + 8, PAGE | leaf).unwrap();
        (m, 0xffff_8000_0000_1000)
    }

    #[test]
    fn a_page_translates_with_its_rights() {
        let (m, va) = tables(PAGE_DESC | AF | NG);
        let t = m.cpu(0).translate(va + 5, Access::WRITE).unwrap();
        assert_eq!((t.pa, t.page_size, t.global), (PAGE + 5, 4096, false));
        assert!(m.cpu(0).translate(va, user(Access::READ)).is_err(), "AP[1] clear: EL1 only");
        assert!(m.cpu(0).translate(va, Access::EXECUTE).is_ok(), "PXN clear");
    }

    #[test]
    fn a_clear_access_flag_faults() {
        let (m, va) = tables(PAGE_DESC);
        assert_eq!(
            m.cpu(0).translate(va, Access::READ).unwrap_err().kind,
            FaultKind::AccessFlag { level: 1 }
        );
    }

    #[test]
    fn read_only_and_execute_never_are_enforced() {
        let (m, va) = tables(PAGE_DESC | AF | AP_RO | PXN);
        assert!(m.cpu(0).translate(va, Access::READ).is_ok());
        assert_eq!(m.cpu(0).translate(va, Access::WRITE).unwrap_err().kind, FaultKind::Protection);
        assert_eq!(m.cpu(0).translate(va, Access::EXECUTE).unwrap_err().kind, FaultKind::Protection);
        // EL0-writable memory is never executable at EL1.
        let (m, va) = tables(PAGE_DESC | AF | AP_EL0);
        assert!(m.cpu(0).translate(va, user(Access::WRITE)).is_ok());
        assert_eq!(m.cpu(0).translate(va, Access::EXECUTE).unwrap_err().kind, FaultKind::Protection);
    }

    #[test]
    fn a_table_can_make_everything_below_read_only() {
        let (m, va) = tables(PAGE_DESC | AF);
        m.write_phys_u64(L2, L1 | TABLE | AP_TABLE_RO).unwrap();
        assert!(m.cpu(0).translate(va, Access::READ).is_ok());
        assert_eq!(m.cpu(0).translate(va, Access::WRITE).unwrap_err().kind, FaultKind::Protection);
    }

    #[test]
    fn invalid_descriptors_fault() {
        // 01 at the last level is reserved (invalid).
        let (m, va) = tables(BLOCK | AF);
        assert_eq!(
            m.cpu(0).translate(va, Access::READ).unwrap_err().kind,
            FaultKind::NotPresent { level: 1 }
        );
        // A block at level 0 is not allowed with the 4 KiB granule.
        let m = machine(Paging::Aarch64);
        m.write_phys_u64(ROOT + 8 * 256, BLOCK | AF).unwrap();
        let fault = m.cpu(0).translate(0xffff_8000_0000_0000, Access::READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::ReservedBit { level: 4 });
    }

    #[test]
    fn blocks_map_2_mib_and_must_be_aligned() {
        let (m, _) = tables(PAGE_DESC | AF);
        m.write_phys_u64(L2 + 8, 0x20_0000 | BLOCK | AF).unwrap();
        let t = m.cpu(0).translate(0xffff_8000_0020_0010, Access::READ).unwrap();
        assert_eq!((t.pa, t.page_size), (0x20_0010, 2 << 20));
        m.write_phys_u64(L2 + 16, 0x20_1000 | BLOCK | AF).unwrap();
        let fault = m.cpu(0).translate(0xffff_8000_0040_0000, Access::READ).unwrap_err();
        assert_eq!(fault.kind, FaultKind::ReservedBit { level: 2 });
    }
}
