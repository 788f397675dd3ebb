//! The page walker: x86-64 4-level paging (Intel SDM vol. 3, section 4.5).
//!
//! Assumed control state: CR0.PG = CR0.WP = 1, CR4.PAE = CR4.PGE = 1,
//! CR4.LA57 = CR4.PCIDE = CR4.SMEP = CR4.SMAP = CR4.PKE = 0, `IA32_EFER.NXE` = 1,
//! MAXPHYADDR = 52. Accessed and dirty bits are never written.

use core::fmt;

use crate::machine::{Bus, Machine};
use crate::PhysAddr;

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
    /// R/W was set at every level.
    pub writable: bool,
    /// U/S was set at every level.
    pub user: bool,
    /// XD was clear at every level.
    pub executable: bool,
    /// G was set in the leaf entry.
    pub global: bool,
}

impl Translation {
    /// Whether this translation allows `access`. Supervisor accesses ignore
    /// `user` (no SMEP/SMAP), but not `writable` (CR0.WP = 1).
    pub fn permits(&self, access: Access) -> bool {
        (!access.write || self.writable)
            && (!access.user || self.user)
            && (!access.execute || self.executable)
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
    /// Bits 63:47 of the virtual address are not all equal.
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
            FaultKind::BadTableAddress { level } => {
                write!(f, "level {level} table is not in RAM")
            }
        }
    }
}

/// Whether `va` is canonical for 48-bit linear addresses.
pub(crate) fn is_canonical(va: usize) -> bool {
    let sign_extended = ((va as i64) << 16) >> 16;
    sign_extended as usize == va
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
    walk_bus(machine.bus(), root, va, access)
}

/// [`walk`] on the bus itself, for the CPUs.
pub(crate) fn walk_bus(
    bus: &Bus,
    root: PhysAddr,
    va: usize,
    access: Access,
) -> Result<Translation, PageFault> {
    let fault = |kind| PageFault { va, access, kind };
    if !is_canonical(va) {
        return Err(fault(FaultKind::NonCanonical));
    }
    let translation = lookup(bus, root, va).map_err(fault)?;
    if translation.permits(access) {
        Ok(translation)
    } else {
        Err(fault(FaultKind::Protection))
    }
}

/// Walks the four levels for a canonical `va`, AND-ing the access rights.
fn lookup(bus: &Bus, root: PhysAddr, va: usize) -> Result<Translation, FaultKind> {
    let mut table = root & bits::ADDRESS;
    let mut writable = true;
    let mut user = true;
    let mut executable = true;
    let mut level = 4u8;
    loop {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = ((va >> shift) & 0x1ff) as PhysAddr;
        if !bus.is_ram_page(table) {
            return Err(FaultKind::BadTableAddress { level });
        }
        let entry = bus.read_u64(table + 8 * index).expect("an aligned word of a RAM page is readable");

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
                writable,
                user,
                executable,
                global: entry & bits::GLOBAL != 0,
            });
        }
        table = entry & bits::ADDRESS;
        level -= 1;
    }
}
