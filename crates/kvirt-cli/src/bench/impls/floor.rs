//! The floors: the cheapest possible map, query and unmap on an x86-64
//! 4-level table in simulated RAM.
//!
//! * map: one atomic store of a PTE word per page into leaf tables that were
//!   allocated (contiguously) and linked in beforehand;
//! * query: a plain 4-level walk from the root, one relaxed load per level,
//!   no locks, no read-side section;
//! * unmap: one store of zero per page.
//!
//! Nothing is checked, counted or flushed: no real page table can be
//! cheaper, so the ratios to these show what the rest costs.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvirt::sim::{Machine, MachineConfig};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use super::PEER_RAM;
use crate::bench::mapper::{peer_ram, Mapper, PhysPool, BASE_VA, HUGE_VA, POOL_FRAMES};

const P: u64 = 1;
const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// A hand-built table over its own simulated machine, with the leaves of
/// one window of addresses pre-allocated.
pub struct Floor {
    base: *mut u8,
    root: Paddr,
    window: Range<Vaddr>,
    /// The first leaf table; the window's leaves follow it contiguously.
    leaves: Paddr,
    /// The level-3 entry that maps `HUGE_VA`.
    huge_slot: Paddr,
    data: Vec<Paddr>,
    machine: Arc<Machine>,
}

impl std::fmt::Debug for Floor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Floor").field("window", &format_args!("{:#x?}", self.window)).finish_non_exhaustive()
    }
}

fn index(va: Vaddr, level: u32) -> usize {
    (va >> (12 + 9 * (level - 1))) & 511
}

impl Floor {
    /// A table whose leaves cover `window_pages` pages from `BASE_VA`.
    ///
    /// # Panics
    ///
    /// If the machine has no room for the tables.
    #[must_use]
    pub fn new(window_pages: usize) -> Self {
        let machine = Arc::new(Machine::new(MachineConfig::new(PEER_RAM)));
        let mut pool = PhysPool::new(peer_ram(PEER_RAM));
        let data: Vec<Paddr> = (0..POOL_FRAMES).map(|_| pool.alloc().expect("pool frame")).collect();
        let nr_leaves = window_pages.div_ceil(512).max(1);
        let leaves = pool.alloc_contiguous(nr_leaves).expect("leaf tables");
        let root = pool.alloc().expect("root");
        let mut floor = Self {
            base: machine.ram_base().as_ptr(),
            root,
            window: BASE_VA..BASE_VA + window_pages * PAGE_SIZE,
            leaves,
            huge_slot: 0,
            data,
            machine,
        };
        // Fresh simulated RAM reads as zero, so every table starts empty.
        for j in 0..nr_leaves {
            let va = BASE_VA + j * (2 << 20);
            let l3 = floor.child(&mut pool, root, index(va, 4));
            let l2 = floor.child(&mut pool, l3, index(va, 3));
            floor
                .entry(l2 + 8 * index(va, 2))
                .store((leaves + j * PAGE_SIZE) as u64 | P | W, Ordering::Relaxed);
        }
        let l3 = floor.child(&mut pool, root, index(HUGE_VA, 4));
        floor.huge_slot = l3 + 8 * index(HUGE_VA, 3);
        floor
    }

    /// The entry at physical address `pa` (8-byte aligned, in RAM).
    fn entry(&self, pa: Paddr) -> &AtomicU64 {
        debug_assert!(pa % 8 == 0 && pa < self.machine.ram_size());
        // SAFETY: `pa` is an 8-byte aligned address of the machine's RAM,
        // which lives as long as `self` and supports atomic accesses
        // (kvirt-sim's contract for `ram_base`); all accesses here are
        // atomic.
        unsafe { &*self.base.wrapping_add(pa).cast::<AtomicU64>() }
    }

    /// The table entry `i` of `table` points to, created if absent.
    fn child(&self, pool: &mut PhysPool, table: Paddr, i: usize) -> Paddr {
        let e = self.entry(table + 8 * i);
        let raw = e.load(Ordering::Relaxed);
        if raw & P != 0 {
            return (raw & ADDR_MASK) as usize;
        }
        let pa = pool.alloc().expect("table frame");
        e.store(pa as u64 | P | W, Ordering::Relaxed);
        pa
    }

    /// The `n` leaf entries mapping `n` pages from `va`.
    fn leaf_slots(&self, va: Vaddr, n: usize) -> &[AtomicU64] {
        assert!(
            self.window.start <= va && n * PAGE_SIZE <= self.window.end - va,
            "the floor's leaves only cover its window"
        );
        let first = self.leaves + 8 * ((va - self.window.start) / PAGE_SIZE);
        let ptr = self.base.wrapping_add(first).cast::<AtomicU64>();
        // SAFETY: the window's leaf tables are contiguous RAM pages from
        // `self.leaves`, and the assert keeps the `n` entries inside them;
        // RAM lives as long as `self` and is only accessed atomically.
        unsafe { std::slice::from_raw_parts(ptr, n) }
    }
}

/// A mapped range, or the one huge page.
#[derive(Debug)]
pub struct Mapped {
    start: Vaddr,
    pages: usize,
}

impl Mapper for Floor {
    const NAME: &'static str = "floor";
    type Frames = Vec<Paddr>;
    type Mapping = Mapped;

    fn prepare(&mut self, n: usize) -> Vec<Paddr> {
        (0..n).map(|i| self.data[i % POOL_FRAMES]).collect()
    }

    #[inline(never)] // a symbol of its own for `cargo xtask instructions`
    fn map(&mut self, va: Vaddr, frames: Vec<Paddr>) -> Mapped {
        for (slot, &pa) in self.leaf_slots(va, frames.len()).iter().zip(&frames) {
            slot.store(pa as u64 | P | W, Ordering::Relaxed);
        }
        Mapped { start: va, pages: frames.len() }
    }

    fn start(mapping: &Mapped) -> Vaddr {
        mapping.start
    }

    type Reader<'a>
        = ()
    where
        Self: 'a;

    fn reader(&self) {}

    #[inline(never)] // as `map`: every implementation's query alike
    fn query(&self, _: &(), _mapping: &Mapped, va: Vaddr) -> Option<Paddr> {
        let mut table = self.root;
        for level in (1..=4).rev() {
            let e = self.entry(table + 8 * index(va, level)).load(Ordering::Relaxed);
            if e & P == 0 {
                return None;
            }
            let addr = (e & ADDR_MASK) as usize;
            if level == 1 || e & PS != 0 {
                let size = PAGE_SIZE << (9 * (level - 1));
                return Some((addr & !(size - 1)) + (va & (size - 1)));
            }
            table = addr;
        }
        None
    }

    #[inline(never)] // as `map`
    fn unmap(&mut self, mapping: Mapped) {
        if mapping.pages == 0 {
            self.entry(self.huge_slot).store(0, Ordering::Relaxed);
            return;
        }
        for slot in self.leaf_slots(mapping.start, mapping.pages) {
            slot.store(0, Ordering::Relaxed);
        }
    }

    fn map_huge(&mut self, va: Vaddr, pa: Paddr, len: usize) -> Option<Mapped> {
        assert!(va == HUGE_VA && len == 1 << 30, "the floor maps one 1 GiB page at HUGE_VA");
        self.entry(self.huge_slot).store(pa as u64 | P | W | PS, Ordering::Relaxed);
        Some(Mapped { start: va, pages: 0 })
    }

    fn frame_pa(&self, i: usize) -> Paddr {
        self.data[i % POOL_FRAMES]
    }

    fn huge_pa(&self) -> Paddr {
        self.machine.device_window().start as usize
    }
}
