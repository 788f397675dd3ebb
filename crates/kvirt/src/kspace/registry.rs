//! The area registry: what `/proc/vmallocinfo` shows on Linux.
//!
//! Every live [`KVirtArea`](super::KVirtArea) has an entry with its range,
//! how much of it is mapped, its kind and an optional label. The registry is
//! split into shards by address so that threads creating and dropping areas
//! in parallel rarely meet on one lock.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crossbeam_utils::CachePadded;

use crate::addr::{Vaddr, PAGE_SIZE};

/// What an area maps: tracked frames or untracked physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AreaKind {
    /// Tracked frames (`KVirtArea::map_frames`).
    Tracked,
    /// Untracked physical memory (`KVirtArea::map_untracked_frames`).
    Untracked,
}

/// One live area, as the registry lists it for diagnostics (like a line
/// of `/proc/vmallocinfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AreaInfo {
    /// The area's virtual range (without its guard).
    pub range: Range<Vaddr>,
    /// The part of it that was mapped at creation (pages one after the other).
    pub mapped: Range<Vaddr>,
    /// What it maps.
    pub kind: AreaKind,
    /// The caller's label, if any.
    pub label: Option<&'static str>,
}

impl AreaInfo {
    /// The area's size in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.range.len()
    }

    /// The number of mapped 4 KiB pages.
    #[must_use]
    pub fn mapped_pages(&self) -> usize {
        self.mapped.len() / PAGE_SIZE
    }
}

impl fmt::Display for AreaInfo {
    /// `start-end size pages=N kind label`, like a line of `/proc/vmallocinfo`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#018x}-{:#018x} {:>12} pages={:<8} {}",
            self.range.start,
            self.range.end,
            self.size(),
            self.mapped_pages(),
            match self.kind {
                AreaKind::Tracked => "tracked",
                AreaKind::Untracked => "untracked",
            }
        )?;
        if let Some(label) = self.label {
            write!(f, " {label}")?;
        }
        Ok(())
    }
}

const SHARDS: usize = 16;
const _: () = assert!(SHARDS.is_power_of_two());

/// The registry of one kernel space.
#[derive(Debug)]
pub(crate) struct AreaRegistry {
    shards: [CachePadded<spin::Mutex<BTreeMap<Vaddr, AreaInfo>>>; SHARDS],
}

impl AreaRegistry {
    pub(crate) fn new() -> Self {
        Self { shards: core::array::from_fn(|_| CachePadded::new(spin::Mutex::new(BTreeMap::new()))) }
    }

    fn shard(&self, start: Vaddr) -> &spin::Mutex<BTreeMap<Vaddr, AreaInfo>> {
        // Fibonacci hashing of the page number: areas of different VMALLOC
        // arenas (whose starts are aligned alike) land in different shards.
        let hash = (start / PAGE_SIZE).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.shards[hash >> (usize::BITS - SHARDS.trailing_zeros())]
    }

    pub(crate) fn insert(&self, info: AreaInfo) {
        let old = self.shard(info.range.start).lock().insert(info.range.start, info);
        debug_assert!(old.is_none(), "two live areas start at the same address");
    }

    pub(crate) fn remove(&self, start: Vaddr) -> Option<AreaInfo> {
        self.shard(start).lock().remove(&start)
    }

    pub(crate) fn set_label(&self, start: Vaddr, label: Option<&'static str>) {
        if let Some(info) = self.shard(start).lock().get_mut(&start) {
            info.label = label;
        }
    }

    pub(crate) fn get(&self, start: Vaddr) -> Option<AreaInfo> {
        self.shard(start).lock().get(&start).cloned()
    }

    /// Every live area, sorted by address.
    pub(crate) fn list(&self) -> Vec<AreaInfo> {
        let mut all: Vec<AreaInfo> =
            self.shards.iter().flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>()).collect();
        all.sort_by_key(|a| a.range.start);
        all
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}
