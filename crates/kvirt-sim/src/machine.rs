//! The machine: RAM, the device window, the physical bus and the CPUs.

use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;
use std::sync::Arc;

use crate::config::{MachineConfig, Region};
use crate::cpu::Cpu;
use crate::device::SimDevice;
use crate::mmu::Paging;
use crate::ram::Ram;
use crate::PhysAddr;

/// An emulated x86-64 machine: lazily committed RAM, a device window,
/// a firmware memory map and a number of [`Cpu`]s with their own TLBs.
///
/// See the [crate documentation](crate) for the memory layout.
pub struct Machine {
    bus: Arc<Bus>,
    map: Vec<Region>,
    cpus: Vec<Cpu>,
    paging: Paging,
}

impl Machine {
    /// Builds a machine with zeroed RAM, every CPU's CR3 at 0 and empty TLBs.
    ///
    /// # Panics
    /// If the RAM cannot be allocated.
    pub fn new(config: MachineConfig) -> Self {
        let bus = Arc::new(Bus {
            ram: Ram::new(config.ram_size()),
            device: SimDevice::default(),
            window: config.device_window(),
        });
        let paging = config.paging_format();
        let cpus = (0..config.nr_cpus()).map(|index| Cpu::new(index, Arc::clone(&bus), paging)).collect();
        Machine { bus, map: config.memory_map(), cpus, paging }
    }

    /// Base of RAM: physical address `pa < ram_size()` lives at
    /// `ram_base().add(pa)`.
    ///
    /// The pointer is 4 KiB aligned, the memory zero-initialised, and valid
    /// for reads and writes until the machine is dropped. Pages are committed
    /// by the host kernel on first touch.
    ///
    /// Everything this crate does to RAM (the page walker, [`read_phys`],
    /// [`write_phys`], [`Cpu::read`], ...) is made of atomic operations on
    /// aligned 8-byte words, so code that updates page-table entries through
    /// `AtomicU64`s on this memory may do so concurrently with them. Code
    /// that accesses the memory non-atomically through this pointer must not
    /// do so concurrently with any other access to the same bytes.
    ///
    /// [`read_phys`]: Machine::read_phys
    /// [`write_phys`]: Machine::write_phys
    pub fn ram_base(&self) -> NonNull<u8> {
        self.bus.ram.base()
    }

    /// The RAM size in bytes (a multiple of 4 KiB).
    pub fn ram_size(&self) -> usize {
        self.bus.ram.size()
    }

    /// The firmware memory map, sorted by address and non-overlapping: RAM
    /// split into [`Usable`](crate::RegionKind::Usable) and
    /// [`Reserved`](crate::RegionKind::Reserved) pieces covering exactly
    /// `0..ram_size()`, followed by the [`Device`](crate::RegionKind::Device)
    /// window.
    pub fn memory_map(&self) -> &[Region] {
        &self.map
    }

    /// The 1 GiB device window, above RAM and 1 GiB aligned: it starts at
    /// `ram_size()` rounded up to 1 GiB, or at 1 GiB if that is 0.
    ///
    /// Its first page holds the sim device (see [`SIM_DEVICE_ID`] for the
    /// registers); every other address reads as all ones and ignores writes.
    ///
    /// [`SIM_DEVICE_ID`]: crate::SIM_DEVICE_ID
    pub fn device_window(&self) -> Range<PhysAddr> {
        self.bus.window.clone()
    }

    /// The paging format the CPUs' MMUs walk.
    pub fn paging(&self) -> Paging {
        self.paging
    }

    /// The number of CPUs.
    pub fn nr_cpus(&self) -> usize {
        self.cpus.len()
    }

    /// Every CPU, in order of their numbers.
    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus
    }

    /// CPU number `index`.
    ///
    /// # Panics
    /// If `index >= nr_cpus()`.
    pub fn cpu(&self, index: usize) -> &Cpu {
        self.cpus.get(index).unwrap_or_else(|| {
            panic!("CPU index {index} is out of range: the machine has {} CPUs", self.cpus.len())
        })
    }

    /// Copies `buf.len()` bytes of physical memory at `pa` into `buf`.
    ///
    /// The bytes must all be RAM or all be in the device window; otherwise
    /// the error names the first byte that could not be reached.
    ///
    /// # Errors
    /// [`BusError::Unbacked`] if the range is not all RAM or all device
    /// window.
    pub fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), BusError> {
        self.bus.read(pa, buf)
    }

    /// Copies `data` to physical memory at `pa`; see [`read_phys`] for which
    /// ranges are accepted. Writes to read-only or unknown device registers
    /// are ignored.
    ///
    /// # Errors
    /// As for [`read_phys`].
    ///
    /// [`read_phys`]: Machine::read_phys
    pub fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> Result<(), BusError> {
        self.bus.write(pa, data)
    }

    /// Atomically loads the 8-byte RAM word at `pa` (host byte order, which
    /// is little-endian like x86-64 on every supported host). This is how the
    /// page walker reads entries.
    ///
    /// # Errors
    /// [`BusError::Misaligned`] if `pa` is not 8-aligned, else
    /// [`BusError::Unbacked`] if it is not RAM (device registers included).
    pub fn read_phys_u64(&self, pa: PhysAddr) -> Result<u64, BusError> {
        self.bus.read_u64(pa)
    }

    /// Atomically stores the 8-byte RAM word at `pa` (host byte order): the
    /// counterpart of [`read_phys_u64`](Machine::read_phys_u64), handy for
    /// writing page-table entries by hand.
    ///
    /// # Errors
    /// As for [`read_phys_u64`](Machine::read_phys_u64).
    pub fn write_phys_u64(&self, pa: PhysAddr, value: u64) -> Result<(), BusError> {
        self.bus.write_u64(pa, value)
    }

    /// The physical bus shared with the CPUs.
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("ram_size", &format_args!("{:#x}", self.ram_size()))
            .field("device_window", &format_args!("{:#x?}", self.bus.window))
            .field("nr_cpus", &self.nr_cpus())
            .finish_non_exhaustive()
    }
}

/// A failed physical memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// `pa` is neither RAM nor in the device window, or an access starting in
    /// one of them runs past its end (then `pa` is the first byte past it).
    Unbacked {
        /// The first physical address that could not be reached.
        pa: PhysAddr,
    },
    /// An 8-byte atomic access at an address that is not 8-aligned.
    Misaligned {
        /// The requested address.
        pa: PhysAddr,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BusError::Unbacked { pa } => {
                write!(f, "physical address {pa:#x} is not backed by RAM or a device")
            }
            BusError::Misaligned { pa } => {
                write!(f, "physical address {pa:#x} is not 8-byte aligned")
            }
        }
    }
}

impl std::error::Error for BusError {}

/// Where a physical access lands.
enum Target {
    /// RAM, at this offset.
    Ram(usize),
    /// The device window, at this offset from its start.
    Device(PhysAddr),
}

/// The physical address space: RAM and the device window. Shared by the
/// [`Machine`] and its CPUs.
pub(crate) struct Bus {
    ram: Ram,
    device: SimDevice,
    window: Range<PhysAddr>,
}

impl Bus {
    /// Whether the 4 KiB page at `pa` is RAM (so a page table may live there).
    pub(crate) fn is_ram_page(&self, pa: PhysAddr) -> bool {
        pa.checked_add(crate::ram::PAGE_SIZE as PhysAddr)
            .is_some_and(|end| end <= self.ram.size() as PhysAddr)
    }

    /// Finds where the non-empty access `pa..pa + len` lands.
    fn locate(&self, pa: PhysAddr, len: usize) -> Result<Target, BusError> {
        let len = len as PhysAddr;
        let ram_end = self.ram.size() as PhysAddr;
        if pa < ram_end {
            if len <= ram_end - pa {
                Ok(Target::Ram(pa as usize))
            } else {
                Err(BusError::Unbacked { pa: ram_end })
            }
        } else if self.window.contains(&pa) {
            if len <= self.window.end - pa {
                Ok(Target::Device(pa - self.window.start))
            } else {
                Err(BusError::Unbacked { pa: self.window.end })
            }
        } else {
            Err(BusError::Unbacked { pa })
        }
    }

    pub(crate) fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), BusError> {
        if buf.is_empty() {
            return Ok(());
        }
        match self.locate(pa, buf.len())? {
            Target::Ram(offset) => self.ram.read(offset, buf),
            Target::Device(offset) => self.device.read(offset, buf),
        }
        Ok(())
    }

    pub(crate) fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), BusError> {
        if data.is_empty() {
            return Ok(());
        }
        match self.locate(pa, data.len())? {
            Target::Ram(offset) => self.ram.write(offset, data),
            Target::Device(offset) => self.device.write(offset, data),
        }
        Ok(())
    }

    /// Checks an 8-byte atomic access and returns its RAM offset.
    fn ram_word(&self, pa: PhysAddr) -> Result<usize, BusError> {
        if pa % 8 != 0 {
            return Err(BusError::Misaligned { pa });
        }
        if pa >= self.ram.size() as PhysAddr {
            return Err(BusError::Unbacked { pa });
        }
        Ok(pa as usize)
    }

    pub(crate) fn read_u64(&self, pa: PhysAddr) -> Result<u64, BusError> {
        Ok(self.ram.load_u64(self.ram_word(pa)?))
    }

    pub(crate) fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), BusError> {
        self.ram.store_u64(self.ram_word(pa)?, value);
        Ok(())
    }
}
