//! Mapping device registers: `KVirtArea::map_untracked_frames` with an
//! uncacheable property, the way a driver maps a device's MMIO window.
//!
//! Maps 4 MiB of the simulated machine's device window (kvirt uses 2 MiB
//! pages where the physical range allows), shows what `query` reports, and
//! shows the two checks kvirt makes for you: memory the frame allocator
//! owns cannot be mapped untracked, and the byte accessors copy only RAM
//! (a driver reads registers with volatile loads through the area's
//! addresses on real hardware).
//!
//! ```sh
//! cargo run -p kvirt --example mmio
//! ```

use kvirt::kspace::{AreaAccessError, KVirtAreaError, KernelSpace, MappedItemRef};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::platform::MemoryRegionKind;
use kvirt::sim::MachineConfig;
use kvirt::Paddr;
use std::ops::Range;

const SIZE_2M: usize = 2 << 20;

/// The first region of the memory map of `kind`.
fn first_region(space: &KernelSpace, kind: MemoryRegionKind) -> Option<Range<Paddr>> {
    space.memory_map().iter().find(|region| region.kind == kind).map(|region| region.range.clone())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20));
    let device = first_region(&space, MemoryRegionKind::Device).ok_or("the machine has no device window")?;
    println!("device window: {device:#x?}");

    let regs = device.start..device.start + 2 * SIZE_2M;
    let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable);
    // SAFETY: `regs` is device memory of the simulated machine that nothing
    // else owns, and it may be accessed uncached for as long as the area
    // lives.
    let area = unsafe { space.try_map_untracked_frames(2 * SIZE_2M, 0, regs.clone(), prop) }?;
    match area.query(area.start()) {
        Some(MappedItemRef::Untracked(pa, level, p)) => {
            println!("{:#x} -> {pa:#x}, level {level} page, {:?}", area.start(), p.cache);
            assert_eq!((pa, level, p), (regs.start, 2, prop), "a 2 MiB page, uncached");
        }
        other => return Err(format!("expected an untracked page, found {other:?}").into()),
    }
    // Byte copies are for RAM: device registers need volatile accesses.
    let err = area.read_bytes(0, &mut [0; 4]).unwrap_err();
    assert!(matches!(err, AreaAccessError::NotRam(_)));
    println!("read_bytes on registers: {err}");

    // RAM the frame allocator hands out cannot be mapped untracked: that
    // would alias frames that may be freed and reused.
    let ram = first_region(&space, MemoryRegionKind::Usable).ok_or("the machine has no usable RAM")?;
    // SAFETY: the call is refused before anything is mapped.
    let refused = unsafe { space.try_map_untracked_frames(SIZE_2M, 0, ram.start..ram.start + 4096, prop) };
    assert!(matches!(refused, Err(KVirtAreaError::TrackedPaddr(_))));
    println!("mapping allocatable RAM untracked: {}", refused.unwrap_err());
    Ok(())
}
