//! The RISC-V Sv39 and Sv48 walker, from the privileged specification's
//! virtual-address translation process (section "Virtual Address
//! Translation Process"), with Svpbmt and without Svadu, Svnapot or the
//! `SUM` and `MXR` bits:
//!
//! ```text
//!  63  62 61  60      54 53                 10 9  8 7 6 5 4 3 2 1 0
//! ┌───┬──────┬──────────┬─────────────────────┬────┬─┬─┬─┬─┬─┬─┬─┬─┐
//! │ N │ PBMT │ reserved │         PPN         │RSW │D│A│G│U│X│W│R│V│
//! └───┴──────┴──────────┴─────────────────────┴────┴─┴─┴─┴─┴─┴─┴─┴─┘
//! ```
//!
//! An entry with `V` clear, or `W` without `R`, faults; one with none of
//! `R`, `W`, `X` points to the next table (and must have `D`, `A`, `U`
//! and `PBMT` clear); any other is a leaf, at any level. A leaf whose `A`
//! is clear faults, and so does a write to one whose `D` is clear: the
//! translation cached for it is not writable, so a write that hits the TLB
//! faults too. Supervisor accesses to `U` pages fault (`SUM` = 0).

use super::{FaultKind, Translation};
use crate::machine::Bus;
use crate::PhysAddr;

const V: u64 = 1 << 0;
const R: u64 = 1 << 1;
const W: u64 = 1 << 2;
const X: u64 = 1 << 3;
const U: u64 = 1 << 4;
const G: u64 = 1 << 5;
const A: u64 = 1 << 6;
const D: u64 = 1 << 7;
/// Bits 60:54, reserved.
const RESERVED: u64 = 0x7f << 54;
/// Bits 62:61, the Svpbmt memory type (3 is reserved).
const PBMT: u64 = 3 << 61;
/// Bit 63, Svnapot (not implemented: reserved).
const N: u64 = 1 << 63;

fn ppn(entry: u64) -> PhysAddr {
    ((entry >> 10) & ((1 << 44) - 1)) << 12
}

/// Walks `levels` levels (3 for Sv39, 4 for Sv48) for a canonical `va`.
/// Levels are numbered as kvirt numbers them: `levels` is the root, 1 the
/// last.
pub(super) fn lookup(
    bus: &Bus,
    levels: u8,
    root: PhysAddr,
    va: usize,
    access: super::Access,
) -> Result<Translation, FaultKind> {
    let mut table = root & !0xfff;
    let mut global = false;
    let mut level = levels;
    loop {
        let (entry, shift) = super::read_entry(bus, table, va, level)?;
        if entry & V == 0 {
            return Err(FaultKind::NotPresent { level });
        }
        if entry & (W | R) == W || entry & (RESERVED | N) != 0 || entry & PBMT == PBMT {
            return Err(FaultKind::ReservedBit { level });
        }
        global |= entry & G != 0;
        if entry & (R | W | X) == 0 {
            if level == 1 || entry & (D | A | U | PBMT) != 0 {
                return Err(FaultKind::ReservedBit { level });
            }
            table = ppn(entry);
            level -= 1;
            continue;
        }
        let page_size = 1usize << shift;
        let offset_mask = page_size as PhysAddr - 1;
        let frame = ppn(entry);
        if frame & offset_mask != 0 {
            // A misaligned superpage.
            return Err(FaultKind::ReservedBit { level });
        }
        if entry & A == 0 || (access.write && entry & D == 0) {
            return Err(FaultKind::AccessFlag { level });
        }
        let user = entry & U != 0;
        let executable = entry & X != 0;
        return Ok(Translation {
            pa: frame | (va as PhysAddr & offset_mask),
            page_size,
            readable: entry & R != 0,
            writable: entry & (W | D) == W | D,
            user,
            supervisor: !user,
            executable: executable && !user,
            user_executable: executable && user,
            global,
        });
    }
}
