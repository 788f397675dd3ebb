//! Many threads creating, querying, splitting and dropping areas at once.
//!
//! On one shared isolated space, each worker acts as its own CPU of the
//! simulated machine and checks what it created through `query`, byte
//! access and its CPU's MMU, while a keeper thread holds 100 long-lived
//! areas and keeps checking that nobody disturbed them. When every thread
//! is done, the space's counters are back at their baseline and its
//! invariant holds. A second test does the same on the default space with
//! no set-up, checking only each thread's own areas. A third keeps a split
//! half querying on one thread while the other pieces go on another and
//! the nodes they empty are reused.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use kvirt::arch::effective_property;
use kvirt::frame::{Frame, FrameAllocOptions};
use kvirt::kspace::{
    Aarch64Layout, KVirtArea, KernelLayout, KernelSpace, MappedItemRef, Sv39Layout, Sv48Layout, X86_64Layout,
};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::platform::hosted::set_current_cpu;
use kvirt::sim::MachineConfig;
use kvirt::spec::{kernel_view, Inv};
use kvirt::{Paddr, PAGE_SIZE};

const P: usize = PAGE_SIZE;
const SIZE_2M: usize = 2 << 20;
const WORKERS: usize = 3;
const ITERATIONS: usize = 4000;
const LONG_LIVED: usize = 100;

fn prop() -> PageProperty {
    PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback)
}

/// A small deterministic generator: each thread gets its own sequence.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What an area was created with, to check it against later.
struct Live<L: KernelLayout> {
    area: KVirtArea<L>,
    /// The physical page each mapped page maps, from `area.mapped_range()`.
    pas: Vec<Paddr>,
    /// Clones of its tracked frames, held by the test.
    frames: Vec<Frame<()>>,
    /// Whether its pages are RAM (byte access works).
    ram: bool,
}

impl<L: KernelLayout> Live<L> {
    /// `query` on every mapped page (and one unmapped one, if any) gives
    /// what was mapped.
    fn check_query(&self) {
        let mapped = self.area.mapped_range();
        // Every page of small areas; the ends and a sample of 2 MiB ones.
        let step = if self.pas.len() > 16 { 37 } else { 1 };
        let pages = (0..self.pas.len()).step_by(step).chain(self.pas.len().checked_sub(1));
        for i in pages {
            let (pa, va) = (self.pas[i], mapped.start + i * P);
            let item = self.area.query(va + i % P).expect("a mapped page");
            assert_eq!(page_of(&item, va), pa, "page {i} of {:?}", self.area);
            assert_eq!(item.prop(), effective_property::<L::Format>(prop()));
        }
        if mapped.start > self.area.start() {
            assert!(self.area.query(self.area.start()).is_none());
        }
        for f in &self.frames {
            assert_eq!(f.reference_count(), 2, "a frame's count is not its handle plus its entry");
        }
    }
}

/// The physical page `item`, what a query at the page-aligned `va` found,
/// maps there: the frame, or the page of `va` in an untracked one.
fn page_of(item: &MappedItemRef<'_>, va: usize) -> Paddr {
    match *item {
        MappedItemRef::Tracked(ref frame, _) => frame.paddr(),
        MappedItemRef::Untracked(base, level, _) => base + va % (P << (9 * (level as usize - 1))),
    }
}

/// Where the space's device window starts, if its machine has one.
fn device_window_start<L: KernelLayout>(space: &KernelSpace<L>) -> Option<Paddr> {
    let device = space.memory_map().iter().find(|r| r.kind == kvirt::platform::MemoryRegionKind::Device);
    device.map(|r| r.range.start)
}

/// Creates a random area in `space`: tracked (1-8 fresh frames), untracked
/// low memory from `low` (one page each), or a 2 MiB device piece.
fn create<L: KernelLayout>(space: &KernelSpace<L>, rng: &mut XorShift, low: &Range<Paddr>) -> Live<L> {
    let device = device_window_start(space);
    let offset = rng.below(3) * P;
    match rng.below(if device.is_some() { 4 } else { 3 }) {
        0 | 1 => {
            let n = 1 + rng.below(8);
            let seg = FrameAllocOptions::new_in(space).alloc_segment(n).unwrap();
            let frames: Vec<Frame<()>> = seg.clone().into_iter().collect();
            let pas = frames.iter().map(Frame::paddr).collect();
            let area = space.try_map_frames(offset + n * P + rng.below(2) * P, offset, seg, prop()).unwrap();
            Live { area, pas, frames, ram: true }
        }
        2 => {
            let pages = low.len() / P;
            let first = rng.below(pages);
            let n = 1 + rng.below((pages - first).min(4));
            let pa = low.start + first * P..low.start + (first + n) * P;
            let pas = pa.clone().step_by(P).collect();
            // SAFETY: reserved low memory that only this thread uses.
            let area = unsafe { space.try_map_untracked_frames(offset + n * P, offset, pa, prop()) }.unwrap();
            Live { area, pas, frames: Vec::new(), ram: true }
        }
        _ => {
            let pa = device.unwrap() + rng.below(8) * SIZE_2M;
            let off = offset / P * SIZE_2M;
            // SAFETY: the simulated device window.
            let area =
                unsafe { space.try_map_untracked_frames(off + SIZE_2M, off, pa..pa + SIZE_2M, prop()) };
            let pas = (0..SIZE_2M / P).map(|i| pa + i * P).collect();
            Live { area: area.unwrap(), pas, frames: Vec::new(), ram: false }
        }
    }
}

/// Writes a pattern into a random mapped piece of `live` and reads it back
/// through the area and through `cpu`'s MMU.
fn write_and_read<L: KernelLayout>(live: &Live<L>, rng: &mut XorShift, cpu: Option<&kvirt::sim::Cpu>) {
    let mapped = live.area.mapped_range();
    if !live.ram || mapped.is_empty() {
        return;
    }
    let at = mapped.start - live.area.start() + rng.below(mapped.len());
    let len = 1 + rng.below(mapped.len() - (at - (mapped.start - live.area.start())));
    let seed = rng.below(256) as u8;
    let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    live.area.write_bytes(at, &data).unwrap();
    let mut back = vec![0; len];
    live.area.read_bytes(at, &mut back).unwrap();
    assert_eq!(back, data);
    if let Some(cpu) = cpu {
        back.fill(0);
        cpu.read(live.area.start() + at, &mut back).expect("the MMU translates a live area");
        assert_eq!(back, data, "the MMU sees other bytes than the area");
    }
}

/// One worker: a few thousand random operations on its own areas.
fn worker<L: KernelLayout>(
    space: &KernelSpace<L>,
    id: usize,
    iterations: usize,
    low: Range<Paddr>,
    use_mmu: bool,
) {
    let mut rng = XorShift::new(id as u64 + 1);
    let cpu = if use_mmu {
        set_current_cpu(id);
        // SAFETY: the CPU runs the space's own kernel table and reads and
        // writes only through areas this worker owns.
        let cpu = unsafe { space.machine() }.unwrap().cpu(id);
        cpu.set_root(space.kernel_root_paddr() as u64);
        Some(cpu)
    } else {
        None
    };
    let mut live: Vec<Live<L>> = Vec::new();
    for _ in 0..iterations {
        match rng.below(10) {
            0..=3 if live.len() < 16 => live.push(create(space, &mut rng, &low)),
            // A TLB entry this CPU kept for a dropped area would show up
            // as wrong bytes when the range is reused by a new area.
            0..=5 if !live.is_empty() => drop(live.swap_remove(rng.below(live.len()))),
            6 if !live.is_empty() => {
                let i = rng.below(live.len());
                live[i].check_query();
            }
            7 if !live.is_empty() => {
                let i = rng.below(live.len());
                write_and_read(&live[i], &mut rng, cpu);
            }
            8 if !live.is_empty() => {
                // Split a tracked or low-memory area and keep both halves.
                let i = rng.below(live.len());
                let pages = live[i].area.size() / P;
                if pages > 1 && live[i].ram {
                    let Live { area, pas, frames, ram } = live.swap_remove(i);
                    let at = (1 + rng.below(pages - 1)) * P;
                    let mapped = area.mapped_range();
                    let (left, right) = area.split(at);
                    let cut = (left.end().clamp(mapped.start, mapped.end) - mapped.start) / P;
                    let (lp, rp) = pas.split_at(cut);
                    let (mut lf, mut rf) = (frames, Vec::new());
                    if !lf.is_empty() {
                        rf = lf.split_off(cut);
                    }
                    live.push(Live { area: left, pas: lp.to_vec(), frames: lf, ram });
                    live.push(Live { area: right, pas: rp.to_vec(), frames: rf, ram });
                }
            }
            _ => {
                for l in &live {
                    l.check_query();
                }
            }
        }
    }
    for l in &live {
        l.check_query();
    }
}

/// The keeper: 100 long-lived areas with known contents, checked until the
/// workers are done.
fn keeper<L: KernelLayout>(
    space: &KernelSpace<L>,
    low: Range<Paddr>,
    done: &AtomicBool,
    start: &Barrier,
    use_mmu: bool,
) {
    let cpu = if use_mmu {
        set_current_cpu(WORKERS);
        // SAFETY: as in `worker`, for the keeper's own areas.
        let cpu = unsafe { space.machine() }.unwrap().cpu(WORKERS);
        cpu.set_root(space.kernel_root_paddr() as u64);
        Some(cpu)
    } else {
        None
    };
    let mut rng = XorShift::new(0xfeed);
    let areas: Vec<Live<L>> = (0..LONG_LIVED)
        .map(|i| {
            if i % 2 == 0 {
                let seg = FrameAllocOptions::new_in(space).alloc_segment(1 + i % 4).unwrap();
                let frames: Vec<Frame<()>> = seg.clone().into_iter().collect();
                let pas = frames.iter().map(Frame::paddr).collect();
                let area = space.try_map_frames(seg.nbytes() + P, P, seg, prop()).unwrap();
                Live { area, pas, frames, ram: true }
            } else {
                let pa = low.start + (i / 2) * P;
                // SAFETY: reserved low memory that only the keeper uses.
                let area = unsafe { space.try_map_untracked_frames(P, 0, pa..pa + P, prop()) }.unwrap();
                Live { area, pas: vec![pa], frames: Vec::new(), ram: true }
            }
        })
        .collect();
    let pattern = |i: usize, j: usize| (i * 31 + j * 7) as u8;
    for (i, l) in areas.iter().enumerate() {
        let data: Vec<u8> = (0..l.pas.len() * P).map(|j| pattern(i, j)).collect();
        l.area.write_bytes(l.area.mapped_range().start - l.area.start(), &data).unwrap();
    }
    start.wait();
    let mut rounds = 0;
    while !done.load(Ordering::Acquire) || rounds < 2 {
        for (i, l) in areas.iter().enumerate() {
            l.check_query();
            let off = rng.below(l.pas.len() * P);
            let mut byte = [0];
            l.area.read_bytes(l.area.mapped_range().start - l.area.start() + off, &mut byte).unwrap();
            assert_eq!(byte[0], pattern(i, off), "a long-lived area was disturbed");
            if let Some(cpu) = cpu {
                cpu.read(l.area.mapped_range().start + off, &mut byte).unwrap();
                assert_eq!(byte[0], pattern(i, off), "the MMU sees a long-lived area changed");
            }
        }
        rounds += 1;
    }
}

fn snapshot<L: KernelLayout>(space: &KernelSpace<L>) -> impl PartialEq + std::fmt::Debug {
    space.synchronize();
    (space.phys_stats(), space.vmalloc_stats(), space.areas(), kernel_view(space, &L::VMALLOC_VADDR_RANGE))
}

/// The stress run on a space laid out as `L`, whose machine's MMUs walk
/// `L`'s format: `iterations` random operations per worker.
fn threads_on_one_space_leak_nothing<L: KernelLayout>(iterations: usize) {
    let config = MachineConfig::new(64 << 20).cpus(WORKERS + 1);
    let space = Arc::new(KernelSpace::<L>::hosted_with_layout(config));
    let baseline = snapshot(&space);
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let keeper_thread = {
        let (space, done, start) = (space.clone(), done.clone(), start.clone());
        thread::spawn(move || keeper(&space, 0x10_000..0x10_000 + LONG_LIVED * P, &done, &start, true))
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| {
            let (space, start) = (space.clone(), start.clone());
            thread::spawn(move || {
                let low = 0x80_000 + id * 32 * P..0x80_000 + (id + 1) * 32 * P;
                start.wait();
                worker(&space, id, iterations, low, true);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a worker failed");
    }
    done.store(true, Ordering::Release);
    keeper_thread.join().expect("the keeper failed");
    assert!(space.areas().is_empty(), "{:?}", space.areas());
    assert_eq!(snapshot(&space), baseline, "something leaked");
    assert!(space.inv(), "{:?}", space.check());
}

#[test]
fn threads_creating_and_dropping_areas_on_one_space_leak_nothing() {
    threads_on_one_space_leak_nothing::<X86_64Layout>(ITERATIONS);
}

/// The same generic code on the other formats, with fewer operations.
#[test]
fn threads_creating_and_dropping_areas_leak_nothing_on_sv39_sv48_and_aarch64() {
    threads_on_one_space_leak_nothing::<Sv39Layout>(ITERATIONS / 4);
    threads_on_one_space_leak_nothing::<Sv48Layout>(ITERATIONS / 4);
    threads_on_one_space_leak_nothing::<Aarch64Layout>(ITERATIONS / 4);
}

#[test]
fn threads_on_the_default_space_see_their_own_areas() {
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(4));
    let keeper_thread = {
        let (done, start) = (done.clone(), start.clone());
        // The default machine has 2 CPUs: no MMU checks, other tests use it.
        thread::spawn(move || {
            keeper(KernelSpace::global(), 0x20_000..0x20_000 + LONG_LIVED * P, &done, &start, false)
        })
    };
    let workers: Vec<_> = (0..3)
        .map(|id| {
            let start = start.clone();
            thread::spawn(move || {
                let low = 0x90_000 + id * 32 * P..0x90_000 + (id + 1) * 32 * P;
                start.wait();
                worker(KernelSpace::global(), id + 10, 600, low, false);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a worker failed");
    }
    done.store(true, Ordering::Release);
    keeper_thread.join().expect("the keeper failed");
}

/// What the kernel table translates some mapped pages of `area` to: the
/// first, the last and 16 between.
fn mapped_pages<L: KernelLayout>(space: &KernelSpace<L>, area: &KVirtArea<L>) -> Vec<(usize, Paddr)> {
    let mapped = area.mapped_range();
    let n = mapped.len() / P;
    let step = (n / 16).max(1);
    let pages = (0..n).step_by(step).chain(n.checked_sub(1));
    pages
        .map(|i| mapped.start + i * P)
        .map(|va| (va, space.kernel_translate(va).expect("mapped").0))
        .collect()
}

/// A split half keeps querying right on one thread while the other
/// pieces of its area are dropped on another, in random order, and the
/// page-table nodes they empty are reclaimed and their pages handed out
/// again and filled with all-ones words (a present entry in every
/// format) by a third: the node the half's queries start at stays on
/// their path, and alive. Areas of up to 700 pages across leaf nodes,
/// mixed 2 MiB and 4 KiB pages, and a 1 GiB page (2 MiB pages on Sv39).
fn a_half_queries_while_its_neighbours_go<L: KernelLayout>(iterations: usize, lazy: bool) {
    let space = Arc::new(KernelSpace::<L>::hosted_with_layout(MachineConfig::new(256 << 20)));
    if lazy {
        space.set_purge_mode(kvirt::kspace::PurgeMode::Lazy { max_pending_pages: 64 });
    }
    let device = device_window_start(&*space).expect("a hosted machine has a device window");
    let stop = Arc::new(AtomicBool::new(false));
    let poisoner = {
        let (space, stop) = (space.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(frames) = FrameAllocOptions::new_in(&*space).alloc_segment(8) else { continue };
                let area = space.try_map_frames(8 * P, 0, frames, prop()).expect("room for 8 pages");
                area.write_bytes(0, &[0xff; 8 * P]).expect("RAM");
            }
        })
    };
    // A rendezvous: the next half goes over once the querier is done with
    // the last, so that halves waiting their turn do not use up memory.
    let (to_querier, jobs) =
        std::sync::mpsc::sync_channel::<(KVirtArea<L>, Vec<(usize, Paddr)>, Arc<AtomicBool>)>(0);
    let querier = thread::spawn(move || {
        for (area, pages, others_gone) in jobs {
            let mut rounds = 0;
            while !others_gone.load(Ordering::Acquire) || rounds < 2 {
                for &(va, pa) in &pages {
                    let item = area.query(va + 1).expect("a mapped page");
                    assert_eq!(page_of(&item, va), pa, "{va:#x} of {area:?}");
                }
                rounds += 1;
            }
            assert!(area.inv(), "{:?}", area.check());
        }
    });
    let mut rng = XorShift::new(0x5eed);
    for _ in 0..iterations {
        let area = match rng.below(4) {
            0 | 1 => {
                let pages = 2 + rng.below(700);
                let frames = FrameAllocOptions::new_in(&*space).alloc_segment(pages).expect("frames");
                let offset = rng.below(3) * P;
                space.try_map_frames(offset + pages * P, offset, frames, prop()).expect("an area")
            }
            2 => {
                let len = (1 + rng.below(3)) * SIZE_2M - 7 * P;
                let pa = device + rng.below(16) * SIZE_2M + 7 * P;
                // SAFETY: the simulated device window, which nothing reads.
                unsafe { space.try_map_untracked_frames(len + 8 * P, 7 * P, pa..pa + len, prop()) }
                    .expect("an area")
            }
            _ => {
                // SAFETY: as above.
                unsafe { space.try_map_untracked_frames(1 << 30, 0, device..device + (1 << 30), prop()) }
                    .expect("an area")
            }
        };
        let cut = (1 + rng.below(area.size() / P - 1)) * P;
        let (left, right) = area.split(cut);
        let mut pieces = vec![left, right];
        if pieces[0].size() > P && rng.below(2) == 0 {
            let piece = pieces.remove(0);
            let cut = (1 + rng.below(piece.size() / P - 1)) * P;
            let (a, b) = piece.split(cut);
            pieces.extend([a, b]);
        }
        let kept = pieces.remove(rng.below(pieces.len()));
        let others_gone = Arc::new(AtomicBool::new(false));
        let pages = mapped_pages(&space, &kept);
        to_querier.send((kept, pages, others_gone.clone())).expect("the querier is there");
        while !pieces.is_empty() {
            drop(pieces.remove(rng.below(pieces.len())));
            if rng.below(2) == 0 {
                space.synchronize();
            }
        }
        space.synchronize();
        others_gone.store(true, Ordering::Release);
    }
    drop(to_querier);
    querier.join().expect("the querier failed");
    stop.store(true, Ordering::Relaxed);
    poisoner.join().expect("the poisoner failed");
    space.synchronize();
    assert!(space.areas().is_empty(), "{:?}", space.areas());
    assert!(space.inv(), "{:?}", space.check());
}

#[test]
fn a_split_half_queries_right_while_the_other_pieces_go_and_their_nodes_are_reused() {
    // With the run-time contracts on, every query first checks the whole
    // area's invariant: a tenth of the rounds.
    let rounds = if cfg!(feature = "check-contracts") { 100 } else { 1000 };
    a_half_queries_while_its_neighbours_go::<X86_64Layout>(rounds, false);
    a_half_queries_while_its_neighbours_go::<X86_64Layout>(rounds, true);
    a_half_queries_while_its_neighbours_go::<Sv39Layout>(rounds / 10, false);
}
