//! How long a kernel space lives: its handle and every area hold a count,
//! the last one out tears the space down, and a space with pages still in
//! use is leaked rather than freed under them.
//!
//! Whether a space was freed or leaked shows in its simulated machine: the
//! space's platform holds the machine's `Arc`, so the test's own clone is
//! the last one exactly when the space's memory was freed.

use std::sync::{Arc, Barrier};
use std::thread;

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::{KVirtArea, KernelSpace};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::sim::{Machine, MachineConfig};
use kvirt::PAGE_SIZE;

const P: usize = PAGE_SIZE;

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// A small hosted space and a clone of its machine's `Arc`.
fn space() -> (KernelSpace, Arc<Machine>) {
    let space = KernelSpace::new_hosted(MachineConfig::new(8 << 20).cpus(4));
    // SAFETY: the clone is only counted, never used to touch the machine.
    let machine = unsafe { space.machine() }.expect("a hosted space").clone();
    (space, machine)
}

/// An area of `pages` fresh frames, mapped from offset 0.
fn area(space: &KernelSpace, pages: usize) -> KVirtArea {
    let frames = FrameAllocOptions::new_in(space).alloc_segment(pages).unwrap();
    space.try_map_frames(pages * P, 0, frames, rw()).unwrap()
}

/// Whether the space over `machine` was freed: only the test's clone of the
/// machine is left.
fn freed(machine: &Arc<Machine>) -> bool {
    Arc::strong_count(machine) == 1
}

mod areas_keep_their_space {
    use super::*;

    #[test]
    fn an_area_outlives_the_handle_and_still_works() {
        let (space, machine) = space();
        let a = area(&space, 2);
        drop(space);
        assert!(!freed(&machine), "the area still holds the space");
        a.write_bytes(P - 2, b"abcd").unwrap();
        let mut back = [0; 4];
        a.read_bytes(P - 2, &mut back).unwrap();
        assert_eq!(&back, b"abcd");
        assert!(a.query(a.start()).is_some());
        drop(a);
        assert!(freed(&machine), "the last area frees the space once nothing is in use");
    }

    #[test]
    fn split_halves_each_hold_the_space() {
        let (space, machine) = space();
        let (left, right) = area(&space, 4).split(2 * P);
        drop(space);
        drop(left);
        assert!(!freed(&machine), "the right half still holds the space");
        assert!(right.query(right.start()).is_some());
        drop(right);
        assert!(freed(&machine));
    }

    #[test]
    fn a_space_with_a_live_frame_is_leaked_when_its_last_area_goes() {
        let (space, machine) = space();
        let a = area(&space, 1);
        let frame = FrameAllocOptions::new_in(&space).alloc_frame().unwrap();
        drop(space);
        drop(a);
        assert!(!freed(&machine), "a frame still points into the space's memory");
        assert_eq!(frame.reference_count(), 1);
        drop(frame);
    }
}

/// Handles dropped on several threads at once: the review's race, where the
/// space was freed while an area's drop was still using it.
mod racing_drops {
    use super::*;

    /// Rounds of each race. Natively the unfixed code failed within a few
    /// hundred (a spin on a freed lock, or "freeing an area's range
    /// failed").
    const ROUNDS: usize = 300;

    #[test]
    fn the_space_handle_and_its_areas_dropped_on_other_threads_free_the_space_once() {
        for _ in 0..ROUNDS {
            let (space, machine) = space();
            let areas: Vec<KVirtArea> = (0..3).map(|i| area(&space, i + 1)).collect();
            let start = Arc::new(Barrier::new(areas.len() + 1));
            let threads: Vec<_> = areas
                .into_iter()
                .map(|a| {
                    let start = start.clone();
                    thread::spawn(move || {
                        start.wait();
                        drop(a);
                    })
                })
                .collect();
            start.wait();
            drop(space);
            for t in threads {
                t.join().unwrap();
            }
            assert!(freed(&machine), "every handle is gone and nothing is in use");
        }
    }

    #[test]
    fn splits_racing_the_space_handle_drop_leave_every_half_working() {
        for _ in 0..ROUNDS / 3 {
            let (space, machine) = space();
            let areas: Vec<KVirtArea> = (0..2).map(|_| area(&space, 4)).collect();
            let start = Arc::new(Barrier::new(areas.len() + 1));
            let threads: Vec<_> = areas
                .into_iter()
                .map(|a| {
                    let start = start.clone();
                    thread::spawn(move || {
                        start.wait();
                        let (left, right) = a.split(P);
                        let (mid, last) = right.split(P);
                        for half in [&left, &mid, &last] {
                            half.write_bytes(0, b"x").unwrap();
                        }
                    })
                })
                .collect();
            start.wait();
            drop(space);
            for t in threads {
                t.join().unwrap();
            }
            assert!(freed(&machine));
        }
    }
}
