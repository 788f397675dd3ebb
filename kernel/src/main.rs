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
//! 4. runs the [`scenario`] and exits QEMU through `isa-debug-exit` ([`exit`]).
//!
//! ## Choices
//!
//! * Serial: a dozen lines of port I/O rather than the `uart_16550` crate
//!   (see [`serial`]).
//! * Heap: `linked_list_allocator` on a 16 MiB array in `.bss` (see [`heap`]).
//! * Exceptions: hand-written entry stubs, as stable Rust has no
//!   `x86-interrupt` ABI; expected page faults are caught by probe routines
//!   ([`probe`]).
//! * One CPU, interrupts always off: TLB shoot-downs are local flushes and
//!   kvirt's `CountingRcu` is the RCU.
//!
//! Everything `unsafe` lives in [`cpu`] (instructions), [`boot`],
//! [`interrupts`], [`probe`], [`heap`], [`image`] (linker symbols),
//! [`platform`] (the trust contract) and the few places in [`scenario`]
//! that touch memory through raw virtual addresses.

#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod cpu;
mod exit;
mod heap;
mod image;
mod interrupts;
mod memmap;
mod platform;
mod probe;
mod scenario;
mod serial;
#[path = "../../kernel-common/steps.rs"]
mod steps;

use alloc::boxed::Box;
use core::panic::PanicInfo;

use kvirt::arch::x86_64::PAT_MSR_VALUE;
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::{Paddr, Vaddr};

use crate::exit::{exit_qemu, ExitCode};
use crate::image::ImageLayout;

/// The first MiB: BIOS data, the loader's start-of-day data, legacy holes.
const LOW_MEMORY: core::ops::Range<Paddr> = 0..(1 << 20);

/// The Rust entry, on the boot stack and the boot page tables.
fn kernel_main(start_info: Paddr) -> ! {
    serial::init();
    serial::init_logger(log::LevelFilter::Info);
    println!(
        "kvirt-kernel: booted through the PVH entry, running at {:#x}",
        kernel_main as *const () as usize
    );
    heap::init();
    interrupts::init();
    require_cpu_features();

    let boot = boot::read_start_info(start_info);
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

    // SAFETY: PAT support was checked; index 0 stays writeback, which is
    // what every live (boot) mapping uses, and kvirt's encoding assumes this
    // value from now on.
    unsafe { cpu::wrmsr(cpu::MSR_IA32_PAT, PAT_MSR_VALUE) };
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
    if cpu::has_global_pages() {
        // SAFETY: PGE is supported; turning it on only makes kvirt's global
        // kernel mappings survive CR3 reloads (the platform flushes them
        // with invlpg or a PGE toggle).
        unsafe { cpu::write_cr4(cpu::read_cr4() | cpu::CR4_PGE) };
    }
    println!("kvirt-kernel: CR3 = {root:#x}: running on kvirt's page table");

    let ram_end = boot.memory_map.iter().filter(|r| r.kind == boot::E820_RAM).map(|r| r.range.end).max();
    scenario::run(space, &image, ram_end.unwrap_or(0));
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
    // kvirt maps with 1 GiB pages wherever a range allows (the linear
    // mapping of large RAM, huge untracked areas) and has no switch to
    // avoid them.
    assert!(cpu::has_1gib_pages(), "the CPU has no 1 GiB pages (run QEMU with -cpu max)");
}

/// The layout the shared steps run on.
type Layout = kvirt::kspace::X86_64Layout;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    serial::print_unlocked(format_args!("kvirt-kernel: PANIC: {info}\n"));
    exit_qemu(ExitCode::Failure)
}
