//! The checks of the RISC-V and AArch64 demo kernels, one file both
//! include (`#[path]`): the x86-64 demo kernel's scenario on kvirt's table
//! for the kernel's layout (`crate::Layout`) and QEMU's MMU. Each step
//! prints one line and panics (failing the run) on the first broken
//! expectation; accesses that must fault go through the kernel's probe
//! (`crate::boot::{read_u64, write_u64}`, which give the fault as a
//! [`crate::boot::Fault`]).
//!
//! What differs per machine comes from the kernel: `crate::HUGE_DEVICE`
//! (device memory that is never touched, mapped with huge pages) and
//! `crate::uart_idle` (reads the console UART's status through a mapping).

use alloc::vec::Vec;

use kvirt::frame::{Frame, FrameAllocOptions};
use kvirt::kspace::{KVirtArea, KVirtAreaError, KernelSpace, MappedItemRef, PurgeMode};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::spec::Inv;
use kvirt::{Paddr, PAGE_SIZE};

use crate::boot;
use crate::platform::PHYS_BASE;
use crate::println;

type Space = KernelSpace<crate::Layout>;
type Area = KVirtArea<crate::Layout>;

const CHURN_AREAS: usize = 2000;
/// Device memory mapped to check huge untracked pages (never touched).
const PCIE_MMIO: Paddr = crate::HUGE_DEVICE;

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("check failed: `{}`: {}", stringify!($cond), format_args!($($msg)+));
        }
    };
}

fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

fn frames(space: &Space, n: usize) -> Vec<Frame<()>> {
    let seg = FrameAllocOptions::new_in(space).alloc_segment(n).unwrap_or_else(|e| panic!("frames: {e}"));
    seg.into_iter().collect()
}

/// Usage counters that must come back.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    free_pages: usize,
    page_table_pages: usize,
    vmalloc_free: usize,
    areas: usize,
}

impl Snapshot {
    fn take(space: &Space) -> Self {
        space.synchronize();
        let phys = space.phys_stats();
        Snapshot {
            free_pages: phys.free_pages,
            page_table_pages: phys.page_table_pages,
            vmalloc_free: space.vmalloc_stats().free_bytes,
            areas: space.areas().len(),
        }
    }
}

/// Runs every step; `uart` is the console UART's physical address.
pub fn run(space: &Space, uart: Paddr) {
    let start = Snapshot::take(space);
    tracked_frames(space);
    device_memory(space, uart);
    huge_untracked(space);
    guard_gap(space);
    dropped_area(space);
    churn(space);
    lazy_purge(space);
    let end = Snapshot::take(space);
    check!(end == start, "usage after all steps differs: {end:?} != {start:?}");
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken at the end: {e}"));
    println!("[8/8] everything returned: {end:?}; kvirt's invariants hold");
}

fn pattern(frame: usize, word: usize) -> u64 {
    0x5256_0000_0000_0000 | (frame as u64) << 16 | word as u64
}

/// Step 1: frames written through an area, read through the linear mapping.
fn tracked_frames(space: &Space) {
    let fs = frames(space, 4);
    let pas: Vec<Paddr> = fs.iter().map(Frame::paddr).collect();
    let area = space.try_map_frames(5 * PAGE_SIZE, PAGE_SIZE, fs, rw()).unwrap();
    for (i, _) in pas.iter().enumerate() {
        for w in [0, 1, 511] {
            let va = area.start() + (i + 1) * PAGE_SIZE + w * 8;
            // SAFETY: a word of the area's own frame.
            unsafe { (va as *mut u64).write_volatile(pattern(i, w)) };
        }
    }
    for (i, pa) in pas.iter().enumerate() {
        for w in [0, 1, 511] {
            // SAFETY: the linear mapping of a frame the area holds; read only.
            let got = unsafe { ((PHYS_BASE + pa + w * 8) as *const u64).read_volatile() };
            check!(got == pattern(i, w), "frame {i} word {w}: {got:#x}");
        }
    }
    drop(area);
    println!(
        "[1/8] 4 tracked frames: written through the area at VMALLOC, read back through the linear mapping"
    );
}

/// Step 2: the UART mapped untracked and uncached, and read; RAM refused.
fn device_memory(space: &Space, uart: Paddr) {
    let device = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable);
    // SAFETY: the UART's page; only a status register is read.
    let area =
        unsafe { space.try_map_untracked_frames(PAGE_SIZE, 0, uart..uart + PAGE_SIZE, device) }.unwrap();
    let (idle, lsr) = crate::uart_idle(area.start());
    check!(idle, "the UART's transmitter reads idle (status {lsr:#x})");
    let fs = frames(space, 1);
    let pa = fs[0].paddr();
    // SAFETY: refused (tracked RAM), so nothing is mapped.
    let refused = unsafe { space.try_map_untracked_frames(PAGE_SIZE, 0, pa..pa + PAGE_SIZE, device) };
    check!(matches!(refused, Err(KVirtAreaError::TrackedPaddr(_))), "RAM mapped untracked: {refused:?}");
    drop(area);
    println!("[2/8] device memory, untracked and uncached: UART at {uart:#x} reads status {lsr:#x}; mapping RAM untracked is refused");
}

/// Step 3: huge untracked pages.
fn huge_untracked(space: &Space) {
    let len = 4 << 20;
    // SAFETY: device memory that nothing touches.
    let area = unsafe { space.try_map_untracked_frames(len, 0, PCIE_MMIO..PCIE_MMIO + len, rw()) }.unwrap();
    for i in 0..2 {
        match area.query(area.start() + i * (2 << 20) + PAGE_SIZE) {
            Some(MappedItemRef::Untracked(pa, 2, _)) => check!(pa == PCIE_MMIO + i * (2 << 20), "pa {pa:#x}"),
            other => panic!("not a 2 MiB page: {other:?}"),
        }
    }
    println!(
        "[3/8] untracked {:#x}..{:#x} mapped with two 2 MiB pages at {:#x}",
        PCIE_MMIO,
        PCIE_MMIO + len,
        area.start()
    );
}

/// Step 4: the guard page after an area faults.
fn guard_gap(space: &Space) {
    let area = space.try_map_frames(PAGE_SIZE, 0, frames(space, 1), rw()).unwrap();
    // SAFETY: the area's own frame.
    check!(unsafe { boot::write_u64(area.start(), 1) }.is_ok(), "the area is writable");
    // SAFETY: the guard page: the write faults (checked).
    let fault = unsafe { boot::write_u64(area.end(), 1) };
    check!(matches!(fault, Err(f) if f.unmapped_write()), "the guard page write: {fault:?}");
    println!("[4/8] the guard page after an area ({:#x}) faults: {}", area.end(), fault.unwrap_err());
}

/// Step 5: a dropped area's cached translation goes with `sfence.vma`.
fn dropped_area(space: &Space) {
    let area = space.try_map_frames(PAGE_SIZE, 0, frames(space, 1), rw()).unwrap();
    let va = area.start();
    // SAFETY: the area's own frame; the read caches the translation.
    check!(unsafe { boot::read_u64(va) }.is_ok(), "the live area reads");
    drop(area);
    // SAFETY: the dropped area's address: the read faults (checked).
    let fault = unsafe { boot::read_u64(va) };
    check!(matches!(fault, Err(f) if f.unmapped_read()), "the dropped area reads: {fault:?}");
    println!(
        "[5/8] a dropped area's address ({va:#x}) faults after being cached in the TLB: {}",
        fault.unwrap_err()
    );
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Step 6: thousands of areas alive at once, dropped in random order.
fn churn(space: &Space) {
    let before = Snapshot::take(space);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut areas: Vec<(Area, u64)> = Vec::with_capacity(CHURN_AREAS);
    for i in 0..CHURN_AREAS {
        let n = 1 + rng.below(4);
        let area = space.try_map_frames(n * PAGE_SIZE, 0, frames(space, n), rw()).unwrap();
        let tag = 0x6172_6561_0000_0000 | i as u64;
        // SAFETY: the area's own frame.
        unsafe { (area.start() as *mut u64).write_volatile(tag) };
        areas.push((area, tag));
    }
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken with {CHURN_AREAS} areas: {e}"));
    for (area, tag) in &areas {
        // SAFETY: the area's own frame; read only.
        let got = unsafe { (area.start() as *const u64).read_volatile() };
        check!(got == *tag, "area at {:#x}: {got:#x}", area.start());
    }
    for i in (1..areas.len()).rev() {
        let j = rng.below(i + 1);
        areas.swap(i, j);
    }
    drop(areas);
    let after = Snapshot::take(space);
    check!(after == before, "after the churn {after:?} != before {before:?}");
    println!("[6/8] {CHURN_AREAS} areas alive at once, read back, dropped in random order: counters back ({after:?})");
}

/// Step 7: lazy purge: no flush at the drop, a fault after the purge.
fn lazy_purge(space: &Space) {
    let before = Snapshot::take(space);
    space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
    let area = space.try_map_frames(PAGE_SIZE, 0, frames(space, 1), rw()).unwrap();
    let va = area.start();
    // SAFETY: the area's own frame.
    check!(unsafe { boot::read_u64(va) }.is_ok(), "the live area reads");
    drop(area);
    check!(space.purge_stats().pending_areas == 1, "the drop was queued");
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken with an area pending: {e}"));
    space.purge();
    // SAFETY: the purged area's address: the read faults (checked).
    let fault = unsafe { boot::read_u64(va) };
    check!(matches!(fault, Err(f) if f.unmapped_read()), "the purged area reads: {fault:?}");
    space.set_purge_mode(PurgeMode::Eager);
    check!(Snapshot::take(space) == before, "the purge gave everything back");
    println!("[7/8] a lazily dropped area ({va:#x}) is queued, and faults after the purge");
}
