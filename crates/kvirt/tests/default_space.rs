//! The process-wide default kernel space: usable with no set-up at all.
//!
//! Other tests of this file run in parallel on the same space, so nothing
//! here relies on exact counters or on which page comes back.

use kvirt::frame::{Frame, FrameAllocOptions, UFrame};
use kvirt::kspace::{max_paddr, KernelSpace};
use kvirt::PAGE_SIZE;

#[test]
fn frame_allocation_works_with_no_set_up() {
    let frame = FrameAllocOptions::new().alloc_frame().unwrap();
    assert_eq!(frame.reference_count(), 1);
    assert_eq!(frame.size(), PAGE_SIZE);
    assert_eq!(frame.map_level(), 1);
    assert_eq!(frame.paddr() % PAGE_SIZE, 0);
    assert!(frame.paddr() < max_paddr());
}

#[test]
fn default_options_allocate_from_the_default_space() {
    let seg = FrameAllocOptions::default().alloc_segment(3).unwrap();
    assert_eq!(seg.size(), 3 * PAGE_SIZE);
    assert!(seg.end_paddr() <= max_paddr());
    let frames: Vec<_> = seg.into_iter().collect();
    assert!(frames.iter().all(|f| f.reference_count() == 1));
}

#[test]
fn default_frames_are_zeroed_and_hold_bytes() {
    let frame: UFrame = FrameAllocOptions::new().alloc_frame().unwrap().into();
    let mut buf = vec![0xffu8; PAGE_SIZE];
    frame.read_bytes(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    frame.write_bytes(10, b"default").unwrap();
    let mut back = [0u8; 7];
    frame.read_bytes(10, &mut back).unwrap();
    assert_eq!(&back, b"default");
}

#[test]
fn max_paddr_is_the_end_of_the_default_machines_ram() {
    assert_eq!(max_paddr(), 4 << 30);
    assert_eq!(max_paddr(), KernelSpace::global().max_paddr());
}

#[test]
fn default_machine_has_two_cpus() {
    // SAFETY: only the machine's configuration is read.
    let machine = unsafe { KernelSpace::global().machine() }.expect("the hosted default space has a machine");
    assert_eq!(machine.nr_cpus(), 2);
    assert_eq!(machine.ram_size(), 4 << 30);
}

#[test]
fn from_raw_takes_back_a_reference_in_the_default_space() {
    let frame = FrameAllocOptions::new().alloc_frame().unwrap();
    let raw = frame.clone().into_raw();
    assert_eq!(frame.reference_count(), 2);
    // SAFETY: `raw` came from `into_raw` on a `Frame<()>` of the default
    // space, and is taken back once.
    let back = unsafe { Frame::<()>::from_raw(raw) };
    assert_eq!(back.paddr(), frame.paddr());
    assert_eq!(frame.reference_count(), 2);
    drop(back);
    assert_eq!(frame.reference_count(), 1);
}

#[test]
fn default_space_counts_the_frames_a_test_holds() {
    let space = KernelSpace::global();
    let frames: Vec<_> = (0..16).map(|_| FrameAllocOptions::new().alloc_frame().unwrap()).collect();
    // Other tests allocate concurrently, but at least our frames are in use.
    let stats = space.phys_stats();
    assert!(stats.used_pages >= frames.len());
    assert_eq!(stats.used_pages + stats.free_pages, stats.total_pages);
}
