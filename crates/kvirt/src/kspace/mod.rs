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

mod error;
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

use error::UntrackedRangeError;
pub use error::{AreaAccessError, KVirtAreaError, KernelImageError, KernelSpaceError, SplitError};
pub use kvirt_area::KVirtArea;
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
use crate::addr::{is_page_aligned, Paddr, Vaddr, PAGE_SIZE};
use crate::arch::{page_size, PagingFormat};
use crate::frame::{AnyFrameMeta, Frame, PhysMem, PhysStats};
use crate::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use crate::page_table::{
    largest_pages, Cursor, KernelPtConfig, MapErrorKind, MappedItem as Item, PageTable, RangeError,
};
use crate::platform::{MemoryRegion, Platform, TlbFlushOp, TlbScope};

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
            self.inner().kernel_pt.cursor_mut(&area.mapped_range()).expect("an area lies in kernel space");
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
            self.inner().kernel_pt.cursor_mut(&area.mapped_range()).expect("an area lies in kernel space");
        for (pa, level) in largest_pages::<L::Format>(area.mapped_range().start, pa_range.start, len) {
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
        Ok(KVirtArea::registered(range, mapped, self.inner.clone()))
    }
}

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
