//! Frames: allocation, reference counts, metadata, conversions, raw
//! round trips and byte access.
//!
//! Every test builds its own small kernel space, so the allocator counters
//! and the reuse order of pages are exact and independent of the other tests
//! running in parallel threads.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kvirt::frame::{
    AnyFrameMeta, Frame, FrameAccessError, FrameAllocError, FrameAllocOptions, FrameRef, UFrame,
};
use kvirt::kspace::KernelSpace;
use kvirt::{Paddr, PAGE_SIZE};
use kvirt_sim::MachineConfig;

mod support;

const RAM: usize = 64 << 20;

fn space() -> KernelSpace {
    KernelSpace::new_hosted(MachineConfig::new(RAM))
}

/// Typed metadata without a drop hook.
#[derive(Debug)]
struct Counter {
    value: u64,
}
kvirt::impl_frame_meta!(Counter);

/// Untyped metadata other than `()`.
#[derive(Debug)]
struct BufferMeta {
    id: u32,
}
kvirt::impl_untyped_frame_meta!(BufferMeta);

/// What the drop hook and the destructor of [`Hooked`] saw.
#[derive(Debug, Default)]
struct HookLog {
    hook_runs: AtomicUsize,
    hook_paddr: AtomicUsize,
    /// The number of destructor runs the hook saw when it ran.
    drops_seen_by_hook: AtomicUsize,
    drops: AtomicUsize,
}

/// Typed metadata whose drop hook and destructor record that they ran.
#[derive(Debug)]
struct Hooked {
    log: Arc<HookLog>,
    tag: u64,
}

impl AnyFrameMeta for Hooked {
    fn on_drop(&mut self, paddr: Paddr) {
        self.log.hook_runs.fetch_add(1, Ordering::SeqCst);
        self.log.hook_paddr.store(paddr, Ordering::SeqCst);
        self.log.drops_seen_by_hook.store(self.log.drops.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for Hooked {
    fn drop(&mut self) {
        self.log.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Allocation, reference counts and freeing.
mod allocation_reference_counts_and_freeing {
    use super::*;

    #[test]
    fn allocated_frame_has_one_reference_and_one_page() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        assert_eq!(frame.reference_count(), 1);
        assert_eq!(frame.size(), PAGE_SIZE);
        assert_eq!(frame.map_level(), 1);
        assert_eq!(frame.paddr() % PAGE_SIZE, 0);
        assert!(frame.paddr() < space.max_paddr());
    }

    #[test]
    fn allocated_frame_is_outside_reserved_low_memory() {
        let space = space();
        let frames: Vec<_> =
            (0..64).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap()).collect();
        for frame in &frames {
            assert!(frame.paddr() >= 1 << 20, "frame {:#x} is in the reserved first MiB", frame.paddr());
            assert!(frame.paddr() + PAGE_SIZE <= space.max_paddr());
        }
    }

    #[test]
    fn allocation_takes_one_page_from_the_allocator() {
        let space = space();
        let before = space.phys_stats();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let during = space.phys_stats();
        assert_eq!(during.free_pages, before.free_pages - 1);
        assert_eq!(during.used_pages, before.used_pages + 1);
        assert_eq!(during.total_pages, before.total_pages);
        drop(frame);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn distinct_allocations_get_distinct_pages() {
        let space = space();
        let frames: Vec<_> =
            (0..32).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap()).collect();
        let mut paddrs: Vec<_> = frames.iter().map(Frame::paddr).collect();
        paddrs.sort_unstable();
        paddrs.dedup();
        assert_eq!(paddrs.len(), frames.len());
    }

    #[test]
    fn clone_adds_a_reference_and_drop_removes_it() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let clone = frame.clone();
        assert_eq!(frame.reference_count(), 2);
        assert_eq!(clone.reference_count(), 2);
        assert_eq!(clone.paddr(), frame.paddr());
        assert_eq!(clone, frame);
        let third = clone.clone();
        assert_eq!(frame.reference_count(), 3);
        drop(clone);
        assert_eq!(frame.reference_count(), 2);
        drop(third);
        assert_eq!(frame.reference_count(), 1);
    }

    #[test]
    fn frames_of_different_pages_are_not_equal() {
        let space = space();
        let a = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let b = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn dropped_frame_is_reused_first() {
        let space = space();
        let before = space.phys_stats();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let pa = frame.paddr();
        drop(frame);
        assert_eq!(space.phys_stats(), before);
        let again = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        assert_eq!(again.paddr(), pa);
        assert_eq!(again.reference_count(), 1);
    }

    #[test]
    fn page_stays_allocated_until_the_last_clone_is_dropped() {
        let space = space();
        let before = space.phys_stats();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let clone = frame.clone();
        drop(frame);
        assert_eq!(clone.reference_count(), 1);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 1);
        drop(clone);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn allocation_beyond_memory_fails_and_leaves_counters_unchanged() {
        let space = space();
        let before = space.phys_stats();
        assert_eq!(
            FrameAllocOptions::new_in(&space).alloc_segment(before.free_pages + 1).unwrap_err(),
            FrameAllocError::OutOfMemory
        );
        assert_eq!(space.phys_stats(), before);

        // Exhaust memory one frame at a time.
        let mut frames = Vec::with_capacity(before.free_pages);
        for _ in 0..before.free_pages {
            frames.push(FrameAllocOptions::new_in(&space).alloc_frame().unwrap());
        }
        let full = space.phys_stats();
        assert_eq!(full.free_pages, 0);
        assert_eq!(full.used_pages, full.total_pages);
        assert_eq!(
            FrameAllocOptions::new_in(&space).alloc_frame().unwrap_err(),
            FrameAllocError::OutOfMemory
        );
        assert_eq!(
            FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 1 }).unwrap_err(),
            FrameAllocError::OutOfMemory
        );
        assert_eq!(
            FrameAllocOptions::new_in(&space).alloc_segment(1).unwrap_err(),
            FrameAllocError::OutOfMemory
        );
        assert_eq!(space.phys_stats(), full);

        // One page back makes one allocation possible again.
        let pa = frames.pop().unwrap().paddr();
        let again = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        assert_eq!(again.paddr(), pa);
        drop(again);
        drop(frames);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn failed_allocation_does_not_build_the_metadata() {
        let space = space();
        let before = space.phys_stats();
        let log = Arc::new(HookLog::default());
        let err = FrameAllocOptions::new_in(&space)
            .alloc_segment_with(before.free_pages + 1, |_| Hooked { log: log.clone(), tag: 0 })
            .unwrap_err();
        assert_eq!(err, FrameAllocError::OutOfMemory);
        assert_eq!(Arc::strong_count(&log), 1, "no metadata value was made");
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn max_paddr_of_a_space_is_the_end_of_its_ram() {
        let space = space();
        assert_eq!(space.max_paddr(), RAM);
        let small = KernelSpace::new_hosted(MachineConfig::new(16 << 20));
        assert_eq!(small.max_paddr(), 16 << 20);
    }

    #[test]
    fn independent_spaces_keep_their_own_pages_and_counters() {
        let a = space();
        let b = space();
        let (a0, b0) = (a.phys_stats(), b.phys_stats());
        let fa = FrameAllocOptions::new_in(&a).alloc_frame().unwrap();
        let fb: Vec<_> = (0..3).map(|_| FrameAllocOptions::new_in(&b).alloc_frame().unwrap()).collect();
        assert_eq!(a.phys_stats().used_pages, a0.used_pages + 1);
        assert_eq!(b.phys_stats().used_pages, b0.used_pages + 3);
        drop(fb);
        assert_eq!(b.phys_stats(), b0);
        assert_eq!(a.phys_stats().used_pages, a0.used_pages + 1);
        drop(fa);
        assert_eq!(a.phys_stats(), a0);
    }

    /// The upper bound of the reference count, `REF_COUNT_MAX`: reaching it is
    /// allowed, going past it aborts the process (the `ref_count` module docs).
    #[cfg(not(miri))]
    mod reference_count_limit {
        use kvirt::frame::{FrameAllocOptions, META_SLOT_SIZE, META_STORAGE_SIZE, REF_COUNT_MAX};
        use kvirt::kspace::FRAME_METADATA_VADDR_RANGE;
        use kvirt::PAGE_SIZE;

        use super::space;
        use crate::support::abort_in_child::assert_aborts_in_child;

        /// What `ref_count::inc` prints before it aborts.
        const OVERFLOW_MESSAGE: &str = "kvirt: frame reference count overflow";

        #[test]
        fn cloning_a_frame_past_the_maximum_count_aborts_the_process() {
            assert_aborts_in_child(
                concat!(module_path!(), "::cloning_a_frame_past_the_maximum_count_aborts_the_process"),
                OVERFLOW_MESSAGE,
                overflow_a_frame,
            );
        }

        /// The child: brings a frame's count to `REF_COUNT_MAX` with one real
        /// clone, and clones once more.
        fn overflow_a_frame() {
            let space = space();
            // SAFETY: the test reads a reference count, which kvirt accesses
            // only atomically, with 8-byte atomic loads.
            let machine = unsafe { space.machine() }.expect("a hosted space has a machine").clone();
            let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
            // The slot's count follows its 40-byte metadata storage (the `meta`
            // module docs); reach it through the kernel's mapping of the
            // metadata array, and check that this word is the count.
            let slot = FRAME_METADATA_VADDR_RANGE.start + frame.paddr() / PAGE_SIZE * META_SLOT_SIZE;
            let (count, _) =
                space.kernel_translate(slot + META_STORAGE_SIZE).expect("the metadata array is mapped");
            let count = count as u64;
            assert_eq!(machine.read_phys_u64(count).unwrap(), 1);
            let clone = frame.clone();
            assert_eq!(machine.read_phys_u64(count).unwrap(), 2, "this word is the frame's reference count");
            std::mem::forget(clone);
            // As if all but two of `REF_COUNT_MAX` references had been leaked.
            machine.write_phys_u64(count, REF_COUNT_MAX - 1).unwrap();
            let at_max = frame.clone();
            assert_eq!(frame.reference_count(), REF_COUNT_MAX, "the maximum itself is allowed");
            let past_max = at_max.clone();
            std::mem::forget((frame, at_max, past_max));
        }
    }

    /// A metadata drop hook or destructor that panics aborts the process, as a
    /// frame drop in a kernel would: the frame is half torn down and there is
    /// no consistent state to unwind to (the `meta` module docs). Wherever the
    /// last reference goes: a handle, an area, an RCU callback.
    #[cfg(not(miri))]
    mod panicking_drop_hook {
        use std::any::Any;

        use kvirt::frame::{AnyFrameMeta, FrameAllocOptions};
        use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
        use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable, PageTableFrag};
        use kvirt::{Paddr, Vaddr, PAGE_SIZE};

        use super::space;
        use crate::support::abort_in_child::assert_aborts_in_child;

        /// What kvirt prints before it aborts.
        const MESSAGE: &str = "kvirt: a frame metadata drop hook or destructor panicked; aborting";

        /// Metadata whose drop hook panics.
        #[derive(Debug)]
        struct PanickingHook;

        impl AnyFrameMeta for PanickingHook {
            fn on_drop(&mut self, _paddr: Paddr) {
                panic!("the drop hook panics");
            }

            fn as_any(&self) -> &dyn Any {
                self
            }
        }

        /// Metadata whose destructor panics.
        #[derive(Debug)]
        struct PanickingDestructor;
        kvirt::impl_frame_meta!(PanickingDestructor);

        impl Drop for PanickingDestructor {
            fn drop(&mut self) {
                panic!("the metadata destructor panics");
            }
        }

        fn rw() -> PageProperty {
            PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
        }

        #[test]
        fn a_drop_hook_that_panics_aborts_the_process() {
            assert_aborts_in_child(
                concat!(module_path!(), "::a_drop_hook_that_panics_aborts_the_process"),
                MESSAGE,
                || {
                    let space = space();
                    let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(PanickingHook).unwrap();
                    drop(frame.clone());
                    drop(frame);
                },
            );
        }

        #[test]
        fn a_metadata_destructor_that_panics_aborts_the_process() {
            assert_aborts_in_child(
                concat!(module_path!(), "::a_metadata_destructor_that_panics_aborts_the_process"),
                MESSAGE,
                || {
                    let space = space();
                    let frame =
                        FrameAllocOptions::new_in(&space).alloc_frame_with(PanickingDestructor).unwrap();
                    drop(frame);
                },
            );
        }

        #[test]
        fn a_drop_hook_that_panics_when_its_area_is_dropped_aborts_the_process() {
            assert_aborts_in_child(
                concat!(
                    module_path!(),
                    "::a_drop_hook_that_panics_when_its_area_is_dropped_aborts_the_process"
                ),
                MESSAGE,
                || {
                    let space = space();
                    let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(PanickingHook).unwrap();
                    let area = space.try_map_frames(2 * PAGE_SIZE, PAGE_SIZE, [frame], rw()).unwrap();
                    drop(area);
                    panic!(
                        "dropping an area holding the last reference of a frame whose drop hook panics returned"
                    );
                },
            );
        }

        #[test]
        fn a_drop_hook_that_panics_in_an_rcu_callback_aborts_the_process() {
            assert_aborts_in_child(
                concat!(module_path!(), "::a_drop_hook_that_panics_in_an_rcu_callback_aborts_the_process"),
                MESSAGE,
                || {
                    /// A 2 MiB-aligned kernel address: its leaf node is detached
                    /// whole by a search over its span.
                    const KVA: Vaddr = 0xffff_c000_0000_0000;
                    let space = space();
                    let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
                    let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(PanickingHook).unwrap();
                    let span = KVA..KVA + (2 << 20);
                    let mut cursor = pt.cursor_mut(&span).unwrap();
                    cursor.map(MappedItem::Tracked(frame.into_dyn(), rw()));
                    cursor.jump(KVA).unwrap();
                    let frag = cursor.take_next(span.len()).expect("the frame is mapped");
                    assert!(
                        matches!(frag, PageTableFrag::StrayPageTable { num_frames: 1, .. }),
                        "the leaf node is detached whole: {frag:?}"
                    );
                    drop(cursor);
                    // The sub-tree, and the frame in it, are released by an RCU
                    // callback; `synchronize` waits for it to run.
                    drop(frag);
                    space.synchronize();
                },
            );
        }
    }
}

/// Typed metadata and drop hooks.
mod typed_metadata_and_drop_hooks {
    use super::*;

    #[test]
    fn typed_metadata_is_readable_through_the_handle() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 42 }).unwrap();
        assert_eq!(frame.meta().value, 42);
        assert_eq!(frame.clone().meta().value, 42);
    }

    #[test]
    fn drop_hook_runs_once_with_the_paddr_before_the_destructor() {
        let space = space();
        let log = Arc::new(HookLog::default());
        let frame =
            FrameAllocOptions::new_in(&space).alloc_frame_with(Hooked { log: log.clone(), tag: 7 }).unwrap();
        let pa = frame.paddr();
        assert_eq!(frame.meta().tag, 7);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 0);
        drop(frame);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 1);
        assert_eq!(log.hook_paddr.load(Ordering::SeqCst), pa);
        assert_eq!(log.drops.load(Ordering::SeqCst), 1, "the metadata is dropped");
        assert_eq!(log.drops_seen_by_hook.load(Ordering::SeqCst), 0, "the hook runs before the destructor");
        assert_eq!(Arc::strong_count(&log), 1, "the metadata's own Arc was released");
    }

    #[test]
    fn drop_hook_waits_for_the_last_reference() {
        let space = space();
        let log = Arc::new(HookLog::default());
        let frame =
            FrameAllocOptions::new_in(&space).alloc_frame_with(Hooked { log: log.clone(), tag: 0 }).unwrap();
        let mut clones: Vec<_> = (0..5).map(|_| frame.clone()).collect();
        drop(frame);
        let last = clones.pop().unwrap();
        drop(clones);
        assert_eq!(last.reference_count(), 1);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 0);
        assert_eq!(log.drops.load(Ordering::SeqCst), 0);
        drop(last);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 1);
        assert_eq!(log.drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn drop_hook_runs_when_the_last_handle_is_a_clone() {
        let space = space();
        let before = space.phys_stats();
        let log = Arc::new(HookLog::default());
        let frame =
            FrameAllocOptions::new_in(&space).alloc_frame_with(Hooked { log: log.clone(), tag: 0 }).unwrap();
        let pa = frame.paddr();
        let clone = frame.clone();
        drop(frame);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 0);
        assert_eq!(clone.meta().tag, 0, "the metadata is intact while a reference remains");
        drop(clone);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 1);
        assert_eq!(log.hook_paddr.load(Ordering::SeqCst), pa);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn drop_hook_of_the_concrete_type_runs_through_a_dyn_handle() {
        let space = space();
        let log = Arc::new(HookLog::default());
        let frame =
            FrameAllocOptions::new_in(&space).alloc_frame_with(Hooked { log: log.clone(), tag: 3 }).unwrap();
        let pa = frame.paddr();
        let dyn_frame: Frame<dyn AnyFrameMeta> = frame.into();
        drop(dyn_frame);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 1);
        assert_eq!(log.hook_paddr.load(Ordering::SeqCst), pa);
        assert_eq!(log.drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reused_page_gets_the_new_metadata() {
        let space = space();
        let log = Arc::new(HookLog::default());
        let first =
            FrameAllocOptions::new_in(&space).alloc_frame_with(Hooked { log: log.clone(), tag: 1 }).unwrap();
        let pa = first.paddr();
        drop(first);
        let second = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 2 }).unwrap();
        assert_eq!(second.paddr(), pa);
        assert_eq!(second.meta().value, 2);
        drop(second);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 1, "the old hook does not run again");
    }

    /// Metadata that owns another frame: it is released with its owner.
    #[derive(Debug)]
    struct Owner {
        child: Frame<Counter>,
    }
    kvirt::impl_frame_meta!(Owner);

    #[test]
    fn metadata_that_owns_a_frame_releases_it_with_its_page() {
        let space = space();
        let before = space.phys_stats();
        let child = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 4 }).unwrap();
        let child_pa = child.paddr();
        let observer = child.clone();
        let parent = FrameAllocOptions::new_in(&space).alloc_frame_with(Owner { child }).unwrap();
        assert_eq!(parent.meta().child.meta().value, 4);
        assert_eq!(observer.reference_count(), 2);
        drop(parent);
        assert_eq!(observer.reference_count(), 1, "dropping the parent's metadata dropped its child handle");
        assert_eq!(observer.paddr(), child_pa);
        drop(observer);
        assert_eq!(space.phys_stats(), before);
    }

    /// Metadata filling the whole 40-byte storage of a slot.
    #[derive(Debug)]
    struct Full {
        words: [u64; 5],
    }
    kvirt::impl_frame_meta!(Full);

    #[test]
    fn metadata_of_the_full_slot_size_does_not_touch_the_reference_count() {
        assert_eq!(std::mem::size_of::<Full>(), kvirt::frame::META_STORAGE_SIZE);
        let space = space();
        let words = [u64::MAX, 0x0123_4567_89ab_cdef, u64::MAX, 1, u64::MAX];
        let frames: Vec<_> = (0..4)
            .map(|_| FrameAllocOptions::new_in(&space).alloc_frame_with(Full { words }).unwrap())
            .collect();
        for frame in &frames {
            assert_eq!(frame.reference_count(), 1);
            let clone = frame.clone();
            assert_eq!(frame.reference_count(), 2);
            drop(clone);
            assert_eq!(frame.meta().words, words);
        }
    }

    #[test]
    fn panicking_metadata_constructor_leaks_nothing() {
        let space = space();
        let before = space.phys_stats();
        let log = Arc::new(HookLog::default());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut made = 0;
            FrameAllocOptions::new_in(&space).alloc_segment_with(6, |_| {
                made += 1;
                assert!(made <= 3, "metadata constructor fails on the fourth page");
                Hooked { log: log.clone(), tag: made }
            })
        }));
        assert!(result.is_err());
        assert_eq!(space.phys_stats(), before, "every page of the run went back to the allocator");
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 3, "the pages already built were dropped normally");
        assert_eq!(Arc::strong_count(&log), 1);
        // The pages are usable again.
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(6).unwrap();
        assert_eq!(seg.nr_pages(), 6);
    }

    #[test]
    fn frames_never_come_from_reserved_ram() {
        let reserved = (8 << 20) as u64..(12 << 20) as u64;
        let space = KernelSpace::new_hosted(MachineConfig::new(RAM).reserve(reserved.clone()));
        let before = space.phys_stats();
        let frames: Vec<_> = (0..before.free_pages)
            .map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap())
            .collect();
        for frame in &frames {
            let pa = frame.paddr() as u64;
            assert!(pa >= 1 << 20, "frame {pa:#x} in reserved low memory");
            assert!(!reserved.contains(&pa), "frame {pa:#x} in a reserved range");
        }
        assert!(FrameAllocOptions::new_in(&space).alloc_frame().is_err());
    }

    #[test]
    fn writing_every_allocatable_page_leaves_all_metadata_intact() {
        // If the allocator handed out a page of the metadata array, filling it
        // would corrupt the slots of other frames.
        let space = space();
        let before = space.phys_stats();
        let frames: Vec<_> = (0..before.free_pages)
            .map(|i| FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: i as u64 }).unwrap())
            .collect();
        // SAFETY: the test writes only the pages of frames it holds.
        let machine = unsafe { space.machine() }.unwrap();
        let ones = vec![0xffu8; PAGE_SIZE];
        for frame in &frames {
            machine.write_phys(frame.paddr() as u64, &ones).unwrap();
        }
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(frame.reference_count(), 1, "slot of {:#x} corrupted", frame.paddr());
            assert_eq!(frame.meta().value, i as u64, "metadata of {:#x} corrupted", frame.paddr());
        }
        drop(frames);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn frames_outlive_a_dropped_space() {
        let space = space();
        let frame: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        // The space has a live frame, so dropping it leaks it rather than
        // leaving the frame dangling.
        drop(space);
        frame.write_bytes(0, b"still here").unwrap();
        let mut buf = [0u8; 10];
        frame.read_bytes(0, &mut buf).unwrap();
        assert_eq!(&buf, b"still here");
        let clone = frame.clone();
        assert_eq!(frame.reference_count(), 2);
        drop(clone);
        drop(frame);
    }

    /// `UniqueFrame`: a frame owned by one handle, with writable metadata; its
    /// slot is in the `UNIQUE` state of the reference count.
    mod unique_frame {
        use std::sync::atomic::Ordering;
        use std::sync::Arc;

        use kvirt::frame::{AnyFrameMeta, Frame, FrameAllocError, FrameAllocOptions, UniqueFrame};
        use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
        use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable};
        use kvirt::spec::{frame_ref_count, Inv};

        use super::{space, Counter, HookLog, Hooked};

        #[test]
        fn a_frame_whose_handle_is_the_only_reference_becomes_unique() {
            let space = space();
            let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 3 }).unwrap();
            let pa = frame.paddr();
            let unique = UniqueFrame::try_from(frame).expect("one reference: the frame becomes unique");
            assert_eq!(unique.paddr(), pa);
            assert_eq!(unique.meta().value, 3);
            assert_eq!((unique.size(), unique.map_level()), (kvirt::PAGE_SIZE, 1));
        }

        #[test]
        fn a_shared_frame_is_handed_back_unchanged() {
            let space = space();
            let before = space.phys_stats();
            let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 5 }).unwrap();
            let pa = frame.paddr();

            // Another handle.
            let clone = frame.clone();
            let frame = UniqueFrame::try_from(frame).expect_err("a clone exists");
            assert_eq!((frame.paddr(), frame.reference_count(), clone.meta().value), (pa, 2, 5));
            drop(clone);

            // A reference given up by `into_raw`.
            let raw = frame.clone().into_raw();
            let frame = UniqueFrame::try_from(frame).expect_err("a raw reference exists");
            assert_eq!(frame.reference_count(), 2);
            // SAFETY: `raw` came from `into_raw` on a `Frame<Counter>` of `space`, once.
            drop(unsafe { space.frame_from_raw::<Counter>(raw) });

            // A page-table entry.
            let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
            let va = kvirt::kspace::VMALLOC_VADDR_RANGE.start;
            let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
            pt.cursor_mut(&(va..va + kvirt::PAGE_SIZE))
                .unwrap()
                .map(MappedItem::Tracked(frame.clone().into_dyn(), prop));
            let frame = UniqueFrame::try_from(frame).expect_err("a page-table entry maps the frame");
            assert_eq!(frame.reference_count(), 2);
            drop(pt);

            // Its last other reference gone, the frame becomes unique.
            assert_eq!(frame.reference_count(), 1);
            let unique = UniqueFrame::try_from(frame).expect("the only reference");
            assert_eq!(unique.meta().value, 5);
            drop(unique);
            space.synchronize();
            assert_eq!(space.phys_stats(), before);
        }

        #[test]
        fn metadata_written_through_meta_mut_is_seen_once_the_frame_is_shared() {
            let space = space();
            let mut unique =
                FrameAllocOptions::new_in(&space).alloc_unique_frame_with(Counter { value: 1 }).unwrap();
            unique.meta_mut().value = 41;
            unique.meta_mut().value += 1;
            assert_eq!(unique.meta().value, 42);
            let frame = Frame::from(unique);
            let clone = frame.clone();
            assert_eq!((frame.meta().value, clone.meta().value), (42, 42));
            drop(clone);

            // Unique again, changed again, shared again, seen through `dyn`.
            let mut unique = UniqueFrame::try_from(frame).unwrap();
            unique.meta_mut().value = 7;
            let any: Frame<dyn AnyFrameMeta> = Frame::from(unique).into_dyn();
            assert_eq!(any.meta().as_any().downcast_ref::<Counter>().unwrap().value, 7);
        }

        #[test]
        fn a_unique_frame_counts_as_one_reference() {
            let space = space();
            let unique =
                FrameAllocOptions::new_in(&space).alloc_unique_frame_with(Counter { value: 0 }).unwrap();
            let pa = unique.paddr();
            assert_eq!(unique.reference_count(), 1);
            assert_eq!(frame_ref_count(&space, pa), 1, "the spec's view counts the unique handle once");
            assert_eq!(space.check(), Ok(()), "a unique slot is a used slot to the space's invariant");
            let frame = Frame::from(unique);
            assert_eq!((frame.reference_count(), frame_ref_count(&space, pa)), (1, 1));
            drop(frame);
            assert_eq!(frame_ref_count(&space, pa), 0);
        }

        #[test]
        fn dropping_a_unique_frame_runs_the_drop_hook_once_and_returns_the_page() {
            let space = space();
            let before = space.phys_stats();
            let log = Arc::new(HookLog::default());
            let mut unique = FrameAllocOptions::new_in(&space)
                .alloc_unique_frame_with(Hooked { log: log.clone(), tag: 1 })
                .unwrap();
            let pa = unique.paddr();
            assert_eq!(space.phys_stats().used_pages, before.used_pages + 1);
            unique.meta_mut().tag = 2;
            drop(unique);
            assert_eq!(log.hook_runs.load(Ordering::SeqCst), 1, "the hook runs once");
            assert_eq!(log.hook_paddr.load(Ordering::SeqCst), pa);
            assert_eq!(log.drops.load(Ordering::SeqCst), 1, "the metadata is dropped once");
            assert_eq!(
                log.drops_seen_by_hook.load(Ordering::SeqCst),
                0,
                "the hook runs before the destructor"
            );
            assert_eq!(Arc::strong_count(&log), 1);
            assert_eq!(space.phys_stats(), before, "the page is back");
            // Its slot is free again: the page comes back first, with new metadata.
            let again = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 9 }).unwrap();
            assert_eq!((again.paddr(), again.meta().value, again.reference_count()), (pa, 9, 1));
        }

        #[test]
        fn a_unique_frame_made_from_a_shared_one_tears_down_like_its_last_reference() {
            let space = space();
            let before = space.phys_stats();
            let log = Arc::new(HookLog::default());
            let frame = FrameAllocOptions::new_in(&space)
                .alloc_frame_with(Hooked { log: log.clone(), tag: 0 })
                .unwrap();
            let clone = frame.clone();
            drop(frame);
            let unique = UniqueFrame::try_from(clone).unwrap();
            assert_eq!(log.hook_runs.load(Ordering::SeqCst), 0);
            drop(unique);
            assert_eq!((log.hook_runs.load(Ordering::SeqCst), log.drops.load(Ordering::SeqCst)), (1, 1));
            assert_eq!(space.phys_stats(), before);
        }

        #[test]
        fn a_unique_frame_moves_to_another_thread_and_is_dropped_there() {
            let space = space();
            let before = space.phys_stats();
            let log = Arc::new(HookLog::default());
            let unique = FrameAllocOptions::new_in(&space)
                .alloc_unique_frame_with(Hooked { log: log.clone(), tag: 0 })
                .unwrap();
            std::thread::scope(|s| {
                s.spawn(move || {
                    let mut unique = unique;
                    unique.meta_mut().tag = 1;
                    assert_eq!(unique.meta().tag, 1);
                });
            });
            assert_eq!(log.hook_runs.load(Ordering::SeqCst), 1);
            assert_eq!(space.phys_stats(), before);
        }

        #[test]
        fn unique_allocation_without_memory_fails_like_any_other() {
            let space = space();
            let free = space.phys_stats().free_pages;
            let hog: Vec<_> =
                (0..free).map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap()).collect();
            assert_eq!(
                FrameAllocOptions::new_in(&space).alloc_unique_frame_with(Counter { value: 0 }).unwrap_err(),
                FrameAllocError::OutOfMemory
            );
            drop(hog);
            assert!(FrameAllocOptions::new_in(&space).alloc_unique_frame_with(Counter { value: 0 }).is_ok());
        }
    }
}

/// Conversions.
mod conversions {
    use super::*;

    #[test]
    fn typed_frame_converts_to_dyn_and_back() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 9 }).unwrap();
        let pa = frame.paddr();
        let dyn_frame: Frame<dyn AnyFrameMeta> = frame.into();
        assert_eq!(dyn_frame.paddr(), pa);
        assert_eq!(dyn_frame.reference_count(), 1);
        assert_eq!(dyn_frame.meta().as_any().downcast_ref::<Counter>().unwrap().value, 9);
        assert!(dyn_frame.meta().as_untyped().is_none());

        let back = Frame::<Counter>::try_from(dyn_frame).unwrap();
        assert_eq!(back.paddr(), pa);
        assert_eq!(back.reference_count(), 1);
        assert_eq!(back.meta().value, 9);

        let via_method = back.into_dyn();
        assert_eq!(via_method.paddr(), pa);
        assert_eq!(via_method.reference_count(), 1);
    }

    /// Metadata whose (safe) `as_any` lies about its type. Soundness must not
    /// depend on it: a down-cast that trusted it would view the impostor's bytes
    /// as the decoy's type.
    #[derive(Debug)]
    struct Impostor {
        bytes: [u8; 8],
    }

    #[derive(Debug)]
    struct Named {
        name: &'static str,
    }
    kvirt::impl_frame_meta!(Named);

    static DECOY: Named = Named { name: "decoy" };

    impl AnyFrameMeta for Impostor {
        fn as_any(&self) -> &dyn Any {
            &DECOY
        }
    }

    #[test]
    fn downcast_checks_the_real_type_not_what_as_any_claims() {
        let space = space();
        let before = space.phys_stats();
        let frame = FrameAllocOptions::new_in(&space)
            .alloc_frame_with(Impostor { bytes: [0xde; 8] })
            .unwrap()
            .into_dyn();
        let pa = frame.paddr();
        let back = Frame::<Named>::try_from(frame).expect_err("an Impostor frame is not a Named frame");
        assert_eq!(back.paddr(), pa);
        let impostor = Frame::<Impostor>::try_from(back).expect("it is an Impostor frame");
        assert_eq!(impostor.meta().bytes, [0xde; 8]);
        drop(impostor);

        let seg = FrameAllocOptions::new_in(&space)
            .alloc_segment_with(2, |_| Impostor { bytes: [1; 8] })
            .unwrap()
            .into_dyn();
        let seg = kvirt::frame::Segment::<Named>::try_from(seg).expect_err("not a Named segment");
        let seg = kvirt::frame::Segment::<Impostor>::try_from(seg).expect("an Impostor segment");
        assert_eq!(seg.meta_at(kvirt::PAGE_SIZE).bytes, [1; 8]);
        assert_eq!(DECOY.name, "decoy", "the decoy was never touched");
        drop(seg);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn failed_downcast_gives_the_frame_back() {
        let space = space();
        let before = space.phys_stats();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let pa = frame.paddr();
        let dyn_frame = frame.into_dyn();
        let returned = Frame::<Counter>::try_from(dyn_frame).unwrap_err();
        assert_eq!(returned.paddr(), pa);
        assert_eq!(returned.reference_count(), 1);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 1, "the page was not freed");
        // It can still be cast to what it really is.
        let unit = Frame::<()>::try_from(returned).unwrap();
        assert_eq!(unit.paddr(), pa);
        drop(unit);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn downcast_of_a_shared_frame_keeps_the_count() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 1 }).unwrap();
        let keep = frame.clone();
        let dyn_frame = frame.into_dyn();
        assert_eq!(keep.reference_count(), 2);
        let failed = Frame::<BufferMeta>::try_from(dyn_frame).unwrap_err();
        assert_eq!(keep.reference_count(), 2);
        let back = Frame::<Counter>::try_from(failed).unwrap();
        assert_eq!(keep.reference_count(), 2);
        drop(back);
        assert_eq!(keep.reference_count(), 1);
    }

    #[test]
    fn untyped_frame_converts_to_uframe() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let pa = frame.paddr();
        let uframe: UFrame = frame.into();
        assert_eq!(uframe.paddr(), pa);
        assert_eq!(uframe.reference_count(), 1);
        assert!(uframe.meta().as_any().is::<()>());
        uframe.write_bytes(0, b"hello").unwrap();
        let mut buf = [0; 5];
        uframe.read_bytes(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn custom_untyped_metadata_converts_to_uframe_and_keeps_its_value() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(BufferMeta { id: 77 }).unwrap();
        let uframe = UFrame::from(frame);
        assert_eq!(uframe.meta().as_any().downcast_ref::<BufferMeta>().unwrap().id, 77);
        let dyn_frame: Frame<dyn AnyFrameMeta> = uframe.into();
        let back = Frame::<BufferMeta>::try_from(dyn_frame).unwrap();
        assert_eq!(back.meta().id, 77);
    }

    #[test]
    fn dyn_frame_becomes_uframe_only_when_untyped() {
        let space = space();
        let untyped = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into_dyn();
        let pa = untyped.paddr();
        let uframe = UFrame::try_from(untyped).unwrap();
        assert_eq!(uframe.paddr(), pa);
        assert_eq!(uframe.reference_count(), 1);

        let typed =
            FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 5 }).unwrap().into_dyn();
        let typed_pa = typed.paddr();
        let returned = UFrame::try_from(typed).unwrap_err();
        assert_eq!(returned.paddr(), typed_pa);
        assert_eq!(returned.reference_count(), 1);
        assert_eq!(Frame::<Counter>::try_from(returned).unwrap().meta().value, 5);
    }

    #[test]
    fn uframe_converts_to_dyn_frame_and_down_to_its_type() {
        let space = space();
        let uframe: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        let pa = uframe.paddr();
        let dyn_frame = Frame::<dyn AnyFrameMeta>::from(uframe);
        assert!(dyn_frame.meta().as_untyped().is_some());
        let unit = Frame::<()>::try_from(dyn_frame).unwrap();
        assert_eq!(unit.paddr(), pa);
        assert_eq!(unit.reference_count(), 1);
    }
}

/// FrameRef and raw round trips.
mod frameref_and_raw_round_trips {
    use super::*;

    /// Metadata methods other than the drop hook that panic (`as_untyped` in a
    /// conversion, `Debug` when a unique frame is printed): the handle being
    /// converted is dropped with the unwinding, nothing else changes.
    mod panicking_metadata_methods {
        use std::fmt;

        use kvirt::frame::{AnyUFrameMeta, UniqueFrame};
        use kvirt::spec::Inv;

        use super::*;

        /// Metadata whose `as_untyped` and `Debug` panic.
        struct Panicking;

        impl AnyFrameMeta for Panicking {
            fn as_untyped(&self) -> Option<&dyn AnyUFrameMeta> {
                panic!("as_untyped panics");
            }

            fn as_any(&self) -> &dyn Any {
                self
            }
        }

        impl fmt::Debug for Panicking {
            fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
                panic!("Debug panics");
            }
        }

        #[test]
        fn an_as_untyped_panicking_in_a_conversion_drops_only_the_converted_handle() {
            let space = space();
            let before = space.phys_stats();
            let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(Panicking).unwrap();
            let kept = frame.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                UFrame::try_from(frame.into_dyn()).map(drop).map_err(drop)
            }));
            assert!(result.is_err());
            assert_eq!(kept.reference_count(), 1, "the converted handle's reference went with it");
            assert_eq!(space.check(), Ok(()));
            drop(kept);
            assert_eq!(space.phys_stats(), before);
        }

        #[test]
        fn a_metadata_debug_panicking_while_a_unique_frame_is_printed_changes_nothing() {
            let space = space();
            let before = space.phys_stats();
            let unique = FrameAllocOptions::new_in(&space).alloc_unique_frame_with(Panicking).unwrap();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| format!("{unique:?}")));
            assert!(result.is_err());
            assert_eq!(space.check(), Ok(()));
            let frame = Frame::from(unique);
            assert_eq!(frame.reference_count(), 1);
            assert!(UniqueFrame::try_from(frame).is_ok(), "the frame is still uniquely owned");
            assert_eq!(space.phys_stats().used_pages, before.used_pages);
            assert_eq!(space.check(), Ok(()));
        }
    }

    #[test]
    fn frame_ref_keeps_the_count_and_derefs_to_the_frame() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame_with(Counter { value: 11 }).unwrap();
        {
            let borrowed: FrameRef<'_, Counter> = frame.borrow();
            assert_eq!(frame.reference_count(), 1);
            assert_eq!(borrowed.paddr(), frame.paddr());
            // Deref to `Frame<Counter>`.
            let as_frame: &Frame<Counter> = &borrowed;
            assert_eq!(as_frame, &frame);
            assert_eq!(borrowed.reference_count(), 1);
            assert_eq!(borrowed.meta().value, 11);
            assert_eq!(borrowed.size(), PAGE_SIZE);
            let copies: Vec<_> = (0..4).map(|_| borrowed.clone()).collect();
            assert_eq!(frame.reference_count(), 1);
            drop(copies);
            // A real handle made from the borrow adds a reference.
            let owned = (*borrowed).clone();
            assert_eq!(frame.reference_count(), 2);
            drop(owned);
        }
        assert_eq!(frame.reference_count(), 1);
    }

    #[test]
    fn dropping_borrows_never_frees_the_page() {
        let space = space();
        let before = space.phys_stats();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        for _ in 0..10 {
            drop(frame.borrow());
        }
        assert_eq!(frame.reference_count(), 1);
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 1);
        drop(frame);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn into_raw_and_from_raw_move_exactly_one_reference() {
        let space = space();
        let before = space.phys_stats();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        let pa = frame.paddr();
        let raw = frame.clone().into_raw();
        assert_eq!(raw, pa);
        assert_eq!(frame.reference_count(), 2, "into_raw keeps the reference");
        // SAFETY: `raw` came from `into_raw` on a `Frame<()>` of `space`, once.
        let back = unsafe { space.frame_from_raw::<()>(raw) };
        assert_eq!(frame.reference_count(), 2, "from_raw takes it back without adding one");
        assert_eq!(back.paddr(), pa);
        drop(back);
        assert_eq!(frame.reference_count(), 1);
        drop(frame);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn last_reference_survives_a_raw_round_trip() {
        let space = space();
        let before = space.phys_stats();
        let log = Arc::new(HookLog::default());
        let frame =
            FrameAllocOptions::new_in(&space).alloc_frame_with(Hooked { log: log.clone(), tag: 21 }).unwrap();
        let raw = frame.into_raw();
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 0, "into_raw does not drop");
        assert_eq!(space.phys_stats().used_pages, before.used_pages + 1);
        // SAFETY: `raw` came from `into_raw` on a `Frame<Hooked>` of `space`, once.
        let back = unsafe { space.frame_from_raw::<Hooked>(raw) };
        assert_eq!(back.reference_count(), 1);
        assert_eq!(back.meta().tag, 21);
        drop(back);
        assert_eq!(log.hook_runs.load(Ordering::SeqCst), 1);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    #[should_panic(expected = "is not page aligned")]
    fn from_raw_of_a_misaligned_address_panics() {
        let space = space();
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        // SAFETY: a misaligned address panics before anything else (the
        // contract covers only page-aligned addresses of RAM).
        let _ = unsafe { space.frame_from_raw::<()>(frame.paddr() + 8) };
    }

    #[test]
    #[should_panic(expected = "has no metadata slot")]
    fn from_raw_of_an_address_beyond_ram_panics() {
        let space = space();
        // SAFETY: an address beyond RAM panics before anything else (the
        // contract covers only page-aligned addresses of RAM).
        let _ = unsafe { space.frame_from_raw::<()>(space.max_paddr()) };
    }
}

/// Contents and byte access.
mod contents_and_byte_access {
    use super::*;

    #[test]
    fn new_frame_reads_zero() {
        let space = space();
        let frame: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        let mut buf = vec![0xffu8; PAGE_SIZE];
        frame.read_bytes(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn zeroed_frame_reads_zero_after_a_previous_user_wrote_bytes() {
        let space = space();
        let first: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        first.fill(0xa5);
        let mut check = [0u8; 16];
        first.read_bytes(PAGE_SIZE - 16, &mut check).unwrap();
        assert_eq!(check, [0xa5; 16]);
        let pa = first.paddr();
        drop(first);

        let second: UFrame = FrameAllocOptions::new_in(&space).zeroed(true).alloc_frame().unwrap().into();
        assert_eq!(second.paddr(), pa, "the same page came back");
        let mut buf = vec![0xffu8; PAGE_SIZE];
        second.read_bytes(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "the reused page was not zeroed");
    }

    #[test]
    fn zeroing_is_the_default() {
        let space = space();
        let first: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        first.fill(0x5a);
        drop(first);
        let typed = FrameAllocOptions::new_in(&space).alloc_frame_with(BufferMeta { id: 0 }).unwrap();
        let second = UFrame::from(typed);
        let mut buf = vec![0xffu8; PAGE_SIZE];
        second.read_bytes(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn unzeroed_allocation_is_allowed() {
        let space = space();
        let before = space.phys_stats();
        let first: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        first.fill(0x33);
        drop(first);
        let frame: UFrame = FrameAllocOptions::new_in(&space).zeroed(false).alloc_frame().unwrap().into();
        assert_eq!(frame.reference_count(), 1);
        // The contents are unspecified but readable and writable.
        let mut buf = vec![0u8; PAGE_SIZE];
        frame.read_bytes(0, &mut buf).unwrap();
        frame.write_bytes(0, &[1, 2, 3]).unwrap();
        frame.read_bytes(0, &mut buf[..3]).unwrap();
        assert_eq!(&buf[..3], &[1, 2, 3]);
        let seg = FrameAllocOptions::new_in(&space).zeroed(false).alloc_segment(3).unwrap();
        assert_eq!(seg.nr_pages(), 3);
        drop(seg);
        drop(frame);
        assert_eq!(space.phys_stats(), before);
    }

    #[test]
    fn uframe_bytes_round_trip() {
        let space = space();
        let frame: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        let pattern: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
        frame.write_bytes(0, &pattern).unwrap();
        let mut whole = vec![0u8; PAGE_SIZE];
        frame.read_bytes(0, &mut whole).unwrap();
        assert_eq!(whole, pattern);

        frame.write_bytes(100, b"kvirt").unwrap();
        frame.write_bytes(PAGE_SIZE - 3, b"end").unwrap();
        let mut five = [0u8; 5];
        frame.read_bytes(100, &mut five).unwrap();
        assert_eq!(&five, b"kvirt");
        let mut three = [0u8; 3];
        frame.read_bytes(PAGE_SIZE - 3, &mut three).unwrap();
        assert_eq!(&three, b"end");
        // The bytes around the writes are untouched.
        let mut around = [0u8; 2];
        frame.read_bytes(99, &mut around[..1]).unwrap();
        frame.read_bytes(105, &mut around[1..]).unwrap();
        assert_eq!(around, [pattern[99], pattern[105]]);
    }

    #[test]
    fn writes_through_one_handle_are_seen_through_its_clones() {
        let space = space();
        let frame: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        let clone = frame.clone();
        frame.write_bytes(8, &[9; 8]).unwrap();
        let mut buf = [0u8; 8];
        clone.read_bytes(8, &mut buf).unwrap();
        assert_eq!(buf, [9; 8]);
    }

    #[test]
    fn zero_length_access_at_the_end_is_allowed() {
        let space = space();
        let frame: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        frame.read_bytes(PAGE_SIZE, &mut []).unwrap();
        frame.write_bytes(PAGE_SIZE, &[]).unwrap();
    }

    #[test]
    fn out_of_bounds_frame_access_is_rejected() {
        let space = space();
        let frame: UFrame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into();
        frame.fill(0x11);
        let oob = |offset, len| FrameAccessError::OutOfBounds { offset, len, size: PAGE_SIZE };
        let mut one = [0u8; 1];
        let mut eight = [0u8; 8];
        let mut page_plus = vec![0u8; PAGE_SIZE + 1];

        assert_eq!(frame.read_bytes(PAGE_SIZE, &mut one), Err(oob(PAGE_SIZE, 1)));
        assert_eq!(frame.read_bytes(PAGE_SIZE - 4, &mut eight), Err(oob(PAGE_SIZE - 4, 8)));
        assert_eq!(frame.read_bytes(0, &mut page_plus), Err(oob(0, PAGE_SIZE + 1)));
        assert_eq!(frame.read_bytes(PAGE_SIZE + 1, &mut []), Err(oob(PAGE_SIZE + 1, 0)));
        // offset + len overflows.
        assert_eq!(frame.read_bytes(usize::MAX, &mut one), Err(oob(usize::MAX, 1)));
        assert_eq!(frame.read_bytes(usize::MAX - 3, &mut eight), Err(oob(usize::MAX - 3, 8)));

        assert_eq!(frame.write_bytes(PAGE_SIZE, &[0]), Err(oob(PAGE_SIZE, 1)));
        assert_eq!(frame.write_bytes(PAGE_SIZE - 4, &[0; 8]), Err(oob(PAGE_SIZE - 4, 8)));
        assert_eq!(frame.write_bytes(usize::MAX, &[0]), Err(oob(usize::MAX, 1)));
        assert_eq!(frame.write_bytes(usize::MAX - 3, &[0; 8]), Err(oob(usize::MAX - 3, 8)));

        // A rejected write writes nothing, not even the part that would fit.
        let mut tail = [0u8; 4];
        frame.read_bytes(PAGE_SIZE - 4, &mut tail).unwrap();
        assert_eq!(tail, [0x11; 4]);
        // A rejected read leaves the buffer alone.
        assert_eq!(eight, [0; 8]);
    }

    #[test]
    fn out_of_bounds_error_names_offset_length_and_size() {
        let err = FrameAccessError::OutOfBounds { offset: 0x1000, len: 2, size: 0x1000 };
        let msg = err.to_string();
        assert!(msg.contains("0x1000") && msg.contains("2 bytes") && msg.contains("out of bounds"), "{msg}");
    }
}
