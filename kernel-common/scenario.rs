//! The RISC-V and AArch64 kernels' scenario (each includes this file with
//! `#[path]`): the shared steps of `steps.rs`, which the x86-64 kernel runs
//! too, and two of the x86-64 kernel's machine-specific ones done with
//! this machine's devices: the console UART mapped untracked
//! (`crate::uart_idle` reads its status) and huge untracked pages over
//! `crate::HUGE_DEVICE`, device memory that is never touched.

use kvirt::kspace::{KVirtAreaError, MappedItemRef};
use kvirt::spec::Inv;
use kvirt::{Paddr, PAGE_SIZE};

use crate::steps::{self, alloc_frames, rw, Snapshot, Space};
use crate::{check, println};

/// Runs every step; `uart` is the console UART's physical address.
pub fn run(space: &Space, uart: Paddr) {
    let start = Snapshot::take(space);
    println!("[1/8] {}", steps::tracked_frames(space));
    println!("[2/8] {}", device_memory(space, uart));
    println!("[3/8] {}", huge_untracked(space));
    println!("[4/8] {}", steps::guard_gap(space));
    println!("[5/8] {}", steps::dropped_area(space));
    println!("[6/8] {}", steps::churn(space));
    println!("[7/8] {}", steps::lazy_purge(space));
    let end = Snapshot::take(space);
    check!(end == start, "usage after all steps differs: {end:?} != {start:?}");
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken at the end: {e}"));
    println!("[8/8] everything returned: {end:?}; kvirt's invariants hold");
}

/// The UART mapped untracked and uncached, and read; RAM refused.
fn device_memory(space: &Space, uart: Paddr) -> alloc::string::String {
    let device = steps::uncached();
    // SAFETY: the UART's page; only a status register is read.
    let area =
        unsafe { space.try_map_untracked_frames(PAGE_SIZE, 0, uart..uart + PAGE_SIZE, device) }.unwrap();
    let (idle, status) = crate::uart_idle(area.start());
    check!(idle, "the UART's transmitter reads idle (status {status:#x})");
    let frames = alloc_frames(space, 1);
    let pa = frames[0].paddr();
    // SAFETY: refused (tracked RAM), so nothing is mapped.
    let refused = unsafe { space.try_map_untracked_frames(PAGE_SIZE, 0, pa..pa + PAGE_SIZE, device) };
    check!(matches!(refused, Err(KVirtAreaError::TrackedPaddr(_))), "RAM mapped untracked: {refused:?}");
    alloc::format!(
        "device memory, untracked and uncached: UART at {uart:#x} reads status {status:#x}; mapping RAM \
         untracked is refused"
    )
}

/// Huge untracked pages: 4 MiB of device memory as two 2 MiB pages.
fn huge_untracked(space: &Space) -> alloc::string::String {
    let (pa, len) = (crate::HUGE_DEVICE, 4 << 20);
    // SAFETY: device memory that nothing touches.
    let area = unsafe { space.try_map_untracked_frames(len, 0, pa..pa + len, rw()) }.unwrap();
    for i in 0..2 {
        match area.query(area.start() + i * (2 << 20) + PAGE_SIZE) {
            Some(MappedItemRef::Untracked(got, 2, _)) => check!(got == pa + i * (2 << 20), "pa {got:#x}"),
            other => panic!("not a 2 MiB page: {other:?}"),
        }
    }
    alloc::format!("untracked {:#x}..{:#x} mapped with two 2 MiB pages at {:#x}", pa, pa + len, area.start())
}
