//! Machine configuration and the firmware memory map built from it.

use core::ops::Range;

use crate::mmu::Paging;
use crate::ram::PAGE_SIZE;
use crate::PhysAddr;

/// The low memory every machine reserves, like a PC's first megabyte.
const LOW_MEMORY: PhysAddr = 1 << 20;

/// The size and alignment of the device window.
pub(crate) const DEVICE_WINDOW_SIZE: PhysAddr = 1 << 30;

/// How to build a [`Machine`](crate::Machine): RAM size, CPU count and
/// reserved RAM ranges.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    ram_size: usize,
    cpus: usize,
    reserved: Vec<Range<PhysAddr>>,
    paging: Paging,
}

impl MachineConfig {
    /// `ram_size` bytes of RAM at physical `0..ram_size` (rounded up to
    /// 4 KiB), one CPU, the first 1 MiB reserved (like a PC's low memory)
    /// and the device window above RAM.
    ///
    /// # Panics
    /// If rounding `ram_size` up overflows.
    #[must_use]
    pub fn new(ram_size: usize) -> Self {
        let ram_size = ram_size
            .checked_next_multiple_of(PAGE_SIZE)
            .unwrap_or_else(|| panic!("RAM size {ram_size:#x} is too large"));
        MachineConfig { ram_size, cpus: 1, reserved: Vec::new(), paging: Paging::X86_64 }
    }

    /// Sets the paging format the CPUs' MMUs walk (x86-64 by default).
    #[must_use]
    pub fn paging(mut self, paging: Paging) -> Self {
        self.paging = paging;
        self
    }

    pub(crate) fn paging_format(&self) -> Paging {
        self.paging
    }

    /// Sets the number of CPUs.
    ///
    /// # Panics
    /// If `n` is 0.
    #[must_use]
    pub fn cpus(mut self, n: usize) -> Self {
        assert!(n >= 1, "a machine needs at least one CPU (asked for {n})");
        self.cpus = n;
        self
    }

    /// Reserves an extra RAM range: the memory map reports it as
    /// [`RegionKind::Reserved`]. Ranges may overlap each other and the low
    /// 1 MiB; an empty range is accepted and has no effect.
    ///
    /// # Panics
    /// If `range` is not page aligned, is reversed, or does not lie inside
    /// RAM.
    #[must_use]
    pub fn reserve(mut self, range: Range<PhysAddr>) -> Self {
        let page = PAGE_SIZE as PhysAddr;
        assert!(
            range.start % page == 0 && range.end % page == 0,
            "reserved range {range:#x?} is not 4 KiB aligned"
        );
        assert!(range.start <= range.end, "reserved range {range:#x?} is reversed");
        assert!(
            range.end <= self.ram_size as PhysAddr,
            "reserved range {range:#x?} is not inside RAM (0..{:#x})",
            self.ram_size
        );
        self.reserved.push(range);
        self
    }

    /// The RAM size in bytes (a multiple of 4 KiB).
    pub(crate) fn ram_size(&self) -> usize {
        self.ram_size
    }

    /// The number of CPUs.
    pub(crate) fn nr_cpus(&self) -> usize {
        self.cpus
    }

    /// The device window: 1 GiB at the first 1 GiB boundary at or above the
    /// end of RAM, never at 0.
    pub(crate) fn device_window(&self) -> Range<PhysAddr> {
        let start = (self.ram_size as PhysAddr)
            .checked_next_multiple_of(DEVICE_WINDOW_SIZE)
            .expect("RAM size leaves no room for the device window")
            .max(DEVICE_WINDOW_SIZE);
        start..start + DEVICE_WINDOW_SIZE
    }

    /// The firmware memory map: RAM split into usable and reserved pieces
    /// covering exactly `0..ram_size`, then the device window; sorted,
    /// non-overlapping, with adjacent pieces of one kind merged.
    pub(crate) fn memory_map(&self) -> Vec<Region> {
        let ram_end = self.ram_size as PhysAddr;
        let mut reserved: Vec<Range<PhysAddr>> = core::iter::once(0..LOW_MEMORY.min(ram_end))
            .chain(self.reserved.iter().cloned())
            .filter(|range| !range.is_empty())
            .collect();
        reserved.sort_by_key(|range| range.start);

        let mut merged: Vec<Range<PhysAddr>> = Vec::new();
        for range in reserved {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }

        let mut map = Vec::new();
        let mut cursor = 0;
        for range in merged {
            if cursor < range.start {
                map.push(Region::new(cursor..range.start, RegionKind::Usable));
            }
            cursor = range.end;
            map.push(Region::new(range, RegionKind::Reserved));
        }
        if cursor < ram_end {
            map.push(Region::new(cursor..ram_end, RegionKind::Usable));
        }
        map.push(Region::new(self.device_window(), RegionKind::Device));
        map
    }
}

impl Default for MachineConfig {
    /// 4 GiB of RAM and 2 CPUs.
    fn default() -> Self {
        MachineConfig::new(4 << 30).cpus(2)
    }
}

/// What a [`Region`] of the memory map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// RAM the kernel may allocate.
    Usable,
    /// RAM the kernel must leave alone (low memory, firmware, ...).
    Reserved,
    /// Device memory: not RAM.
    Device,
}

/// One entry of the firmware memory map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// The physical addresses the region covers.
    pub range: Range<PhysAddr>,
    /// What the memory is.
    pub kind: RegionKind,
}

impl Region {
    fn new(range: Range<PhysAddr>, kind: RegionKind) -> Self {
        Region { range, kind }
    }
}
