//! # kvirt-kernel-aarch64: kvirt on a real (emulated) Arm MMU
//!
//! A small bare-metal kernel for `aarch64-unknown-none` that QEMU's `virt`
//! machine (`-cpu cortex-a72`) boots at EL1. It reads the memory map from
//! the device tree, builds a kvirt kernel space laid out as
//! [`Aarch64Layout`], maps its own image into it, loads `TTBR1_EL1` (and
//! `TTBR0_EL1`) with its root and runs the RISC-V kernel's checks against
//! the MMU ([`scenario`], one file for both). Run it with `cargo xtask qemu
//! --arch aarch64`.
//!
//! * [`boot`]: entry, the boot tables, the exception vectors and the fault
//!   probe;
//! * [`semihosting`]: the console and the exit status;
//! * [`heap`]: `linked_list_allocator` on a `.bss` array;
//! * [`platform`]: kvirt's platform (`TLBI`, `CountingRcu`).
//!
//! One CPU, interrupts off.

#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod heap;
mod platform;
#[path = "../../kernel-common/scenario.rs"]
mod scenario;
mod semihosting;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;
use core::panic::PanicInfo;

use kvirt::kspace::{Aarch64Layout, KernelSpace};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::platform::MemoryRegion;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __image_end: u8;
}

/// The layout the scenario runs on.
type Layout = Aarch64Layout;

/// A 4 MiB piece of the `virt` machine's PCIe MMIO window: not RAM, never
/// touched, mapped to check huge untracked pages.
const HUGE_DEVICE: Paddr = 0x1000_0000;

/// Whether the PL011 UART mapped at `va` reports its transmitter idle
/// (flag register, offset 0x18: TXFE set, BUSY clear), and that register.
fn uart_idle(va: Vaddr) -> (bool, u8) {
    // SAFETY: `va` maps the UART's page (device memory); a 32-bit read of
    // the flag register has no side effect.
    let fr = unsafe { ((va + 0x18) as *const u32).read_volatile() } as u8;
    (fr & 0x80 != 0 && fr & 0x08 == 0, fr)
}

/// The image's link address minus its load address.
const IMAGE_OFFSET: usize = 0xffff_ffff_8020_0000 - 0x4020_0000;

/// The physical address of a link address in the image.
fn image_paddr(va: Vaddr) -> Paddr {
    va - IMAGE_OFFSET
}

/// Where the device tree and the kernel image sit: reserved from the start
/// of RAM.
const RAM_START: Paddr = 0x4000_0000;

/// Entered from `boot` on the boot table.
#[no_mangle]
extern "C" fn kmain(dtb: Paddr) -> ! {
    heap::init();
    println!("kvirt-kernel-aarch64: EL1 on QEMU virt, device tree at {dtb:#x}");
    // SAFETY: QEMU puts the device tree at the start of RAM for an ELF
    // kernel, which the boot tables' linear block maps; it is only read,
    // before kvirt takes over RAM, and its pages are Reserved below.
    let fdt = unsafe { fdt::Fdt::from_ptr((platform::PHYS_BASE + dtb) as *const u8) }
        .unwrap_or_else(|e| panic!("cannot read the device tree: {e:?}"));
    let uart = fdt
        .chosen()
        .stdout()
        .map(|n| n.reg().and_then(|mut r| r.next()).map(|r| r.starting_address as Paddr));
    let uart = uart.flatten().unwrap_or(0x0900_0000);
    let ram: Vec<Range<Paddr>> = fdt
        .memory()
        .regions()
        .filter_map(|r| Some(r.starting_address as Paddr..r.starting_address as Paddr + r.size?))
        .collect();
    let dtb_range = dtb & !(PAGE_SIZE - 1)..(dtb + fdt.total_size()).next_multiple_of(PAGE_SIZE);
    // Linker symbols: only their addresses are taken.
    let (start, text_end, rodata_end, end) = (
        core::ptr::addr_of!(__image_start) as Vaddr,
        core::ptr::addr_of!(__text_end) as Vaddr,
        core::ptr::addr_of!(__rodata_end) as Vaddr,
        core::ptr::addr_of!(__image_end) as Vaddr,
    );
    let reserved = [RAM_START..image_paddr(end).next_multiple_of(PAGE_SIZE), dtb_range];
    let map = MemoryRegion::carve(&ram, &reserved);
    println!("kvirt-kernel-aarch64: memory map from the device tree (UART at {uart:#x}):");
    for r in &map {
        println!("    {:#012x}..{:#012x} {:?}", r.range.start, r.range.end, r.kind);
    }
    assert!(ram.iter().all(|r| r.end <= 0x8000_0000), "the boot linear mapping covers 1 GiB of RAM");
    // SAFETY: `map` is the device tree's RAM with OpenSBI, the image (heap
    // and stack included) and the device tree Reserved; the platform's
    // window is the boot table's linear gigapage, which covers QEMU's RAM
    // (checked above: RAM ends below 0x8000_0000); RAM is not known to be
    // zero. This is the only kernel space.
    let space = unsafe {
        KernelSpace::<Aarch64Layout>::with_layout(Box::new(platform::Aarch64Platform::new()), &map, false)
    };
    let mut space = space.unwrap_or_else(|e| panic!("cannot set up the kernel space: {e}"));
    let rx = PageProperty::new_kernel(PageFlags::RX, CachePolicy::Writeback);
    let r = PageProperty::new_kernel(PageFlags::R, CachePolicy::Writeback);
    let rw = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
    for (name, range, prop) in
        [("text", start..text_end, rx), ("rodata", text_end..rodata_end, r), ("data", rodata_end..end, rw)]
    {
        if range.is_empty() {
            continue;
        }
        let pa = image_paddr(range.start)..image_paddr(range.end);
        // SAFETY: the kernel's own image, Reserved in the map, mapped at its
        // link address with the part's rights, for the kernel's lifetime.
        unsafe { space.map_kernel_image(range.start, pa, prop) }
            .unwrap_or_else(|e| panic!("cannot map the kernel's {name}: {e}"));
    }
    let root = space.kernel_root_paddr();
    // SAFETY: kvirt's table maps the whole image at its link address (code,
    // data, bss with the stack and heap) and RAM linearly at PHYS_BASE; its
    // lower half is empty, and nothing runs there any more. The console
    // and the exit are semihosting calls, which need no mapping.
    unsafe {
        core::arch::asm!(
            "dsb ishst", "msr ttbr1_el1, {0}", "msr ttbr0_el1, {0}", "isb", "tlbi vmalle1", "dsb ish", "isb",
            in(reg) root
        );
    }
    println!("kvirt-kernel-aarch64: TTBR1_EL1 = {root:#x}: running on kvirt's page table");
    scenario::run(&space, uart);
    println!("kvirt-kernel-aarch64: all checks passed");
    semihosting::exit(0)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    static PANICKED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if PANICKED.swap(true, core::sync::atomic::Ordering::SeqCst) {
        // A panic while failing (the exit device unreachable): stop here;
        // the run fails at its timeout.
        loop {
            core::hint::spin_loop();
        }
    }
    println!("kvirt-kernel-aarch64: PANIC: {info}");
    semihosting::exit(1)
}
