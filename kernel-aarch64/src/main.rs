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
#[path = "../../kernel-common/heap.rs"]
mod heap;
mod platform;
#[path = "../../kernel-common/probe.rs"]
mod probe;
#[path = "../../kernel-common/scenario.rs"]
mod scenario;
mod semihosting;
#[path = "../../kernel-common/setup.rs"]
mod setup;
#[path = "../../kernel-common/steps.rs"]
mod steps;

use alloc::boxed::Box;
use core::panic::PanicInfo;

use kvirt::kspace::Aarch64Layout;
use kvirt::{Paddr, Vaddr};

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

/// The image's link address minus its load address (for `setup`).
const IMAGE_OFFSET: usize = 0xffff_ffff_8020_0000 - 0x4020_0000;

/// Where the device tree and the kernel image sit: reserved from the start
/// of RAM.
const RAM_START: Paddr = 0x4000_0000;

/// Entered from `boot` on the boot table.
#[no_mangle]
extern "C" fn kmain(dtb: Paddr) -> ! {
    heap::init();
    println!("kvirt-kernel-aarch64: EL1 on QEMU virt, device tree at {dtb:#x}");
    // SAFETY: QEMU puts the device tree at the start of RAM for an ELF
    // kernel; the boot tables' linear block maps it, as it maps all of
    // QEMU's RAM (checked against 0x8000_0000); the platform's window is
    // that mapping; the kernel uses only its image (Reserved) from now on;
    // one space.
    let (space, uart) = unsafe {
        setup::space_from_device_tree(
            Box::new(platform::Aarch64Platform::new()),
            dtb,
            RAM_START,
            0x8000_0000,
            0x0900_0000,
        )
    };
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
