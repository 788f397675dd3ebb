//! Setting a kernel space up: checking the memory map and the layout,
//! building the metadata array, the allocator and the kernel page table
//! with its linear and metadata mappings, mapping the kernel image, and
//! the process-wide default space.
//!
//! Everything here runs before the space is shared; a rejected call leaves
//! nothing allocated.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::mem::ManuallyDrop;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

use super::error::{KernelImageError, KernelSpaceError, UntrackedRangeError};
use super::purge::Purger;
use super::registry::AreaRegistry;
use super::vmalloc::Vmalloc;
use super::{layout, KernelLayout, KernelSpace, PhysBox, SpaceInner};
use crate::addr::{is_page_aligned, Paddr, Vaddr};
use crate::frame::PhysMem;
use crate::page_prop::{CachePolicy, PageFlags, PageProperty, PrivilegedPageFlags};
use crate::page_table::{largest_pages, KernelPtConfig, MapErrorKind, MappedItem as Item, PageTable};
use crate::platform::{MemoryRegion, Platform, TlbFlushOp, TlbScope};

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
            GLOBAL.call_once(|| KernelSpace::new_hosted(kvirt_sim::MachineConfig::default()).into_immortal())
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
        let global = GLOBAL.call_once(|| space.take().expect("taken once").into_immortal());
        match space {
            None => Ok(global),
            Some(rejected) => Err(rejected),
        }
    }
}

impl<L: KernelLayout> KernelSpace<L> {
    /// Keeps the space for the rest of the program, as a kernel keeps its
    /// own, and returns it.
    ///
    /// A kept space is never torn down, so the areas created from it from
    /// now on hold no reference count of it: creating and dropping an area
    /// then writes no cache line that every CPU writes too. What the space
    /// holds stays in use; [`KernelSpace::init_global`] does the same for
    /// the default space.
    #[must_use]
    pub fn leak(self) -> &'static Self {
        Box::leak(Box::new(self.into_immortal()))
    }

    /// Marks the space as one that is never torn down; the caller keeps
    /// the returned handle for the rest of the program.
    fn into_immortal(self) -> Self {
        // Release: whoever sees the mark sees a space whose count includes
        // this handle's, which is never given back.
        self.inner.immortal.store(true, Ordering::Release);
        self
    }

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
        let vmalloc = Vmalloc::new(L::VMALLOC_VADDR_RANGE);
        let registry = AreaRegistry::new(vmalloc.arena_map());
        let inner = Arc::new(SpaceInner {
            memory_map,
            kernel_pt: ManuallyDrop::new(kernel_pt),
            vmalloc,
            registry,
            purger: Purger::new(),
            phys: ManuallyDrop::new(phys),
            baseline_used_pages,
            immortal: AtomicBool::new(false),
            #[cfg(feature = "std")]
            machine: None,
        });
        Ok(Self { inner })
    }

    /// [`KernelSpace::new_hosted`] for layout `L`. The machine's MMUs walk
    /// the layout's paging format when the simulator has a walker for it
    /// (x86-64, Sv39, Sv48, AArch64); the tiny test format has none.
    ///
    /// # Panics
    ///
    /// As for `new_hosted`.
    #[cfg(feature = "std")]
    #[must_use]
    pub fn hosted_with_layout(config: kvirt_sim::MachineConfig) -> Self {
        let config = match crate::platform::hosted::sim_paging::<L::Format>() {
            Some(paging) => config.paging(paging),
            None => config,
        };
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
                cursor.jump(range.start).expect("the start is inside the cursor's range");
                let taken = cursor.take_all(mapped.len());
                drop(cursor);
                if let Some(span) = taken.va_range() {
                    self.platform().flush_tlb(TlbFlushOp::Range(span), TlbScope::AllCpus);
                }
                drop(taken);
                return Err(KernelImageError::OutOfMemory);
            }
        }
        drop(cursor);
        // The new nodes belong to the set-up, like the linear mapping's.
        let used = self.phys().stats().used_pages;
        Arc::get_mut(&mut self.inner).expect("checked above: no other handle").baseline_used_pages = used;
        Ok(())
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
