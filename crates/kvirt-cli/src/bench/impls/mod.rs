//! One adapter per implementation, each behind [`Mapper`](super::mapper::Mapper).

pub mod floor;
pub mod kvirt_area;
pub mod kvirt_pt;
pub mod multiarch;
pub mod sv48;
pub mod x86_64_crate;

use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};

/// The property kvirt maps with in every workload.
#[must_use]
pub fn kvirt_prop() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// Simulated RAM for a kvirt space in the benchmark: enough for the
/// largest window's page tables, lazily committed.
pub const KVIRT_RAM: usize = 512 << 20;

/// Simulated RAM for each peer and the floors.
pub const PEER_RAM: usize = 128 << 20;
