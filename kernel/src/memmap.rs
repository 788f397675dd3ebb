//! From the firmware's E820 map to kvirt's memory map.
//!
//! ## Only RAM below 4 GiB
//!
//! The kernel hands kvirt only the RAM below
//! [`BOOT_LINEAR_MAP_LIMIT`](crate::boot::BOOT_LINEAR_MAP_LIMIT) (4 GiB) and
//! leaves the rest out, because of how kvirt is set up: `KernelSpace::new`
//! reaches physical memory at `LINEAR_MAPPING_BASE_VADDR + pa` (the
//! platform's `phys_base`) *before* the kernel switches to kvirt's page
//! table, so through the boot page tables, which map only the first 4 GiB
//! there (2 MiB pages, four page directories; see [`boot`](crate::boot)).
//! kvirt places its frame metadata array, and takes the page-table nodes of
//! the tables it builds, anywhere in the RAM it is given; RAM above the
//! boot mapping could put either where the CPU faults. Handing it over
//! would need boot tables that map all of RAM (or kvirt's nodes and
//! metadata kept below the limit), and a heap sized for the larger
//! allocator bookkeeping ([`HEAP_SIZE`](crate::heap::HEAP_SIZE) is sized for
//! 4 GiB). `cargo xtask qemu` boots with 256 MiB, so nothing is left out
//! there; on a larger machine `kernel_main` prints every range left out and
//! the total.

use alloc::vec::Vec;
use core::ops::Range;

use kvirt::platform::MemoryRegion;
use kvirt::{align_down, align_up, Paddr, PAGE_SIZE};

use crate::boot::{FirmwareRegion, E820_RAM};

/// Builds kvirt's memory map: every RAM entry (E820 type 1), shrunk to whole
/// pages and cut at `limit` (see the module documentation for why), split
/// into `Reserved` pieces where it meets `reserved` and `Usable` pieces
/// elsewhere. Everything that is not RAM is left out (kvirt would ignore
/// `Device` regions anyway; device memory is mapped explicitly with
/// `map_untracked_frames`).
///
/// Returns the map, sorted, and the whole pages of RAM left out because
/// they lie at or above `limit`, sorted.
pub fn for_kvirt(
    firmware: &[FirmwareRegion],
    reserved: &[Range<Paddr>],
    limit: Paddr,
) -> (Vec<MemoryRegion>, Vec<Range<Paddr>>) {
    let mut ram: Vec<Range<Paddr>> = Vec::new();
    let mut left_out = Vec::new();
    for r in firmware.iter().filter(|r| r.kind == E820_RAM) {
        let start = align_up(r.range.start, PAGE_SIZE);
        let end = align_down(r.range.end, PAGE_SIZE);
        if start.max(limit) < end {
            left_out.push(start.max(limit)..end);
        }
        ram.push(start..end.min(limit));
    }
    left_out.sort_by_key(|r| r.start);
    (MemoryRegion::carve(&ram, reserved), left_out)
}
