//! kvirt through its public area API: `KVirtArea::map_frames` with
//! pre-allocated frames, `query`, and drop.

use kvirt::frame::{Frame, FrameAllocOptions};
use kvirt::kspace::{KVirtArea, KernelLayout, KernelSpace, X86_64Layout};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use super::{kept_space, kvirt_prop};
use crate::bench::mapper::{Mapper, POOL_FRAMES};

/// Kernel virtual areas in the hosted space of layout `L` that is kept for
/// the whole run, as a kernel keeps its own ([`kept_space`]).
#[derive(Debug)]
pub struct KvirtArea<L: KernelLayout = X86_64Layout> {
    pool: Vec<Frame<()>>,
    space: &'static KernelSpace<L>,
}

impl<L: KernelLayout> KvirtArea<L> {
    /// A pool of data frames in the kept space.
    ///
    /// # Panics
    ///
    /// If the frames cannot be allocated.
    #[must_use]
    pub fn new() -> Self {
        let space = kept_space::<L>();
        let seg = FrameAllocOptions::new_in(space).alloc_segment(POOL_FRAMES).expect("pool frames");
        Self { pool: seg.into_iter().collect(), space }
    }
}

impl<L: KernelLayout> Default for KvirtArea<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: KernelLayout> Mapper for KvirtArea<L> {
    const NAME: &'static str = "kvirt-area";
    type Frames = Vec<Frame<()>>;
    type Mapping = KVirtArea<L>;

    fn prepare(&mut self, n: usize) -> Self::Frames {
        (0..n).map(|i| self.pool[i % POOL_FRAMES].clone()).collect()
    }

    #[inline(never)] // a symbol of its own for `cargo xtask instructions`
    fn map(&mut self, _va: Vaddr, frames: Self::Frames) -> KVirtArea<L> {
        let size = frames.len() * PAGE_SIZE;
        self.space.try_map_frames(size, 0, frames, kvirt_prop()).expect("map_frames")
    }

    fn start(mapping: &KVirtArea<L>) -> Vaddr {
        mapping.start()
    }

    type Reader<'a>
        = ()
    where
        Self: 'a;

    fn reader(&self) {}

    #[inline(never)] // as `map`: every implementation's query alike
    fn query(&self, _: &(), mapping: &KVirtArea<L>, va: Vaddr) -> Option<Paddr> {
        mapping.query(va).map(|item| {
            let size = PAGE_SIZE << (9 * (item.level() as usize - 1));
            item.paddr() + va % size
        })
    }

    #[inline(never)] // as `map`
    fn unmap(&mut self, mapping: KVirtArea<L>) {
        drop(mapping);
    }

    fn map_huge(&mut self, _va: Vaddr, pa: Paddr, len: usize) -> Option<KVirtArea<L>> {
        // SAFETY: `pa` is the simulated device window, which no Rust object
        // owns; the benchmark never accesses it.
        Some(
            unsafe { self.space.try_map_untracked_frames(len, 0, pa..pa + len, kvirt_prop()) }
                .expect("untracked"),
        )
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
