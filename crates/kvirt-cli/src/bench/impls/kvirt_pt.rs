//! kvirt's raw page-table API: an independent `PageTable<KernelPtConfig>`
//! and one `CursorMut` over each range, mapping with
//! `CursorMut::try_map_frames`; unmapping takes the whole range
//! (`PageTable::try_take_range`: without a cursor inside one leaf node,
//! through one otherwise), flushes the TLB for it, then drops what it took
//! (what `KVirtArea`'s drop does, minus the area bookkeeping). A single
//! page is mapped and taken without a cursor, as a kernel would: by
//! `PageTable::try_map_frame` and `PageTable::try_take_page`.

use std::ops::Range;

use kvirt::frame::{AnyFrameMeta, Frame, FrameAllocOptions};
use kvirt::kspace::{KernelLayout, KernelSpace, X86_64Layout};
use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable, ReadSection, TakenRange};
use kvirt::platform::{TlbFlushOp, TlbScope};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use super::{kvirt_machine, kvirt_prop};
use crate::bench::mapper::{flushing, Mapper, POOL_FRAMES};

/// A raw kvirt page table in an isolated hosted space.
#[derive(Debug)]
pub struct KvirtPt<L: KernelLayout = X86_64Layout> {
    // Field order is drop order: the table and the frames go before the
    // space they live in.
    pt: PageTable<KernelPtConfig<L::Format>>,
    pool: Vec<Frame<()>>,
    space: KernelSpace<L>,
}

impl<L: KernelLayout> KvirtPt<L> {
    /// A fresh space, an empty table and a pool of data frames.
    ///
    /// # Panics
    ///
    /// If memory runs out.
    #[must_use]
    pub fn new() -> Self {
        let space = KernelSpace::<L>::hosted_with_layout(kvirt_machine());
        let seg = FrameAllocOptions::new_in(&space).alloc_segment(POOL_FRAMES).expect("pool frames");
        let pt = PageTable::<KernelPtConfig<L::Format>>::empty_in(&space).expect("page table");
        Self { pt, pool: seg.into_iter().collect(), space }
    }

    /// Maps `frames` from `va`: a single page without a cursor
    /// ([`PageTable::try_map_frame`]), more through one. The table is
    /// shared, so this needs `&self` only. The `Vec` is freed here, as the
    /// peers free theirs.
    #[inline(always)] // each caller its own copy, as before they shared it
    pub(crate) fn map_frames(&self, va: Vaddr, mut frames: Vec<Frame<dyn AnyFrameMeta>>) -> Range<Vaddr> {
        let range = va..va + frames.len() * PAGE_SIZE;
        if frames.len() == 1 {
            let frame = frames.pop().expect("one frame");
            self.pt.try_map_frame(va, frame, kvirt_prop()).expect("map_frame");
            return range;
        }
        let mut cursor = self.pt.cursor_mut(&range).expect("a kernel range");
        cursor.try_map_frames(frames, kvirt_prop()).expect("map_frames");
        range
    }

    /// A new handle of pool frame `i` (cyclically).
    pub(crate) fn pool_frame(&self, i: usize) -> Frame<dyn AnyFrameMeta> {
        self.pool[i % POOL_FRAMES].clone().into_dyn()
    }

    /// What `va` translates to, by the lock-free walk.
    pub(crate) fn translate_addr(&self, va: Vaddr) -> Option<Paddr> {
        self.pt.translate_addr(va)
    }

    /// Takes the whole range out of the table, flushes it on every CPU
    /// (unless this thread does not flush: [`flushing`]), then releases
    /// what was taken.
    pub(crate) fn unmap_range(&self, range: Range<Vaddr>) {
        if range.len() == PAGE_SIZE {
            // One page: no cursor (`PageTable::try_take_page`).
            // Held in its `Result` until after the flush, as
            // `try_take_page`'s docs advise (moved out at once, this row
            // took 6 ns longer).
            let taken = self.pt.try_take_page(range.start);
            assert!(taken.is_ok(), "a 4 KiB page of the table");
            if flushing() {
                self.space.platform().flush_tlb(TlbFlushOp::Range(range), TlbScope::AllCpus);
            }
            drop(taken);
            return;
        }
        // Filled in place, as `KVirtArea`'s drop does (`take_all` returns
        // it by a copy).
        let mut taken = TakenRange::new();
        self.pt.try_take_range(&range, &mut taken).expect("4 KiB pages need no split");
        if flushing() {
            self.space.platform().flush_tlb(TlbFlushOp::Range(range), TlbScope::AllCpus);
        }
        // `taken` is dropped here, in place.
    }
}

impl<L: KernelLayout> Default for KvirtPt<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: KernelLayout> Mapper for KvirtPt<L> {
    const NAME: &'static str = "kvirt-pt";
    type Frames = Vec<Frame<dyn AnyFrameMeta>>;
    type Mapping = Range<Vaddr>;

    fn prepare(&mut self, n: usize) -> Self::Frames {
        (0..n).map(|i| self.pool_frame(i)).collect()
    }

    #[inline(never)] // a symbol of its own for `cargo xtask instructions`
    fn map(&mut self, va: Vaddr, frames: Self::Frames) -> Range<Vaddr> {
        self.map_frames(va, frames)
    }

    fn start(mapping: &Range<Vaddr>) -> Vaddr {
        mapping.start
    }

    type Reader<'a>
        = ReadSection<'a, KernelPtConfig<L::Format>>
    where
        L: 'a;

    fn reader(&self) -> ReadSection<'_, KernelPtConfig<L::Format>> {
        self.pt.read_section()
    }

    #[inline(never)] // as `map`: every implementation's query alike
    fn query(&self, section: &Self::Reader<'_>, _mapping: &Range<Vaddr>, va: Vaddr) -> Option<Paddr> {
        section.translate_addr(va)
    }

    #[inline(never)] // as `map`
    fn unmap(&mut self, mapping: Range<Vaddr>) {
        self.unmap_range(mapping);
    }

    fn map_huge(&mut self, va: Vaddr, pa: Paddr, len: usize) -> Option<Range<Vaddr>> {
        assert_eq!(len, 1 << 30, "the huge workload maps one 1 GiB page");
        let range = va..va + len;
        let mut cursor = self.pt.cursor_mut(&range).expect("a kernel range");
        cursor.map(MappedItem::Untracked(pa, 3, kvirt_prop()));
        Some(range)
    }

    fn frame_pa(&self, i: usize) -> Paddr {
        self.pool[i % POOL_FRAMES].paddr()
    }

    fn huge_pa(&self) -> Paddr {
        let device =
            self.space.memory_map().iter().find(|r| r.kind == kvirt::platform::MemoryRegionKind::Device);
        device.expect("a hosted space has a device window").range.start
    }
}
