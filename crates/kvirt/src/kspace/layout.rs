//! The kernel's virtual address layout (48-bit x86-64).
//!
//! ```text
//! 0xffff_8000_0000_0000 ┬─────────────────────────────────┐
//!                       │ linear mapping of all RAM       │  paddr_to_vaddr(pa) = base + pa
//! 0xffff_c000_0000_0000 ├─────────────────────────────────┤
//!                       │ VMALLOC: kernel virtual areas    │  32 TiB, KVirtArea
//! 0xffff_e000_0000_0000 ├─────────────────────────────────┤
//!                       │ frame metadata array            │  64 B per physical page
//! 0xffff_e100_0000_0000 ├─────────────────────────────────┤
//!                       │ (unused)                        │
//! 0xffff_ffff_8000_0000 ├─────────────────────────────────┤
//!                       │ kernel code                     │
//! 0xffff_ffff_ffff_0000 ┴ KERNEL_END_VADDR ────────────────┘
//! ```
//!
//! These are kernel virtual addresses in every build. A hosted build maps
//! them in its page tables exactly as a kernel would (the software MMU walks
//! them), but the library itself reaches physical memory through the
//! platform's window, not through the linear mapping.

use core::ops::Range;

use crate::addr::{Paddr, Vaddr};

/// The lowest kernel virtual address.
pub const KERNEL_BASE_VADDR: Vaddr = 0xffff_8000_0000_0000;
/// The end of kernel space (exclusive).
pub const KERNEL_END_VADDR: Vaddr = 0xffff_ffff_ffff_0000;
/// Where physical address 0 appears in the linear mapping.
pub const LINEAR_MAPPING_BASE_VADDR: Vaddr = 0xffff_8000_0000_0000;
/// The range reserved for the linear mapping.
pub const LINEAR_MAPPING_VADDR_RANGE: Range<Vaddr> = LINEAR_MAPPING_BASE_VADDR..0xffff_c000_0000_0000;
/// The range kernel virtual areas are carved from.
pub const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0xffff_c000_0000_0000..0xffff_e000_0000_0000;
/// The range the frame metadata array is mapped at.
pub const FRAME_METADATA_VADDR_RANGE: Range<Vaddr> = 0xffff_e000_0000_0000..0xffff_e100_0000_0000;
/// Where the kernel image is mapped.
pub const KERNEL_CODE_BASE_VADDR: Vaddr = 0xffff_ffff_8000_0000;

/// The linear-mapping address of physical address `pa`.
///
/// # Panics
///
/// Panics if `pa` is beyond what the linear mapping can hold (16 TiB).
#[must_use]
pub const fn paddr_to_vaddr(pa: Paddr) -> Vaddr {
    assert!(
        pa < LINEAR_MAPPING_VADDR_RANGE.end - LINEAR_MAPPING_VADDR_RANGE.start,
        "physical address beyond the linear mapping"
    );
    LINEAR_MAPPING_BASE_VADDR + pa
}
