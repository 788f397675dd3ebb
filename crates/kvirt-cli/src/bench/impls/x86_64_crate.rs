//! Peer: the `x86_64` crate's `OffsetPageTable` over simulated RAM.
//!
//! The physical-memory offset is the machine's RAM base pointer, so the
//! crate reaches page-table frame `pa` at `ram_base + pa`, as a kernel with
//! a linear mapping would. The returned `MapperFlush`es are ignored (their
//! `invlpg` cannot run in user mode); instead `unmap` flushes the range on
//! the machine's simulated TLBs once, as kvirt does ([`flush_all_cpus`]).

use std::sync::Arc;

use kvirt::sim::Machine;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};
use x86_64::structures::paging::{
    FrameAllocator, Mapper as _, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size1GiB,
    Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use super::PEER_RAM;
use crate::bench::mapper::{flush_all_cpus, peer_machine, peer_ram, Mapper, PhysPool, POOL_FRAMES};

/// The frame allocator the crate asks for new tables.
#[derive(Debug)]
struct PoolAllocator(PhysPool);

// SAFETY: every frame handed out is a distinct, unused 4 KiB page of the
// machine's RAM (the pool never gives a page twice while it is in use).
unsafe impl FrameAllocator<Size4KiB> for PoolAllocator {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        self.0.alloc().map(|pa| PhysFrame::containing_address(PhysAddr::new(pa as u64)))
    }
}

/// `OffsetPageTable` over its own simulated machine.
pub struct X86Crate {
    // Field order is drop order: the table borrows the machine's RAM.
    table: OffsetPageTable<'static>,
    alloc: PoolAllocator,
    pool: Vec<Paddr>,
    machine: Arc<Machine>,
}

impl std::fmt::Debug for X86Crate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X86Crate").field("machine", &self.machine).finish_non_exhaustive()
    }
}

const FLAGS: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

fn page(va: Vaddr) -> Page<Size4KiB> {
    Page::containing_address(VirtAddr::new_truncate(va as u64))
}

impl X86Crate {
    /// A fresh machine, an empty level-4 table and a pool of data frames.
    ///
    /// # Panics
    ///
    /// If the machine has no room for them.
    #[must_use]
    pub fn new() -> Self {
        let machine = Arc::new(peer_machine(PEER_RAM));
        let mut pool = PhysPool::new(peer_ram(PEER_RAM));
        let data: Vec<Paddr> = (0..POOL_FRAMES).map(|_| pool.alloc().expect("pool frame")).collect();
        let root = pool.alloc().expect("root table");
        let base = machine.ram_base().as_ptr();
        // SAFETY: `root` is a page of the machine's RAM that nothing else
        // uses; the RAM is valid (and zeroed) for the machine's life, which
        // `self.machine` extends past the table's (field order). This
        // reference is the only access: the table is used through `&mut
        // self` (the shared-table rows put the adapter behind a lock).
        let l4: &'static mut PageTable = unsafe { &mut *base.wrapping_add(root).cast::<PageTable>() };
        l4.zero();
        // SAFETY: physical address `pa` of the machine's RAM is mapped at
        // `base + pa` for the machine's life, and the pool hands the crate
        // only RAM pages.
        let table = unsafe { OffsetPageTable::new(l4, VirtAddr::new(base as u64)) };
        Self { table, alloc: PoolAllocator(pool), pool: data, machine }
    }
}

impl Default for X86Crate {
    fn default() -> Self {
        Self::new()
    }
}

/// A mapped range: start and page count (or a 1 GiB page).
#[derive(Debug)]
pub struct Range4K {
    start: Vaddr,
    pages: usize,
    huge: bool,
}

impl Mapper for X86Crate {
    const NAME: &'static str = "x86_64";
    type Frames = Vec<Paddr>;
    type Mapping = Range4K;

    fn prepare(&mut self, n: usize) -> Vec<Paddr> {
        (0..n).map(|i| self.pool[i % POOL_FRAMES]).collect()
    }

    #[inline(never)] // a symbol of its own for `cargo xtask instructions`
    fn map(&mut self, va: Vaddr, frames: Vec<Paddr>) -> Range4K {
        for (i, &pa) in frames.iter().enumerate() {
            let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(pa as u64));
            // SAFETY: the frame is a pool page the benchmark never accesses
            // through this mapping; the page is not mapped yet.
            unsafe { self.table.map_to(page(va + i * PAGE_SIZE), frame, FLAGS, &mut self.alloc) }
                .expect("x86_64 map_to")
                .ignore();
        }
        Range4K { start: va, pages: frames.len(), huge: false }
    }

    fn start(mapping: &Range4K) -> Vaddr {
        mapping.start
    }

    type Reader<'a>
        = ()
    where
        Self: 'a;

    fn reader(&self) {}

    #[inline(never)] // as `map`: every implementation's query alike
    fn query(&self, _: &(), _mapping: &Range4K, va: Vaddr) -> Option<Paddr> {
        self.table.translate_addr(VirtAddr::new_truncate(va as u64)).map(|pa| pa.as_u64() as usize)
    }

    #[inline(never)] // as `map`
    fn unmap(&mut self, mapping: Range4K) {
        if mapping.huge {
            let p = Page::<Size1GiB>::containing_address(VirtAddr::new_truncate(mapping.start as u64));
            self.table.unmap(p).expect("x86_64 unmap 1 GiB").1.ignore();
            flush_all_cpus(&self.machine, mapping.start..mapping.start + (1 << 30));
            return;
        }
        for i in 0..mapping.pages {
            self.table.unmap(page(mapping.start + i * PAGE_SIZE)).expect("x86_64 unmap").1.ignore();
        }
        flush_all_cpus(&self.machine, mapping.start..mapping.start + mapping.pages * PAGE_SIZE);
    }

    fn map_huge(&mut self, va: Vaddr, pa: Paddr, len: usize) -> Option<Range4K> {
        assert_eq!(len, 1 << 30, "the huge workload maps one 1 GiB page");
        let p = Page::<Size1GiB>::containing_address(VirtAddr::new_truncate(va as u64));
        let frame = PhysFrame::<Size1GiB>::containing_address(PhysAddr::new(pa as u64));
        // SAFETY: `pa` is the simulated device window, never accessed.
        unsafe { self.table.map_to(p, frame, FLAGS, &mut self.alloc) }.expect("x86_64 map_to 1 GiB").ignore();
        Some(Range4K { start: va, pages: 0, huge: true })
    }

    fn frame_pa(&self, i: usize) -> Paddr {
        self.pool[i % POOL_FRAMES]
    }

    fn huge_pa(&self) -> Paddr {
        self.machine.device_window().start as usize
    }
}
