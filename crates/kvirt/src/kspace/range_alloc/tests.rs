//! Unit tests of the VMALLOC range allocator: behaviour by topic, the logarithmic bounds, and proptests against a model. They
//! outgrew the module and live beside it.

// Slices of one address range are meant: the free blocks of a test setup.
#![allow(clippy::single_range_in_vec_init)]
use super::*;
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

const G: usize = 4096;
const MIB2: usize = 2 << 20;
const GIB: usize = 1 << 30;
const VMALLOC: Range<usize> = 0xffff_c000_0000_0000..0xffff_e000_0000_0000;
const TIB32: usize = 32 << 40;

/// Page `n` of an allocator managing `0..` pages.
const fn p(n: usize) -> usize {
    n * G
}

/// An allocator over `range` in which exactly `free` is free.
fn with_free(range: Range<usize>, free: &[Range<usize>]) -> RangeAllocator {
    let mut a = RangeAllocator::new(range.clone(), G);
    assert_eq!(a.alloc(range.end - range.start, G), Ok(range));
    for r in free {
        a.free(r.clone()).unwrap();
    }
    assert!(a.inv());
    a
}

fn snapshot(a: &RangeAllocator) -> (RangeAllocStats, Vec<Range<usize>>) {
    (a.stats(), a.free_ranges().collect())
}

/// Runs `op`, expects `err`, and checks that nothing changed.
fn rejects<T: fmt::Debug + PartialEq>(
    a: &mut RangeAllocator,
    err: RangeAllocError,
    op: impl FnOnce(&mut RangeAllocator) -> Result<T, RangeAllocError>,
) {
    let before = a.clone();
    assert_eq!(op(a), Err(err));
    assert_eq!(snapshot(a), snapshot(&before));
    assert!(a.inv());
}

#[test]
fn new_allocator_has_one_free_block_covering_the_range() {
    let a = RangeAllocator::new(VMALLOC, G);
    assert!(a.inv());
    assert_eq!(a.managed_range(), VMALLOC);
    assert_eq!(a.granule(), G);
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![VMALLOC]);
    assert_eq!(
        a.stats(),
        RangeAllocStats { total_bytes: TIB32, free_bytes: TIB32, largest_free: TIB32, fragments: 1 }
    );
}

#[test]
#[should_panic(expected = "is empty or reversed")]
fn new_panics_on_empty_range() {
    let _ = RangeAllocator::new(p(4)..p(4), G);
}

#[test]
#[should_panic(expected = "is not aligned to the granule")]
fn new_panics_on_misaligned_range() {
    let _ = RangeAllocator::new(p(1)..p(4) + 1, G);
}

#[test]
#[should_panic(expected = "is not a power of two")]
fn new_panics_on_non_power_of_two_granule() {
    let _ = RangeAllocator::new(0..3 * 4096, 3000);
}

#[test]
fn alloc_carves_from_the_low_end() {
    let mut a = RangeAllocator::new(p(16)..p(32), G);
    assert_eq!(a.alloc(p(2), G), Ok(p(16)..p(18)));
    assert_eq!(a.alloc(p(1), G), Ok(p(18)..p(19)));
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(19)..p(32)]);
    assert!(a.inv());
}

#[test]
fn alloc_then_free_restores_the_whole_range() {
    let mut a = RangeAllocator::new(p(0)..p(64), G);
    let r1 = a.alloc(p(3), G).unwrap();
    let r2 = a.alloc(p(5), p(4)).unwrap();
    let r3 = a.alloc(p(1), G).unwrap();
    assert!(a.inv());
    for r in [r2, r1, r3] {
        assert!(!a.is_free(r.clone()));
        a.free(r.clone()).unwrap();
        assert!(a.is_free(r));
        assert!(a.inv());
    }
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(0)..p(64)]);
    assert_eq!(a.stats().fragments, 1);
}

#[test]
fn alloc_picks_the_smallest_block_that_fits() {
    let mut a = with_free(p(0)..p(64), &[p(0)..p(2), p(4)..p(5), p(8)..p(16)]);
    assert_eq!(a.alloc(p(1), G), Ok(p(4)..p(5)));
    assert_eq!(a.alloc(p(2), G), Ok(p(0)..p(2)));
    assert_eq!(a.alloc(p(3), G), Ok(p(8)..p(11)));
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(11)..p(16)]);
    assert!(a.inv());
}

#[test]
fn aligned_alloc_skips_unaligned_prefix() {
    let mut a = RangeAllocator::new(p(1)..p(256), G);
    assert_eq!(a.alloc(p(1), p(4)), Ok(p(4)..p(5)));
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(1)..p(4), p(5)..p(256)]);
    // The skipped prefix is still usable.
    assert_eq!(a.alloc(p(3), G), Ok(p(1)..p(4)));
    assert!(a.inv());
}

#[test]
fn aligned_alloc_uses_a_small_block_whose_aligned_part_fits() {
    // 1..3 is misaligned for 2 pages but its aligned page 2 fits.
    let mut a = with_free(p(0)..p(64), &[p(1)..p(3), p(16)..p(32)]);
    assert_eq!(a.alloc(p(1), p(2)), Ok(p(2)..p(3)));
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(1)..p(2), p(16)..p(32)]);
    assert!(a.inv());
}

#[test]
fn aligned_alloc_falls_back_to_the_smallest_block_with_alignment_slack() {
    // Many odd single pages, none 2-page aligned, then 20..24 and 32..48.
    let mut free: Vec<Range<usize>> =
        (0..FAST_PATH_CANDIDATES + 2).map(|i| p(2 * i + 1)..p(2 * i + 2)).collect();
    free.push(p(20)..p(24));
    free.push(p(32)..p(48));
    let mut a = with_free(p(0)..p(64), &free);
    assert_eq!(a.alloc(p(1), p(2)), Ok(p(20)..p(21)));
    assert_eq!(a.alloc(p(4), p(4)), Ok(p(32)..p(36)));
    assert!(a.inv());
}

#[test]
fn aligned_alloc_finds_a_fit_beyond_the_fast_path_candidates() {
    // More misaligned single pages than the fast path checks, a
    // misaligned 2-page block, and one 3-page block whose page 28 is
    // 4-page aligned; nothing is long enough for any alignment offset.
    let mut free: Vec<Range<usize>> =
        (0..FAST_PATH_CANDIDATES + 1).map(|i| p(4 * i + 1)..p(4 * i + 2)).collect();
    free.push(p(41)..p(43));
    free.push(p(50)..p(53));
    let mut a = with_free(p(0)..p(64), &free);
    assert_eq!(a.alloc(p(1), p(4)), Ok(p(52)..p(53)));
    assert!(a.inv());
    // Now nothing fits 4-page aligned: exhausted, and nothing changes.
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(p(1), p(4)));
}

#[test]
fn huge_page_alignment_in_the_vmalloc_range() {
    let base = VMALLOC.start;
    let mut a = RangeAllocator::new(VMALLOC, G);
    assert_eq!(a.alloc(G, G), Ok(base..base + G));
    let two_mib = a.alloc(MIB2, MIB2).unwrap();
    assert_eq!(two_mib, base + MIB2..base + 2 * MIB2);
    let one_gib = a.alloc(GIB, GIB).unwrap();
    assert_eq!(one_gib, base + GIB..base + 2 * GIB);
    assert_eq!(one_gib.start % GIB, 0);
    assert_eq!(
        a.free_ranges().collect::<Vec<_>>(),
        vec![base + G..base + MIB2, base + 2 * MIB2..base + GIB, base + 2 * GIB..VMALLOC.end]
    );
    // A small request takes the smallest block, not the big tail.
    assert_eq!(a.alloc(G, G), Ok(base + G..base + 2 * G));
    // The next 1 GiB area still comes from the tail, 1 GiB aligned.
    assert_eq!(a.alloc(GIB, GIB), Ok(base + 2 * GIB..base + 3 * GIB));
    assert!(a.inv());
    for r in a.clone().free_ranges().collect::<Vec<_>>().windows(2) {
        a.free(r[0].end..r[1].start).unwrap();
    }
    a.free(base..base + 2 * G).unwrap();
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![VMALLOC]);
    // The whole 32 TiB, 1 GiB aligned.
    assert_eq!(a.alloc(TIB32, GIB), Ok(VMALLOC));
    assert_eq!(a.stats().fragments, 0);
    assert!(a.inv());
}

#[test]
fn exhaustion_is_reported_and_changes_nothing() {
    let mut a = RangeAllocator::new(p(0)..p(8), G);
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(p(9), G));
    assert_eq!(a.alloc(p(5), G), Ok(p(0)..p(5)));
    // Three pages are free, but no 4-page aligned run of 2 pages.
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(p(2), p(4)));
    assert_eq!(a.alloc(p(3), G), Ok(p(5)..p(8)));
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(p(1), G));
    assert_eq!(a.stats().free_bytes, 0);
    assert_eq!(a.stats().largest_free, 0);
    assert_eq!(a.free_ranges().count(), 0);
}

#[test]
fn zero_size_is_rejected() {
    let mut a = RangeAllocator::new(VMALLOC, G);
    rejects(&mut a, RangeAllocError::ZeroSize, |a| a.alloc(0, G));
    // Zero size wins over a bad alignment.
    rejects(&mut a, RangeAllocError::ZeroSize, |a| a.alloc(0, 3));
}

#[test]
fn misaligned_size_or_alignment_is_rejected() {
    let mut a = RangeAllocator::new(VMALLOC, G);
    for (size, align) in [(G + 1, G), (G / 2, G), (G, 0), (G, G / 2), (G, 3 * G), (G, usize::MAX)] {
        rejects(&mut a, RangeAllocError::Misaligned, |a| a.alloc(size, align));
    }
}

#[test]
fn overflowing_sizes_and_alignments_are_rejected_without_panic() {
    let mut a = RangeAllocator::new(VMALLOC, G);
    rejects(&mut a, RangeAllocError::Misaligned, |a| a.alloc(usize::MAX, G));
    for align in [G, MIB2, GIB, 1 << 63] {
        rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(usize::MAX - 4095, align));
    }
    // Aligning the VMALLOC start up to 2^47 or 2^63 passes usize::MAX.
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(G, 1 << 47));
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(G, 1 << 63));
    // 2^46 divides the start, so that one fits.
    assert_eq!(a.alloc(G, 1 << 46), Ok(VMALLOC.start..VMALLOC.start + G));
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(TIB32, G));
}

#[test]
fn range_ending_at_the_top_of_the_address_space_is_handled() {
    let top = usize::MAX & !(G - 1);
    let mut a = RangeAllocator::new(top - p(16)..top, G);
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(G, 1 << 63));
    rejects(&mut a, RangeAllocError::Exhausted, |a| a.alloc(p(17), G));
    assert_eq!(a.alloc(p(15), G), Ok(top - p(16)..top - G));
    assert_eq!(a.alloc(G, G), Ok(top - G..top));
    rejects(&mut a, RangeAllocError::OutOfRange, |a| a.free(top..usize::MAX));
    a.free(top - G..top).unwrap();
    rejects(&mut a, RangeAllocError::DoubleFree, |a| a.free(top - G..top));
    a.free(top - p(16)..top - G).unwrap();
    assert_eq!(a.stats().fragments, 1);
    assert!(a.inv());
}

#[test]
fn free_merges_with_left_neighbour() {
    let mut a = with_free(p(0)..p(16), &[p(2)..p(4)]);
    a.free(p(4)..p(6)).unwrap();
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(2)..p(6)]);
    assert!(a.inv());
}

#[test]
fn free_merges_with_right_neighbour() {
    let mut a = with_free(p(0)..p(16), &[p(6)..p(8)]);
    a.free(p(4)..p(6)).unwrap();
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(4)..p(8)]);
    assert!(a.inv());
}

#[test]
fn free_merges_with_both_neighbours() {
    let mut a = with_free(p(0)..p(16), &[p(1)..p(4), p(6)..p(8), p(12)..p(13)]);
    a.free(p(4)..p(6)).unwrap();
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(1)..p(8), p(12)..p(13)]);
    assert_eq!(a.stats().fragments, 2);
    assert_eq!(a.stats().largest_free, p(7));
    assert!(a.inv());
}

#[test]
fn free_without_free_neighbours_makes_a_new_fragment() {
    let mut a = with_free(p(0)..p(16), &[p(1)..p(2)]);
    a.free(p(8)..p(10)).unwrap();
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(1)..p(2), p(8)..p(10)]);
    assert!(a.inv());
}

#[test]
fn free_of_a_sub_range_of_an_allocation_is_allowed() {
    let mut a = RangeAllocator::new(p(0)..p(16), G);
    let r = a.alloc(p(8), G).unwrap();
    a.free(p(2)..p(4)).unwrap();
    a.free(p(6)..p(8)).unwrap();
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(2)..p(4), p(6)..p(16)]);
    a.free(r.start..p(2)).unwrap();
    a.free(p(4)..p(6)).unwrap();
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(0)..p(16)]);
    assert!(a.inv());
}

#[test]
fn double_free_is_rejected_and_changes_nothing() {
    let mut a = RangeAllocator::new(p(0)..p(16), G);
    let r = a.alloc(p(4), G).unwrap();
    a.free(r.clone()).unwrap();
    rejects(&mut a, RangeAllocError::DoubleFree, |a| a.free(r.clone()));
    // Any sub-range of free space, including the whole free range.
    rejects(&mut a, RangeAllocError::DoubleFree, |a| a.free(p(1)..p(2)));
    rejects(&mut a, RangeAllocError::DoubleFree, |a| a.free(p(0)..p(16)));
    rejects(&mut a, RangeAllocError::DoubleFree, |a| a.free(p(15)..p(16)));
}

#[test]
fn overlapping_free_at_the_start_is_rejected_and_changes_nothing() {
    // 4..8 free; 2..6 starts in allocated space and runs into it.
    let mut a = with_free(p(0)..p(16), &[p(4)..p(8)]);
    rejects(&mut a, RangeAllocError::OverlappingFree, |a| a.free(p(2)..p(6)));
    rejects(&mut a, RangeAllocError::OverlappingFree, |a| a.free(p(3)..p(5)));
}

#[test]
fn overlapping_free_at_the_end_is_rejected_and_changes_nothing() {
    // 4..8 free; 6..10 starts in it and runs into allocated space.
    let mut a = with_free(p(0)..p(16), &[p(4)..p(8)]);
    rejects(&mut a, RangeAllocError::OverlappingFree, |a| a.free(p(6)..p(10)));
    rejects(&mut a, RangeAllocError::OverlappingFree, |a| a.free(p(7)..p(9)));
}

#[test]
fn overlapping_free_spanning_free_space_is_rejected_and_changes_nothing() {
    let mut a = with_free(p(0)..p(16), &[p(4)..p(6), p(10)..p(12)]);
    // Covers one free block with allocated space on both sides.
    rejects(&mut a, RangeAllocError::OverlappingFree, |a| a.free(p(3)..p(7)));
    // Covers both free blocks and the allocated space between them.
    rejects(&mut a, RangeAllocError::OverlappingFree, |a| a.free(p(4)..p(12)));
    rejects(&mut a, RangeAllocError::OverlappingFree, |a| a.free(p(0)..p(16)));
    // Allocated, free, allocated, free.
    rejects(&mut a, RangeAllocError::OverlappingFree, |a| a.free(p(5)..p(11)));
}

#[test]
fn out_of_range_free_is_rejected_and_changes_nothing() {
    let mut a = with_free(p(4)..p(16), &[]);
    for r in [
        p(0)..p(2),   // below
        p(2)..p(4),   // just below
        p(3)..p(5),   // straddles the start
        p(15)..p(17), // straddles the end
        p(16)..p(17), // just above
        p(20)..p(24), // above
        p(6)..p(6),   // empty
        0..usize::MAX,
    ] {
        rejects(&mut a, RangeAllocError::OutOfRange, |a| a.free(r.clone()));
    }
    let (high, low) = (p(8), p(6));
    for r in [high..low, p(20)..p(2)] {
        // reversed
        rejects(&mut a, RangeAllocError::OutOfRange, |a| a.free(r.clone()));
    }
}

#[test]
fn misaligned_free_is_rejected_and_changes_nothing() {
    let mut a = with_free(p(0)..p(16), &[p(8)..p(9)]);
    rejects(&mut a, RangeAllocError::Misaligned, |a| a.free(p(2) + 1..p(4)));
    rejects(&mut a, RangeAllocError::Misaligned, |a| a.free(p(2)..p(4) - 1));
    // Misalignment is reported before overlap with free space.
    rejects(&mut a, RangeAllocError::Misaligned, |a| a.free(p(8)..p(8) + 8));
}

#[test]
fn inv_detects_each_kind_of_corruption() {
    let good = with_free(p(0)..p(32), &[p(2)..p(4), p(8)..p(12), p(20)..p(32)]);
    let broken = |f: &dyn Fn(&mut RangeAllocator)| {
        let mut a = good.clone();
        f(&mut a);
        a.inv()
    };
    // A block only one index has.
    assert!(!broken(&|a| {
        a.by_end.insert(p(16), p(14));
    }));
    assert!(!broken(&|a| {
        a.by_size.insert((p(2), p(14)));
    }));
    // Both indexes, but overlapping a block, adjacent to one (unmerged),
    // empty, misaligned, or outside the managed range.
    for (start, end) in
        [(p(10), p(14)), (p(4), p(6)), (p(6), p(8)), (p(16), p(16)), (p(16) + 8, p(17)), (p(32), p(33))]
    {
        assert!(!broken(&|a| {
            a.insert_block(start, end);
            a.free_bytes += end - start;
        }));
    }
    // The two indexes disagree on a block's length.
    assert!(!broken(&|a| {
        a.by_size.remove(&(p(2), p(2)));
        a.by_size.insert((p(3), p(2)));
    }));
    // The size index's largest block is not the largest: it and the
    // smallest block trade places.
    assert!(!broken(&|a| {
        let top = a.by_size.top.take().unwrap();
        let smallest = a.by_size.rest.pop_first().unwrap();
        a.by_size.top = Some(smallest);
        a.by_size.rest.insert(top);
    }));
    // The free-byte counter is off.
    assert!(!broken(&|a| a.free_bytes -= G));
    assert!(good.inv());
}

#[test]
fn stats_track_fragments_and_largest_after_a_pattern_of_frees() {
    let mut a = RangeAllocator::new(p(0)..p(64), G);
    let areas: Vec<_> = (0..8).map(|_| a.alloc(p(8), G).unwrap()).collect();
    let stats = |free: usize, largest: usize, fragments: usize| RangeAllocStats {
        total_bytes: p(64),
        free_bytes: p(free),
        largest_free: p(largest),
        fragments,
    };
    assert_eq!(a.stats(), stats(0, 0, 0));
    for i in [1, 3, 5] {
        a.free(areas[i].clone()).unwrap();
    }
    assert_eq!(a.stats(), stats(24, 8, 3));
    a.free(areas[2].clone()).unwrap(); // joins 1 and 3
    assert_eq!(a.stats(), stats(32, 24, 2));
    a.free(areas[7].clone()).unwrap(); // alone at the top
    assert_eq!(a.stats(), stats(40, 24, 3));
    a.free(areas[6].clone()).unwrap(); // joins 5 and 7
    assert_eq!(a.stats(), stats(48, 24, 2));
    a.free(areas[4].clone()).unwrap(); // joins 1..=3 and 5..=7
    assert_eq!(a.stats(), stats(56, 56, 1));
    a.free(areas[0].clone()).unwrap();
    assert_eq!(a.stats(), stats(64, 64, 1));
    assert!(a.inv());
}

#[test]
fn is_free_reports_only_fully_free_ranges() {
    let a = with_free(p(0)..p(16), &[p(2)..p(6)]);
    assert!(a.is_free(p(2)..p(6)));
    assert!(a.is_free(p(3)..p(4)));
    assert!(a.is_free(p(3)..p(4) + 1)); // byte-granular query
    assert!(!a.is_free(p(1)..p(3)));
    assert!(!a.is_free(p(5)..p(7)));
    assert!(!a.is_free(p(8)..p(9)));
    assert!(!a.is_free(p(3)..p(3)));
    assert!(!a.is_free(p(100)..p(101)));
}

#[test]
fn overlaps_free_reports_any_free_byte() {
    let a = with_free(p(0)..p(16), &[p(2)..p(6), p(10)..p(11)]);
    for (r, expect) in [
        (p(0)..p(2), false),
        (p(1)..p(3), true),
        (p(5)..p(7), true),
        (p(6)..p(10), false),
        (p(6)..p(10) + 1, true),
        (p(0)..p(16), true),
        (p(11)..p(16), false),
        (p(3)..p(3), false),
        (p(12)..p(4), false),
    ] {
        assert_eq!(a.overlaps_free(r.clone()), expect, "{r:x?}");
        let scan = r.start < r.end && a.free_ranges().any(|f| f.start < r.end && r.start < f.end);
        assert_eq!(scan, expect, "{r:x?}");
    }
}

#[test]
fn free_ranges_are_ascending() {
    let a = with_free(p(0)..p(32), &[p(20)..p(21), p(2)..p(3), p(10)..p(14)]);
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![p(2)..p(3), p(10)..p(14), p(20)..p(21)]);
}

#[test]
fn errors_display_as_distinct_sentences() {
    use alloc::string::ToString;
    let all = [
        RangeAllocError::ZeroSize,
        RangeAllocError::Misaligned,
        RangeAllocError::Exhausted,
        RangeAllocError::OutOfRange,
        RangeAllocError::DoubleFree,
        RangeAllocError::OverlappingFree,
    ];
    let texts: Vec<_> = all.iter().map(|e| e.to_string()).collect();
    for (i, t) in texts.iter().enumerate() {
        assert!(!t.is_empty());
        assert!(texts[..i].iter().all(|u| u != t));
    }
}

/// A small deterministic generator, so the stress test needs no seed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn ten_thousand_live_areas_alloc_and_free() {
    const N: usize = 10_000;
    let base = VMALLOC.start;
    let mut a = RangeAllocator::new(VMALLOC, G);
    // Granule-aligned areas are packed from the bottom.
    let packed: Vec<_> = (0..N).map(|_| a.alloc(G, G).unwrap()).collect();
    assert_eq!(packed[N - 1], base + (N - 1) * G..base + N * G);
    for r in packed.iter().skip(1).step_by(2) {
        a.free(r.clone()).unwrap();
    }
    // N/2 - 1 isolated holes, plus the last one merged into the tail.
    assert_eq!(a.stats().fragments, N / 2);
    assert_eq!(a.stats().free_bytes, TIB32 - N / 2 * G);
    assert!(a.inv());

    // Another N areas of random sizes and alignments on top.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut live: Vec<Range<usize>> = packed.into_iter().step_by(2).collect();
    for _ in 0..N {
        let size = (1 + rng.below(16)) * G;
        let align = G << rng.below(10);
        let r = a.alloc(size, align).unwrap();
        assert_eq!(r.start % align, 0);
        live.push(r);
    }
    assert_eq!(live.len(), N + N / 2);
    let mut sorted = live.clone();
    sorted.sort_by_key(|r| r.start);
    assert!(sorted.windows(2).all(|w| w[0].end <= w[1].start));
    assert!(a.inv());

    // Free everything in random order.
    let mut step = 0;
    while !live.is_empty() {
        let r = live.swap_remove(rng.below(live.len()));
        a.free(r).unwrap();
        step += 1;
        if step % 2500 == 0 {
            assert_eq!(a.stats().fragments, a.free_ranges().count());
            assert!(a.inv());
        }
    }
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![VMALLOC]);
    assert_eq!(a.stats().fragments, 1);
    assert!(a.inv());
}

// ---- Cost: tree probes per operation ----------------------------------

/// VMALLOC with `n` free fragments: `n - 1` isolated single pages at
/// odd page numbers, then the free rest. Returns it and the allocated
/// pages between the holes.
fn fragmented(n: usize) -> (RangeAllocator, Vec<Range<usize>>) {
    let mut a = RangeAllocator::new(VMALLOC, G);
    let pages: Vec<_> = (0..2 * n).map(|_| a.alloc(G, G).unwrap()).collect();
    let mut kept = Vec::new();
    for (i, r) in pages.into_iter().enumerate() {
        if i % 2 == 1 {
            a.free(r).unwrap();
        } else {
            kept.push(r);
        }
    }
    assert_eq!(a.stats().fragments, n);
    (a, kept)
}

/// The most probes one `alloc` or `free` makes in a mix of operations
/// on `fragmented(n)`, each undone right away so that the number of
/// fragments stays `n`: best-fit and aligned allocations (served by the
/// fast path and by the fallback with alignment slack), frees that
/// merge with both neighbours, and rejected double frees.
fn max_probes_per_operation(n: usize) -> usize {
    let (mut a, kept) = fragmented(n);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut worst = 0;
    let mut note = |probes: usize| worst = worst.max(probes);
    for _ in 0..200 {
        // A random size and alignment (up to 512 pages).
        let (size, align) = ((1 + rng.below(16)) * G, G << rng.below(10));
        let (r, probes) = probes_of(|| a.alloc(size, align).unwrap());
        note(probes);
        note(probes_of(|| a.free(r).unwrap()).1);
        // An allocated page between two holes (not the first, at the
        // bottom, nor the last, next to the free rest): its free merges
        // all three.
        let page = kept[1 + rng.below(kept.len() - 2)].clone();
        note(probes_of(|| a.free(page.clone()).unwrap()).1);
        let merged = page.start - G..page.end + G;
        assert_eq!(a.alloc(3 * G, G), Ok(merged.clone()), "best fit takes the merged block back");
        a.free(merged.start..page.start).unwrap();
        a.free(page.end..merged.end).unwrap();
        // A double free of a hole.
        let hole = page.end..page.end + G;
        note(probes_of(|| assert_eq!(a.free(hole), Err(RangeAllocError::DoubleFree))).1);
        assert_eq!(a.stats().fragments, n);
    }
    assert!(a.inv());
    worst
}

#[test]
fn alloc_and_free_probe_the_trees_at_most_logarithmically_often() {
    let log2 = |n: usize| n.ilog2() as usize + 1;
    let (small, large) = (max_probes_per_operation(10), max_probes_per_operation(10_000));
    // Each probe is one O(log n) tree operation or one iterator step: a
    // bounded number of probes per operation is O(log n) per operation.
    assert!(small <= 4 * log2(10), "{small} probes with 10 fragments");
    assert!(large <= 4 * log2(10_000), "{large} probes with 10 000 fragments");
    // A thousand times the fragments: at most log2(1000) ~ 10 times the
    // probes, and in fact not one more.
    assert!(large <= small, "{small} probes with 10 fragments, {large} with 10 000");
}

/// The one path that is not O(log n), as the module documentation says:
/// an aligned request that no block can hold with full alignment slack
/// scans the blocks of length `size..size + align - granule`.
#[test]
fn aligned_alloc_without_slack_scans_the_short_candidates() {
    for m in [10, 10_000] {
        // m single free pages at odd page numbers, nothing else free:
        // none holds a page aligned to two pages.
        let holes: Vec<_> = (0..m).map(|i| p(2 * i + 1)..p(2 * i + 2)).collect();
        let mut a = with_free(p(0)..p(2 * m + 2), &holes);
        let (result, probes) = probes_of(|| a.alloc(G, 2 * G));
        assert_eq!(result, Err(RangeAllocError::Exhausted));
        assert!((m..=m + 16).contains(&probes), "{probes} probes for {m} candidates");
    }
}

// ---- Model-based property test ----------------------------------------

const PAGES: usize = 256;
const BASE: usize = VMALLOC.start;
const END: usize = BASE + PAGES * G;

#[derive(Debug, Clone)]
enum Op {
    /// Allocate `pages` granules aligned to `1 << align_log` granules.
    Alloc { pages: usize, align_log: u32 },
    /// Free a sub-range of a live allocation.
    Free { pick: usize, off: usize, len: usize },
    /// Free pages `start..start + len` when the model says some of them
    /// are free (must be rejected); skipped when all are allocated.
    FreeOverlapping { start: usize, len: usize },
    /// A call that is invalid whatever the state.
    Invalid { kind: u8, x: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=24usize, 0..=4u32).prop_map(|(pages, align_log)| Op::Alloc { pages, align_log }),
        3 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(pick, off, len)| Op::Free { pick, off, len }),
        1 => (0..PAGES, 1..=24usize).prop_map(|(start, len)| Op::FreeOverlapping { start, len }),
        1 => (0..10u8, any::<usize>()).prop_map(|(kind, x)| Op::Invalid { kind, x }),
    ]
}

/// Maximal runs of free pages in the model, as page ranges.
fn model_runs(allocated: &BTreeSet<usize>) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for page in (0..PAGES).filter(|pg| !allocated.contains(pg)) {
        match runs.last_mut() {
            Some(run) if run.end == page => run.end += 1,
            _ => runs.push(page..page + 1),
        }
    }
    runs
}

fn addr(page: usize) -> usize {
    BASE + page * G
}

fn check_against_model(a: &RangeAllocator, allocated: &BTreeSet<usize>) {
    assert!(a.inv());
    let runs = model_runs(allocated);
    let expect: Vec<_> = runs.iter().map(|r| addr(r.start)..addr(r.end)).collect();
    assert_eq!(a.free_ranges().collect::<Vec<_>>(), expect);
    assert_eq!(
        a.stats(),
        RangeAllocStats {
            total_bytes: PAGES * G,
            free_bytes: (PAGES - allocated.len()) * G,
            largest_free: runs.iter().map(|r| r.len() * G).max().unwrap_or(0),
            fragments: runs.len(),
        }
    );
}

fn apply(a: &mut RangeAllocator, allocated: &mut BTreeSet<usize>, live: &mut Vec<Range<usize>>, op: Op) {
    use RangeAllocError::*;
    match op {
        Op::Alloc { pages, align_log } => {
            let align = 1usize << align_log;
            let runs = model_runs(allocated);
            // Lowest aligned start in each run that leaves room.
            let fits = |r: &Range<usize>| {
                let at = r.start.next_multiple_of(align);
                (at + pages <= r.end).then_some(at)
            };
            match a.alloc(pages * G, align * G) {
                Ok(r) => {
                    assert_eq!(r.len(), pages * G);
                    assert_eq!(r.start % (align * G), 0);
                    let first = (r.start - BASE) / G;
                    // Carved from the low end of the free block it is in.
                    let run = runs.iter().find(|run| run.contains(&first)).unwrap();
                    assert_eq!(fits(run), Some(first));
                    for pg in first..first + pages {
                        assert!(allocated.insert(pg), "page {pg} handed out twice");
                    }
                    live.push(first..first + pages);
                }
                Err(Exhausted) => {
                    let possible = runs.iter().find_map(fits);
                    assert_eq!(possible, None, "a fitting run was free");
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        Op::Free { pick, off, len } => {
            if live.is_empty() {
                return;
            }
            let whole = live.swap_remove(pick % live.len());
            let off = off % whole.len();
            let len = 1 + len % (whole.len() - off);
            let start = whole.start + off;
            let end = start + len;
            assert_eq!(a.free(addr(start)..addr(end)), Ok(()));
            for pg in start..end {
                assert!(allocated.remove(&pg));
            }
            if whole.start < start {
                live.push(whole.start..start);
            }
            if end < whole.end {
                live.push(end..whole.end);
            }
        }
        Op::FreeOverlapping { start, len } => {
            let end = (start + len).min(PAGES);
            let free = (start..end).filter(|pg| !allocated.contains(pg)).count();
            let expect = if free == 0 {
                return; // a valid free the live list does not know about
            } else if free == end - start {
                DoubleFree
            } else {
                OverlappingFree
            };
            rejects(a, expect, |a| a.free(addr(start)..addr(end)));
        }
        Op::Invalid { kind, x } => {
            let page = x % PAGES;
            let small = 1 + x % 4;
            let odd = 1 + x % (G - 1);
            match kind {
                0 => rejects(a, OutOfRange, |a| a.free(addr(page)..addr(page))),
                1 => rejects(a, OutOfRange, |a| a.free(addr(page + 1)..addr(page))),
                2 => rejects(a, OutOfRange, |a| a.free(BASE - small * G..BASE + (x % 3) * G)),
                3 => rejects(a, OutOfRange, |a| a.free(END - (x % 3) * G..END + small * G)),
                4 => rejects(a, Misaligned, |a| a.free(addr(page) + odd..addr(page + 1))),
                5 => rejects(a, Misaligned, |a| a.free(addr(page)..addr(page) + odd)),
                6 => rejects(a, ZeroSize, |a| a.alloc(0, G << (x % 5))),
                7 => rejects(a, Misaligned, |a| a.alloc(small * G + odd, G)),
                8 => rejects(a, Misaligned, |a| a.alloc(G, (G << (x % 5)) + odd)),
                _ => rejects(a, Exhausted, |a| a.alloc((PAGES + small) * G, G << (x % 5))),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_alloc_and_free_match_a_page_model(ops in proptest::collection::vec(op(), 1..160)) {
        let mut a = RangeAllocator::new(BASE..END, G);
        let mut allocated = BTreeSet::new();
        let mut live = Vec::new();
        for op in ops {
            apply(&mut a, &mut allocated, &mut live, op);
            check_against_model(&a, &allocated);
        }
        // Freeing everything restores one fragment of the whole range.
        for r in live.drain(..) {
            prop_assert_eq!(a.free(addr(r.start)..addr(r.end)), Ok(()));
            for pg in r {
                prop_assert!(allocated.remove(&pg));
            }
        }
        prop_assert!(allocated.is_empty());
        check_against_model(&a, &allocated);
        prop_assert_eq!(a.free_ranges().collect::<Vec<_>>(), vec![BASE..END]);
        prop_assert_eq!(a.stats().fragments, 1);
    }
}
