//! # kvirt-kernel-riscv: kvirt on a real (emulated) RISC-V MMU
//!
//! A small bare-metal kernel for `riscv64gc-unknown-none-elf` that QEMU's
//! `virt` machine boots through OpenSBI (`-bios default`), in S-mode. It
//! reads the memory map from the device tree, builds a kvirt kernel space
//! laid out as [`Sv39Layout`], maps its own image into it, writes `satp`
//! and runs the same checks as the x86-64 demo kernel against the MMU
//! ([`scenario`]). Run it with `cargo xtask qemu --arch riscv64`.
//!
//! * [`boot`]: entry, the boot page table, the trap vector and the fault
//!   probe;
//! * [`console`]: output through the SBI;
//! * [`heap`]: `linked_list_allocator` on a `.bss` array;
//! * [`platform`]: kvirt's platform (`sfence.vma`, `CountingRcu`);
//! * [`exit`]: pass or fail through the `sifive_test` device.
//!
//! One hart, interrupts off.

#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod console;
mod exit;
#[path = "../../kernel-common/heap.rs"]
mod heap;
mod platform;
#[path = "../../kernel-common/probe.rs"]
mod probe;
#[path = "../../kernel-common/scenario.rs"]
mod scenario;
#[path = "../../kernel-common/setup.rs"]
mod setup;
#[path = "../../kernel-common/steps.rs"]
mod steps;

use alloc::boxed::Box;
use core::panic::PanicInfo;

use kvirt::kspace::Sv39Layout;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

/// The layout the scenario runs on.
type Layout = Sv39Layout;

/// A 4 MiB piece of the `virt` machine's PCIe MMIO window: not RAM, never
/// touched, mapped to check huge untracked pages.
const HUGE_DEVICE: Paddr = 0x4000_0000;

/// Whether the 16550 UART mapped at `va` reports its transmitter idle (line
/// status register, offset 5: THRE or TEMT), and that register.
fn uart_idle(va: Vaddr) -> (bool, u8) {
    // SAFETY: `va` maps the UART's page (uncached); a byte read of the line
    // status register has no side effect.
    let lsr = unsafe { ((va + 5) as *const u8).read_volatile() };
    (lsr & 0x60 != 0, lsr)
}

/// The image's link address minus its load address (for `setup`).
const IMAGE_OFFSET: usize = 0xffff_ffff_8020_0000 - 0x8020_0000;

/// Where OpenSBI and the kernel image sit: reserved from the start of RAM.
const RAM_START: Paddr = 0x8000_0000;

/// Entered from `boot` on the boot table.
#[no_mangle]
extern "C" fn kmain(_hartid: usize, dtb: Paddr) -> ! {
    heap::init();
    println!("kvirt-kernel-riscv: S-mode on QEMU virt, device tree at {dtb:#x}");
    // SAFETY: OpenSBI passes the device tree's physical address, which the
    // boot table's linear gigapage maps, as it maps all of QEMU's RAM
    // (checked against 0xc000_0000); the platform's window is that mapping;
    // the kernel uses only its image (Reserved) from now on; one space.
    let (space, uart) = unsafe {
        setup::space_from_device_tree(
            Box::new(platform::RiscvPlatform::new()),
            dtb,
            RAM_START,
            0xc000_0000,
            0x1000_0000,
        )
    };
    let root = space.kernel_root_paddr();
    // SAFETY: kvirt's table maps the whole image at its link address (code,
    // data, bss with the stack and heap) and RAM linearly at PHYS_BASE; the
    // console is the SBI and the exit device is remapped below before use.
    unsafe {
        core::arch::asm!("csrw satp, {0}", "sfence.vma", in(reg) (8usize << 60) | (root >> 12));
    }
    // The exit device: an untracked area for the rest of the run.
    let device = steps::uncached();
    // SAFETY: the test device's page, which nothing else maps or owns.
    let exit_area = unsafe {
        space.try_map_untracked_frames(PAGE_SIZE, 0, exit::TEST_DEVICE..exit::TEST_DEVICE + PAGE_SIZE, device)
    }
    .unwrap_or_else(|e| panic!("cannot map the test device: {e}"));
    exit::set_device_va(exit_area.start());
    println!("kvirt-kernel-riscv: satp = Sv39, root {root:#x}: running on kvirt's page table");
    scenario::run(&space, uart);
    println!("kvirt-kernel-riscv: all checks passed");
    exit::pass()
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
    println!("kvirt-kernel-riscv: PANIC: {info}");
    exit::fail(1)
}
