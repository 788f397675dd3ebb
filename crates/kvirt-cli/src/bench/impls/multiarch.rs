//! Peer: `page_table_multiarch`'s `X64PageTable` (ArceOS) over simulated
//! RAM.
//!
//! Its `PagingHandler` is a type with static functions, so the handler's
//! state (the RAM base and the frame pool) is global: only one instance of
//! this adapter may exist at a time, which `new` asserts. TLB flushes in
//! the crate only run on bare metal (`target_os = "none"`), so `unmap`
//! flushes the machine's simulated TLBs itself, as kvirt does
//! ([`flush_all_cpus`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kvirt::sim::Machine;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};
use memory_addr::{PhysAddr, VirtAddr};
use page_table_entry::x86_64::X64PTE;
use page_table_multiarch::x86_64::X64PagingMetaData;
use page_table_multiarch::{GenericPTE, MappingFlags, PageSize, PageTable64, PagingHandler, PagingMetaData};

use super::PEER_RAM;
use crate::bench::mapper::{flush_all_cpus, peer_machine, peer_ram, Mapper, PhysPool, POOL_FRAMES};

static IN_USE: AtomicBool = AtomicBool::new(false);
static RAM_BASE: AtomicUsize = AtomicUsize::new(0);
static POOL: Mutex<Option<PhysPool>> = Mutex::new(None);

/// The handler: frames from the global pool, physical `pa` at
/// `RAM_BASE + pa`.
#[derive(Debug)]
pub struct SimHandler;

impl PagingHandler for SimHandler {
    fn alloc_frames(num: usize, align: usize) -> Option<PhysAddr> {
        assert!(num == 1 && align <= PAGE_SIZE, "the crate only asks for single table frames");
        let mut pool = POOL.lock().expect("pool lock");
        pool.as_mut().expect("the adapter is alive").alloc().map(PhysAddr::from)
    }

    fn dealloc_frames(paddr: PhysAddr, num: usize) {
        assert_eq!(num, 1);
        let mut pool = POOL.lock().expect("pool lock");
        pool.as_mut().expect("the adapter is alive").free(paddr.as_usize());
    }

    fn phys_to_virt(paddr: PhysAddr) -> VirtAddr {
        VirtAddr::from(RAM_BASE.load(Ordering::Relaxed) + paddr.as_usize())
    }
}

/// The crate's generic 4-level table (`X64PageTable` by default; with
/// [`super::sv48`]'s types, Sv48) over its own simulated machine.
pub struct Multiarch<M: PagingMetaData<VirtAddr = VirtAddr> = X64PagingMetaData, E: GenericPTE = X64PTE> {
    // Field order is drop order: the table frees its frames through the
    // handler, which needs the global state and the machine.
    table: PageTable64<M, E, SimHandler>,
    pool: Vec<Paddr>,
    _global: GlobalState,
    machine: Arc<Machine>,
}

/// Owns the handler's global state; clears it when dropped.
#[derive(Debug)]
struct GlobalState;

impl Drop for GlobalState {
    fn drop(&mut self) {
        *POOL.lock().expect("pool lock") = None;
        RAM_BASE.store(0, Ordering::Relaxed);
        IN_USE.store(false, Ordering::SeqCst);
    }
}

impl<M: PagingMetaData<VirtAddr = VirtAddr>, E: GenericPTE> std::fmt::Debug for Multiarch<M, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multiarch").field("machine", &self.machine).finish_non_exhaustive()
    }
}

const FLAGS: MappingFlags = MappingFlags::READ.union(MappingFlags::WRITE);

impl<M: PagingMetaData<VirtAddr = VirtAddr>, E: GenericPTE> Multiarch<M, E> {
    /// A fresh machine, an empty table and a pool of data frames.
    ///
    /// # Panics
    ///
    /// If another instance is alive, or memory runs out.
    #[must_use]
    pub fn new() -> Self {
        assert!(
            !IN_USE.swap(true, Ordering::SeqCst),
            "one multiarch adapter at a time (global handler state)"
        );
        let machine = Arc::new(peer_machine(PEER_RAM));
        let mut pool = PhysPool::new(peer_ram(PEER_RAM));
        let data: Vec<Paddr> = (0..POOL_FRAMES).map(|_| pool.alloc().expect("pool frame")).collect();
        *POOL.lock().expect("pool lock") = Some(pool);
        RAM_BASE.store(machine.ram_base().as_ptr() as usize, Ordering::Relaxed);
        let global = GlobalState;
        let table = PageTable64::<M, E, SimHandler>::try_new().expect("root table");
        Self { table, pool: data, _global: global, machine }
    }
}

impl<M: PagingMetaData<VirtAddr = VirtAddr>, E: GenericPTE> Default for Multiarch<M, E> {
    fn default() -> Self {
        Self::new()
    }
}

/// A mapped range: start and page count, or a huge region.
#[derive(Debug)]
pub struct Region {
    start: Vaddr,
    pages: usize,
    huge_len: usize,
}

impl<M: PagingMetaData<VirtAddr = VirtAddr>, E: GenericPTE> Mapper for Multiarch<M, E> {
    const NAME: &'static str = "multiarch";
    type Frames = Vec<Paddr>;
    type Mapping = Region;

    fn prepare(&mut self, n: usize) -> Vec<Paddr> {
        (0..n).map(|i| self.pool[i % POOL_FRAMES]).collect()
    }

    #[inline(never)] // a symbol of its own for `cargo xtask instructions`
    fn map(&mut self, va: Vaddr, frames: Vec<Paddr>) -> Region {
        let mut cursor = self.table.cursor();
        for (i, &pa) in frames.iter().enumerate() {
            cursor
                .map(VirtAddr::from(va + i * PAGE_SIZE), PhysAddr::from(pa), PageSize::Size4K, FLAGS)
                .expect("multiarch map");
        }
        Region { start: va, pages: frames.len(), huge_len: 0 }
    }

    fn start(mapping: &Region) -> Vaddr {
        mapping.start
    }

    type Reader<'a>
        = ()
    where
        Self: 'a;

    fn reader(&self) {}

    #[inline(never)] // as `map`: every implementation's query alike
    fn query(&self, _: &(), _mapping: &Region, va: Vaddr) -> Option<Paddr> {
        self.table.query(VirtAddr::from(va)).ok().map(|(pa, _, _)| pa.as_usize())
    }

    #[inline(never)] // as `map`
    fn unmap(&mut self, mapping: Region) {
        let mut cursor = self.table.cursor();
        if mapping.huge_len > 0 {
            cursor
                .unmap_region(VirtAddr::from(mapping.start), mapping.huge_len)
                .expect("multiarch unmap_region");
            drop(cursor);
            flush_all_cpus(&self.machine, mapping.start..mapping.start + mapping.huge_len);
            return;
        }
        for i in 0..mapping.pages {
            cursor.unmap(VirtAddr::from(mapping.start + i * PAGE_SIZE)).expect("multiarch unmap");
        }
        drop(cursor);
        flush_all_cpus(&self.machine, mapping.start..mapping.start + mapping.pages * PAGE_SIZE);
    }

    fn map_huge(&mut self, va: Vaddr, pa: Paddr, len: usize) -> Option<Region> {
        let mut cursor = self.table.cursor();
        cursor
            .map_region(VirtAddr::from(va), |v| PhysAddr::from(pa + (v.as_usize() - va)), len, FLAGS, true)
            .expect("multiarch map_region");
        Some(Region { start: va, pages: 0, huge_len: len })
    }

    fn frame_pa(&self, i: usize) -> Paddr {
        self.pool[i % POOL_FRAMES]
    }

    fn huge_pa(&self) -> Paddr {
        self.machine.device_window().start as usize
    }
}
