//! Running a kernel space out of memory.
#![allow(dead_code, reason = "not every includer runs out of memory")]

use kvirt::frame::{Frame, FrameAllocOptions};
use kvirt::kspace::{KernelLayout, KernelSpace};

/// Takes every free frame of `space`, so that the next allocation runs out
/// of memory; dropping them gives the memory back.
pub fn take_every_free_frame<L: KernelLayout>(space: &KernelSpace<L>) -> Vec<Frame<()>> {
    let mut hoard = Vec::new();
    while let Ok(frame) = FrameAllocOptions::new_in(space).zeroed(false).alloc_frame() {
        hoard.push(frame);
    }
    hoard
}
