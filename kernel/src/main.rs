//! # kvirt-kernel: kvirt on a real (emulated) MMU
//!
//! A small bare-metal x86-64 kernel that boots under QEMU, hands the
//! firmware memory map to kvirt, switches to the page table kvirt built and
//! then exercises kernel virtual areas against the MMU: the CPU itself
//! walks kvirt's page tables, caches its translations in its TLB and raises
//! page faults where kvirt left nothing mapped. Run it with
//! `cargo xtask qemu`.
//!
//! ## Boot
//!
//! QEMU's `-kernel` loads this ELF through the PVH entry note and starts
//! `pvh_start32` in 32-bit protected mode ([`boot`]); the assembly there
//! builds identity, linear-mapping and kernel-image boot page tables, enters
//! long mode and calls [`kernel_main`] at the kernel's link address
//! (`0xffff_ffff_8000_0000` + physical). The kernel then:
//!
//! 1. sets up COM1 ([`serial`]), the heap ([`heap`]) and the GDT, TSS and
//!    IDT ([`interrupts`]);
//! 2. copies the memory map out of `hvm_start_info` and gives kvirt the RAM
//!    below 4 GiB ([`memmap`] says why), with the first MiB and the kernel
//!    image marked `Reserved`, and prints the RAM it leaves out;
//! 3. programs `IA32_PAT` with kvirt's layout, creates the
//!    [`KernelSpace`] over [`platform::KernelPlatform`], maps its own image
//!    into it with `map_kernel_image` (text `RX`, rodata `R`, data, stack
//!    and bss `RW`, the page below the stack left unmapped as a guard),
//!    makes it the global space and loads its root into CR3. From then on
//!    only kvirt's mappings exist: the linear mapping, the metadata array,
//!    the image and the areas;
//! 4. maps the local APIC, starts the other CPUs ([`smp`]), runs the
//!    [`scenario`] on the bootstrap CPU and the [`smp_scenario`] on all of
//!    them, and exits QEMU through `isa-debug-exit` ([`exit`]).
//!
//! ## Choices
//!
//! * Serial: a dozen lines of port I/O rather than the `uart_16550` crate
//!   (see [`serial`]).
//! * Heap: `linked_list_allocator` on a 16 MiB array in `.bss` (see [`heap`]).
//! * Exceptions: hand-written entry stubs, as stable Rust has no
//!   `x86-interrupt` ABI; expected page faults are caught by probe routines
//!   ([`probe`]).
//! * Several CPUs ([`smp`]): `cargo xtask qemu` boots four by default.
//!   The bootstrap CPU finds the others in the ACPI MADT ([`acpi`]) and
//!   starts them through a real-mode trampoline; each runs on kvirt's page
//!   table with its own per-CPU data ([`percpu`]), GDT and TSS. Interrupts
//!   are on once a CPU runs kernel code: the only ones are IPIs (TLB
//!   shoot-downs through the local APIC, [`apic`], and wake-ups), whose
//!   handlers take no lock. No preemption.
//! * RCU: grace periods counted per CPU ([`rcu`]).
//!
//! Everything `unsafe` lives in [`cpu`] (instructions), [`boot`],
//! [`interrupts`], [`probe`], [`heap`], [`image`] (linker symbols),
//! [`platform`] (the trust contract) and the few places in [`scenario`]
//! that touch memory through raw virtual addresses.

#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod apic;
mod boot;
mod cpu;
mod exit;
mod heap;
mod image;
mod interrupts;
mod memmap;
mod percpu;
mod platform;
mod probe;
mod rcu;
mod scenario;
mod serial;
mod smp;
mod smp_scenario;
#[path = "../../kernel-common/steps.rs"]
mod steps;

use alloc::boxed::Box;
use core::panic::PanicInfo;

use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::{Paddr, Vaddr};

use crate::exit::{exit_qemu, ExitCode};
use crate::image::ImageLayout;

/// The first MiB: BIOS data, the loader's start-of-day data, legacy holes.
const LOW_MEMORY: core::ops::Range<Paddr> = 0..(1 << 20);

/// The Rust entry, on the boot stack and the boot page tables.
fn kernel_main(start_info: Paddr) -> ! {
    percpu::init(0);
    serial::init();
    serial::init_logger(log::LevelFilter::Info);
    println!(
        "kvirt-kernel: booted through the PVH entry, running at {:#x}",
        kernel_main as *const () as usize
    );
    heap::init();
    interrupts::init();
    require_cpu_features();
    if cpu::under_kvm() {
        println!("kvirt-kernel: running under KVM: the timed loops run a tenth as often (see `scaled`)");
    }

    let boot = boot::read_start_info(start_info);
    let apic_ids = acpi::local_apic_ids(boot.rsdp);
    smp::install_trampoline();
    let image = image::layout();
    println!(
        "kvirt-kernel: image at physical {:#x?}, text {:#x?}, stack {:#x?}",
        image.phys, image.text, image.stack
    );
    let (map, left_out) =
        memmap::for_kvirt(&boot.memory_map, &[LOW_MEMORY, image.phys.clone()], boot::BOOT_LINEAR_MAP_LIMIT);
    println!("kvirt-kernel: firmware memory map: {} entries; kvirt gets:", boot.memory_map.len());
    for region in &map {
        println!("    {:#012x}..{:#012x} {:?}", region.range.start, region.range.end, region.kind);
    }
    // See `memmap`: kvirt is set up through the boot tables' linear mapping.
    for range in &left_out {
        println!(
            "    {:#012x}..{:#012x} left out: at or above the boot linear mapping",
            range.start, range.end
        );
    }
    if !left_out.is_empty() {
        let bytes: usize = left_out.iter().map(core::ops::Range::len).sum();
        println!(
            "kvirt-kernel: {bytes:#x} bytes ({} MiB) of RAM at or above {:#x} left out",
            bytes >> 20,
            boot::BOOT_LINEAR_MAP_LIMIT
        );
    }

    check_1gib_pages(&map);
    // SAFETY: `map` is the firmware's memory map cut to the RAM the boot
    // linear mapping reaches, with the first MiB and the kernel image
    // marked Reserved (`memmap::for_kvirt`); the platform's physical window
    // is that linear mapping, so it covers every RAM range in the map, and
    // nothing but kvirt uses the Usable ones from now on (the kernel's heap
    // lives in its image). RAM is not known to be zero, so kvirt clears its
    // metadata. This is the only kernel space.
    let space = unsafe { KernelSpace::new(Box::new(platform::KernelPlatform::new()), &map, false) };
    let mut space = space.unwrap_or_else(|e| panic!("cannot set up the kernel space: {e}"));
    map_image(&mut space, &image);
    let space =
        KernelSpace::init_global(space).unwrap_or_else(|_| panic!("the global kernel space exists already"));

    let root = space.kernel_root_paddr();
    // SAFETY: kvirt's table maps the whole image at its link address (code,
    // rodata, data, the stack we run on, and bss with the heap, which holds
    // the GDT, TSS and IDT); nothing else is used from here on (the start-of-
    // day data was copied, the serial console and the exit device are ports).
    unsafe { cpu::write_cr3(root as u64) };
    cpu::init_paging_features();
    println!("kvirt-kernel: CR3 = {root:#x}: running on kvirt's page table");

    apic::mask_legacy_pic();
    apic::map();
    apic::enable();
    cpu::enable_interrupts();
    let cpus = smp::start_aps(space, &apic_ids);
    println!(
        "kvirt-kernel: {cpus} CPUs online (APIC IDs {:?} in the MADT), each on kvirt's page table",
        apic_ids
    );

    let ram_end = boot.memory_map.iter().filter(|r| r.kind == boot::E820_RAM).map(|r| r.range.end).max();
    scenario::run(space, &image, ram_end.unwrap_or(0));
    smp_scenario::run(space);
    println!("kvirt-kernel: all checks passed");
    exit_qemu(ExitCode::Success)
}

/// Maps the image into kvirt's table with per-part rights.
fn map_image(space: &mut KernelSpace, image: &ImageLayout) {
    let rx = PageProperty::new_kernel(PageFlags::RX, CachePolicy::Writeback);
    let r = PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback);
    let rw = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
    let parts: [(&str, &core::ops::Range<Vaddr>, PageProperty); 5] = [
        ("text", &image.text, rx),
        ("rodata", &image.rodata, r),
        ("data", &image.data, rw),
        ("stack", &image.stack, rw),
        ("bss", &image.bss, rw),
    ];
    for (name, range, prop) in parts {
        if range.is_empty() {
            continue;
        }
        let pa = ImageLayout::paddr(range.start)..ImageLayout::paddr(range.end);
        // SAFETY: this is the kernel's own image, Reserved in kvirt's memory
        // map, mapped at its link address with the rights the linker script
        // gives the part; it lives as long as the kernel.
        unsafe { space.map_kernel_image(range.start, pa, prop) }
            .unwrap_or_else(|e| panic!("cannot map the kernel's {name}: {e}"));
    }
}

/// Checks what kvirt's page tables need from the CPU.
fn require_cpu_features() {
    assert!(cpu::has_pat(), "the CPU has no PAT; kvirt's cache policies need it");
}

/// Checks that kvirt's linear mapping of `map` needs no 1 GiB page where
/// the CPU has none (KVM on our machines hides them). kvirt maps with
/// 1 GiB pages wherever a range allows and has no switch to avoid them;
/// it allows one where RAM covers a whole aligned GiB. The scenario skips
/// its 1 GiB step on such CPUs.
fn check_1gib_pages(map: &[kvirt::platform::MemoryRegion]) {
    const GIB: usize = 1 << 30;
    if cpu::has_1gib_pages() {
        return;
    }
    let whole_gib = map.iter().any(|r| kvirt::align_up(r.range.start, GIB) + GIB <= r.range.end);
    assert!(
        !whole_gib,
        "the CPU has no 1 GiB pages, and kvirt would map a whole GiB of this RAM with one (boot with less memory)"
    );
    println!("kvirt-kernel: the CPU has no 1 GiB pages: none is needed for this RAM; the 1 GiB step will be skipped");
}

/// How many times to repeat a timed loop whose count is `n` under TCG.
///
/// Under KVM on our (nested) machines every write to a page that has been a
/// page table exits to the hypervisor, which makes a 1-page create+drop
/// cost milliseconds rather than microseconds; the loops then run a tenth
/// as often, so the run ends in minutes. The kernel says so when it starts.
pub fn scaled(n: usize) -> usize {
    static UNDER_KVM: spin::Once<bool> = spin::Once::new();
    if *UNDER_KVM.call_once(cpu::under_kvm) {
        (n / 10).max(2)
    } else {
        n
    }
}

/// The layout the shared steps run on.
type Layout = kvirt::kspace::X86_64Layout;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    // The first CPU to panic reports and ends the run; any other stops
    // here, so that two reports do not interleave.
    static PANICKED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if PANICKED.swap(true, core::sync::atomic::Ordering::SeqCst) {
        cpu::disable_interrupts();
        cpu::halt();
    }
    serial::print_unlocked(format_args!("kvirt-kernel: PANIC on CPU {}: {info}\n", percpu::index()));
    exit_qemu(ExitCode::Failure)
}
