//! Unit tests, one submodule per topic, and a hand-rolled page-table builder
//! they share.

mod bus;
mod cpu;
mod device;
mod machine;
mod memory_map;
mod properties;
mod tlb;
mod walk;
mod walk_other;

use crate::{Machine, MachineConfig, PhysAddr};

/// P: present.
pub(super) const P: u64 = 1 << 0;
/// R/W: writable.
pub(super) const RW: u64 = 1 << 1;
/// U/S: user.
pub(super) const US: u64 = 1 << 2;
/// PS: large page (PAT at level 1).
pub(super) const PS: u64 = 1 << 7;
/// G: global.
pub(super) const G: u64 = 1 << 8;
/// XD: no execute.
pub(super) const XD: u64 = 1 << 63;

/// The flags the builder puts in the table entries it creates: present,
/// writable, user, executable; so the leaf decides unless a test changes an
/// upper entry.
pub(super) const TABLE: u64 = P | RW | US;

pub(super) const KIB4: usize = 1 << 12;
pub(super) const MIB2: usize = 1 << 21;
pub(super) const GIB1: usize = 1 << 30;

/// Where the builder starts allocating tables: just above low memory.
const TABLES_START: PhysAddr = 1 << 20;

/// A small machine for tests: 4 MiB of RAM, 2 CPUs.
pub(super) fn small_machine() -> Machine {
    Machine::new(MachineConfig::new(4 << 20).cpus(2))
}

/// Builds page tables by hand in a machine's RAM, allocating table pages from
/// a bump pointer starting at 1 MiB.
pub(super) struct Tables<'m> {
    machine: &'m Machine,
    next: PhysAddr,
    /// The PML4's physical address.
    pub(super) root: PhysAddr,
}

impl<'m> Tables<'m> {
    /// A builder with an empty PML4.
    pub(super) fn new(machine: &'m Machine) -> Self {
        let mut tables = Tables { machine, next: TABLES_START, root: 0 };
        tables.root = tables.alloc_table();
        tables
    }

    /// A fresh zeroed table page.
    pub(super) fn alloc_table(&mut self) -> PhysAddr {
        let table = self.next;
        self.next += KIB4 as PhysAddr;
        assert!(self.next <= self.machine.ram_size() as PhysAddr, "test tables ran out of RAM");
        table
    }

    /// The physical address of the level-`level` entry for `va`, creating
    /// the tables above it as needed.
    pub(super) fn entry_addr(&mut self, va: usize, level: u8) -> PhysAddr {
        let mut table = self.root;
        for current in (level + 1..=4).rev() {
            let slot = slot(table, va, current);
            let mut entry = self.machine.read_phys_u64(slot).unwrap();
            if entry & P == 0 {
                entry = self.alloc_table() | TABLE;
                self.machine.write_phys_u64(slot, entry).unwrap();
            }
            table = entry & 0x000F_FFFF_FFFF_F000;
        }
        slot(table, va, level)
    }

    /// Writes `entry` as the level-`level` entry for `va`.
    pub(super) fn set(&mut self, va: usize, level: u8, entry: u64) {
        let slot = self.entry_addr(va, level);
        self.machine.write_phys_u64(slot, entry).unwrap();
    }

    /// Reads the level-`level` entry for `va`.
    pub(super) fn get(&mut self, va: usize, level: u8) -> u64 {
        let slot = self.entry_addr(va, level);
        self.machine.read_phys_u64(slot).unwrap()
    }

    /// Replaces the level-`level` entry for `va` with `f(entry)`.
    pub(super) fn update(&mut self, va: usize, level: u8, f: impl FnOnce(u64) -> u64) {
        let entry = self.get(va, level);
        self.set(va, level, f(entry));
    }

    /// Maps the 4 KiB page at `va` to `pa` with leaf `flags`.
    pub(super) fn map_4k(&mut self, va: usize, pa: PhysAddr, flags: u64) {
        self.set(va, 1, pa | flags);
    }

    /// Maps the 2 MiB page at `va` to `pa` with leaf `flags` (PS added).
    pub(super) fn map_2m(&mut self, va: usize, pa: PhysAddr, flags: u64) {
        self.set(va, 2, pa | flags | PS);
    }

    /// Maps the 1 GiB page at `va` to `pa` with leaf `flags` (PS added).
    pub(super) fn map_1g(&mut self, va: usize, pa: PhysAddr, flags: u64) {
        self.set(va, 3, pa | flags | PS);
    }
}

/// The address of the level-`level` entry for `va` in `table`.
fn slot(table: PhysAddr, va: usize, level: u8) -> PhysAddr {
    let index = (va >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff;
    table + 8 * index as PhysAddr
}
