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
//! last tears the space down, on whatever thread that is. A kernel's own
//! space is never torn down ([`KernelSpace::leak`], the default space):
//! its areas hold it without a count, so that CPUs creating and dropping
//! areas at once do not all write the count's cache line.
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
mod extend;
mod kvirt_area;
mod layout;
mod purge;
// The lazy-purge protocol. Public only to the loom model
// (`tests/loom_purge.rs`, built with `--cfg loom`), which runs this very
// code over loom's mutex.
#[cfg(loom)]
pub mod purge_queue;
#[cfg(not(loom))]
mod purge_queue;
mod range_alloc;
mod registry;
mod setup;
mod space_ref;
mod split_counter;
mod vmalloc;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::AtomicBool;
use smallvec::SmallVec;

use error::UntrackedRangeError;
pub use error::{AreaAccessError, KVirtAreaError, KernelImageError, KernelSpaceError, SplitError};
pub use extend::max_paddr;
pub use kvirt_area::KVirtArea;
pub use layout::{
    paddr_to_vaddr, Aarch64Layout, KernelLayout, Layout48, LayoutError, LayoutRange, Sv39Layout, Sv48Layout,
    TinyLayout, X86_64Layout, FRAME_METADATA_VADDR_RANGE, KERNEL_BASE_VADDR, KERNEL_CODE_BASE_VADDR,
    KERNEL_END_VADDR, LINEAR_MAPPING_BASE_VADDR, LINEAR_MAPPING_VADDR_RANGE, VMALLOC_VADDR_RANGE,
};
pub use purge::{PurgeMode, PurgeStats};
pub use range_alloc::RangeAllocError;
pub use registry::{AreaInfo, AreaKind};
pub use vmalloc::{VmallocStats, GUARD_SIZE};

pub use crate::page_table::{MappedItem, MappedItemRef};

use self::purge::Purger;
use self::registry::AreaRegistry;
use self::space_ref::SpaceRef;
use self::vmalloc::Vmalloc;
use crate::addr::{is_page_aligned, Paddr, Vaddr, PAGE_SIZE};
use crate::arch::{page_size, PagingFormat};
use crate::frame::{AnyFrameMeta, Frame, PhysMem, PhysStats};
use crate::page_prop::{PageProperty, PrivilegedPageFlags};
use crate::page_table::{
    largest_pages, Cursor, CursorMut, KernelPtConfig, MapError, MapErrorKind, PageTable, RangeError,
    UserPtConfig,
};
use crate::platform::{MemoryRegion, Platform};

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
    /// Areas dropped lazily, waiting for their TLB flush (see `purge`).
    purger: Purger<L::Format>,
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
    /// Set once a count of the space has been leaked (`KernelSpace::leak`,
    /// the default space): the space is then never freed, and areas
    /// created from then on hold it without a count (see `space_ref`).
    immortal: AtomicBool,
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

impl<L: KernelLayout> KernelSpace<L> {
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
    ///
    /// Its methods are open to anyone, but one that could break what kvirt
    /// relies on is `unsafe` to call: ending a read-side section, which
    /// only the code that began it may do. Safe code cannot end kvirt's
    /// section around a walk:
    ///
    /// ```compile_fail,E0133
    /// let space = kvirt::kspace::KernelSpace::new_hosted(kvirt::sim::MachineConfig::new(8 << 20));
    /// let pt = kvirt::page_table::PageTable::<kvirt::page_table::KernelPtConfig>::empty_in(&space).unwrap();
    /// let section = pt.read_section();
    /// space.platform().rcu_read_unlock();
    /// drop(section);
    /// ```
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

    /// Purges the areas dropped lazily ([`purge`](Self::purge)), reclaims
    /// the kernel page table's emptied nodes and waits until every
    /// deferred reclamation of this space has happened. After it, counters
    /// such as [`phys_stats`](Self::phys_stats) show no memory held for
    /// reuse.
    pub fn synchronize(&self) {
        self.inner().synchronize();
    }

    /// Waits for deferred reclamation without purging (see
    /// `SpaceInner::settle`).
    pub(crate) fn settle(&self) {
        self.inner().settle();
    }

    /// The physical address of the kernel page table's root (for CR3).
    #[must_use]
    pub fn kernel_root_paddr(&self) -> Paddr {
        self.inner().kernel_pt.root_paddr()
    }

    /// A read-only cursor over the kernel page table.
    ///
    /// It holds the locks of the nodes over `range` until dropped. Creating,
    /// splitting or dropping an area takes a cursor of its own over the
    /// area's range: on the thread that holds this one, such a call over a
    /// range whose page-table nodes this cursor holds waits for ever (the
    /// [`page_table`](crate::page_table) module says when two cursors of
    /// one thread wait for each other). Drop the cursor first.
    pub fn kernel_cursor(
        &self,
        range: &Range<Vaddr>,
    ) -> Result<Cursor<'_, KernelPtConfig<L::Format>>, RangeError> {
        self.inner().kernel_pt.cursor(range)
    }

    /// A new user page table (the lower half of an address space) whose
    /// kernel half is this space's: its root shares the kernel table's
    /// upper-half entries, so loading it into a CPU keeps every kernel
    /// mapping, areas included. Map user pages with its cursors; the
    /// kernel half stays this space's to change. Its frames and nodes come
    /// from this space.
    ///
    /// A CPU may run on it only while this space lives (see
    /// [`PageTable::create_user_page_table`]).
    pub fn create_user_page_table(
        &self,
    ) -> Result<PageTable<UserPtConfig<L::Format>>, crate::page_table::PageTableAllocError> {
        self.inner().kernel_pt.create_user_page_table()
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
        if !kvirt_core::area_args::paddr_range_fits(0, range.end, <L::Format as PagingFormat>::PA_BITS) {
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

/// Frames `try_map_frames` gathers without the heap.
const INLINE_FRAMES: usize = 4;

/// The frames of a `try_map_frames` call, gathered: read as a slice for the
/// checks made before anything is allocated, then consumed by the mapping.
trait FrameList<T: ?Sized>: core::ops::Deref<Target = [Frame<T>]> + IntoIterator<Item = Frame<T>> {}

impl<T: ?Sized, F> FrameList<T> for F where
    F: core::ops::Deref<Target = [Frame<T>]> + IntoIterator<Item = Frame<T>>
{
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
        // The frames are counted and checked before anything is allocated.
        // A few frames are gathered without the heap; more go to a `Vec`
        // (which reuses the caller's allocation when it was a `Vec`).
        let frames = frames.into_iter();
        if frames.size_hint().1.is_some_and(|most| most <= INLINE_FRAMES) {
            let frames: SmallVec<[Frame<T>; INLINE_FRAMES]> = frames.collect();
            self.try_map_frame_list(area_size, map_offset, frames, prop)
        } else {
            self.try_map_frame_list(area_size, map_offset, frames.collect::<Vec<_>>(), prop)
        }
    }

    fn try_map_frame_list<T: AnyFrameMeta + ?Sized>(
        &self,
        area_size: usize,
        map_offset: usize,
        frames: impl FrameList<T>,
        prop: PageProperty,
    ) -> Result<KVirtArea<L>, KVirtAreaError> {
        let len = kvirt_core::area_args::pages_len(frames.len());
        crate::spec::contract!(
            requires: crate::spec::contracts::ConstructorRequest {
                panic_condition: crate::spec::map_frames_panic_condition(area_size, map_offset, frames.len(), &prop)
                    || crate::spec::map_frames_foreign_frame_condition(self, &frames),
                area_size,
                map_offset,
                what: crate::spec::contracts::Requested::Frames(frames.iter().map(Frame::paddr).collect()),
                prop,
            },
            run: self.try_map_frames_inner(area_size, map_offset, frames, len, prop),
            ensures: |request, result| crate::spec::contracts::constructor_ensures(self, &request, &result),
        )
    }

    fn try_map_frames_inner<T: AnyFrameMeta + ?Sized>(
        &self,
        area_size: usize,
        map_offset: usize,
        frames: impl FrameList<T>,
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
        // Most areas lie in one existing leaf node: mapped without a
        // cursor (`fill_in_leaf`). A cursor maps what that did not, from
        // where it stopped (for a new area, whose range maps nothing and
        // whose frames were checked, only a missing leaf stops it before the
        // end), starting with a frame it took but could not map.
        let mut frames = frames.into_iter();
        let mapped = area.mapped_range();
        let mut rest = None;
        let from = match self.inner().kernel_pt.fill_in_leaf(&mapped, &mut frames, &mut rest, prop) {
            Some((n, leaf)) if n * PAGE_SIZE == mapped.len() => return Ok(area.mapped_in_leaf(leaf)),
            Some((n, _)) => mapped.start + n * PAGE_SIZE,
            None => mapped.start,
        };
        let first = rest.map(|frame| MappedItem::Tracked(Frame::into_dyn(frame), prop));
        self.map_purging(area, from, first, |cursor| cursor.try_map_frames(frames.by_ref(), prop))
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
        crate::spec::contract!(
            requires: crate::spec::contracts::ConstructorRequest {
                panic_condition: crate::spec::map_untracked_frames_panic_condition(
                    self, area_size, map_offset, &pa_range, &prop,
                ),
                area_size,
                map_offset,
                what: crate::spec::contracts::Requested::Untracked(pa_range.clone()),
                prop,
            },
            run: self.try_map_untracked_inner(area_size, map_offset, pa_range, prop),
            ensures: |request, result| crate::spec::contracts::constructor_ensures(self, &request, &result),
        )
    }

    fn try_map_untracked_inner(
        &self,
        area_size: usize,
        map_offset: usize,
        pa_range: Range<Paddr>,
        prop: PageProperty,
    ) -> Result<KVirtArea<L>, KVirtAreaError> {
        use kvirt_core::area_args::{check_untracked_args, UntrackedArgs};
        let user = prop.priv_flags.contains(PrivilegedPageFlags::USER);
        let pa_bits = <L::Format as PagingFormat>::PA_BITS;
        match check_untracked_args(area_size, map_offset, pa_range.start, pa_range.end, pa_bits, user) {
            UntrackedArgs::Ok => {}
            UntrackedArgs::Reversed => return Err(KVirtAreaError::ReversedPaddrRange(pa_range)),
            UntrackedArgs::Area(broken) => {
                return Err(area_args_error(broken, area_size, map_offset, pa_range.len()));
            }
            UntrackedArgs::MisalignedPaddr => return Err(KVirtAreaError::MisalignedPaddr(pa_range)),
            UntrackedArgs::PaddrTooLarge => return Err(KVirtAreaError::PaddrTooLarge(pa_range)),
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
        let from = area.mapped_range().start;
        let mut pages = largest_pages::<L::Format>(from, pa_range.start, len);
        self.map_purging(area, from, None, |cursor| {
            pages.by_ref().try_for_each(|(pa, level)| cursor.try_map(MappedItem::Untracked(pa, level, prop)))
        })
    }

    /// Fills a new area: with a cursor over its mapped part, standing at
    /// `from`, maps `first` (if any) and then runs `map`. If page-table
    /// memory runs out while lazily dropped areas wait for a purge, purges
    /// them and goes on from where it stopped, mapping the item that
    /// failed first. If that fails too, drops the area (which unmaps what
    /// was mapped and frees the range) and, in lazy mode, where the drop
    /// only queues it, purges: the refused call leaves no range or frame of
    /// its own behind, and memory is short.
    fn map_purging(
        &self,
        area: KVirtArea<L>,
        mut from: Vaddr,
        mut first: Option<MappedItem>,
        mut map: impl FnMut(&mut CursorMut<'_, KernelPtConfig<L::Format>>) -> Result<(), MapError>,
    ) -> Result<KVirtArea<L>, KVirtAreaError> {
        let mut purged = false;
        loop {
            let mut cursor = self
                .inner()
                .kernel_pt
                .cursor_mut(&area.mapped_range())
                .expect("an area lies in kernel space");
            cursor.jump(from).expect("the area's mapped part holds where mapping goes on");
            let mapped = match first.take() {
                Some(item) => cursor.try_map(item).and_then(|()| map(&mut cursor)),
                None => map(&mut cursor),
            };
            let Err(e) = mapped else {
                drop(cursor);
                return Ok(area.mapped_in_full());
            };
            // Only running out of page-table memory can fail here: the
            // area's range is new (nodes emptied there map nothing and give
            // way to huge pages) and the arguments were checked.
            debug_assert_eq!(e.kind, MapErrorKind::OutOfMemory, "{}", e.kind);
            // A rejected item leaves the cursor at its address.
            from = cursor.virt_addr();
            // A purge releases frames, whose drop hooks may lock the table.
            drop(cursor);
            if purged || !self.inner().purge_if_pending() {
                drop(e);
                drop(area);
                self.inner().purge_if_pending();
                return Err(KVirtAreaError::OutOfMemory);
            }
            purged = true;
            first = Some(e.item);
        }
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
        let cpu = self.phys().platform().current_cpu();
        let vmalloc = &self.inner().vmalloc;
        // Lazily dropped areas hold their ranges until a purge: purge
        // rather than fail.
        let range = vmalloc
            .alloc(area_size, align, cpu)
            .or_else(|e| {
                if self.inner().purge_if_pending() {
                    vmalloc.alloc(area_size, align, cpu)
                } else {
                    Err(e)
                }
            })
            .map_err(|_| KVirtAreaError::VmallocExhausted(area_size))?;
        debug_assert!(L::VMALLOC_VADDR_RANGE.start <= range.start && range.end <= L::VMALLOC_VADDR_RANGE.end);
        let mapped = range.start + map_offset..range.start + map_offset + len;
        self.inner().registry.insert(AreaInfo {
            range: range.clone(),
            mapped: mapped.clone(),
            kind,
            label: None,
        });
        Ok(KVirtArea::registered(range, mapped, SpaceRef::new(&self.inner)))
    }
}

fn check_common(
    area_size: usize,
    map_offset: usize,
    len: usize,
    prop: &PageProperty,
) -> Result<(), KVirtAreaError> {
    use kvirt_core::area_args::{check_area_args, AreaArgs};
    let user = prop.priv_flags.contains(PrivilegedPageFlags::USER);
    match check_area_args(area_size, map_offset, len, user) {
        AreaArgs::Ok => Ok(()),
        other => Err(area_args_error(other, area_size, map_offset, len)),
    }
}

/// The typed error of a broken rule of `kvirt_core::area_args`.
fn area_args_error(
    broken: kvirt_core::area_args::AreaArgs,
    area_size: usize,
    map_offset: usize,
    len: usize,
) -> KVirtAreaError {
    use kvirt_core::area_args::AreaArgs;
    match broken {
        AreaArgs::ZeroSize => KVirtAreaError::ZeroSize,
        AreaArgs::MisalignedSize => KVirtAreaError::MisalignedSize(area_size),
        AreaArgs::MisalignedOffset => KVirtAreaError::MisalignedOffset(map_offset),
        AreaArgs::OffsetOutOfArea => KVirtAreaError::OffsetOutOfArea { map_offset, area_size },
        AreaArgs::MappingExceedsArea => KVirtAreaError::MappingExceedsArea { map_offset, len, area_size },
        AreaArgs::UserAccessible => KVirtAreaError::UserAccessible,
        AreaArgs::Ok => unreachable!("not an error"),
    }
}

impl<L: KernelLayout> SpaceInner<L> {
    /// Reclaims the kernel page table's emptied nodes and waits for every
    /// deferred reclamation of the space.
    fn synchronize(&self) {
        self.purge();
        self.settle();
    }

    /// [`synchronize`](Self::synchronize) without the purge: what the
    /// invariant checker waits for, so that it sees the purge queue.
    fn settle(&self) {
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
