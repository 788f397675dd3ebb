//! Kernel virtual areas.
//!
//! A [`KVirtArea`] is a range of the VMALLOC region that owns what is mapped
//! into it. It is created mapped ([`KVirtArea::map_frames`] for tracked
//! frames, [`KVirtArea::map_untracked_frames`] for raw physical memory such
//! as device registers) and unmapped when dropped.
//!
//! ## Contract (the specification's, plus docs/DESIGN.md section 4)
//!
//! Every check happens before anything is allocated, so a rejected call
//! leaves the frame allocator, the page table and VMALLOC exactly as they
//! were. The `try_` constructors return the [`KVirtAreaError`]; the
//! panicking ones panic with its message in exactly the same cases.
//!
//! * `area_size` is non-zero and page aligned; `map_offset` is page aligned
//!   and `< area_size`.
//! * What is mapped fits: `map_offset + len <= area_size`, without overflow.
//! * Tracked frames belong to the kernel space of the area.
//! * An untracked physical range is page aligned, not reversed, encodable by
//!   the paging format, and covers no page the frame allocator can ever
//!   hand out (that would alias a frame that may be freed and reused) nor
//!   the frame metadata array (kvirt's own memory).
//! * The property does not carry [`PrivilegedPageFlags::USER`]: kernel
//!   areas are never user accessible.
//!
//! An untracked area is placed so that its mapping uses 2 MiB and 1 GiB
//! pages wherever the physical range holds aligned pieces and `map_offset`
//! agrees with the physical start modulo the page size. Each area is
//! followed by an unmapped guard page; the two halves of a
//! [`split`](KVirtArea::split) touch, and when one goes the other keeps a
//! guard (see `SplitLink`). `Drop` unmaps everything, issues the TLB
//! invalidation for the range on all CPUs, and only then releases the
//! range and, last, the frames (whose metadata drop hooks run then, so the
//! range is given back however they end). It never needs memory for
//! page-table nodes (so it cannot fail): a huge page straddling a split
//! point is split by `split` itself.
//!
//! TLB coherence for *new* mappings needs nothing: an area's range was
//! unmapped and flushed before it became free.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use super::registry::{AreaInfo, AreaKind};
use super::vmalloc::GUARD_SIZE;
use super::{KernelLayout, KernelSpace, SpaceInner, UntrackedRangeError, X86_64Layout};
use crate::addr::{is_page_aligned, Paddr, Vaddr, PAGE_SIZE};
use crate::arch::{page_size, PagingFormat};
use crate::frame::{AnyFrameMeta, Frame, FrameRef};
use crate::page_prop::{PageFlags, PageProperty, PrivilegedPageFlags};
use crate::page_table::{largest_pages, MappedItem, MappedItemRef, PageTableAllocError, PageTableFrag};
use crate::platform::{TlbFlushOp, TlbScope};

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

/// A kernel virtual area (see the module documentation).
pub struct KVirtArea<L: KernelLayout = X86_64Layout> {
    /// The area. Invariant: page aligned, non-empty, inside
    /// `VMALLOC_VADDR_RANGE`, allocated from the space's VMALLOC.
    range: Range<Vaddr>,
    /// The part mapped at creation; only this part is ever mapped.
    /// Invariant: inside `range`, page aligned (possibly empty).
    mapped: Range<Vaddr>,
    /// The boundary with the right half of a split of this area, while
    /// that half may be alive. `None`: the area owns the guard after it.
    right: Option<Arc<SplitLink>>,
    /// The boundary with the left half of a split of this area.
    left: Option<Arc<SplitLink>>,
    /// A counted handle to the area's space: the space lives until the
    /// area's drop has finished with it (this field is dropped last).
    space: Arc<SpaceInner<L>>,
}

/// The boundary between two halves of a split area.
///
/// Split halves touch: the left half has no guard of its own while the
/// right half is alive. Whichever half is dropped first marks the link;
/// if that is the right half, it leaves its first page allocated in
/// VMALLOC (unmapped), which becomes the left half's guard, and the left
/// half frees it when it goes. So every live area always has an unmapped,
/// allocated page after it unless its split neighbour is there.
#[derive(Debug, Default)]
struct SplitLink {
    /// Whether one of the two halves was dropped.
    one_dropped: AtomicBool,
}

impl SplitLink {
    /// Marks that one half is being dropped; returns whether the other
    /// half was dropped before.
    fn drop_one(&self) -> bool {
        self.one_dropped.swap(true, Ordering::AcqRel)
    }
}

// The page the right half leaves for the left half holds a whole guard.
const _: () = assert!(GUARD_SIZE <= PAGE_SIZE);

fn check_common(
    area_size: usize,
    map_offset: usize,
    len: usize,
    prop: &PageProperty,
) -> Result<(), KVirtAreaError> {
    if area_size == 0 {
        return Err(KVirtAreaError::ZeroSize);
    }
    if !is_page_aligned(area_size) {
        return Err(KVirtAreaError::MisalignedSize(area_size));
    }
    if !is_page_aligned(map_offset) {
        return Err(KVirtAreaError::MisalignedOffset(map_offset));
    }
    if map_offset >= area_size {
        return Err(KVirtAreaError::OffsetOutOfArea { map_offset, area_size });
    }
    if map_offset.checked_add(len).is_none_or(|end| end > area_size) {
        return Err(KVirtAreaError::MappingExceedsArea { map_offset, len, area_size });
    }
    if prop.priv_flags.contains(PrivilegedPageFlags::USER) {
        return Err(KVirtAreaError::UserAccessible);
    }
    Ok(())
}

impl KVirtArea {
    /// Creates an area of `area_size` bytes in the default kernel space and
    /// maps `frames` one page after another from `map_offset`.
    ///
    /// # Panics
    ///
    /// Panics, with the message of the [`KVirtAreaError`], in the cases
    /// [`try_map_frames`](Self::try_map_frames) rejects: the area size is
    /// zero or not a multiple of `PAGE_SIZE`; the map offset is not aligned
    /// or not inside the area; the map offset plus the size of the frames
    /// exceeds the area size; a frame belongs to another space; the property
    /// is user accessible; VMALLOC or memory is exhausted.
    pub fn map_frames<T: AnyFrameMeta + ?Sized>(
        area_size: usize,
        map_offset: usize,
        frames: impl IntoIterator<Item = Frame<T>>,
        prop: PageProperty,
    ) -> Self {
        Self::try_map_frames(area_size, map_offset, frames, prop)
            .unwrap_or_else(|e| panic!("KVirtArea::map_frames: {e}"))
    }

    /// [`map_frames`](Self::map_frames) with a typed error.
    pub fn try_map_frames<T: AnyFrameMeta + ?Sized>(
        area_size: usize,
        map_offset: usize,
        frames: impl IntoIterator<Item = Frame<T>>,
        prop: PageProperty,
    ) -> Result<Self, KVirtAreaError> {
        KernelSpace::global().try_map_frames(area_size, map_offset, frames, prop)
    }

    /// Creates an area of `area_size` bytes in the default kernel space and
    /// maps physical `pa_range` from `map_offset`, with the largest pages
    /// that fit. `0..0` maps nothing.
    ///
    /// # Safety
    ///
    /// The caller is responsible for what the mapping exposes: the physical
    /// range must be memory (or device registers) that may be accessed with
    /// `prop` for as long as the area lives, and that no Rust object owns.
    ///
    /// # Panics
    ///
    /// Panics, with the message of the [`KVirtAreaError`], in the cases
    /// [`try_map_untracked_frames`](Self::try_map_untracked_frames) rejects:
    /// the area size is zero or not a multiple of `PAGE_SIZE`; the map
    /// offset is not aligned or not inside the area; the physical range is
    /// not aligned, reversed or beyond what the format can map; the map
    /// offset plus the length of the physical range exceeds the area size;
    /// the physical range contains tracked physical addresses; the property
    /// is user accessible; VMALLOC or memory is exhausted.
    pub unsafe fn map_untracked_frames(
        area_size: usize,
        map_offset: usize,
        pa_range: Range<Paddr>,
        prop: PageProperty,
    ) -> Self {
        // SAFETY: forwarded to the caller.
        unsafe { Self::try_map_untracked_frames(area_size, map_offset, pa_range, prop) }
            .unwrap_or_else(|e| panic!("KVirtArea::map_untracked_frames: {e}"))
    }

    /// [`map_untracked_frames`](Self::map_untracked_frames) with a typed
    /// error.
    ///
    /// # Safety
    ///
    /// As for [`map_untracked_frames`](Self::map_untracked_frames).
    pub unsafe fn try_map_untracked_frames(
        area_size: usize,
        map_offset: usize,
        pa_range: Range<Paddr>,
        prop: PageProperty,
    ) -> Result<Self, KVirtAreaError> {
        // SAFETY: forwarded to the caller.
        unsafe { KernelSpace::global().try_map_untracked_frames(area_size, map_offset, pa_range, prop) }
    }
}

impl<L: KernelLayout> KVirtArea<L> {
    fn space(&self) -> &SpaceInner<L> {
        &self.space
    }

    /// The start address.
    #[must_use]
    pub fn start(&self) -> Vaddr {
        self.range.start
    }

    /// The end address (exclusive).
    #[must_use]
    pub fn end(&self) -> Vaddr {
        self.range.end
    }

    /// The range.
    #[must_use]
    pub fn range(&self) -> Range<Vaddr> {
        self.range.clone()
    }

    /// The size in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.range.len()
    }

    /// The part of the area that was mapped at creation.
    #[must_use]
    pub fn mapped_range(&self) -> Range<Vaddr> {
        self.mapped.clone()
    }

    /// What is mapped at the page containing `addr`.
    ///
    /// # Panics
    ///
    /// Panics unless `start() <= addr < end()`.
    #[must_use]
    #[inline]
    pub fn query(&self, addr: Vaddr) -> Option<MappedItemRef<'_>> {
        assert!(
            self.range.start <= addr && addr < self.range.end,
            "KVirtArea::query: address {addr:#x} is outside the area {:#x?}",
            self.range
        );
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::query_requires(self, addr);
        let result = self.query_inner(addr);
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::query_ensures(self, addr, &result);
        result
    }

    /// The item at `addr`, read without locks.
    ///
    /// Only the mapped part of an area is ever mapped (type invariant), so
    /// anything else queries `None` without a walk. Inside it, the area owns
    /// the mapping at `addr` and nothing else can remove it while `self` is
    /// borrowed, so every node on the path stays alive and the lock-free walk
    /// needs neither locks nor a read-side section.
    #[inline]
    fn query_inner(&self, addr: Vaddr) -> Option<MappedItemRef<'_>> {
        if !self.mapped.contains(&addr) {
            return None;
        }
        let space = self.space();
        // SAFETY: the area owns the mapping at `addr` (see above).
        let leaf = unsafe { space.kernel_pt.walk_unlocked(addr) };
        let leaf = leaf.expect("the mapped part of an area is mapped");
        Some(if leaf.tracked {
            let slot = NonNull::from(space.phys.slot(leaf.pa));
            // SAFETY: the entry owns a reference to the frame, and only this
            // area can change the entries of its range: they stay while
            // `self` is borrowed.
            MappedItemRef::Tracked(unsafe { FrameRef::from_slot(slot, leaf.pa) }, leaf.prop)
        } else {
            MappedItemRef::Untracked(leaf.pa, leaf.level, leaf.prop)
        })
    }

    /// Splits the area at `offset` into `start..start + offset` and the rest.
    ///
    /// A huge page that straddles the split point is split into smaller
    /// pages now, so that dropping either half later never needs memory.
    ///
    /// # Panics
    ///
    /// Panics unless `offset` is page aligned and `0 < offset < size()`, or
    /// if no memory is left to split a huge page at the split point
    /// ([`try_split`](Self::try_split) returns the area instead). The area
    /// is dropped (unmapped) in both cases.
    #[must_use]
    pub fn split(self, offset: usize) -> (Self, Self) {
        match self.try_split(offset) {
            Ok(halves) => halves,
            Err((_area, e)) => panic!("KVirtArea::split: {e}"),
        }
    }

    /// [`split`](Self::split), handing the area back unchanged with the
    /// reason when the offset is bad or memory runs out.
    #[allow(clippy::result_large_err, reason = "the error hands back the area, as `Rc::try_unwrap` does")]
    pub fn try_split(self, offset: usize) -> Result<(Self, Self), (Self, SplitError)> {
        #[cfg(feature = "check-contracts")]
        let before = crate::spec::contracts::split_requires(&self);
        let result = self.try_split_inner(offset);
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::split_ensures(&before, offset, &result);
        result
    }

    #[allow(clippy::result_large_err, reason = "as `try_split`")]
    fn try_split_inner(mut self, offset: usize) -> Result<(Self, Self), (Self, SplitError)> {
        if !(is_page_aligned(offset) && 0 < offset && offset < self.size()) {
            let size = self.size();
            return Err((self, SplitError::BadOffset { offset, size }));
        }
        if self.split_huge_page_at(self.range.start + offset).is_err() {
            return Err((self, SplitError::OutOfMemory));
        }
        let (outer_left, outer_right) = (self.left.take(), self.right.take());
        let link = Arc::new(SplitLink::default());
        // The halves take over everything; `self` has nothing left to free.
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped or used as an area again, so the
        // handle moves out of it exactly once (to the right half).
        let space = unsafe { core::ptr::read(&this.space) };
        let mid = this.range.start + offset;
        let clamp = |r: &Range<Vaddr>| {
            let s = this.mapped.start.clamp(r.start, r.end);
            let e = this.mapped.end.clamp(r.start, r.end);
            s..e.max(s)
        };
        let left_range = this.range.start..mid;
        let right_range = mid..this.range.end;
        let left = KVirtArea {
            mapped: clamp(&left_range),
            range: left_range,
            right: Some(link.clone()),
            left: outer_left,
            space: space.clone(),
        };
        let right = KVirtArea {
            mapped: clamp(&right_range),
            range: right_range,
            right: outer_right,
            left: Some(link),
            space,
        };
        let registry = &left.space().registry;
        let info = registry.remove(this.range.start).expect("a live area is registered");
        registry.insert(AreaInfo { range: left.range(), mapped: left.mapped_range(), ..info.clone() });
        registry.insert(AreaInfo { range: right.range(), mapped: right.mapped_range(), ..info });
        Ok((left, right))
    }

    /// If a huge page maps `va` and starts below it, splits it (down to
    /// 4 KiB pages at `va`) so that no page straddles `va`. When memory
    /// runs out nothing changes.
    fn split_huge_page_at(&self, va: Vaddr) -> Result<(), PageTableAllocError> {
        let space = self.space();
        let mut cursor =
            space.kernel_pt.cursor_mut(&(va..va + PAGE_SIZE)).expect("an area lies in kernel space");
        let straddling = match cursor.query() {
            Ok((entry, Some(_))) if entry.start < va => entry,
            _ => return Ok(()),
        };
        // Re-writing the page with its own property splits the huge pages
        // around it; the translations do not change.
        let changed = cursor.try_protect_next(PAGE_SIZE, &mut |_| {})?;
        debug_assert_eq!(changed, Some(va..va + PAGE_SIZE));
        drop(cursor);
        // Nothing changed for the MMU, but drop the huge TLB entries so that
        // no CPU caches two entries of different sizes for one address.
        space.phys.platform().flush_tlb(TlbFlushOp::Range(straddling), TlbScope::AllCpus);
        Ok(())
    }

    /// Labels the area in the registry ([`KernelSpace::areas`]).
    pub fn set_label(&self, label: &'static str) {
        self.space().registry.set_label(self.range.start, Some(label));
    }

    /// Reads `buf.len()` bytes at `offset` into the area. Every page read
    /// must be mapped with [`PageFlags::R`], as for the MMU. On an error
    /// `buf` is left as it was.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), AreaAccessError> {
        #[cfg(feature = "check-contracts")]
        let before = buf.to_vec();
        let result = self.read_bytes_inner(offset, buf);
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::read_bytes_ensures(self, offset, &before, buf, &result);
        result
    }

    /// [`read_bytes`](Self::read_bytes) without its contract checks.
    fn read_bytes_inner(&self, offset: usize, buf: &mut [u8]) -> Result<(), AreaAccessError> {
        self.copy_out(offset, buf, PageFlags::R)
    }

    /// Reads bytes whatever the pages' property allows, as the contract
    /// checks inspect memory (a write-only page included).
    #[cfg(feature = "check-contracts")]
    pub(crate) fn inspect_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), AreaAccessError> {
        self.copy_out(offset, buf, PageFlags::empty())
    }

    /// Copies bytes out of pages mapped with at least `needed`.
    fn copy_out(&self, offset: usize, buf: &mut [u8], needed: PageFlags) -> Result<(), AreaAccessError> {
        let pieces = self.ram_pieces(offset, buf.len(), needed)?;
        let mut done = 0;
        for (ptr, len) in pieces {
            // SAFETY: `ram_pieces` checked that each piece is RAM of an
            // untyped frame or untracked memory mapped by this area, which
            // keeps it alive while `self` is borrowed; a piece lies in one
            // page, so every aligned word the copy touches is in that page
            // too; untyped contents are only accessed through `bytes` or
            // 8-byte atomics.
            unsafe { crate::frame::bytes::copy_from(ptr, &mut buf[done..done + len]) };
            done += len;
        }
        Ok(())
    }

    /// Writes `data` at `offset` into the area. Every page written must be
    /// mapped with [`PageFlags::RW`], as for the MMU (a page without `R` is
    /// not present on x86-64). On an error no byte is
    /// written.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), AreaAccessError> {
        #[cfg(feature = "check-contracts")]
        let before = crate::spec::contracts::write_bytes_requires(self, offset, data.len());
        let result = self.write_bytes_inner(offset, data);
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::write_bytes_ensures(self, offset, data, &before, &result);
        result
    }

    fn write_bytes_inner(&self, offset: usize, data: &[u8]) -> Result<(), AreaAccessError> {
        let pieces = self.ram_pieces(offset, data.len(), PageFlags::RW)?;
        let mut done = 0;
        for (ptr, len) in pieces {
            // SAFETY: as in `read_bytes`.
            unsafe { crate::frame::bytes::copy_to(&data[done..done + len], ptr) };
            done += len;
        }
        Ok(())
    }

    /// Translates `offset..offset + len` into RAM pieces, checking every
    /// page before any byte is touched: mapped, with a property that has
    /// `needed` (`R` to read, `RW` to write), an untyped frame or untracked
    /// memory, and RAM. The first failing check of the first failing page
    /// is the error.
    fn ram_pieces(
        &self,
        offset: usize,
        len: usize,
        needed: PageFlags,
    ) -> Result<Vec<(*mut u8, usize)>, AreaAccessError> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(AreaAccessError::OutOfBounds { offset, len, size });
        }
        let mut pieces = Vec::new();
        let (mut va, end) = (self.range.start + offset, self.range.start + offset + len);
        let phys = &self.space().phys;
        while va < end {
            let in_page = (PAGE_SIZE - va % PAGE_SIZE).min(end - va);
            let item = self.query_inner(va).ok_or(AreaAccessError::Unmapped(va))?;
            if !item.prop().flags.contains(needed) {
                return Err(if needed.contains(PageFlags::W) {
                    AreaAccessError::NotWritable(va)
                } else {
                    AreaAccessError::NotReadable(va)
                });
            }
            let pa = match item {
                MappedItemRef::Tracked(frame, _) => {
                    if frame.meta().as_untyped().is_none() {
                        return Err(AreaAccessError::TypedFrame(va));
                    }
                    frame.paddr() + va % PAGE_SIZE
                }
                MappedItemRef::Untracked(pa, level, _) => {
                    let size = crate::arch::page_size::<L::Format>(level);
                    pa + va % size
                }
            };
            if !phys.is_ram(&(pa..pa + in_page)) {
                return Err(AreaAccessError::NotRam(va));
            }
            pieces.push((phys.phys_ptr(pa), in_page));
            va += in_page;
        }
        Ok(pieces)
    }
}

impl<L: KernelLayout> KVirtArea<L> {
    /// The rest of `Inv::check`: what only the space can tell.
    pub(crate) fn check_with_space(&self) -> Result<(), &'static str> {
        let space = self.space();
        match space.registry.get(self.range.start) {
            Some(info) if info.range == self.range && info.mapped == self.mapped => {}
            _ => return Err("the area is not registered as it is"),
        }
        let window = self.range.start..self.range.end + self.guard();
        if !space.vmalloc.is_allocated(window.clone()) {
            return Err("the area or its guard is free in VMALLOC");
        }
        let mut cursor = space.kernel_pt.cursor(&window).map_err(|_| "bad range")?;
        let view = crate::spec::view_of(&mut cursor);
        // A huge page may extend past the area: after a split inside it,
        // each half owns its own part of the page. Only the part inside the
        // area and its guard is this area's business.
        let outside_mapped = |m: &crate::spec::Mapping| {
            let (start, end) = (m.va.max(window.start), (m.va + m.size).min(window.end));
            start < self.mapped.start || end > self.mapped.end
        };
        if view.values().any(outside_mapped) {
            return Err("something is mapped in the area outside its mapped part, or in its guard");
        }
        Ok(())
    }

    /// The unmapped bytes after the area that belong to it: a guard, unless
    /// the right half of a split of it is alive there.
    fn guard(&self) -> usize {
        match &self.right {
            Some(link) if !link.one_dropped.load(Ordering::Acquire) => 0,
            _ => GUARD_SIZE,
        }
    }

    /// The area's registry entry.
    #[cfg(feature = "check-contracts")]
    pub(crate) fn registry_info(&self) -> Option<AreaInfo> {
        self.space().registry.get(self.range.start)
    }

    /// Runs `f` with a temporary handle to the area's kernel space.
    #[cfg(feature = "check-contracts")]
    pub(crate) fn with_kernel_space<R>(&self, f: impl FnOnce(&KernelSpace<L>) -> R) -> R {
        f(&KernelSpace { inner: self.space.clone() })
    }
}

impl<L: KernelLayout> KernelSpace<L> {
    /// [`KVirtArea::try_map_frames`] in this space.
    pub fn try_map_frames<T: AnyFrameMeta + ?Sized>(
        &self,
        area_size: usize,
        map_offset: usize,
        frames: impl IntoIterator<Item = Frame<T>>,
        prop: PageProperty,
    ) -> Result<KVirtArea<L>, KVirtAreaError> {
        let frames: Vec<Frame<T>> = frames.into_iter().collect();
        let len = frames.len().saturating_mul(PAGE_SIZE);
        #[cfg(feature = "check-contracts")]
        let request = crate::spec::contracts::ConstructorRequest {
            panic_condition: crate::spec::map_frames_panic_condition(
                area_size,
                map_offset,
                frames.len(),
                &prop,
            ) || crate::spec::map_frames_foreign_frame_condition(self, &frames),
            area_size,
            map_offset,
            what: crate::spec::contracts::Requested::Frames(frames.iter().map(Frame::paddr).collect()),
            prop,
        };
        let result = self.try_map_frames_inner(area_size, map_offset, frames, len, prop);
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::constructor_ensures(self, &request, &result);
        result
    }

    fn try_map_frames_inner<T: AnyFrameMeta + ?Sized>(
        &self,
        area_size: usize,
        map_offset: usize,
        frames: Vec<Frame<T>>,
        len: usize,
        prop: PageProperty,
    ) -> Result<KVirtArea<L>, KVirtAreaError> {
        check_common(area_size, map_offset, len, &prop)?;
        let slots = self.phys().slot_map();
        // Branch-free over all frames (it vectorises); the rare failure
        // then looks for the culprit.
        if !frames.iter().fold(true, |ours, f| ours & f.paddr_in(slots).is_some()) {
            let f = frames.iter().find(|f| f.paddr_in(slots).is_none()).expect("a foreign frame");
            return Err(KVirtAreaError::ForeignFrame(f.paddr()));
        }
        let area = self.alloc_area(area_size, PAGE_SIZE, map_offset, len, AreaKind::Tracked)?;
        if frames.is_empty() {
            return Ok(area);
        }
        let mut cursor =
            self.inner().kernel_pt.cursor_mut(&area.mapped).expect("an area lies in kernel space");
        if cursor.try_map_frames(frames, prop).is_err() {
            // Only running out of page-table memory can fail here; the
            // area's drop unmaps what was mapped and frees the range.
            drop(cursor);
            drop(area);
            return Err(KVirtAreaError::OutOfMemory);
        }
        Ok(area)
    }

    /// [`KVirtArea::try_map_untracked_frames`] in this space.
    ///
    /// # Safety
    ///
    /// As for [`KVirtArea::map_untracked_frames`].
    pub unsafe fn try_map_untracked_frames(
        &self,
        area_size: usize,
        map_offset: usize,
        pa_range: Range<Paddr>,
        prop: PageProperty,
    ) -> Result<KVirtArea<L>, KVirtAreaError> {
        #[cfg(feature = "check-contracts")]
        let request = crate::spec::contracts::ConstructorRequest {
            panic_condition: crate::spec::map_untracked_frames_panic_condition(
                self, area_size, map_offset, &pa_range, &prop,
            ),
            area_size,
            map_offset,
            what: crate::spec::contracts::Requested::Untracked(pa_range.clone()),
            prop,
        };
        let result = self.try_map_untracked_inner(area_size, map_offset, pa_range, prop);
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::constructor_ensures(self, &request, &result);
        result
    }

    fn try_map_untracked_inner(
        &self,
        area_size: usize,
        map_offset: usize,
        pa_range: Range<Paddr>,
        prop: PageProperty,
    ) -> Result<KVirtArea<L>, KVirtAreaError> {
        if pa_range.start > pa_range.end {
            return Err(KVirtAreaError::ReversedPaddrRange(pa_range));
        }
        check_common(area_size, map_offset, pa_range.len(), &prop)?;
        if !is_page_aligned(pa_range.start) || !is_page_aligned(pa_range.end) {
            return Err(KVirtAreaError::MisalignedPaddr(pa_range));
        }
        match self.check_untracked(&pa_range) {
            Err(UntrackedRangeError::PaddrTooLarge) => return Err(KVirtAreaError::PaddrTooLarge(pa_range)),
            Err(UntrackedRangeError::Tracked) => return Err(KVirtAreaError::TrackedPaddr(pa_range)),
            Ok(()) => {}
        }
        let len = pa_range.len();
        // Align the area so that the mapping can use the largest pages the
        // physical range allows: with the area's start aligned to `a`, the
        // mapping's virtual and physical addresses agree modulo `a` when
        // `map_offset` and `pa_range.start` do, and then every `a`-aligned
        // piece of the physical range becomes one huge page. Only worth it
        // if the range holds such a piece; if VMALLOC has no aligned room,
        // fall back to small pages.
        let align = (2..=L::Format::HIGHEST_LEAF_LEVEL)
            .rev()
            .map(page_size::<L::Format>)
            .find(|&a| {
                pa_range.start % a == map_offset % a
                    && crate::addr::checked_align_up(pa_range.start, a)
                        .and_then(|s| s.checked_add(a))
                        .is_some_and(|e| e <= pa_range.end)
            })
            .unwrap_or(PAGE_SIZE);
        let area = match self.alloc_area(area_size, align, map_offset, len, AreaKind::Untracked) {
            Err(KVirtAreaError::VmallocExhausted(_)) if align > PAGE_SIZE => {
                self.alloc_area(area_size, PAGE_SIZE, map_offset, len, AreaKind::Untracked)?
            }
            result => result?,
        };
        if len == 0 {
            return Ok(area);
        }
        let mut cursor =
            self.inner().kernel_pt.cursor_mut(&area.mapped).expect("an area lies in kernel space");
        for (pa, level) in largest_pages::<L::Format>(area.mapped.start, pa_range.start, len) {
            if cursor.try_map(MappedItem::Untracked(pa, level, prop)).is_err() {
                drop(cursor);
                drop(area);
                return Err(KVirtAreaError::OutOfMemory);
            }
        }
        Ok(area)
    }

    /// Allocates and registers an area; nothing is mapped yet.
    fn alloc_area(
        &self,
        area_size: usize,
        align: usize,
        map_offset: usize,
        len: usize,
        kind: AreaKind,
    ) -> Result<KVirtArea<L>, KVirtAreaError> {
        let range = self
            .inner()
            .vmalloc
            .alloc(area_size, align, self.phys().platform().current_cpu())
            .map_err(|_| KVirtAreaError::VmallocExhausted(area_size))?;
        debug_assert!(L::VMALLOC_VADDR_RANGE.start <= range.start && range.end <= L::VMALLOC_VADDR_RANGE.end);
        let mapped = range.start + map_offset..range.start + map_offset + len;
        self.inner().registry.insert(AreaInfo {
            range: range.clone(),
            mapped: mapped.clone(),
            kind,
            label: None,
        });
        Ok(KVirtArea { range, mapped, right: None, left: None, space: self.inner.clone() })
    }
}

impl<L: KernelLayout> Drop for KVirtArea<L> {
    fn drop(&mut self) {
        let space = self.space();
        // What was mapped. Until the flush below has returned, a CPU may
        // still reach it: if anything before unwinds, it is leaked rather
        // than released.
        let mut frags: ManuallyDrop<Vec<PageTableFrag<L::Format>>> = ManuallyDrop::new(Vec::new());
        if !self.mapped.is_empty() {
            {
                let mut cursor =
                    space.kernel_pt.cursor_mut(&self.mapped).expect("an area lies in kernel space");
                while let Some(frag) = cursor.take_next(self.mapped.end - cursor.virt_addr()) {
                    frags.push(frag);
                }
            }
            // Invalidate before anything mapped can be reused.
            space.phys.platform().flush_tlb(TlbFlushOp::Range(self.mapped.clone()), TlbScope::AllCpus);
        }
        // Released last, after the range (unmapped and flushed, so free to
        // reuse): dropping frames runs their metadata's drop hooks, and
        // however that ends, the range and its registry entry are back.
        let frags = ManuallyDrop::into_inner(frags);
        space.registry.remove(self.range.start);
        // See `SplitLink`: leave the first page to a live left half as its
        // guard; take back the page a dropped right half left to us.
        let start = match &self.left {
            Some(link) if !link.drop_one() => self.range.start + GUARD_SIZE,
            _ => self.range.start,
        };
        let end = match &self.right {
            Some(link) if !link.drop_one() => self.range.end,
            _ => self.range.end + GUARD_SIZE,
        };
        // Checked while the range is still ours: once it is free, another
        // thread may take it.
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::drop_ensures_before_free(self, start..end);
        if start < end {
            let freed = space.vmalloc.free(start..end);
            #[cfg(feature = "check-contracts")]
            crate::spec::contracts::drop_ensures_freed(&(start..end), &freed);
            debug_assert!(freed.is_ok(), "freeing an area's range failed: {freed:?}");
        }
        drop(frags);
    }
}

impl<L: KernelLayout> fmt::Debug for KVirtArea<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KVirtArea")
            .field("range", &format_args!("{:#x?}", self.range))
            .field("mapped", &format_args!("{:#x?}", self.mapped))
            .finish()
    }
}

/// The invariant checkers of areas and spaces catch each corruption.
#[cfg(test)]
mod inv_tests;
