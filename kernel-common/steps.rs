//! The checks all three demo kernels run, on kvirt's table for the
//! kernel's layout and the CPU's own MMU: one file each kernel includes
//! with `#[path]`. Each step panics (failing the run) on the first broken
//! expectation and returns the line the kernel prints for it.
//!
//! What a kernel gives:
//!
//! * `crate::Layout`, its kvirt layout;
//! * `crate::probe::{read_u64, write_u64}`, accesses that survive a page
//!   fault and return it as a `crate::probe::Fault` with the faulting
//!   `addr`, `present()` (a protection fault rather than a missing entry)
//!   and `write()`;
//! * `crate::platform::PHYS_BASE`, where RAM is mapped linearly;
//! * `crate::platform::flushes()`, the TLB flushes kvirt has asked for.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use kvirt::frame::{Frame, FrameAllocOptions};
use kvirt::kspace::{KVirtArea, KernelSpace, MappedItemRef, PurgeMode, VmallocStats, GUARD_SIZE};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::spec::Inv;
use kvirt::{Paddr, PAGE_SIZE};

use crate::probe::{self, Fault};

/// The kernel's space.
pub type Space = KernelSpace<crate::Layout>;
type Area = KVirtArea<crate::Layout>;

/// Areas created (and all alive at once) in the churn step.
const CHURN_AREAS: usize = 3000;

/// Panics with the condition and a message unless `$cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            panic!("check failed: `{}`: {}", stringify!($cond), format_args!($($msg)+));
        }
    };
}

/// Kernel read-write memory.
pub fn rw() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// Kernel read-write device memory (uncached).
pub fn uncached() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable)
}

/// `prop` without the accessed and dirty bits, which the CPU or the format
/// set in the entries (and kvirt's queries report).
pub fn rights(prop: PageProperty) -> PageProperty {
    PageProperty { flags: prop.flags - (PageFlags::ACCESSED | PageFlags::DIRTY), ..prop }
}

/// What kvirt's own walk says `va` translates to, accessed and dirty bits
/// left out.
pub fn translate(space: &Space, va: usize) -> Option<(Paddr, PageProperty)> {
    space.kernel_translate(va).map(|(pa, prop)| (pa, rights(prop)))
}

/// Fails unless `result` is a page fault at `addr`.
pub fn expect_fault<T: core::fmt::Debug>(result: Result<T, Fault>, addr: usize, what: &str) -> Fault {
    match result {
        Err(fault) => {
            check!(fault.addr == addr, "{what}: the fault is at {:#x}, not {addr:#x}", fault.addr);
            fault
        }
        Ok(value) => panic!("{what}: the access at {addr:#x} did not fault (it gave {value:x?})"),
    }
}

/// Usage counters that must come back after everything is dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Free frames.
    pub free_pages: usize,
    /// Page-table frames.
    pub page_table_pages: usize,
    /// VMALLOC.
    pub vmalloc: VmallocStats,
    /// Live areas.
    pub areas: usize,
}

impl Snapshot {
    /// The counters after every deferred release.
    pub fn take(space: &Space) -> Self {
        space.synchronize();
        let phys = space.phys_stats();
        Snapshot {
            free_pages: phys.free_pages,
            page_table_pages: phys.page_table_pages,
            vmalloc: space.vmalloc_stats(),
            areas: space.areas().len(),
        }
    }
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; zero is avoided).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `n` fresh frames of the space.
pub fn alloc_frames(space: &Space, n: usize) -> Vec<Frame<()>> {
    (0..n).map(|_| FrameAllocOptions::new_in(space).alloc_frame().expect("out of frames")).collect()
}

fn pattern(frame: usize, word: usize) -> u64 {
    0x6b76_6972_7400_0000 ^ ((frame as u64) << 16) ^ word as u64
}

/// The linear-mapping address of `pa`.
fn linear(pa: Paddr) -> usize {
    crate::platform::PHYS_BASE + pa
}

/// Tracked frames, written through the area, read through the linear
/// mapping; queries, kvirt's walk and byte access agree.
pub fn tracked_frames(space: &Space) -> String {
    const WORDS: [usize; 3] = [0, 1, PAGE_SIZE / 8 - 1];
    let frames = alloc_frames(space, 4);
    let paddrs: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
    let area = space.try_map_frames(6 * PAGE_SIZE, PAGE_SIZE, frames, rw()).expect("map_frames");
    check!(area.query(area.start()).is_none(), "the page before the map offset is mapped");
    check!(area.query(area.end() - PAGE_SIZE).is_none(), "the page after the frames is mapped");
    for (i, &pa) in paddrs.iter().enumerate() {
        let va = area.start() + (i + 1) * PAGE_SIZE;
        match area.query(va) {
            Some(MappedItemRef::Tracked(frame, prop)) => {
                check!(
                    frame.paddr() == pa && rights(prop) == rw(),
                    "frame {i} is mapped as {:#x} {prop:?}",
                    frame.paddr()
                );
            }
            other => panic!("frame {i}: query gave {other:?}"),
        }
        check!(translate(space, va + 8) == Some((pa + 8, rw())), "kvirt's walk disagrees for frame {i}");
        for word in WORDS {
            let ptr = (va as *mut u64).wrapping_add(word);
            // SAFETY: `va` maps frame `i`, which the area owns; nothing else
            // accesses it.
            unsafe { ptr.write_volatile(pattern(i, word)) };
        }
    }
    for (i, &pa) in paddrs.iter().enumerate() {
        for word in WORDS {
            let ptr = (linear(pa) as *const u64).wrapping_add(word);
            // SAFETY: the linear mapping of frame `i`, alive while the area
            // holds it; only read.
            let got = unsafe { ptr.read_volatile() };
            check!(got == pattern(i, word), "frame {i} word {word}: {got:#x} through the linear mapping");
        }
    }
    let mut buf = [0u8; 8];
    area.read_bytes(PAGE_SIZE, &mut buf).expect("read_bytes");
    check!(u64::from_le_bytes(buf) == pattern(0, 0), "KVirtArea::read_bytes disagrees");
    let free_before = space.phys_stats().free_pages;
    drop(area);
    space.synchronize();
    check!(space.phys_stats().free_pages >= free_before + 4, "dropping the area did not free its 4 frames");
    String::from(
        "4 tracked frames: written through the area at VMALLOC, read back through the linear mapping",
    )
}

/// The page after an area is an unmapped guard, for reads and writes.
pub fn guard_gap(space: &Space) -> String {
    let area = space.try_map_frames(2 * PAGE_SIZE, 0, alloc_frames(space, 2), rw()).expect("map_frames");
    let last = area.end() - 8;
    // SAFETY: the area's own frame, owned by it; the probe writes then reads.
    let wrote = unsafe { probe::write_u64(last, 42) };
    check!(wrote.is_ok(), "writing the area's last word faulted: {wrote:?}");
    // SAFETY: the guard page after the area: the read faults (checked).
    let fault = expect_fault(unsafe { probe::read_u64(area.end()) }, area.end(), "the guard page");
    check!(!fault.present() && !fault.write(), "the guard fault is a not-present read: {fault}");
    // SAFETY: as above, for a write.
    let fault =
        expect_fault(unsafe { probe::write_u64(area.end() + 8, 1) }, area.end() + 8, "the guard page");
    check!(!fault.present() && fault.write(), "the guard fault is a not-present write: {fault}");
    format!("the guard page after an area ({:#x}) faults: {fault}", area.end())
}

/// After an area is dropped its address faults, although the TLB had
/// cached it (kvirt flushed).
pub fn dropped_area(space: &Space) -> String {
    let area = space.try_map_frames(PAGE_SIZE, 0, alloc_frames(space, 1), rw()).expect("map_frames");
    let va = area.start();
    // SAFETY: the area's own frame, owned by it.
    let wrote = unsafe { probe::write_u64(va, 0xfeed) };
    // SAFETY: as above; this read puts the translation in the TLB.
    let read = unsafe { probe::read_u64(va) };
    check!(wrote.is_ok() && read == Ok(0xfeed), "the live area reads back {read:?}");
    drop(area);
    // SAFETY: the dropped area's address: the read faults (checked).
    let fault = expect_fault(unsafe { probe::read_u64(va) }, va, "the dropped area");
    check!(!fault.present(), "the dropped area faults as not present: {fault}");
    format!("a dropped area's address ({va:#x}) faults after being cached in the TLB: {fault}")
}

/// Thousands of areas alive at once, then dropped in random order; every
/// counter comes back.
pub fn churn(space: &Space) -> String {
    let before = Snapshot::take(space);
    let mut rng = Rng::new(1);
    let mut areas: Vec<(Area, usize, u64)> = Vec::with_capacity(CHURN_AREAS);
    let mut frames = 0;
    for i in 0..CHURN_AREAS {
        let n = 1 + rng.below(4);
        let extra = rng.below(3);
        let offset = rng.below(extra + 1) * PAGE_SIZE;
        let area =
            space.try_map_frames((n + extra) * PAGE_SIZE, offset, alloc_frames(space, n), rw()).expect("map");
        let tag = 0x6172_6561_0000_0000 | i as u64;
        for page in 0..n {
            let ptr = (area.start() + offset + page * PAGE_SIZE) as *mut u64;
            // SAFETY: a page of the area's own frames, owned by it.
            unsafe { ptr.write_volatile(tag) };
        }
        areas.push((area, offset, tag));
        frames += n;
    }
    let infos = space.areas();
    check!(infos.len() == before.areas + CHURN_AREAS, "{} areas registered", infos.len());
    for pair in infos.windows(2) {
        check!(
            pair[0].range.end + GUARD_SIZE <= pair[1].range.start,
            "areas {:#x?} and {:#x?} have no guard gap",
            pair[0].range,
            pair[1].range
        );
    }
    for (area, offset, tag) in &areas {
        let va = area.start() + offset;
        // SAFETY: the area's own frame; only read.
        let through_area = unsafe { (va as *const u64).read_volatile() };
        let Some(MappedItemRef::Tracked(frame, _)) = area.query(va) else { panic!("{va:#x} is not tracked") };
        // SAFETY: the linear mapping of a frame the area holds; only read.
        let through_linear = unsafe { (linear(frame.paddr()) as *const u64).read_volatile() };
        check!(
            through_area == *tag && through_linear == *tag,
            "area at {va:#x}: {through_area:#x} / {through_linear:#x}, expected {tag:#x}"
        );
    }
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken with {CHURN_AREAS} areas: {e}"));
    let peak_page_table_pages = space.phys_stats().page_table_pages;
    // Drop in a random order (Fisher-Yates).
    for i in (1..areas.len()).rev() {
        let j = rng.below(i + 1);
        areas.swap(i, j);
    }
    let last_va = areas.last().map(|(a, offset, _)| a.start() + offset).expect("areas");
    drop(areas);
    // SAFETY: a dropped area's address: the read faults (checked).
    expect_fault(unsafe { probe::read_u64(last_va) }, last_va, "a dropped churn area");
    let after = Snapshot::take(space);
    check!(after == before, "after the churn {after:?} != before {before:?}");
    format!(
        "{CHURN_AREAS} areas ({frames} frames) alive at once, disjoint with guard gaps, read back through both \
         mappings, dropped in random order: free frames ({}), page-table frames ({}, peak {peak_page_table_pages}) \
         and free VMALLOC bytes ({:#x}) are back",
        after.free_pages, after.page_table_pages, after.vmalloc.free_bytes
    )
}

/// Lazy purge on the real MMU: a lazy drop unmaps at once but neither
/// flushes nor gives its range back; after the purge (which flushes) the
/// address, cached in the TLB before, faults.
pub fn lazy_purge(space: &Space) -> String {
    let before = Snapshot::take(space);
    space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
    let area = space.try_map_frames(PAGE_SIZE, 0, alloc_frames(space, 1), rw()).expect("map_frames");
    let va = area.start();
    // SAFETY: the area's own frame; this read caches the translation.
    let read = unsafe { probe::read_u64(va) };
    check!(read.is_ok(), "the live area reads: {read:?}");
    let flushes = crate::platform::flushes();
    drop(area);
    check!(crate::platform::flushes() == flushes, "a lazy drop flushed");
    check!(translate(space, va).is_none(), "a lazily dropped area is still mapped");
    let stats = space.purge_stats();
    check!(stats.pending_areas == 1, "pending after the drop: {stats:?}");
    check!(space.vmalloc_stats() != before.vmalloc, "the dead area's range was freed before its purge");
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken with an area pending: {e}"));
    space.purge();
    check!(crate::platform::flushes() > flushes, "the purge did not flush");
    // SAFETY: the purged area's address: the read faults (checked).
    let fault = expect_fault(unsafe { probe::read_u64(va) }, va, "a purged area");
    check!(!fault.present(), "the purged area faults as not present: {fault}");
    space.set_purge_mode(PurgeMode::Eager);
    check!(Snapshot::take(space) == before, "the purge gave everything back");
    format!(
        "a lazily dropped area ({va:#x}) is unmapped at once, keeps its range until the purge, and faults after it: \
         {fault}"
    )
}
