//! One adapter per implementation, each behind [`Mapper`](super::mapper::Mapper).

pub mod floor;
pub mod kvirt_area;
pub mod kvirt_pt;
pub mod multiarch;
pub mod sv48;
pub mod x86_64_crate;

use std::any::Any;
use std::sync::Mutex;

use kvirt::kspace::{KernelLayout, KernelSpace};
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

/// The kernel space of layout `L` that kvirt's area workloads run on: one
/// per layout for the whole run, kept to its end as a kernel keeps its own
/// ([`KernelSpace::leak`]: its areas hold no reference count of it). Every
/// workload leaves it as it found it.
#[must_use]
pub fn kept_space<L: KernelLayout>() -> &'static KernelSpace<L> {
    type Kept = &'static (dyn Any + Send + Sync);
    static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(space) = kept.iter().find_map(|space| space.downcast_ref::<KernelSpace<L>>()) {
        return space;
    }
    let space = KernelSpace::<L>::hosted_with_layout(kvirt_machine()).leak();
    kept.push(space);
    space
}

/// Simulated RAM for each peer and the floors.
pub const PEER_RAM: usize = 128 << 20;
