//! Physical frames: metadata, handles, segments and the allocator.
//!
//! Every physical page below `max_paddr` (the end of RAM) has a metadata slot (the `meta`
//! module docs show the layout, the `ref_count` module docs the states of
//! the reference count). Handles are thin pointers to slots:
//!
//! | handle | holds | use |
//! |---|---|---|
//! | [`Frame<M>`] | one reference | typed metadata `M`, or `dyn AnyFrameMeta` |
//! | [`UFrame`] | one reference | untyped bytes, readable and writable |
//! | [`FrameRef`] | nothing | a borrow of a frame owned elsewhere (a page-table entry) |
//! | [`UniqueFrame<M>`] | the frame, alone | typed metadata `M`, writable (`meta_mut`) |
//! | [`Segment<M>`] | one reference per page | a physically contiguous run |
//!
//! Dropping the last reference (or the unique handle) runs the metadata's
//! drop hook and returns the page to the allocator of the kernel space it came from. Each slot records
//! that owner, so handles stay one word and independent kernel spaces (many
//! per test process) never mix their pages.
//!
//! The allocator (the `buddy` module) is a buddy system: O(log n) per allocation,
//! LIFO reuse of freed pages. Single pages go through per-CPU lists in
//! front of it (the `page_cache` module), so that CPUs allocating and
//! freeing pages at once do not meet on its lock.

mod buddy;
pub(crate) mod bytes;
mod handle;
pub(crate) mod meta;
mod page_cache;
// The reference-count state machine. Public only to the loom model
// (`tests/loom_ref_count.rs`, built with `--cfg loom`), which drives these
// very transitions over loom's atomics.
#[cfg(loom)]
pub mod ref_count;
#[cfg(not(loom))]
pub(crate) mod ref_count;
mod segment;
mod unique;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicIsize, Ordering};

use crossbeam_utils::CachePadded;

pub use handle::{Frame, FrameRef, UFrame};
pub use meta::MetaPtr;
use meta::MetaSlot;
pub use meta::{AnyFrameMeta, AnyUFrameMeta, META_SLOT_SIZE, META_STORAGE_SIZE};
pub use ref_count::{REF_COUNT_BUSY, REF_COUNT_MAX, REF_COUNT_UNIQUE, REF_COUNT_UNUSED};
pub use segment::{Segment, SegmentError, USegment};
pub use unique::UniqueFrame;

use self::buddy::BuddyAllocator;
use self::page_cache::PageCache;
use crate::addr::{is_page_aligned, Paddr, PAGE_SIZE};
use crate::platform::{MemoryRegion, MemoryRegionKind, Platform};

/// The most pages a [`Segment`] can have: 2^18, 1 GiB of 4 KiB pages, the
/// largest block of the buddy allocator. A longer segment is
/// [`FrameAllocError::OutOfMemory`] even when that much contiguous memory is
/// free.
pub const MAX_SEGMENT_PAGES: usize = 1 << buddy::MAX_ORDER;

/// Why a frame allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameAllocError {
    /// A segment of zero pages was requested.
    ZeroLength,
    /// No free run of the requested length exists (a run longer than
    /// [`MAX_SEGMENT_PAGES`] never does).
    OutOfMemory,
}

impl fmt::Display for FrameAllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameAllocError::ZeroLength => f.write_str("a segment must have at least one page"),
            FrameAllocError::OutOfMemory => f.write_str("out of physical memory"),
        }
    }
}

impl core::error::Error for FrameAllocError {}

/// Why a byte access to an untyped frame or segment failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameAccessError {
    /// `offset + len` is past the end (or overflows).
    OutOfBounds {
        /// The requested offset.
        offset: usize,
        /// The requested length.
        len: usize,
        /// The size of the frame or segment.
        size: usize,
    },
}

impl fmt::Display for FrameAccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameAccessError::OutOfBounds { offset, len, size } => {
                write!(f, "access of {len} bytes at offset {offset:#x} is out of bounds of {size:#x} bytes")
            }
        }
    }
}

impl core::error::Error for FrameAccessError {}

/// Options for allocating frames and segments.
///
/// Frames are zeroed unless [`zeroed(false)`](Self::zeroed) is set.
/// `FrameAllocOptions::new()` allocates from the process-wide default
/// kernel space, `FrameAllocOptions::new_in(&space)` from an explicit one
/// (both are defined with the kernel space, `crate::kspace`, which this
/// module does not know).
#[derive(Clone, Copy, Debug)]
pub struct FrameAllocOptions<'a> {
    zeroed: bool,
    /// The physical memory frames come from.
    phys: &'a PhysMem,
}

impl<'a> FrameAllocOptions<'a> {
    /// Options for frames of `phys`, zeroing on.
    pub(crate) const fn for_phys(phys: &'a PhysMem) -> Self {
        Self { zeroed: true, phys }
    }

    /// Whether to zero the frames (default `true`).
    #[must_use]
    pub const fn zeroed(mut self, zeroed: bool) -> Self {
        self.zeroed = zeroed;
        self
    }

    fn phys(&self) -> &'a PhysMem {
        self.phys
    }

    /// Allocates one frame with `()` metadata.
    pub fn alloc_frame(&self) -> Result<Frame<()>, FrameAllocError> {
        self.alloc_frame_with(())
    }

    /// Allocates one frame with metadata `meta`.
    pub fn alloc_frame_with<M: AnyFrameMeta>(&self, meta: M) -> Result<Frame<M>, FrameAllocError> {
        let phys = self.phys();
        let pa = phys.alloc_pages_under_pressure(1, self.zeroed)?;
        // SAFETY: the page was just handed out by the allocator, so its slot
        // is free and no one else refers to it.
        Ok(unsafe { phys.init_frame(pa, meta) })
    }

    /// Allocates one frame with metadata `meta`, owned by the returned
    /// handle alone (see [`UniqueFrame`]).
    pub fn alloc_unique_frame_with<M: AnyFrameMeta>(
        &self,
        meta: M,
    ) -> Result<UniqueFrame<M>, FrameAllocError> {
        let frame = self.alloc_frame_with(meta)?;
        // Nothing else can have a reference to a frame just built.
        Ok(UniqueFrame::try_from(frame).unwrap_or_else(|_| unreachable!("a new frame has one reference")))
    }

    /// Allocates `nr_pages` contiguous frames with `()` metadata.
    ///
    /// `nr_pages` is at most [`MAX_SEGMENT_PAGES`] (1 GiB): a longer
    /// segment fails with [`FrameAllocError::OutOfMemory`] whatever is free.
    /// A segment of `2^k` pages is aligned to `2^k` pages.
    pub fn alloc_segment(&self, nr_pages: usize) -> Result<Segment<()>, FrameAllocError> {
        self.alloc_segment_with(nr_pages, |_| ())
    }

    /// Allocates `nr_pages` contiguous frames, the metadata of each made by
    /// `meta` from its physical address. The length is limited as for
    /// [`alloc_segment`](Self::alloc_segment).
    pub fn alloc_segment_with<M: AnyFrameMeta, F: FnMut(Paddr) -> M>(
        &self,
        nr_pages: usize,
        mut meta: F,
    ) -> Result<Segment<M>, FrameAllocError> {
        if nr_pages == 0 {
            return Err(FrameAllocError::ZeroLength);
        }
        let phys = self.phys();
        let start = phys.alloc_pages_under_pressure(nr_pages, self.zeroed)?;
        // If `meta` panics, the guard gives the run back.
        let mut run = PartialRun { phys, start, built: 0, total: nr_pages };
        for i in 0..nr_pages {
            let pa = start + i * PAGE_SIZE;
            // SAFETY: the run was just handed out by the allocator; the
            // `Frame` made here is forgotten so the segment (or, on unwind,
            // the guard) owns its reference.
            core::mem::forget(unsafe { phys.init_frame(pa, meta(pa)) });
            run.built += 1;
        }
        core::mem::forget(run);
        // SAFETY: every page of the run now holds one reference with `M`
        // metadata, which the segment takes over.
        Ok(unsafe { Segment::from_raw_parts(phys, start..start + nr_pages * PAGE_SIZE) })
    }
}

/// A run of pages being made into frames by `alloc_segment_with`. Dropped
/// only if a metadata constructor unwinds: it then releases the frames
/// built so far (running their drop hooks) and returns the pages whose slots
/// were never initialised, so a panic leaks nothing.
struct PartialRun<'a> {
    phys: &'a PhysMem,
    start: Paddr,
    /// The first `built` pages are frames holding one reference each.
    built: usize,
    /// The run's length in pages; pages `built..total` have free slots.
    total: usize,
}

impl Drop for PartialRun<'_> {
    fn drop(&mut self) {
        let built_end = self.start + self.built * PAGE_SIZE;
        if self.built > 0 {
            // SAFETY: each page of `start..built_end` holds one reference
            // that no handle owns (its `Frame` was forgotten); any metadata
            // is viewable as `dyn AnyFrameMeta`.
            drop(unsafe { Segment::<dyn AnyFrameMeta>::from_raw_parts(self.phys, self.start..built_end) });
        }
        if self.built < self.total {
            self.phys.dealloc_pages(built_end, self.total - self.built);
        }
    }
}

/// Why physical memory could not be set up from a memory map.
///
/// Only RAM regions (`Usable` and `Reserved`) are checked; `Device` regions
/// are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhysMemError {
    /// A RAM region is not page aligned or is empty.
    BadRegion(MemoryRegion),
    /// Two RAM regions overlap: the first such pair in address order.
    OverlappingRegions(MemoryRegion, MemoryRegion),
    /// No usable region can hold the metadata array.
    NoRoomForMetadata {
        /// The bytes needed.
        needed: usize,
    },
    /// The memory map has no RAM.
    NoRam,
}

impl fmt::Display for PhysMemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhysMemError::BadRegion(r) => write!(f, "the memory-map region {r} is empty or not page aligned"),
            PhysMemError::OverlappingRegions(a, b) => write!(f, "the memory-map regions {a} and {b} overlap"),
            PhysMemError::NoRoomForMetadata { needed } => {
                write!(f, "no usable region can hold {needed:#x} bytes of frame metadata")
            }
            PhysMemError::NoRam => f.write_str("the memory map has no RAM"),
        }
    }
}

impl core::error::Error for PhysMemError {}

/// Usage counters of physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysStats {
    /// Pages the allocator manages (usable RAM minus the metadata array).
    pub total_pages: usize,
    /// Pages free in the allocator.
    pub free_pages: usize,
    /// Pages handed out (`total_pages - free_pages`).
    pub used_pages: usize,
    /// Pages used as page-table nodes (a subset of `used_pages`).
    pub page_table_pages: usize,
}

/// The physical memory of one kernel space: the platform, the metadata
/// array and the allocator.
pub(crate) struct PhysMem {
    platform: Box<dyn Platform>,
    /// `platform.phys_base()`, read once.
    base: NonNull<u8>,
    /// The metadata array: slot `i` describes page `i`. Lives in RAM at
    /// physical `meta_range`, reached through `base`.
    slots: NonNull<MetaSlot>,
    meta_range: Range<Paddr>,
    /// RAM ends here; slots exist for every page below (holes included).
    max_paddr: Paddr,
    /// The RAM of the memory map (its `Usable` and `Reserved` regions),
    /// sorted, with touching regions merged: what Platform contract 1
    /// makes reachable. Holes below `max_paddr` (`Device` regions, or
    /// addresses the map leaves out) are not in it.
    ram: Vec<Range<Paddr>>,
    /// Ranges the allocator may hand out, sorted (usable RAM minus the
    /// metadata array). Nothing outside them is ever allocated.
    allocatable: Vec<Range<Paddr>>,
    /// In cache lines of its own: it is written on every allocation that
    /// reaches it, while the fields above are read on every operation of
    /// every CPU.
    allocator: CachePadded<spin::Mutex<BuddyAllocator>>,
    /// Free single pages kept per CPU in front of `allocator`.
    page_cache: PageCache,
    /// Page-table nodes alive (attached or waiting for reclamation).
    page_table_pages: PerCpuCount,
    /// Called when a frame allocation fails, before it is retried once: it
    /// gives back memory held for later (a kernel space's lazily dropped
    /// areas) and says whether it did. Set once, by the space.
    pressure_hook: spin::Once<PressureHook>,
}

/// See `PhysMem::pressure_hook`.
pub(crate) type PressureHook = Box<dyn Fn() -> bool + Send + Sync>;

/// A count kept in one cache line per CPU (CPU `i` uses cell `i % 8`), so
/// that CPUs changing it at once do not pass a line back and forth; read by
/// summing, which is exact whenever no change is under way.
#[derive(Debug, Default)]
struct PerCpuCount([CachePadded<AtomicIsize>; 8]);

impl PerCpuCount {
    fn add(&self, cpu: usize, n: isize) {
        self.0[cpu % self.0.len()].fetch_add(n, Ordering::Relaxed);
    }

    fn sum(&self) -> usize {
        let sum: isize = self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        // A node freed on another CPU than it was made on leaves one cell
        // negative; only a sum read during changes can be.
        usize::try_from(sum).unwrap_or(0)
    }
}

// SAFETY: the raw pointers target RAM that the platform keeps valid and
// shareable (Platform safety contract 1); all mutation of shared state goes
// through atomics or the allocator lock.
unsafe impl Send for PhysMem {}
// SAFETY: as for `Send`.
unsafe impl Sync for PhysMem {}

impl fmt::Debug for PhysMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhysMem")
            .field("platform", &self.platform)
            .field("max_paddr", &format_args!("{:#x}", self.max_paddr))
            .field("meta_range", &format_args!("{:#x?}", self.meta_range))
            .field("stats", &self.stats())
            .finish()
    }
}

/// The address range of one space's metadata array.
///
/// A frame handle points to its slot, so the slot's offset in the array
/// gives the frame's physical address, and whether the offset is in range
/// says whether the frame belongs to this space (the arrays of two spaces
/// are disjoint allocations), all without reading the slot. Mapping a run
/// of frames uses this to stay out of their metadata.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotMap {
    start: usize,
    len: usize,
}

impl SlotMap {
    /// The physical address of the page `slot` describes, if it is a slot
    /// of this array.
    #[inline]
    pub(crate) fn paddr(self, slot: *const MetaSlot) -> Option<Paddr> {
        let offset = slot.addr().wrapping_sub(self.start);
        (offset < self.len).then(|| offset / META_SLOT_SIZE * PAGE_SIZE)
    }
}

impl PhysMem {
    /// Sets up the metadata array and the allocator over `memory_map`.
    pub(crate) fn new(
        platform: Box<dyn Platform>,
        memory_map: &[MemoryRegion],
        ram_is_zeroed: bool,
    ) -> Result<Self, PhysMemError> {
        let mut ram: Vec<MemoryRegion> =
            memory_map.iter().filter(|r| r.kind != MemoryRegionKind::Device).cloned().collect();
        ram.sort_by_key(|r| r.range.start);
        for r in &ram {
            if r.range.is_empty() || !is_page_aligned(r.range.start) || !is_page_aligned(r.range.end) {
                return Err(PhysMemError::BadRegion(r.clone()));
            }
        }
        if let Some(w) = ram.windows(2).find(|w| w[0].range.end > w[1].range.start) {
            return Err(PhysMemError::OverlappingRegions(w[0].clone(), w[1].clone()));
        }
        let max_paddr = ram.last().ok_or(PhysMemError::NoRam)?.range.end;
        let mut runs: Vec<Range<Paddr>> = Vec::new();
        for r in &ram {
            match runs.last_mut() {
                Some(last) if last.end == r.range.start => last.end = r.range.end,
                _ => runs.push(r.range.clone()),
            }
        }
        let nr_pages = max_paddr / PAGE_SIZE;
        let meta_bytes = crate::addr::align_up(nr_pages * META_SLOT_SIZE, PAGE_SIZE);
        let meta_start = ram
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable && r.range.len() >= meta_bytes)
            .map(|r| r.range.start)
            .next()
            .ok_or(PhysMemError::NoRoomForMetadata { needed: meta_bytes })?;
        let meta_range = meta_start..meta_start + meta_bytes;

        let mut allocatable = Vec::new();
        for r in ram.iter().filter(|r| r.kind == MemoryRegionKind::Usable) {
            for piece in [
                r.range.start..r.range.end.min(meta_range.start),
                r.range.start.max(meta_range.end)..r.range.end,
            ] {
                if !piece.is_empty() {
                    allocatable.push(piece);
                }
            }
        }
        let mut allocator = BuddyAllocator::new(nr_pages);
        debug_assert_eq!(allocator.total_pages(), nr_pages);
        for r in &allocatable {
            allocator.add_free_range(r.start / PAGE_SIZE..r.end / PAGE_SIZE);
        }

        let base = platform.phys_base();
        // SAFETY: `meta_range` is RAM, reachable at `base + pa` (Platform
        // contract 1).
        let slots = unsafe { base.add(meta_range.start) }.cast::<MetaSlot>();
        if !ram_is_zeroed {
            // SAFETY: the metadata array is usable RAM that nothing else uses
            // (contract 2) and that we have not shared yet.
            unsafe { core::ptr::write_bytes(slots.as_ptr().cast::<u8>(), 0, meta_bytes) };
        }
        let total_pages = allocatable.iter().map(|r| r.len() / PAGE_SIZE).sum();
        Ok(Self {
            platform,
            base,
            slots,
            meta_range,
            max_paddr,
            ram: runs,
            allocatable,
            allocator: CachePadded::new(spin::Mutex::new(allocator)),
            page_cache: PageCache::new(total_pages),
            page_table_pages: PerCpuCount::default(),
            pressure_hook: spin::Once::new(),
        })
    }

    pub(crate) fn platform(&self) -> &dyn Platform {
        &*self.platform
    }

    pub(crate) fn max_paddr(&self) -> Paddr {
        self.max_paddr
    }

    /// The physical range holding the metadata array.
    pub(crate) fn meta_range(&self) -> Range<Paddr> {
        self.meta_range.clone()
    }

    /// Whether the allocator may ever hand out any page of `range`.
    pub(crate) fn overlaps_allocatable(&self, range: &Range<Paddr>) -> bool {
        self.allocatable.iter().any(|r| r.start < range.end && range.start < r.end)
    }

    /// Whether every byte of `range` (none, if it is empty) is RAM: in one
    /// `Usable` or `Reserved` region of the memory map, or in touching ones.
    /// A hole below `max_paddr` is not RAM, although its pages have
    /// metadata slots. O(log n) in the regions.
    pub(crate) fn is_ram(&self, range: &Range<Paddr>) -> bool {
        if range.is_empty() {
            return true;
        }
        // The last run starting at or below `range.start`: the only one that
        // can hold it, the runs being sorted, disjoint and not touching.
        let i = self.ram.partition_point(|r| r.start <= range.start);
        i > 0 && range.end <= self.ram[i - 1].end
    }

    /// The RAM of the memory map (see [`Self::is_ram`]): sorted, disjoint
    /// runs, touching regions merged.
    pub(crate) fn ram(&self) -> &[Range<Paddr>] {
        &self.ram
    }

    /// Where the platform window starts: physical address `pa` is reached
    /// at `ram_base() + pa` ([`phys_ptr`](Self::phys_ptr)).
    #[inline]
    pub(crate) fn ram_base(&self) -> NonNull<u8> {
        self.base
    }

    /// A pointer to physical address `pa` through the platform window.
    ///
    /// The pointer is valid (Platform contract 1) when `pa` is RAM.
    #[inline]
    pub(crate) fn phys_ptr(&self, pa: Paddr) -> *mut u8 {
        debug_assert!(self.is_ram(&(pa..pa + 1)), "physical address {pa:#x} is not RAM");
        self.base.as_ptr().wrapping_add(pa)
    }

    /// The slot of the page at `pa`.
    #[inline]
    pub(crate) fn slot(&self, pa: Paddr) -> &MetaSlot {
        assert!(pa < self.max_paddr, "physical address {pa:#x} has no metadata slot");
        // SAFETY: just checked.
        unsafe { self.slot_unchecked(pa) }
    }

    /// The slot of the page at `pa`, which the caller knows has one:
    /// [`slot`](Self::slot) without the bounds check, which debug builds
    /// still make. For a page-table node's lock, taken on every map and
    /// unmap: the check's loads and compare were some 5% of a 1-page map
    /// and unmap.
    ///
    /// # Safety
    ///
    /// `pa < max_paddr`: the page is one of this `PhysMem`'s (a page-table
    /// node of a table over it).
    #[inline]
    pub(crate) unsafe fn slot_unchecked(&self, pa: Paddr) -> &MetaSlot {
        debug_assert!(pa < self.max_paddr, "physical address {pa:#x} has no metadata slot");
        let slot = self.slots.as_ptr().wrapping_add(pa / PAGE_SIZE);
        // SAFETY: `pa / PAGE_SIZE < nr_pages` (caller contract), so the slot
        // is inside the metadata array, which lives as long as `self`.
        unsafe { &*slot }
    }

    /// The handle that takes over the reference a tracked page-table entry
    /// mapping `pa` owned: what unmapping the entry gives back.
    ///
    /// # Safety
    ///
    /// - The entry mapped `pa` as a tracked frame of this `PhysMem`, and
    ///   owned one reference to it.
    /// - The entry was cleared (or can no longer be reached), and the
    ///   caller hands its reference to the result, once.
    ///
    /// The frame may still be cached in a TLB: the caller drops the result
    /// only after a flush that covers the page (or hands it to someone who
    /// does).
    #[inline]
    pub(crate) unsafe fn frame_of_entry(&self, pa: Paddr) -> Frame<dyn AnyFrameMeta> {
        // SAFETY: the reference moves from the entry to the handle (caller
        // contract); every slot's metadata can be viewed as `dyn
        // AnyFrameMeta`.
        unsafe { Frame::from_slot(NonNull::from(self.slot(pa))) }
    }

    /// The physical address of the page a slot of this array describes.
    #[inline]
    pub(crate) fn slot_paddr(&self, slot: &MetaSlot) -> Paddr {
        self.slot_map().paddr(slot).expect("the slot belongs to this metadata array")
    }

    /// Where this array's slots are, to tell a frame's physical address
    /// from its handle alone (see [`SlotMap`]).
    #[inline]
    pub(crate) fn slot_map(&self) -> SlotMap {
        SlotMap { start: self.slots.as_ptr().addr(), len: self.max_paddr / PAGE_SIZE * META_SLOT_SIZE }
    }

    pub(crate) fn stats(&self) -> PhysStats {
        let total_pages = self.allocatable.iter().map(|r| r.len() / PAGE_SIZE).sum();
        let free_pages =
            self.page_cache.with_all(&self.allocator, |cached, buddy| cached + buddy.free_pages());
        PhysStats {
            total_pages,
            free_pages,
            used_pages: total_pages - free_pages,
            page_table_pages: self.page_table_pages.sum(),
        }
    }

    /// Sets the pressure hook (see the field); a second call is ignored.
    pub(crate) fn set_pressure_hook(&self, hook: PressureHook) {
        self.pressure_hook.call_once(|| hook);
    }

    /// [`alloc_pages`](Self::alloc_pages) for a frame a caller asked for:
    /// when memory runs out, calls the pressure hook and tries again. Not
    /// for page-table nodes, which are allocated with node locks held: the
    /// hook releases frames, and their drop hooks may need those locks.
    fn alloc_pages_under_pressure(&self, count: usize, zeroed: bool) -> Result<Paddr, FrameAllocError> {
        self.alloc_pages(count, zeroed).or_else(|e| match self.pressure_hook.get() {
            Some(hook) if hook() => self.alloc_pages(count, zeroed),
            _ => Err(e),
        })
    }

    /// Takes `count` contiguous pages from the allocator, zeroing them if
    /// asked. Their slots are free; the caller initialises them.
    pub(crate) fn alloc_pages(&self, count: usize, zeroed: bool) -> Result<Paddr, FrameAllocError> {
        let pfn = if count == 1 {
            self.page_cache.alloc(self.platform.current_cpu(), &self.allocator)
        } else {
            let pfn = self.allocator.lock().alloc(count);
            pfn.or_else(|| self.page_cache.drain_and_alloc(&self.allocator, count))
        };
        let pa = pfn.ok_or(FrameAllocError::OutOfMemory)? * PAGE_SIZE;
        if zeroed {
            // SAFETY: the run is usable RAM (contract 1) just handed to us:
            // no handle refers to it and no one else accesses it (contract 2).
            unsafe { core::ptr::write_bytes(self.phys_ptr(pa), 0, count * PAGE_SIZE) };
        }
        Ok(pa)
    }

    /// Tears the frame at `pa` down (its drop hook, then its metadata's
    /// destructor) and returns its page to the allocator: the end of every
    /// frame, whether its last reference or its unique handle went.
    ///
    /// # Safety
    ///
    /// The caller made the page's slot `BUSY` by dropping the last reference
    /// (`MetaSlot::dec_ref` returned `true`) or the unique handle
    /// (`MetaSlot::begin_unique_tear_down`), and calls this once.
    pub(crate) unsafe fn free_frame(&self, pa: Paddr) {
        // SAFETY: the caller owns the `BUSY` slot, once.
        unsafe { self.slot(pa).tear_down(pa) };
        self.dealloc_pages(pa, 1);
    }

    /// Returns pages to the allocator.
    pub(crate) fn dealloc_pages(&self, pa: Paddr, count: usize) {
        if count == 1 {
            self.page_cache.dealloc(self.platform.current_cpu(), pa / PAGE_SIZE, &self.allocator);
        } else {
            self.allocator.lock().dealloc(pa / PAGE_SIZE, count);
        }
    }

    /// Runs `free`, which frees up to `pages` single pages on this CPU, with
    /// this CPU's list of free pages allowed to keep them beyond its usual
    /// length, until as many are allocated on this CPU (see the
    /// `page_cache` module): a lazy purge's release, whose frames this
    /// CPU's next areas will want.
    ///
    /// The burst is settled even if `free` panics (a frame's metadata drop
    /// hook is the caller's code), so no room it announced outlives it.
    pub(crate) fn freeing_pages<R>(&self, pages: usize, free: impl FnOnce() -> R) -> R {
        /// Settles `cpu`'s list when dropped, unwinding or not.
        struct Settle<'a>(&'a PageCache, usize);
        impl Drop for Settle<'_> {
            fn drop(&mut self) {
                self.0.settle(self.1);
            }
        }
        let cpu = self.platform.current_cpu();
        self.page_cache.keep(cpu, pages);
        let _settle = Settle(&self.page_cache, cpu);
        free()
    }

    /// How many free pages `cpu`'s list holds.
    #[cfg(test)]
    pub(crate) fn cached_pages(&self, cpu: usize) -> usize {
        self.page_cache.len(cpu)
    }

    /// Counts a page-table node made (`1`) or freed (`-1`).
    pub(crate) fn count_page_table_pages(&self, n: isize) {
        self.page_table_pages.add(self.platform.current_cpu(), n);
    }

    /// Makes the free page at `pa` a frame with metadata `meta`.
    ///
    /// # Safety
    ///
    /// The page came from [`Self::alloc_pages`] and no slot of it was
    /// initialised since.
    pub(crate) unsafe fn init_frame<M: AnyFrameMeta>(&self, pa: Paddr, meta: M) -> Frame<M> {
        let slot = self.slot(pa);
        if slot.init(meta, self).is_err() {
            panic!("allocator handed out page {pa:#x} whose metadata slot is in use");
        }
        // SAFETY: the slot now holds `M` metadata and one reference, which we
        // hand to the new handle.
        unsafe { Frame::from_slot(NonNull::from(slot)) }
    }

    /// Runs `f` with the invariants of the per-CPU page lists and of the
    /// allocator (O(n); the first clause broken, if any) and a test of
    /// whether a page is free, for a check that walks every page: the
    /// lists are checked and then drained, so the allocator alone knows
    /// every free page, and its lock is taken once for the whole walk.
    pub(crate) fn with_free_pages<R>(
        &self,
        f: impl FnOnce(Result<(), &'static str>, &dyn Fn(Paddr) -> bool) -> R,
    ) -> R {
        use crate::inv::Inv;
        let lists = self.page_cache.check();
        self.page_cache.drain(&self.allocator);
        let allocator = self.allocator.lock();
        f(lists.and_then(|()| allocator.check()), &|pa| allocator.is_free(pa / PAGE_SIZE))
    }

    /// The sorted allocatable ranges.
    pub(crate) fn allocatable(&self) -> &[Range<Paddr>] {
        &self.allocatable
    }
}
