//! A model test of lazy purging on the hosted machine.
//!
//! Random sequences create tracked areas, let the machine's CPUs touch
//! them (filling their TLBs), drop them lazily, purge, change the
//! threshold and go eager. A model keeps which areas are live and which
//! are dropped but not yet purged, and after every step checks the space
//! against it: the purge counters, VMALLOC and frame accounting (a dead
//! area holds its range and its frames until the purge that flushes them).
//!
//! The guarantee itself is checked where reuse happens:
//!
//! - a frame's drop hook fails the test if any CPU's TLB still translates
//!   to it (a frame released before the flush);
//! - a new area fails the test if any TLB still caches a page of its range
//!   (a range given back before the flush);
//! - after every step, every cached translation must belong to a live area
//!   or to a dead one the model says is still pending.
//!
//! So a purge that skips the flush, or flushes after releasing, fails.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use kvirt::frame::{AnyFrameMeta, FrameAllocOptions};
use kvirt::kspace::{KVirtArea, KernelSpace, PurgeMode, GUARD_SIZE};
use kvirt::page_prop::{CachePolicy, PageFlags, PageProperty};
use kvirt::sim::{Access, Machine, MachineConfig};
use kvirt::spec::Inv;
use kvirt::{Paddr, PAGE_SIZE};
use proptest::prelude::*;

const CPUS: usize = 3;

#[derive(Clone, Debug)]
enum Step {
    /// A tracked area of this many pages (1..=4).
    Create(usize),
    /// CPU `cpu` reads every page of an area, caching its translations.
    Touch {
        area: usize,
        cpu: usize,
    },
    Drop(usize),
    Purge,
    /// Lazy with this threshold in pages (0: purge on every drop).
    Lazy(usize),
    Eager,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1..=4usize).prop_map(Step::Create),
        3 => (any::<usize>(), 0..CPUS).prop_map(|(area, cpu)| Step::Touch { area, cpu }),
        3 => any::<usize>().prop_map(Step::Drop),
        1 => Just(Step::Purge),
        1 => prop_oneof![Just(0usize), Just(8), Just(usize::MAX)].prop_map(Step::Lazy),
        1 => Just(Step::Eager),
    ]
}

/// Broken promises seen inside drop hooks, where a test cannot panic.
type Violations = Arc<Mutex<Vec<String>>>;

/// Metadata whose drop hook checks that no CPU can still reach the frame.
#[derive(Debug)]
struct Watched {
    machine: Arc<Machine>,
    violations: Violations,
}

impl AnyFrameMeta for Watched {
    fn on_drop(&mut self, paddr: Paddr) {
        for cpu in 0..CPUS {
            for (page, pa) in self.machine.cpu(cpu).tlb_snapshot() {
                if pa as Paddr <= paddr && paddr < pa as Paddr + page.len() {
                    self.violations
                        .lock()
                        .unwrap()
                        .push(format!("frame {paddr:#x} released while CPU {cpu} caches {page:#x?}"));
                }
            }
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The model: live areas and the dead ones waiting for a purge (their
/// ranges, guards included, and page counts).
struct World {
    space: Arc<KernelSpace>,
    machine: Arc<Machine>,
    violations: Violations,
    live: Vec<KVirtArea>,
    dead: Vec<Range<usize>>,
    mode: PurgeMode,
    purges: usize,
    base_free: usize,
    base_used: usize,
}

impl World {
    fn new() -> Self {
        let space = Arc::new(KernelSpace::new_hosted(MachineConfig::new(32 << 20).cpus(CPUS)));
        // SAFETY: the CPUs run the space's kernel table and only read
        // through areas this test holds, faults apart.
        let machine = unsafe { space.machine() }.expect("a hosted space").clone();
        for cpu in 0..CPUS {
            machine.cpu(cpu).set_root(space.kernel_root_paddr() as u64);
        }
        let phys = space.phys_stats();
        let (base_free, base_used) =
            (space.vmalloc_stats().free_bytes, phys.used_pages - phys.page_table_pages);
        World {
            space,
            machine,
            violations: Violations::default(),
            live: Vec::new(),
            dead: Vec::new(),
            mode: PurgeMode::Eager,
            purges: 0,
            base_free,
            base_used,
        }
    }

    fn lazy_limit(&self) -> Option<usize> {
        match self.mode {
            PurgeMode::Eager => None,
            PurgeMode::Lazy { max_pending_pages } => Some(max_pending_pages),
        }
    }

    /// The model's purge: every dead area is released.
    fn model_purge(&mut self) {
        if !self.dead.is_empty() {
            self.purges += 1;
            self.dead.clear();
        }
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Create(pages) => {
                let frames: Vec<_> = (0..pages)
                    .map(|_| {
                        let meta =
                            Watched { machine: self.machine.clone(), violations: self.violations.clone() };
                        FrameAllocOptions::new_in(&self.space).alloc_frame_with(meta).unwrap()
                    })
                    .collect();
                let prop = PageProperty::new_kernel(PageFlags::RW, CachePolicy::Writeback);
                let area = self.space.try_map_frames(pages * PAGE_SIZE, 0, frames, prop).unwrap();
                let range = area.range();
                for cpu in 0..CPUS {
                    for (page, _) in self.machine.cpu(cpu).tlb_snapshot() {
                        assert!(
                            page.end <= range.start || range.end + GUARD_SIZE <= page.start,
                            "a new area {range:#x?} reuses a page CPU {cpu} still caches ({page:#x?})"
                        );
                    }
                }
                self.live.push(area);
            }
            Step::Touch { area, cpu } => {
                if let Some(a) = self.live.get(area % self.live.len().max(1)) {
                    for va in a.mapped_range().step_by(PAGE_SIZE) {
                        self.machine.cpu(cpu).translate(va, Access::READ).expect("a live area is mapped");
                    }
                }
            }
            Step::Drop(i) => {
                if self.live.is_empty() {
                    return;
                }
                let area = self.live.swap_remove(i % self.live.len());
                let r = area.range();
                drop(area);
                if let Some(limit) = self.lazy_limit() {
                    self.dead.push(r.start..r.end + GUARD_SIZE);
                    let pending: usize = self.dead.iter().map(|d| d.len() / PAGE_SIZE).sum();
                    if pending >= limit {
                        self.model_purge();
                    }
                }
            }
            Step::Purge => {
                self.space.purge();
                self.model_purge();
            }
            Step::Lazy(max_pending_pages) => {
                self.mode = PurgeMode::Lazy { max_pending_pages };
                self.space.set_purge_mode(self.mode);
            }
            Step::Eager => {
                self.mode = PurgeMode::Eager;
                self.space.set_purge_mode(self.mode);
                self.model_purge();
            }
        }
    }

    fn check(&self) {
        let v = self.violations.lock().unwrap();
        assert!(v.is_empty(), "{v:#?}");
        drop(v);
        let stats = self.space.purge_stats();
        assert_eq!(stats.pending_areas, self.dead.len(), "pending areas");
        assert_eq!(stats.purges, self.purges, "purges");
        // Live and dead areas hold their ranges (with guards) and frames.
        let held: usize = self.live.iter().map(|a| a.range().len() + GUARD_SIZE).sum::<usize>()
            + self.dead.iter().map(Range::len).sum::<usize>();
        assert_eq!(self.space.vmalloc_stats().free_bytes, self.base_free - held, "VMALLOC accounting");
        let stats = self.space.phys_stats();
        let data_pages: usize = self.live.iter().map(|a| a.mapped_range().len()).sum::<usize>() / PAGE_SIZE;
        let used = stats.used_pages - stats.page_table_pages - self.base_used;
        assert!(used >= data_pages, "a live area's frame was released");
        if self.dead.is_empty() {
            assert_eq!(used, data_pages, "a purged area's frames are back");
        }
        // Whatever a TLB caches belongs to a live area or a pending dead one.
        for cpu in 0..CPUS {
            for (page, _) in self.machine.cpu(cpu).tlb_snapshot() {
                let owned =
                    self.live.iter().any(|a| a.range().start <= page.start && page.end <= a.range().end)
                        || self.dead.iter().any(|d| d.start <= page.start && page.end <= d.end);
                assert!(owned, "CPU {cpu} caches {page:#x?}, which no live or pending area holds");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn lazy_purge_agrees_with_the_model(steps in proptest::collection::vec(step(), 1..60)) {
        let mut world = World::new();
        for s in &steps {
            world.apply(s);
            world.check();
        }
        while !world.live.is_empty() {
            world.apply(&Step::Drop(0));
            world.check();
        }
        world.space.purge();
        world.model_purge();
        world.check();
        prop_assert!(world.space.inv());
    }
}
