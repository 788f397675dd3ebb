//! Kernel space: one kernel's physical memory, page table and VMALLOC.
//!
//! A [`KernelSpace`] bundles everything a kernel's virtual memory needs:
//! the platform, the frame metadata and allocator, the kernel page table
//! and the VMALLOC range allocator. The calls without a space argument
//! (`KVirtArea::map_frames`, `FrameAllocOptions::new()`) work on the
//! process-wide default space,
//! [`KernelSpace::global`]; tests and benchmarks create as many independent
//! spaces as they like, each with its own simulated machine.
//!
//! ## Lifetime
//!
//! A space outlives every operation on it by construction. Its parts live
//! in one shared allocation whose handles are counted: the
//! [`KernelSpace`] itself and every [`KVirtArea`] hold one count each (an
//! area gives its count back as the very last step of its drop, after it
//! has unmapped, flushed and returned its range). Whichever handle goes
//! last tears the space down, on whatever thread that is.
//!
//! Frames, segments and page tables made from a space stay one word and
//! count nothing: a space is torn down with pages still in use only by
//! leaking its physical memory (metadata, allocator, platform), with a log
//! warning, so every frame stays valid. "In use" is read from the
//! allocator with every one of its locks held, and the last thing any
//! frame, segment or page table does with the space is to return a page
//! under one of those locks: so once the teardown sees no page in use, no
//! other thread is still inside the space. The default space is never
//! torn down.

mod kvirt_area;
mod layout;
mod range_alloc;
mod registry;
mod vmalloc;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Range;
use core::ptr::NonNull;

pub use kvirt_area::{AreaAccessError, KVirtArea, KVirtAreaError, SplitError};
pub use layout::{
    paddr_to_vaddr, KernelLayout, LayoutError, LayoutRange, TinyLayout, X86_64Layout,
    FRAME_METADATA_VADDR_RANGE, KERNEL_BASE_VADDR, KERNEL_CODE_BASE_VADDR, KERNEL_END_VADDR,
    LINEAR_MAPPING_BASE_VADDR, LINEAR_MAPPING_VADDR_RANGE, VMALLOC_VADDR_RANGE,
};
pub use range_alloc::RangeAllocError;
pub use registry::{AreaInfo, AreaKind};
pub use vmalloc::{VmallocStats, GUARD_SIZE};

pub use crate::page_table::{MappedItem, MappedItemRef};

use self::registry::AreaRegistry;
use self::vmalloc::Vmalloc;
use crate::addr::{is_page_aligned, Paddr, Vaddr};
use crate::arch::PagingFormat;
use crate::frame::{Frame, PhysMem, PhysMemError, PhysStats};
use crate::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use crate::page_table::{
    largest_pages, Cursor, KernelPtConfig, MapErrorKind, MappedItem as Item, PageTable, RangeError,
};
use crate::platform::{MemoryRegion, Platform, TlbFlushOp, TlbScope};

/// Why a kernel space could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSpaceError {
    /// The memory map cannot be used.
    PhysMem(PhysMemError),
    /// No memory for the kernel page table.
    OutOfMemory,
    /// RAM reaches `.0`, past what the layout's linear mapping can hold.
    RamBeyondLinearMapping(Paddr),
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

/// The parts of a kernel space, shared by its handles (see "Lifetime" in
/// the module documentation).
struct SpaceInner<L: KernelLayout> {
    /// The kernel page table: the linear mapping, the metadata mapping and
    /// every area. Only kvirt changes it (no mutable cursor is public), so
    /// an area's entries change only through the area. Dropped (before
    /// `phys`, whose memory its nodes live in) or leaked by `Drop`.
    kernel_pt: ManuallyDrop<PageTable<KernelPtConfig<L::Format>>>,
    vmalloc: Vmalloc,
    registry: AreaRegistry,
    /// Frames, metadata and the allocator, at a fixed heap address that
    /// frames and the page table point to from before this struct exists.
    /// Freed or leaked by `Drop`.
    phys: ManuallyDrop<PhysBox>,
    /// The memory map the space was built over, sorted by address.
    memory_map: Vec<MemoryRegion>,
    /// Pages in use when the space was set up (metadata excluded): the
    /// kernel's own page-table nodes. Used to decide whether the space can
    /// be freed.
    baseline_used_pages: usize,
    #[cfg(feature = "std")]
    machine: Option<alloc::sync::Arc<kvirt_sim::Machine>>,
}

/// The heap-allocated [`PhysMem`] of a space.
///
/// Not a `Box<PhysMem>`: moving a `Box` (into `SpaceInner`, into the
/// leaked allocation) asserts unique access to its contents, which
/// invalidates the pointers that the page table and its nodes' frames took
/// before the move (Miri reports it under Stacked and Tree Borrows). A raw
/// pointer asserts nothing; the memory is freed when the `PhysBox` drops.
struct PhysBox(NonNull<PhysMem>);

// SAFETY: `PhysMem` is `Send + Sync`; the box only shares it.
unsafe impl Send for PhysBox {}
// SAFETY: as for `Send`.
unsafe impl Sync for PhysBox {}

impl PhysBox {
    fn new(phys: PhysMem) -> Self {
        Self(NonNull::from(Box::leak(Box::new(phys))))
    }
}

impl core::ops::Deref for PhysBox {
    type Target = PhysMem;

    fn deref(&self) -> &PhysMem {
        // SAFETY: the pointer came from `Box::leak` and is freed only in
        // `drop`; the `PhysMem` is only ever shared.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for PhysBox {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` and is freed only here,
        // once; nothing points into it any more (`SpaceInner` drops its
        // page table first and drops the `PhysBox` only when no page is in
        // use, so no frame, segment or page table of it is alive).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// One kernel's virtual memory (see the module documentation), laid out
/// as `L` says (x86-64 by default).
pub struct KernelSpace<L: KernelLayout = X86_64Layout> {
    /// One of the counted handles that keep the space alive.
    inner: Arc<SpaceInner<L>>,
}

static GLOBAL: spin::Once<KernelSpace> = spin::Once::new();

impl KernelSpace {
    /// Sets up a kernel space over `platform` and its firmware memory map.
    ///
    /// kvirt checks what it can of the map (RAM regions page aligned,
    /// non-empty and disjoint, room for the metadata array, every RAM page
    /// inside the layout's linear mapping) and reports a broken rule as a
    /// [`KernelSpaceError`]; a rejected call leaves nothing allocated. What
    /// it cannot check is whether the map tells the truth: that is the
    /// caller's promise below.
    ///
    /// # Safety
    ///
    /// 1. `memory_map` describes the machine `platform` reaches: every
    ///    `Usable` and `Reserved` range is RAM for which `platform` keeps
    ///    the promises of [`Platform`] (reachable through
    ///    [`Platform::phys_base`], and nothing but kvirt touches the
    ///    `Usable` ones). kvirt writes its frame metadata into `Usable` RAM
    ///    and hands the rest out as frames.
    /// 2. No other kernel space is, or will be, built over the same `Usable`
    ///    RAM.
    /// 3. If `ram_is_zeroed` is true, every byte of `Usable` RAM reads as
    ///    zero now (true of a freshly made simulated machine). Otherwise
    ///    kvirt clears the metadata array itself.
    ///
    /// The promise is the caller's, so the call is `unsafe` (a map that
    /// claimed more RAM than the machine has would make kvirt write past
    /// it):
    ///
    /// ```compile_fail,E0133
    /// use std::sync::Arc;
    /// use kvirt::kspace::KernelSpace;
    /// use kvirt::platform::hosted::{memory_map_of, SimPlatform};
    /// use kvirt::sim::{Machine, MachineConfig};
    ///
    /// let machine = Arc::new(Machine::new(MachineConfig::new(4 << 20)));
    /// let mut map = memory_map_of(&machine);
    /// map[0].range.end = 64 << 20; // a lie: the machine has 4 MiB
    /// // SAFETY: a new machine for this space alone.
    /// let platform = unsafe { SimPlatform::new(machine) };
    /// let space = KernelSpace::new(Box::new(platform), &map, true);
    /// ```
    pub unsafe fn new(
        platform: Box<dyn Platform>,
        memory_map: &[MemoryRegion],
        ram_is_zeroed: bool,
    ) -> Result<Self, KernelSpaceError> {
        // SAFETY: forwarded to the caller.
        unsafe { Self::with_layout(platform, memory_map, ram_is_zeroed) }
    }

    /// A kernel space over a new simulated machine.
    ///
    /// # Panics
    ///
    /// Panics if the machine's memory map cannot hold the metadata array
    /// (RAM too small).
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_hosted(config: kvirt_sim::MachineConfig) -> Self {
        Self::hosted_with_layout(config)
    }

    /// The process-wide default kernel space.
    ///
    /// With the `std` feature it is created on first use over a simulated
    /// 4 GiB, 2-CPU machine (memory committed lazily). Without it, the
    /// kernel must call [`KernelSpace::init_global`] at boot.
    ///
    /// # Panics
    ///
    /// Without `std`, panics if `init_global` has not been called.
    pub fn global() -> &'static KernelSpace {
        #[cfg(feature = "std")]
        {
            GLOBAL.call_once(|| KernelSpace::new_hosted(kvirt_sim::MachineConfig::default()))
        }
        #[cfg(not(feature = "std"))]
        {
            GLOBAL.get().expect(
                "kvirt: the default kernel space is not initialised; call KernelSpace::init_global at boot",
            )
        }
    }

    /// Makes `space` the default kernel space.
    ///
    /// Returns it back if a default exists already.
    pub fn init_global(space: KernelSpace) -> Result<&'static KernelSpace, KernelSpace> {
        let mut space = Some(space);
        let global = GLOBAL.call_once(|| space.take().expect("taken once"));
        match space {
            None => Ok(global),
            Some(rejected) => Err(rejected),
        }
    }
}

impl<L: KernelLayout> KernelSpace<L> {
    /// [`KernelSpace::new`] for layout `L`.
    ///
    /// # Safety
    ///
    /// As for [`KernelSpace::new`].
    pub unsafe fn with_layout(
        platform: Box<dyn Platform>,
        memory_map: &[MemoryRegion],
        ram_is_zeroed: bool,
    ) -> Result<Self, KernelSpaceError> {
        // Every check runs before anything is built: a rejected layout
        // leaves no page-table node behind (`PhysMem` only holds host
        // memory, freed with it, and the platform, dropped with it).
        layout::check::<L>()?;
        let phys = PhysBox::new(PhysMem::new(platform, memory_map, ram_is_zeroed)?);
        layout::check_fits::<L>(phys.max_paddr(), phys.meta_range().len())?;
        let mut kernel_pt = PageTable::<KernelPtConfig<L::Format>>::empty(&phys)
            .map_err(|_| KernelSpaceError::OutOfMemory)?;
        kernel_pt.set_lazy_reclaim(true);
        map_linear_and_metadata::<L>(&kernel_pt, &phys)?;
        let baseline_used_pages = phys.stats().used_pages;
        let mut memory_map = memory_map.to_vec();
        memory_map.sort_by_key(|r| r.range.start);
        let inner = Arc::new(SpaceInner {
            memory_map,
            kernel_pt: ManuallyDrop::new(kernel_pt),
            vmalloc: Vmalloc::new(L::VMALLOC_VADDR_RANGE),
            registry: AreaRegistry::new(),
            phys: ManuallyDrop::new(phys),
            baseline_used_pages,
            #[cfg(feature = "std")]
            machine: None,
        });
        Ok(Self { inner })
    }

    /// [`KernelSpace::new_hosted`] for layout `L`. The simulated MMU walks
    /// x86-64 tables only; other layouts are for checking kvirt itself.
    ///
    /// # Panics
    ///
    /// As for `new_hosted`.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn hosted_with_layout(config: kvirt_sim::MachineConfig) -> Self {
        let machine = alloc::sync::Arc::new(kvirt_sim::Machine::new(config));
        // SAFETY: the machine is new and only this space will have it: the
        // `Arc` kept in the space is handed out by the `unsafe`
        // `machine()` alone, whose callers promise to keep out of kvirt's
        // memory.
        let platform = unsafe { crate::platform::hosted::SimPlatform::new(machine.clone()) };
        let map = platform.memory_map();
        // SAFETY: the map is the machine's own (its RAM is the platform's
        // window), the machine is new (its RAM reads as zero) and no other
        // space uses it (above).
        let space = unsafe { Self::with_layout(Box::new(platform), &map, true) };
        let mut space = space.unwrap_or_else(|e| panic!("cannot set up a hosted kernel space: {e}"));
        Arc::get_mut(&mut space.inner).expect("a new space has one handle").machine = Some(machine);
        space
    }

    /// The simulated machine under a hosted space, for tests and tools
    /// that drive its CPUs (walk the page table, fill and flush TLBs, read
    /// and write through virtual addresses) or inspect its RAM.
    ///
    /// For facts that need no machine (the device window, which CPUs
    /// exist) see [`memory_map`](Self::memory_map) and the
    /// [`platform`](Self::platform).
    ///
    /// # Safety
    ///
    /// The machine is the hardware under the space, and its methods reach
    /// all of its RAM as hardware does, with nothing to stop a write to
    /// kvirt's own memory. The caller uses it as kernel code uses its
    /// memory and MMU:
    ///
    /// 1. It writes, by physical address ([`Machine::write_phys`] and the
    ///    like) or through a CPU, only memory that kvirt has given it: the
    ///    pages of frames and segments it holds, what its areas map,
    ///    `Reserved` RAM and device memory no one else uses. It reads
    ///    those, and of kvirt's own memory (the frame metadata array,
    ///    page-table nodes, free pages) only the words kvirt itself
    ///    accesses atomically, with 8-byte atomic reads: page-table entries
    ///    (a CPU's page walk) and reference counts
    ///    ([`Machine::read_phys_u64`]).
    /// 2. It loads into a CPU (`set_root`) only the space's own kernel page
    ///    table ([`kernel_root_paddr`](Self::kernel_root_paddr)) or a page
    ///    table of this space whose every mapping obeys rule 1, and keeps it
    ///    alive while the CPU may walk it.
    /// 3. It builds no other platform or kernel space over the machine.
    ///
    /// Safe code cannot reach the machine:
    ///
    /// ```compile_fail,E0133
    /// let space = kvirt::kspace::KernelSpace::new_hosted(kvirt::sim::MachineConfig::new(8 << 20));
    /// let machine = space.machine().unwrap();
    /// machine.write_phys(0, &[0xff; 4096]).unwrap();
    /// ```
    ///
    /// [`Machine::write_phys`]: kvirt_sim::Machine::write_phys
    /// [`Machine::read_phys_u64`]: kvirt_sim::Machine::read_phys_u64
    #[cfg(feature = "std")]
    #[must_use]
    pub unsafe fn machine(&self) -> Option<&alloc::sync::Arc<kvirt_sim::Machine>> {
        self.inner().machine.as_ref()
    }

    /// The memory map the space was built over, sorted by address: RAM and
    /// device regions as the platform reported them.
    #[must_use]
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.inner().memory_map
    }

    fn inner(&self) -> &SpaceInner<L> {
        &self.inner
    }

    pub(crate) fn phys(&self) -> &PhysMem {
        &self.inner().phys
    }

    /// The platform.
    #[must_use]
    pub fn platform(&self) -> &dyn Platform {
        self.phys().platform()
    }

    /// The end of RAM: every page below has a metadata slot.
    #[must_use]
    pub fn max_paddr(&self) -> Paddr {
        self.phys().max_paddr()
    }

    /// Physical memory usage.
    #[must_use]
    pub fn phys_stats(&self) -> PhysStats {
        self.phys().stats()
    }

    /// Takes back a frame reference given up by [`Frame::into_raw`].
    ///
    /// # Safety
    ///
    /// A `paddr` that is page aligned and below [`max_paddr`](Self::max_paddr)
    /// came from `into_raw` on a `Frame<M>` of this space, and each
    /// `into_raw` is matched by at most one `from_raw`. (Other addresses,
    /// which no `into_raw` returns, panic.)
    ///
    /// # Panics
    ///
    /// Panics if `paddr` is not page aligned, or is not RAM of this space
    /// (at or above `max_paddr`), in release builds too.
    pub unsafe fn frame_from_raw<M: crate::frame::AnyFrameMeta>(&self, paddr: Paddr) -> Frame<M> {
        // Without this, the slot of the page containing `paddr` would be
        // taken: a wrong address would then pass for a right one.
        assert!(is_page_aligned(paddr), "frame_from_raw: {paddr:#x} is not page aligned");
        // `slot` checks `paddr < max_paddr`.
        let slot = NonNull::from(self.phys().slot(paddr));
        // SAFETY: the caller transfers the reference given up by `into_raw`,
        // whose metadata is `M`.
        unsafe { Frame::from_slot(slot) }
    }

    /// Reclaims the kernel page table's emptied nodes and waits until every
    /// deferred reclamation of this space has happened. After it, counters
    /// such as [`phys_stats`](Self::phys_stats) show no memory held for
    /// reuse.
    pub fn synchronize(&self) {
        self.inner().synchronize();
    }

    /// Maps the kernel image (or a part of it, such as one section) at `va`
    /// to physical `pa`, as untracked memory with the largest pages that
    /// fit, for the whole life of the space.
    ///
    /// A kernel that switches to kvirt's page table must find its own code,
    /// data and stack there. It calls this once per part of its image (say
    /// text `RX`, read-only data `R`, data and bss `RW`) right after
    /// [`KernelSpace::new`], before the space is shared
    /// ([`KernelSpace::init_global`]) or used, and then loads
    /// [`kernel_root_paddr`](Self::kernel_root_paddr).
    ///
    /// `va..va + pa.len()` must lie in
    /// `KERNEL_CODE_BASE_VADDR..KERNEL_END_VADDR` (which nothing else in
    /// kvirt uses), be unmapped, and `pa` must contain no page the frame
    /// allocator can hand out (mark the image `Reserved` in the memory map).
    /// These mappings are never removed; the page-table nodes they need
    /// count as part of the space's set-up, like those of the linear
    /// mapping.
    ///
    /// # Errors
    ///
    /// The [`KernelImageError`] of a request that breaks the rules above. A
    /// rejected call changes nothing.
    ///
    /// # Safety
    ///
    /// Accessing `pa` through `va` with `prop` must be sound for as long as
    /// the space lives: `pa` is the kernel's own image (or memory no Rust
    /// object owns), and the caller answers for what executable or writable
    /// mappings allow.
    pub unsafe fn map_kernel_image(
        &mut self,
        va: Vaddr,
        pa: Range<Paddr>,
        prop: PageProperty,
    ) -> Result<(), KernelImageError> {
        // No other handle (no area) and no page in use beyond the set-up.
        if Arc::get_mut(&mut self.inner).is_none()
            || self.phys().stats().used_pages != self.inner().baseline_used_pages
        {
            return Err(KernelImageError::SpaceInUse);
        }
        if pa.start >= pa.end {
            return Err(KernelImageError::EmptyOrReversed(pa));
        }
        if !is_page_aligned(va) || !is_page_aligned(pa.start) || !is_page_aligned(pa.end) {
            return Err(KernelImageError::Misaligned);
        }
        let range = va..va.wrapping_add(pa.len());
        let code = L::KERNEL_CODE_VADDR_RANGE;
        if va < code.start || range.end < va || range.end > code.end {
            return Err(KernelImageError::OutsideKernelCode(range));
        }
        match self.check_untracked(&pa) {
            Err(UntrackedRangeError::PaddrTooLarge) => return Err(KernelImageError::PaddrTooLarge(pa)),
            Err(UntrackedRangeError::Tracked) => return Err(KernelImageError::TrackedPaddr(pa)),
            Ok(()) => {}
        }
        if prop.priv_flags.contains(PrivilegedPageFlags::USER) {
            return Err(KernelImageError::UserAccessible);
        }
        let mut cursor =
            self.kernel_pt().cursor_mut(&range).expect("the kernel code range is in kernel space");
        if let Some(mapped) = cursor.find_next(range.len()) {
            return Err(KernelImageError::AlreadyMapped(mapped));
        }
        cursor.jump(range.start).expect("the start is inside the cursor's range");
        for (page, level) in largest_pages::<L::Format>(va, pa.start, pa.len()) {
            if let Err(e) = cursor.try_map(Item::Untracked(page, level, prop)) {
                debug_assert_eq!(e.kind, MapErrorKind::OutOfMemory, "checked above: {}", e.kind);
                // Take back what was mapped so that the call changes nothing.
                let mapped = range.start..cursor.virt_addr();
                let mut frags = Vec::new();
                if !mapped.is_empty() {
                    cursor.jump(range.start).expect("the start is inside the cursor's range");
                    while let Some(frag) = cursor.take_next(mapped.end - cursor.virt_addr()) {
                        frags.push(frag);
                    }
                }
                drop(cursor);
                if !mapped.is_empty() {
                    self.platform().flush_tlb(TlbFlushOp::Range(mapped), TlbScope::AllCpus);
                }
                drop(frags);
                return Err(KernelImageError::OutOfMemory);
            }
        }
        drop(cursor);
        // The new nodes belong to the set-up, like the linear mapping's.
        let used = self.phys().stats().used_pages;
        Arc::get_mut(&mut self.inner).expect("checked above: no other handle").baseline_used_pages = used;
        Ok(())
    }

    /// The physical address of the kernel page table's root (for CR3).
    #[must_use]
    pub fn kernel_root_paddr(&self) -> Paddr {
        self.inner().kernel_pt.root_paddr()
    }

    /// A read-only cursor over the kernel page table.
    pub fn kernel_cursor(
        &self,
        range: &Range<Vaddr>,
    ) -> Result<Cursor<'_, KernelPtConfig<L::Format>>, RangeError> {
        self.inner().kernel_pt.cursor(range)
    }

    /// What `va` translates to in the kernel page table (a lock-free walk).
    #[must_use]
    pub fn kernel_translate(&self, va: Vaddr) -> Option<(Paddr, PageProperty)> {
        self.inner().kernel_pt.translate(va)
    }

    /// Usage of the VMALLOC region, as one range of addresses: free blocks
    /// that touch across an arena boundary count as one (see
    /// [`max_area_size`](Self::max_area_size)).
    #[must_use]
    pub fn vmalloc_stats(&self) -> VmallocStats {
        self.inner().vmalloc.stats()
    }

    /// The largest area this space can ever create.
    ///
    /// VMALLOC is cut into per-CPU arenas so that CPUs creating areas at
    /// once neither share a lock nor page-table nodes, and an area never
    /// spans two arenas: on x86-64 that is 4 TiB (an eighth of VMALLOC),
    /// less the guard page. A larger request fails with
    /// [`KVirtAreaError::VmallocExhausted`].
    #[must_use]
    pub fn max_area_size(&self) -> usize {
        self.inner().vmalloc.max_size()
    }

    /// Every live area, sorted by address (like `/proc/vmallocinfo`).
    #[must_use]
    pub fn areas(&self) -> Vec<AreaInfo> {
        self.inner().registry.list()
    }

    /// The check that any untracked mapping of a (page-aligned, ordered)
    /// physical range passes, an area's or the kernel image's: the format
    /// can encode it, and it covers no page kvirt tracks: none the frame
    /// allocator may hand out (that would alias a frame that may be freed
    /// and reused) and none of the frame metadata array (kvirt's own: a
    /// byte write there would corrupt reference counts).
    pub(crate) fn check_untracked(&self, range: &Range<Paddr>) -> Result<(), UntrackedRangeError> {
        if range.end > 1usize << <L::Format as PagingFormat>::PA_BITS {
            return Err(UntrackedRangeError::PaddrTooLarge);
        }
        let meta = self.phys().meta_range();
        if self.phys().overlaps_allocatable(range) || (meta.start < range.end && range.start < meta.end) {
            return Err(UntrackedRangeError::Tracked);
        }
        Ok(())
    }

    pub(crate) fn kernel_pt(&self) -> &PageTable<KernelPtConfig<L::Format>> {
        &self.inner().kernel_pt
    }

    pub(crate) fn vmalloc(&self) -> &Vmalloc {
        &self.inner().vmalloc
    }
}

/// Maps every RAM region in the layout's linear mapping and the metadata
/// array at its range, if the layout has them, with the largest pages that
/// fit.
fn map_linear_and_metadata<L: KernelLayout>(
    pt: &PageTable<KernelPtConfig<L::Format>>,
    phys: &PhysMem,
) -> Result<(), KernelSpaceError> {
    let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
    let map = |va: Vaddr, pa: Range<Paddr>| -> Result<(), KernelSpaceError> {
        let mut cursor = pt.cursor_mut(&(va..va + pa.len())).map_err(|_| KernelSpaceError::OutOfMemory)?;
        for (pa, level) in largest_pages::<L::Format>(va, pa.start, pa.len()) {
            cursor.try_map(Item::Untracked(pa, level, prop)).map_err(|_| KernelSpaceError::OutOfMemory)?;
        }
        Ok(())
    };
    if let Some(linear) = L::LINEAR_MAPPING_VADDR_RANGE {
        // Touching RAM regions come merged, so that the linear mapping uses
        // the largest pages the whole run allows.
        for run in phys.ram() {
            debug_assert!(run.end <= linear.len(), "checked by `layout::check_fits`");
            map(linear.start + run.start, run.clone())?;
        }
    }
    match L::FRAME_METADATA_VADDR_RANGE {
        Some(range) => {
            debug_assert!(phys.meta_range().len() <= range.len(), "checked by `layout::check_fits`");
            map(range.start, phys.meta_range())
        }
        None => Ok(()),
    }
}

impl<L: KernelLayout> SpaceInner<L> {
    /// Reclaims the kernel page table's emptied nodes and waits for every
    /// deferred reclamation of the space.
    fn synchronize(&self) {
        self.kernel_pt.reclaim_empty_nodes();
        self.phys.platform().rcu_barrier();
    }
}

/// Runs when the last handle (the [`KernelSpace`] or an area) goes.
impl<L: KernelLayout> Drop for SpaceInner<L> {
    fn drop(&mut self) {
        debug_assert_eq!(self.registry.len(), 0, "every area holds a handle to its space");
        self.synchronize();
        // Reading the count takes every allocator lock: see "Lifetime" in
        // the module documentation for why no frame is then in flight.
        let used = self.phys.stats().used_pages;
        if used != self.baseline_used_pages {
            log::warn!(
                "kvirt: kernel space dropped with {} pages still in use; leaking its physical memory",
                used.saturating_sub(self.baseline_used_pages)
            );
            return;
        }
        // SAFETY: dropped once, here; the page table goes before the memory
        // its nodes live in, and nothing else refers to it (no handle is
        // left, and cursors borrow a handle).
        unsafe { ManuallyDrop::drop(&mut self.kernel_pt) };
        // SAFETY: dropped once, here; no page is in use, so no frame,
        // segment or page table points into it any more.
        unsafe { ManuallyDrop::drop(&mut self.phys) };
    }
}

impl<L: KernelLayout> fmt::Debug for KernelSpace<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelSpace").field("phys", self.phys()).finish()
    }
}

/// What a new kernel space maps: the linear mapping and the metadata array.
#[cfg(test)]
mod setup_tests;
