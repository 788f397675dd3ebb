//! An emulated machine for testing kernel memory management on an ordinary
//! host.
//!
//! `kvirt-sim` is *hardware*: RAM, a firmware memory map, a device window and
//! CPUs whose MMUs walk page tables and cache translations in per-CPU TLBs.
//! The paging format is chosen per machine ([`MachineConfig::paging`]):
//! x86-64 4-level paging (the default), RISC-V Sv39 and Sv48, and AArch64
//! stage 1 with the 4 KiB granule. It does not depend on the kvirt library;
//! each page walker is an independent implementation of its architecture's
//! specification (Intel SDM vol. 3 section 4.5, the RISC-V privileged
//! specification, the Arm ARM chapter D8), so it is an oracle for the
//! page-table entries the library writes.
//!
//! ```
//! use kvirt_sim::{Access, Machine, MachineConfig};
//!
//! let machine = Machine::new(MachineConfig::new(4 << 20));
//! // A PML4 at 1 MiB, a PDPT at 1 MiB + 4 KiB, and a 1 GiB page at 0.
//! let (pml4, pdpt) = (0x10_0000, 0x10_1000);
//! machine.write_phys_u64(pml4, pdpt | 0b11)?; // present, writable
//! machine.write_phys_u64(pdpt, 0x83)?; // present, writable, PS
//! let cpu = machine.cpu(0);
//! cpu.set_root(pml4);
//! assert_eq!(cpu.translate(0x1234, Access::READ)?.pa, 0x1234);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Physical memory
//!
//! ```text
//!  physical address
//!  0 ─────────────────┬──────────────────────────────────────────────────
//!                     │ RAM, low 1 MiB              Reserved
//!  0x10_0000 ─────────┼──────────────────────────────────────────────────
//!                     │ RAM                         Usable, except ranges
//!                     │                             MachineConfig::reserve
//!                     │                             carved out as Reserved
//!  ram_size ──────────┼──────────────────────────────────────────────────
//!                     │ hole (up to the next 1 GiB) unbacked: BusError
//!  W = align_up(      ├──────────────────────────────────────────────────
//!   ram_size, 1 GiB)  │ sim device page             id, version, scratch
//!   (1 GiB if 0)      │ rest of the window          reads all ones
//!  W + 1 GiB ─────────┼──────────────────────────────────────────────────
//!                     │ unbacked: BusError
//! ```
//!
//! [`Machine::memory_map`] reports exactly this: the RAM pieces in order,
//! then the device window.
//!
//! # Laziness
//!
//! RAM is one zeroed allocation made with `std::alloc::alloc_zeroed` at an
//! alignment of 16, which glibc serves with `calloc`; for a large size that
//! is a fresh anonymous `mmap`, which the host kernel already guarantees to be
//! zero and commits page by page on first touch. So a 4 GiB machine costs
//! almost no resident memory until a test touches its pages. The pointer is
//! rounded up to a 4 KiB boundary inside a one-page over-allocation.
//!
//! # Concurrency
//!
//! A [`Machine`] and its [`Cpu`]s are `Send + Sync`. Every access this crate
//! makes to RAM is an atomic operation on an aligned 8-byte word (partial
//! words are merged with compare-exchange), so page walks on one thread may
//! race with `AtomicU64` entry updates on another. Non-atomic accesses that
//! other code makes through [`Machine::ram_base`] must not race with any
//! other access to the same bytes.
//!
//! # What is emulated
//!
//! - Canonical-address checks, the four levels, 4 KiB / 2 MiB / 1 GiB pages,
//!   P, R/W, U/S, PS, G and XD, reserved-bit checks for PS in a PML4E and for
//!   the low address bits of large-page entries, and access rights AND-ed
//!   over all levels with CR0.WP = 1 and `IA32_EFER.NXE` = 1.
//! - Per-CPU TLBs that keep stale translations until `invlpg`-style,
//!   range, full or CR3-load flushes; global entries survive CR3 loads.
//!
//! # What is not
//!
//! - Accessed and dirty bits are never set by the walker.
//! - No PCIDs, no 5-level paging, no protection keys, no SMEP/SMAP
//!   (supervisor accesses ignore U/S), no PAT/PWT/PCD memory types (the bits
//!   are read and ignored), no paging-structure caches (a TLB miss always
//!   walks RAM), and no TLB capacity limit (entries leave only when flushed).
//! - Physical addresses are 52 bits wide; entry bits 62:52 and 11:9 are
//!   ignored (available to software).
//! - A table address outside RAM is reported as
//!   [`FaultKind::BadTableAddress`] rather than read from the bus.

#![warn(missing_docs)]

mod config;
mod cpu;
mod device;
mod machine;
mod mmu;
mod ram;

#[cfg(test)]
mod tests;

pub use config::{MachineConfig, Region, RegionKind};
pub use cpu::{Cpu, MemError};
pub use device::{SIM_DEVICE_ID, SIM_DEVICE_VERSION};
pub use machine::{BusError, Machine};
pub use mmu::{walk, Access, FaultKind, PageFault, Paging, Translation};

/// A physical address. Virtual addresses are `usize`.
pub type PhysAddr = u64;
