//! The page walkers, one per paging format, each written from its
//! architecture's specification rather than from kvirt's encoder:
//!
//! * [`Paging::X86_64`]: x86-64 4-level paging (Intel SDM vol. 3, section
//!   4.5), this file;
//! * [`Paging::Sv39`], [`Paging::Sv48`]: RISC-V (privileged specification,
//!   section "Sv39"/"Sv48" virtual-memory systems), `riscv.rs`;
//! * [`Paging::Aarch64`]: AArch64 stage 1, 4 KiB granule, 48-bit addresses
//!   (Arm ARM, chapter D8), `aarch64.rs`.
//!
//! Each turns a walk into a [`Translation`] (rights as seen after the walk)
//! or a [`FaultKind`]; [`Translation::permits`] then decides an access, on
//! a walk and on a TLB hit alike.
//!
//! x86-64 control state assumed: CR0.PG = CR0.WP = 1, CR4.PAE = CR4.PGE = 1,
//! CR4.LA57 = CR4.PCIDE = CR4.SMEP = CR4.SMAP = CR4.PKE = 0, `IA32_EFER.NXE` = 1,
//! MAXPHYADDR = 52. Accessed and dirty bits are never written.

use core::fmt;

use crate::machine::{Bus, Machine};
use crate::PhysAddr;

mod aarch64;
mod riscv;

/// The paging format a machine's MMUs walk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Paging {
    /// x86-64 4-level paging; the root is CR3.
    #[default]
    X86_64,
    /// RISC-V Sv39; the root is the physical address of the root table
    /// (`satp.PPN << 12`).
    Sv39,
    /// RISC-V Sv48; the root as for Sv39.
    Sv48,
    /// AArch64 stage 1, 4 KiB granule, 48-bit virtual and physical
    /// addresses; the root is the table address of `TTBR0_EL1` (lower half)
    /// and `TTBR1_EL1` (upper half) alike.
    Aarch64,
}

impl Paging {
    /// The virtual-address bits the format translates.
    #[must_use]
    pub fn va_bits(self) -> u32 {
        match self {
            Paging::Sv39 => 39,
            Paging::X86_64 | Paging::Sv48 | Paging::Aarch64 => 48,
        }
    }

    /// Whether `va` is sign-extended from bit `va_bits() - 1`.
    #[must_use]
    pub fn is_canonical(self, va: usize) -> bool {
        let unused = 64 - self.va_bits();
        (((va as i64) << unused) >> unused) as usize == va
    }
}

/// Bits of a paging-structure entry.
mod bits {
    /// P: present.
    pub(super) const PRESENT: u64 = 1 << 0;
    /// R/W: writes allowed.
    pub(super) const WRITABLE: u64 = 1 << 1;
    /// U/S: user-mode accesses allowed.
    pub(super) const USER: u64 = 1 << 2;
    /// PS: this level-3 or level-2 entry maps a page (reserved at level 4;
    /// PAT at level 1).
    pub(super) const PAGE_SIZE: u64 = 1 << 7;
    /// G: global translation (leaf entries only).
    pub(super) const GLOBAL: u64 = 1 << 8;
    /// XD: instruction fetches not allowed.
    pub(super) const NO_EXECUTE: u64 = 1 << 63;
    /// The physical address field, bits 51:12.
    pub(super) const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;
    /// Bits 20:13, reserved in a 2 MiB page entry (bit 12 is PAT).
    pub(super) const RESERVED_2M: u64 = 0x001F_E000;
    /// Bits 29:13, reserved in a 1 GiB page entry (bit 12 is PAT).
    pub(super) const RESERVED_1G: u64 = 0x3FFF_E000;
}

/// A kind of memory access. The default (and [`Access::READ`]) is a
/// supervisor data read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access {
    /// A write (needs R/W = 1 at every level).
    pub write: bool,
    /// An instruction fetch (needs XD = 0 at every level).
    pub execute: bool,
    /// A user-mode access (needs U/S = 1 at every level); otherwise a
    /// supervisor access, which ignores U/S.
    pub user: bool,
}

impl Access {
    /// A supervisor data read.
    pub const READ: Access = Access { write: false, execute: false, user: false };
    /// A supervisor data write.
    pub const WRITE: Access = Access { write: true, execute: false, user: false };
    /// A supervisor instruction fetch.
    pub const EXECUTE: Access = Access { write: false, execute: true, user: false };
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.user { "user" } else { "supervisor" };
        let what = match (self.write, self.execute) {
            (false, false) => "read",
            (true, false) => "write",
            (false, true) => "execute",
            (true, true) => "write+execute",
        };
        write!(f, "{mode} {what}")
    }
}

/// A successful translation of one virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address of the translated byte.
    pub pa: PhysAddr,
    /// The size of the page that maps it: 4 KiB, 2 MiB or 1 GiB.
    pub page_size: usize,
    /// Data reads are allowed (always on x86-64; RISC-V's `R`).
    pub readable: bool,
    /// Writes are allowed (x86-64: R/W set at every level).
    pub writable: bool,
    /// User-mode accesses are allowed (x86-64: U/S set at every level).
    pub user: bool,
    /// Supervisor-mode accesses are allowed (always on x86-64 without
    /// SMAP and on AArch64 without PAN; not for a RISC-V `U` page).
    pub supervisor: bool,
    /// Supervisor instruction fetches are allowed (x86-64: XD clear at
    /// every level).
    pub executable: bool,
    /// User instruction fetches are allowed (also needs `user`).
    pub user_executable: bool,
    /// The translation is global (x86-64 and RISC-V: G set; AArch64: nG
    /// clear).
    pub global: bool,
}

impl Translation {
    /// Whether this translation allows `access`: the mode (`user` or
    /// `supervisor`), then each kind the access is (a plain read needs
    /// `readable`, a write `writable`, a fetch the mode's execute right).
    /// Supervisor writes need `writable` too (x86-64's CR0.WP = 1).
    pub fn permits(&self, access: Access) -> bool {
        let mode = if access.user { self.user } else { self.supervisor };
        let fetch = if access.user { self.user_executable } else { self.executable };
        mode && (!access.write || self.writable)
            && (!access.execute || fetch)
            && (access.write || access.execute || self.readable)
    }
}

/// A page fault: the access and why it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The virtual address whose translation failed.
    pub va: usize,
    /// The access that was attempted.
    pub access: Access,
    /// Why it failed.
    pub kind: FaultKind,
}

impl fmt::Display for PageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page fault on {} at {:#x}: {}", self.access, self.va, self.kind)
    }
}

impl std::error::Error for PageFault {}

/// Why a translation failed. Levels are numbered as in the SDM: 4 is the
/// PML4, 3 the PDPT, 2 the page directory, 1 the page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The entry at `level` has P = 0.
    NotPresent {
        /// The level of the non-present entry.
        level: u8,
    },
    /// The walk succeeded but the access rights (AND-ed over all levels)
    /// do not allow the access.
    Protection,
    /// The present entry at `level` has a reserved bit set: PS in a PML4E,
    /// or one of bits 20:13 (2 MiB page) or 29:13 (1 GiB page).
    ReservedBit {
        /// The level of the offending entry.
        level: u8,
    },
    /// The leaf's accessed flag is clear (RISC-V `A` without Svadu, and `D`
    /// on a write; AArch64 `AF` without hardware management): the
    /// hardware faults for software to set it.
    AccessFlag {
        /// The level of the leaf.
        level: u8,
    },
    /// The virtual address is not sign-extended from the format's top bit
    /// (bits 63:47 on x86-64).
    NonCanonical,
    /// The table for `level` (the root for 4, or the address in the entry
    /// one level up) is not a page inside RAM. Real hardware would read
    /// whatever is there; the emulator reports it instead.
    BadTableAddress {
        /// The level of the table that could not be read.
        level: u8,
    },
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FaultKind::NotPresent { level } => write!(f, "level {level} entry not present"),
            FaultKind::Protection => f.write_str("access rights violation"),
            FaultKind::ReservedBit { level } => {
                write!(f, "reserved bit set in level {level} entry")
            }
            FaultKind::NonCanonical => f.write_str("non-canonical address"),
            FaultKind::AccessFlag { level } => write!(f, "accessed flag clear in level {level} leaf"),
            FaultKind::BadTableAddress { level } => {
                write!(f, "level {level} table is not in RAM")
            }
        }
    }
}

/// Translates `va` for `access` by walking the page table rooted at `root`,
/// with no TLB. This is what [`Cpu::translate`](crate::Cpu::translate) does
/// on a miss.
///
/// `root` is read like CR3: the table address is its bits 51:12, the rest is
/// ignored. Entries are loaded with [`Machine::read_phys_u64`].
///
/// # Errors
/// A [`PageFault`] if `va` is non-canonical, an entry on the way is not
/// present or has a reserved bit set, a table is not in RAM, or the access
/// rights do not allow `access`.
pub fn walk(machine: &Machine, root: PhysAddr, va: usize, access: Access) -> Result<Translation, PageFault> {
    walk_bus(machine.bus(), machine.paging(), root, va, access)
}

/// [`walk`] on the bus itself, for the CPUs.
pub(crate) fn walk_bus(
    bus: &Bus,
    paging: Paging,
    root: PhysAddr,
    va: usize,
    access: Access,
) -> Result<Translation, PageFault> {
    let fault = |kind| PageFault { va, access, kind };
    if !paging.is_canonical(va) {
        return Err(fault(FaultKind::NonCanonical));
    }
    let translation = match paging {
        Paging::X86_64 => lookup(bus, root, va),
        Paging::Sv39 => riscv::lookup(bus, 3, root, va, access),
        Paging::Sv48 => riscv::lookup(bus, 4, root, va, access),
        Paging::Aarch64 => aarch64::lookup(bus, root, va),
    }
    .map_err(fault)?;
    if translation.permits(access) {
        Ok(translation)
    } else {
        Err(fault(FaultKind::Protection))
    }
}

/// The entry for `va` in the table at `table`, one of level `level`
/// (4 KiB nodes of 512 entries, level 1 mapping 4 KiB pages, as every
/// format here has them), and the shift of the bytes one entry maps.
fn read_entry(bus: &Bus, table: PhysAddr, va: usize, level: u8) -> Result<(u64, u32), FaultKind> {
    let shift = 12 + 9 * u32::from(level - 1);
    let index = ((va >> shift) & 0x1ff) as PhysAddr;
    if !bus.is_ram_page(table) {
        return Err(FaultKind::BadTableAddress { level });
    }
    Ok((bus.read_u64(table + 8 * index).expect("an aligned word of a RAM page is readable"), shift))
}

/// Walks the four levels for a canonical `va`, AND-ing the access rights.
fn lookup(bus: &Bus, root: PhysAddr, va: usize) -> Result<Translation, FaultKind> {
    let mut table = root & bits::ADDRESS;
    let mut writable = true;
    let mut user = true;
    let mut executable = true;
    let mut level = 4u8;
    loop {
        let (entry, shift) = read_entry(bus, table, va, level)?;
        if entry & bits::PRESENT == 0 {
            return Err(FaultKind::NotPresent { level });
        }
        let maps_page = match level {
            4 if entry & bits::PAGE_SIZE != 0 => return Err(FaultKind::ReservedBit { level }),
            4 => false,
            3 | 2 => entry & bits::PAGE_SIZE != 0,
            _ => true,
        };
        let reserved = match (maps_page, level) {
            (true, 3) => bits::RESERVED_1G,
            (true, 2) => bits::RESERVED_2M,
            _ => 0,
        };
        if entry & reserved != 0 {
            return Err(FaultKind::ReservedBit { level });
        }

        writable &= entry & bits::WRITABLE != 0;
        user &= entry & bits::USER != 0;
        executable &= entry & bits::NO_EXECUTE == 0;

        if maps_page {
            let page_size = 1usize << shift;
            let offset_mask = page_size as PhysAddr - 1;
            let frame = entry & bits::ADDRESS & !offset_mask;
            return Ok(Translation {
                pa: frame | (va as PhysAddr & offset_mask),
                page_size,
                readable: true,
                writable,
                user,
                supervisor: true,
                executable,
                user_executable: executable,
                global: entry & bits::GLOBAL != 0,
            });
        }
        table = entry & bits::ADDRESS;
        level -= 1;
    }
}
