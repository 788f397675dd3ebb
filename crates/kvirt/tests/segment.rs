//! Segments: contiguous runs of frames holding one reference per page.

use std::any::Any;
use std::sync::{Arc, Mutex};

use kvirt::frame::{
    AnyFrameMeta, Frame, FrameAccessError, FrameAllocError, FrameAllocOptions, Segment, SegmentError, UFrame,
    USegment, MAX_SEGMENT_PAGES,
};
use kvirt::kspace::KernelSpace;
use kvirt::{Paddr, PAGE_SIZE};
use kvirt_sim::MachineConfig;

const P: usize = PAGE_SIZE;

fn space() -> KernelSpace {
    KernelSpace::new_hosted(MachineConfig::new(64 << 20))
}

/// Metadata recording the page it was made for.
#[derive(Debug)]
struct PageMeta {
    paddr: Paddr,
}
kvirt::impl_frame_meta!(PageMeta);

/// Metadata whose drop hook records the pages it ran for.
#[derive(Debug)]
struct Hooked {
    dropped: Arc<Mutex<Vec<Paddr>>>,
}

impl AnyFrameMeta for Hooked {
    fn on_drop(&mut self, paddr: Paddr) {
        self.dropped.lock().unwrap().push(paddr);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The reference count of every page of `seg`, read through frames taken
/// from a clone (which adds one reference to every page while it lives).
fn page_counts<M: ?Sized>(seg: &Segment<M>) -> Vec<u64> {
    seg.clone().into_iter().map(|f| f.reference_count() - 1).collect()
}

/// Creation.
mod creation {
    use super::*;

    #[test]
    fn segment_has_the_requested_size_and_end() {
        let space = space();
        let before = space.phys_stats();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(5).unwrap();
        assert_eq!(seg.size(), 5 * P);
        assert_eq!(seg.nbytes(), 5 * P);
        assert_eq!(seg.nr_pages(), 5);
        assert_eq!(seg.paddr() % P, 0);
        assert_eq!(seg.end_paddr(), seg.paddr() + 5 * P);
        assert!(seg.end_paddr() <= space.max_paddr());
        assert_eq!(page_counts(&seg), vec![1; 5]);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 5);
    }

    #[test]
    fn zero_length_segment_is_rejected() {
        let space = space();
        let before = space.phys_stats();
        assert_eq!(
            FrameAllocOptions::new_in(&space).alloc_segment(0).unwrap_err(),
            FrameAllocError::ZeroLength
        );
        let mut calls = 0;
        let err = FrameAllocOptions::new_in(&space)
            .alloc_segment_with(0, |pa| {
                calls += 1;
                PageMeta { paddr: pa }
            })
            .unwrap_err();
        assert_eq!(err, FrameAllocError::ZeroLength);
        assert_eq!(calls, 0);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn oversized_segment_is_out_of_memory_and_changes_nothing() {
        let space = space();
        let before = space.phys_stats();
        for n in [before.free_pages + 1, before.total_pages * 2, usize::MAX / P, usize::MAX] {
            assert_eq!(
                FrameAllocOptions::new_in(&space).alloc_segment(n).unwrap_err(),
                FrameAllocError::OutOfMemory,
                "{n} pages"
            );
        }
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn the_longest_segment_has_max_segment_pages() {
        // 2 GiB of RAM (committed only where touched) has a free 1 GiB run.
        let space = KernelSpace::new_hosted(MachineConfig::new(2 << 30));
        let before = space.phys_stats();
        assert!(before.free_pages > MAX_SEGMENT_PAGES + 1, "more than the maximum is free");
        let opts = FrameAllocOptions::new_in(&space).zeroed(false);
        assert_eq!(opts.alloc_segment(MAX_SEGMENT_PAGES + 1).unwrap_err(), FrameAllocError::OutOfMemory);
        assert_eq!(space.phys_stats(), before);
        let seg = opts.alloc_segment(MAX_SEGMENT_PAGES).expect("the maximum fits");
        assert_eq!((seg.nr_pages(), seg.paddr() % (MAX_SEGMENT_PAGES * P)), (MAX_SEGMENT_PAGES, 0));
        drop(seg);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn segment_contents_are_zeroed() {
        let space = space();
        // Dirty every free page, so that whatever run comes next was written.
        let dirt = vec![0xcc; P];
        let all: Vec<UFrame> = (0..space.phys_stats().free_pages)
            .map(|_| FrameAllocOptions::new_in(&space).zeroed(false).alloc_frame().unwrap().into())
            .collect();
        all.iter().for_each(|f| f.write_bytes(0, &dirt).unwrap());
        drop(all);
        let again: USegment = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap().into();
        let mut buf = vec![0xffu8; 4 * P];
        again.read_bytes(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        let dirty: USegment =
            FrameAllocOptions::new_in(&space).zeroed(false).alloc_segment(4).unwrap().into();
        dirty.read_bytes(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0xcc), "without zeroing the old bytes show");
    }

    #[test]
    fn segment_metadata_is_made_per_page_from_its_paddr() {
        let space = space();
        let mut seen = Vec::new();
        let seg = FrameAllocOptions::new_in(&space)
            .alloc_segment_with(3, |pa| {
                seen.push(pa);
                PageMeta { paddr: pa }
            })
            .unwrap();
        assert_eq!(seen, vec![seg.paddr(), seg.paddr() + P, seg.paddr() + 2 * P]);
        for i in 0..3 {
            assert_eq!(seg.meta_at(i * P).paddr, seg.paddr() + i * P);
            // Any offset inside the page names that page.
            assert_eq!(seg.meta_at(i * P + 123).paddr, seg.paddr() + i * P);
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn metadata_past_the_end_panics() {
        let space = space();
        let seg =
            FrameAllocOptions::new_in(&space).alloc_segment_with(2, |pa| PageMeta { paddr: pa }).unwrap();
        let _ = seg.meta_at(2 * P);
    }

    #[test]
    fn dropped_segment_returns_every_page() {
        let space = space();
        let before = space.phys_stats();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(8).unwrap();
        let pa = seg.paddr();
        drop(seg);
        assert_eq!(space.phys_stats(), before);
        // The pages wait on this CPU's list of free pages: the next single
        // frames are exactly they, the last freed first.
        let again: Vec<Paddr> =
            (0..8).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into_raw()).collect();
        assert_eq!(again, (0..8).rev().map(|i| pa + i * P).collect::<Vec<_>>());
        for pa in again {
            // SAFETY: each `pa` holds the one reference `into_raw` gave up.
            drop(unsafe { space.frame_from_raw::<()>(pa) });
        }
    }

    #[test]
    fn drop_hook_runs_for_every_page_of_a_dropped_segment() {
        let space = space();
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let seg = FrameAllocOptions::new_in(&space)
            .alloc_segment_with(4, |_| Hooked { dropped: dropped.clone() })
            .unwrap();
        let expected: Vec<_> = (0..4).map(|i| seg.paddr() + i * P).collect();
        drop(seg);
        let mut got = dropped.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(Arc::strong_count(&dropped), 1, "every metadata value was dropped");
    }
}

/// Split.
mod split {
    use super::*;

    #[test]
    fn split_gives_two_adjacent_halves() {
        let space = space();
        let before = space.phys_stats();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let pa = seg.paddr();
        let (left, right) = seg.split(P);
        assert_eq!((left.paddr(), left.size(), left.nr_pages()), (pa, P, 1));
        assert_eq!((right.paddr(), right.size(), right.nr_pages()), (pa + P, 3 * P, 3));
        assert_eq!(left.end_paddr(), right.paddr());
        assert_eq!(page_counts(&left), vec![1]);
        assert_eq!(page_counts(&right), vec![1, 1, 1]);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 4, "splitting allocates nothing");
        drop(left);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 3);
        drop(right);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn split_in_the_middle_gives_equal_halves() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let pa = seg.paddr();
        let (a, b) = seg.split(P);
        assert_eq!((a.paddr(), a.size()), (pa, P));
        assert_eq!((b.paddr(), b.size()), (pa + P, P));
    }

    #[test]
    fn split_keeps_the_metadata_of_each_page() {
        let space = space();
        let seg =
            FrameAllocOptions::new_in(&space).alloc_segment_with(3, |pa| PageMeta { paddr: pa }).unwrap();
        let (a, b) = seg.split(2 * P);
        assert_eq!(a.meta_at(P).paddr, a.paddr() + P);
        assert_eq!(b.meta_at(0).paddr, b.paddr());
    }

    #[test]
    fn try_split_rejects_offsets_not_strictly_inside() {
        let space = space();
        let before = space.phys_stats();
        let mut seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let pa = seg.paddr();
        let size = 2 * P;
        let cases = [
            (0, SegmentError::OutOfBounds { requested: 0..0, size }),
            (size, SegmentError::OutOfBounds { requested: size..size, size }),
            (size + P, SegmentError::OutOfBounds { requested: size + P..size + P, size }),
            (
                usize::MAX & !(P - 1),
                SegmentError::OutOfBounds { requested: usize::MAX & !(P - 1)..usize::MAX & !(P - 1), size },
            ),
            (100, SegmentError::Misaligned),
            (P + 1, SegmentError::Misaligned),
            (size + 1, SegmentError::Misaligned),
            (usize::MAX, SegmentError::Misaligned),
        ];
        for (offset, expected) in cases {
            let (back, err) = seg.try_split(offset).unwrap_err();
            assert_eq!(err, expected, "offset {offset:#x}");
            assert_eq!((back.paddr(), back.size()), (pa, size), "the segment comes back whole");
            seg = back;
        }
        assert_eq!(page_counts(&seg), vec![1, 1]);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 2);
        drop(seg);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn single_page_segment_cannot_be_split() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(1).unwrap();
        let (seg, err) = seg.try_split(P).unwrap_err();
        assert!(matches!(err, SegmentError::OutOfBounds { .. }));
        let (_seg, err) = seg.try_split(0).unwrap_err();
        assert!(matches!(err, SegmentError::OutOfBounds { .. }));
    }

    #[test]
    #[should_panic(expected = "empty or out of bounds")]
    fn split_at_zero_panics() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let _ = seg.split(0);
    }

    #[test]
    #[should_panic(expected = "empty or out of bounds")]
    fn split_at_the_size_panics() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let _ = seg.split(2 * P);
    }

    #[test]
    #[should_panic(expected = "empty or out of bounds")]
    fn split_past_the_end_panics() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let _ = seg.split(8 * P);
    }

    #[test]
    #[should_panic(expected = "must be page aligned")]
    fn misaligned_split_panics() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let _ = seg.split(P / 2);
    }
}

/// Slice.
mod slice {
    use super::*;

    #[test]
    fn slice_has_its_own_reference_to_each_page() {
        let space = space();
        let before = space.phys_stats();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let pa = seg.paddr();
        let slice = seg.slice(&(P..3 * P));
        assert_eq!(slice.paddr(), pa + P);
        assert_eq!(slice.size(), 2 * P);
        assert_eq!(slice.end_paddr(), pa + 3 * P);
        assert_eq!(page_counts(&seg), vec![1, 2, 2, 1]);
        assert_eq!(page_counts(&slice), vec![2, 2]);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 4, "slicing allocates nothing");

        drop(seg);
        assert_eq!(page_counts(&slice), vec![1, 1]);
        assert_eq!(
            space.phys_stats().used_pages,
            before.used_pages + 2,
            "the pages outside the slice are freed"
        );
        drop(slice);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn whole_range_slice_shares_every_page() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap();
        let all = seg.slice(&(0..3 * P));
        assert_eq!((all.paddr(), all.size()), (seg.paddr(), seg.size()));
        assert_eq!(page_counts(&seg), vec![2, 2, 2]);
        let first = seg.slice(&(0..P));
        let last = all.slice(&(2 * P..3 * P));
        assert_eq!(page_counts(&seg), vec![3, 2, 3]);
        assert_eq!(first.paddr(), seg.paddr());
        assert_eq!(last.paddr(), seg.paddr() + 2 * P);
    }

    #[test]
    fn slice_keeps_the_metadata() {
        let space = space();
        let seg =
            FrameAllocOptions::new_in(&space).alloc_segment_with(4, |pa| PageMeta { paddr: pa }).unwrap();
        let slice = seg.slice(&(2 * P..4 * P));
        assert_eq!(slice.meta_at(0).paddr, seg.paddr() + 2 * P);
        assert_eq!(slice.meta_at(P).paddr, seg.paddr() + 3 * P);
    }

    #[test]
    fn drop_hook_waits_for_the_last_slice() {
        let space = space();
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let seg = FrameAllocOptions::new_in(&space)
            .alloc_segment_with(3, |_| Hooked { dropped: dropped.clone() })
            .unwrap();
        let pa = seg.paddr();
        let middle = seg.slice(&(P..2 * P));
        drop(seg);
        let mut got = dropped.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, vec![pa, pa + 2 * P]);
        drop(middle);
        assert_eq!(dropped.lock().unwrap().len(), 3);
        assert_eq!(dropped.lock().unwrap()[2], pa + P);
    }

    #[test]
    fn try_slice_rejects_bad_ranges_and_changes_nothing() {
        let space = space();
        let before = space.phys_stats();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let size = 4 * P;
        let huge = usize::MAX & !(P - 1);
        let oob = |r: std::ops::Range<usize>| SegmentError::OutOfBounds { requested: r, size };
        #[allow(clippy::reversed_empty_ranges, reason = "reversed ranges are what is being tested")]
        let cases = [
            (P..P, oob(P..P)),
            (0..0, oob(0..0)),
            (size..size, oob(size..size)),
            (2 * P..P, oob(2 * P..P)),
            (0..size + P, oob(0..size + P)),
            (size..size + P, oob(size..size + P)),
            (P..huge, oob(P..huge)),
            (huge..huge, oob(huge..huge)),
            (huge - P..huge, oob(huge - P..huge)),
            (1..P, SegmentError::Misaligned),
            (0..P + 1, SegmentError::Misaligned),
            (0..usize::MAX, SegmentError::Misaligned),
        ];
        for (range, expected) in cases {
            assert_eq!(seg.try_slice(&range).unwrap_err(), expected, "range {range:#x?}");
        }
        assert_eq!(page_counts(&seg), vec![1; 4]);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 4);
        drop(seg);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    #[should_panic(expected = "empty or out of bounds")]
    fn slice_past_the_end_panics() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let _ = seg.slice(&(P..3 * P));
    }

    #[test]
    #[should_panic(expected = "empty or out of bounds")]
    fn empty_slice_panics() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let _ = seg.slice(&(P..P));
    }

    #[test]
    #[should_panic(expected = "empty or out of bounds")]
    fn slice_whose_end_overflows_the_paddr_panics() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let _ = seg.slice(&(P..(usize::MAX & !(P - 1))));
    }

    #[test]
    #[should_panic(expected = "must be page aligned")]
    fn misaligned_slice_panics() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let _ = seg.slice(&(10..P));
    }
}

/// Iteration.
mod iteration {
    use super::*;

    #[test]
    fn iteration_yields_each_page_as_a_frame_with_its_metadata() {
        let space = space();
        let before = space.phys_stats();
        let seg =
            FrameAllocOptions::new_in(&space).alloc_segment_with(3, |pa| PageMeta { paddr: pa }).unwrap();
        let pa = seg.paddr();
        let iter = seg.into_iter();
        assert_eq!(iter.len(), 3);
        let frames: Vec<Frame<PageMeta>> = iter.collect();
        assert_eq!(frames.len(), 3);
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(frame.paddr(), pa + i * P);
            assert_eq!(frame.meta().paddr, frame.paddr());
            assert_eq!(frame.reference_count(), 1, "the frame took over the segment's reference");
        }
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 3);
        drop(frames);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn iterator_counts_down_the_remaining_pages() {
        let space = space();
        let mut iter = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap().into_iter();
        assert_eq!(iter.size_hint(), (3, Some(3)));
        let _a = iter.next().unwrap();
        assert_eq!(iter.len(), 2);
        let _b = iter.next().unwrap();
        let _c = iter.next().unwrap();
        assert_eq!(iter.len(), 0);
        assert!(iter.next().is_none());
        assert!(iter.next().is_none());
    }

    #[test]
    fn dropping_a_partly_used_iterator_releases_the_rest() {
        let space = space();
        let before = space.phys_stats();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(4).unwrap();
        let pa = seg.paddr();
        let mut iter = seg.into_iter();
        let first = iter.next().unwrap();
        drop(iter);
        assert_eq!(first.paddr(), pa);
        assert_eq!(first.reference_count(), 1);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 1);
        drop(first);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn iterating_a_clone_shares_the_pages() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let frames: Vec<_> = seg.clone().into_iter().collect();
        for frame in &frames {
            assert_eq!(frame.reference_count(), 2);
        }
        drop(seg);
        for frame in &frames {
            assert_eq!(frame.reference_count(), 1);
        }
    }
}

/// Clone and conversions.
mod clone_and_conversions {
    use super::*;

    #[test]
    fn clone_adds_a_reference_to_every_page() {
        let space = space();
        let before = space.phys_stats();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap();
        let clone = seg.clone();
        assert_eq!((clone.paddr(), clone.size()), (seg.paddr(), seg.size()));
        assert_eq!(page_counts(&seg), vec![2, 2, 2]);
        drop(seg);
        assert_eq!(page_counts(&clone), vec![1, 1, 1]);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 3);
        drop(clone);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn frame_converts_to_a_one_page_segment() {
        let space = space();
        let before = space.phys_stats();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(PageMeta { paddr: 5 }).unwrap();
        let pa = frame.paddr();
        let seg = Segment::from(frame);
        assert_eq!((seg.paddr(), seg.size(), seg.nr_pages()), (pa, P, 1));
        assert_eq!(page_counts(&seg), vec![1]);
        assert_eq!(seg.meta_at(0).paddr, 5);
        let back: Vec<_> = seg.into_iter().collect();
        assert_eq!(back[0].paddr(), pa);
        assert_eq!(back[0].reference_count(), 1);
        drop(back);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn typed_segment_converts_to_dyn_and_back() {
        let space = space();
        let seg =
            FrameAllocOptions::new_in(&space).alloc_segment_with(2, |pa| PageMeta { paddr: pa }).unwrap();
        let pa = seg.paddr();
        let dyn_seg: Segment<dyn AnyFrameMeta> = seg.into();
        assert_eq!((dyn_seg.paddr(), dyn_seg.size()), (pa, 2 * P));
        assert_eq!(page_counts(&dyn_seg), vec![1, 1]);
        assert_eq!(dyn_seg.meta_at(P).as_any().downcast_ref::<PageMeta>().unwrap().paddr, pa + P);

        let back = Segment::<PageMeta>::try_from(dyn_seg).unwrap();
        assert_eq!((back.paddr(), back.size()), (pa, 2 * P));
        assert_eq!(back.meta_at(0).paddr, pa);
        assert_eq!(page_counts(&back), vec![1, 1]);

        let via_method = back.into_dyn();
        assert_eq!(via_method.paddr(), pa);
    }

    #[test]
    fn failed_segment_downcast_gives_the_segment_back() {
        let space = space();
        let before = space.phys_stats();
        let dyn_seg = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap().into_dyn();
        let pa = dyn_seg.paddr();
        let returned = Segment::<PageMeta>::try_from(dyn_seg).unwrap_err();
        assert_eq!((returned.paddr(), returned.size()), (pa, 3 * P));
        assert_eq!(page_counts(&returned), vec![1, 1, 1]);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 3);
        drop(returned);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn untyped_segment_converts_to_usegment() {
        let space = space();
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap();
        let pa = seg.paddr();
        let useg = USegment::from(seg);
        assert_eq!((useg.paddr(), useg.size()), (pa, 2 * P));
        assert_eq!(page_counts(&useg), vec![1, 1]);
        let frames: Vec<UFrame> = useg.into_iter().collect();
        assert_eq!(frames[1].paddr(), pa + P);
        frames[1].write_bytes(0, b"ok").unwrap();
    }

    #[test]
    fn usegment_converts_to_dyn_and_down_to_its_type() {
        let space = space();
        let useg: USegment = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap().into();
        let pa = useg.paddr();
        let dyn_seg = Segment::<dyn AnyFrameMeta>::from(useg);
        assert_eq!((dyn_seg.paddr(), dyn_seg.size()), (pa, 2 * P));
        assert_eq!(page_counts(&dyn_seg), vec![1, 1]);
        let unit = Segment::<()>::try_from(dyn_seg).unwrap();
        assert_eq!((unit.paddr(), unit.size()), (pa, 2 * P));
        assert_eq!(page_counts(&unit), vec![1, 1]);
    }

    #[test]
    fn dyn_segment_becomes_usegment_only_when_untyped() {
        let space = space();
        let untyped = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap().into_dyn();
        let pa = untyped.paddr();
        let useg = USegment::try_from(untyped).unwrap();
        assert_eq!((useg.paddr(), useg.size()), (pa, 2 * P));

        let typed =
            FrameAllocOptions::new_in(&space).alloc_segment_with(2, |pa| PageMeta { paddr: pa }).unwrap();
        let typed_pa = typed.paddr();
        let returned = USegment::try_from(typed.into_dyn()).unwrap_err();
        assert_eq!((returned.paddr(), returned.size()), (typed_pa, 2 * P));
        assert_eq!(page_counts(&returned), vec![1, 1]);
        assert_eq!(Segment::<PageMeta>::try_from(returned).unwrap().meta_at(0).paddr, typed_pa);
    }

    #[test]
    fn segment_conversions_keep_drop_hooks() {
        let space = space();
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let seg = FrameAllocOptions::new_in(&space)
            .alloc_segment_with(2, |_| Hooked { dropped: dropped.clone() })
            .unwrap();
        let dyn_seg: Segment<dyn AnyFrameMeta> = seg.into();
        drop(dyn_seg);
        assert_eq!(dropped.lock().unwrap().len(), 2);
    }
}

/// Byte access.
mod byte_access {
    use super::*;

    #[test]
    fn segment_bytes_round_trip_across_page_boundaries() {
        let space = space();
        let seg: USegment = FrameAllocOptions::new_in(&space).alloc_segment(3).unwrap().into();
        let data: Vec<u8> = (0..200u8).collect();
        // Straddles the boundary between page 0 and page 1.
        seg.write_bytes(P - 100, &data).unwrap();
        let mut back = vec![0u8; 200];
        seg.read_bytes(P - 100, &mut back).unwrap();
        assert_eq!(back, data);

        // A run spanning all three pages, up to the very end.
        let big: Vec<u8> = (0..2 * P + 5).map(|i| (i % 251) as u8).collect();
        seg.write_bytes(P - 5, &big).unwrap();
        let mut big_back = vec![0u8; big.len()];
        seg.read_bytes(P - 5, &mut big_back).unwrap();
        assert_eq!(big_back, big);

        // The bytes landed in the right physical pages.
        let frames: Vec<UFrame> = seg.clone().into_iter().collect();
        let mut last5 = [0u8; 5];
        frames[0].read_bytes(P - 5, &mut last5).unwrap();
        assert_eq!(&last5, &big[..5]);
        let mut first = [0u8; 1];
        frames[1].read_bytes(0, &mut first).unwrap();
        assert_eq!(first[0], big[5]);
        frames[2].read_bytes(4, &mut first).unwrap();
        // Segment offset 2P + 4 is index 2P + 4 - (P - 5) of `big`.
        assert_eq!(first[0], big[P + 9]);
    }

    #[test]
    fn out_of_bounds_segment_access_is_rejected() {
        let space = space();
        let seg: USegment = FrameAllocOptions::new_in(&space).alloc_segment(2).unwrap().into();
        let size = 2 * P;
        let oob = |offset, len| FrameAccessError::OutOfBounds { offset, len, size };
        let mut one = [0u8; 1];
        let mut sixteen = [0u8; 16];
        assert_eq!(seg.read_bytes(size, &mut one), Err(oob(size, 1)));
        assert_eq!(seg.read_bytes(size - 8, &mut sixteen), Err(oob(size - 8, 16)));
        assert_eq!(seg.read_bytes(usize::MAX, &mut one), Err(oob(usize::MAX, 1)));
        assert_eq!(seg.write_bytes(size - 8, &[1; 16]), Err(oob(size - 8, 16)));
        assert_eq!(seg.write_bytes(usize::MAX - 7, &[1; 16]), Err(oob(usize::MAX - 7, 16)));
        let mut tail = [0xffu8; 8];
        seg.read_bytes(size - 8, &mut tail).unwrap();
        assert_eq!(tail, [0; 8], "a rejected write writes nothing");
        seg.read_bytes(size, &mut []).unwrap();
    }

    #[test]
    fn drop_hooks_run_exactly_once_per_page_across_split_slice_and_iteration() {
        let space = space();
        let before = space.phys_stats();
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let seg = FrameAllocOptions::new_in(&space)
            .alloc_segment_with(6, |_| Hooked { dropped: dropped.clone() })
            .unwrap();
        let (a, b) = seg.split(2 * P);
        let shared = b.slice(&(P..3 * P));
        let frames: Vec<_> = a.into_iter().collect();
        drop(b);
        assert_eq!(dropped.lock().unwrap().len(), 2, "pages 2 and 5 had no other holder");
        drop(frames);
        drop(shared);
        let mut got = dropped.lock().unwrap().clone();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 6);
        assert_eq!(dropped.lock().unwrap().len(), 6);
        assert_eq!(space.phys_stats(), before);
    }

    /// A caller-supplied callback that panics while a segment is made or
    /// converted (the metadata constructor of `alloc_segment_with`, a page's
    /// `as_untyped`) leaks nothing and leaves the space consistent.
    mod panicking_callbacks {
        use kvirt::frame::AnyUFrameMeta;
        use kvirt::spec::Inv;

        use super::*;

        /// Metadata whose `as_untyped` panics.
        #[derive(Debug)]
        struct PanickingAsUntyped;

        impl AnyFrameMeta for PanickingAsUntyped {
            fn as_untyped(&self) -> Option<&dyn AnyUFrameMeta> {
                panic!("as_untyped panics");
            }

            fn as_any(&self) -> &dyn Any {
                self
            }
        }

        #[test]
        fn a_metadata_constructor_panicking_at_any_page_leaks_nothing() {
            let space = space();
            let before = space.phys_stats();
            // 8 pages come from one buddy block; 5 from a block split on the
            // way.
            for nr_pages in [8, 5] {
                for panic_at in 0..nr_pages {
                    let dropped = Arc::new(Mutex::new(Vec::new()));
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut made = 0;
                        FrameAllocOptions::new_in(&space).alloc_segment_with(nr_pages, |_| {
                            assert_ne!(made, panic_at, "the metadata constructor panics");
                            made += 1;
                            Hooked { dropped: dropped.clone() }
                        })
                    }));
                    assert!(result.is_err());
                    assert_eq!(dropped.lock().unwrap().len(), panic_at, "the pages built were dropped");
                    assert_eq!(space.phys_stats(), before, "{nr_pages} pages, panic at {panic_at}");
                    assert_eq!(space.check(), Ok(()), "{nr_pages} pages, panic at {panic_at}");
                }
            }
            let seg = FrameAllocOptions::new_in(&space).alloc_segment(8).unwrap();
            assert_eq!(seg.nr_pages(), 8);
        }

        #[test]
        fn an_as_untyped_panicking_in_a_conversion_drops_only_the_converted_segment() {
            let space = space();
            let before = space.phys_stats();
            let seg =
                FrameAllocOptions::new_in(&space).alloc_segment_with(3, |_| PanickingAsUntyped).unwrap();
            let kept = seg.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                USegment::try_from(seg.into_dyn()).map(drop).map_err(drop)
            }));
            assert!(result.is_err());
            assert_eq!(page_counts(&kept), [1, 1, 1], "the converted segment's references went with it");
            assert_eq!(space.check(), Ok(()));
            drop(kept);
            assert_eq!(space.phys_stats(), before);
        }
    }
}
