//! Multi-threaded stress test of the page table's locking and reclamation.
//!
//! Two threads each run 100 000 random operations (map, unmap, query of
//! 4 KiB pages and some 2 MiB pages; 4 KiB pages through cursors and
//! without, by `PageTable::try_map_frame` and `try_take_page`) on one
//! kernel page table, each
//! checking every result against its own model of the pages it owns. The
//! threads' pages are laid out so that they contend:
//!
//! * **shared L1 nodes**: in the first two 2 MiB regions of the window the
//!   threads own alternate 4 KiB pages, so their cursors lock the same L1
//!   node, and one thread empties (and reclaims) a node the other is about
//!   to use;
//! * **shared L2 node**: the next 2 MiB regions alternate between the
//!   threads, which map 2 MiB pages or 4 KiB pages there through cursors
//!   covering the whole region (guard at L2), next to the other thread's
//!   L1-level cursors; with few pages per thread the L2 node itself empties
//!   and is reclaimed often;
//! * **disjoint**: each thread also owns its own 1 GiB, whose L2 node comes
//!   and goes under the shared, never-freed L3 node.
//!
//! At the end the page table holds exactly the union of the models, and
//! unmapping everything returns the page-table node count, the tracked
//! frames' reference counts and the free-page count to where they started.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use kvirt::frame::{AnyFrameMeta, Frame, FrameAllocOptions};
use kvirt::kspace::KernelSpace;
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::page_table::{KernelPtConfig, MapErrorKind, MappedItem, MappedItemRef, PageTable, PageTableFrag};
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use kvirt_model::{Leaf, PtModel, Taken, SZ_1G, SZ_2M};

const SZ_4K: usize = PAGE_SIZE;
const WIN: Vaddr = 0xffff_c000_0000_0000;
const WIN_END: Vaddr = WIN + 3 * SZ_1G;
const UPA: Paddr = 0x1_0000_0000;
const THREADS: usize = 2;
const OPS_PER_THREAD: usize = 100_000;
const FRAMES_PER_THREAD: usize = 3;

/// A small xorshift generator: reproducible per thread without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// The pages and regions thread `t` owns.
struct Layout {
    /// 4 KiB pages interleaved with the other thread's in shared L1 nodes.
    shared_pages: Vec<Vaddr>,
    /// 2 MiB regions the thread owns outright.
    regions: Vec<Vaddr>,
}

impl Layout {
    /// The layout described in the module documentation. With `hot`, the
    /// disjoint 1 GiB regions are left out, so every operation lands in the
    /// first 1 GiB, whose L2 node and two L1 nodes both threads share.
    fn of(t: usize, hot: bool) -> Self {
        let shared_pages =
            vec![WIN + t * SZ_4K, WIN + (2 + t) * SZ_4K, WIN + (510 + t) * SZ_4K, WIN + SZ_2M + t * SZ_4K];
        let own_gig = WIN + (1 + t) * SZ_1G;
        let mut regions = vec![WIN + (2 + t) * SZ_2M, WIN + (4 + t) * SZ_2M];
        if !hot {
            regions.extend([own_gig, own_gig + SZ_2M, own_gig + 511 * SZ_2M]);
        }
        Layout { shared_pages, regions }
    }

    /// A 4 KiB page the thread owns: a shared one, or one in its regions.
    fn page(&self, rng: &mut Rng) -> Vaddr {
        if rng.below(2) == 0 {
            rng.pick(&self.shared_pages)
        } else {
            rng.pick(&self.regions) + rng.pick(&[0, 1, 256, 511]) * SZ_4K
        }
    }
}

struct Worker<'a> {
    pt: &'a PageTable<KernelPtConfig>,
    frames: &'a [Frame<dyn AnyFrameMeta>],
    layout: Layout,
    model: PtModel,
    rng: Rng,
    props: [PageProperty; 2],
}

impl Worker<'_> {
    fn leaf_of(&self, item: &MappedItemRef<'_>) -> Leaf {
        let tracked = matches!(item, MappedItemRef::Tracked(..));
        if tracked {
            self.assert_ours(item.paddr());
        }
        Leaf {
            pa: item.paddr(),
            size: SZ_4K << (9 * (item.level() as usize - 1)),
            prop: item.prop(),
            tracked,
        }
    }

    fn assert_ours(&self, pa: Paddr) {
        assert!(self.frames.iter().any(|f| f.paddr() == pa), "{pa:#x} is not one of this thread's frames");
    }

    fn map_4k(&mut self) {
        let va = self.layout.page(&mut self.rng);
        let prop = self.rng.pick(&self.props);
        let (item, m) = if self.rng.below(2) == 0 {
            let i = self.rng.below(self.frames.len());
            let m = Leaf { pa: self.frames[i].paddr(), size: SZ_4K, prop, tracked: true };
            (MappedItem::Tracked(self.frames[i].clone(), prop), m)
        } else {
            let pa = UPA + self.rng.below(64) * SZ_4K;
            (MappedItem::Untracked(pa, 1, prop), Leaf { pa, size: SZ_4K, prop, tracked: false })
        };
        // In owned regions, half the time through a cursor over the whole
        // region (its guard is then the L2 node shared with the neighbour).
        let region = va & !(SZ_2M - 1);
        let range = if self.layout.regions.contains(&region) && self.rng.below(2) == 0 {
            region..region + SZ_2M
        } else {
            va..va + SZ_4K
        };
        let free = self.model.is_free(va..va + SZ_4K);
        let result = match item {
            // A third of the frames without a cursor.
            MappedItem::Tracked(frame, prop) if self.rng.below(3) == 0 => {
                self.pt.try_map_frame(va, frame, prop)
            }
            item => {
                let mut c = self.pt.cursor_mut(&range).unwrap();
                c.jump(va).unwrap();
                c.try_map(item)
            }
        };
        match result {
            Ok(()) => {
                assert!(free, "mapped over an owned mapping at {va:#x}");
                self.model.map.insert(va, m);
            }
            Err(e) => {
                assert!(!free, "map at {va:#x} failed: {:?}", e.kind);
                assert_eq!(e.kind, MapErrorKind::AlreadyMapped);
            }
        }
    }

    fn map_2m(&mut self) {
        let va = self.rng.pick(&self.layout.regions);
        let prop = self.rng.pick(&self.props);
        let pa = UPA + self.rng.below(8) * SZ_2M;
        let free = self.model.is_free(va..va + SZ_2M);
        let mut c = self.pt.cursor_mut(&(va..va + SZ_2M)).unwrap();
        match c.try_map(MappedItem::Untracked(pa, 2, prop)) {
            Ok(()) => {
                assert!(free, "mapped 2 MiB over an owned mapping at {va:#x}");
                self.model.map.insert(va, Leaf { pa, size: SZ_2M, prop, tracked: false });
            }
            Err(e) => {
                assert!(!free, "2 MiB map at {va:#x} failed: {:?}", e.kind);
                assert_eq!(e.kind, MapErrorKind::AlreadyMapped);
            }
        }
    }

    fn unmap_4k(&mut self) {
        let va = self.layout.page(&mut self.rng);
        // A 2 MiB page around `va` is split; the model does the same.
        let expected = match self.model.take_next(va, va + SZ_4K).0 {
            None => None,
            Some(Taken::Leaf(at, m)) if at == va => Some(m),
            other => panic!("the model takes {other:?} for 4 KiB at {va:#x}"),
        };
        // Half the time without a cursor.
        let frag = if self.rng.below(2) == 0 {
            self.pt.try_take_page(va).expect("memory to split a 2 MiB page")
        } else {
            self.pt.cursor_mut(&(va..va + SZ_4K)).unwrap().take_next(SZ_4K)
        };
        let got = frag.map(|frag| match frag {
            PageTableFrag::Mapped { va: at, item } => {
                assert_eq!(at, va);
                match item {
                    MappedItem::Tracked(f, prop) => {
                        self.assert_ours(f.paddr());
                        Leaf { pa: f.paddr(), size: SZ_4K, prop, tracked: true }
                    }
                    MappedItem::Untracked(pa, level, prop) => {
                        assert_eq!(level, 1);
                        Leaf { pa, size: SZ_4K, prop, tracked: false }
                    }
                }
            }
            other => panic!("a 4 KiB take_next returned {other:?}"),
        });
        assert_eq!(got, expected, "unmap at {va:#x}");
    }

    fn unmap_region(&mut self) {
        let r = self.rng.pick(&self.layout.regions);
        let inside: Vec<Vaddr> = self.model.map.range(r..r + SZ_2M).map(|(&k, _)| k).collect();
        for k in &inside {
            self.model.map.remove(k);
        }
        let mut c = self.pt.cursor_mut(&(r..r + SZ_2M)).unwrap();
        let mut taken = 0;
        while let Some(frag) = c.take_next(r + SZ_2M - c.virt_addr()) {
            taken += match frag {
                PageTableFrag::Mapped { .. } => 1,
                PageTableFrag::StrayPageTable { num_frames, .. } => num_frames,
            };
        }
        assert_eq!(taken, inside.len(), "unmap of region {r:#x}");
    }

    fn query(&mut self) {
        let va = self.layout.page(&mut self.rng);
        let mut c = self.pt.cursor(&(va..va + SZ_4K)).unwrap();
        let (range, item) = c.query().unwrap();
        let got = item.as_ref().map(|i| self.leaf_of(i));
        match self.model.covering(va) {
            Some((s, m)) => {
                assert_eq!(got, Some(m), "query at {va:#x}");
                assert_eq!(range, s..s + m.size);
            }
            None => {
                assert_eq!(got, None, "query at {va:#x}");
                assert!(range.contains(&va));
            }
        }
    }

    fn run(&mut self, ops: usize) {
        for _ in 0..ops {
            match self.rng.below(20) {
                0..=5 => self.map_4k(),
                6..=11 => self.unmap_4k(),
                12..=13 => self.map_2m(),
                14..=15 => self.unmap_region(),
                _ => self.query(),
            }
        }
    }
}

/// Every leaf in the window, walked with a read-only cursor.
fn view(pt: &PageTable<KernelPtConfig>, frames: &[Vec<Frame<dyn AnyFrameMeta>>]) -> BTreeMap<Vaddr, Leaf> {
    let mut c = pt.cursor(&(WIN..WIN_END)).unwrap();
    let mut out = BTreeMap::new();
    while let Some(va) = c.find_next(WIN_END - c.virt_addr()) {
        let (r, item) = c.query().unwrap();
        let item = item.unwrap();
        let tracked = matches!(item, MappedItemRef::Tracked(..));
        if tracked {
            assert!(frames.iter().flatten().any(|g| g.paddr() == item.paddr()), "a test frame");
        }
        out.insert(va, Leaf { pa: item.paddr(), size: r.len(), prop: item.prop(), tracked });
        c.jump(r.end).unwrap();
    }
    out
}

fn stress(hot: bool) {
    let space = KernelSpace::new_hosted(kvirt_sim::MachineConfig::new(64 << 20).cpus(2));
    let pt = PageTable::<KernelPtConfig>::empty_in(&space).unwrap();
    let frames: Vec<Vec<Frame<dyn AnyFrameMeta>>> = (0..THREADS)
        .map(|_| {
            (0..FRAMES_PER_THREAD)
                .map(|_| FrameAllocOptions::new_in(&space).alloc_frame().unwrap().into_dyn())
                .collect()
        })
        .collect();
    space.synchronize();
    let baseline = space.phys_stats();

    let start = Barrier::new(THREADS + 1);
    let done = AtomicBool::new(false);
    let models: Vec<PtModel> = std::thread::scope(|s| {
        // A lock-free reader (`translate`, like the MMU) walks the pages the
        // workers map and unmap, through nodes being reclaimed under it.
        let reader = s.spawn(|| {
            let pages: Vec<Vaddr> = (0..THREADS)
                .flat_map(|t| {
                    let l = Layout::of(t, hot);
                    l.shared_pages.into_iter().chain(l.regions.into_iter().map(|r| r + 256 * SZ_4K))
                })
                .collect();
            let frame_pas: Vec<Paddr> = frames.iter().flatten().map(|f| f.paddr()).collect();
            start.wait();
            let mut seen = 0usize;
            while !done.load(Ordering::Relaxed) {
                for &va in &pages {
                    if let Some((pa, _)) = pt.translate(va) {
                        let untracked = (UPA..UPA + 8 * SZ_2M).contains(&pa);
                        assert!(untracked || frame_pas.contains(&pa), "translate({va:#x}) gave {pa:#x}");
                        seen += 1;
                    }
                    // The address-only walk, through the same reclamation.
                    if let Some(pa) = pt.translate_addr(va + 8) {
                        let untracked = (UPA..UPA + 8 * SZ_2M).contains(&(pa - 8));
                        assert!(
                            untracked || frame_pas.contains(&(pa - 8)),
                            "translate_addr({:#x}) gave {pa:#x}",
                            va + 8
                        );
                    }
                }
                // Leave the two cores to the workers most of the time.
                std::thread::yield_now();
            }
            seen
        });
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (pt, frames, start) = (&pt, &frames[t], &start);
                s.spawn(move || {
                    kvirt::platform::hosted::set_current_cpu(t);
                    let mut w = Worker {
                        pt,
                        frames,
                        layout: Layout::of(t, hot),
                        model: PtModel::default(),
                        rng: Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9)),
                        props: [
                            PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback),
                            PageProperty::new_kernel(PageFlags::R, CachePolicy::Uncacheable),
                        ],
                    };
                    start.wait();
                    w.run(OPS_PER_THREAD);
                    w.model
                })
            })
            .collect();
        // Stop the reader even if a worker failed, then report.
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        done.store(true, Ordering::Relaxed);
        let seen = reader.join().expect("reader panicked");
        let models = results.into_iter().map(|r| r.expect("worker panicked")).collect();
        assert!(seen > 0, "the reader saw some mappings");
        models
    });

    // The table is exactly the union of the models.
    let mut union = BTreeMap::new();
    for model in &models {
        for (&va, &m) in &model.map {
            assert!(union.insert(va, m).is_none());
        }
    }
    assert_eq!(view(&pt, &frames), union);
    space.synchronize();
    for (t, model) in models.iter().enumerate() {
        for (i, f) in frames[t].iter().enumerate() {
            let entries = model.map.values().filter(|m| m.tracked && m.pa == f.paddr()).count() as u64;
            assert_eq!(f.reference_count(), 1 + entries, "thread {t} frame {i}");
        }
    }

    // Unmapping everything leaks nothing.
    {
        let mut c = pt.cursor_mut(&(WIN..WIN_END)).unwrap();
        while c.take_next(WIN_END - c.virt_addr()).is_some() {}
    }
    space.synchronize();
    assert_eq!(space.phys_stats(), baseline, "page-table nodes and frames are back");
    assert!(frames.iter().flatten().all(|f| f.reference_count() == 1));
}

#[test]
fn two_threads_map_and_unmap_in_neighbouring_and_disjoint_ranges() {
    stress(false);
}

#[test]
fn two_threads_map_and_unmap_in_one_shared_gigabyte() {
    stress(true);
}
