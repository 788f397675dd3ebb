//! One page table, mapped and unmapped from 1 and from 2 threads at once:
//! what kvirt's node locks and read-side sections buy.
//!
//! kvirt's table is shared as it is: a cursor locks only the nodes it
//! changes, so threads working on different parts of the table do not wait
//! for each other. A peer's table takes `&mut self` to change, so a kernel
//! sharing one between CPUs puts it behind one lock; here `spin`'s ticket
//! lock (fair, first come first served, as Linux's queued spinlock), held
//! for the map or the unmap of a range.
//!
//! Each thread maps `pages` 1-page ranges (laid out as in the 1-page rows,
//! one unmapped page between ranges, in a 1 GiB region of its own), then
//! unmaps them. A row's time is per page mapped and unmapped, of the wall
//! time of all threads: the inverse of the table's throughput.
//!
//! Each map and unmap is the implementation's own, as the page rows run it
//! (the peers' `Mapper::map` and `Mapper::unmap` under the lock), so that
//! the page rows' code stays as it was: with one codegen unit, a second
//! caller of a peer's `map_to` changed how the compiler built its `map`.
//! Each map takes a 1-frame `Vec`, as a 1-page row's does, made just
//! before (outside a peer's lock) and freed by the map (for a peer under
//! its lock, as its `map` frees it): a heap allocation and free of the same
//! small block, the same for every implementation.
//!
//! No unmap here flushes the TLB (`mapper::stop_flushing_on_this_thread`;
//! the simulated CPUs never use these tables, and kvirt-pt releases what it
//! took only after the unmap). The flush is the machine's work, not the
//! table's, and the simulated one is a lock and a hash map per CPU: with
//! two threads flushing both CPUs on every unmap, the rows measured that
//! lock, for every implementation alike, rather than the tables.

use std::ops::Range;
use std::time::Duration;

use kvirt::frame::{AnyFrameMeta, Frame};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use super::impls::kvirt_pt::KvirtPt;
use super::mapper::{stop_flushing_on_this_thread, Mapper, BASE_VA, POOL_FRAMES};
use super::{ns_per, timed_threads, Config, Stats};
use crate::{ensure, Error};

/// Where thread `t` maps its `j`-th page: a 1 GiB region each, so that
/// threads share no leaf and no level-2 node, and one unmapped page between
/// pages, as in the 1-page rows.
fn page(t: usize, j: usize) -> Vaddr {
    BASE_VA + t * (1 << 30) + j * 2 * PAGE_SIZE
}

/// A page table several threads map and unmap 1-page ranges of at once.
pub trait SharedTable: Sync {
    /// The input of one 1-page map (made before the clock starts).
    type Input: Send;
    /// A mapped page.
    type Mapping: Send;
    /// The inputs of 1-page maps of pool frames `frames`.
    fn inputs(&self, frames: &[usize]) -> Vec<Self::Input>;
    /// Maps one page at `va`.
    fn map_one(&self, va: Vaddr, input: Self::Input) -> Self::Mapping;
    /// Unmaps one mapped page (on these threads, with no TLB flush: see the
    /// module docs).
    fn unmap_one(&self, mapping: Self::Mapping);
    /// What `va`, in `mapping`, translates to (to check the workload).
    fn translate(&self, mapping: &Self::Mapping, va: Vaddr) -> Option<Paddr>;
    /// The physical address of pool frame `i`.
    fn frame_pa(&self, i: usize) -> Paddr;
}

impl SharedTable for KvirtPt {
    type Input = Frame<dyn AnyFrameMeta>;
    type Mapping = Range<Vaddr>;

    fn inputs(&self, frames: &[usize]) -> Vec<Self::Input> {
        frames.iter().map(|&i| self.pool_frame(i)).collect()
    }

    fn map_one(&self, va: Vaddr, frame: Frame<dyn AnyFrameMeta>) -> Range<Vaddr> {
        // In a 1-element `Vec`, as the peers' inputs are (`Locked::map_one`).
        self.map_frames(va, vec![frame])
    }

    fn unmap_one(&self, mapping: Range<Vaddr>) {
        self.unmap_range(mapping);
    }

    fn translate(&self, _mapping: &Range<Vaddr>, va: Vaddr) -> Option<Paddr> {
        self.translate_addr(va)
    }

    fn frame_pa(&self, i: usize) -> Paddr {
        Mapper::frame_pa(self, i)
    }
}

/// A peer's table behind one lock.
#[derive(Debug)]
pub struct Locked<M>(spin::mutex::TicketMutex<M>);

impl<M: Mapper<Frames = Vec<Paddr>> + Send> Locked<M> {
    /// `table` behind a lock.
    pub fn new(table: M) -> Self {
        Self(spin::mutex::TicketMutex::new(table))
    }
}

impl<M: Mapper<Frames = Vec<Paddr>> + Send> SharedTable for Locked<M>
where
    M::Mapping: Send,
{
    type Input = Paddr;
    type Mapping = M::Mapping;

    fn inputs(&self, frames: &[usize]) -> Vec<Paddr> {
        let table = self.0.lock();
        frames.iter().map(|&i| table.frame_pa(i)).collect()
    }

    fn map_one(&self, va: Vaddr, pa: Paddr) -> M::Mapping {
        let input = vec![pa];
        self.0.lock().map(va, input)
    }

    fn unmap_one(&self, mapping: M::Mapping) {
        self.0.lock().unmap(mapping);
    }

    fn translate(&self, mapping: &M::Mapping, va: Vaddr) -> Option<Paddr> {
        let table = self.0.lock();
        let reader = table.reader();
        table.query(&reader, mapping, va)
    }

    fn frame_pa(&self, i: usize) -> Paddr {
        self.0.lock().frame_pa(i)
    }
}

/// `threads` threads at once, each mapping `pages` 1-page ranges in its
/// region of `table` and unmapping them; the wall time from the first one's
/// start to the last one's end, once each has made its inputs. With
/// `check`, each thread checks every page's translation once mapped (the
/// clock then measures the check too).
///
/// A run also checks the run before it: it maps the same pages again,
/// which every implementation refuses (and the run fails) if one was left
/// mapped.
fn once<T: SharedTable>(table: &T, threads: usize, pages: usize, check: bool) -> Result<Duration, Error> {
    // Thread `t` maps its own pool frames (each page the next, cyclically),
    // so that no two threads change one frame's reference count.
    let share = POOL_FRAMES / threads;
    let frame = |t: usize, j: usize| t * share + j % share;
    let setup = |t: usize| {
        kvirt::platform::hosted::set_current_cpu(t);
        stop_flushing_on_this_thread();
        let inputs = table.inputs(&(0..pages).map(|j| frame(t, j)).collect::<Vec<_>>());
        (inputs, Vec::<T::Mapping>::with_capacity(pages))
    };
    timed_threads(threads, setup, |t, (inputs, mut maps)| {
        for (j, input) in inputs.into_iter().enumerate() {
            maps.push(table.map_one(page(t, j), input));
        }
        if check {
            for (j, mapping) in maps.iter().enumerate() {
                let (got, want) = (table.translate(mapping, page(t, j) + 8), table.frame_pa(frame(t, j)) + 8);
                ensure(got == Some(want), || format!("thread {t}: page {j} maps {got:x?}, not {want:#x}"))?;
            }
        }
        for mapping in maps {
            table.unmap_one(mapping);
        }
        Ok(())
    })
}

/// The row of `table` on `threads` threads: ns per page mapped and
/// unmapped, over all threads' wall time. An untimed run first and one
/// last check every page (the last one also that the last timed run left
/// nothing mapped).
pub fn run<T: SharedTable>(table: &T, threads: usize, cfg: &Config) -> Result<Stats, Error> {
    let pages = cfg.shared_pages;
    once(table, threads, pages, true)?;
    let mut runs = Vec::new();
    for run in 0..cfg.warmup + cfg.runs {
        let elapsed = once(table, threads, pages, false)?;
        if run >= cfg.warmup {
            runs.push(ns_per(elapsed, pages * threads));
        }
    }
    once(table, threads, pages, true)?;
    Ok(Stats::from_runs(runs, (pages * threads) as u64))
}
