//! The kernel's virtual address layout (48-bit x86-64).
//!
//! ```text
//! 0xffff_8000_0000_0000 ┬─────────────────────────────────┐
//!                       │ linear mapping of all RAM       │  paddr_to_vaddr(pa) = base + pa
//! 0xffff_c000_0000_0000 ├─────────────────────────────────┤
//!                       │ VMALLOC: kernel virtual areas    │  32 TiB, KVirtArea; 8 per-CPU
//!                       │                                 │  arenas of 4 TiB (kspace::vmalloc)
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
//!
//! The constants below are the default layout, [`X86_64Layout`]. A kernel
//! space is generic over a [`KernelLayout`], which names the paging format
//! and these ranges. [`Sv48Layout`] and [`Aarch64Layout`] use the same
//! 48-bit ranges on their formats, [`Sv39Layout`] fits them into a 39-bit
//! space (diagram on the type), and [`TinyLayout`] is the layout of the
//! tiny test format on which the exhaustive checker runs the very same
//! `KVirtArea` code.

use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;

use super::KernelSpaceError;
use crate::addr::{Paddr, Vaddr};
use crate::arch::aarch64::Aarch64;
use crate::arch::riscv::{Sv39, Sv48};
use crate::arch::tiny::Tiny;
use crate::arch::x86_64::X86_64;
use crate::arch::PagingFormat;

/// Where a kernel keeps things in its virtual address space, and the
/// paging format of its page table.
///
/// Every range is page aligned and lies in the kernel (upper) half of the
/// format's address space; `VMALLOC_VADDR_RANGE` (not empty), the optional
/// mappings and `KERNEL_CODE_VADDR_RANGE` lie in `KERNEL_VADDR_RANGE` and do
/// not overlap; the linear mapping holds all RAM and the metadata range the
/// whole frame metadata array ([`META_SLOT_SIZE`](crate::frame::META_SLOT_SIZE)
/// bytes per page below the end of RAM, rounded up to a page).
/// [`KernelSpace`](super::KernelSpace) checks this when it is created,
/// before it builds anything, and refuses a layout that breaks a rule with a
/// [`LayoutError`] (or
/// [`RamBeyondLinearMapping`](super::KernelSpaceError::RamBeyondLinearMapping)).
/// RAM must also lie below `1 << Format::PA_BITS`
/// ([`RamBeyondFormat`](super::KernelSpaceError::RamBeyondFormat)).
pub trait KernelLayout: Copy + fmt::Debug + Send + Sync + 'static {
    /// The paging format of the kernel page table.
    type Format: PagingFormat;
    /// Kernel space: every address a `KVirtArea` may have (the specification's
    /// `KERNEL_BASE_VADDR..KERNEL_END_VADDR`).
    const KERNEL_VADDR_RANGE: Range<Vaddr>;
    /// Where kernel virtual areas are carved from.
    const VMALLOC_VADDR_RANGE: Range<Vaddr>;
    /// The linear mapping of all RAM (`start + pa`), if the layout has one.
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>>;
    /// Where the frame metadata array is mapped, if it is.
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>>;
    /// Where [`map_kernel_image`](super::KernelSpace::map_kernel_image) may
    /// map the kernel image.
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr>;
}

/// The x86-64 4-level layout drawn above: the default of every generic type
/// in kvirt, and the one the specification's API (`KVirtArea::map_frames`) uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86_64Layout;

impl KernelLayout for X86_64Layout {
    type Format = X86_64;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = KERNEL_BASE_VADDR..KERNEL_END_VADDR;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = VMALLOC_VADDR_RANGE;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = Some(LINEAR_MAPPING_VADDR_RANGE);
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = Some(FRAME_METADATA_VADDR_RANGE);
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = KERNEL_CODE_BASE_VADDR..KERNEL_END_VADDR;
}

/// The layout of the [`Tiny`] test format (256 KiB address space, kernel
/// half `0x2_0000..0x4_0000`):
///
/// ```text
/// 0x2_0000 ┬──────────────────────┐
///          │ VMALLOC: 16 pages    │  one root entry
/// 0x3_0000 ├──────────────────────┤
///          │ kernel code          │  one root entry
/// 0x4_0000 ┴──────────────────────┘
/// ```
///
/// No linear or metadata mapping: they would not fit, and kvirt reaches
/// memory through the platform's window anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TinyLayout;

impl KernelLayout for TinyLayout {
    type Format = Tiny;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x4_0000;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0x2_0000..0x3_0000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = None;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = 0x3_0000..0x4_0000;
}

/// The 48-bit layout drawn above on another 4-level format `F` whose
/// kernel half is x86-64's (addresses sign-extended from bit 47): every
/// range is [`X86_64Layout`]'s. [`Sv48Layout`] and [`Aarch64Layout`] name
/// it.
pub struct Layout48<F: PagingFormat>(PhantomData<F>);

impl<F: PagingFormat> KernelLayout for Layout48<F> {
    type Format = F;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = X86_64Layout::KERNEL_VADDR_RANGE;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = X86_64Layout::VMALLOC_VADDR_RANGE;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> = X86_64Layout::LINEAR_MAPPING_VADDR_RANGE;
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> = X86_64Layout::FRAME_METADATA_VADDR_RANGE;
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = X86_64Layout::KERNEL_CODE_VADDR_RANGE;
}

// By hand: derives would ask the same of `F`.
impl<F: PagingFormat> Clone for Layout48<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: PagingFormat> Copy for Layout48<F> {}

impl<F: PagingFormat> fmt::Debug for Layout48<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Layout48<{:?}>", core::any::type_name::<F>())
    }
}

impl<F: PagingFormat> Default for Layout48<F> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// RISC-V [`Sv48`] with the 48-bit layout.
pub type Sv48Layout = Layout48<Sv48>;

/// AArch64 stage 1 with the 4 KiB granule ([`Aarch64`]) and the 48-bit
/// layout. The kernel half is what `TTBR1_EL1` translates with `T1SZ = 16`
/// (`0xffff_0000_0000_0000` up), of which kvirt uses the upper half,
/// x86-64's ranges; the lower half of `TTBR1`'s range stays unmapped.
pub type Aarch64Layout = Layout48<Aarch64>;

/// The layout of RISC-V [`Sv39`]: a 39-bit space whose kernel half is the
/// top 256 GiB (addresses sign-extended from bit 38).
///
/// ```text
/// 0xffff_ffc0_0000_0000 ┬─────────────────────────────────┐
///                       │ linear mapping of all RAM       │  128 GiB
/// 0xffff_ffe0_0000_0000 ├─────────────────────────────────┤
///                       │ VMALLOC: kernel virtual areas    │  64 GiB, 8 per-CPU arenas
///                       │                                 │  of 8 GiB
/// 0xffff_fff0_0000_0000 ├─────────────────────────────────┤
///                       │ frame metadata array            │  4 GiB: 64 B per page of
/// 0xffff_fff1_0000_0000 ├─────────────────────────────────┤  up to 256 GiB of RAM
///                       │ (unused)                        │
/// 0xffff_ffff_8000_0000 ├─────────────────────────────────┤
///                       │ kernel code                     │  2 GiB, as on x86-64
/// 0xffff_ffff_ffff_0000 ┴─────────────────────────────────┘
/// ```
///
/// Sv39 has no leaf above 2 MiB in kvirt (a 1 GiB leaf would sit in the
/// root, which kvirt keeps for tables), so the linear mapping uses 2 MiB
/// pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sv39Layout;

impl KernelLayout for Sv39Layout {
    type Format = Sv39;
    const KERNEL_VADDR_RANGE: Range<Vaddr> = 0xffff_ffc0_0000_0000..KERNEL_END_VADDR;
    const VMALLOC_VADDR_RANGE: Range<Vaddr> = 0xffff_ffe0_0000_0000..0xffff_fff0_0000_0000;
    const LINEAR_MAPPING_VADDR_RANGE: Option<Range<Vaddr>> =
        Some(0xffff_ffc0_0000_0000..0xffff_ffe0_0000_0000);
    const FRAME_METADATA_VADDR_RANGE: Option<Range<Vaddr>> =
        Some(0xffff_fff0_0000_0000..0xffff_fff1_0000_0000);
    const KERNEL_CODE_VADDR_RANGE: Range<Vaddr> = KERNEL_CODE_BASE_VADDR..KERNEL_END_VADDR;
}

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

/// One of the address ranges a [`KernelLayout`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutRange {
    /// `KERNEL_VADDR_RANGE`.
    Kernel,
    /// `VMALLOC_VADDR_RANGE`.
    Vmalloc,
    /// `LINEAR_MAPPING_VADDR_RANGE`.
    LinearMapping,
    /// `FRAME_METADATA_VADDR_RANGE`.
    FrameMetadata,
    /// `KERNEL_CODE_VADDR_RANGE`.
    KernelCode,
}

impl fmt::Display for LayoutRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutRange::Kernel => "KERNEL_VADDR_RANGE",
            LayoutRange::Vmalloc => "VMALLOC_VADDR_RANGE",
            LayoutRange::LinearMapping => "LINEAR_MAPPING_VADDR_RANGE",
            LayoutRange::FrameMetadata => "FRAME_METADATA_VADDR_RANGE",
            LayoutRange::KernelCode => "KERNEL_CODE_VADDR_RANGE",
        })
    }
}

/// A rule of [`KernelLayout`] that a layout breaks, found when a
/// [`KernelSpace`](super::KernelSpace) is created with it (inside
/// [`KernelSpaceError::Layout`](super::KernelSpaceError::Layout)), before
/// anything of the space is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// `KERNEL_VADDR_RANGE` is empty, not page aligned, or not inside the
    /// kernel half of the paging format's address space.
    KernelRangeOutsideKernelHalf(Range<Vaddr>),
    /// A range is reversed, not page aligned, or not inside
    /// `KERNEL_VADDR_RANGE`.
    OutsideKernelSpace(LayoutRange, Range<Vaddr>),
    /// `VMALLOC_VADDR_RANGE` is empty.
    EmptyVmalloc,
    /// Two non-empty ranges overlap (the pair lowest in address order).
    Overlapping {
        /// The range that starts first.
        first: (LayoutRange, Range<Vaddr>),
        /// The range that starts inside it.
        second: (LayoutRange, Range<Vaddr>),
    },
    /// The frame metadata array of the machine's RAM is larger than
    /// `FRAME_METADATA_VADDR_RANGE`: mapping it there would run past the
    /// range.
    MetadataBeyondRange {
        /// The bytes of the metadata array.
        needed: usize,
        /// The bytes of the range.
        available: usize,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::KernelRangeOutsideKernelHalf(r) => write!(
                f,
                "KERNEL_VADDR_RANGE {r:#x?} is not a non-empty, page-aligned part of the format's kernel half"
            ),
            LayoutError::OutsideKernelSpace(name, r) => {
                write!(f, "{name} {r:#x?} is not a page-aligned part of kernel space")
            }
            LayoutError::EmptyVmalloc => f.write_str("VMALLOC_VADDR_RANGE is empty"),
            LayoutError::Overlapping { first: (a, ra), second: (b, rb) } => {
                write!(f, "{a} {ra:#x?} and {b} {rb:#x?} overlap")
            }
            LayoutError::MetadataBeyondRange { needed, available } => write!(
                f,
                "the frame metadata array needs {needed:#x} bytes, FRAME_METADATA_VADDR_RANGE has {available:#x}"
            ),
        }
    }
}

impl core::error::Error for LayoutError {}

/// Checks what [`KernelLayout`] promises of `L` alone, before anything of
/// a space is built.
///
/// # Errors
///
/// The first broken rule, in the order of [`LayoutError`]'s variants.
pub(super) fn check<L: KernelLayout>() -> Result<(), LayoutError> {
    use crate::addr::is_page_aligned;
    use crate::page_table::{vaddr_bounds, KernelPtConfig};

    let (first, last) = vaddr_bounds::<KernelPtConfig<L::Format>>();
    let kernel = L::KERNEL_VADDR_RANGE;
    let inside = |r: &Range<Vaddr>| kernel.start <= r.start && r.start <= r.end && r.end <= kernel.end;
    let aligned = |r: &Range<Vaddr>| is_page_aligned(r.start) && is_page_aligned(r.end);
    if !(first <= kernel.start && kernel.start < kernel.end && kernel.end - 1 <= last && aligned(&kernel)) {
        return Err(LayoutError::KernelRangeOutsideKernelHalf(kernel));
    }
    let parts = [
        Some((LayoutRange::Vmalloc, L::VMALLOC_VADDR_RANGE)),
        L::LINEAR_MAPPING_VADDR_RANGE.map(|r| (LayoutRange::LinearMapping, r)),
        L::FRAME_METADATA_VADDR_RANGE.map(|r| (LayoutRange::FrameMetadata, r)),
        Some((LayoutRange::KernelCode, L::KERNEL_CODE_VADDR_RANGE)),
    ];
    let mut parts: alloc::vec::Vec<(LayoutRange, Range<Vaddr>)> = parts.into_iter().flatten().collect();
    if let Some((name, r)) = parts.iter().find(|(_, r)| !(inside(r) && aligned(r))) {
        return Err(LayoutError::OutsideKernelSpace(*name, r.clone()));
    }
    if L::VMALLOC_VADDR_RANGE.is_empty() {
        return Err(LayoutError::EmptyVmalloc);
    }
    // An empty range holds nothing, so it overlaps nothing. Sorted by
    // start, ranges overlap somewhere exactly when two neighbours do.
    parts.retain(|(_, r)| !r.is_empty());
    parts.sort_by_key(|(_, r)| r.start);
    if let Some(pair) = parts.windows(2).find(|pair| pair[0].1.end > pair[1].1.start) {
        return Err(LayoutError::Overlapping { first: pair[0].clone(), second: pair[1].clone() });
    }
    Ok(())
}

/// Checks that what a space maps fits, before anything is mapped: RAM
/// ending at `ram_end` in what the format's entries can address and in the
/// linear mapping, and a metadata array of `meta_bytes` in its range.
///
/// # Errors
///
/// [`KernelSpaceError::RamBeyondFormat`],
/// [`KernelSpaceError::RamBeyondLinearMapping`] or
/// [`LayoutError::MetadataBeyondRange`] (inside
/// [`KernelSpaceError::Layout`]).
pub(super) fn check_fits<L: KernelLayout>(ram_end: Paddr, meta_bytes: usize) -> Result<(), KernelSpaceError> {
    // Every frame and node of the space may end up in an entry.
    if !kvirt_core::area_args::paddr_range_fits(0, ram_end, L::Format::PA_BITS) {
        return Err(KernelSpaceError::RamBeyondFormat(ram_end));
    }
    if let Some(linear) = L::LINEAR_MAPPING_VADDR_RANGE {
        if ram_end > linear.len() {
            return Err(KernelSpaceError::RamBeyondLinearMapping(ram_end));
        }
    }
    if let Some(meta) = L::FRAME_METADATA_VADDR_RANGE {
        if meta_bytes > meta.len() {
            let error = LayoutError::MetadataBeyondRange { needed: meta_bytes, available: meta.len() };
            return Err(KernelSpaceError::Layout(error));
        }
    }
    Ok(())
}
