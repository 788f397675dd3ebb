//! The errors of kernel spaces and their areas: one enum per operation,
//! each variant a rule the call broke (or a resource that ran out), each
//! with a message that names it.

use core::fmt;
use core::ops::Range;

use super::layout::LayoutError;
#[cfg(doc)]
use super::{KVirtArea, KernelLayout, KernelSpace};
use crate::addr::{Paddr, Vaddr};
use crate::frame::PhysMemError;
#[cfg(doc)]
use crate::page_prop::PageFlags;

/// Why a kernel space could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSpaceError {
    /// The memory map cannot be used.
    PhysMem(PhysMemError),
    /// No memory for the kernel page table.
    OutOfMemory,
    /// RAM reaches `.0`, past what the layout's linear mapping can hold.
    RamBeyondLinearMapping(Paddr),
    /// RAM reaches `.0`, past the physical addresses the layout's paging
    /// format can put in an entry (`PagingFormat::PA_BITS`).
    RamBeyondFormat(Paddr),
    /// The layout breaks a rule of [`KernelLayout`].
    Layout(LayoutError),
}

impl fmt::Display for KernelSpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpaceError::PhysMem(e) => write!(f, "bad physical memory: {e}"),
            KernelSpaceError::OutOfMemory => f.write_str("out of memory for the kernel page table"),
            KernelSpaceError::RamBeyondLinearMapping(end) => {
                write!(f, "RAM reaches {end:#x}, past what the linear mapping can hold")
            }
            KernelSpaceError::RamBeyondFormat(end) => {
                write!(f, "RAM reaches {end:#x}, past the physical addresses the paging format can express")
            }
            KernelSpaceError::Layout(e) => write!(f, "bad kernel layout: {e}"),
        }
    }
}

impl core::error::Error for KernelSpaceError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            KernelSpaceError::PhysMem(e) => Some(e),
            KernelSpaceError::Layout(e) => Some(e),
            _ => None,
        }
    }
}

impl From<PhysMemError> for KernelSpaceError {
    fn from(e: PhysMemError) -> Self {
        KernelSpaceError::PhysMem(e)
    }
}

impl From<LayoutError> for KernelSpaceError {
    fn from(e: LayoutError) -> Self {
        KernelSpaceError::Layout(e)
    }
}

/// Why a physical range cannot be mapped untracked
/// (`KernelSpace::check_untracked`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UntrackedRangeError {
    /// Beyond what the paging format can encode.
    PaddrTooLarge,
    /// It covers a page kvirt tracks.
    Tracked,
}

/// Why [`KernelSpace::map_kernel_image`] rejected a request. A rejected
/// call changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelImageError {
    /// Frames or areas of the space exist already. The image is mapped while
    /// the space is being set up, before anything else uses it.
    SpaceInUse,
    /// The virtual address or a physical bound is not page aligned.
    Misaligned,
    /// The physical range is empty or reversed.
    EmptyOrReversed(Range<Paddr>),
    /// The virtual range leaves the layout's kernel-code range
    /// (`KERNEL_CODE_BASE_VADDR..KERNEL_END_VADDR` on x86-64).
    OutsideKernelCode(Range<Vaddr>),
    /// The physical range reaches beyond what the paging format can map.
    PaddrTooLarge(Range<Paddr>),
    /// The physical range contains pages the frame allocator can hand out,
    /// or the frame metadata array: the image must be `Reserved` (or
    /// non-RAM) in the memory map, or the allocator would give the
    /// kernel's own pages away.
    TrackedPaddr(Range<Paddr>),
    /// The property allows user access.
    UserAccessible,
    /// Something is mapped at this address already.
    AlreadyMapped(Vaddr),
    /// No memory was left for page-table nodes.
    OutOfMemory,
}

impl fmt::Display for KernelImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use KernelImageError as E;
        match self {
            E::SpaceInUse => {
                f.write_str("the kernel image is mapped during set-up, before any frame or area exists")
            }
            E::Misaligned => f.write_str("the kernel image mapping is not page aligned"),
            E::EmptyOrReversed(r) => {
                write!(f, "the kernel image's physical range {r:#x?} is empty or reversed")
            }
            E::OutsideKernelCode(r) => {
                write!(f, "the kernel image's virtual range {r:#x?} is outside the kernel-code range")
            }
            E::PaddrTooLarge(r) => {
                write!(
                    f,
                    "the kernel image's physical range {r:#x?} is beyond what the paging format can map"
                )
            }
            E::TrackedPaddr(r) => {
                write!(f, "the kernel image's physical range {r:#x?} contains allocatable (tracked) pages")
            }
            E::UserAccessible => f.write_str("the kernel image cannot be user accessible"),
            E::AlreadyMapped(va) => write!(f, "something is mapped at {va:#x} already"),
            E::OutOfMemory => f.write_str("out of memory for page-table nodes"),
        }
    }
}

impl core::error::Error for KernelImageError {}

/// Why a kernel virtual area could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KVirtAreaError {
    /// `area_size` is zero.
    ZeroSize,
    /// `area_size` is not a multiple of the page size.
    MisalignedSize(usize),
    /// `map_offset` is not a multiple of the page size.
    MisalignedOffset(usize),
    /// `map_offset >= area_size`.
    OffsetOutOfArea {
        /// The offset.
        map_offset: usize,
        /// The area size.
        area_size: usize,
    },
    /// The frames or the physical range do not fit between `map_offset`
    /// and the end of the area (or the sum overflows).
    MappingExceedsArea {
        /// The offset.
        map_offset: usize,
        /// The bytes to map.
        len: usize,
        /// The area size.
        area_size: usize,
    },
    /// A physical range bound is not a multiple of the page size.
    MisalignedPaddr(Range<Paddr>),
    /// The physical range is reversed (`start > end`).
    ReversedPaddrRange(Range<Paddr>),
    /// The physical range reaches beyond what the paging format can address.
    PaddrTooLarge(Range<Paddr>),
    /// The physical range contains pages the frame allocator can hand out.
    TrackedPaddr(Range<Paddr>),
    /// A frame belongs to another kernel space.
    ForeignFrame(Paddr),
    /// The property allows user access.
    UserAccessible,
    /// VMALLOC has no free range of this size.
    VmallocExhausted(usize),
    /// No memory was left for page-table nodes.
    OutOfMemory,
}

impl fmt::Display for KVirtAreaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use KVirtAreaError as E;
        match self {
            E::ZeroSize => f.write_str("the area size is zero"),
            E::MisalignedSize(s) => write!(f, "the area size {s:#x} is not a multiple of PAGE_SIZE"),
            E::MisalignedOffset(o) => write!(f, "the map offset {o:#x} is not aligned to PAGE_SIZE"),
            E::OffsetOutOfArea { map_offset, area_size } => {
                write!(f, "the map offset {map_offset:#x} is not inside the area of {area_size:#x} bytes")
            }
            E::MappingExceedsArea { map_offset, len, area_size } => write!(
                f,
                "the map offset {map_offset:#x} plus the {len:#x} bytes to map exceeds the area size {area_size:#x}"
            ),
            E::MisalignedPaddr(r) => write!(f, "the provided physical range {r:#x?} is not aligned to PAGE_SIZE"),
            E::ReversedPaddrRange(r) => write!(f, "the provided physical range {r:#x?} is reversed"),
            E::PaddrTooLarge(r) => {
                write!(f, "the provided physical range {r:#x?} is beyond what the paging format can map")
            }
            E::TrackedPaddr(r) => {
                write!(f, "the provided physical range {r:#x?} contains tracked physical addresses")
            }
            E::ForeignFrame(pa) => write!(f, "frame {pa:#x} belongs to another kernel space"),
            E::UserAccessible => f.write_str("kernel virtual areas cannot be user accessible"),
            E::VmallocExhausted(s) => write!(f, "VMALLOC has no free range of {s:#x} bytes"),
            E::OutOfMemory => f.write_str("out of memory for page-table nodes"),
        }
    }
}

impl core::error::Error for KVirtAreaError {}

/// Why [`KVirtArea::try_split`] refused; the area is handed back unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// The offset is not page aligned or not strictly inside the area.
    BadOffset {
        /// The offset.
        offset: usize,
        /// The area size.
        size: usize,
    },
    /// No memory was left for the page-table nodes needed to split the huge
    /// page that straddles the split point.
    OutOfMemory,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadOffset { offset, size } => write!(
                f,
                "offset {offset:#x} must be page aligned and strictly inside the area of {size:#x} bytes"
            ),
            Self::OutOfMemory => f.write_str("out of memory for the page-table nodes that split a huge page"),
        }
    }
}

impl core::error::Error for SplitError {}

/// Why a byte access through an area failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AreaAccessError {
    /// `offset + len` is past the end of the area (or overflows).
    OutOfBounds {
        /// The offset.
        offset: usize,
        /// The length.
        len: usize,
        /// The area size.
        size: usize,
    },
    /// Nothing is mapped at this address.
    Unmapped(Vaddr),
    /// The page at this address is not RAM: not in a `Usable` or
    /// `Reserved` region of the memory map, whether above the end of RAM or
    /// in a hole below it (device memory: use volatile accesses through the
    /// virtual address instead).
    NotRam(Vaddr),
    /// The page at this address is a frame with typed metadata, whose
    /// contents are not plain bytes.
    TypedFrame(Vaddr),
    /// A write reached a page at this address whose property lacks
    /// [`PageFlags::W`] or [`PageFlags::R`] (no paging format kvirt
    /// supports lets a page be written but not read): the MMU would refuse
    /// it too.
    NotWritable(Vaddr),
    /// A read reached a page at this address whose property lacks
    /// [`PageFlags::R`]: the MMU would refuse it too.
    NotReadable(Vaddr),
}

impl fmt::Display for AreaAccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AreaAccessError::OutOfBounds { offset, len, size } => {
                write!(
                    f,
                    "access of {len:#x} bytes at offset {offset:#x} exceeds the area of {size:#x} bytes"
                )
            }
            AreaAccessError::Unmapped(va) => write!(f, "nothing is mapped at {va:#x}"),
            AreaAccessError::NotRam(va) => write!(f, "the page at {va:#x} is not RAM"),
            AreaAccessError::TypedFrame(va) => write!(f, "the frame at {va:#x} has typed metadata"),
            AreaAccessError::NotWritable(va) => {
                write!(f, "the page at {va:#x} is mapped without write permission")
            }
            AreaAccessError::NotReadable(va) => {
                write!(f, "the page at {va:#x} is mapped without read permission")
            }
        }
    }
}

impl core::error::Error for AreaAccessError {}
