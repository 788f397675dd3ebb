//! The one trait every page-table implementation in the benchmark is
//! adapted to, so that each workload is written once; and the physical
//! frame pool the peers use over simulated RAM.

use std::cell::Cell;
use std::ops::Range;

use kvirt::sim::{Machine, MachineConfig};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

/// CPUs of every implementation's simulated machine: kvirt's unmaps shoot
/// down both, and so do the peers' ([`flush_all_cpus`]).
pub const CPUS: usize = 2;

/// A peer's machine: `ram` bytes and [`CPUS`] CPUs, like kvirt's.
#[must_use]
pub fn peer_machine(ram: usize) -> Machine {
    Machine::new(MachineConfig::new(ram).cpus(CPUS))
}

thread_local! {
    /// Set on the threads of the shared-table rows, whose unmaps flush no
    /// TLB (see `bench::shared`).
    static NO_FLUSH: Cell<bool> = const { Cell::new(false) };
}

/// From now on, unmaps on this thread flush no TLB, in every
/// implementation ([`flushing`]).
pub fn stop_flushing_on_this_thread() {
    NO_FLUSH.with(|f| f.set(true));
}

/// Whether an unmap on this thread flushes the TLB: every implementation's
/// unmap asks before its flush.
#[must_use]
pub fn flushing() -> bool {
    !NO_FLUSH.with(Cell::get)
}

/// The TLB flush a peer's unmap does after a range: what kvirt's hosted
/// platform does for `flush_tlb(TlbFlushOp::Range(range), AllCpus)`, so
/// that an unmap row costs the same flush for everyone.
pub fn flush_all_cpus(machine: &Machine, range: Range<Vaddr>) {
    if !flushing() {
        return;
    }
    for cpu in 0..machine.nr_cpus() {
        machine.cpu(cpu).flush_range(range.clone());
    }
}

/// Where the 4 KiB workloads put their ranges (the start of VMALLOC; the
/// independent tables of the peers and of `kvirt-pt` use the same
/// addresses).
pub const BASE_VA: Vaddr = 0xffff_c000_0000_0000;

/// Where the untracked 1 GiB workload maps (1 GiB aligned).
pub const HUGE_VA: Vaddr = 0xffff_d000_0000_0000;

/// Data frames each implementation maps, over and over: range page `i` maps
/// pool frame `i % POOL_FRAMES`.
pub const POOL_FRAMES: usize = 512;

/// A page-table implementation under test.
///
/// `map` and `unmap` work on a range of 4 KiB pages, because that is how
/// each implementation is meant to be driven (kvirt takes one cursor over
/// the range; the peers map page by page): the workloads time whole ranges
/// and divide by the number of pages.
pub trait Mapper {
    /// The short name in tables and JSON.
    const NAME: &'static str;
    /// What `map` consumes, made by `prepare` outside the timed region
    /// (frame handles for kvirt, physical addresses for the others).
    type Frames;
    /// A mapped range, handed back to `query` and `unmap`.
    type Mapping;

    /// The input for mapping `n` pages: pool frames `0..n` (cyclically).
    fn prepare(&mut self, n: usize) -> Self::Frames;
    /// Maps the prepared frames one 4 KiB page after another. `va` is where
    /// to map; an implementation that places ranges itself (a kernel
    /// virtual area) may ignore it.
    fn map(&mut self, va: Vaddr, frames: Self::Frames) -> Self::Mapping;
    /// Where a mapping starts.
    fn start(mapping: &Self::Mapping) -> Vaddr;
    /// What a run of queries holds while it lasts: `kvirt-pt` opens one
    /// read-side section for the run (its table may be unmapped from other
    /// CPUs meanwhile, and the section keeps the nodes it walks alive); the
    /// others hold nothing beyond the borrow of `&self`, which keeps every
    /// unmap out for as long.
    type Reader<'a>
    where
        Self: 'a;
    /// Begins a run of queries.
    fn reader(&self) -> Self::Reader<'_>;
    /// The physical address `va` translates to, if mapped.
    fn query(&self, reader: &Self::Reader<'_>, mapping: &Self::Mapping, va: Vaddr) -> Option<Paddr>;
    /// Unmaps a range (and releases what the implementation owns for it).
    fn unmap(&mut self, mapping: Self::Mapping);
    /// Maps `len` bytes of untracked physical memory from `pa` with the
    /// largest pages the implementation has (1 GiB here); `None` if it
    /// cannot.
    fn map_huge(&mut self, va: Vaddr, pa: Paddr, len: usize) -> Option<Self::Mapping>;
    /// The physical address of pool frame `i`.
    fn frame_pa(&self, i: usize) -> Paddr;
    /// Untracked physical memory the 1 GiB workload may map (1 GiB aligned,
    /// not RAM the implementation allocates from).
    fn huge_pa(&self) -> Paddr;
}

/// A trivial physical-page allocator over a range of simulated RAM: bump
/// allocation plus a LIFO free list. The peers get one each.
#[derive(Debug)]
pub struct PhysPool {
    next: Paddr,
    end: Paddr,
    free: Vec<Paddr>,
}

impl PhysPool {
    /// A pool handing out the pages of `range` (page aligned).
    #[must_use]
    pub fn new(range: Range<Paddr>) -> Self {
        assert!(range.start % PAGE_SIZE == 0 && range.end % PAGE_SIZE == 0 && range.start > 0);
        Self { next: range.start, end: range.end, free: Vec::new() }
    }

    /// One page, not zeroed (callers that need zeroed tables zero them, as
    /// both peers do).
    pub fn alloc(&mut self) -> Option<Paddr> {
        if let Some(pa) = self.free.pop() {
            return Some(pa);
        }
        (self.next < self.end).then(|| {
            self.next += PAGE_SIZE;
            self.next - PAGE_SIZE
        })
    }

    /// `count` contiguous fresh pages (never from the free list).
    pub fn alloc_contiguous(&mut self, count: usize) -> Option<Paddr> {
        let start = self.next;
        (count * PAGE_SIZE <= self.end - self.next).then(|| {
            self.next += count * PAGE_SIZE;
            start
        })
    }

    /// Gives a page back.
    pub fn free(&mut self, pa: Paddr) {
        self.free.push(pa);
    }
}

/// RAM for a peer: the physical range a peer's pool may use on a machine of
/// `ram_size` bytes (everything above the reserved first MiB).
#[must_use]
pub fn peer_ram(ram_size: usize) -> Range<Paddr> {
    (1 << 20)..ram_size
}
