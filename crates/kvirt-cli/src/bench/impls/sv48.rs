//! `page_table_multiarch`'s generic 4-level table with an Sv48 entry, for
//! `kvirt bench --arch sv48`.
//!
//! The crate's own RISC-V types (`Sv48PageTable`, and `Rv64PTE` from
//! `page_table_entry`) compile only for RISC-V targets, so the benchmark
//! gives its generic `PageTable64` the two small pieces they would: the
//! Sv48 shape and an entry encoded as the RISC-V privileged specification
//! says (the same choices the crate makes: `A` and `D` set in every leaf,
//! a leaf is any valid entry with `R`, `W` or `X`).

use memory_addr::{PhysAddr, VirtAddr};
use page_table_multiarch::{GenericPTE, MappingFlags, PagingMetaData};

/// The Sv48 shape: 4 levels, 48-bit virtual and 56-bit physical addresses.
/// TLB flushes are no-ops on the host, as the crate's own are off bare
/// metal.
#[derive(Clone, Copy, Debug)]
pub struct Sv48Meta;

impl PagingMetaData for Sv48Meta {
    const LEVELS: usize = 4;
    const PA_MAX_BITS: usize = 56;
    const VA_MAX_BITS: usize = 48;
    type VirtAddr = VirtAddr;

    fn flush_tlb(_vaddr: Option<VirtAddr>) {}
}

const V: u64 = 1 << 0;
const R: u64 = 1 << 1;
const W: u64 = 1 << 2;
const X: u64 = 1 << 3;
const U: u64 = 1 << 4;
const A: u64 = 1 << 6;
const D: u64 = 1 << 7;
const PPN: u64 = ((1 << 44) - 1) << 10;

/// An Sv48 page-table entry.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct Sv48Pte(u64);

fn bits_of(flags: MappingFlags) -> u64 {
    let mut bits = V | A | D;
    for (flag, bit) in [
        (MappingFlags::READ, R),
        (MappingFlags::WRITE, W),
        (MappingFlags::EXECUTE, X),
        (MappingFlags::USER, U),
    ] {
        if flags.contains(flag) {
            bits |= bit;
        }
    }
    bits
}

impl GenericPTE for Sv48Pte {
    fn new_page(paddr: PhysAddr, flags: MappingFlags, _is_huge: bool) -> Self {
        Self(bits_of(flags) | ((paddr.as_usize() as u64 >> 12) << 10))
    }

    fn new_table(paddr: PhysAddr) -> Self {
        Self(V | ((paddr.as_usize() as u64 >> 12) << 10))
    }

    fn paddr(&self) -> PhysAddr {
        PhysAddr::from((((self.0 & PPN) >> 10) << 12) as usize)
    }

    fn flags(&self) -> MappingFlags {
        let mut flags = MappingFlags::empty();
        for (flag, bit) in [
            (MappingFlags::READ, R),
            (MappingFlags::WRITE, W),
            (MappingFlags::EXECUTE, X),
            (MappingFlags::USER, U),
        ] {
            if self.0 & bit != 0 {
                flags |= flag;
            }
        }
        flags
    }

    fn set_paddr(&mut self, paddr: PhysAddr) {
        self.0 = (self.0 & !PPN) | ((paddr.as_usize() as u64 >> 12) << 10);
    }

    fn set_flags(&mut self, flags: MappingFlags, _is_huge: bool) {
        self.0 = (self.0 & PPN) | bits_of(flags);
    }

    fn bits(self) -> usize {
        self.0 as usize
    }

    fn is_unused(&self) -> bool {
        self.0 == 0
    }

    fn is_present(&self) -> bool {
        self.0 & V != 0
    }

    fn is_huge(&self) -> bool {
        self.0 & (R | W | X) != 0
    }

    fn clear(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_leaves_are_recognised() {
        let rw = MappingFlags::READ | MappingFlags::WRITE;
        let leaf = Sv48Pte::new_page(PhysAddr::from(0x1234_5000), rw, false);
        assert_eq!((leaf.paddr().as_usize(), leaf.flags()), (0x1234_5000, rw));
        assert!(leaf.is_present() && leaf.is_huge());
        assert_eq!(leaf.bits() as u64 & (A | D), A | D, "A and D are set in every leaf");
        let table = Sv48Pte::new_table(PhysAddr::from(0x2000));
        assert!(table.is_present() && !table.is_huge());
        assert_eq!(table.paddr().as_usize(), 0x2000);
    }
}
