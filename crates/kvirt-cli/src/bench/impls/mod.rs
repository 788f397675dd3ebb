//! One adapter per implementation, each behind [`Mapper`](super::mapper::Mapper).

pub mod floor;
pub mod kvirt_area;
pub mod kvirt_pt;
pub mod multiarch;
pub mod sv48;
pub mod x86_64_crate;

use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::sim::MachineConfig;

/// The property kvirt maps with in every workload.
#[must_use]
pub fn kvirt_prop() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// Simulated RAM for a kvirt space in the benchmark: enough for the
/// largest window's page tables, lazily committed.
pub const KVIRT_RAM: usize = 512 << 20;

/// The machine of every kvirt space in the benchmark: [`KVIRT_RAM`] and
/// the same CPUs as the peers' (see [`CPUS`](super::mapper::CPUS)).
#[must_use]
pub fn kvirt_machine() -> MachineConfig {
    MachineConfig::new(KVIRT_RAM).cpus(super::mapper::CPUS)
}

/// Simulated RAM for each peer and the floors.
pub const PEER_RAM: usize = 128 << 20;
