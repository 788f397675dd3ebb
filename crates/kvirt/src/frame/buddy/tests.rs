//! Unit tests of the buddy allocator: allocation, merging, the invariant, and proptests against a model. They
//! outgrew the module and live beside it.

// Declared here too so the tests build whatever the crate root declares.
extern crate std;

use super::{BuddyAllocator, Inv, MAX_ORDER, NR_ORDERS};
use alloc::format;
use alloc::vec::Vec;

/// An allocator of `nr_pages` pages with all of them free.
fn all_free(nr_pages: usize) -> BuddyAllocator {
    let mut a = BuddyAllocator::new(nr_pages);
    a.add_free_range(0..nr_pages);
    assert!(a.inv());
    a
}

/// `(order, number of free blocks)` for the non-empty orders.
fn shape(a: &BuddyAllocator) -> Vec<(usize, usize)> {
    (0..NR_ORDERS).filter(|&k| a.blocks[k] != 0).map(|k| (k, a.blocks[k])).collect()
}

fn alloc_ok(a: &mut BuddyAllocator, count: usize) -> usize {
    let pfn = a.alloc(count).expect("allocation should succeed");
    assert!(a.inv());
    pfn
}

fn dealloc_ok(a: &mut BuddyAllocator, pfn: usize, count: usize) {
    a.dealloc(pfn, count);
    assert!(a.inv());
}

#[test]
fn new_allocator_has_every_page_reserved() {
    let mut a = BuddyAllocator::new(100);
    assert!(a.inv());
    assert_eq!(a.total_pages(), 100);
    assert_eq!(a.free_pages(), 0);
    assert!((0..100).all(|pfn| !a.is_free(pfn)));
    assert_eq!(a.alloc(1), None);
}

#[test]
fn empty_allocator_is_consistent() {
    let mut a = BuddyAllocator::new(0);
    assert!(a.inv());
    a.add_free_range(0..0);
    assert_eq!(a.alloc(1), None);
    assert!(a.inv());
}

#[test]
fn add_free_range_of_a_power_of_two_makes_one_block() {
    let a = all_free(64);
    assert_eq!(a.free_pages(), 64);
    assert!((0..64).all(|pfn| a.is_free(pfn)));
    assert_eq!(shape(&a), [(6, 1)]);
}

#[test]
fn same_order_blocks_of_a_range_are_used_lowest_first() {
    let mut a = BuddyAllocator::new(64);
    a.add_free_range(16..48);
    assert_eq!(shape(&a), [(4, 2)]);
    assert_eq!(a.alloc(1), Some(16));
    assert_eq!(a.alloc(16), Some(32));
}

#[test]
fn smallest_fragment_of_a_range_is_used_first() {
    let mut a = BuddyAllocator::new(1000);
    a.add_free_range(0..1000);
    // 992..1000 is the only order-3 block and the lowest-order one.
    assert_eq!(a.alloc(1), Some(992));
}

#[test]
fn is_free_is_false_out_of_range() {
    let a = all_free(10);
    assert!(a.is_free(9));
    assert!(!a.is_free(10));
    assert!(!a.is_free(usize::MAX));
}

#[test]
fn freed_page_is_reused_first() {
    let mut a = all_free(1024);
    // An alloc undone by a dealloc restores the exact state.
    let p = alloc_ok(&mut a, 1);
    dealloc_ok(&mut a, p, 1);
    assert_eq!(a.alloc(1), Some(p));
    // A page whose buddy is allocated heads the order-0 list when freed.
    let pages: Vec<usize> = (0..9).map(|_| alloc_ok(&mut a, 1)).collect();
    assert_eq!(pages, (1..10).collect::<Vec<_>>());
    dealloc_ok(&mut a, 3, 1);
    assert_eq!(a.alloc(1), Some(3));
    // Last in, first out among same-order blocks.
    dealloc_ok(&mut a, 5, 1);
    dealloc_ok(&mut a, 7, 1);
    assert_eq!(a.alloc(1), Some(7));
    assert_eq!(a.alloc(1), Some(5));
}

#[test]
fn dropping_the_last_frame_of_a_sequence_reuses_it() {
    let mut a = all_free(256);
    for expected in 0..5 {
        assert_eq!(a.alloc(1), Some(expected));
    }
    // Page 4 merges with its free buddies, but the merged block is again
    // the lowest-order free block, so page 4 comes back.
    dealloc_ok(&mut a, 4, 1);
    assert_eq!(a.alloc(1), Some(4));
}

#[test]
fn lowest_order_block_is_preferred() {
    let mut a = all_free(32);
    for expected in 0..16 {
        assert_eq!(a.alloc(1), Some(expected));
    }
    dealloc_ok(&mut a, 9, 1); // buddy 8 is allocated: an order-0 block
    assert_eq!(shape(&a), [(0, 1), (4, 1)]);
    assert_eq!(a.alloc(1), Some(9));
    assert_eq!(a.alloc(2), Some(16));
}

#[test]
fn split_keeps_lower_half_and_frees_upper_halves() {
    let mut a = all_free(16);
    assert_eq!(a.alloc(1), Some(0));
    assert_eq!(shape(&a), [(0, 1), (1, 1), (2, 1), (3, 1)]);
    assert_eq!(a.alloc(1), Some(1));
    assert_eq!(a.alloc(2), Some(2));
    assert_eq!(a.alloc(4), Some(4));
    assert_eq!(a.alloc(8), Some(8));
    assert_eq!(a.alloc(1), None);
    assert_eq!(a.free_pages(), 0);
    assert!(a.inv());
}

#[test]
fn buddies_merge_when_both_are_freed() {
    let mut a = all_free(16);
    let pages: Vec<usize> = (0..16).map(|_| alloc_ok(&mut a, 1)).collect();
    dealloc_ok(&mut a, 4, 1);
    dealloc_ok(&mut a, 5, 1);
    assert_eq!(shape(&a), [(1, 1)]);
    dealloc_ok(&mut a, 7, 1);
    dealloc_ok(&mut a, 6, 1);
    assert_eq!(shape(&a), [(2, 1)]);
    for &p in &pages {
        if !a.is_free(p) {
            dealloc_ok(&mut a, p, 1);
        }
    }
    assert_eq!(shape(&a), [(4, 1)]);
    assert_eq!(a.free_pages(), 16);
}

#[test]
fn exhaustion_returns_none() {
    let mut a = all_free(37);
    let mut pages: Vec<usize> = (0..37).map(|_| alloc_ok(&mut a, 1)).collect();
    assert_eq!(a.alloc(1), None);
    assert_eq!(a.free_pages(), 0);
    pages.sort_unstable();
    assert_eq!(pages, (0..37).collect::<Vec<_>>());
    for p in pages {
        dealloc_ok(&mut a, p, 1);
    }
    assert_eq!(a.free_pages(), 37);
    assert_eq!(shape(&a), [(0, 1), (2, 1), (5, 1)]);
}

#[test]
fn fragmented_memory_cannot_satisfy_a_contiguous_request() {
    let mut a = all_free(16);
    for _ in 0..16 {
        alloc_ok(&mut a, 1);
    }
    for p in (0..16).step_by(2) {
        dealloc_ok(&mut a, p, 1);
    }
    assert_eq!(a.free_pages(), 8);
    assert_eq!(a.alloc(2), None);
    assert!(a.alloc(1).is_some());
}

#[test]
fn zero_and_oversized_requests_return_none() {
    let max = 1 << MAX_ORDER;
    let mut a = all_free(2 * max);
    assert_eq!(a.alloc(0), None);
    assert_eq!(a.alloc(max + 1), None);
    assert_eq!(a.alloc(usize::MAX), None);
    assert_eq!(a.free_pages(), 2 * max);
    assert_eq!(a.alloc(max), Some(0));
    assert_eq!(a.alloc(max), Some(max));
    assert_eq!(a.alloc(1), None);
    assert!(a.inv());
}

#[test]
fn largest_blocks_do_not_merge_past_max_order() {
    let a = all_free(4 << MAX_ORDER);
    assert_eq!(shape(&a), [(MAX_ORDER as usize, 4)]);
}

#[test]
fn power_of_two_runs_are_aligned() {
    let mut a = BuddyAllocator::new(3000);
    a.add_free_range(1..3000);
    let mut live = Vec::new();
    for round in 0..3 {
        for k in 0..=8 {
            let count = 1 << k;
            let p = alloc_ok(&mut a, count);
            assert_eq!(p % count, 0, "run of {count} pages at {p} is misaligned");
            live.push((p, count));
            // Perturb the free lists with a small odd allocation.
            live.push((alloc_ok(&mut a, 3 + round), 3 + round));
        }
    }
    for (p, count) in live {
        dealloc_ok(&mut a, p, count);
    }
    assert_eq!(a.free_pages(), 2999);
}

#[test]
fn non_power_of_two_run_returns_tail() {
    let mut a = all_free(16);
    assert_eq!(a.alloc(5), Some(0));
    assert_eq!(a.free_pages(), 11);
    assert!((0..5).all(|p| !a.is_free(p)));
    assert!((5..16).all(|p| a.is_free(p)));
    // The tail 5..8 went back as [5] (order 0) and [6, 7] (order 1).
    assert_eq!(shape(&a), [(0, 1), (1, 1), (3, 1)]);
    assert_eq!(a.alloc(2), Some(6));
    assert_eq!(a.alloc(1), Some(5));
    // Three pages: an order-2 block is split off the order-3 one at 8.
    assert_eq!(a.alloc(3), Some(8));
    assert!(a.is_free(11));
    assert_eq!(a.alloc(1), Some(11));
    dealloc_ok(&mut a, 0, 5);
    dealloc_ok(&mut a, 5, 1);
    dealloc_ok(&mut a, 6, 2);
    dealloc_ok(&mut a, 8, 3);
    dealloc_ok(&mut a, 11, 1);
    assert_eq!(shape(&a), [(4, 1)]);
}

#[test]
fn partial_free_of_a_run() {
    let mut a = all_free(64);
    let p = alloc_ok(&mut a, 8);
    dealloc_ok(&mut a, p + 2, 3);
    assert_eq!(a.free_pages(), 56 + 3);
    let free: Vec<bool> = (p..p + 8).map(|q| a.is_free(q)).collect();
    assert_eq!(free, [false, false, true, true, true, false, false, false]);
    dealloc_ok(&mut a, p + 6, 2);
    dealloc_ok(&mut a, p, 1);
    dealloc_ok(&mut a, p + 5, 1);
    dealloc_ok(&mut a, p + 1, 1);
    assert_eq!(a.free_pages(), 64);
    assert_eq!(shape(&a), [(6, 1)]);
}

#[test]
fn partial_free_of_a_non_power_of_two_run() {
    let mut a = all_free(128);
    let p = alloc_ok(&mut a, 13);
    for (offset, count) in [(7, 5), (0, 1), (12, 1), (3, 4), (1, 2)] {
        dealloc_ok(&mut a, p + offset, count);
    }
    assert_eq!(shape(&a), [(7, 1)]);
}

#[test]
fn freeing_everything_merges_back_whatever_the_order() {
    let mut a = all_free(1 << 12);
    let mut live = Vec::new();
    for i in 0..200 {
        let count = 1 + (i * 7919) % 23;
        live.push((alloc_ok(&mut a, count), count));
    }
    // Free in a scrambled order.
    let n = live.len();
    for i in 0..n {
        let (p, count) = live[(i * 37) % n];
        dealloc_ok(&mut a, p, count);
    }
    assert_eq!(a.free_pages(), 1 << 12);
    assert_eq!(shape(&a), [(12, 1)]);
}

#[test]
fn range_not_aligned_to_max_order() {
    let range = 12_345..400_001;
    let mut a = BuddyAllocator::new(1 << 19);
    a.add_free_range(range.clone());
    assert!(a.inv());
    assert_eq!(a.free_pages(), range.len());
    assert!(!a.is_free(12_344) && a.is_free(12_345));
    assert!(a.is_free(400_000) && !a.is_free(400_001));
    // No aligned 2^18 block fits in the range, but 2^17 ones do.
    assert_eq!(a.alloc(1 << MAX_ORDER), None);
    let p = alloc_ok(&mut a, 1 << 17);
    assert_eq!(p % (1 << 17), 0);
    assert!(range.start <= p && p + (1 << 17) <= range.end);
    dealloc_ok(&mut a, p, 1 << 17);
    assert_eq!(a.free_pages(), range.len());
}

#[test]
fn nr_pages_not_a_power_of_two() {
    let mut a = all_free(1000);
    // 1000 = 512 + 256 + 128 + 64 + 32 + 8
    let initial = [(3, 1), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1)];
    assert_eq!(shape(&a), initial);
    assert_eq!(a.alloc(1024), None);
    assert_eq!(a.alloc(1000), None);
    assert_eq!(a.alloc(512), Some(0));
    let mut pages = Vec::new();
    while let Some(p) = a.alloc(1) {
        pages.push(p);
    }
    assert_eq!(pages.len(), 1000 - 512);
    assert!(pages.iter().all(|&p| (512..1000).contains(&p)));
    assert!(a.inv());
    dealloc_ok(&mut a, 0, 512);
    for p in pages {
        dealloc_ok(&mut a, p, 1);
    }
    assert_eq!(shape(&a), initial);
}

#[test]
fn add_free_range_with_odd_boundaries() {
    let mut a = BuddyAllocator::new(2000);
    a.add_free_range(3..1001);
    assert!(a.inv());
    a.add_free_range(1001..1500);
    assert!(a.inv());
    a.add_free_range(1777..1778);
    assert!(a.inv());
    assert_eq!(a.free_pages(), 1497 + 1);
    assert!(!a.is_free(2) && a.is_free(3));
    assert!(a.is_free(1000) && a.is_free(1001) && a.is_free(1499));
    assert!(!a.is_free(1500) && a.is_free(1777) && !a.is_free(1778));
    // Adjacent ranges merge exactly as one range would.
    let mut b = BuddyAllocator::new(2000);
    b.add_free_range(3..1500);
    b.add_free_range(1777..1778);
    assert_eq!(shape(&a), shape(&b));
}

#[test]
fn ranges_added_out_of_order_merge_fully() {
    let mut a = BuddyAllocator::new(64);
    for range in [40..64, 1..2, 2..40, 0..1] {
        a.add_free_range(range);
        assert!(a.inv());
    }
    assert_eq!(shape(&a), [(6, 1)]);
}

#[test]
fn reserved_holes_are_never_handed_out() {
    let mut a = BuddyAllocator::new(256);
    a.add_free_range(0..100);
    a.add_free_range(101..200);
    a.add_free_range(210..256);
    let mut pages = Vec::new();
    while let Some(p) = a.alloc(1) {
        pages.push(p);
    }
    assert_eq!(pages.len(), 255 - 10);
    assert!(pages.iter().all(|&p| p != 100 && !(200..210).contains(&p)));
    assert!(a.inv());
}

#[test]
fn large_allocator_constructs_quickly() {
    let pages = 1 << 20; // 4 GiB of 4 KiB pages
    let mut a = BuddyAllocator::new(pages);
    a.add_free_range(0..pages);
    let one = a.alloc(1).unwrap();
    let five = a.alloc(5).unwrap();
    let many = a.alloc(512).unwrap();
    a.dealloc(five, 5);
    a.dealloc(one, 1);
    a.dealloc(many, 512);
    assert_eq!(a.free_pages(), pages);
    assert!(a.inv());
}

#[test]
fn debug_output_is_a_short_summary() {
    let mut a = all_free(1000);
    let _ = a.alloc(1);
    let text = format!("{a:?}");
    assert!(text.contains("total_pages: 1000"), "{text}");
    assert!(text.contains("free_pages: 999"), "{text}");
    assert!(text.len() < 200, "{text}");
}

#[test]
#[should_panic(expected = "double free of pfn 0")]
fn double_free_panics() {
    let mut a = all_free(16);
    let p = a.alloc(1).unwrap();
    a.dealloc(p, 1);
    a.dealloc(p, 1);
}

#[test]
#[should_panic(expected = "double free of pfn 5 (dealloc of 4 pages at pfn 4)")]
fn double_free_inside_a_run_panics() {
    let mut a = all_free(16);
    for _ in 0..4 {
        let _ = a.alloc(4);
    }
    a.dealloc(5, 1);
    a.dealloc(4, 4);
}

#[test]
fn double_free_leaves_the_allocator_unchanged() {
    let mut a = all_free(16);
    let p = a.alloc(8).unwrap();
    a.dealloc(p + 3, 1);
    let before = (a.free_pages(), shape(&a));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.dealloc(p, 8)));
    assert!(result.is_err());
    assert_eq!((a.free_pages(), shape(&a)), before);
    assert!(a.inv());
}

#[test]
#[should_panic(expected = "dealloc of 2 pages at pfn 15 is out of bounds")]
fn dealloc_out_of_bounds_panics() {
    let mut a = all_free(16);
    for _ in 0..16 {
        let _ = a.alloc(1);
    }
    a.dealloc(15, 2);
}

#[test]
#[should_panic(expected = "out of bounds")]
fn dealloc_with_overflowing_range_panics() {
    let mut a = all_free(16);
    a.dealloc(usize::MAX, 2);
}

#[test]
#[should_panic(expected = "add_free_range(5..6): pfn 5 is already free")]
fn add_free_range_twice_panics() {
    let mut a = BuddyAllocator::new(16);
    a.add_free_range(0..10);
    a.add_free_range(5..6);
}

#[test]
#[should_panic(expected = "add_free_range(0..11) is out of bounds")]
fn add_free_range_out_of_bounds_panics() {
    let mut a = BuddyAllocator::new(10);
    a.add_free_range(0..11);
}

#[test]
#[should_panic(expected = "add_free_range(6..5) is out of bounds or inverted")]
fn inverted_add_free_range_panics() {
    let mut a = BuddyAllocator::new(10);
    let (start, end) = (6, 5);
    a.add_free_range(start..end);
}

#[test]
#[cfg(target_pointer_width = "64")]
#[should_panic(expected = "more than the supported maximum")]
fn too_many_pages_panics() {
    let _ = BuddyAllocator::new(u32::MAX as usize);
}

#[test]
fn inv_detects_corruption() {
    let mut a = all_free(64);
    let _ = a.alloc(3);
    assert!(a.inv());
    a.free += 1;
    assert!(!a.inv());
    a.free -= 1;
    a.free_bits[0] ^= 1 << 63;
    assert!(!a.inv());
    a.free_bits[0] ^= 1 << 63;
    a.order[63] = 1;
    assert!(!a.inv());
    a.order[63] = 0;
    assert!(a.inv());
}

mod model {
    use super::super::{BuddyAllocator, Inv};
    use super::shape;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    const N: usize = 4003;

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize),
        /// Free live allocation `which % live.len()`, or the sub-run chosen
        /// by `part` (offset and length, each reduced modulo what fits).
        Free {
            which: usize,
            part: Option<(usize, usize)>,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1usize..=40).prop_map(Op::Alloc),
            2 => (
                any::<usize>(),
                proptest::option::weighted(0.3, (any::<usize>(), any::<usize>())),
            )
                .prop_map(|(which, part)| Op::Free { which, part }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_alloc_dealloc_matches_model(
            holes in proptest::collection::vec((0..N, 1usize..120), 0..5),
            ops in proptest::collection::vec(op(), 1..250),
        ) {
            let mut reserved = vec![false; N];
            for (start, len) in holes {
                reserved[start..(start + len).min(N)].fill(true);
            }
            // Add the usable regions, each split in two and added back to
            // front, so adjacent add_free_range calls must merge.
            let mut a = BuddyAllocator::new(N);
            let mut start = 0;
            while start < N {
                let end = (start..N).find(|&p| reserved[p] != reserved[start]).unwrap_or(N);
                if !reserved[start] {
                    let mid = start + (end - start) / 3;
                    a.add_free_range(mid..end);
                    a.add_free_range(start..mid);
                }
                start = end;
            }
            let initial_free = reserved.iter().filter(|&&r| !r).count();
            prop_assert!(a.inv());
            prop_assert_eq!(a.free_pages(), initial_free);
            let initial_shape = shape(&a);

            let mut allocated = vec![false; N];
            let mut live: Vec<(usize, usize)> = Vec::new();
            let mut used = 0;
            for op in ops {
                match op {
                    Op::Alloc(count) => {
                        if let Some(p) = a.alloc(count) {
                            prop_assert!(p + count <= N, "run {}+{} out of bounds", p, count);
                            for q in p..p + count {
                                prop_assert!(!reserved[q], "pfn {} is in a reserved hole", q);
                                prop_assert!(!allocated[q], "pfn {} handed out twice", q);
                                allocated[q] = true;
                            }
                            if count.is_power_of_two() {
                                prop_assert_eq!(p % count, 0);
                            }
                            used += count;
                            live.push((p, count));
                        } else {
                            // Fully merged free lists: the request may fail
                            // only if no aligned block of the rounded-up size
                            // is entirely free.
                            let size = count.next_power_of_two();
                            let fits = (0..N / size).any(|block| {
                                (block * size..(block + 1) * size)
                                    .all(|q| !reserved[q] && !allocated[q])
                            });
                            prop_assert!(
                                !fits,
                                "alloc({}) failed although a block was free",
                                count
                            );
                        }
                    }
                    Op::Free { which, part } => {
                        if live.is_empty() {
                            continue;
                        }
                        let (p, len) = live.swap_remove(which % live.len());
                        let (offset, count) = match part {
                            None => (0, len),
                            Some((offset, count)) => {
                                let offset = offset % len;
                                (offset, 1 + count % (len - offset))
                            }
                        };
                        a.dealloc(p + offset, count);
                        allocated[p + offset..p + offset + count].fill(false);
                        used -= count;
                        if offset > 0 {
                            live.push((p, offset));
                        }
                        if offset + count < len {
                            live.push((p + offset + count, len - offset - count));
                        }
                    }
                }
                prop_assert!(a.inv());
                prop_assert_eq!(a.free_pages(), initial_free - used);
                for q in 0..N {
                    prop_assert_eq!(a.is_free(q), !reserved[q] && !allocated[q]);
                }
            }

            for (p, len) in live {
                a.dealloc(p, len);
            }
            prop_assert!(a.inv());
            prop_assert_eq!(a.free_pages(), initial_free);
            // The fully merged decomposition is unique.
            prop_assert_eq!(shape(&a), initial_shape);
        }
    }
}
