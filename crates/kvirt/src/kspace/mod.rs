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

mod range_alloc;

use alloc::boxed::Box;
use core::fmt;
use core::ptr::NonNull;

use crate::addr::Paddr;
use crate::frame::{Frame, PhysMem, PhysMemError, PhysStats};
use crate::platform::{MemoryRegion, Platform};

/// Why a kernel space could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSpaceError {
    /// The memory map cannot be used.
    PhysMem(PhysMemError),
}

impl fmt::Display for KernelSpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpaceError::PhysMem(e) => write!(f, "bad physical memory: {e}"),
        }
    }
}

impl From<PhysMemError> for KernelSpaceError {
    fn from(e: PhysMemError) -> Self {
        KernelSpaceError::PhysMem(e)
    }
}

/// The parts of a kernel space, at a fixed address for its whole life.
struct SpaceInner {
    phys: PhysMem,
    /// Pages in use when the space was set up (metadata excluded): the
    /// kernel's own page-table nodes. Used to decide whether the space can
    /// be freed.
    baseline_used_pages: usize,
    #[cfg(feature = "std")]
    machine: Option<alloc::sync::Arc<kvirt_sim::Machine>>,
}

/// One kernel's virtual memory (see the module documentation).
pub struct KernelSpace {
    inner: NonNull<SpaceInner>,
}

// SAFETY: `SpaceInner` is `Send + Sync` (its parts synchronise internally);
// the handle only shares references to it.
unsafe impl Send for KernelSpace {}
// SAFETY: as for `Send`.
unsafe impl Sync for KernelSpace {}

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
        let phys = PhysMem::new(platform, memory_map, ram_is_zeroed)?;
        let inner = Box::new(SpaceInner {
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

    /// A kernel space over a new simulated machine.
    ///
    /// # Panics
    ///
    /// Panics if the machine's memory map cannot hold the metadata array
    /// (RAM too small).
    #[cfg(feature = "std")]
    #[must_use]
    pub fn new_hosted(config: kvirt_sim::MachineConfig) -> Self {
        let machine = alloc::sync::Arc::new(kvirt_sim::Machine::new(config));
        let platform = crate::platform::hosted::SimPlatform::new(machine.clone());
        let map = platform.memory_map();
        let mut space = Self::new(Box::new(platform), &map, true)
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

    fn inner(&self) -> &SpaceInner {
        // SAFETY: `inner` came from `Box::leak` and is freed only in `drop`.
        unsafe { self.inner.as_ref() }
    }

    fn inner_mut(&mut self) -> &mut SpaceInner {
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
    /// `paddr` came from `into_raw` on a `Frame<M>` of this space, and each
    /// `into_raw` is matched by at most one `from_raw`.
    pub unsafe fn frame_from_raw<M: crate::frame::AnyFrameMeta>(&self, paddr: Paddr) -> Frame<M> {
        let slot = NonNull::from(self.phys().slot(paddr));
        // SAFETY: the caller transfers the reference given up by `into_raw`,
        // whose metadata is `M`.
        unsafe { Frame::from_slot(slot) }
    }

    /// Waits until every deferred reclamation of this space has happened.
    pub fn synchronize(&self) {
        self.platform().rcu_barrier();
    }
}

impl Drop for KernelSpace {
    fn drop(&mut self) {
        self.synchronize();
        let used = self.phys().stats().used_pages;
        if used != self.inner().baseline_used_pages {
            log::warn!(
                "kvirt: kernel space dropped with {} pages still in use; leaking it",
                used - self.inner().baseline_used_pages
            );
            return;
        }
        // SAFETY: `inner` came from `Box::leak`; no frame of the space is
        // alive (every frame holds an allocated page, and none is beyond the
        // baseline), so nothing points into it any more.
        drop(unsafe { Box::from_raw(self.inner.as_ptr()) });
    }
}

impl fmt::Debug for KernelSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelSpace").field("phys", self.phys()).finish()
    }
}
