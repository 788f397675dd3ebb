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
//!
//! A shard is a hash map by start address, not an ordered map: areas are
//! looked up only by their start, and [`AreaRegistry::list`] sorts. A hash
//! map also keeps its table when it empties, where a B-tree frees its last
//! node and allocates one again for the next area: a heap allocation and a
//! free at every create and drop of an area alone in its shard, which is
//! the common case of a CPU creating and dropping areas one at a time. A
//! shard so keeps the table of its largest population.

use alloc::vec::Vec;
use core::fmt;
use core::hash::{BuildHasher, Hasher};
use core::ops::Range;

use crossbeam_utils::CachePadded;

use super::vmalloc::{ArenaMap, MAX_ARENAS};
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
/// One shard: the areas of some start addresses (see the module
/// documentation).
type Shard = hashbrown::HashMap<Vaddr, AreaInfo, PageHash>;

/// Hashes an area's start address so that neighbouring areas sit in
/// neighbouring buckets: the bucket index (the hash's low bits) is the page
/// number itself, and the tag hashbrown compares first (the top 7 bits) a
/// multiplicative hash of it. Areas are mostly created one after another
/// at increasing addresses; a hash that scattered them would make every
/// insertion and removal in a large shard a cache miss, where consecutive
/// ones now share lines, as they share a B-tree leaf. The keys are the
/// space's own addresses, not an adversary's.
#[derive(Clone, Copy, Debug, Default)]
struct PageHash;

impl BuildHasher for PageHash {
    type Hasher = PageHasher;

    fn build_hasher(&self) -> PageHasher {
        PageHasher(0)
    }
}

#[derive(Debug)]
struct PageHasher(u64);

impl Hasher for PageHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Vaddr` keys (`write_usize`); any byte string still
        // hashes well.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(PAGE_HASH_MUL);
        }
    }

    fn write_usize(&mut self, addr: usize) {
        let page = (addr / PAGE_SIZE) as u64;
        // The page number itself below (a page number has 52 bits at
        // most); in the top 7 bits (the tag), bits 25 to 31 of a
        // multiplicative hash of it, which differ between neighbours (the
        // product's top bits barely move from one page to the next).
        let mix = page.wrapping_mul(PAGE_HASH_MUL);
        self.0 = page | (mix >> 25 << 57);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// An odd constant with well-mixed bits (MurmurHash3's finalizer's),
/// unlike the one that picks a shard, so that the areas of one shard do not
/// share their tags.
const PAGE_HASH_MUL: u64 = 0xff51_afd7_ed55_8ccd;

// Every arena gets two shards at least (and so the hash is shifted by less
// than a word's width).
const _: () = assert!(2 * MAX_ARENAS <= SHARDS);

#[derive(Debug)]
pub(crate) struct AreaRegistry {
    shards: [CachePadded<spin::Mutex<Shard>>; SHARDS],
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
            shards: core::array::from_fn(|_| {
                CachePadded::new(spin::Mutex::new(Shard::with_hasher(PageHash)))
            }),
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

    fn shard(&self, start: Vaddr) -> &spin::Mutex<Shard> {
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

    fn info(start: Vaddr) -> AreaInfo {
        AreaInfo {
            range: start..start + PAGE_SIZE,
            mapped: start..start,
            kind: AreaKind::Tracked,
            label: None,
        }
    }

    fn registry() -> AreaRegistry {
        AreaRegistry::new(Vmalloc::new(0xffff_c000_0000_0000..0xffff_e000_0000_0000).arena_map())
    }

    #[test]
    fn neighbouring_areas_hash_to_neighbouring_buckets_with_varied_tags() {
        let start: Vaddr = 0xffff_c000_0000_0000;
        let hash = |va: Vaddr| PageHash.hash_one(va);
        let low = |h: u64| h & 0xf_ffff;
        let tags: BTreeSet<u64> = (0..64).map(|i| hash(start + i * PAGE_SIZE) >> 57).collect();
        for i in 0..64 {
            let (a, b) = (hash(start + i * PAGE_SIZE), hash(start + (i + 2) * PAGE_SIZE));
            assert_eq!(low(b), low(a) + 2, "an area and its guard later, two buckets on");
        }
        assert!(tags.len() > 32, "tags vary: {}", tags.len());
    }

    #[test]
    fn a_shard_keeps_its_table_when_its_last_area_goes() {
        let r = registry();
        let start = 0xffff_c000_0000_0000;
        r.insert(info(start));
        assert_eq!(r.remove(start), Some(info(start)));
        let shard = r.shard(start).lock();
        assert!(shard.is_empty());
        assert!(shard.capacity() > 0, "the next area needs no allocation");
    }

    #[test]
    fn areas_are_found_by_start_and_listed_in_address_order() {
        let r = registry();
        let arena = 4 << 40;
        // Two arenas, strides of 2 pages (an area and its guard), out of order.
        let mut starts: Vec<Vaddr> =
            (0..200).map(|i| 0xffff_c000_0000_0000 + (i % 2) * arena + (i / 2) * 2 * PAGE_SIZE).collect();
        starts.reverse();
        for &s in &starts {
            r.insert(info(s));
        }
        assert_eq!(r.len(), 200);
        for &s in starts.iter().step_by(2) {
            assert_eq!(r.remove(s), Some(info(s)));
        }
        r.set_label(starts[1], Some("kept"));
        assert_eq!(r.get(starts[1]).and_then(|i| i.label), Some("kept"));
        assert_eq!(r.get(starts[0]), None);
        let listed: Vec<Vaddr> = r.list().iter().map(|i| i.range.start).collect();
        let mut kept: Vec<Vaddr> = starts.iter().copied().skip(1).step_by(2).collect();
        kept.sort_unstable();
        assert_eq!(listed, kept);
    }

    #[test]
    fn areas_of_different_arenas_never_share_a_shard() {
        let by_arena = shards_by_arena(0xffff_c000_0000_0000..0xffff_e000_0000_0000, 1000);
        assert_eq!(by_arena.len(), MAX_ARENAS);
        for (a, shards) in by_arena.iter().enumerate() {
            assert_eq!(shards.len(), SHARDS / MAX_ARENAS, "arena {a} uses all of its shards");
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
