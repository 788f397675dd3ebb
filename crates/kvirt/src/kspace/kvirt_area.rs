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
//! point is split by `split` itself. In a space in
//! [`PurgeMode::Lazy`](super::PurgeMode::Lazy) the drop unmaps at once and
//! leaves the invalidation and the releases to a purge (see `purge`).
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

use super::error::{AreaAccessError, KVirtAreaError, SplitError};
use super::purge::DeadArea;
use super::registry::AreaInfo;
use super::space_ref::SpaceRef;
use super::vmalloc::GUARD_SIZE;
use super::{KernelLayout, KernelSpace, SpaceInner, X86_64Layout};
use crate::addr::{Paddr, Vaddr, PAGE_SIZE};
use crate::frame::{AnyFrameMeta, Frame, FrameRef};
use crate::page_prop::{PageFlags, PageProperty};
use crate::page_table::{MappedItemRef, PageTableAllocError, TakenRange, WalkStart};
use crate::platform::{TlbFlushOp, TlbScope};

/// A kernel virtual area (see the module documentation).
///
/// `repr(C)` keeps the three fields a [`query`](Self::query) reads,
/// `mapped`, `walk_start` and `space`, first and side by side: 32 bytes,
/// which a handle picked at random among many (in a `Vec`, say) has in
/// one cache line far more often than the whole 64.
#[repr(C)]
pub struct KVirtArea<L: KernelLayout = X86_64Layout> {
    /// The part mapped at creation; only this part is ever mapped.
    /// Invariant: inside `range`, page aligned (possibly empty).
    mapped: Range<Vaddr>,
    /// Where queries of the mapped part start their walks. Invariant, if
    /// `mapped` is not empty: a node of the space's kernel table on the
    /// path of every page of `mapped`: its root, or (once all of `mapped`
    /// was mapped) the one `PageTable::walk_start_for` found for `mapped`,
    /// or for the area it was split from (the leaf node the fill locked,
    /// where all of it went into one). The area's own mappings keep it
    /// alive. With nothing mapped it is never read, and may be a node a
    /// split neighbour's drop has freed.
    walk_start: WalkStart,
    /// A handle to the area's space, which lives until the area's drop
    /// has finished with it (fields are dropped after `Drop::drop`, and
    /// the others do not need the space): counted, unless the space is
    /// never torn down (see `space_ref`).
    space: SpaceRef<L>,
    /// The area. Invariant: page aligned, non-empty, inside
    /// `VMALLOC_VADDR_RANGE`, allocated from the space's VMALLOC.
    range: Range<Vaddr>,
    /// The boundary with the right half of a split of this area, while
    /// that half may be alive. `None`: the area owns the guard after it.
    right: Option<Arc<SplitLink>>,
    /// The boundary with the left half of a split of this area.
    left: Option<Arc<SplitLink>>,
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
    #[inline(always)] // small, and what the caller ignores is not computed
    pub fn query(&self, addr: Vaddr) -> Option<MappedItemRef<'_>> {
        crate::spec::contract!(
            requires: crate::spec::contracts::query_requires(self, addr),
            run: self.query_inner(addr),
            ensures: |(), result| crate::spec::contracts::query_ensures(self, addr, &result),
        )
    }

    /// The item at `addr`, read without locks; panics as [`query`](Self::query)
    /// says.
    ///
    /// Only the mapped part of an area is ever mapped (type invariant), so
    /// anything else queries `None` without a walk. Inside it, the area owns
    /// the mapping at `addr` and nothing else can remove it while `self` is
    /// borrowed, so every node on the path stays alive and the lock-free walk
    /// needs neither locks nor a read-side section. It starts at
    /// `walk_start`, on the path of every mapped page: for an area inside
    /// one leaf node's 2 MiB (on x86-64), that node, so a query loads one
    /// entry instead of one per level.
    ///
    /// The mapped part lies in the area (type invariant), so an address in
    /// it needs no bounds check: the check of the area's bounds runs only
    /// for the others, and a query of a mapped page reads `mapped`,
    /// `walk_start` and `space` alone.
    #[inline(always)]
    fn query_inner(&self, addr: Vaddr) -> Option<MappedItemRef<'_>> {
        if !self.mapped.contains(&addr) {
            assert!(
                kvirt_core::area_args::query_addr_ok(self.range.start, self.range.end, addr),
                "KVirtArea::query: address {addr:#x} is outside the area {:#x?}",
                self.range
            );
            return None;
        }
        let space = self.space();
        // SAFETY: the area owns the mapping at `addr`, present, which no
        // one else can remove (see above); `walk_start` is the root or was
        // found for `mapped` (or, before a split, a range holding it) once
        // it was all mapped, by `walk_start_for` or `WalkStart::at_leaf`
        // (type invariant), and an area neither removes nor replaces its
        // mappings before its drop (a split only splits its huge pages).
        let leaf = unsafe { space.kernel_pt.walk_unlocked_from(self.walk_start, addr) };
        let leaf = leaf.expect("the mapped part of an area is mapped");
        Some(if leaf.tracked {
            // SAFETY: a tracked entry maps a frame of the space's
            // `PhysMem`, which has a slot.
            let slot = NonNull::from(unsafe { space.phys.slot_unchecked(leaf.pa) });
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
    /// That takes page-table nodes; if none is left and the space is lazy
    /// (see [`PurgeMode`](super::PurgeMode)), the split first purges the
    /// dropped areas still waiting and tries once more, as the
    /// constructors do.
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
        crate::spec::contract!(
            requires: crate::spec::contracts::split_requires(&self),
            run: self.try_split_inner(offset),
            ensures: |before, result| crate::spec::contracts::split_ensures(&before, offset, &result),
        )
    }

    #[allow(clippy::result_large_err, reason = "as `try_split`")]
    fn try_split_inner(mut self, offset: usize) -> Result<(Self, Self), (Self, SplitError)> {
        if !kvirt_core::area_args::split_offset_ok(offset, self.size()) {
            let size = self.size();
            return Err((self, SplitError::BadOffset { offset, size }));
        }
        let mid = self.range.start + offset;
        // Lazily dropped areas hold frames until a purge: purge and retry
        // rather than fail, as a constructor does. The failed attempt
        // changed nothing, and no lock is held across the purge (it runs
        // frames' drop hooks).
        if self.split_huge_page_at(mid).is_err()
            && !(self.space().purge_if_pending() && self.split_huge_page_at(mid).is_ok())
        {
            return Err((self, SplitError::OutOfMemory));
        }
        let (outer_left, outer_right) = (self.left.take(), self.right.take());
        let link = Arc::new(SplitLink::default());
        // The halves take over everything; `self` has nothing left to free.
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped or used as an area again, so the
        // handle moves out of it exactly once (to the right half).
        let space = unsafe { core::ptr::read(&this.space) };
        let clamp = |r: &Range<Vaddr>| {
            let s = this.mapped.start.clamp(r.start, r.end);
            let e = this.mapped.end.clamp(r.start, r.end);
            s..e.max(s)
        };
        let left_range = this.range.start..mid;
        let right_range = mid..this.range.end;
        let left = KVirtArea {
            mapped: clamp(&left_range),
            walk_start: this.walk_start,
            range: left_range,
            right: Some(link.clone()),
            left: outer_left,
            space: space.clone(),
        };
        let right = KVirtArea {
            mapped: clamp(&right_range),
            walk_start: this.walk_start,
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
        crate::spec::contract!(
            requires: buf.to_vec(),
            run: self.read_bytes_inner(offset, buf),
            ensures: |before, result| crate::spec::contracts::read_bytes_ensures(self, offset, &before, buf, &result),
        )
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
        crate::spec::contract!(
            requires: crate::spec::contracts::write_bytes_requires(self, offset, data.len()),
            run: self.write_bytes_inner(offset, data),
            ensures: |before, result| crate::spec::contracts::write_bytes_ensures(self, offset, data, &before, &result),
        )
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
        if !kvirt_core::area_args::access_in_bounds(offset, len, size) {
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
    /// The area `range` of `space`, allocated in its VMALLOC and registered
    /// already, whose mapped part will be `mapped` (nothing is mapped yet).
    pub(super) fn registered(range: Range<Vaddr>, mapped: Range<Vaddr>, space: SpaceRef<L>) -> Self {
        let walk_start = space.kernel_pt.root_walk_start();
        KVirtArea { range, mapped, walk_start, right: None, left: None, space }
    }

    /// Once all of the mapped part is mapped: starts its queries' walks at
    /// the lowest node on the path of each of its pages, instead of the
    /// root.
    pub(super) fn mapped_in_full(mut self) -> Self {
        if !self.mapped.is_empty() {
            // SAFETY: the area owns the mappings of its mapped part, all
            // present, which no one else can remove while it is borrowed.
            self.walk_start = unsafe { self.space().kernel_pt.walk_start_for(&self.mapped) };
        }
        self
    }

    /// [`mapped_in_full`](Self::mapped_in_full) where all of the mapped
    /// part was mapped into one leaf node: walks start at `leaf`, that
    /// node.
    pub(super) fn mapped_in_leaf(mut self, leaf: WalkStart) -> Self {
        self.walk_start = leaf;
        self
    }

    /// The rest of `Inv::check`: what only the space can tell.
    pub(crate) fn check_with_space(&self) -> Result<(), &'static str> {
        let space = self.space();
        match space.registry.get(self.range.start) {
            Some(info) if info.range == self.range && info.mapped == self.mapped => {}
            _ => return Err("the area is not registered as it is"),
        }
        let (first, last) = (self.mapped.start, self.mapped.end.wrapping_sub(PAGE_SIZE));
        let on_path = |va| space.kernel_pt.is_on_path(self.walk_start, va);
        if !(self.mapped.is_empty() || on_path(first) && on_path(last)) {
            return Err("queries would start their walks off the path of a mapped page");
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
        f(&KernelSpace { inner: self.space.to_arc() })
    }
}

impl<L: KernelLayout> Drop for KVirtArea<L> {
    fn drop(&mut self) {
        let space = self.space();
        let lazy = space.purger.is_lazy();
        // What was mapped. Until the flush below (or the purge's) has
        // returned, a CPU may still reach it: if anything before unwinds,
        // it is leaked rather than released.
        let mut taken: ManuallyDrop<TakenRange<L::Format>> = ManuallyDrop::new(TakenRange::new());
        // `PageTable::try_take_range` of the mapped part, a kernel range
        // (not checked again): without a cursor where it lies in one
        // existing leaf node, most areas. Filled in place (`take_all` would
        // return it by a copy).
        if !self.mapped.is_empty() {
            if let Err(e) = space.kernel_pt.take_range_into(&self.mapped, &mut taken) {
                // Areas split their huge pages when they are split, so this
                // needs no memory; what was taken stays leaked.
                panic!("dropping the area at {:#x}: {e}", self.range.start);
            }
        }
        space.registry.remove(self.range.start);
        // Checked while the whole range is still ours: once the links below
        // are settled, a neighbour dropped at the same time may free the
        // page we leave it, and another thread take it.
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::drop_ensures_before_free(self);
        // See `SplitLink`: leave the first page to a live left half as its
        // guard; take back the page a dropped right half left to us.
        let start = match &self.left {
            Some(link) if !link.drop_one() => self.range.start + GUARD_SIZE,
            _ => self.range.start,
        };
        // The page a dropped right half left us: it mapped that page, and
        // its flush may still wait in another CPU's purge queue (or it may
        // be lazy where we are eager), so we flush the page ourselves
        // before it goes back to VMALLOC.
        let (end, taken_back) = match &self.right {
            Some(link) if !link.drop_one() => (self.range.end, None),
            Some(_) => (self.range.end + GUARD_SIZE, Some(self.range.end..self.range.end + GUARD_SIZE)),
            None => (self.range.end + GUARD_SIZE, None),
        };
        let free = if start < end { start..end } else { start..start };
        #[cfg(feature = "check-contracts")]
        crate::spec::contracts::drop_ensures_frees_within(self, &free);
        // One flush covers what we mapped and the page taken back (and the
        // unmapped pages of ours between them).
        let flush = match taken_back {
            Some(page) if self.mapped.is_empty() => page,
            Some(page) => self.mapped.start..page.end,
            None => self.mapped.clone(),
        };
        if lazy {
            // The range and what was mapped wait, still ours, for a purge
            // to flush them (see `purge`).
            let dead = DeadArea { flush, free, taken: ManuallyDrop::into_inner(taken) };
            let cpu = space.phys.platform().current_cpu();
            if space.purger.push(cpu, dead) {
                space.purge_over_threshold(cpu);
            }
            return;
        }
        if !flush.is_empty() {
            // Invalidate before anything mapped can be reused.
            space.phys.platform().flush_tlb(TlbFlushOp::Range(flush), TlbScope::AllCpus);
        }
        // Released last, after the range (unmapped and flushed, so free to
        // reuse): dropping frames runs their metadata's drop hooks, and
        // however that ends, the range and its registry entry are back.
        if !free.is_empty() {
            let freed = space.vmalloc.free(free.clone());
            #[cfg(feature = "check-contracts")]
            crate::spec::contracts::drop_ensures_freed(&free, &freed);
            debug_assert!(freed.is_ok(), "freeing an area's range failed: {freed:?}");
        }
        taken.release();
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

/// Where queries start their walks, through splits and drops.
#[cfg(test)]
mod walk_start_tests;
