//! The unsafe core under Miri: frame metadata slots and handles, page-table
//! node memory and cursors, and kernel virtual areas.
//!
//! `cargo xtask miri` runs this file under Miri with strict provenance;
//! `cargo test` runs it as an ordinary test file. Each test covers one part
//! of the unsafe code end to end on its own small kernel space, and checks
//! that every page and page-table node comes back, so Miri sees every
//! reference count reach zero and every slot torn down.
//!
//! Written for Miri's speed (a few hundred times slower than a native debug
//! build):
//!
//! * Spaces are 4 MiB machines. The cost of a space is its kernel page
//!   table (the 256 second-level nodes every kernel table pre-allocates),
//!   not its RAM size.
//! * Cursor tests use user page tables (an empty one is just its root) and
//!   call `check_inv` only on those: a kernel table's invariant check walks
//!   all 256 pre-allocated nodes entry by entry.
//! * The spaces run on `CountingRcuPlatform` (`tests/support/counting_rcu.rs`),
//!   a platform over the same simulated machine as the hosted default but
//!   with kvirt's own `CountingRcu` (the one the demo kernel uses) instead
//!   of the hosted platform's RCU, whose `membarrier` system call Miri
//!   cannot make (it falls back to fences there; its own tests run under
//!   Miri separately, see `cargo xtask miri`). With `CountingRcu`, a
//!   callback runs as soon as no section is open, which keeps each test's
//!   end-of-test accounting exact and fast. The whole run is checked with
//!   strict provenance, Stacked Borrows and the leak check.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kvirt::frame::{
    AnyFrameMeta, Frame, FrameAccessError, FrameAllocOptions, PhysStats, Segment, UFrame, USegment,
    UniqueFrame,
};
use kvirt::kspace::{KVirtArea, KernelSpace, MappedItemRef};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{MappedItem, PageTable, PageTableFrag, UserPtConfig};
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::sim::{Machine, MachineConfig};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

const P: usize = PAGE_SIZE;
const SIZE_2M: usize = 2 << 20;
/// RAM of every test machine.
const RAM: usize = 4 << 20;
/// A 1 GiB-aligned user address for page-table tests.
const UVA: Vaddr = 0x4000_0000;
/// Untracked physical memory for page-table tests, 1 GiB aligned, above RAM
/// (the page table itself does not check trackedness).
const UPA: Paddr = 0x1_0000_0000;
/// The device window of every test machine: the first 1 GiB boundary above
/// its RAM.
const DEVICE_WINDOW: Paddr = 1 << 30;

mod support;
use support::counting_rcu;

/// A fresh kernel space over a 4 MiB, 2-CPU simulated machine, on the
/// counting-RCU platform (see the module docs).
fn space() -> KernelSpace {
    let machine = Arc::new(Machine::new(MachineConfig::new(RAM).cpus(2)));
    assert_eq!(machine.device_window().start, DEVICE_WINDOW as u64);
    counting_rcu::space_on(machine)
}

/// The physical memory counters once deferred frees have run.
fn stats(space: &KernelSpace) -> PhysStats {
    space.synchronize();
    space.phys_stats()
}

/// `n` new frames of `space`, as handles of any metadata.
fn dyn_frames(space: &KernelSpace, n: usize) -> Vec<Frame<dyn AnyFrameMeta>> {
    FrameAllocOptions::new_in(space)
        .alloc_segment(n)
        .expect("segment")
        .into_iter()
        .map(Frame::into_dyn)
        .collect()
}

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

fn user_rw() -> PageProperty {
    PageProperty::new_user(PageFlags::RW, CachePolicy::Writeback)
}

/// Typed metadata without a drop hook.
#[derive(Debug)]
struct Counter {
    value: u64,
}
kvirt::impl_frame_meta!(Counter);

/// Typed metadata whose drop hook and destructor count their runs.
#[derive(Debug)]
struct Hooked {
    hooks: Arc<AtomicUsize>,
    last_paddr: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
}

impl AnyFrameMeta for Hooked {
    fn on_drop(&mut self, paddr: Paddr) {
        self.hooks.fetch_add(1, Ordering::SeqCst);
        self.last_paddr.store(paddr, Ordering::SeqCst);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for Hooked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct HookCounts {
    hooks: Arc<AtomicUsize>,
    last_paddr: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
}

impl HookCounts {
    fn meta(&self) -> Hooked {
        Hooked { hooks: self.hooks.clone(), last_paddr: self.last_paddr.clone(), drops: self.drops.clone() }
    }

    fn runs(&self) -> (usize, usize) {
        (self.hooks.load(Ordering::SeqCst), self.drops.load(Ordering::SeqCst))
    }
}

#[test]
fn frame_handles_count_references_and_tear_down_metadata_once() {
    let space = space();
    let before = stats(&space);
    let counts = HookCounts::default();
    let opts = FrameAllocOptions::new_in(&space);

    let frame = opts.alloc_frame_with(counts.meta()).expect("frame");
    let pa = frame.paddr();
    assert_eq!(frame.reference_count(), 1);
    let clone = frame.clone();
    assert_eq!(frame.reference_count(), 2);
    let borrowed = frame.borrow();
    let borrowed_again = borrowed.clone();
    assert_eq!((borrowed_again.paddr(), frame.reference_count()), (pa, 2));
    drop((borrowed, borrowed_again, clone));
    assert_eq!(frame.reference_count(), 1);

    // Up-casts and down-casts read the slot's vtable and type id.
    let any: Frame<dyn AnyFrameMeta> = frame.into();
    assert!(any.meta().as_untyped().is_none());
    let any = Frame::<Counter>::try_from(any).expect_err("not a Counter");
    let any = UFrame::try_from(any).expect_err("not untyped");
    let typed = Frame::<Hooked>::try_from(any).expect("a Hooked frame");
    assert_eq!(typed.meta().hooks.load(Ordering::SeqCst), 0);
    assert_eq!(counts.runs(), (0, 0));
    drop(typed);
    assert_eq!(counts.runs(), (1, 1), "the hook and the destructor run once");
    assert_eq!(counts.last_paddr.load(Ordering::SeqCst), pa);

    // The slot is free again: the page comes back with new metadata.
    let counter = opts.alloc_frame_with(Counter { value: 7 }).expect("frame");
    assert_eq!(counter.paddr(), pa, "freed pages are reused first");
    assert_eq!(counter.meta().value, 7);
    let any = counter.into_dyn();
    assert_eq!(Frame::<Counter>::try_from(any).expect("a Counter").meta().value, 7);
    assert_eq!(stats(&space), before);
}

#[test]
fn unique_frames_write_their_metadata_and_tear_down_once() {
    let space = space();
    let before = stats(&space);
    let opts = FrameAllocOptions::new_in(&space);

    // Written through `meta_mut`, read through shared handles.
    let mut unique = opts.alloc_unique_frame_with(Counter { value: 1 }).expect("frame");
    unique.meta_mut().value += 1;
    let frame = Frame::from(unique);
    let clone = frame.clone();
    let frame = UniqueFrame::try_from(frame).expect_err("a clone exists");
    assert_eq!(clone.meta().value, 2);
    drop(clone);
    let mut unique = UniqueFrame::try_from(frame).expect("the only reference");
    assert_eq!(unique.reference_count(), 1);
    unique.meta_mut().value = 3;
    let any = Frame::from(unique).into_dyn();
    assert_eq!(Frame::<Counter>::try_from(any).expect("a Counter frame").meta().value, 3);

    // Dropped on another thread: the hook and the destructor run once.
    let counts = HookCounts::default();
    let hooked = opts.alloc_unique_frame_with(counts.meta()).expect("frame");
    let pa = hooked.paddr();
    std::thread::spawn(move || drop(hooked)).join().expect("the drop does not panic");
    assert_eq!(counts.runs(), (1, 1));
    assert_eq!(counts.last_paddr.load(Ordering::SeqCst), pa);
    assert_eq!(stats(&space), before);
}

#[test]
fn untyped_frames_give_byte_access_and_round_trip_through_raw() {
    let space = space();
    let before = stats(&space);
    let frame: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().expect("frame").into();
    let mut buf = [0xffu8; 24];
    frame.read_bytes(P - buf.len(), &mut buf).expect("in bounds");
    assert_eq!(buf, [0; 24], "frames are zeroed");

    // Unaligned, crossing 8-byte words, through two handles.
    let other = frame.clone();
    frame.write_bytes(5, b"kvirt under miri").expect("in bounds");
    let mut read = [0u8; 16];
    other.read_bytes(5, &mut read).expect("in bounds");
    assert_eq!(&read, b"kvirt under miri");
    assert_eq!(
        other.write_bytes(P - 1, b"xy"),
        Err(FrameAccessError::OutOfBounds { offset: P - 1, len: 2, size: P })
    );
    assert!(other.read_bytes(usize::MAX, &mut [0u8; 2]).is_err(), "offset + len overflows");
    drop(other);

    // A raw round trip keeps the one reference.
    let frame: Frame<dyn AnyFrameMeta> = frame.into();
    let frame = Frame::<()>::try_from(frame).expect("() metadata");
    let pa = frame.into_raw();
    // SAFETY: `pa` came from `into_raw` on a `Frame<()>` of `space`, once.
    let frame = unsafe { space.frame_from_raw::<()>(pa) };
    assert_eq!((frame.paddr(), frame.reference_count()), (pa, 1));

    // Without zeroing, the reused page shows what was written before.
    let frame = UFrame::from(frame);
    frame.fill(0xa5);
    drop(frame);
    let stale: UFrame = FrameAllocOptions::new_in(&space).zeroed(false).alloc_frame().expect("frame").into();
    assert_eq!(stale.paddr(), pa);
    let mut byte = [0u8; 1];
    stale.read_bytes(P - 1, &mut byte).expect("in bounds");
    assert_eq!(byte, [0xa5]);
    drop(stale);
    assert_eq!(stats(&space), before);
}

#[test]
fn segments_share_split_slice_iterate_and_convert() {
    let space = space();
    let before = stats(&space);
    let opts = FrameAllocOptions::new_in(&space);

    let seg = opts.alloc_segment_with(4, |pa| Counter { value: pa as u64 }).expect("segment");
    let start = seg.paddr();
    for i in 0..4 {
        assert_eq!(seg.meta_at(i * P).value, (start + i * P) as u64);
    }
    let clone = seg.clone();
    let middle = seg.slice(&(P..3 * P));
    assert_eq!(counts(&seg), [2, 3, 3, 2]);
    drop(clone);
    let (left, right) = seg.split(2 * P);
    assert_eq!((left.paddr(), right.paddr(), right.nr_pages()), (start, start + 2 * P, 2));
    drop(left);
    assert_eq!(counts(&middle), [1, 2]);

    // Iteration hands each page's reference to a frame; dropping a partly
    // used iterator releases the rest.
    let mut frames = right.into_iter();
    let third = frames.next().expect("a frame");
    assert_eq!((third.paddr(), third.meta().value), (start + 2 * P, (start + 2 * P) as u64));
    drop(frames);
    drop((third, middle));
    assert_eq!(stats(&space), before);

    // Dynamic and untyped segments, with byte access across a page boundary.
    let dynamic: Segment<dyn AnyFrameMeta> = opts.alloc_segment(2).expect("segment").into();
    let dynamic = Segment::<Counter>::try_from(dynamic).expect_err("not Counter metadata");
    let bytes = USegment::try_from(dynamic).expect("untyped metadata");
    bytes.write_bytes(P - 3, b"across").expect("in bounds");
    let mut read = [0u8; 6];
    bytes.read_bytes(P - 3, &mut read).expect("in bounds");
    assert_eq!(&read, b"across");
    assert!(bytes.read_bytes(2 * P - 1, &mut read).is_err());
    drop(bytes);
    let single = Segment::from(opts.alloc_frame().expect("frame"));
    assert_eq!(single.nr_pages(), 1);
    drop(single);

    // A metadata constructor that panics leaks nothing: the frames built so
    // far are torn down and the rest of the run goes back.
    let hooks = HookCounts::default();
    let built = AtomicUsize::new(0);
    let result = catch_unwind(AssertUnwindSafe(|| {
        opts.alloc_segment_with(3, |_| {
            assert!(built.fetch_add(1, Ordering::SeqCst) < 2, "the third page's metadata fails");
            hooks.meta()
        })
    }));
    assert!(result.is_err());
    assert_eq!(hooks.runs(), (2, 2));
    assert_eq!(stats(&space), before);
}

/// The reference count of each page of `seg`, not counting the reference
/// that reading it takes (through a clone of the segment).
fn counts(seg: &Segment<Counter>) -> Vec<u64> {
    seg.clone().into_iter().map(|frame| frame.reference_count() - 1).collect()
}

/// What a user table maps at `va`, through a fresh read-only cursor:
/// `(entry range, paddr, level, property, tracked)`.
fn query(
    pt: &PageTable<UserPtConfig>,
    va: Vaddr,
) -> Option<(std::ops::Range<Vaddr>, Paddr, u8, PageProperty, bool)> {
    let mut cursor = pt.cursor(&(va..va + P)).expect("cursor");
    let (range, item) = cursor.query().expect("inside the range");
    item.map(|item| {
        let tracked = matches!(item, MappedItemRef::Tracked(..));
        (range, item.paddr(), item.level(), item.prop(), tracked)
    })
}

#[test]
fn cursors_map_query_and_protect_splitting_huge_pages() {
    let space = space();
    let before = stats(&space);
    let pt = PageTable::<UserPtConfig>::empty_in(&space).expect("page table");
    let frame = FrameAllocOptions::new_in(&space).alloc_frame().expect("frame").into_dyn();
    let frame_pa = frame.paddr();

    let mut cursor = pt.cursor_mut(&(UVA..UVA + 2 * SIZE_2M)).expect("cursor");
    cursor.map(MappedItem::Tracked(frame.clone(), user_rw()));
    cursor.jump(UVA + SIZE_2M).expect("inside");
    cursor.map(MappedItem::Untracked(UPA, 2, user_rw()));
    cursor.jump(UVA + P).expect("inside");
    assert_eq!(cursor.find_next(2 * SIZE_2M - P), Some(UVA + SIZE_2M));
    let over = cursor.try_map(MappedItem::Untracked(UPA, 1, user_rw())).expect_err("already mapped");
    assert!(matches!(over.item, MappedItem::Untracked(UPA, 1, _)));
    drop(cursor);
    assert_eq!(frame.reference_count(), 2, "the entry owns a reference");
    assert_eq!(query(&pt, UVA), Some((UVA..UVA + P, frame_pa, 1, user_rw(), true)));
    let huge = UVA + SIZE_2M..UVA + 2 * SIZE_2M;
    assert_eq!(query(&pt, UVA + SIZE_2M + 5 * P), Some((huge.clone(), UPA, 2, user_rw(), false)));
    assert_eq!(query(&pt, UVA + 7 * P), None);

    // Protecting one 4 KiB page of the huge page splits it into a new node.
    let nodes = space.phys_stats().page_table_pages;
    let target = UVA + SIZE_2M + 5 * P;
    let mut cursor = pt.cursor_mut(&(target..target + P)).expect("cursor");
    let changed = cursor.protect_next(P, &mut |prop| prop.flags = PageFlags::R);
    assert_eq!(changed, Some(target..target + P));
    drop(cursor);
    assert_eq!(space.phys_stats().page_table_pages, nodes + 1);
    let mut ro = user_rw();
    ro.flags = PageFlags::R;
    assert_eq!(query(&pt, target), Some((target..target + P, UPA + 5 * P, 1, ro, false)));
    assert_eq!(query(&pt, target + P), Some((target + P..target + 2 * P, UPA + 6 * P, 1, user_rw(), false)));
    assert_eq!(pt.check_inv(), Ok(5), "root, level 3, level 2 and two level-1 nodes");

    drop(pt);
    assert_eq!(frame.reference_count(), 1, "dropping the table released the entry's reference");
    drop(frame);
    assert_eq!(stats(&space), before);
}

#[test]
fn cursors_take_mappings_and_reclaim_emptied_nodes() {
    let space = space();
    let before = stats(&space);
    let pt = PageTable::<UserPtConfig>::empty_in(&space).expect("page table");
    let nodes = space.phys_stats().page_table_pages;
    let frames: Vec<_> = dyn_frames(&space, 3);

    let range = UVA..UVA + 2 * SIZE_2M;
    let mut cursor = pt.cursor_mut(&range).expect("cursor");
    for frame in &frames {
        cursor.map(MappedItem::Tracked(frame.clone(), user_rw()));
    }
    cursor.jump(UVA + SIZE_2M).expect("inside");
    cursor.map(MappedItem::Untracked(UPA, 2, user_rw()));
    drop(cursor);
    assert_eq!(space.phys_stats().page_table_pages, nodes + 3, "a level-3, a level-2 and a level-1 node");

    // Leaf by leaf, within a cursor whose guard is the level-2 node.
    let mut cursor = pt.cursor_mut(&range).expect("cursor");
    let frag = cursor.take_next(P).expect("a page");
    match &frag {
        PageTableFrag::Mapped { va, item: MappedItem::Tracked(frame, prop) } => {
            assert_eq!((*va, frame.paddr(), *prop), (UVA, frames[0].paddr(), user_rw()));
            assert_eq!(frame.reference_count(), 2, "the entry's reference moved to the fragment");
        }
        other => panic!("expected the first frame, got {other:?}"),
    }
    flush_and_drop(&space, frag);
    // 4 KiB out of the huge page: it is split, the rest stays mapped.
    cursor.jump(UVA + SIZE_2M + P).expect("inside");
    let frag = cursor.take_next(P).expect("a page");
    assert!(matches!(&frag, PageTableFrag::Mapped { va, item: MappedItem::Untracked(pa, 1, _) }
        if *va == UVA + SIZE_2M + P && *pa == UPA + P));
    flush_and_drop(&space, frag);
    assert_eq!(space.phys_stats().page_table_pages, nodes + 4, "the split added a level-1 node");
    // Taking the last two frames empties their level-1 node, which is
    // detached at once and freed when the cursor is dropped.
    cursor.jump(UVA + P).expect("inside");
    for _ in 0..2 {
        let frag = cursor.take_next(P).expect("a page");
        flush_and_drop(&space, frag);
    }
    assert!(cursor.take_next(SIZE_2M - 3 * P).is_none());
    drop(cursor);
    assert_eq!(stats(&space).page_table_pages, nodes + 3);
    assert_eq!(pt.check_inv(), Ok(4), "root, level 3, level 2 and the split level-1 node");
    assert_eq!(query(&pt, UVA + SIZE_2M).map(|q| q.1), Some(UPA));
    assert_eq!(query(&pt, UVA + SIZE_2M + 2 * P).map(|q| q.1), Some(UPA + 2 * P));

    // A whole sub-tree at once. Its parents are emptied in turn, and the
    // cursor's drop detaches them up to the root.
    let mut cursor = pt.cursor_mut(&(UVA + SIZE_2M..UVA + 2 * SIZE_2M)).expect("cursor");
    let frag = cursor.take_next(SIZE_2M).expect("a sub-tree");
    match &frag {
        PageTableFrag::StrayPageTable { va, len, num_frames, .. } => {
            assert_eq!((*va, *len, *num_frames), (UVA + SIZE_2M, SIZE_2M, 511));
        }
        other => panic!("expected a detached node, got {other:?}"),
    }
    flush_and_drop(&space, frag);
    drop(cursor);
    assert_eq!(stats(&space).page_table_pages, nodes, "every emptied node was reclaimed");
    assert_eq!(pt.check_inv(), Ok(1));
    assert!(frames.iter().all(|f| f.reference_count() == 1));
    drop((pt, frames));
    assert_eq!(stats(&space), before);
}

#[test]
fn a_fill_from_a_drain_or_a_panicking_iterator_leaves_the_iterator_whole() {
    let space = space();
    let before = stats(&space);
    let pt = PageTable::<UserPtConfig>::empty_in(&space).expect("page table");
    let mut frames: Vec<Frame<dyn AnyFrameMeta>> = dyn_frames(&space, 6);
    let paddrs: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
    let range = UVA..UVA + 8 * P;
    // A map that runs out of room from a drain lent by reference (the fill
    // moves the reference): the drain keeps what it did not take.
    let mut cursor = pt.cursor_mut(&(UVA..UVA + 3 * P)).expect("cursor");
    cursor.map(MappedItem::Untracked(UPA, 1, user_rw()));
    let mut drain = frames.drain(..4);
    let refused =
        cursor.try_map_frames(drain.by_ref(), user_rw()).expect_err("two pages are free, not three");
    assert_eq!(drain.len(), 1, "two mapped, one handed back, one left");
    drop((drain, refused, cursor));
    // A drain given by value (the fill moves the drain itself in and out).
    let mut cursor = pt.cursor_mut(&(UVA + 3 * P..UVA + 5 * P)).expect("cursor");
    cursor.try_map_frames(frames.drain(..), user_rw()).expect("two free pages");
    drop(cursor);
    assert!(frames.is_empty());
    for (page, i) in [(1, 0), (2, 1), (3, 4), (4, 5)] {
        assert_eq!(query(&pt, UVA + page * P).map(|q| q.1), Some(paddrs[i]));
    }
    // A drain that panics at its third frame, given by value: two frames
    // stay mapped, and the drain goes back whole and is dropped as the
    // panic goes on.
    let mut more: Vec<_> = dyn_frames(&space, 3);
    let more_paddrs: Vec<Paddr> = more.iter().map(Frame::paddr).collect();
    let mut cursor = pt.cursor_mut(&(UVA + 5 * P..range.end)).expect("cursor");
    let mut yielded = 0;
    let panicking = more.drain(..).inspect(|_| {
        yielded += 1;
        assert!(yielded <= 2, "the third frame");
    });
    assert!(catch_unwind(AssertUnwindSafe(|| cursor.try_map_frames(panicking, user_rw()))).is_err());
    drop(cursor);
    assert!(more.is_empty());
    assert_eq!(query(&pt, UVA + 5 * P).map(|q| q.1), Some(more_paddrs[0]));
    assert_eq!(query(&pt, UVA + 6 * P).map(|q| q.1), Some(more_paddrs[1]));
    assert_eq!(query(&pt, UVA + 7 * P), None);
    assert_eq!(pt.check_inv(), Ok(4));
    drop(pt);
    space.synchronize();
    assert_eq!(stats(&space), before, "every frame and node came back");
}

#[test]
fn single_pages_map_and_take_without_a_cursor() {
    let space = space();
    let before = stats(&space);
    let pt = PageTable::<UserPtConfig>::empty_in(&space).expect("page table");
    let nodes = space.phys_stats().page_table_pages;
    let frames: Vec<_> = FrameAllocOptions::new_in(&space)
        .alloc_segment(2)
        .expect("segment")
        .into_iter()
        .map(Frame::into_dyn)
        .collect();

    // The first page through a cursor (no leaf yet), the second into the
    // leaf it made, a third refused with its frame handed back.
    pt.try_map_frame(UVA, frames[0].clone(), user_rw()).expect("map");
    pt.try_map_frame(UVA + P, frames[1].clone(), user_rw()).expect("map");
    let e = pt.try_map_frame(UVA + P, frames[0].clone(), user_rw()).expect_err("mapped already");
    assert!(matches!(&e.item, MappedItem::Tracked(f, _) if f.paddr() == frames[0].paddr()));
    drop(e);
    assert_eq!(query(&pt, UVA + P).map(|q| q.1), Some(frames[1].paddr()));
    assert_eq!(frames.iter().map(|f| f.reference_count()).collect::<Vec<_>>(), [2, 2]);

    // Taken in the leaf, then the leaf's last page: the emptied nodes are
    // reclaimed up to the root.
    for (va, frame) in [(UVA, &frames[0]), (UVA + P, &frames[1])] {
        let frag = pt.try_take_page(va).expect("a user page").expect("mapped");
        assert!(matches!(&frag, PageTableFrag::Mapped { item: MappedItem::Tracked(f, _), .. } if f == frame));
        flush_and_drop(&space, frag);
    }
    assert!(pt.try_take_page(UVA).expect("a user page").is_none());
    assert_eq!(stats(&space).page_table_pages, nodes, "every emptied node was reclaimed");
    assert_eq!(pt.check_inv(), Ok(1));
    assert!(frames.iter().all(|f| f.reference_count() == 1));
    drop((pt, frames));
    assert_eq!(stats(&space), before);
}

/// Flushes what a fragment mapped from every TLB, then releases it.
fn flush_and_drop(space: &KernelSpace, frag: PageTableFrag) {
    space.platform().flush_tlb(TlbFlushOp::Range(frag.va_range()), TlbScope::AllCpus);
    drop(frag);
}

/// Lock-free walks of a user table in one read-side section while cursors
/// change it: a mapping made after the section opened (a root entry
/// written since) is seen, and the nodes a take detaches wait for the
/// section before they are freed.
#[test]
fn a_read_section_walks_a_user_table_while_cursors_change_it() {
    let space = space();
    let before = stats(&space);
    let pt = PageTable::<UserPtConfig>::empty_in(&space).expect("page table");
    let nodes = space.phys_stats().page_table_pages;
    let section = pt.read_section();
    assert_eq!(section.translate_addr(UVA), None);
    let mut cursor = pt.cursor_mut(&(UVA..UVA + SIZE_2M)).expect("cursor");
    cursor.map(MappedItem::Untracked(UPA, 1, user_rw()));
    drop(cursor);
    assert_eq!(section.translate(UVA + 9), Some((UPA + 9, user_rw())), "mapped after the section opened");
    assert_eq!(section.translate_addr(UVA + P), None);

    let mut cursor = pt.cursor_mut(&(UVA..UVA + SIZE_2M)).expect("cursor");
    let frag = cursor.take_next(SIZE_2M).expect("the mapping");
    flush_and_drop(&space, frag);
    drop(cursor);
    assert_eq!(section.translate_addr(UVA), None, "a walk in the section sees the take");
    assert_eq!(space.phys_stats().page_table_pages, nodes + 3, "the detached nodes wait for the section");
    drop(section);
    assert_eq!(stats(&space).page_table_pages, nodes, "and are freed once it ends");
    assert_eq!(pt.check_inv(), Ok(1));
    drop(pt);
    assert_eq!(stats(&space), before);
}

#[test]
fn kernel_virtual_areas_map_query_split_and_release() {
    let space = space();
    let before = stats(&space);
    let vmalloc_before = space.vmalloc_stats();
    let frames = FrameAllocOptions::new_in(&space).alloc_segment(3).expect("segment");
    let first = frames.paddr();

    let area = space.try_map_frames(5 * P, P, frames, rw()).expect("area");
    let start = area.start();
    assert!(area.query(start).is_none());
    match area.query(start + 2 * P + 9) {
        Some(MappedItemRef::Tracked(frame, prop)) => {
            assert_eq!((frame.paddr(), prop, frame.reference_count()), (first + P, rw(), 1));
        }
        other => panic!("expected a tracked frame, got {other:?}"),
    }
    area.write_bytes(2 * P - 2, b"area").expect("mapped");
    let mut read = [0u8; 4];
    area.read_bytes(2 * P - 2, &mut read).expect("mapped");
    assert_eq!(&read, b"area");

    let (left, right) = area.split(2 * P);
    assert_eq!(left.query(start + P).map(|i| i.paddr()), Some(first));
    assert_eq!(right.query(start + 2 * P).map(|i| i.paddr()), Some(first + P));
    drop(left);
    assert_eq!(right.query(start + 3 * P).map(|i| i.paddr()), Some(first + 2 * P));
    drop(right);
    assert_eq!(stats(&space), before, "frames and page-table nodes are back");
    assert_eq!(space.vmalloc_stats(), vmalloc_before);

    // Untracked memory: reserved low RAM in 4 KiB pages, and 2 MiB of the
    // device window in one huge page that a split breaks up.
    // SAFETY: the low megabyte of the simulated machine is reserved RAM that
    // no Rust object owns.
    let low = unsafe { space.try_map_untracked_frames(2 * P, 0, 0x8000..0xa000, rw()) }.expect("area");
    low.write_bytes(P - 1, b"ab").expect("RAM");
    let mut read = [0u8; 2];
    low.read_bytes(P - 1, &mut read).expect("RAM");
    assert_eq!(&read, b"ab");
    let window = DEVICE_WINDOW;
    // SAFETY: the device window is not RAM; nothing is read through it here.
    let device =
        unsafe { space.try_map_untracked_frames(SIZE_2M, 0, window..window + SIZE_2M, rw()) }.expect("area");
    assert!(
        matches!(device.query(device.start() + 3 * P), Some(MappedItemRef::Untracked(pa, 2, _)) if pa == window)
    );
    let (head, tail) = device.split(3 * P);
    assert!(
        matches!(tail.query(tail.start()), Some(MappedItemRef::Untracked(pa, 1, _)) if pa == window + 3 * P)
    );
    drop((head, tail, low));
    assert_eq!(stats(&space), before);
    assert_eq!(space.vmalloc_stats(), vmalloc_before);
}

#[test]
fn threads_share_frames_and_map_areas_side_by_side() {
    let space = space();
    let before = stats(&space);
    let shared: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().expect("frame").into();
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let (space, shared) = (&space, shared.clone());
            s.spawn(move || {
                let own = FrameAllocOptions::new_in(space).alloc_frame().expect("frame");
                let area: KVirtArea = space
                    .try_map_frames(2 * P, 0, [own.into_dyn(), shared.clone().into()], rw())
                    .expect("area");
                area.write_bytes(P + usize::from(t), &[t + 1]).expect("mapped");
                let mut byte = [0u8];
                shared.read_bytes(usize::from(t), &mut byte).expect("in bounds");
                assert_eq!(byte, [t + 1]);
                drop(area);
            });
        }
        // Meanwhile, this thread takes and drops references to the frame.
        for _ in 0..4 {
            drop(shared.clone());
        }
    });
    assert_eq!(shared.reference_count(), 1);
    drop(shared);
    assert_eq!(stats(&space), before);
}

/// The space's handle and its last area dropped on two threads at once: the
/// area's drop still uses the space (its page table, VMALLOC, registry)
/// after the handle is gone, so whichever goes last must free it. Miri
/// reported a data race with the space's deallocation when the handle's
/// drop freed the space while the area's drop was still inside it.
#[test]
fn the_space_outlives_an_area_dropped_on_another_thread() {
    let machine = Arc::new(Machine::new(MachineConfig::new(RAM).cpus(2)));
    let space = counting_rcu::space_on(machine.clone());
    let frame = FrameAllocOptions::new_in(&space).alloc_frame().expect("frame");
    let area: KVirtArea = space.try_map_frames(P, 0, [frame], rw()).expect("area");
    let dropper = std::thread::spawn(move || drop(area));
    drop(space);
    dropper.join().expect("the area's drop does not panic");
    assert_eq!(Arc::strong_count(&machine), 1, "the last handle freed the space and its platform");
}

/// A kept space (`KernelSpace::leak`) lends its areas to threads without a
/// count: areas made before and after it was kept are split, written and
/// dropped on two threads, reaching the space only through their handles.
#[test]
fn areas_of_a_kept_space_hold_it_without_a_count() {
    // Reachable from a static: kept memory is not a leak to Miri.
    static KEPT: std::sync::OnceLock<&'static KernelSpace> = std::sync::OnceLock::new();
    let counted = space();
    let before = stats(&counted);
    let frame = FrameAllocOptions::new_in(&counted).alloc_frame().expect("frame");
    let early: KVirtArea = counted.try_map_frames(P, 0, [frame], rw()).expect("area");
    let kept = *KEPT.get_or_init(|| counted.leak());
    let frames = FrameAllocOptions::new_in(kept).alloc_segment(2).expect("frames");
    let area: KVirtArea = kept.try_map_frames(2 * P, 0, frames, rw()).expect("area");
    let (left, right) = area.split(P);
    let other = std::thread::spawn(move || {
        right.write_bytes(0, b"right").expect("in bounds");
        drop(right);
        drop(early);
    });
    left.write_bytes(0, b"left").expect("in bounds");
    drop(left);
    other.join().expect("the other thread does not panic");
    assert_eq!(stats(kept), before, "everything the areas held is back");
}

/// Byte copies into untyped frames racing the simulated machine's own
/// accesses to the same bytes: the machine reads and writes RAM only with
/// aligned 8-byte atomics, so kvirt's copies must use the same access size
/// (racing atomics of different sizes are undefined behaviour, which Miri
/// reports).
mod racing_byte_copies {
    use super::*;

    /// Rounds each thread runs; words of the frame each round touches.
    const ROUNDS: u8 = 3;
    const WORDS: usize = 6;

    #[test]
    fn frame_byte_copies_and_machine_accesses_to_shared_words_race_without_undefined_behaviour() {
        let machine = Arc::new(Machine::new(MachineConfig::new(RAM).cpus(2)));
        let space = counting_rcu::space_on(machine.clone());
        let before = stats(&space);
        let frame: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().expect("frame").into();
        let pa = frame.paddr() as u64;
        std::thread::scope(|s| {
            // kvirt: bytes 1..4 of each word, and reads at odd offsets
            // across words.
            s.spawn(|| {
                for round in 1..=ROUNDS {
                    for k in 0..WORDS {
                        frame.write_bytes(8 * k + 1, &[round; 3]).expect("in bounds");
                    }
                    let mut buf = [0u8; 13];
                    frame.read_bytes(3, &mut buf).expect("in bounds");
                    assert!(buf[2..4].iter().all(|&b| b == 0 || b >= 0xa0), "bytes 5..7 of word 0: {buf:x?}");
                }
            });
            // The machine: bytes 5..7 of the same words, and whole-range
            // reads.
            for round in 1..=ROUNDS {
                for k in 0..WORDS as u64 {
                    machine.write_phys(pa + 8 * k + 5, &[0xa0 + round; 2]).expect("RAM");
                }
                let mut buf = [0u8; 8 * WORDS];
                machine.read_phys(pa, &mut buf).expect("RAM");
                assert!(buf.iter().step_by(8).all(|&b| b == 0), "byte 0 of each word is never written");
            }
        });
        // Neither side's bytes were lost to the other's writes of the same
        // words.
        let mut word = [0u8; 8];
        for k in 0..WORDS {
            frame.read_bytes(8 * k, &mut word).expect("in bounds");
            let (kvirt, sim) = (ROUNDS, 0xa0 + ROUNDS);
            assert_eq!(word, [0, kvirt, kvirt, kvirt, 0, sim, sim, 0], "word {k}");
        }
        drop(frame);
        assert_eq!(stats(&space), before);
    }
}
