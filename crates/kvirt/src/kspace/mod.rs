//! Kernel space: one kernel's physical memory, page table and VMALLOC.
//!
//! A [`KernelSpace`] bundles everything a kernel's virtual memory needs:
//! the platform, the frame metadata and allocator, the kernel page table
//! and the VMALLOC range allocator. The seed API (`KVirtArea::map_frames`,
//! `FrameAllocOptions::new()`) works on the process-wide default space,
//! [`KernelSpace::global`]; tests and benchmarks create as many independent
//! spaces as they like, each with its own simulated machine.
//!
//! ## Lifetime
//!
//! Frames and areas point into their space without counting references
//! (a frame handle is one word). So a space is freed only when nothing can
//! point into it: dropping a [`KernelSpace`] while frames or areas of it are
//! alive leaks the space (with a log warning) instead of leaving them
//! dangling. The default space is never dropped.

mod kvirt_area;
mod layout;
mod range_alloc;
mod registry;
mod vmalloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
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
    /// The physical range contains pages the frame allocator can hand out:
    /// the image must be `Reserved` (or non-RAM) in the memory map, or the
    /// allocator would give the kernel's own pages away.
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

/// The parts of a kernel space, at a fixed address for its whole life.
///
/// Field order is drop order: the page table goes before the memory its
/// nodes live in.
struct SpaceInner<L: KernelLayout> {
    /// The kernel page table: the linear mapping, the metadata mapping and
    /// every area. Only kvirt changes it (no mutable cursor is public), so
    /// an area's entries change only through the area.
    kernel_pt: PageTable<KernelPtConfig<L::Format>>,
    vmalloc: Vmalloc,
    registry: AreaRegistry,
    /// Frames, metadata and the allocator, at a fixed heap address that
    /// frames and the page table point to from before this struct exists.
    phys: PhysBox,
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
        // once; nothing points into it any more (the page table, declared
        // before the `PhysBox` in `SpaceInner`, is dropped first, and a
        // space is freed only when no frame of it is alive).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// One kernel's virtual memory (see the module documentation), laid out
/// as `L` says (x86-64 by default).
pub struct KernelSpace<L: KernelLayout = X86_64Layout> {
    inner: NonNull<SpaceInner<L>>,
}

// SAFETY: `SpaceInner` is `Send + Sync` (its parts synchronise internally);
// the handle only shares references to it.
unsafe impl<L: KernelLayout> Send for KernelSpace<L> {}
// SAFETY: as for `Send`.
unsafe impl<L: KernelLayout> Sync for KernelSpace<L> {}

static GLOBAL: spin::Once<KernelSpace> = spin::Once::new();

impl KernelSpace {
    /// Sets up a kernel space over `platform` and its firmware memory map.
    ///
    /// `ram_is_zeroed` promises that RAM reads as zero at this point (true
    /// for simulated machines); otherwise the metadata array is cleared.
    pub fn new(
        platform: Box<dyn Platform>,
        memory_map: &[MemoryRegion],
        ram_is_zeroed: bool,
    ) -> Result<Self, KernelSpaceError> {
        Self::with_layout(platform, memory_map, ram_is_zeroed)
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
    pub fn with_layout(
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
        let inner = Box::new(SpaceInner {
            kernel_pt,
            vmalloc: Vmalloc::new(L::VMALLOC_VADDR_RANGE),
            registry: AreaRegistry::new(),
            phys,
            baseline_used_pages: 0,
            #[cfg(feature = "std")]
            machine: None,
        });
        let mut space = Self { inner: NonNull::from(Box::leak(inner)) };
        let used = space.phys().stats().used_pages;
        space.inner_mut().baseline_used_pages = used;
        Ok(space)
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
        let platform = crate::platform::hosted::SimPlatform::new(machine.clone());
        let map = platform.memory_map();
        let mut space = Self::with_layout(Box::new(platform), &map, true)
            .unwrap_or_else(|e| panic!("cannot set up a hosted kernel space: {e}"));
        space.inner_mut().machine = Some(machine);
        space
    }

    /// The simulated machine under a hosted space.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn machine(&self) -> Option<&alloc::sync::Arc<kvirt_sim::Machine>> {
        self.inner().machine.as_ref()
    }

    fn inner(&self) -> &SpaceInner<L> {
        // SAFETY: `inner` came from `Box::leak` and is freed only in `drop`.
        unsafe { self.inner.as_ref() }
    }

    fn inner_mut(&mut self) -> &mut SpaceInner<L> {
        // SAFETY: as in `inner`; `&mut self` excludes other users of the
        // handle, and this is used only during set-up, before any frame or
        // area points into the space.
        unsafe { self.inner.as_mut() }
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
        self.inner().kernel_pt.reclaim_empty_nodes();
        self.platform().rcu_barrier();
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
        if self.inner().registry.len() != 0
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
        if pa.end > 1usize << <L::Format as PagingFormat>::PA_BITS {
            return Err(KernelImageError::PaddrTooLarge(pa));
        }
        if self.phys().overlaps_allocatable(&pa) {
            return Err(KernelImageError::TrackedPaddr(pa));
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
        self.inner_mut().baseline_used_pages = used;
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

    /// Whether `range` covers a page that kvirt tracks: one the frame
    /// allocator may hand out, or one of the frame metadata array (which
    /// kvirt owns; mapping it untracked would let a byte write corrupt
    /// reference counts). Such memory may not be mapped untracked.
    pub(crate) fn covers_tracked(&self, range: &Range<Paddr>) -> bool {
        let meta = self.phys().meta_range();
        self.phys().overlaps_allocatable(range) || (meta.start < range.end && range.start < meta.end)
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

impl<L: KernelLayout> Drop for KernelSpace<L> {
    fn drop(&mut self) {
        self.synchronize();
        let used = self.phys().stats().used_pages;
        if used != self.inner().baseline_used_pages || self.inner().registry.len() != 0 {
            log::warn!(
                "kvirt: kernel space dropped with {} pages and {} areas still in use; leaking it",
                used - self.inner().baseline_used_pages,
                self.inner().registry.len()
            );
            return;
        }
        // SAFETY: `inner` came from `Box::leak`; no frame of the space is
        // alive (every frame holds an allocated page, and none is beyond the
        // baseline), so nothing points into it any more.
        drop(unsafe { Box::from_raw(self.inner.as_ptr()) });
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
