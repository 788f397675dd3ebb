//! Frames and segments used from many threads at once.

use std::any::Any;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use kvirt::frame::{AnyFrameMeta, FrameAllocOptions};
use kvirt::kspace::KernelSpace;
use kvirt::{Paddr, PAGE_SIZE};
use kvirt_sim::MachineConfig;

const THREADS: usize = 4;
const ROUNDS: usize = 1000;

fn space() -> KernelSpace {
    KernelSpace::new_hosted(MachineConfig::new(64 << 20).cpus(2))
}

#[test]
fn parallel_alloc_and_drop_in_an_isolated_space_restores_the_counters() {
    let space = space();
    let before = space.phys_stats();
    thread::scope(|s| {
        for t in 0..THREADS {
            let space = &space;
            s.spawn(move || {
                let mut held = Vec::new();
                for i in 0..ROUNDS {
                    let frame = FrameAllocOptions::new_in(space).alloc_frame().unwrap();
                    assert_eq!(frame.reference_count(), 1);
                    // Keep a few frames across rounds so the threads'
                    // allocations interleave with frees of older pages.
                    if (i + t) % 7 == 0 {
                        held.push(frame);
                    }
                    if held.len() > 8 {
                        held.remove(0);
                    }
                }
            });
        }
    });
    assert_eq!(space.phys_stats(), before);
}

#[test]
fn parallel_alloc_and_drop_in_the_default_space_does_not_panic() {
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..ROUNDS {
                    let frame = FrameAllocOptions::new().alloc_frame().unwrap();
                    assert_eq!(frame.reference_count(), 1);
                    assert!(frame.paddr() < kvirt::kspace::max_paddr());
                }
            });
        }
    });
}

#[test]
fn frames_held_at_the_same_time_by_different_threads_are_distinct() {
    let space = space();
    let before = space.phys_stats();
    let per_thread: Vec<Vec<_>> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let space = &space;
                s.spawn(move || {
                    (0..200).map(|_| FrameAllocOptions::new_in(space).alloc_frame().unwrap()).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let paddrs: HashSet<Paddr> = per_thread.iter().flatten().map(|f| f.paddr()).collect();
    assert_eq!(paddrs.len(), THREADS * 200);
    assert_eq!(space.phys_stats().used_pages, before.used_pages + THREADS * 200);
    drop(per_thread);
    assert_eq!(space.phys_stats(), before);
}

#[test]
fn parallel_segments_split_and_sliced_restore_the_counters() {
    let space = space();
    let before = space.phys_stats();
    thread::scope(|s| {
        for t in 0..THREADS {
            let space = &space;
            s.spawn(move || {
                for i in 0..ROUNDS / 4 {
                    let n = 1 + (i + t) % 8;
                    let seg = FrameAllocOptions::new_in(space).alloc_segment(n).unwrap();
                    let shared = seg.slice(&(0..PAGE_SIZE));
                    if n > 1 {
                        let (a, b) = seg.split(PAGE_SIZE);
                        drop(b);
                        assert_eq!(shared.clone().into_iter().next().unwrap().reference_count(), 3);
                        drop(a);
                    } else {
                        drop(seg);
                    }
                    assert_eq!(shared.into_iter().next().unwrap().reference_count(), 1);
                }
            });
        }
    });
    assert_eq!(space.phys_stats(), before);
}

#[derive(Debug)]
struct Counted {
    hook_runs: Arc<AtomicUsize>,
}

impl AnyFrameMeta for Counted {
    fn on_drop(&mut self, _paddr: Paddr) {
        self.hook_runs.fetch_add(1, Ordering::SeqCst);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[test]
fn one_frame_cloned_and_dropped_from_many_threads_is_freed_exactly_once() {
    let space = space();
    let before = space.phys_stats();
    let hook_runs = Arc::new(AtomicUsize::new(0));
    let frame =
        FrameAllocOptions::new_in(&space).alloc_frame_with(Counted { hook_runs: hook_runs.clone() }).unwrap();
    thread::scope(|s| {
        for _ in 0..THREADS {
            let mine = frame.clone();
            s.spawn(move || {
                for _ in 0..ROUNDS {
                    let a = mine.clone();
                    let b = a.clone();
                    assert!(b.reference_count() >= 3);
                    drop(a);
                    drop(b);
                }
                drop(mine);
            });
        }
    });
    assert_eq!(frame.reference_count(), 1);
    assert_eq!(hook_runs.load(Ordering::SeqCst), 0);

    // Race the last references: whoever drops last runs the hook, once.
    let clones: Vec<_> = (0..THREADS).map(|_| frame.clone()).collect();
    drop(frame);
    thread::scope(|s| {
        for c in clones {
            s.spawn(move || drop(c));
        }
    });
    assert_eq!(hook_runs.load(Ordering::SeqCst), 1);
    assert_eq!(space.phys_stats(), before);
}
