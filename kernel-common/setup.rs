//! Building the kernel space from the device tree, shared by the RISC-V and
//! AArch64 demo kernels (each includes this file with `#[path]`).
//!
//! The kernel gives: `crate::Layout` (its kvirt layout), `crate::IMAGE_OFFSET`
//! (link address minus load address), `crate::platform::PHYS_BASE` (where
//! the boot tables map RAM linearly, the layout's linear mapping) and
//! `crate::println`.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;

use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::platform::{MemoryRegion, Platform};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use crate::println;

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __image_end: u8;
}

/// The physical address of a link address in the image.
fn image_paddr(va: Vaddr) -> Paddr {
    va - crate::IMAGE_OFFSET
}

/// Reads RAM and the console UART from the device tree at physical `dtb`,
/// reserves `firmware_start..` the end of the image (firmware, device tree
/// placement, the image with its heap and stack) and the device tree,
/// builds a kernel space over `platform` and maps the image into it (text
/// `RX`, rodata `R`, the rest `RW`). Returns the space and the UART's
/// physical address (`default_uart` if the tree names none).
///
/// # Safety
///
/// `dtb` is the device tree the firmware or QEMU passed, readable at
/// `PHYS_BASE + dtb`; `platform` keeps kvirt's platform contract with
/// `PHYS_BASE` as its window, which must map all the RAM the tree lists
/// (checked against `linear_limit`, the end of the boot linear mapping);
/// nothing but kvirt uses the RAM outside the reserved ranges from now on;
/// and this is the only kernel space.
pub unsafe fn space_from_device_tree(
    platform: Box<dyn Platform>,
    dtb: Paddr,
    firmware_start: Paddr,
    linear_limit: Paddr,
    default_uart: Paddr,
) -> (KernelSpace<crate::Layout>, Paddr) {
    // SAFETY: the caller promises the tree is readable there; it is only
    // read, before kvirt takes over RAM, and its pages are Reserved below.
    let fdt = unsafe { fdt::Fdt::from_ptr((crate::platform::PHYS_BASE + dtb) as *const u8) }
        .unwrap_or_else(|e| panic!("cannot read the device tree: {e:?}"));
    let uart = fdt
        .chosen()
        .stdout()
        .and_then(|n| n.reg().and_then(|mut r| r.next()).map(|r| r.starting_address as Paddr))
        .unwrap_or(default_uart);
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
    let reserved = [firmware_start..image_paddr(end).next_multiple_of(PAGE_SIZE), dtb_range];
    let map = MemoryRegion::carve(&ram, &reserved);
    println!("memory map from the device tree (console UART at {uart:#x}):");
    for r in &map {
        println!("    {:#012x}..{:#012x} {:?}", r.range.start, r.range.end, r.kind);
    }
    assert!(ram.iter().all(|r| r.end <= linear_limit), "the boot linear mapping does not cover all RAM");
    // SAFETY: `map` is the tree's RAM with the firmware, the image (heap
    // and stack included) and the tree Reserved; the caller vouches for the
    // platform, whose window covers that RAM (checked above); RAM is not
    // known to be zero.
    let space = unsafe { KernelSpace::<crate::Layout>::with_layout(platform, &map, false) };
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
    (space, uart)
}
