//! The area registry: what `/proc/vmallocinfo` shows on Linux.
//!
//! Every live [`KVirtArea`](super::KVirtArea) has an entry with its range,
//! how much of it is mapped, its kind and an optional label. The registry is
//! split into shards by address so that threads creating and dropping areas
//! in parallel rarely meet on one lock. Each shard is a hash map from an
//! area's start to its entry: every operation but the (sorted) listing is a
//! point lookup by start, so no order is kept.

use alloc::vec::Vec;
use core::fmt;
use core::hash::{BuildHasherDefault, Hasher};
use core::ops::Range;

use hashbrown::HashMap;

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

/// Multiplicative hashing of an address's page number by the odd `k`.
#[inline]
fn spread(start: Vaddr, k: u64) -> u64 {
    ((start / PAGE_SIZE) as u64).wrapping_mul(k)
}

/// Picks the shard (Fibonacci hashing).
const SHARD_K: u64 = 0x9e37_79b9_7f4a_7c15;
/// Hashes inside a shard: another multiplier, so that the high bits, which
/// pick the shard, are not the same in every key of a shard.
const KEY_K: u64 = 0xd6e8_feb8_6659_fd93;

/// The shards' hash: an area start's page number, spread (the high bits
/// make the probe group's tag, the low ones pick the bucket, so both are
/// mixed). Starts come from kvirt's own allocator, not from an attacker.
#[derive(Clone, Copy, Debug, Default)]
struct StartHasher(u64);

impl Hasher for StartHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `usize` keys are hashed; any other input still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(KEY_K);
        }
    }

    #[inline]
    fn write_usize(&mut self, start: usize) {
        let h = spread(start, KEY_K);
        self.0 = h ^ (h >> 32);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = HashMap<Vaddr, AreaInfo, BuildHasherDefault<StartHasher>>;

/// The registry of one kernel space.
#[derive(Debug)]
pub(crate) struct AreaRegistry {
    shards: [CachePadded<spin::Mutex<Shard>>; SHARDS],
}

impl AreaRegistry {
    pub(crate) fn new() -> Self {
        Self { shards: core::array::from_fn(|_| CachePadded::new(spin::Mutex::new(Shard::default()))) }
    }

    fn shard(&self, start: Vaddr) -> &spin::Mutex<Shard> {
        // Fibonacci hashing of the page number: areas of different VMALLOC
        // arenas (whose starts are aligned alike) land in different shards.
        &self.shards[(spread(start, SHARD_K) >> (u64::BITS - SHARDS.trailing_zeros())) as usize]
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
