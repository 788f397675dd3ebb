//! The checks, run on kvirt's page table with the real (emulated) MMU.
//!
//! Each step prints one line and panics (failing the QEMU run) on the first
//! broken expectation. Memory is touched through raw virtual addresses with
//! volatile accesses, so every access is a real load or store that the MMU
//! translates; accesses that must fault go through [`crate::probe`].

use alloc::vec::Vec;

use kvirt::frame::{Frame, FrameAllocOptions};
use kvirt::kspace::{
    paddr_to_vaddr, KVirtArea, KVirtAreaError, KernelSpace, MappedItemRef, PurgeMode, VmallocStats,
    GUARD_SIZE,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::spec::Inv;
use kvirt::{align_up, Paddr, PagingLevel, PAGE_SIZE};

use crate::image::{ImageLayout, KERNEL_VIRT_BASE};
use crate::probe::{self, PageFault};
use crate::{cpu, heap, platform, println};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// Create+drop pairs timed in each purge mode of the lazy-purge step.
const PURGE_CHURN: usize = 20_000;
/// Areas created (and all alive at once) in the churn step.
const CHURN_AREAS: usize = 5000;
/// `IA32_APIC_BASE`.
const MSR_APIC_BASE: u32 = 0x1b;
/// The I/O APIC's usual address (QEMU's `pc` and `q35`).
const IOAPIC_BASE: Paddr = 0xfec0_0000;

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

fn uncached() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Uncacheable)
}

/// `prop` without the accessed and dirty bits, which the CPU sets in the
/// entries as it uses them (and kvirt's queries report).
fn rights(prop: PageProperty) -> PageProperty {
    PageProperty { flags: prop.flags - (PageFlags::ACCESSED | PageFlags::DIRTY), ..prop }
}

/// What kvirt's own walk says `va` translates to, accessed and dirty bits
/// left out.
fn translate(space: &KernelSpace, va: usize) -> Option<(Paddr, PageProperty)> {
    space.kernel_translate(va).map(|(pa, prop)| (pa, rights(prop)))
}

/// An untracked item as `(pa, level, rights)`.
fn untracked(item: Option<MappedItemRef<'_>>) -> Option<(Paddr, PagingLevel, PageProperty)> {
    match item? {
        MappedItemRef::Untracked(pa, level, prop) => Some((pa, level, rights(prop))),
        MappedItemRef::Tracked(..) => None,
    }
}

/// Fails unless `result` is a page fault at `addr`.
fn expect_fault<T: core::fmt::Debug>(result: Result<T, PageFault>, addr: usize, what: &str) -> PageFault {
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
struct Snapshot {
    free_pages: usize,
    page_table_pages: usize,
    vmalloc: VmallocStats,
    areas: usize,
}

impl Snapshot {
    fn take(space: &KernelSpace) -> Self {
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
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn alloc_frames(n: usize) -> Vec<Frame<()>> {
    (0..n).map(|_| FrameAllocOptions::new().alloc_frame().expect("out of frames")).collect()
}

/// Runs every step. `ram_end` is the end of the highest RAM in the
/// firmware map (kvirt may have been given less).
pub fn run(space: &'static KernelSpace, image: &ImageLayout, ram_end: Paddr) {
    let start = Snapshot::take(space);
    let phys = space.phys_stats();
    println!(
        "kvirt-kernel: {} MiB managed by kvirt, {} pages free, {} page-table pages, {} TiB of VMALLOC free",
        phys.total_pages * PAGE_SIZE / MIB,
        phys.free_pages,
        phys.page_table_pages,
        start.vmalloc.free_bytes >> 40
    );
    running_on_kvirt(space, image);
    tracked_frames(space);
    device_memory(space);
    huge_untracked(space, ram_end);
    guard_gap();
    dropped_area();
    let churn = churn(space);
    lazy_purge(space);
    let end = Snapshot::take(space);
    check!(end == start, "usage after all steps differs: {end:?} != {start:?}");
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken at the end: {e}"));
    println!("[9/9] everything returned: {end:?}; kvirt's invariants hold");
    println!(
        "kvirt-kernel: report: {} areas made and dropped in the churn ({} frames mapped, peak {} page-table pages), \
         {} page faults caught, heap in use {} KiB",
        churn.areas,
        churn.frames,
        churn.peak_page_table_pages,
        probe::faults_recovered(),
        heap::used() / 1024
    );
}

/// Step 1: the CPU runs on kvirt's table, and only kvirt's mappings exist.
fn running_on_kvirt(space: &KernelSpace, image: &ImageLayout) {
    check!(cpu::read_cr3() as usize & !0xfff == space.kernel_root_paddr(), "CR3 is not kvirt's root");
    let code = running_on_kvirt as *const () as usize;
    let rx = PageProperty::new_kernel(PageFlags::RX, CachePolicy::Writeback);
    check!(
        translate(space, code) == Some((code - KERNEL_VIRT_BASE, rx)),
        "kvirt maps this code at {code:#x} as {:x?}, not RX",
        space.kernel_translate(code)
    );
    // The boot identity map is gone: the image's own physical address is no
    // longer mapped.
    let identity = image.phys.start;
    // SAFETY: the read faults (checked), or reads kernel code bytes.
    let fault = expect_fault(unsafe { probe::read_u64(identity) }, identity, "the boot identity map");
    check!(!fault.present(), "the identity address faults as not present: {fault}");
    // Read-only data is read-only.
    static READ_ONLY: u64 = 0x5eed;
    let ro = core::ptr::addr_of!(READ_ONLY) as usize;
    check!(image.rodata.contains(&ro), "READ_ONLY at {ro:#x} is not in rodata {:#x?}", image.rodata);
    // SAFETY: the write faults (checked); were it to succeed it would store
    // the value the static already holds.
    let fault = expect_fault(unsafe { probe::write_u64(ro, 0x5eed) }, ro, "a write to rodata");
    check!(fault.present() && fault.write(), "a write to rodata is a protection fault: {fault}");
    // The page below the stack is a guard.
    let guard = image.stack_guard.start;
    // SAFETY: the read faults (checked), or reads the unused guard page.
    let fault = expect_fault(unsafe { probe::read_u64(guard) }, guard, "the stack guard");
    check!(!fault.present(), "the stack guard is not present: {fault}");
    println!(
        "[1/9] running on kvirt's page table: code RX, rodata read-only, stack guard and boot identity map unmapped"
    );
}

fn pattern(frame: usize, word: usize) -> u64 {
    0x6b76_6972_7400_0000 ^ ((frame as u64) << 16) ^ word as u64
}

/// Step 2: tracked frames, written through the area, read through the
/// linear mapping.
fn tracked_frames(space: &KernelSpace) {
    const WORDS: [usize; 3] = [0, 1, PAGE_SIZE / 8 - 1];
    let frames = alloc_frames(4);
    let paddrs: Vec<Paddr> = frames.iter().map(Frame::paddr).collect();
    let area = KVirtArea::map_frames(6 * PAGE_SIZE, PAGE_SIZE, frames, rw());
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
            let old = unsafe { ptr.read_volatile() };
            check!(old == 0, "frame {i} was not zeroed");
            // SAFETY: as above.
            unsafe { ptr.write_volatile(pattern(i, word)) };
        }
    }
    for (i, &pa) in paddrs.iter().enumerate() {
        for word in WORDS {
            let ptr = (paddr_to_vaddr(pa) as *const u64).wrapping_add(word);
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
    println!(
        "[2/9] 4 tracked frames: written through the area at VMALLOC, read back through the linear mapping"
    );
}

/// Step 3: device registers mapped untracked and uncached.
fn device_memory(space: &KernelSpace) {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let apic_base_msr = unsafe { cpu::rdmsr(MSR_APIC_BASE) };
    check!(apic_base_msr & (1 << 11) != 0, "the local APIC is disabled");
    check!(apic_base_msr & (1 << 10) == 0, "the local APIC is in x2APIC mode (no MMIO)");
    let lapic_pa = (apic_base_msr & 0x000f_ffff_ffff_f000) as Paddr;
    // SAFETY: the local APIC's register page: device memory that no Rust
    // object owns; the kernel only reads its version register.
    let lapic =
        unsafe { KVirtArea::map_untracked_frames(PAGE_SIZE, 0, lapic_pa..lapic_pa + PAGE_SIZE, uncached()) };
    check!(
        untracked(lapic.query(lapic.start())) == Some((lapic_pa, 1, uncached())),
        "the APIC page is not mapped untracked and uncached"
    );
    // SAFETY: the APIC version register (offset 0x30), 32-bit aligned,
    // mapped uncached just above; reading it has no side effect.
    let version = unsafe { ((lapic.start() + 0x30) as *const u32).read_volatile() };
    let apic_version = version & 0xff;
    check!(apic_version != 0 && apic_version != 0xff, "local APIC version register reads {version:#x}");

    // SAFETY: the I/O APIC's register window: device memory that no Rust
    // object owns; the kernel selects and reads its version register only.
    let ioapic = unsafe {
        KVirtArea::map_untracked_frames(PAGE_SIZE, 0, IOAPIC_BASE..IOAPIC_BASE + PAGE_SIZE, uncached())
    };
    let (ioregsel, iowin) = (ioapic.start() as *mut u32, (ioapic.start() + 0x10) as *const u32);
    // SAFETY: IOREGSEL at +0x00, mapped uncached just above; selecting
    // register 1 (version) changes nothing else.
    unsafe { ioregsel.write_volatile(1) };
    // SAFETY: IOWIN at +0x10, mapped uncached; reading the version register
    // has no side effect.
    let io_version = unsafe { iowin.read_volatile() };
    let redirections = ((io_version >> 16) & 0xff) + 1;
    // I/O APIC versions are 0x1X or 0x2X; 16 to 120 redirection entries
    // covers real parts (QEMU has 24).
    check!(
        (0x10..=0x2f).contains(&(io_version & 0xff)) && (16..=120).contains(&redirections),
        "I/O APIC version register reads {io_version:#x}"
    );

    // kvirt refuses to map RAM it can hand out as untracked memory.
    let frame = FrameAllocOptions::new().alloc_frame().expect("frame");
    let pa = frame.paddr();
    // SAFETY: rejected before anything is mapped (checked).
    let aliasing =
        unsafe { KVirtArea::try_map_untracked_frames(PAGE_SIZE, 0, pa..pa + PAGE_SIZE, uncached()) };
    check!(
        matches!(aliasing, Err(KVirtAreaError::TrackedPaddr(_))),
        "mapping an allocatable frame untracked gave {aliasing:?}"
    );
    drop((lapic, ioapic, frame));
    let _ = space;
    println!(
        "[3/9] device memory, untracked and uncached: local APIC at {lapic_pa:#x} version {apic_version:#x}, \
         I/O APIC at {IOAPIC_BASE:#x} version {:#x} with {redirections} redirection entries; \
         mapping RAM untracked is refused",
        io_version & 0xff
    );
}

/// Step 4: huge untracked mappings use 2 MiB and 1 GiB pages, and the MMU
/// walks them.
fn huge_untracked(space: &KernelSpace, ram_end: Paddr) {
    // Physical space above all RAM (and above 4 GiB): nothing there,
    // nothing allocatable.
    let base = align_up(ram_end.max(space.max_paddr()).max(4 * GIB), GIB);
    let two_mib = base..base + 4 * MIB;
    // SAFETY: unbacked physical space above RAM; only read.
    let area = unsafe { KVirtArea::map_untracked_frames(4 * MIB, 0, two_mib.clone(), uncached()) };
    check!(area.start() % (2 * MIB) == 0, "the area at {:#x} is not 2 MiB aligned", area.start());
    for offset in [0, 2 * MIB] {
        let item = untracked(area.query(area.start() + offset + 0x1234));
        check!(
            item == Some((base + offset, 2, uncached())),
            "at offset {offset:#x}: {item:?} is not a 2 MiB page"
        );
    }
    let probe_va = area.start() + 3 * MIB + 0x40;
    check!(
        translate(space, probe_va) == Some((base + 3 * MIB + 0x40, uncached())),
        "kvirt's walk of the 2 MiB page disagrees"
    );
    // SAFETY: unbacked physical space: the read has no effect.
    let read = unsafe { probe::read_u64(probe_va) };
    check!(read.is_ok(), "reading through the 2 MiB page faulted: {read:?}");

    let one_gib = base + GIB..base + 2 * GIB;
    // SAFETY: as above.
    let big = unsafe { KVirtArea::map_untracked_frames(GIB, 0, one_gib.clone(), uncached()) };
    check!(big.start() % GIB == 0, "the area at {:#x} is not 1 GiB aligned", big.start());
    let item = untracked(big.query(big.start() + GIB / 2));
    check!(item == Some((one_gib.start, 3, uncached())), "{item:?} is not a 1 GiB page");
    // SAFETY: as above.
    let read = unsafe { probe::read_u64(big.start() + GIB - 8) };
    check!(read.is_ok(), "reading through the 1 GiB page faulted: {read:?}");
    println!(
        "[4/9] untracked {:#x}..{:#x} mapped with two 2 MiB pages at {:#x}, and {:#x}..{:#x} with one 1 GiB page at {:#x}",
        two_mib.start,
        two_mib.end,
        area.start(),
        one_gib.start,
        one_gib.end,
        big.start()
    );
}

/// Step 5: the page after an area is an unmapped guard.
fn guard_gap() {
    let area = KVirtArea::map_frames(2 * PAGE_SIZE, 0, alloc_frames(2), rw());
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
    println!("[5/9] the guard page after an area ({:#x}) faults: {fault}", area.end());
}

/// Step 6: after an area is dropped its addresses fault, although the TLB
/// had cached them (kvirt flushed).
fn dropped_area() {
    let area = KVirtArea::map_frames(PAGE_SIZE, 0, alloc_frames(1), rw());
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
    println!("[6/9] a dropped area's address ({va:#x}) faults after being cached in the TLB: {fault}");
}

struct ChurnReport {
    areas: usize,
    frames: usize,
    peak_page_table_pages: usize,
}

/// Step 7: thousands of areas alive at once, then dropped in random order;
/// every counter comes back.
fn churn(space: &KernelSpace) -> ChurnReport {
    let before = Snapshot::take(space);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut areas: Vec<(KVirtArea, usize, u64)> = Vec::with_capacity(CHURN_AREAS);
    let mut frames = 0;
    for i in 0..CHURN_AREAS {
        let n = 1 + rng.below(4);
        let extra = rng.below(3);
        let offset = rng.below(extra + 1) * PAGE_SIZE;
        let area = KVirtArea::map_frames((n + extra) * PAGE_SIZE, offset, alloc_frames(n), rw());
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
        let through_linear = unsafe { (paddr_to_vaddr(frame.paddr()) as *const u64).read_volatile() };
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
    println!(
        "[7/9] {CHURN_AREAS} areas ({frames} frames) alive at once, disjoint with guard gaps, read back through both \
         mappings, dropped in random order: free frames ({}), page-table frames ({}, peak {peak_page_table_pages}) \
         and free VMALLOC bytes ({:#x}) are back",
        after.free_pages,
        after.page_table_pages,
        after.vmalloc.free_bytes
    );
    ChurnReport { areas: CHURN_AREAS, frames, peak_page_table_pages }
}

/// Step 8: lazy purge on a real MMU. A lazily dropped area is unmapped at
/// once but keeps its range and frame until the purge; after the purge its
/// address faults although the TLB had cached it. Then a churn of 1-page
/// areas, eager and lazy, timed in TSC cycles and counting flushes.
fn lazy_purge(space: &KernelSpace) {
    let before = Snapshot::take(space);
    space.set_purge_mode(PurgeMode::Lazy { max_pending_pages: usize::MAX });
    let area = KVirtArea::map_frames(PAGE_SIZE, 0, alloc_frames(1), rw());
    let va = area.start();
    // SAFETY: the area's own frame; this read caches the translation.
    let read = unsafe { probe::read_u64(va) };
    check!(read.is_ok(), "the live area reads: {read:?}");
    let flushes = platform::flushes();
    drop(area);
    check!(platform::flushes() == flushes, "a lazy drop flushed");
    check!(translate(space, va).is_none(), "a lazily dropped area is still mapped");
    let stats = space.purge_stats();
    check!(stats.pending_areas == 1, "pending after the drop: {stats:?}");
    check!(space.vmalloc_stats() != before.vmalloc, "the dead area's range was freed before its purge");
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken with an area pending: {e}"));
    space.purge();
    check!(platform::flushes() > flushes, "the purge did not flush");
    // SAFETY: the purged area's address: the read faults (checked).
    let fault = expect_fault(unsafe { probe::read_u64(va) }, va, "a purged area");
    check!(!fault.present(), "the purged area faults as not present: {fault}");
    check!(Snapshot::take(space) == before, "the purge gave everything back");

    let row = |mode: PurgeMode| {
        space.set_purge_mode(mode);
        let (flushes, start) = (platform::flushes(), cpu::rdtsc());
        for _ in 0..PURGE_CHURN {
            drop(KVirtArea::map_frames(PAGE_SIZE, 0, alloc_frames(1), rw()));
        }
        let cycles = (cpu::rdtsc() - start) / PURGE_CHURN as u64;
        let per_1000 = (platform::flushes() - flushes) * 1000 / PURGE_CHURN;
        space.set_purge_mode(PurgeMode::Eager);
        (cycles, per_1000)
    };
    let (eager_cycles, eager_flushes) = row(PurgeMode::Eager);
    let (lazy_cycles, lazy_flushes) = row(PurgeMode::lazy_for_cpus(1));
    check!(
        lazy_flushes * 50 <= eager_flushes,
        "lazy {lazy_flushes} vs eager {eager_flushes} flushes per 1000 drops"
    );
    check!(Snapshot::take(space) == before, "the churns gave everything back");
    println!(
        "[8/9] a lazily dropped area ({va:#x}) is unmapped at once, keeps its range until the purge, and faults after \
         it: {fault}; 1-page create+drop churn, 1 CPU: eager {eager_cycles} TSC cycles and {eager_flushes} flushes per \
         1000 drops, lazy {lazy_cycles} cycles and {lazy_flushes} flushes"
    );
}
