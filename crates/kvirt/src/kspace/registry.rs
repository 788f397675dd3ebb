//! The area registry: what `/proc/vmallocinfo` shows on Linux.
//!
//! Every live [`KVirtArea`](super::KVirtArea) has an entry with its range,
//! how much of it is mapped, its kind and an optional label. The registry is
//! split into shards so that threads creating and dropping areas in
//! parallel rarely meet on one lock:
//!
//! ```text
//!   VMALLOC   | arena 0            | arena 1            | ... | arena N-1 |
//!   shards    | 0 .. S - 1         | S .. 2S - 1        | ... |           |
//!               S: the largest power of two at most 16 / N
//! ```
//!
//! Each VMALLOC arena has shards of its own, as each of Linux's `vmap_node`s
//! has its own tree of busy areas: a CPU creates its areas in its own arena,
//! so CPUs creating and dropping areas touch no common shard, however their
//! areas move within their arenas (as they do in lazy-purge mode, where a
//! range is not reused before a purge). Within an arena's group, areas are
//! spread by a hash of their page number.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crossbeam_utils::CachePadded;

use super::vmalloc::ArenaMap;
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
// Every arena gets two shards at least (and so the hash is shifted by less
// than a word's width).
const _: () = assert!(2 * ArenaMap::MAX <= SHARDS);

#[derive(Debug)]
pub(crate) struct AreaRegistry {
    shards: [CachePadded<spin::Mutex<BTreeMap<Vaddr, AreaInfo>>>; SHARDS],
    /// The VMALLOC arenas (see the module documentation).
    arenas: ArenaMap,
    /// Each arena's shards: `1 << per_arena_bits` of them, the most that
    /// is a power of two and at most `SHARDS / arenas.count()` (so at
    /// least 1 bit).
    per_arena_bits: u32,
}

impl AreaRegistry {
    pub(crate) fn new(arenas: ArenaMap) -> Self {
        let per_arena_bits = usize::BITS - 1 - (SHARDS / arenas.count()).leading_zeros();
        Self {
            shards: core::array::from_fn(|_| CachePadded::new(spin::Mutex::new(BTreeMap::new()))),
            arenas,
            per_arena_bits,
        }
    }

    /// The index of the shard of the area starting at `start`.
    fn shard_index(&self, start: Vaddr) -> usize {
        // Fibonacci hashing of the page number: its top bits.
        let hash = (start / PAGE_SIZE).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (self.arenas.index(start) << self.per_arena_bits) + (hash >> (usize::BITS - self.per_arena_bits))
    }

    fn shard(&self, start: Vaddr) -> &spin::Mutex<BTreeMap<Vaddr, AreaInfo>> {
        &self.shards[self.shard_index(start)]
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

#[cfg(test)]
mod tests {
    use alloc::collections::BTreeSet;

    use super::*;
    use crate::kspace::vmalloc::Vmalloc;

    /// The shards that areas at the first `pages` pages of each arena of
    /// `region` land in, arena by arena.
    fn shards_by_arena(region: Range<Vaddr>, pages: usize) -> Vec<BTreeSet<usize>> {
        let vmalloc = Vmalloc::new(region.clone());
        let (map, registry) = (vmalloc.arena_map(), AreaRegistry::new(vmalloc.arena_map()));
        let arena_len = region.len() / map.count() / PAGE_SIZE * PAGE_SIZE;
        (0..map.count())
            .map(|a| {
                let base = region.start + a * arena_len;
                (0..pages).map(|p| registry.shard_index(base + p * PAGE_SIZE)).collect()
            })
            .collect()
    }

    #[test]
    fn areas_of_different_arenas_never_share_a_shard() {
        let by_arena = shards_by_arena(0xffff_c000_0000_0000..0xffff_e000_0000_0000, 1000);
        assert_eq!(by_arena.len(), ArenaMap::MAX);
        for (a, shards) in by_arena.iter().enumerate() {
            assert_eq!(shards.len(), SHARDS / ArenaMap::MAX, "arena {a} uses all of its shards");
            for (b, other) in by_arena.iter().enumerate().skip(a + 1) {
                assert!(shards.is_disjoint(other), "arenas {a} and {b} share a shard");
            }
        }
    }

    #[test]
    fn a_single_arena_spreads_its_areas_over_every_shard() {
        let by_arena = shards_by_arena(0x2_0000..0x200_0000, 1000);
        assert_eq!(by_arena.len(), 1);
        assert_eq!(by_arena[0].len(), SHARDS);
    }
}
