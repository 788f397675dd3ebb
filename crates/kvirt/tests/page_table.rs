//! Behaviour of the page table and its cursors, grouped by topic.
//!
//! Every test runs on its own hosted kernel space (a simulated 64 MiB
//! machine), so page-table and frame counters are exact. Untracked physical
//! addresses are arbitrary values above RAM (`0x1_0000_0000..`): the page
//! table itself does not check trackedness.
//!
//! About the end of the address space: a `Range<Vaddr>` cannot contain the
//! last page `0xffff_ffff_ffff_f000..=usize::MAX` (its exclusive end would be
//! 2^64). The highest cursor range is therefore `..0xffff_ffff_ffff_f000`,
//! and the range `query` reports for an entry that reaches the end of the
//! space saturates at `usize::MAX`. The `near_address_space_end` tests pin
//! both facts down.

use std::ops::Range;

use kvirt::frame::{AnyFrameMeta, Frame, FrameAllocOptions};
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{
    vaddr_bounds, KernelPtConfig, MapError, MapErrorKind, MappedItem, MappedItemRef, PageTable,
    PageTableAllocError, PageTableConfig, PageTableFrag, RangeError, TakePageError, TakeRangeError,
    TakenRange, UserPtConfig,
};
use kvirt::{Paddr, PagingLevel, Vaddr, PAGE_SIZE};

const SZ_4K: usize = PAGE_SIZE;
const SZ_1M: usize = 1 << 20;
const SZ_2M: usize = 2 << 20;
const SZ_1G: usize = 1 << 30;
/// A 1 GiB-aligned kernel address (the start of VMALLOC).
const KVA: Vaddr = 0xffff_c000_0000_0000;
/// Untracked physical memory, 1 GiB aligned, above any test machine's RAM.
const UPA: Paddr = 0x1_0000_0000;
/// The highest page-aligned address a range may end at.
const LAST_RANGE_END: Vaddr = usize::MAX - (SZ_4K - 1);

mod support;
use support::counting_rcu;
use support::memory::take_every_free_frame;

fn new_space() -> KernelSpace {
    KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20))
}

fn kernel_pt(space: &KernelSpace) -> PageTable<KernelPtConfig> {
    PageTable::<KernelPtConfig>::empty_in(space).expect("page table")
}

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

fn ro() -> PageProperty {
    PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback)
}

fn level_size(level: PagingLevel) -> usize {
    match level {
        1 => SZ_4K,
        2 => SZ_2M,
        3 => SZ_1G,
        _ => unreachable!("no leaf at level {level}"),
    }
}

fn frame(space: &KernelSpace) -> Frame<dyn AnyFrameMeta> {
    FrameAllocOptions::new_in(space).alloc_frame().expect("frame").into_dyn()
}

/// `e` refuses `foreign`, a frame of another space, and hands it back.
fn assert_foreign_frame_handed_back(e: MapError, foreign: &Frame<dyn AnyFrameMeta>) {
    assert_eq!(e.kind, MapErrorKind::ForeignFrame);
    match e.item {
        MappedItem::Tracked(g, _) => assert_eq!(&g, foreign),
        other => panic!("unexpected item {other:?}"),
    }
}

/// An owned summary of one leaf, for comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leaf {
    pa: Paddr,
    level: PagingLevel,
    prop: PageProperty,
    tracked: bool,
}

impl Leaf {
    fn of(item: &MappedItemRef<'_>) -> Self {
        Leaf { pa: item.paddr(), level: item.level(), prop: item.prop(), tracked: is_tracked(item) }
    }
}

fn is_tracked(item: &MappedItemRef<'_>) -> bool {
    matches!(item, MappedItemRef::Tracked(..))
}

/// Queries the page at `va` through a fresh read-only cursor.
fn query<C: PageTableConfig>(pt: &PageTable<C>, va: Vaddr) -> (Range<Vaddr>, Option<Leaf>) {
    let mut c = pt.cursor(&(va..va + SZ_4K)).expect("cursor");
    let (range, item) = c.query().expect("query inside the range");
    (range, item.as_ref().map(Leaf::of))
}

/// Every leaf intersecting `range`, found with `find_next` + `query`, as
/// `(leaf start, leaf)`.
fn leaves<C: PageTableConfig>(pt: &PageTable<C>, range: Range<Vaddr>) -> Vec<(Vaddr, Leaf)> {
    let mut c = pt.cursor(&range).expect("cursor");
    let mut out = Vec::new();
    while let Some(va) = c.find_next(range.end - c.virt_addr()) {
        let (entry, item) = c.query().expect("query at a found address");
        assert!(entry.contains(&va), "query range {entry:#x?} misses the found address {va:#x}");
        let leaf = Leaf::of(item.as_ref().expect("find_next stopped at an unmapped address"));
        out.push((entry.start, leaf));
        let next = entry.end.min(range.end);
        c.jump(next).expect("jump within the range");
    }
    assert_eq!(c.virt_addr(), range.end, "find_next ends at the end of its search");
    out
}

fn map_untracked<C: PageTableConfig>(
    pt: &PageTable<C>,
    va: Vaddr,
    pa: Paddr,
    level: PagingLevel,
    prop: PageProperty,
) {
    let size = level_size(level);
    let mut c = pt.cursor_mut(&(va..va + size)).expect("cursor");
    c.map(MappedItem::Untracked(pa, level, prop));
    assert_eq!(c.virt_addr(), va + size, "map moves past the page");
}

fn map_tracked<C: PageTableConfig>(
    pt: &PageTable<C>,
    va: Vaddr,
    frame: Frame<dyn AnyFrameMeta>,
    prop: PageProperty,
) {
    let mut c = pt.cursor_mut(&(va..va + SZ_4K)).expect("cursor");
    c.map(MappedItem::Tracked(frame, prop));
}

/// Takes everything mapped in `range` and drops it, returning the number of
/// leaf mappings removed.
fn unmap_all<C: PageTableConfig>(pt: &PageTable<C>, range: Range<Vaddr>) -> usize {
    let mut c = pt.cursor_mut(&range).expect("cursor");
    let mut n = 0;
    while let Some(frag) = c.take_next(range.end - c.virt_addr()) {
        n += match frag {
            PageTableFrag::Mapped { .. } => 1,
            PageTableFrag::StrayPageTable { num_frames, .. } => num_frames,
        };
    }
    n
}

fn pt_pages(space: &KernelSpace) -> usize {
    space.synchronize();
    space.phys_stats().page_table_pages
}

mod range_checks {
    use super::*;

    fn check<C: PageTableConfig>(pt: &PageTable<C>, range: Range<Vaddr>) -> Result<(), RangeError> {
        let ro = pt.cursor(&range).map(drop);
        let rw = pt.cursor_mut(&range).map(drop);
        assert_eq!(ro, rw, "read-only and mutable cursors disagree on {range:#x?}");
        ro
    }

    #[test]
    fn empty_range_is_rejected() {
        let space = new_space();
        let pt = kernel_pt(&space);
        assert_eq!(check(&pt, KVA..KVA), Err(RangeError::Empty));
        let user = pt.create_user_page_table().unwrap();
        assert_eq!(check(&user, 0..0), Err(RangeError::Empty));
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges, reason = "the reversed range is the input under test")]
    fn reversed_range_is_rejected() {
        let space = new_space();
        let pt = kernel_pt(&space);
        assert_eq!(check(&pt, KVA + SZ_4K..KVA), Err(RangeError::Reversed));
    }

    #[test]
    fn misaligned_start_or_end_is_rejected() {
        let space = new_space();
        let pt = kernel_pt(&space);
        assert_eq!(check(&pt, KVA + 1..KVA + SZ_4K), Err(RangeError::Misaligned));
        assert_eq!(check(&pt, KVA..KVA + SZ_4K + 8), Err(RangeError::Misaligned));
        assert_eq!(check(&pt, KVA + 0x800..KVA + 0x1800), Err(RangeError::Misaligned));
    }

    /// The last root entry of the lower half, alone: a custom configuration
    /// may take part of a half (one that straddles the halves does not
    /// compile; see `PageTableConfig`).
    #[derive(Debug)]
    struct LastLowerEntry;
    impl PageTableConfig for LastLowerEntry {
        type F = kvirt::arch::x86_64::X86_64;
        const TOP_LEVEL_INDEX_RANGE: Range<usize> = 255..256;
        const TOP_LEVEL_CAN_UNMAP: bool = true;
    }

    #[test]
    fn a_custom_config_covers_canonical_addresses_of_its_entries_only() {
        let (first, last) = vaddr_bounds::<LastLowerEntry>();
        assert_eq!((first, last), (0x7f80_0000_0000, 0x7fff_ffff_ffff));
        let space = new_space();
        let pt = PageTable::<LastLowerEntry>::empty_in(&space).unwrap();
        // Non-canonical addresses whose root index (bits 39..48) is 255 or
        // 0: never inside the configuration, never walked.
        for va in [0x0001_0000_0000_0000, 0x0000_8000_0000_0000, 0x0001_7f80_0000_0000] {
            assert_eq!(check(&pt, va..va + SZ_4K), Err(RangeError::OutOfBounds), "{va:#x}");
            assert_eq!(pt.translate_addr(va), None, "{va:#x}");
        }
        assert_eq!(check(&pt, first..last + 1), Ok(()));
        let mut c = pt.cursor_mut(&(first..first + SZ_4K)).unwrap();
        c.map(MappedItem::Untracked(UPA, 1, rw()));
        drop(c);
        assert_eq!(pt.translate_addr(first + 8), Some(UPA + 8));
        assert_eq!(pt.translate_addr(first.wrapping_add(1 << 48) + 8), None, "an alias of the mapped page");
    }

    #[test]
    fn config_bounds_are_the_two_halves() {
        assert_eq!(vaddr_bounds::<KernelPtConfig>(), (0xffff_8000_0000_0000, usize::MAX));
        assert_eq!(vaddr_bounds::<UserPtConfig>(), (0, 0x7fff_ffff_ffff));
    }

    #[test]
    fn kernel_cursor_outside_the_kernel_half_is_out_of_bounds() {
        let space = new_space();
        let pt = kernel_pt(&space);
        // User half.
        assert_eq!(check(&pt, 0..SZ_4K), Err(RangeError::OutOfBounds));
        assert_eq!(check(&pt, 0x7fff_ffff_f000..0x8000_0000_0000), Err(RangeError::OutOfBounds));
        // Non-canonical addresses just below the kernel half.
        assert_eq!(check(&pt, 0xffff_7fff_ffff_f000..0xffff_8000_0000_0000), Err(RangeError::OutOfBounds));
        // Straddling the start of the kernel half.
        assert_eq!(check(&pt, 0xffff_7fff_ffff_f000..0xffff_8000_0000_1000), Err(RangeError::OutOfBounds));
    }

    #[test]
    fn user_cursor_outside_the_user_half_is_out_of_bounds() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        assert_eq!(check(&user, KVA..KVA + SZ_4K), Err(RangeError::OutOfBounds));
        // The first non-canonical page above the user half.
        assert_eq!(check(&user, 0x8000_0000_0000..0x8000_0000_1000), Err(RangeError::OutOfBounds));
        // Straddling the end of the user half.
        assert_eq!(check(&user, 0x7fff_ffff_f000..0x8000_0000_1000), Err(RangeError::OutOfBounds));
    }

    #[test]
    fn whole_halves_are_accepted() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        assert_eq!(check(&pt, 0xffff_8000_0000_0000..LAST_RANGE_END), Ok(()));
        assert_eq!(check(&user, 0..0x8000_0000_0000), Ok(()));
    }

    #[test]
    fn the_last_page_of_the_space_cannot_end_a_range() {
        let space = new_space();
        let pt = kernel_pt(&space);
        // `usize::MAX` is the only possible end covering the last page, and
        // it is not page aligned.
        assert_eq!(check(&pt, LAST_RANGE_END..usize::MAX), Err(RangeError::Misaligned));
        // The page before it is the highest one a range can hold.
        assert_eq!(check(&pt, LAST_RANGE_END - SZ_4K..LAST_RANGE_END), Ok(()));
    }

    #[test]
    fn a_length_that_overflows_gives_a_reversed_or_empty_range() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let start = LAST_RANGE_END - SZ_4K;
        // `start + 3 pages` wraps to the bottom of the space.
        let end = start.wrapping_add(3 * SZ_4K);
        assert_eq!(end, SZ_4K);
        assert_eq!(check(&pt, start..end), Err(RangeError::Reversed));
        // `start + (2^64 - 4096)` wraps to the page below `start`.
        assert_eq!(
            check(&pt, start..start.wrapping_add(usize::MAX - (SZ_4K - 1))),
            Err(RangeError::Reversed)
        );
    }

    fn map_query_unmap_page<C: PageTableConfig>(space: &KernelSpace, pt: &PageTable<C>, va: Vaddr) {
        let before = pt_pages(space);
        let f = frame(space);
        map_tracked(pt, va, f.clone(), rw());
        let (range, leaf) = query(pt, va);
        assert_eq!(range, va..va + SZ_4K);
        assert_eq!(leaf, Some(Leaf { pa: f.paddr(), level: 1, prop: rw(), tracked: true }));
        assert_eq!(pt.translate(va + 0x123), Some((f.paddr() + 0x123, rw())));
        assert_eq!(f.reference_count(), 2);
        assert_eq!(unmap_all(pt, va..va + SZ_4K), 1);
        assert_eq!(query(pt, va).1, None);
        assert_eq!(pt_pages(space), before, "nodes for {va:#x} are reclaimed");
        assert_eq!(f.reference_count(), 1);
    }

    #[test]
    fn first_page_of_the_kernel_half_maps() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_query_unmap_page(&space, &pt, 0xffff_8000_0000_0000);
    }

    #[test]
    fn last_page_a_kernel_range_can_hold_maps() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_query_unmap_page(&space, &pt, LAST_RANGE_END - SZ_4K);
    }

    #[test]
    fn first_page_of_the_user_half_maps() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        map_query_unmap_page(&space, &user, 0);
    }

    #[test]
    fn last_page_of_the_user_half_maps() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        map_query_unmap_page(&space, &user, 0x7fff_ffff_f000);
    }

    #[test]
    fn query_at_the_range_end_is_an_error() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor(&(KVA..KVA + SZ_4K)).unwrap();
        c.jump(KVA + SZ_4K).unwrap();
        let err = c.query().unwrap_err();
        assert_eq!(err.va, KVA + SZ_4K);
        assert_eq!(err.range, KVA..KVA + SZ_4K);
    }
}

mod properties {
    use super::*;

    #[test]
    fn every_property_round_trips_through_untracked_maps_at_levels_1_2_3() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let props: Vec<PageProperty> = PageProperty::all().collect();
        for level in 1..=3u8 {
            let size = level_size(level);
            // Each level gets its own 1 TiB of VMALLOC.
            let base = KVA + (level as usize) * (1 << 40);
            let range = base..base + props.len() * size;
            {
                let mut c = pt.cursor_mut(&range).unwrap();
                for (i, &prop) in props.iter().enumerate() {
                    c.map(MappedItem::Untracked(UPA + i * size, level, prop));
                }
                c.jump(base).unwrap();
                for (i, &prop) in props.iter().enumerate() {
                    let va = base + i * size;
                    c.jump((va + size / 2) & !(SZ_4K - 1)).unwrap();
                    let (r, item) = c.query().unwrap();
                    assert_eq!(r, va..va + size);
                    assert_eq!(
                        item.as_ref().map(Leaf::of),
                        Some(Leaf { pa: UPA + i * size, level, prop, tracked: false }),
                        "level {level} property {prop:?}"
                    );
                }
            }
            for (i, &prop) in props.iter().enumerate() {
                let va = base + i * size;
                assert_eq!(pt.translate(va + size - 8), Some((UPA + i * size + size - 8, prop)));
            }
            // Unmapping hands the same property back.
            let mut c = pt.cursor_mut(&range).unwrap();
            for (i, &prop) in props.iter().enumerate() {
                // One page at a time: a longer search would take whole
                // sub-trees.
                match c.take_next(size) {
                    Some(PageTableFrag::Mapped { va, item: MappedItem::Untracked(pa, l, p) }) => {
                        assert_eq!((va, pa, l, p), (base + i * size, UPA + i * size, level, prop));
                    }
                    other => panic!("unexpected fragment {other:?}"),
                }
            }
            assert!(c.take_next(0).is_none());
        }
    }

    #[test]
    fn every_property_round_trips_through_tracked_maps_without_the_tracked_bit() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let props: Vec<PageProperty> = PageProperty::all().collect();
        let f = frame(&space);
        let range = KVA..KVA + props.len() * SZ_4K;
        {
            let mut c = pt.cursor_mut(&range).unwrap();
            for &prop in &props {
                c.map(MappedItem::Tracked(f.clone(), prop));
            }
        }
        assert_eq!(f.reference_count(), 1 + props.len() as u64);
        for (i, &prop) in props.iter().enumerate() {
            let va = KVA + i * SZ_4K;
            assert_eq!(query(&pt, va).1, Some(Leaf { pa: f.paddr(), level: 1, prop, tracked: true }));
            assert_eq!(pt.translate(va), Some((f.paddr(), prop)));
        }
        let mut c = pt.cursor_mut(&range).unwrap();
        for &prop in &props {
            match c.take_next(SZ_4K) {
                Some(PageTableFrag::Mapped { item: MappedItem::Tracked(g, p), .. }) => {
                    assert_eq!(g.paddr(), f.paddr());
                    assert_eq!(p, prop);
                }
                other => panic!("unexpected fragment {other:?}"),
            }
        }
        drop(c);
        assert_eq!(f.reference_count(), 1);
    }
}

mod map_errors {
    use super::*;

    #[test]
    #[should_panic(expected = "mapping over an already mapped page")]
    fn overlapping_map_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 1, rw());
        map_untracked(&pt, KVA, UPA + SZ_4K, 1, rw());
    }

    #[test]
    #[should_panic(expected = "mapping over an already mapped page")]
    fn huge_map_over_a_mapped_small_page_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA + 5 * SZ_4K, UPA, 1, rw());
        map_untracked(&pt, KVA, UPA, 2, rw());
    }

    /// Tries to map `item` at `va` over what `setup` mapped and checks that
    /// the call is rejected with `AlreadyMapped`, hands the item back, and
    /// changes nothing.
    fn rejected_over(setup: &[(Vaddr, PagingLevel)], va: Vaddr, level: PagingLevel, tracked: bool) {
        let space = new_space();
        let pt = kernel_pt(&space);
        for (i, &(sva, slevel)) in setup.iter().enumerate() {
            map_untracked(&pt, sva, UPA + i * SZ_1G, slevel, ro());
        }
        let window = KVA..KVA + 2 * SZ_1G;
        let view = leaves(&pt, window.clone());
        let nodes = pt_pages(&space);
        let f = frame(&space);
        let size = level_size(level);
        let item = if tracked {
            MappedItem::Tracked(f.clone(), rw())
        } else {
            MappedItem::Untracked(UPA + 7 * SZ_1G, level, rw())
        };
        let mut c = pt.cursor_mut(&(va..va + size)).unwrap();
        let err = c.try_map(item).expect_err("mapping over a mapped page");
        assert_eq!(err.kind, MapErrorKind::AlreadyMapped);
        assert_eq!(c.virt_addr(), va, "a rejected map does not move the cursor");
        match err.item {
            MappedItem::Tracked(g, p) => {
                assert!(tracked);
                assert_eq!((g.paddr(), p), (f.paddr(), rw()));
                assert_eq!(f.reference_count(), 2, "the item comes back with its reference");
            }
            MappedItem::Untracked(pa, l, p) => {
                assert!(!tracked);
                assert_eq!((pa, l, p), (UPA + 7 * SZ_1G, level, rw()));
            }
        }
        drop(c);
        assert_eq!(f.reference_count(), 1);
        assert_eq!(leaves(&pt, window), view, "nothing changed");
        assert_eq!(pt_pages(&space), nodes, "no page-table node was added or freed");
    }

    #[test]
    fn try_map_small_over_small_returns_already_mapped_and_changes_nothing() {
        rejected_over(&[(KVA + SZ_4K, 1)], KVA + SZ_4K, 1, true);
        rejected_over(&[(KVA + SZ_4K, 1)], KVA + SZ_4K, 1, false);
    }

    #[test]
    fn try_map_small_inside_a_huge_page_returns_already_mapped_and_changes_nothing() {
        rejected_over(&[(KVA + SZ_2M, 2)], KVA + SZ_2M + 9 * SZ_4K, 1, true);
        rejected_over(&[(KVA + SZ_1G, 3)], KVA + SZ_1G + 3 * SZ_2M + SZ_4K, 1, false);
        rejected_over(&[(KVA + SZ_1G, 3)], KVA + SZ_1G + 5 * SZ_2M, 2, false);
    }

    #[test]
    fn try_map_huge_over_smaller_mappings_returns_already_mapped_and_changes_nothing() {
        rejected_over(&[(KVA + SZ_2M + 511 * SZ_4K, 1)], KVA + SZ_2M, 2, false);
        rejected_over(&[(KVA + 7 * SZ_2M, 2)], KVA, 3, false);
        rejected_over(&[(KVA + 7 * SZ_2M + SZ_4K, 1)], KVA, 3, false);
        rejected_over(&[(KVA + SZ_1G, 3)], KVA + SZ_1G, 3, false);
    }

    #[test]
    #[should_panic(expected = "not aligned for mapping")]
    fn misaligned_huge_map_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor_mut(&(KVA + SZ_4K..KVA + SZ_4K + SZ_2M)).unwrap();
        c.map(MappedItem::Untracked(UPA, 2, rw()));
    }

    #[test]
    fn misaligned_virtual_or_physical_address_is_rejected() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + 4 * SZ_1G)).unwrap();
        c.jump(KVA + SZ_4K).unwrap();
        let e = c.try_map(MappedItem::Untracked(UPA, 2, rw())).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::Misaligned);
        c.jump(KVA).unwrap();
        let e = c.try_map(MappedItem::Untracked(UPA + SZ_4K, 2, rw())).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::Misaligned);
        let e = c.try_map(MappedItem::Untracked(UPA + SZ_2M, 3, rw())).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::Misaligned);
        assert_eq!(c.virt_addr(), KVA);
        drop(c);
        assert_eq!(pt_pages(&space), nodes);
        assert!(leaves(&pt, KVA..KVA + 4 * SZ_1G).is_empty());
    }

    #[test]
    fn levels_without_leaves_are_rejected() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor_mut(&(0xffff_8000_0000_0000..0xffff_8080_0000_0000)).unwrap();
        for level in [0, 4, 5] {
            let e = c.try_map(MappedItem::Untracked(0, level, rw())).unwrap_err();
            assert_eq!(e.kind, MapErrorKind::UnsupportedLevel, "level {level}");
        }
    }

    #[test]
    fn physical_address_beyond_the_format_is_rejected() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_1G)).unwrap();
        let e = c.try_map(MappedItem::Untracked(1 << 52, 1, rw())).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::PaddrTooLarge);
        let e = c.try_map(MappedItem::Untracked((1 << 52) - SZ_2M, 3, rw())).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::Misaligned);
        // The highest page the format can express maps.
        c.try_map(MappedItem::Untracked((1 << 52) - SZ_4K, 1, rw())).unwrap();
        drop(c);
        assert_eq!(query(&pt, KVA).1.unwrap().pa, (1 << 52) - SZ_4K);
    }

    #[test]
    fn a_page_that_does_not_fit_the_rest_of_the_range_is_rejected() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_2M + SZ_4K)).unwrap();
        c.jump(KVA + 2 * SZ_4K).unwrap();
        let e = c.try_map(MappedItem::Untracked(UPA, 2, rw())).unwrap_err();
        // `KVA + 8K` is misaligned too; the range check comes first.
        assert_eq!(e.kind, MapErrorKind::OutOfRange);
        c.jump(KVA + SZ_2M + SZ_4K).unwrap();
        let e = c.try_map(MappedItem::Untracked(UPA, 1, rw())).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::OutOfRange, "nothing fits at the range end");
        c.jump(KVA + SZ_2M).unwrap();
        c.try_map(MappedItem::Untracked(UPA, 1, rw())).unwrap();
        assert_eq!(c.virt_addr(), KVA + SZ_2M + SZ_4K);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn map_past_the_range_end_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_4K)).unwrap();
        c.map(MappedItem::Untracked(UPA, 1, rw()));
        c.map(MappedItem::Untracked(UPA, 1, rw()));
    }
}

/// `try_map_frames` on a cursor whose range lies in a leaf node that exists
/// already fills that node directly, from the first frame on: it rejects
/// exactly what mapping the frames one by one would, at the same frame.
mod map_frames_in_an_existing_leaf {
    use super::*;

    /// A table whose leaf node under `KVA` exists, with `KVA + 2 pages`
    /// mapped (to `UPA`).
    fn table_with_a_leaf(space: &KernelSpace) -> PageTable<KernelPtConfig> {
        let pt = kernel_pt(space);
        map_untracked(&pt, KVA + 2 * SZ_4K, UPA, 1, ro());
        pt
    }

    /// A space, a table of it as [`table_with_a_leaf`] makes, and `n` frames
    /// of the space.
    fn leaf_and_frames(n: usize) -> (KernelSpace, PageTable<KernelPtConfig>, Vec<Frame<dyn AnyFrameMeta>>) {
        let space = new_space();
        let pt = table_with_a_leaf(&space);
        let fs = (0..n).map(|_| frame(&space)).collect();
        (space, pt, fs)
    }

    /// The physical address of each leaf in `range`, in address order.
    fn mapped_pas(pt: &PageTable<KernelPtConfig>, range: Range<Vaddr>) -> Vec<Paddr> {
        leaves(pt, range).iter().map(|(_, l)| l.pa).collect()
    }

    #[test]
    fn maps_every_frame_into_free_entries() {
        let (space, pt, fs) = leaf_and_frames(2);
        let nodes = pt_pages(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + 2 * SZ_4K)).unwrap();
        c.try_map_frames(fs.clone(), rw()).unwrap();
        assert_eq!(c.virt_addr(), KVA + 2 * SZ_4K);
        drop(c);
        for (i, f) in fs.iter().enumerate() {
            let leaf = Leaf { pa: f.paddr(), level: 1, prop: rw(), tracked: true };
            assert_eq!(query(&pt, KVA + i * SZ_4K).1, Some(leaf));
            assert_eq!(f.reference_count(), 2, "the entry holds a reference");
        }
        assert_eq!(pt_pages(&space), nodes, "no node is created");
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
    }

    #[test]
    fn maps_at_the_address_jumped_back_to_not_in_the_leaf_last_visited() {
        let space = new_space();
        let pt = kernel_pt(&space);
        // Two leaf nodes, each with a page mapped.
        map_untracked(&pt, KVA + 5 * SZ_4K, UPA, 1, ro());
        map_untracked(&pt, KVA + SZ_2M + 5 * SZ_4K, UPA + SZ_4K, 1, ro());
        let f = frame(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + 2 * SZ_2M)).unwrap();
        c.jump(KVA + SZ_2M).unwrap();
        assert_eq!(c.query().unwrap().1.map(|i| i.paddr()), None, "the cursor walks into the second leaf");
        c.jump(KVA).unwrap();
        c.try_map_frames([f.clone()], rw()).unwrap();
        drop(c);
        let mapped: Vec<(Vaddr, Paddr)> =
            leaves(&pt, KVA..KVA + 2 * SZ_2M).iter().map(|(va, l)| (*va, l.pa)).collect();
        assert_eq!(
            mapped,
            [(KVA, f.paddr()), (KVA + 5 * SZ_4K, UPA), (KVA + SZ_2M + 5 * SZ_4K, UPA + SZ_4K)]
        );
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
    }

    #[test]
    fn stops_at_a_mapped_page_and_hands_its_frame_back() {
        let (_space, pt, fs) = leaf_and_frames(4);
        let mut c = pt.cursor_mut(&(KVA..KVA + 4 * SZ_4K)).unwrap();
        let e = c.try_map_frames(fs.clone(), rw()).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::AlreadyMapped);
        match e.item {
            MappedItem::Tracked(g, _) => assert_eq!(g.paddr(), fs[2].paddr(), "the third frame comes back"),
            other => panic!("unexpected item {other:?}"),
        }
        assert_eq!(c.virt_addr(), KVA + 2 * SZ_4K, "the cursor stands at the mapped page");
        drop(c);
        let mapped = mapped_pas(&pt, KVA..KVA + 4 * SZ_4K);
        assert_eq!(mapped, [fs[0].paddr(), fs[1].paddr(), UPA], "the first two are mapped, the page kept");
        assert_eq!(fs[2].reference_count(), 1, "the rejected frame's reference is given back");
        assert_eq!(fs[3].reference_count(), 1, "the frame after it is dropped with the iterator");
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
    }

    #[test]
    fn a_frame_iterator_panicking_in_the_fill_leaves_the_node_consistent() {
        let (_space, pt, fs) = leaf_and_frames(2);
        let mut c = pt.cursor_mut(&(KVA..KVA + 2 * SZ_4K)).unwrap();
        let mut handed_over = 0;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let frames = fs.clone().into_iter().inspect(|_| {
                assert_ne!(handed_over, 1, "the frame iterator panics at the second frame");
                handed_over += 1;
            });
            c.try_map_frames(frames, rw())
        }));
        assert!(result.is_err(), "the iterator's panic reaches the caller");
        drop(c);
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
        let mapped = mapped_pas(&pt, KVA..KVA + 4 * SZ_4K);
        assert_eq!(mapped, [fs[0].paddr(), UPA], "the frame handed over before the panic is mapped");
        assert_eq!(fs[1].reference_count(), 1, "the frame in the iterator went with it");
        assert_eq!(unmap_all(&pt, KVA..KVA + 4 * SZ_4K), 2);
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
    }

    #[test]
    fn refuses_a_foreign_first_frame_and_changes_nothing() {
        let space = new_space();
        let other = new_space();
        let pt = table_with_a_leaf(&space);
        let foreign = frame(&other);
        let mut c = pt.cursor_mut(&(KVA..KVA + 2 * SZ_4K)).unwrap();
        let e = c.try_map_frames([foreign.clone(), frame(&space)], rw()).unwrap_err();
        assert_foreign_frame_handed_back(e, &foreign);
        assert_eq!(c.virt_addr(), KVA);
        drop(c);
        assert_eq!(foreign.reference_count(), 1);
        assert_eq!(leaves(&pt, KVA..KVA + 2 * SZ_4K), []);
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
    }

    #[test]
    fn a_frame_past_the_range_is_out_of_range() {
        let (_space, pt, fs) = leaf_and_frames(3);
        // The entry after the range is free: only the range stops the fill.
        let range = KVA + 3 * SZ_4K..KVA + 5 * SZ_4K;
        let mut c = pt.cursor_mut(&range).unwrap();
        let e = c.try_map_frames(fs.clone(), rw()).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::OutOfRange);
        assert!(matches!(&e.item, MappedItem::Tracked(g, _) if g.paddr() == fs[2].paddr()));
        drop((e, c));
        let mapped = mapped_pas(&pt, KVA..KVA + SZ_2M);
        assert_eq!(mapped, [UPA, fs[0].paddr(), fs[1].paddr()], "nothing is mapped past the range");
        assert_eq!(fs[2].reference_count(), 1);
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
    }
}

mod jump {
    use super::*;

    #[test]
    fn jump_then_query_lands_exactly() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let range = KVA..KVA + 4 * SZ_2M;
        let mut c = pt.cursor_mut(&range).unwrap();
        c.jump(KVA + 3 * SZ_4K).unwrap();
        c.map(MappedItem::Untracked(UPA + 3 * SZ_4K, 1, rw()));
        c.jump(KVA + 2 * SZ_2M).unwrap();
        c.map(MappedItem::Untracked(UPA, 2, ro()));
        c.jump(KVA + 3 * SZ_4K).unwrap();
        assert_eq!(c.virt_addr(), KVA + 3 * SZ_4K);
        let (r, item) = c.query().unwrap();
        assert_eq!(r, KVA + 3 * SZ_4K..KVA + 4 * SZ_4K);
        assert_eq!(item.unwrap().paddr(), UPA + 3 * SZ_4K);
        c.jump(KVA + 2 * SZ_4K).unwrap();
        let (r, item) = c.query().unwrap();
        assert_eq!(r, KVA + 2 * SZ_4K..KVA + 3 * SZ_4K);
        assert!(item.is_none());
        assert_eq!(c.virt_addr(), KVA + 2 * SZ_4K, "query does not move the cursor");
        c.jump(KVA + 2 * SZ_2M + 17 * SZ_4K).unwrap();
        let (r, item) = c.query().unwrap();
        assert_eq!(r, KVA + 2 * SZ_2M..KVA + 3 * SZ_2M);
        assert_eq!(Leaf::of(&item.unwrap()), Leaf { pa: UPA, level: 2, prop: ro(), tracked: false });
        // An absent 2 MiB slot is reported whole.
        c.jump(KVA + SZ_2M + SZ_4K).unwrap();
        let (r, item) = c.query().unwrap();
        assert_eq!(r, KVA + SZ_2M..KVA + 2 * SZ_2M);
        assert!(item.is_none());
    }

    #[test]
    fn jump_outside_the_range_or_misaligned_is_an_error() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor(&(KVA + SZ_2M..KVA + 2 * SZ_2M)).unwrap();
        assert!(c.jump(KVA + SZ_2M - SZ_4K).is_err());
        assert!(c.jump(KVA + 2 * SZ_2M + SZ_4K).is_err());
        assert!(c.jump(KVA + SZ_2M + 1).is_err());
        assert!(c.jump(0).is_err());
        assert!(c.jump(usize::MAX).is_err());
        assert_eq!(c.virt_addr(), KVA + SZ_2M, "a failed jump does not move the cursor");
        c.jump(KVA + 2 * SZ_2M).unwrap();
        assert_eq!(c.virt_addr(), KVA + 2 * SZ_2M);
    }

    #[test]
    fn jump_from_the_range_end_back_into_a_huge_page() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA + SZ_2M, UPA, 2, rw());
        let range = KVA + SZ_2M..KVA + 2 * SZ_2M;
        let mut c = pt.cursor(&range).unwrap();
        assert_eq!(c.find_next(SZ_2M), Some(KVA + SZ_2M));
        c.jump(range.end).unwrap();
        assert!(c.query().is_err());
        c.jump(KVA + SZ_2M + SZ_2M / 2).unwrap();
        let (r, item) = c.query().unwrap();
        assert_eq!(r, range, "a query in the middle of a huge page returns all of it");
        assert_eq!(item.unwrap().paddr(), UPA);
    }

    #[test]
    fn jump_back_after_walking_to_the_end_of_a_multi_node_range() {
        let space = new_space();
        let pt = kernel_pt(&space);
        // A range spanning two L3 entries, with mappings deep in both.
        let range = KVA + SZ_1G - SZ_2M..KVA + SZ_1G + SZ_2M;
        map_untracked(&pt, KVA + SZ_1G - SZ_4K, UPA, 1, rw());
        map_untracked(&pt, KVA + SZ_1G + SZ_2M - SZ_4K, UPA + SZ_4K, 1, rw());
        let mut c = pt.cursor(&range).unwrap();
        assert_eq!(c.find_next(range.len()), Some(KVA + SZ_1G - SZ_4K));
        c.jump(KVA + SZ_1G).unwrap();
        assert_eq!(c.find_next(range.end - c.virt_addr()), Some(KVA + SZ_1G + SZ_2M - SZ_4K));
        assert_eq!(c.query().unwrap().1.unwrap().paddr(), UPA + SZ_4K);
        c.jump(range.end).unwrap();
        assert!(c.query().is_err());
        c.jump(range.start).unwrap();
        assert_eq!(c.find_next(range.len()), Some(KVA + SZ_1G - SZ_4K));
        assert_eq!(c.query().unwrap().1.unwrap().paddr(), UPA);
    }
}

mod near_address_space_end {
    use super::*;

    /// The last 2 MiB of the space minus its last page (which no range can
    /// hold): `usize::MAX - 2M + 1 .. usize::MAX - 4095`.
    const TAIL: Range<Vaddr> = usize::MAX - SZ_2M + 1..LAST_RANGE_END;

    #[test]
    fn jump_and_query_in_the_last_two_megabytes() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        {
            let mut c = pt.cursor_mut(&TAIL).unwrap();
            c.map(MappedItem::Untracked(UPA, 1, rw()));
            c.jump(TAIL.end - SZ_4K).unwrap();
            c.map(MappedItem::Untracked(UPA + SZ_4K, 1, ro()));
            assert_eq!(c.virt_addr(), TAIL.end);
            assert!(c.query().is_err(), "query at the range end");
            // Jumping back from the end.
            c.jump(TAIL.end - SZ_4K).unwrap();
            let (r, item) = c.query().unwrap();
            assert_eq!(r, TAIL.end - SZ_4K..TAIL.end);
            assert_eq!(item.unwrap().paddr(), UPA + SZ_4K);
            c.jump(TAIL.start).unwrap();
            assert_eq!(c.find_next(TAIL.len()), Some(TAIL.start));
            c.jump(TAIL.start + SZ_4K).unwrap();
            assert_eq!(c.find_next(TAIL.end - c.virt_addr()), Some(TAIL.end - SZ_4K));
            c.jump(TAIL.end).unwrap();
            assert_eq!(c.find_next(0), None);
            assert_eq!(c.virt_addr(), TAIL.end);
        }
        assert_eq!(pt.translate(TAIL.end - 1), Some((UPA + 2 * SZ_4K - 1, ro())));
        // The unmappable last page stays unmapped.
        assert_eq!(pt.translate(usize::MAX), None);
        assert_eq!(unmap_all(&pt, TAIL), 2);
        assert_eq!(pt_pages(&space), baseline, "the last L2 and L1 nodes are reclaimed");
    }

    #[test]
    fn an_absent_entry_reaching_the_end_of_the_space_reports_a_saturated_range() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor(&TAIL).unwrap();
        let (r, item) = c.query().unwrap();
        assert!(item.is_none());
        // The last 1 GiB slot of the pre-allocated last L3 node: its true end
        // is 2^64, reported as `usize::MAX`.
        assert_eq!(r, usize::MAX - SZ_1G + 1..usize::MAX);
    }

    #[test]
    fn a_huge_page_at_the_end_of_the_space_is_split_by_unmapping_its_last_mappable_page() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        let start = usize::MAX - SZ_1G + 1;
        {
            let mut c = pt.cursor_mut(&(start..LAST_RANGE_END)).unwrap();
            // A 1 GiB page does not fit: the range stops one page short.
            let e = c.try_map(MappedItem::Untracked(UPA, 3, rw())).unwrap_err();
            assert_eq!(e.kind, MapErrorKind::OutOfRange);
            // 2 MiB pages fit everywhere but in the last slot.
            for i in 0..511 {
                c.map(MappedItem::Untracked(UPA + i * SZ_2M, 2, rw()));
            }
            let e = c.try_map(MappedItem::Untracked(UPA + 511 * SZ_2M, 2, rw())).unwrap_err();
            assert_eq!(e.kind, MapErrorKind::OutOfRange);
            for i in 0..511 {
                c.map(MappedItem::Untracked(UPA + 511 * SZ_2M + i * SZ_4K, 1, rw()));
            }
            assert_eq!(c.virt_addr(), LAST_RANGE_END);
        }
        assert_eq!(leaves(&pt, start..LAST_RANGE_END).len(), 511 + 511);
        assert_eq!(unmap_all(&pt, start..LAST_RANGE_END), 511 + 511);
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    #[should_panic(expected = "reaches past")]
    fn find_next_with_an_overflowing_length_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor(&TAIL).unwrap();
        c.jump(TAIL.end - SZ_4K).unwrap();
        let _ = c.find_next(usize::MAX & !(SZ_4K - 1));
    }
}

mod find_next {
    use super::*;

    #[test]
    fn finds_each_mapping_in_order() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA + 5 * SZ_4K, UPA, 1, rw());
        map_untracked(&pt, KVA + 3 * SZ_2M, UPA, 2, rw());
        map_untracked(&pt, KVA + 2 * SZ_1G, UPA, 3, rw());
        let range = KVA..KVA + 4 * SZ_1G;
        let mut c = pt.cursor(&range).unwrap();
        assert_eq!(c.find_next(range.len()), Some(KVA + 5 * SZ_4K));
        assert_eq!(c.virt_addr(), KVA + 5 * SZ_4K);
        c.jump(KVA + 6 * SZ_4K).unwrap();
        assert_eq!(c.find_next(range.end - c.virt_addr()), Some(KVA + 3 * SZ_2M));
        c.jump(KVA + 4 * SZ_2M).unwrap();
        assert_eq!(c.find_next(range.end - c.virt_addr()), Some(KVA + 2 * SZ_1G));
        c.jump(KVA + 3 * SZ_1G).unwrap();
        assert_eq!(c.find_next(range.end - c.virt_addr()), None);
        assert_eq!(c.virt_addr(), range.end);
    }

    #[test]
    fn find_next_stops_at_the_end_of_a_short_search() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA + SZ_2M, UPA, 1, rw());
        let mut c = pt.cursor(&(KVA..KVA + SZ_1G)).unwrap();
        // The mapping lies exactly at the end of the search: not found.
        assert_eq!(c.find_next(SZ_2M), None);
        assert_eq!(c.virt_addr(), KVA + SZ_2M);
        // One more page finds it.
        c.jump(KVA).unwrap();
        assert_eq!(c.find_next(SZ_2M + SZ_4K), Some(KVA + SZ_2M));
    }

    #[test]
    fn find_next_whose_search_ends_exactly_at_the_range_end() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let range = KVA + SZ_4K..KVA + SZ_2M + 3 * SZ_4K;
        map_untracked(&pt, range.end - SZ_4K, UPA, 1, rw());
        let mut c = pt.cursor(&range).unwrap();
        assert_eq!(c.find_next(range.len()), Some(range.end - SZ_4K));
        c.jump(range.end - SZ_4K).unwrap();
        assert_eq!(c.find_next(SZ_4K), Some(range.end - SZ_4K));
        c.jump(range.start).unwrap();
        assert_eq!(c.find_next(range.len() - SZ_4K), None);
        assert_eq!(c.virt_addr(), range.end - SZ_4K);
    }

    #[test]
    fn find_next_at_the_range_end_finds_nothing_and_stays_there() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 2, rw());
        let range = KVA..KVA + SZ_2M;
        let mut c = pt.cursor(&range).unwrap();
        c.jump(range.end).unwrap();
        assert_eq!(c.find_next(0), None);
        assert_eq!(c.virt_addr(), range.end);
    }

    #[test]
    fn find_next_inside_a_huge_page_returns_the_current_address() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 3, rw());
        let mut c = pt.cursor(&(KVA + 5 * SZ_4K..KVA + 9 * SZ_4K)).unwrap();
        assert_eq!(c.find_next(4 * SZ_4K), Some(KVA + 5 * SZ_4K));
        let (r, item) = c.query().unwrap();
        assert_eq!(r, KVA..KVA + SZ_1G);
        assert_eq!(item.unwrap().level(), 3);
    }

    #[test]
    #[should_panic(expected = "reaches past")]
    fn find_next_past_the_range_end_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor(&(KVA..KVA + SZ_2M)).unwrap();
        let _ = c.find_next(SZ_2M + SZ_4K);
    }

    #[test]
    #[should_panic(expected = "not page aligned")]
    fn find_next_with_a_misaligned_length_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor(&(KVA..KVA + SZ_2M)).unwrap();
        let _ = c.find_next(100);
    }
}

mod take_next {
    use super::*;

    #[test]
    fn take_next_takes_a_single_page() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let f = frame(&space);
        map_tracked(&pt, KVA + 3 * SZ_4K, f.clone(), rw());
        let mut c = pt.cursor_mut(&(KVA..KVA + 8 * SZ_4K)).unwrap();
        let frag = c.take_next(8 * SZ_4K).expect("a mapping");
        assert_eq!(frag.va_range(), KVA + 3 * SZ_4K..KVA + 4 * SZ_4K);
        match frag {
            PageTableFrag::Mapped { va, item: MappedItem::Tracked(g, p) } => {
                assert_eq!(va, KVA + 3 * SZ_4K);
                assert_eq!(g.paddr(), f.paddr());
                assert_eq!(p, rw());
                assert_eq!(f.reference_count(), 2, "the entry's reference moved to the fragment");
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        assert_eq!(f.reference_count(), 1, "dropping the fragment releases the reference");
        assert_eq!(c.virt_addr(), KVA + 4 * SZ_4K);
        assert!(c.take_next(4 * SZ_4K).is_none());
        assert_eq!(c.virt_addr(), KVA + 8 * SZ_4K);
        c.jump(KVA + 3 * SZ_4K).unwrap();
        assert!(c.query().unwrap().1.is_none());
    }

    #[test]
    fn take_next_of_a_whole_sub_tree_returns_a_stray_page_table() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        let f = frame(&space);
        map_tracked(&pt, KVA + SZ_2M + 7 * SZ_4K, f.clone(), rw());
        let range = KVA..KVA + 4 * SZ_2M;
        let mut c = pt.cursor_mut(&range).unwrap();
        match c.take_next(range.len()).expect("the sub-tree") {
            PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
                assert_eq!((va, len, num_frames), (KVA + SZ_2M, SZ_2M, 1));
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        assert_eq!(c.virt_addr(), KVA + 2 * SZ_2M);
        assert!(c.take_next(range.end - c.virt_addr()).is_none());
        drop(c);
        assert_eq!(pt_pages(&space), baseline);
        assert_eq!(f.reference_count(), 1, "the stray sub-tree released its frame");
    }

    #[test]
    fn stray_page_table_counts_huge_leaves_too() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        let base = KVA + SZ_1G;
        // One L2 node holding three 2 MiB leaves and one L1 node with five
        // 4 KiB leaves.
        for i in [0, 4, 511] {
            map_untracked(&pt, base + i * SZ_2M, UPA + i * SZ_2M, 2, rw());
        }
        let frames: Vec<_> = (0..5).map(|_| frame(&space)).collect();
        for (i, f) in frames.iter().enumerate() {
            map_tracked(&pt, base + 9 * SZ_2M + i * SZ_4K, f.clone(), rw());
        }
        let range = KVA..KVA + 3 * SZ_1G;
        let mut c = pt.cursor_mut(&range).unwrap();
        match c.take_next(range.len()).expect("the sub-tree") {
            PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
                assert_eq!((va, len, num_frames), (base, SZ_1G, 3 + 5));
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        assert!(c.take_next(range.end - c.virt_addr()).is_none());
        drop(c);
        assert_eq!(pt_pages(&space), baseline);
        assert!(frames.iter().all(|f| f.reference_count() == 1));
    }

    #[test]
    fn take_next_on_an_empty_range_returns_none_at_the_end() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + 3 * SZ_1G)).unwrap();
        assert!(c.take_next(2 * SZ_1G).is_none());
        assert_eq!(c.virt_addr(), KVA + 2 * SZ_1G);
        drop(c);
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn take_next_never_detaches_kernel_top_level_nodes() {
        let space = new_space();
        let space_own = pt_pages(&space);
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        assert_eq!(baseline - space_own, 1 + 256, "root plus every kernel L3 node");
        map_untracked(&pt, KVA + 3 * SZ_1G, UPA, 3, rw());
        map_untracked(&pt, KVA + 5 * SZ_4K, UPA, 1, rw());
        // A range covering a whole top-level entry (512 GiB).
        let range = KVA..KVA + (512 * SZ_1G);
        let mut c = pt.cursor_mut(&range).unwrap();
        match c.take_next(range.len()).unwrap() {
            PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
                assert_eq!((va, len, num_frames), (KVA, SZ_1G, 1), "the L2 node under it goes, not the L3");
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        match c.take_next(range.end - c.virt_addr()).unwrap() {
            PageTableFrag::Mapped { va, item: MappedItem::Untracked(pa, 3, _) } => {
                assert_eq!((va, pa), (KVA + 3 * SZ_1G, UPA));
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        assert!(c.take_next(range.end - c.virt_addr()).is_none());
        drop(c);
        assert_eq!(pt_pages(&space), baseline);
        // The L3 node is still there and usable.
        map_untracked(&pt, KVA, UPA, 3, rw());
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    fn tracked_frames_get_their_reference_back_after_unmap() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let frames: Vec<_> = (0..4).map(|_| frame(&space)).collect();
        for (i, f) in frames.iter().enumerate() {
            // Two mappings of each frame.
            map_tracked(&pt, KVA + i * SZ_4K, f.clone(), rw());
            map_tracked(&pt, KVA + SZ_1G + i * SZ_2M, f.clone(), ro());
        }
        assert!(frames.iter().all(|f| f.reference_count() == 3));
        // Page by page in the first group, keeping the fragments for a while.
        let mut c = pt.cursor_mut(&(KVA..KVA + 4 * SZ_4K)).unwrap();
        let mut frags = Vec::new();
        while let Some(frag) = c.take_next(KVA + 4 * SZ_4K - c.virt_addr()) {
            frags.push(frag);
        }
        drop(c);
        assert!(frames.iter().all(|f| f.reference_count() == 3), "fragments still hold the references");
        drop(frags);
        assert!(frames.iter().all(|f| f.reference_count() == 2));
        // Whole sub-trees in the second group.
        assert_eq!(unmap_all(&pt, KVA + SZ_1G..KVA + 2 * SZ_1G), 4);
        space.synchronize();
        assert!(frames.iter().all(|f| f.reference_count() == 1));
    }
}

/// `take_all`: a whole range at once.
mod take_all {
    use super::*;

    #[test]
    fn take_all_empties_leaf_nodes_and_returns_every_reference_on_drop() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        let f = frame(&space);
        // Two leaf nodes, the second only partly inside the range.
        let range = KVA + SZ_2M - 3 * SZ_4K..KVA + SZ_2M + 5 * SZ_4K;
        for i in 0..10 {
            map_tracked(&pt, KVA + SZ_2M - 4 * SZ_4K + i * SZ_4K, f.clone(), rw());
        }
        assert_eq!(f.reference_count(), 11);
        let mut c = pt.cursor_mut(&range).unwrap();
        let taken = c.take_all(range.len());
        assert_eq!(c.virt_addr(), range.end);
        drop(c);
        assert_eq!(taken.num_mappings(), 8);
        assert_eq!(taken.va_range(), Some(range.clone()));
        assert_eq!(f.reference_count(), 11, "what was taken holds the references until dropped");
        drop(taken);
        assert_eq!(f.reference_count(), 3);
        assert_eq!(
            leaves(&pt, KVA..KVA + SZ_1G).iter().map(|(va, _)| *va).collect::<Vec<_>>(),
            [KVA + SZ_2M - 4 * SZ_4K, KVA + SZ_2M + 5 * SZ_4K]
        );
        assert_eq!(unmap_all(&pt, KVA..KVA + SZ_1G), 2);
        space.synchronize();
        assert_eq!(pt_pages(&space), baseline, "the emptied leaf nodes are reclaimed");
        assert_eq!(f.reference_count(), 1);
    }

    #[test]
    fn take_all_splits_a_huge_page_at_each_end_and_takes_sub_trees_whole() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 2, rw());
        map_untracked(&pt, KVA + SZ_1G, UPA, 3, ro());
        map_untracked(&pt, KVA + 2 * SZ_1G + 5 * SZ_4K, UPA, 1, rw());
        // From inside the 2 MiB page to inside the 1 GiB page.
        let range = KVA + SZ_1M..KVA + SZ_1G + SZ_1M;
        let mut c = pt.cursor_mut(&range).unwrap();
        let taken = c.take_all(range.len());
        drop(c);
        // 256 4 KiB pieces of each huge page.
        assert_eq!(taken.num_mappings(), 512);
        assert_eq!(taken.va_range(), Some(range.clone()));
        drop(taken);
        assert_eq!(pt.translate(KVA + SZ_1M - SZ_4K), Some((UPA + SZ_1M - SZ_4K, rw())));
        assert_eq!(pt.translate(KVA + SZ_1M), None);
        assert_eq!(pt.translate(KVA + SZ_1G + SZ_1M - SZ_4K), None);
        assert_eq!(pt.translate(KVA + SZ_1G + SZ_1M), Some((UPA + SZ_1M, ro())));
        // A whole 1 GiB region holding a leaf node: one sub-tree, one leaf.
        let nodes = pt_pages(&space);
        let mut c = pt.cursor_mut(&(KVA + 2 * SZ_1G..KVA + 3 * SZ_1G)).unwrap();
        let taken = c.take_all(SZ_1G);
        drop(c);
        assert_eq!(taken.num_mappings(), 1);
        assert_eq!(taken.va_range(), Some(KVA + 2 * SZ_1G..KVA + 3 * SZ_1G));
        assert_eq!(pt_pages(&space), nodes, "the sub-tree's nodes wait for the taken range's drop");
        drop(taken);
        assert_eq!(pt_pages(&space), nodes - 2, "dropping the taken range frees the sub-tree's two nodes");
    }

    #[test]
    fn take_all_of_nothing_is_empty() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_1G)).unwrap();
        let taken = c.take_all(SZ_1G);
        assert!(taken.is_empty());
        assert_eq!((taken.num_mappings(), taken.va_range()), (0, None));
        assert_eq!(c.virt_addr(), KVA + SZ_1G);
    }

    #[test]
    fn try_take_all_without_memory_keeps_what_it_took_and_changes_nothing_after() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let f = frame(&space);
        map_tracked(&pt, KVA, f.clone(), rw());
        map_untracked(&pt, KVA + SZ_1G, UPA, 3, rw());
        let nodes = pt_pages(&space);
        let hoard = take_every_free_frame(&space);
        // Ends inside the 1 GiB page, which cannot be split.
        let range = KVA..KVA + SZ_1G + SZ_4K;
        let mut c = pt.cursor_mut(&range).unwrap();
        let mut taken = TakenRange::new();
        assert_eq!(c.try_take_all(range.len(), &mut taken), Err(PageTableAllocError));
        assert_eq!(c.virt_addr(), KVA + SZ_1G, "the cursor stands in the page it could not split");
        assert_eq!(taken.num_mappings(), 1);
        assert_eq!(f.reference_count(), 2);
        drop(c);
        assert_eq!(pt.translate(KVA + SZ_1G), Some((UPA, rw())), "the huge page is untouched");
        // The first GiB went as one sub-tree, released after a grace period.
        drop(taken);
        drop(hoard);
        space.synchronize();
        assert_eq!(f.reference_count(), 1);
        assert_eq!(pt_pages(&space), nodes - 2, "the sub-tree's two nodes were freed");
    }
}

/// `take_next` and `protect_next` search `va..va + len`, which must lie in
/// the cursor's range: a longer length, or one whose end overflows, is a
/// documented panic (before anything changes).
mod search_length_panics {
    use super::*;

    /// A cursor over four pages at `KVA` with the second page mapped,
    /// standing on that page.
    fn cursor_on_a_mapped_page(
        pt: &PageTable<KernelPtConfig>,
    ) -> kvirt::page_table::CursorMut<'_, KernelPtConfig> {
        map_untracked(pt, KVA + SZ_4K, UPA, 1, rw());
        let mut c = pt.cursor_mut(&(KVA..KVA + 4 * SZ_4K)).unwrap();
        c.jump(KVA + SZ_4K).unwrap();
        c
    }

    /// The last page a range can hold: a length from there overflows.
    fn cursor_at_the_end_of_the_space(
        pt: &PageTable<KernelPtConfig>,
    ) -> kvirt::page_table::CursorMut<'_, KernelPtConfig> {
        let last = LAST_RANGE_END - SZ_4K;
        map_untracked(pt, last, UPA, 1, rw());
        let mut c = pt.cursor_mut(&(LAST_RANGE_END - SZ_2M..LAST_RANGE_END)).unwrap();
        c.jump(last).unwrap();
        c
    }

    /// A page-aligned length so large that `va + len` overflows.
    const OVERFLOWING: usize = usize::MAX & !(SZ_4K - 1);

    fn make_read_only(p: &mut PageProperty) {
        p.flags = PageFlags::R;
    }

    #[test]
    #[should_panic(expected = "reaches past the cursor's range")]
    fn take_next_past_the_range_end_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = cursor_on_a_mapped_page(&pt);
        // Three pages are left; four are asked for.
        let _ = c.take_next(4 * SZ_4K);
    }

    #[test]
    #[should_panic(expected = "reaches past the cursor's range")]
    fn take_next_with_an_overflowing_length_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = cursor_at_the_end_of_the_space(&pt);
        let _ = c.take_next(OVERFLOWING);
    }

    #[test]
    #[should_panic(expected = "reaches past the cursor's range")]
    fn protect_next_past_the_range_end_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = cursor_on_a_mapped_page(&pt);
        let _ = c.protect_next(4 * SZ_4K, &mut make_read_only);
    }

    #[test]
    #[should_panic(expected = "reaches past the cursor's range")]
    fn protect_next_with_an_overflowing_length_panics() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = cursor_at_the_end_of_the_space(&pt);
        let _ = c.protect_next(OVERFLOWING, &mut make_read_only);
    }

    #[test]
    fn the_longest_allowed_lengths_reach_exactly_the_range_end() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let mut c = cursor_on_a_mapped_page(&pt);
        assert_eq!(c.protect_next(3 * SZ_4K, &mut make_read_only), Some(KVA + SZ_4K..KVA + 2 * SZ_4K));
        c.jump(KVA + SZ_4K).unwrap();
        assert!(
            matches!(c.take_next(3 * SZ_4K), Some(PageTableFrag::Mapped { va, .. }) if va == KVA + SZ_4K)
        );
        drop(c);
        let mut c = cursor_at_the_end_of_the_space(&pt);
        assert_eq!(c.protect_next(SZ_4K, &mut make_read_only), Some(LAST_RANGE_END - SZ_4K..LAST_RANGE_END));
        assert_eq!(c.virt_addr(), LAST_RANGE_END);
    }
}

mod mixed_granularity {
    use super::*;

    /// Checks that `found` is the `expected` list of `(va, pa, level, prop)`.
    fn assert_layout(found: &[(Vaddr, Leaf)], expected: &[(Vaddr, Paddr, PagingLevel, PageProperty)]) {
        assert_eq!(found.len(), expected.len(), "number of leaves");
        for ((va, leaf), &(eva, epa, elevel, eprop)) in found.iter().zip(expected) {
            assert_eq!((*va, leaf.pa, leaf.level, leaf.prop), (eva, epa, elevel, eprop), "leaf at {va:#x}");
        }
    }

    #[test]
    fn unmap_4k_inside_a_2m_page_splits_it_and_keeps_the_rest() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let base = KVA + SZ_2M;
        map_untracked(&pt, base, UPA, 2, ro());
        let hole = base + 100 * SZ_4K;
        let mut c = pt.cursor_mut(&(hole..hole + SZ_4K)).unwrap();
        match c.take_next(SZ_4K).unwrap() {
            PageTableFrag::Mapped { va, item: MappedItem::Untracked(pa, 1, p) } => {
                assert_eq!((va, pa, p), (hole, UPA + 100 * SZ_4K, ro()));
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        drop(c);
        let expected: Vec<_> =
            (0..512).filter(|&i| i != 100).map(|i| (base + i * SZ_4K, UPA + i * SZ_4K, 1, ro())).collect();
        assert_layout(&leaves(&pt, base - SZ_2M..base + 2 * SZ_2M), &expected);
        assert_eq!(pt.translate(hole), None);
        assert_eq!(pt.translate(hole + SZ_4K + 5), Some((UPA + 101 * SZ_4K + 5, ro())));
    }

    #[test]
    fn unmap_4k_inside_a_1g_page_splits_it_twice_and_keeps_the_rest() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let base = KVA + SZ_1G;
        let prop = PageProperty::new_kernel(PageFlags::RX, CachePolicy::WriteCombining);
        map_untracked(&pt, base, UPA, 3, prop);
        let hole = base + 7 * SZ_2M + 3 * SZ_4K;
        assert_eq!(unmap_all(&pt, hole..hole + SZ_4K), 1);
        let mut expected = Vec::new();
        for j in 0..512 {
            if j == 7 {
                for i in (0..512).filter(|&i| i != 3) {
                    expected.push((base + j * SZ_2M + i * SZ_4K, UPA + j * SZ_2M + i * SZ_4K, 1, prop));
                }
            } else {
                expected.push((base + j * SZ_2M, UPA + j * SZ_2M, 2, prop));
            }
        }
        assert_layout(&leaves(&pt, KVA..KVA + 3 * SZ_1G), &expected);
    }

    #[test]
    fn unmap_across_a_huge_page_boundary_keeps_both_outer_parts() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 2, rw());
        map_untracked(&pt, KVA + SZ_2M, UPA + SZ_2M, 2, rw());
        let cut = KVA + SZ_2M - 2 * SZ_4K..KVA + SZ_2M + 3 * SZ_4K;
        assert_eq!(unmap_all(&pt, cut.clone()), 5);
        let found = leaves(&pt, KVA..KVA + 2 * SZ_2M);
        assert_eq!(found.len(), 2 * 512 - 5);
        for (va, leaf) in &found {
            assert!(!cut.contains(va));
            assert_eq!(leaf.pa, UPA + (va - KVA));
            assert_eq!(leaf.level, 1);
        }
    }

    #[test]
    fn protect_inside_a_2m_page_splits_it() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 2, rw());
        let target = KVA + 17 * SZ_4K..KVA + 19 * SZ_4K;
        let mut c = pt.cursor_mut(&target).unwrap();
        let mut op = |p: &mut PageProperty| p.flags -= PageFlags::W;
        assert_eq!(c.protect_next(2 * SZ_4K, &mut op), Some(target.start..target.start + SZ_4K));
        assert_eq!(c.protect_next(SZ_4K, &mut op), Some(target.start + SZ_4K..target.end));
        assert_eq!(c.protect_next(0, &mut op), None);
        drop(c);
        let expected: Vec<_> = (0..512)
            .map(|i| {
                let prop = if (17..19).contains(&i) { ro() } else { rw() };
                (KVA + i * SZ_4K, UPA + i * SZ_4K, 1, prop)
            })
            .collect();
        assert_layout(&leaves(&pt, KVA..KVA + SZ_2M), &expected);
    }

    #[test]
    fn protect_inside_a_1g_page_splits_it() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 3, rw());
        // One whole 2 MiB piece plus one 4 KiB page after it.
        let target = KVA + 2 * SZ_2M..KVA + 3 * SZ_2M + SZ_4K;
        let mut c = pt.cursor_mut(&target).unwrap();
        let mut op = |p: &mut PageProperty| p.cache = CachePolicy::Uncacheable;
        let unc = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable);
        assert_eq!(c.protect_next(target.len(), &mut op), Some(KVA + 2 * SZ_2M..KVA + 3 * SZ_2M));
        assert_eq!(c.protect_next(SZ_4K, &mut op), Some(KVA + 3 * SZ_2M..target.end));
        drop(c);
        let mut expected = Vec::new();
        for j in 0..512 {
            match j {
                2 => expected.push((KVA + j * SZ_2M, UPA + j * SZ_2M, 2, unc)),
                3 => {
                    for i in 0..512 {
                        let p = if i == 0 { unc } else { rw() };
                        expected.push((KVA + j * SZ_2M + i * SZ_4K, UPA + j * SZ_2M + i * SZ_4K, 1, p));
                    }
                }
                _ => expected.push((KVA + j * SZ_2M, UPA + j * SZ_2M, 2, rw())),
            }
        }
        assert_layout(&leaves(&pt, KVA..KVA + SZ_1G), &expected);
    }

    #[test]
    fn mixed_4k_2m_1g_map_protect_unmap_query() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        // 514 × 2 MiB (crossing a 1 GiB boundary) followed by 2 × 4 KiB,
        // then a 1 GiB page.
        let start = KVA + SZ_1G - 2 * SZ_2M;
        let small = start + 514 * SZ_2M;
        let giant = KVA + 3 * SZ_1G;
        {
            let mut c = pt.cursor_mut(&(start..KVA + 4 * SZ_1G)).unwrap();
            for i in 0..514 {
                c.map(MappedItem::Untracked(UPA + i * SZ_2M, 2, rw()));
            }
            c.map(MappedItem::Untracked(UPA + 514 * SZ_2M, 1, rw()));
            c.map(MappedItem::Untracked(UPA + 514 * SZ_2M + SZ_4K, 1, rw()));
            c.jump(giant).unwrap();
            c.map(MappedItem::Untracked(UPA + SZ_1G, 3, rw()));
        }
        // Protect from the middle of the first 2 MiB page to the middle of
        // the 1 GiB page.
        let target = start + SZ_4K..giant + SZ_2M + SZ_4K;
        {
            let mut c = pt.cursor_mut(&target).unwrap();
            let mut op = |p: &mut PageProperty| p.flags = PageFlags::R;
            let mut changed = 0;
            while let Some(r) = c.protect_next(target.end - c.virt_addr(), &mut op) {
                assert!(r.start >= target.start && r.end <= target.end, "changed {r:#x?} outside");
                changed += 1;
            }
            // 511 split pages + 513 huge pages + 2 small pages + one 2 MiB
            // piece of the 1 GiB page + one 4 KiB page after it.
            assert_eq!(changed, 511 + 513 + 2 + 1 + 1);
        }
        assert_eq!(query(&pt, start).1.unwrap().prop, rw());
        assert_eq!(query(&pt, start).0, start..start + SZ_4K);
        assert_eq!(query(&pt, start + SZ_4K).1.unwrap().prop, ro());
        assert_eq!(query(&pt, start + 300 * SZ_2M).0.len(), SZ_2M);
        assert_eq!(query(&pt, start + 300 * SZ_2M).1.unwrap().prop, ro());
        assert_eq!(
            query(&pt, small + SZ_4K).1.unwrap(),
            Leaf { pa: UPA + 514 * SZ_2M + SZ_4K, level: 1, prop: ro(), tracked: false }
        );
        assert_eq!(query(&pt, giant).1.unwrap().prop, ro());
        assert_eq!(query(&pt, giant).0, giant..giant + SZ_2M);
        assert_eq!(query(&pt, giant + SZ_2M).1.unwrap().prop, ro());
        assert_eq!(query(&pt, giant + SZ_2M + SZ_4K).1.unwrap().prop, rw());
        assert_eq!(query(&pt, giant + SZ_2M + SZ_4K).0.len(), SZ_4K);
        assert_eq!(query(&pt, giant + 2 * SZ_2M).0.len(), SZ_2M);
        assert_eq!(query(&pt, giant + 2 * SZ_2M).1.unwrap().prop, rw());
        assert_eq!(pt.translate(giant + SZ_1G - 1), Some((UPA + 2 * SZ_1G - 1, rw())));
        // Everything goes, whatever the granularity.
        let total = 512 + 513 + 2 + 511 + 512;
        assert_eq!(unmap_all(&pt, start..KVA + 4 * SZ_1G), total);
        assert!(leaves(&pt, KVA..KVA + 4 * SZ_1G).is_empty());
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    fn protect_changes_only_the_pages_asked_for() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let range = KVA..KVA + 32 * SZ_4K;
        {
            let mut c = pt.cursor_mut(&range).unwrap();
            for i in 0..32 {
                c.map(MappedItem::Untracked(UPA + i * SZ_4K, 1, rw()));
            }
        }
        let target = KVA + 18 * SZ_4K..KVA + 20 * SZ_4K;
        let mut c = pt.cursor_mut(&target).unwrap();
        let mut op = |p: &mut PageProperty| p.flags = PageFlags::R;
        while c.protect_next(target.end - c.virt_addr(), &mut op).is_some() {}
        drop(c);
        for (va, leaf) in leaves(&pt, range) {
            let expected = if target.contains(&va) { ro() } else { rw() };
            assert_eq!(leaf.prop, expected, "page {va:#x}");
        }
    }

    #[test]
    fn protect_next_on_an_empty_range_returns_none() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_1G)).unwrap();
        assert_eq!(c.protect_next(SZ_1G, &mut |p: &mut PageProperty| p.flags = PageFlags::R), None);
        assert_eq!(c.virt_addr(), KVA + SZ_1G);
        drop(c);
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn protect_next_returns_the_mapped_subrange_only() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA + 10 * SZ_4K, UPA, 1, rw());
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_2M)).unwrap();
        let mut calls = 0;
        let mut op = |p: &mut PageProperty| {
            calls += 1;
            p.flags = PageFlags::R;
        };
        assert_eq!(c.protect_next(SZ_2M, &mut op), Some(KVA + 10 * SZ_4K..KVA + 11 * SZ_4K));
        assert_eq!(c.protect_next(SZ_2M - 11 * SZ_4K, &mut op), None);
        drop(c);
        assert_eq!(calls, 1);
    }

    #[test]
    fn map_a_huge_page_where_a_node_was_emptied() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        // Emptied by a separate cursor.
        map_untracked(&pt, KVA + 3 * SZ_4K, UPA, 1, rw());
        assert_eq!(unmap_all(&pt, KVA + 3 * SZ_4K..KVA + 4 * SZ_4K), 1);
        map_untracked(&pt, KVA, UPA, 2, rw());
        assert_eq!(query(&pt, KVA + 3 * SZ_4K).0, KVA..KVA + SZ_2M);
        // Emptied and re-mapped within one cursor, at 2 MiB and at 1 GiB.
        let range = KVA + SZ_1G..KVA + 2 * SZ_1G;
        let mut c = pt.cursor_mut(&range).unwrap();
        c.jump(range.start + SZ_2M + SZ_4K).unwrap();
        c.map(MappedItem::Untracked(UPA, 1, rw()));
        c.jump(range.start + SZ_2M + SZ_4K).unwrap();
        assert!(matches!(c.take_next(SZ_4K), Some(PageTableFrag::Mapped { .. })));
        c.jump(range.start + SZ_2M).unwrap();
        c.map(MappedItem::Untracked(UPA, 2, rw()));
        c.jump(range.start + SZ_2M).unwrap();
        assert!(matches!(c.take_next(SZ_2M), Some(PageTableFrag::Mapped { .. })));
        c.jump(range.start).unwrap();
        c.map(MappedItem::Untracked(UPA, 3, rw()));
        drop(c);
        assert_eq!(query(&pt, range.start + SZ_2M).0, range);
        assert_eq!(unmap_all(&pt, KVA..KVA + 2 * SZ_1G), 2);
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    fn split_huge_page_then_unmap_one_half() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        map_untracked(&pt, KVA, UPA, 2, rw());
        assert_eq!(unmap_all(&pt, KVA..KVA + SZ_2M / 2), 256);
        let rest = leaves(&pt, KVA..KVA + SZ_2M);
        assert_eq!(rest.len(), 256);
        assert_eq!(rest[0].0, KVA + SZ_2M / 2);
        assert_eq!(rest[0].1.pa, UPA + SZ_2M / 2);
        assert_eq!(unmap_all(&pt, KVA + SZ_2M / 2..KVA + SZ_2M), 256);
        assert_eq!(pt_pages(&space), baseline);
    }
}

mod reclamation {
    use kvirt::platform::{TlbFlushOp, TlbScope};

    use super::*;

    /// Unmaps the one page at `va`, with a cursor over it alone, and drops
    /// what was mapped after flushing it.
    fn unmap_page(space: &KernelSpace, pt: &PageTable<KernelPtConfig>, va: Vaddr) {
        let mut cursor = pt.cursor_mut(&(va..va + SZ_4K)).expect("cursor");
        let frag = cursor.take_next(SZ_4K).expect("the page is mapped");
        drop(cursor);
        space.platform().flush_tlb(TlbFlushOp::Range(frag.va_range()), TlbScope::AllCpus);
        drop(frag);
    }

    /// A space on `CountingRcu` (callbacks run as soon as no section is
    /// open), its kernel table, how many page-table pages it holds, and a
    /// frame to map.
    fn counting_rcu_table() -> (KernelSpace, PageTable<KernelPtConfig>, usize, Frame<dyn AnyFrameMeta>) {
        let machine = kvirt_sim::Machine::new(kvirt_sim::MachineConfig::new(64 << 20));
        let space = counting_rcu::space_on(std::sync::Arc::new(machine));
        let pt = kernel_pt(&space);
        let baseline = space.phys_stats().page_table_pages;
        let f = frame(&space);
        (space, pt, baseline, f)
    }

    /// A node detached from the tree may still be read by a walker that
    /// passed its parent a moment earlier, so it is freed only once every
    /// read-side section that may have seen it has ended. On a platform
    /// with `CountingRcu`, callbacks queued with no section open run at
    /// once, which the first half shows; the second half holds a section
    /// open across the unmapping.
    #[test]
    fn a_detached_node_is_freed_only_after_the_read_side_sections_open_before() {
        let (space, pt, baseline, f) = counting_rcu_table();
        let va = KVA + 5 * SZ_4K;

        // No section open: the level-1 and level-2 nodes the page needed
        // are detached when the cursor is dropped and freed at once.
        map_tracked(&pt, va, f.clone(), rw());
        assert_eq!(space.phys_stats().page_table_pages, baseline + 2, "a level-2 and a level-1 node");
        unmap_page(&space, &pt, va);
        assert_eq!(space.phys_stats().page_table_pages, baseline, "nothing held the nodes back");

        // A section open across the unmapping holds both nodes.
        map_tracked(&pt, va, f.clone(), rw());
        space.platform().rcu_read_lock();
        unmap_page(&space, &pt, va);
        assert_eq!(pt.translate(va), None, "the page is unmapped");
        assert_eq!(f.reference_count(), 1, "the frame's reference left with the fragment");
        assert_eq!(
            space.phys_stats().page_table_pages,
            baseline + 2,
            "the detached nodes wait for the open section"
        );
        // SAFETY: this test began the section above, on this thread.
        unsafe { space.platform().rcu_read_unlock() };
        space.synchronize();
        assert_eq!(space.phys_stats().page_table_pages, baseline, "freed once the section ended");
        assert_eq!(pt.check_inv(), Ok(1 + 256), "the root and the kernel's top-level nodes");
    }

    /// The same guarantee through the public section: a `ReadSection`
    /// keeps the nodes it may walk through alive, and its walks see the
    /// table as it is at each call.
    #[test]
    fn a_read_section_holds_detached_nodes_until_it_ends_and_sees_each_change() {
        let (space, pt, baseline, f) = counting_rcu_table();
        let va = KVA + 5 * SZ_4K;
        map_tracked(&pt, va, f.clone(), rw());

        let section = pt.read_section();
        assert_eq!(section.translate(va + 9), Some((f.paddr() + 9, rw())));
        assert_eq!(section.translate_addr(va + 9), Some(f.paddr() + 9));
        assert_eq!(section.translate_addr(va + SZ_4K), None);
        unmap_page(&space, &pt, va);
        assert_eq!(section.translate(va), None, "a walk in the section sees the unmapping");
        assert_eq!(section.translate_addr(va), None);
        assert_eq!(
            space.phys_stats().page_table_pages,
            baseline + 2,
            "the detached nodes wait for the section"
        );
        map_untracked(&pt, va, UPA, 1, rw());
        assert_eq!(section.translate_addr(va + 1), Some(UPA + 1), "and the next mapping");
        drop(section);

        assert_eq!(unmap_all(&pt, va..va + SZ_4K), 1);
        space.synchronize();
        assert_eq!(space.phys_stats().page_table_pages, baseline, "freed once the section ended");
        assert_eq!(f.reference_count(), 1);
        assert_eq!(pt.check_inv(), Ok(1 + 256), "the root and the kernel's top-level nodes");
    }

    #[test]
    fn unmapping_everything_returns_page_table_pages_to_baseline() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        let free = space.phys_stats().free_pages;
        let frames: Vec<_> = (0..64).map(|_| frame(&space)).collect();
        for (i, f) in frames.iter().enumerate() {
            map_tracked(&pt, KVA + i * 37 * SZ_2M + i * SZ_4K, f.clone(), rw());
        }
        map_untracked(&pt, KVA + 200 * SZ_1G, UPA, 3, rw());
        map_untracked(&pt, KVA + 201 * SZ_1G + 5 * SZ_2M, UPA, 2, rw());
        map_untracked(&pt, 0xffff_8000_0000_0000, UPA, 1, rw());
        assert!(pt_pages(&space) > baseline);
        assert_eq!(unmap_all(&pt, 0xffff_8000_0000_0000..LAST_RANGE_END), 64 + 3);
        assert_eq!(pt_pages(&space), baseline);
        drop(frames);
        assert_eq!(space.phys_stats().free_pages, free);
    }

    #[test]
    fn unmapping_page_by_page_with_separate_cursors_reclaims_every_node() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        let vas: Vec<Vaddr> = (0..40).map(|i| KVA + (i % 5) * SZ_1G + (i / 5) * SZ_2M + i * SZ_4K).collect();
        for (i, &va) in vas.iter().enumerate() {
            map_untracked(&pt, va, UPA + i * SZ_4K, 1, rw());
        }
        for &va in &vas {
            assert_eq!(unmap_all(&pt, va..va + SZ_4K), 1);
        }
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    fn a_split_huge_page_unmapped_piece_by_piece_is_reclaimed() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        map_untracked(&pt, KVA, UPA, 3, rw());
        // Small cursors, in an order that splits first and empties last.
        for j in (0..512).rev() {
            for i in (0..512).step_by(128) {
                let va = KVA + j * SZ_2M + i * SZ_4K;
                assert_eq!(unmap_all(&pt, va..va + 128 * SZ_4K), 128);
            }
        }
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    fn user_page_table_nodes_are_reclaimed_up_to_the_top_level() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        let baseline = pt_pages(&space);
        map_untracked(&user, 0x4000_0000_0000 + 3 * SZ_4K, UPA, 1, rw());
        assert_eq!(pt_pages(&space), baseline + 3, "L3, L2 and L1 nodes");
        let va = 0x4000_0000_0000 + 3 * SZ_4K;
        assert_eq!(unmap_all(&user, va..va + SZ_4K), 1);
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    fn dropping_a_page_table_releases_its_nodes_and_frames() {
        let space = new_space();
        let before = space.phys_stats();
        let f = frame(&space);
        {
            let pt = kernel_pt(&space);
            let user = pt.create_user_page_table().unwrap();
            map_tracked(&pt, KVA, f.clone(), rw());
            map_tracked(&user, SZ_1G, f.clone(), rw());
            map_untracked(&user, 3 * SZ_1G, UPA, 3, rw());
            assert_eq!(f.reference_count(), 3);
            drop(user);
            assert_eq!(f.reference_count(), 2);
            assert_eq!(pt.translate(KVA), Some((f.paddr(), rw())), "the kernel half survives the user table");
        }
        space.synchronize();
        assert_eq!(f.reference_count(), 1);
        drop(f);
        assert_eq!(space.phys_stats(), before);
    }
}

mod user_page_table {
    use super::*;

    #[test]
    fn user_table_shares_the_kernel_top_level_entries() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let before = pt_pages(&space);
        let user = pt.create_user_page_table().unwrap();
        assert_eq!(pt_pages(&space), before + 1, "only a new root");
        assert_ne!(user.root_paddr(), pt.root_paddr());
        // Kernel mappings made later are visible to the MMU through the
        // user table's root (`translate` only answers for the user half).
        // SAFETY: only page walks of a table of this space, which read
        // entries with atomic loads.
        let machine = unsafe { space.machine() }.unwrap();
        let walk = |va: Vaddr| {
            kvirt_sim::walk(machine, user.root_paddr() as u64, va, kvirt_sim::Access::READ)
                .ok()
                .map(|t| t.pa as Paddr)
        };
        map_untracked(&pt, KVA + 5 * SZ_1G + SZ_4K, UPA, 1, rw());
        map_untracked(&pt, 0xffff_ff00_0000_0000, UPA, 3, rw());
        assert_eq!(walk(KVA + 5 * SZ_1G + SZ_4K + 1), Some(UPA + 1));
        assert_eq!(walk(0xffff_ff00_0000_0000 + SZ_2M), Some(UPA + SZ_2M));
        // And removed ones disappear.
        assert_eq!(unmap_all(&pt, KVA..KVA + 8 * SZ_1G), 1);
        assert_eq!(walk(KVA + 5 * SZ_1G + SZ_4K), None);
        assert_eq!(walk(0xffff_ff00_0000_0000), Some(UPA));
    }

    #[test]
    fn user_mappings_are_independent_below_the_shared_entries() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let a = pt.create_user_page_table().unwrap();
        let b = pt.create_user_page_table().unwrap();
        let va = 0x1000_0000;
        map_untracked(&a, va, UPA, 1, rw());
        map_untracked(&b, va, UPA + SZ_2M, 2, ro());
        assert_eq!(a.translate(va), Some((UPA, rw())));
        assert_eq!(b.translate(va + SZ_4K), Some((UPA + SZ_2M + SZ_4K, ro())));
        assert_eq!(a.translate(va + SZ_4K), None);
        assert_eq!(pt.translate(va), None, "user addresses are not in the kernel table");
        assert_eq!(unmap_all(&a, 0..0x8000_0000_0000), 1);
        assert_eq!(a.translate(va), None);
        assert_eq!(b.translate(va), Some((UPA + SZ_2M, ro())));
        assert_eq!(leaves(&b, 0..0x8000_0000_0000).len(), 1);
    }

    #[test]
    fn a_user_table_checks_and_keeps_only_its_own_half_even_after_the_kernel_table_is_gone() {
        let space = new_space();
        let before = space.phys_stats();
        let space_nodes = before.page_table_pages;
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 1, rw());
        let user = pt.create_user_page_table().unwrap();
        map_untracked(&user, SZ_1G, UPA + SZ_4K, 1, rw());
        assert_eq!(
            user.check_inv(),
            Ok(4),
            "its root and the level-3, level-2 and level-1 nodes of its own half; not the kernel's"
        );
        // The kernel table's nodes, the shared ones included, are freed.
        drop(pt);
        space.synchronize();
        assert_eq!(
            pt_pages(&space),
            space_nodes + 4,
            "of the two tables, only the user table's nodes are left"
        );
        assert_eq!(user.check_inv(), Ok(4));
        assert_eq!(user.translate(SZ_1G), Some((UPA + SZ_4K, rw())));
        assert_eq!(user.translate(KVA), None, "the shared half is not followed");
        assert_eq!(query(&user, SZ_1G).1.map(|l| l.pa), Some(UPA + SZ_4K));
        drop(user);
        space.synchronize();
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn user_table_cursor_cannot_reach_kernel_addresses() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        map_untracked(&pt, KVA, UPA, 1, rw());
        assert_eq!(user.cursor_mut(&(KVA..KVA + SZ_4K)).map(drop), Err(RangeError::OutOfBounds));
        assert!(leaves(&user, 0..0x8000_0000_0000).is_empty());
    }
}

/// Cursors over disjoint ranges run at the same time; cursors over
/// overlapping ranges exclude each other (the lock protocol in the
/// `page_table` module docs). Both tests share one upper node: the level-2
/// node of the first 1 GiB of VMALLOC, under which level-1 nodes exist for
/// the 2 MiB regions at `KVA` and `KVA + 2 MiB`. A cursor's guard is the
/// lowest existing node that covers its range, so a range inside one of
/// those regions locks only that region's level-1 node.
///
/// A thread that waits for a lock spins until it gets it, so a test that
/// went wrong would hang; the cursors therefore live on threads of their
/// own, and the test waits for them with a generous timeout.
mod concurrent_cursors {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use super::*;

    /// How long a test waits for a thread before it calls the run a hang.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// A page table and its space, shared with threads of their own. The
    /// table is dropped before the space.
    struct Table {
        pt: PageTable<KernelPtConfig>,
        space: KernelSpace,
    }

    /// A table in which the level-1 nodes for `KVA..KVA + 2 MiB` and
    /// `KVA + 2 MiB..KVA + 4 MiB` exist (each maps one page at its end).
    fn table_with_two_leaf_nodes() -> Arc<Table> {
        let space = new_space();
        let pt = kernel_pt(&space);
        for region in [KVA, KVA + SZ_2M] {
            map_untracked(&pt, region + SZ_2M - SZ_4K, UPA, 1, rw());
        }
        Arc::new(Table { pt, space })
    }

    #[test]
    fn one_thread_holds_cursors_over_disjoint_ranges_under_one_node_at_once() {
        let table = table_with_two_leaf_nodes();
        let nodes = pt_pages(&table.space);
        let (done, finished) = mpsc::channel();
        let t = table.clone();
        // If the second cursor waited for the first, this thread would spin
        // for ever: `finished` would then time out.
        std::thread::spawn(move || {
            let mut left = t.pt.cursor_mut(&(KVA..KVA + 4 * SZ_4K)).expect("cursor");
            let mut right = t.pt.cursor_mut(&(KVA + SZ_2M..KVA + SZ_2M + 4 * SZ_4K)).expect("cursor");
            for i in 0..4 {
                left.map(MappedItem::Untracked(UPA + i * SZ_4K, 1, rw()));
                right.map(MappedItem::Untracked(UPA + (4 + i) * SZ_4K, 1, rw()));
            }
            drop((left, right));
            done.send(()).expect("the test waits");
        });
        finished
            .recv_timeout(PATIENCE)
            .expect("the thread holding both cursors hung: the second waited for the first");
        for i in 0..4 {
            assert_eq!(query(&table.pt, KVA + i * SZ_4K).1.map(|l| l.pa), Some(UPA + i * SZ_4K));
            assert_eq!(
                query(&table.pt, KVA + SZ_2M + i * SZ_4K).1.map(|l| l.pa),
                Some(UPA + (4 + i) * SZ_4K)
            );
        }
        assert_eq!(pt_pages(&table.space), nodes, "both cursors worked in the existing level-1 nodes");
    }

    #[test]
    fn a_cursor_over_an_overlapping_range_waits_until_the_first_is_dropped() {
        let table = table_with_two_leaf_nodes();
        let b_trying = Arc::new(AtomicBool::new(false));
        let b_has_cursor = Arc::new(AtomicBool::new(false));
        let a_released = Arc::new(AtomicBool::new(false));
        let (a_locked_tx, a_locked) = mpsc::channel();
        let (a_done_tx, a_done) = mpsc::channel();
        let (b_done_tx, b_done) = mpsc::channel();

        let (t, trying, has, released) =
            (table.clone(), b_trying.clone(), b_has_cursor.clone(), a_released.clone());
        std::thread::spawn(move || {
            let mut cursor = t.pt.cursor_mut(&(KVA..KVA + 2 * SZ_4K)).expect("cursor");
            a_locked_tx.send(()).expect("B waits for this");
            // Wait until B is about to create its cursor, then give it
            // time to (wrongly) get it.
            while !trying.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(50));
            let b_got_it_early = has.load(Ordering::SeqCst);
            // Map in the part both ranges cover.
            cursor.jump(KVA + SZ_4K).expect("inside");
            cursor.map(MappedItem::Untracked(UPA, 1, rw()));
            released.store(true, Ordering::SeqCst);
            drop(cursor);
            a_done_tx.send(b_got_it_early).expect("the test waits");
        });
        let (t, trying, has, released) = (table.clone(), b_trying, b_has_cursor, a_released);
        std::thread::spawn(move || {
            a_locked.recv_timeout(PATIENCE).expect("A created its cursor");
            trying.store(true, Ordering::SeqCst);
            let mut cursor = t.pt.cursor_mut(&(KVA + SZ_4K..KVA + 3 * SZ_4K)).expect("cursor");
            has.store(true, Ordering::SeqCst);
            let a_had_released = released.load(Ordering::SeqCst);
            let seen = cursor.query().expect("inside").1.map(|item| item.paddr());
            b_done_tx.send((a_had_released, seen)).expect("the test waits");
        });

        let b_got_it_early = a_done.recv_timeout(PATIENCE).expect("A finished");
        assert!(!b_got_it_early, "B got an overlapping cursor while A held its own");
        let (a_had_released, seen) =
            b_done.recv_timeout(PATIENCE).expect("B got its cursor once A dropped its own");
        assert!(a_had_released, "B got its cursor before A released the range");
        assert_eq!(seen, Some(UPA), "B sees what A mapped under its lock");
    }
}

mod soundness {
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Arc;

    use crate::support::hooked::{hooked_space, Hooks};

    use super::*;

    #[test]
    fn a_frame_of_another_kernel_space_is_rejected() {
        let space = new_space();
        let other = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let foreign = frame(&other);
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_4K)).unwrap();
        let e = c.try_map(MappedItem::Tracked(foreign.clone(), rw())).unwrap_err();
        assert_foreign_frame_handed_back(e, &foreign);
        assert_eq!(c.virt_addr(), KVA);
        drop(c);
        assert_eq!(foreign.reference_count(), 1);
        assert_eq!(query(&pt, KVA).1, None);
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn translate_reads_only_the_tables_own_half() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        map_untracked(&pt, KVA, UPA, 1, rw());
        map_untracked(&user, SZ_1G, UPA, 1, rw());
        assert_eq!(pt.translate(KVA), Some((UPA, rw())));
        assert_eq!(user.translate(SZ_1G), Some((UPA, rw())));
        // The shared kernel entries belong to the kernel table, which may be
        // dropped first: the user table never follows them.
        assert_eq!(user.translate(KVA), None);
        // Non-canonical addresses select no entry of either table.
        assert_eq!(pt.translate(0x0000_c000_0000_0000), None);
        assert_eq!(pt.translate(0xffff_7fff_ffff_f000), None);
        assert_eq!(user.translate(0x8000_0000_0000), None);
        // The address-only walk reads the same entries.
        assert_eq!(pt.translate_addr(KVA + 9), Some(UPA + 9));
        assert_eq!(user.translate_addr(SZ_1G + 9), Some(UPA + 9));
        assert_eq!(user.translate_addr(KVA), None);
        assert_eq!(pt.translate_addr(0x0000_c000_0000_0000), None);
        assert_eq!(pt.translate_addr(0xffff_7fff_ffff_f000), None);
        assert_eq!(user.translate_addr(0x8000_0000_0000), None);
        drop(pt);
        assert_eq!(user.translate(KVA), None);
        assert_eq!(user.translate_addr(KVA), None);
        assert_eq!(user.translate(SZ_1G), Some((UPA, rw())));
    }

    /// Hooks counting the read-side sections begun and ended, and those
    /// open.
    #[derive(Debug, Default)]
    struct Sections {
        begun: AtomicUsize,
        ended: AtomicUsize,
        open: AtomicUsize,
    }

    // SAFETY: the hooks only count: no unwinding, no RAM.
    unsafe impl Hooks for Arc<Sections> {
        fn on_read_lock(&self) {
            self.begun.fetch_add(1, SeqCst);
            self.open.fetch_add(1, SeqCst);
        }

        fn on_read_unlock(&self) {
            self.open.fetch_sub(1, SeqCst);
            self.ended.fetch_add(1, SeqCst);
        }
    }

    /// `check_inv` finds each child under its parent's lock and reads it
    /// after letting the lock go; a node another thread detaches meanwhile
    /// must not be freed before the walk is done with it. So the walk of
    /// the whole tree is one read-side section (begun once, ended once),
    /// not a section per node nor none.
    #[test]
    fn check_inv_walks_the_whole_tree_inside_one_read_side_section() {
        let counts = Arc::new(Sections::default());
        // SAFETY: neither the hooks nor the test touch the machine.
        let (_, space) = unsafe { hooked_space(kvirt_sim::MachineConfig::new(16 << 20), |_| counts.clone()) };
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 1, rw());
        let nodes_before = pt.check_inv().expect("intact");
        assert!(nodes_before > 256 + 2, "the walk goes below the root: {nodes_before} nodes");

        let (begun, ended) = (counts.begun.load(SeqCst), counts.ended.load(SeqCst));
        assert_eq!(pt.check_inv(), Ok(nodes_before));
        assert_eq!(counts.begun.load(SeqCst) - begun, 1, "one section for the whole walk");
        assert_eq!(counts.ended.load(SeqCst) - ended, 1, "and it ends when the walk does");
        assert_eq!(counts.open.load(SeqCst), 0);
        unmap_all(&pt, KVA..KVA + SZ_4K);
    }
}

mod largest_pages {
    use kvirt::arch::x86_64::X86_64;
    use kvirt::page_table::largest_pages;

    use super::*;

    fn split(va: Vaddr, pa: Paddr, len: usize) -> Vec<(Paddr, PagingLevel)> {
        largest_pages::<X86_64>(va, pa, len).collect()
    }

    #[test]
    fn takes_the_largest_aligned_page_at_each_step() {
        let pieces = split(KVA + SZ_2M - SZ_4K, UPA + SZ_2M - SZ_4K, SZ_4K + SZ_2M + SZ_4K);
        assert_eq!(pieces, vec![(UPA + SZ_2M - SZ_4K, 1), (UPA + SZ_2M, 2), (UPA + 2 * SZ_2M, 1)]);
        let pieces = split(KVA, UPA, SZ_1G + SZ_2M);
        assert_eq!(pieces, vec![(UPA, 3), (UPA + SZ_1G, 2)]);
    }

    #[test]
    fn differently_aligned_addresses_get_small_pages() {
        // `va` is 2 MiB aligned but `pa` only 4 KiB: no huge page fits.
        let pieces = split(KVA, UPA + SZ_4K, 2 * SZ_2M);
        assert_eq!(pieces.len(), 1024);
        assert!(pieces.iter().enumerate().all(|(i, &(pa, l))| l == 1 && pa == UPA + SZ_4K + i * SZ_4K));
    }

    #[test]
    fn the_pieces_map_the_whole_length_and_stay_aligned() {
        for (va, pa, len) in [
            (KVA + 3 * SZ_4K, UPA + 3 * SZ_4K, 5 * SZ_1G),
            (KVA, UPA, SZ_4K),
            (KVA + SZ_2M, UPA + SZ_1G + SZ_2M, SZ_1G),
        ] {
            let mut at = (va, pa);
            for (p, level) in split(va, pa, len) {
                let size = level_size(level);
                assert_eq!(p, at.1);
                assert!(at.0 % size == 0 && p % size == 0, "{level} at {:#x} -> {p:#x}", at.0);
                at = (at.0 + size, at.1 + size);
            }
            assert_eq!(at, (va + len, pa + len));
        }
    }

    #[test]
    fn an_empty_length_gives_no_pages() {
        assert!(split(KVA, UPA, 0).is_empty());
    }

    #[test]
    #[should_panic(expected = "must be page aligned")]
    fn misaligned_input_panics() {
        let _ = split(KVA, UPA + 8, SZ_4K);
    }

    #[test]
    fn mapping_the_pieces_yields_the_expected_translation() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let (va, pa, len) = (KVA + SZ_1G - SZ_2M - SZ_4K, UPA + SZ_1G - SZ_2M - SZ_4K, SZ_1G + 2 * SZ_2M);
        {
            let mut c = pt.cursor_mut(&(va..va + len)).unwrap();
            for (p, level) in split(va, pa, len) {
                c.map(MappedItem::Untracked(p, level, rw()));
            }
            assert_eq!(c.virt_addr(), va + len);
        }
        for off in (0..len).step_by(SZ_2M / 2) {
            assert_eq!(pt.translate(va + off), Some((pa + off, rw())));
        }
        let levels: Vec<PagingLevel> = leaves(&pt, va..va + len).iter().map(|(_, l)| l.level).collect();
        assert_eq!(levels, [1, 2, 3].into_iter().chain(std::iter::repeat_n(1, 511)).collect::<Vec<_>>());
    }
}

mod more_cursor_behaviour {
    use super::*;

    #[test]
    fn read_only_cursors_allocate_no_nodes() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        let nodes = pt_pages(&space);
        let mut c = pt.cursor(&(KVA + SZ_4K..KVA + 2 * SZ_4K)).unwrap();
        assert!(c.query().unwrap().1.is_none());
        assert_eq!(c.find_next(SZ_4K), None);
        drop(c);
        let mut c = user.cursor(&(SZ_1G..SZ_1G + SZ_4K)).unwrap();
        assert_eq!(c.query().unwrap().0, 0..0x80_0000_0000, "an absent top-level slot");
        drop(c);
        // Mutable cursors that map nothing allocate nothing either.
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_4K)).unwrap();
        assert!(c.take_next(SZ_4K).is_none());
        drop(c);
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn a_range_across_two_top_level_entries_maps_and_unmaps_on_both_sides() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let baseline = pt_pages(&space);
        let edge = KVA + 512 * SZ_1G;
        let range = edge - 2 * SZ_4K..edge + 2 * SZ_4K;
        {
            let mut c = pt.cursor_mut(&range).unwrap();
            for i in 0..4 {
                c.map(MappedItem::Untracked(UPA + i * SZ_4K, 1, rw()));
            }
        }
        for i in 0..4 {
            assert_eq!(pt.translate(range.start + i * SZ_4K), Some((UPA + i * SZ_4K, rw())));
        }
        let found: Vec<Vaddr> = leaves(&pt, range.clone()).into_iter().map(|(va, _)| va).collect();
        assert_eq!(found, (0..4).map(|i| range.start + i * SZ_4K).collect::<Vec<_>>());
        assert_eq!(unmap_all(&pt, range), 4);
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    fn user_table_takes_a_whole_top_level_sub_tree() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = pt.create_user_page_table().unwrap();
        let baseline = pt_pages(&space);
        let top = 512 * SZ_1G;
        map_untracked(&user, top + 3 * SZ_4K, UPA, 1, rw());
        map_untracked(&user, top + 7 * SZ_1G, UPA, 3, rw());
        map_untracked(&user, 2 * top + SZ_2M, UPA, 2, rw());
        let mut c = user.cursor_mut(&(0..0x8000_0000_0000)).unwrap();
        match c.take_next(0x8000_0000_0000).unwrap() {
            PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
                assert_eq!((va, len, num_frames), (top, top, 2), "user L3 nodes can go");
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        match c.take_next(0x8000_0000_0000 - c.virt_addr()).unwrap() {
            PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
                assert_eq!((va, len, num_frames), (2 * top, top, 1));
            }
            other => panic!("unexpected fragment {other:?}"),
        }
        assert!(c.take_next(0x8000_0000_0000 - c.virt_addr()).is_none());
        drop(c);
        assert_eq!(pt_pages(&space), baseline);
    }

    #[test]
    fn protect_keeps_tracked_frames_tracked_and_counted() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let f = frame(&space);
        map_tracked(&pt, KVA, f.clone(), rw());
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_4K)).unwrap();
        assert!(c.protect_next(SZ_4K, &mut |p: &mut PageProperty| p.flags = PageFlags::R).is_some());
        drop(c);
        assert_eq!(query(&pt, KVA).1, Some(Leaf { pa: f.paddr(), level: 1, prop: ro(), tracked: true }));
        assert_eq!(f.reference_count(), 2);
        assert_eq!(unmap_all(&pt, KVA..KVA + SZ_4K), 1);
        assert_eq!(f.reference_count(), 1);
    }

    #[test]
    fn fragments_report_their_virtual_range() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA + SZ_1G, UPA, 3, rw());
        map_untracked(&pt, KVA + 2 * SZ_1G, UPA, 2, rw());
        map_untracked(&pt, KVA + 3 * SZ_1G + SZ_4K, UPA, 1, rw());
        let range = KVA + SZ_1G..KVA + 4 * SZ_1G;
        let mut c = pt.cursor_mut(&range).unwrap();
        let mut ranges = Vec::new();
        while let Some(frag) = c.take_next(range.end - c.virt_addr()) {
            ranges.push(frag.va_range());
        }
        assert_eq!(
            ranges,
            [
                KVA + SZ_1G..KVA + 2 * SZ_1G,
                KVA + 2 * SZ_1G..KVA + 3 * SZ_1G,
                KVA + 3 * SZ_1G..KVA + 4 * SZ_1G,
            ]
        );
    }

    #[test]
    fn running_out_of_memory_for_nodes_is_reported_and_leaks_nothing() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        // Take every free page.
        let mut hoard = take_every_free_frame(&space);
        assert_eq!(space.phys_stats().free_pages, 0);
        let va = KVA + 5 * SZ_1G + 3 * SZ_4K;
        let mut c = pt.cursor_mut(&(va..va + SZ_4K)).unwrap();
        let e = c.try_map(MappedItem::Untracked(UPA, 1, rw())).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::OutOfMemory);
        assert!(matches!(e.item, MappedItem::Untracked(UPA, 1, _)));
        drop(c);
        assert_eq!(pt_pages(&space), nodes);
        // With one free page the L2 node is made, the L1 node is not: the
        // L2 node is given back.
        drop(hoard.pop());
        let mut c = pt.cursor_mut(&(va..va + SZ_4K)).unwrap();
        let e = c.try_map(MappedItem::Untracked(UPA, 1, rw())).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::OutOfMemory);
        assert_eq!(c.virt_addr(), va);
        drop(c);
        assert_eq!(pt_pages(&space), nodes);
        assert_eq!(space.phys_stats().free_pages, 1);
        // With two it works.
        drop(hoard.pop());
        map_untracked(&pt, va, UPA, 1, rw());
        assert_eq!(pt.translate(va), Some((UPA, rw())));
        assert_eq!(space.phys_stats().free_pages, 0);
        assert_eq!(unmap_all(&pt, va..va + SZ_4K), 1);
        assert_eq!(pt_pages(&space), nodes);
        assert_eq!(space.phys_stats().free_pages, 2);
    }

    #[test]
    fn splitting_a_huge_page_without_memory_changes_nothing() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 3, rw());
        let nodes = pt_pages(&space);
        let mut hoard = take_every_free_frame(&space);
        // A 4 KiB hole in a 1 GiB page needs two new nodes; with none, and
        // with only one, both operations fail and leave the table as it was.
        let va = KVA + SZ_2M + 3 * SZ_4K;
        for spare in 0..2 {
            let mut c = pt.cursor_mut(&(va..va + SZ_4K)).unwrap();
            assert_eq!(c.try_protect_next(SZ_4K, &mut |p| p.flags = PageFlags::R), Err(PageTableAllocError));
            assert!(c.try_take_next(SZ_4K).is_err(), "take_next with {spare} spare pages");
            assert_eq!(c.virt_addr(), va);
            drop(c);
            assert_eq!(pt_pages(&space), nodes, "{spare} spare pages");
            assert_eq!(pt.translate(va), Some((UPA + SZ_2M + 3 * SZ_4K, rw())));
            assert_eq!(space.phys_stats().free_pages, spare);
            drop(hoard.pop());
        }
        let mut c = pt.cursor_mut(&(va..va + SZ_4K)).unwrap();
        assert_eq!(c.try_protect_next(SZ_4K, &mut |p| p.flags = PageFlags::R), Ok(Some(va..va + SZ_4K)));
        drop(c);
        assert_eq!(pt_pages(&space), nodes + 2);
        assert_eq!(pt.translate(va).map(|(_, p)| p.flags), Some(PageFlags::R));
        assert_eq!(pt.translate(va + SZ_4K), Some((UPA + SZ_2M + 4 * SZ_4K, rw())));
    }

    #[test]
    fn one_cursor_jumping_around_sees_every_level() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 3, rw());
        map_untracked(&pt, KVA + SZ_1G + SZ_2M, UPA, 2, ro());
        map_untracked(&pt, KVA + SZ_1G + 2 * SZ_2M + SZ_4K, UPA + SZ_4K, 1, rw());
        let range = KVA..KVA + 2 * SZ_1G;
        let mut c = pt.cursor(&range).unwrap();
        let probes = [
            (KVA + SZ_1G + 2 * SZ_2M + SZ_4K, KVA + SZ_1G + 2 * SZ_2M + SZ_4K, SZ_4K, Some(UPA + SZ_4K)),
            (KVA + 5 * SZ_4K, KVA, SZ_1G, Some(UPA)),
            (KVA + SZ_1G + 2 * SZ_2M, KVA + SZ_1G + 2 * SZ_2M, SZ_4K, None),
            (KVA + SZ_1G + SZ_2M + SZ_4K, KVA + SZ_1G + SZ_2M, SZ_2M, Some(UPA)),
            (KVA + SZ_1G + 7 * SZ_2M, KVA + SZ_1G + 7 * SZ_2M, SZ_2M, None),
            (KVA + SZ_1G - SZ_4K, KVA, SZ_1G, Some(UPA)),
            (KVA + SZ_1G + 2 * SZ_2M + 2 * SZ_4K, KVA + SZ_1G + 2 * SZ_2M + 2 * SZ_4K, SZ_4K, None),
        ];
        for _ in 0..2 {
            for &(va, start, len, pa) in &probes {
                c.jump(va).unwrap();
                let (r, item) = c.query().unwrap();
                assert_eq!(r, start..start + len, "query at {va:#x}");
                assert_eq!(item.map(|i| i.paddr()), pa, "query at {va:#x}");
            }
        }
    }
}

/// A caller-supplied callback (the frame iterator of `try_map_frames`, the
/// `op` of `protect_next`) that panics part way leaves the table
/// consistent: `check_inv` passes, what was done before the panic stays
/// done and can be undone, and nothing leaks.
mod panicking_callbacks {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;

    /// Ending a read-side section must not unwind (the `Platform`
    /// contract), but a callback anyone may queue through
    /// `platform().call_rcu` can panic. `CountingRcu` runs queued callbacks
    /// as the last section ends; a panic there aborts the process rather
    /// than unwind out of kvirt's walk.
    #[cfg(not(miri))]
    #[test]
    fn an_rcu_callback_panicking_as_a_section_ends_aborts_on_counting_rcu() {
        support::abort_in_child::assert_aborts_in_child(
            concat!(module_path!(), "::an_rcu_callback_panicking_as_a_section_ends_aborts_on_counting_rcu"),
            "kvirt: an RCU callback panicked while CountingRcu::read_unlock ran it; aborting",
            || {
                let machine = kvirt_sim::Machine::new(kvirt_sim::MachineConfig::new(16 << 20));
                let space = counting_rcu::space_on(std::sync::Arc::new(machine));
                let pt = kernel_pt(&space);
                let section = pt.read_section();
                space.platform().call_rcu(Box::new(|| panic!("a caller's callback panics")));
                assert_eq!(section.translate(KVA), None);
                drop(section);
            },
        );
    }

    /// Pages in use once deferred reclamation has run.
    fn used_pages(space: &KernelSpace) -> usize {
        space.synchronize();
        space.phys_stats().used_pages
    }

    #[test]
    fn a_frame_iterator_panicking_mid_fill_leaves_the_child_count_right() {
        // Two leaf nodes' worth: a panic at the first frame, inside the
        // fill of the first node, at the node boundary (between fills),
        // just after the second node's first frame, and inside its fill.
        for panic_at in [0, 1, 5, 511, 512, 513, 700] {
            let space = new_space();
            let used = used_pages(&space);
            let pt = kernel_pt(&space);
            let range = KVA..KVA + 2 * SZ_2M;
            let frames: Vec<Frame<()>> =
                (0..1024).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap()).collect();
            let mut pas: Vec<Paddr> = frames.iter().take(panic_at).map(Frame::paddr).collect();
            let mut cursor = pt.cursor_mut(&range).unwrap();
            let mut handed_over = 0;
            let result = catch_unwind(AssertUnwindSafe(|| {
                let frames = frames.into_iter().inspect(|_| {
                    assert_ne!(handed_over, panic_at, "the frame iterator panics");
                    handed_over += 1;
                });
                cursor.try_map_frames(frames, rw())
            }));
            assert!(result.is_err(), "the iterator's panic reaches the caller (panic at {panic_at})");
            // The cursor goes on: two more frames right after those mapped
            // (in the node the fill stopped in, for most cases).
            let more = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
            pas.extend([more.paddr(), more.paddr() + SZ_4K]);
            cursor.jump(KVA + panic_at * SZ_4K).unwrap();
            cursor.try_map_frames(more, rw()).unwrap();
            drop(cursor);
            assert!(pt.check_inv().is_ok(), "panic at {panic_at}: {:?}", pt.check_inv());
            // The frames handed over before the panic are mapped in order;
            // the rest went with the iterator.
            let expected: Vec<_> = pas
                .iter()
                .enumerate()
                .map(|(i, &pa)| (KVA + i * SZ_4K, Leaf { pa, level: 1, prop: rw(), tracked: true }))
                .collect();
            assert_eq!(leaves(&pt, range.clone()), expected, "panic at {panic_at}");
            assert_eq!(unmap_all(&pt, range), panic_at + 2, "panic at {panic_at}");
            assert!(pt.check_inv().is_ok(), "after the unmap, panic at {panic_at}: {:?}", pt.check_inv());
            drop(pt);
            assert_eq!(used_pages(&space), used, "nothing leaked (panic at {panic_at})");
        }
    }

    #[test]
    fn a_protect_op_panicking_leaves_a_tracked_page_as_it_was() {
        let space = new_space();
        let used = used_pages(&space);
        let pt = kernel_pt(&space);
        let f = frame(&space);
        map_tracked(&pt, KVA, f.clone(), rw());
        let mut c = pt.cursor_mut(&(KVA..KVA + SZ_4K)).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            c.protect_next(SZ_4K, &mut |_: &mut PageProperty| panic!("the protect op panics"))
        }));
        assert!(result.is_err());
        drop(c);
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
        assert_eq!(query(&pt, KVA).1, Some(Leaf { pa: f.paddr(), level: 1, prop: rw(), tracked: true }));
        assert_eq!(f.reference_count(), 2, "the entry still holds its reference");
        assert_eq!(unmap_all(&pt, KVA..KVA + SZ_4K), 1);
        assert_eq!(f.reference_count(), 1);
        drop((f, pt));
        assert_eq!(used_pages(&space), used);
    }

    #[test]
    fn a_protect_op_panicking_after_a_huge_page_split_leaves_the_split_pages_consistent() {
        let space = new_space();
        let used = used_pages(&space);
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 2, rw());
        let target = KVA + 17 * SZ_4K..KVA + 19 * SZ_4K;
        let mut c = pt.cursor_mut(&target).unwrap();
        let mut calls = 0;
        let mut op = |p: &mut PageProperty| {
            calls += 1;
            assert_ne!(calls, 2, "the protect op panics on its second page");
            p.flags -= PageFlags::W;
        };
        assert_eq!(c.protect_next(2 * SZ_4K, &mut op), Some(target.start..target.start + SZ_4K));
        let result = catch_unwind(AssertUnwindSafe(|| c.protect_next(SZ_4K, &mut op)));
        assert!(result.is_err());
        drop(c);
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
        // The huge page was split; the first page was protected, the
        // second kept its property.
        let expected: Vec<_> = (0..512)
            .map(|i| {
                let prop = if i == 17 { ro() } else { rw() };
                (KVA + i * SZ_4K, Leaf { pa: UPA + i * SZ_4K, level: 1, prop, tracked: false })
            })
            .collect();
        assert_eq!(leaves(&pt, KVA..KVA + SZ_2M), expected);
        assert_eq!(unmap_all(&pt, KVA..KVA + SZ_2M), 512);
        assert!(pt.check_inv().is_ok(), "{:?}", pt.check_inv());
        drop(pt);
        assert_eq!(used_pages(&space), used);
    }
}

/// `PageTable::try_map_frame` and `try_take_page`: one page without a
/// cursor where its leaf node exists, through one otherwise, with the
/// cursor's results either way (`page_table_model.rs` checks them against
/// the model in random sequences).
mod one_page {
    use super::*;

    /// The pages a fresh leaf node is made for: its L2 and L1 nodes.
    const NEW_NODES: usize = 2;

    fn tracked_leaf(f: &Frame<dyn AnyFrameMeta>, prop: PageProperty) -> Option<Leaf> {
        Some(Leaf { pa: f.paddr(), level: 1, prop, tracked: true })
    }

    #[test]
    fn map_frame_without_a_leaf_makes_the_nodes() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let f = frame(&space);
        pt.try_map_frame(KVA, f.clone(), rw()).unwrap();
        assert_eq!(query(&pt, KVA), (KVA..KVA + SZ_4K, tracked_leaf(&f, rw())));
        assert_eq!(pt.translate_addr(KVA + 8), Some(f.paddr() + 8));
        assert_eq!(pt_pages(&space), nodes + NEW_NODES);
        assert_eq!(f.reference_count(), 2, "ours and the entry's");
    }

    #[test]
    fn map_frame_into_an_existing_leaf_makes_no_node() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_tracked(&pt, KVA, frame(&space), rw());
        let nodes = pt_pages(&space);
        let f = frame(&space);
        pt.try_map_frame(KVA + 511 * SZ_4K, f.clone(), ro()).unwrap();
        assert_eq!(query(&pt, KVA + 511 * SZ_4K), (KVA + 511 * SZ_4K..KVA + SZ_2M, tracked_leaf(&f, ro())));
        assert_eq!(pt_pages(&space), nodes);
        assert_eq!(f.reference_count(), 2);
    }

    #[test]
    fn map_frame_over_a_mapping_hands_the_frame_back() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let old = frame(&space);
        map_tracked(&pt, KVA, old.clone(), rw());
        // In a leaf node (no cursor), and over a 2 MiB page (no leaf node:
        // the cursor refuses it).
        map_untracked(&pt, KVA + SZ_2M, UPA, 2, rw());
        let nodes = pt_pages(&space);
        for va in [KVA, KVA + SZ_2M + 5 * SZ_4K] {
            let f = frame(&space);
            let e = pt.try_map_frame(va, f.clone(), ro()).unwrap_err();
            assert_eq!(e.kind, MapErrorKind::AlreadyMapped, "at {va:#x}");
            match e.item {
                MappedItem::Tracked(back, prop) => assert_eq!((back, prop), (f.clone(), ro())),
                other => panic!("{other:?} came back"),
            }
            assert_eq!(f.reference_count(), 1, "the refused frame's reference came back and went");
        }
        assert_eq!(query(&pt, KVA).1, tracked_leaf(&old, rw()));
        assert_eq!(query(&pt, KVA + SZ_2M).1, Some(Leaf { pa: UPA, level: 2, prop: rw(), tracked: false }));
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn map_frame_of_another_space_is_refused_with_or_without_a_leaf() {
        let space = new_space();
        let other = new_space();
        let pt = kernel_pt(&space);
        map_tracked(&pt, KVA, frame(&space), rw());
        let nodes = pt_pages(&space);
        for va in [KVA + SZ_4K, KVA + SZ_1G] {
            let foreign = frame(&other);
            let e = pt.try_map_frame(va, foreign.clone(), rw()).unwrap_err();
            assert_foreign_frame_handed_back(e, &foreign);
            assert_eq!(query(&pt, va).1, None, "nothing mapped at {va:#x}");
        }
        assert_eq!(pt_pages(&space), nodes, "no node left behind");
    }

    #[test]
    fn map_frame_outside_the_table_is_refused() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let f = frame(&space);
        let user_va = 0x40_0000;
        for (va, kind) in [
            (KVA + 8, MapErrorKind::Misaligned),
            (user_va, MapErrorKind::OutOfRange),
            (LAST_RANGE_END, MapErrorKind::OutOfRange),
        ] {
            let e = pt.try_map_frame(va, f.clone(), rw()).unwrap_err();
            assert_eq!(e.kind, kind, "at {va:#x}");
            assert!(matches!(&e.item, MappedItem::Tracked(back, _) if *back == f));
        }
        assert_eq!(f.reference_count(), 1);
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn take_page_keeps_a_leaf_that_still_maps_something() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let (a, b) = (frame(&space), frame(&space));
        pt.try_map_frame(KVA, a.clone(), rw()).unwrap();
        pt.try_map_frame(KVA + SZ_4K, b.clone(), ro()).unwrap();
        let nodes = pt_pages(&space);
        let frag = pt.try_take_page(KVA + SZ_4K).unwrap().expect("a page was mapped");
        assert_eq!(frag.va_range(), KVA + SZ_4K..KVA + 2 * SZ_4K);
        match &frag {
            PageTableFrag::Mapped { va, item: MappedItem::Tracked(f, prop) } => {
                assert_eq!((*va, f, *prop), (KVA + SZ_4K, &b, ro()));
            }
            other => panic!("took {other:?}"),
        }
        assert_eq!(b.reference_count(), 2, "the fragment holds the entry's reference");
        drop(frag);
        assert_eq!(b.reference_count(), 1);
        assert_eq!(query(&pt, KVA + SZ_4K).1, None);
        assert_eq!(query(&pt, KVA).1, tracked_leaf(&a, rw()));
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn take_page_of_a_leafs_last_page_reclaims_the_leaf() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let f = frame(&space);
        pt.try_map_frame(KVA + 7 * SZ_4K, f.clone(), rw()).unwrap();
        let frag = pt.try_take_page(KVA + 7 * SZ_4K).unwrap();
        assert!(matches!(frag, Some(PageTableFrag::Mapped { va, .. }) if va == KVA + 7 * SZ_4K));
        drop(frag);
        assert_eq!(pt_pages(&space), nodes, "the emptied L1 and L2 nodes are gone");
        assert_eq!(f.reference_count(), 1);
    }

    #[test]
    fn take_page_of_nothing_takes_nothing() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 1, rw());
        let nodes = pt_pages(&space);
        // An absent entry of a leaf node, and no leaf node at all.
        assert!(pt.try_take_page(KVA + SZ_4K).unwrap().is_none());
        assert!(pt.try_take_page(KVA + SZ_1G).unwrap().is_none());
        assert_eq!(query(&pt, KVA).1, Some(Leaf { pa: UPA, level: 1, prop: rw(), tracked: false }));
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn take_page_inside_a_huge_page_splits_it() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 2, rw());
        let frag = pt.try_take_page(KVA + 3 * SZ_4K).unwrap().expect("inside the 2 MiB page");
        match frag {
            PageTableFrag::Mapped { va, item: MappedItem::Untracked(pa, level, prop) } => {
                assert_eq!((va, pa, level, prop), (KVA + 3 * SZ_4K, UPA + 3 * SZ_4K, 1, rw()));
            }
            other => panic!("took {other:?}"),
        }
        assert_eq!(query(&pt, KVA + 3 * SZ_4K).1, None);
        assert_eq!(
            query(&pt, KVA + 4 * SZ_4K).1,
            Some(Leaf { pa: UPA + 4 * SZ_4K, level: 1, prop: rw(), tracked: false })
        );
        assert_eq!(leaves(&pt, KVA..KVA + SZ_2M).len(), 511);
    }

    #[test]
    fn a_misaligned_address_is_misaligned_even_in_the_last_page() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let f = frame(&space);
        let e = pt.try_map_frame(LAST_RANGE_END + 8, f, rw()).unwrap_err();
        assert_eq!(e.kind, MapErrorKind::Misaligned);
        assert_eq!(
            pt.try_take_page(LAST_RANGE_END + 8).unwrap_err(),
            TakePageError::Range(RangeError::Misaligned)
        );
    }

    #[test]
    fn map_frame_out_of_memory_half_way_changes_nothing() {
        let space = new_space();
        let kernel = kernel_pt(&space);
        let user = kernel.create_user_page_table().unwrap();
        let user_rw = PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback);
        let f = frame(&space);
        let nodes = pt_pages(&space);
        for (table, va, prop) in [("kernel", KVA, rw()), ("user", 0x40_0000_0000, user_rw)] {
            // One free page: the first new node is made, the next is not.
            let mut hoard = take_every_free_frame(&space);
            drop(hoard.pop());
            let e = match table {
                "kernel" => kernel.try_map_frame(va, f.clone(), prop),
                _ => user.try_map_frame(va, f.clone(), prop),
            }
            .unwrap_err();
            assert_eq!(e.kind, MapErrorKind::OutOfMemory, "{table} table");
            assert!(matches!(&e.item, MappedItem::Tracked(back, _) if *back == f));
            drop((e, hoard));
            assert_eq!(f.reference_count(), 1, "{table} table");
            assert_eq!(pt_pages(&space), nodes, "{table} table: the made node is given back");
        }
        assert!(kernel.check_inv().is_ok() && user.check_inv().is_ok());
    }

    #[test]
    fn take_page_outside_the_table_is_refused() {
        let space = new_space();
        let pt = kernel_pt(&space);
        assert_eq!(pt.try_take_page(KVA + 8).unwrap_err(), TakePageError::Range(RangeError::Misaligned));
        assert_eq!(pt.try_take_page(0x40_0000).unwrap_err(), TakePageError::Range(RangeError::OutOfBounds));
        assert_eq!(
            pt.try_take_page(LAST_RANGE_END).unwrap_err(),
            TakePageError::Range(RangeError::OutOfBounds)
        );
    }

    #[test]
    fn take_page_that_cannot_split_reports_it_and_changes_nothing() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 2, rw());
        let nodes = pt_pages(&space);
        let hoard = take_every_free_frame(&space);
        assert_eq!(pt.try_take_page(KVA + SZ_4K).unwrap_err(), TakePageError::OutOfMemory);
        assert_eq!(
            query(&pt, KVA + SZ_4K),
            (KVA..KVA + SZ_2M, Some(Leaf { pa: UPA, level: 2, prop: rw(), tracked: false }))
        );
        drop(hoard);
        assert_eq!(pt_pages(&space), nodes);
    }
}

/// `PageTable::try_take_range`: a range inside one existing leaf node
/// without a cursor, any other through one, with a cursor's `try_take_all`
/// results either way (`page_table_model.rs` checks them against the model
/// in random sequences).
mod range_without_a_cursor {
    use super::*;

    #[test]
    fn take_range_inside_a_leaf_takes_every_mapping_and_keeps_its_neighbours() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let frames: Vec<_> = (0..6).map(|_| frame(&space)).collect();
        for (i, f) in frames.iter().enumerate() {
            pt.try_map_frame(KVA + 2 * i * SZ_4K, f.clone(), rw()).unwrap();
        }
        let nodes = pt_pages(&space);
        // Pages 2, 4 and 6 of the frames mapped at 0, 2, .., 10.
        let range = KVA + SZ_4K..KVA + 7 * SZ_4K;
        let mut taken = TakenRange::new();
        pt.try_take_range(&range, &mut taken).unwrap();
        assert_eq!(taken.num_mappings(), 3);
        assert_eq!(taken.va_range(), Some(range.clone()), "the flush covers the whole range");
        for (i, f) in frames.iter().enumerate() {
            let inside = range.contains(&(KVA + 2 * i * SZ_4K));
            assert_eq!(f.reference_count(), 2, "frame {i}: ours, and the entry's or the taken one");
            assert_eq!(query(&pt, KVA + 2 * i * SZ_4K).1.is_some(), !inside, "page {}", 2 * i);
        }
        drop(taken);
        for (i, f) in frames.iter().enumerate() {
            let inside = range.contains(&(KVA + 2 * i * SZ_4K));
            assert_eq!(f.reference_count(), if inside { 1 } else { 2 }, "frame {i}");
        }
        assert_eq!(pt_pages(&space), nodes, "the leaf still maps its neighbours");
    }

    #[test]
    fn take_range_of_a_leafs_last_pages_reclaims_the_leaf() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let f = frame(&space);
        pt.try_map_frame(KVA + 3 * SZ_4K, f.clone(), rw()).unwrap();
        let mut taken = TakenRange::new();
        pt.try_take_range(&(KVA..KVA + 8 * SZ_4K), &mut taken).unwrap();
        assert_eq!(taken.num_mappings(), 1);
        drop(taken);
        assert_eq!(pt_pages(&space), nodes, "the emptied L1 and L2 nodes are gone");
        assert_eq!(f.reference_count(), 1);
    }

    #[test]
    fn take_range_of_nothing_takes_nothing() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 1, rw());
        let nodes = pt_pages(&space);
        // Absent entries of a leaf node, no leaf node at all, and several.
        for range in
            [KVA + SZ_4K..KVA + 9 * SZ_4K, KVA + SZ_1G..KVA + SZ_1G + SZ_4K, KVA + SZ_2M..KVA + SZ_1G]
        {
            let mut taken = TakenRange::new();
            pt.try_take_range(&range, &mut taken).unwrap();
            assert!(taken.is_empty() && taken.va_range().is_none(), "{range:#x?}");
        }
        assert_eq!(query(&pt, KVA).1, Some(Leaf { pa: UPA, level: 1, prop: rw(), tracked: false }));
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn take_range_across_leaves_and_huge_pages_goes_through_a_cursor() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let nodes = pt_pages(&space);
        let f = frame(&space);
        pt.try_map_frame(KVA + SZ_2M - SZ_4K, f.clone(), rw()).unwrap();
        map_untracked(&pt, KVA + SZ_2M, UPA, 2, rw());
        // The last page of one leaf node, and the first 3 pages of a 2 MiB
        // page (split).
        let mut taken = TakenRange::new();
        pt.try_take_range(&(KVA + SZ_2M - SZ_4K..KVA + SZ_2M + 3 * SZ_4K), &mut taken).unwrap();
        assert_eq!(taken.num_mappings(), 4);
        drop(taken);
        assert_eq!(f.reference_count(), 1);
        assert_eq!(leaves(&pt, KVA..KVA + SZ_1G).len(), 512 - 3, "the rest of the split page");
        assert_eq!(
            query(&pt, KVA + SZ_2M + 3 * SZ_4K).1,
            Some(Leaf { pa: UPA + 3 * SZ_4K, level: 1, prop: rw(), tracked: false })
        );
        assert_eq!(pt_pages(&space), nodes + 2, "the split page's leaf node and its parent");
    }

    #[test]
    fn take_range_outside_the_table_is_refused_and_changes_nothing() {
        let space = new_space();
        let pt = kernel_pt(&space);
        map_untracked(&pt, KVA, UPA, 1, rw());
        let nodes = pt_pages(&space);
        let user_va = 0x40_0000;
        for (range, e) in [
            (KVA..KVA, RangeError::Empty),
            (KVA + 8..KVA + SZ_4K, RangeError::Misaligned),
            (KVA..KVA + 8, RangeError::Misaligned),
            (user_va..user_va + SZ_4K, RangeError::OutOfBounds),
            (user_va..KVA + SZ_4K, RangeError::OutOfBounds),
        ] {
            let mut taken = TakenRange::new();
            assert_eq!(pt.try_take_range(&range, &mut taken), Err(TakeRangeError::Range(e)), "{range:#x?}");
            assert!(taken.is_empty());
        }
        #[allow(clippy::reversed_empty_ranges, reason = "the reversed range is the input under test")]
        let reversed = KVA + SZ_4K..KVA;
        assert_eq!(
            pt.try_take_range(&reversed, &mut TakenRange::new()),
            Err(TakeRangeError::Range(RangeError::Reversed))
        );
        assert_eq!(query(&pt, KVA).1, Some(Leaf { pa: UPA, level: 1, prop: rw(), tracked: false }));
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn take_range_adds_to_what_taken_holds() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let (f, g) = (frame(&space), frame(&space));
        pt.try_map_frame(KVA + SZ_4K, f.clone(), rw()).unwrap();
        pt.try_map_frame(KVA + 10 * SZ_2M + SZ_4K, g.clone(), rw()).unwrap();
        let mut taken = TakenRange::new();
        pt.try_take_range(&(KVA..KVA + 4 * SZ_4K), &mut taken).unwrap();
        let far = KVA + 10 * SZ_2M..KVA + 10 * SZ_2M + 4 * SZ_4K;
        pt.try_take_range(&far, &mut taken).unwrap();
        assert_eq!(taken.num_mappings(), 2);
        assert_eq!(taken.va_range(), Some(KVA..far.end), "the first call's range and the second's");
        // A refused range leaves it as it was.
        assert_eq!(pt.try_take_range(&(KVA..KVA), &mut taken), Err(TakeRangeError::Range(RangeError::Empty)));
        assert_eq!((taken.num_mappings(), taken.va_range()), (2, Some(KVA..far.end)));
        drop(taken);
        assert_eq!((f.reference_count(), g.reference_count()), (1, 1));
    }

    #[test]
    fn take_range_in_the_last_leaf_and_on_a_user_table() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let user = space.create_user_page_table().unwrap();
        let nodes = pt_pages(&space);
        // The highest range a table can hold: the last leaf node less its
        // last page, taken in place, the leaf and its parents reclaimed.
        let last_leaf = LAST_RANGE_END - (SZ_2M - SZ_4K);
        let f = frame(&space);
        pt.try_map_frame(LAST_RANGE_END - SZ_4K, f.clone(), rw()).unwrap();
        let mut taken = TakenRange::new();
        pt.try_take_range(&(last_leaf..LAST_RANGE_END), &mut taken).unwrap();
        assert_eq!((taken.num_mappings(), taken.va_range()), (1, Some(last_leaf..LAST_RANGE_END)));
        drop(taken);
        assert_eq!(pt_pages(&space), nodes);
        // A user table: its half only; a range inside one of its leaf nodes
        // taken in place, the nodes reclaimed at once.
        let user_rw = PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback);
        user.try_map_frame(0x40_1000, f.clone(), user_rw).unwrap();
        let top = vaddr_bounds::<UserPtConfig>().1 + 1;
        for range in [KVA..KVA + SZ_4K, top - SZ_4K..top + SZ_4K] {
            assert_eq!(
                user.try_take_range(&range, &mut TakenRange::new()),
                Err(TakeRangeError::Range(RangeError::OutOfBounds)),
                "{range:#x?}"
            );
        }
        let mut taken = TakenRange::new();
        user.try_take_range(&(0x40_0000..0x40_3000), &mut taken).unwrap();
        assert_eq!((taken.num_mappings(), taken.va_range()), (1, Some(0x40_0000..0x40_3000)));
        drop(taken);
        assert_eq!(f.reference_count(), 1);
        assert_eq!(pt_pages(&space), nodes);
    }

    #[test]
    fn take_range_that_cannot_split_a_huge_page_stops_there() {
        let space = new_space();
        let pt = kernel_pt(&space);
        let f = frame(&space);
        pt.try_map_frame(KVA, f.clone(), rw()).unwrap();
        map_untracked(&pt, KVA + SZ_2M, UPA, 2, rw());
        let nodes = pt_pages(&space);
        let hoard = take_every_free_frame(&space);
        let huge = Some(Leaf { pa: UPA, level: 2, prop: rw(), tracked: false });
        // Cut at its start: nothing taken.
        let mut taken = TakenRange::new();
        let cut_start = KVA + SZ_2M + SZ_4K..KVA + 2 * SZ_2M;
        assert_eq!(pt.try_take_range(&cut_start, &mut taken), Err(TakeRangeError::OutOfMemory));
        assert!(taken.is_empty());
        // Cut at its end: what lies before it taken, the huge page left.
        let cut_end = KVA..KVA + SZ_2M + SZ_4K;
        assert_eq!(pt.try_take_range(&cut_end, &mut taken), Err(TakeRangeError::OutOfMemory));
        assert_eq!(taken.num_mappings(), 1, "the page before the huge page");
        assert_eq!(query(&pt, KVA).1, None);
        assert_eq!(query(&pt, KVA + SZ_2M), (KVA + SZ_2M..KVA + 2 * SZ_2M, huge));
        // The leaf node before the huge page was taken whole: its frames
        // go back after a grace period.
        drop((taken, hoard));
        space.synchronize();
        assert_eq!(f.reference_count(), 1);
        assert_eq!(pt_pages(&space), nodes - 1, "no node made; the leaf node taken whole is freed");
    }
}
