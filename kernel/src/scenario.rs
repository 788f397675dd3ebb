//! The checks, run on kvirt's page table with the real (emulated) MMU.
//!
//! Steps 2 and 5 to 8 are the shared ones of `kernel-common/steps.rs`,
//! which the RISC-V and AArch64 kernels run too; the others are about this
//! machine (the image's mappings, the APICs, 1 GiB pages). The churn's
//! timings are taken on every CPU by [`crate::smp_scenario`].
//!
//! Each step prints one line and panics (failing the QEMU run) on the first
//! broken expectation. Memory is touched through raw virtual addresses with
//! volatile accesses, so every access is a real load or store that the MMU
//! translates; accesses that must fault go through [`crate::probe`].

use kvirt::frame::FrameAllocOptions;
use kvirt::kspace::{KVirtArea, KVirtAreaError, KernelSpace, MappedItemRef};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::spec::Inv;
use kvirt::{align_up, Paddr, PagingLevel, PAGE_SIZE};

use crate::image::{ImageLayout, KERNEL_VIRT_BASE};
use crate::probe;
use crate::steps::{self, expect_fault, rights, translate, uncached, Snapshot};
use crate::{check, cpu, heap, println};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// The I/O APIC's usual address (QEMU's `pc` and `q35`).
const IOAPIC_BASE: Paddr = 0xfec0_0000;

/// An untracked item as `(pa, level, rights)`.
fn untracked(item: Option<MappedItemRef<'_>>) -> Option<(Paddr, PagingLevel, PageProperty)> {
    match item? {
        MappedItemRef::Untracked(pa, level, prop) => Some((pa, level, rights(prop))),
        MappedItemRef::Tracked(..) => None,
    }
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
    println!("[2/9] {}", steps::tracked_frames(space));
    device_memory(space);
    huge_untracked(space, ram_end);
    println!("[5/9] {}", steps::guard_gap(space));
    println!("[6/9] {}", steps::dropped_area(space));
    println!("[7/9] {}", steps::churn(space));
    println!("[8/9] {}", steps::lazy_purge(space));
    let end = Snapshot::take(space);
    check!(end == start, "usage after all steps differs: {end:?} != {start:?}");
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken at the end: {e}"));
    println!("[9/9] everything returned: {end:?}; kvirt's invariants hold");
    println!(
        "kvirt-kernel: report: {} page faults caught, heap in use {} KiB",
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

/// Step 3: device registers mapped untracked and uncached.
fn device_memory(space: &KernelSpace) {
    let lapic_pa = crate::apic::paddr();
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

    if !cpu::has_1gib_pages() {
        println!(
            "[4/9] untracked {:#x}..{:#x} mapped with two 2 MiB pages at {:#x}; the 1 GiB part is skipped: \
             this CPU has no 1 GiB pages",
            two_mib.start,
            two_mib.end,
            area.start()
        );
        return;
    }
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
