//! The kernel image's layout, from the linker script's symbols.

use core::ops::Range;

use kvirt::{Paddr, Vaddr};

/// `KERNEL_VIRT_BASE` of `linker.ld` (kvirt's `KERNEL_CODE_BASE_VADDR`):
/// the image is linked at this plus its physical address.
pub const KERNEL_VIRT_BASE: Vaddr = kvirt::kspace::KERNEL_CODE_BASE_VADDR;

extern "C" {
    // Linker-script symbols: only their addresses mean something.
    static __kernel_phys_start: u8;
    static __kernel_phys_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __stack_guard: u8;
    static __stack_bottom: u8;
    static __stack_top: u8;
    static __bss_start: u8;
    static __bss_end: u8;
}

/// The parts of the kernel image (virtual ranges, page aligned).
#[derive(Clone, Debug)]
pub struct ImageLayout {
    /// Everything the loader placed, physical.
    pub phys: Range<Paddr>,
    /// Code.
    pub text: Range<Vaddr>,
    /// Read-only data.
    pub rodata: Range<Vaddr>,
    /// Data, up to the stack's guard page.
    pub data: Range<Vaddr>,
    /// The unmapped page below the boot stack.
    pub stack_guard: Range<Vaddr>,
    /// The boot stack.
    pub stack: Range<Vaddr>,
    /// Zero-initialised data (the heap is here).
    pub bss: Range<Vaddr>,
}

impl ImageLayout {
    /// The physical address of `va` inside the image.
    pub fn paddr(va: Vaddr) -> Paddr {
        va - KERNEL_VIRT_BASE
    }
}

/// The layout of the running kernel.
pub fn layout() -> ImageLayout {
    macro_rules! addr {
        ($sym:ident) => {
            core::ptr::addr_of!($sym) as usize
        };
    }
    ImageLayout {
        phys: addr!(__kernel_phys_start)..addr!(__kernel_phys_end),
        text: addr!(__text_start)..addr!(__text_end),
        rodata: addr!(__rodata_start)..addr!(__rodata_end),
        data: addr!(__data_start)..addr!(__stack_guard),
        stack_guard: addr!(__stack_guard)..addr!(__stack_bottom),
        stack: addr!(__stack_bottom)..addr!(__stack_top),
        bss: addr!(__bss_start)..addr!(__bss_end),
    }
}
