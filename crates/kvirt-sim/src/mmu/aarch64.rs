//! The AArch64 stage 1 walker for the 4 KiB granule and 48-bit addresses,
//! from the Arm ARM (chapter D8, "The AArch64 Virtual Memory System
//! Architecture"), for EL1&0 with `PAN`, `WXN` and hardware access-flag
//! and dirty-state management off:
//!
//! ```text
//!  descriptor  63      59 58  55 54  53  52  51  47            12 11 10 9 8 7  6  5 4  2 1 0
//!  table       │APTable, │ ign │             │ next-level table  │    ignored            │1│1│
//!              │XNTable  │     │             │ address           │                       │ │ │
//!  block/page  │ ignored │ SW  │UXN│PXN│  …  │ output address    │nG│AF│SH │AP[2:1]│NS│Idx│b│1│
//! ```
//!
//! Bits 1:0 are `11` for a table (levels 0 to 2) or a page (level 3), `01`
//! for a block (levels 1 and 2: 1 GiB and 2 MiB); anything else, and a
//! block at level 0, faults. A leaf whose `AF` is clear faults (an Access
//! flag fault). `AP[2]` makes a leaf read-only, `AP[1]` opens it to EL0;
//! `PXN` and `UXN` forbid fetches at EL1 and EL0, and memory EL0 may write
//! is never executable at EL1. A table's `APTable` and `XNTable` bits
//! restrict everything below it.

use super::{FaultKind, Translation};
use crate::machine::Bus;
use crate::PhysAddr;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const AP_EL0: u64 = 1 << 6;
const AP_READ_ONLY: u64 = 1 << 7;
const AF: u64 = 1 << 10;
const NOT_GLOBAL: u64 = 1 << 11;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const PXN_TABLE: u64 = 1 << 59;
const UXN_TABLE: u64 = 1 << 60;
const AP_TABLE_NO_EL0: u64 = 1 << 61;
const AP_TABLE_READ_ONLY: u64 = 1 << 62;
/// The output (or next-table) address, bits 47:12.
const ADDRESS: u64 = 0x0000_ffff_ffff_f000;

/// Walks the four levels for a canonical `va`. Levels are numbered as kvirt
/// numbers them: 4 is the Arm ARM's level 0, 1 its level 3.
pub(super) fn lookup(bus: &Bus, root: PhysAddr, va: usize) -> Result<Translation, FaultKind> {
    let mut table = root & ADDRESS;
    let (mut no_el0, mut read_only, mut pxn, mut uxn) = (false, false, false, false);
    let mut level = 4u8;
    loop {
        let (entry, shift) = super::read_entry(bus, table, va, level)?;
        if entry & VALID == 0 {
            return Err(FaultKind::NotPresent { level });
        }
        let is_table = entry & TABLE_OR_PAGE != 0 && level > 1;
        if is_table {
            no_el0 |= entry & AP_TABLE_NO_EL0 != 0;
            read_only |= entry & AP_TABLE_READ_ONLY != 0;
            pxn |= entry & PXN_TABLE != 0;
            uxn |= entry & UXN_TABLE != 0;
            table = entry & ADDRESS;
            level -= 1;
            continue;
        }
        // At kvirt's level 1 (the Arm ARM's level 3) a leaf is a page, bits
        // 1:0 = 11 (01 is invalid there); a block (01) is allowed only at
        // kvirt's levels 2 and 3 (2 MiB and 1 GiB), never at the root.
        let leaf_ok = if level == 1 { entry & TABLE_OR_PAGE != 0 } else { level <= 3 };
        if !leaf_ok {
            return Err(if level == 1 {
                FaultKind::NotPresent { level }
            } else {
                FaultKind::ReservedBit { level }
            });
        }
        let page_size = 1usize << shift;
        let offset_mask = page_size as PhysAddr - 1;
        let frame = entry & ADDRESS;
        if frame & offset_mask != 0 {
            // Output-address bits below the block size are RES0.
            return Err(FaultKind::ReservedBit { level });
        }
        if entry & AF == 0 {
            return Err(FaultKind::AccessFlag { level });
        }
        let user = entry & AP_EL0 != 0 && !no_el0;
        let writable = entry & AP_READ_ONLY == 0 && !read_only;
        return Ok(Translation {
            pa: frame | (va as PhysAddr & offset_mask),
            page_size,
            readable: true,
            writable,
            user,
            supervisor: true,
            executable: entry & PXN == 0 && !pxn && !(user && writable),
            user_executable: user && entry & UXN == 0 && !uxn,
            global: entry & NOT_GLOBAL == 0,
        });
    }
}
