//! A kernel buffer made of separately allocated frames, seen as one
//! contiguous range of kernel virtual addresses: the common use of
//! `KVirtArea::map_frames` (vmalloc in Linux terms).
//!
//! Allocates 16 frames, maps them behind a guard page, fills the buffer
//! across page boundaries, splits it in two, and drops both halves; at the
//! end every frame is free again.
//!
//! ```sh
//! cargo run -p kvirt --example tracked_buffer
//! ```

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::sim::MachineConfig;
use kvirt::PAGE_SIZE;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let space = KernelSpace::new_hosted(MachineConfig::new(64 << 20));
    let free_before = space.phys_stats().free_pages;

    // 16 frames, which need not be contiguous in physical memory.
    let frames =
        (0..16).map(|_| FrameAllocOptions::new_in(&space).alloc_frame()).collect::<Result<Vec<_>, _>>()?;
    let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
    // The area has one unmapped page in front (offset `PAGE_SIZE`), so an
    // underrun faults instead of reaching the previous area.
    let buffer = space.try_map_frames(17 * PAGE_SIZE, PAGE_SIZE, frames, prop)?;
    println!("buffer: {:#x?}, mapped {:#x?}", buffer.range(), buffer.mapped_range());

    // One write across every page boundary of the buffer.
    let data: Vec<u8> = (0..16 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    buffer.write_bytes(PAGE_SIZE, &data)?;
    let mut back = vec![0; data.len()];
    buffer.read_bytes(PAGE_SIZE, &mut back)?;
    assert_eq!(back, data);
    // The unmapped first page is an error, not a fault in the kernel.
    let err = buffer.read_bytes(0, &mut [0; 8]).unwrap_err();
    println!("reading the unmapped first page: {err}");

    // Split after the ninth page: two areas, each owning its frames.
    let (front, back_half) = buffer.try_split(9 * PAGE_SIZE).map_err(|(_, e)| e)?;
    println!("split into {:#x?} and {:#x?}", front.range(), back_half.range());
    let mut byte = [0];
    back_half.read_bytes(0, &mut byte)?;
    assert_eq!(byte[0], data[8 * PAGE_SIZE]);

    drop(front);
    drop(back_half);
    // Unmapped pages go through a TLB flush and an RCU grace period.
    space.synchronize();
    assert_eq!(space.phys_stats().free_pages, free_before, "every frame is free again");
    println!("all 16 frames are free again");
    Ok(())
}
