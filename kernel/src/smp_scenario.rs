//! The checks across CPUs, run once every CPU is online.
//!
//! 1. **Stress.** Every CPU at once creates areas (random sizes, tracked
//!    and untracked), writes and reads them back, queries them, splits
//!    them and drops them; it publishes some on a shared board, from which
//!    every CPU reads (through the area's own mapping) and drops them, so
//!    an area is often dropped on a CPU other than the one that made it.
//!    Page-table nodes empty and are reclaimed under the other CPUs'
//!    queries and MMU walks.
//! 2. **Raw cursors.** Every CPU maps, queries and unmaps pages through
//!    cursors of one shared page table: in its own GiB, and in a 2 MiB
//!    region whose pages the CPUs own in turn (so their cursors lock the
//!    same leaf node), while kvirt's lock-free walk reads the others'.
//! 3. **Grace periods.** With a reader inside a read-side section on each
//!    other CPU in turn, a callback queued on the bootstrap CPU does not
//!    run until that reader leaves, and has run after a barrier.
//! 4. **Stale TLB.** Pairs of CPUs, many times over: A reads an area
//!    (caching its translation), B drops the area, A reads again and must
//!    fault. Eager drops shoot the translation down at once; lazy ones
//!    at the purge, after which A must fault too.
//! 5. **Churn.** 1-page areas created and dropped, eager and lazy, on one
//!    CPU and on all of them: TSC cycles per create+drop, shoot-downs
//!    and IPIs per 1000 drops.
//!
//! At the end the free frames, page-table frames and VMALLOC are back at
//! their starting values and kvirt's invariants hold.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use kvirt::frame::{AnyFrameMeta, Frame};
use kvirt::kspace::{KVirtArea, MappedItemRef, PurgeMode};
use kvirt::page_table::{KernelPtConfig, MappedItem, PageTable, PageTableFrag};
use kvirt::spec::Inv;
use kvirt::{Paddr, Vaddr, PAGE_SIZE};

use crate::percpu::{self, MAX_CPUS};
use crate::rcu::Rcu;
use crate::steps::{alloc_frames, expect_fault, rw, uncached, Rng, Snapshot, Space};
use crate::{check, cpu, platform, println, probe, smp};

const P: usize = PAGE_SIZE;
/// Operations of the stress step, per CPU, with eager and with lazy purge
/// (eager drops cost a shoot-down each, which is slow when QEMU runs more
/// CPUs than the host has cores).
const STRESS_OPS: [(&str, usize); 2] = [("eager", 1000), ("lazy", 3000)];
/// Operations of the raw-cursor step, per CPU.
const CURSOR_OPS: usize = 4000;
/// Rounds of the stale-TLB check per pair of CPUs, in each purge mode.
const STALE_ROUNDS: usize = 150;
/// Create+drop pairs of each churn row, shared among its CPUs. Not
/// [`scaled`](crate::scaled) under KVM: a lazy row's few purges must stay
/// far below eager's one flush per drop for the check to mean something.
const CHURN_OPS: usize = 2000;
/// Where the untracked areas point: unbacked physical space above 4 GiB
/// (and above the RAM of any machine the kernel accepts).
const UNTRACKED_BASE: Paddr = 64 << 30;
/// The shared page table's window for the raw-cursor step (never loaded
/// into CR3: only kvirt's cursors and walks use it).
const WINDOW: Vaddr = 0xffff_c000_0000_0000;
const SZ_2M: usize = 2 << 20;
const SZ_1G: usize = 1 << 30;

type Area = KVirtArea<crate::Layout>;

/// Runs the five steps and the final check.
pub fn run(space: &'static Space) {
    let cpus = percpu::online();
    let start = Snapshot::take(space);
    let ipis_before = totals();
    println!("[smp 1/6] {}", stress(space, cpus));
    println!("[smp 2/6] {}", raw_cursors(space, cpus));
    println!("[smp 3/6] {}", grace_periods(cpus));
    println!("[smp 4/6] {}", stale_tlb(space, cpus));
    churn(space, cpus);
    let end = Snapshot::take(space);
    check!(end == start, "usage after the SMP steps differs: {end:?} != {start:?}");
    space.check().unwrap_or_else(|e| panic!("kvirt's invariants are broken after the SMP steps: {e}"));
    println!("[smp 6/6] everything returned on {cpus} CPUs: {end:?}; kvirt's invariants hold");
    let (sent, received) = totals();
    println!(
        "kvirt-kernel: report: {} shoot-downs sent, {} IPIs received since the SMP steps began",
        sent - ipis_before.0,
        received - ipis_before.1
    );
    for cpu in 0..cpus {
        let data = percpu::of(cpu);
        println!(
            "    CPU {cpu} (APIC {}): {} operations, {} shoot-downs sent, {} IPIs received",
            data.apic_id.load(Ordering::Relaxed),
            data.ops.load(Ordering::Relaxed),
            data.shootdowns_sent.load(Ordering::Relaxed),
            data.ipis_received.load(Ordering::Relaxed)
        );
    }
}

/// Shoot-downs sent and IPIs received, over every CPU.
fn totals() -> (u64, u64) {
    (0..percpu::online()).fold((0, 0), |(s, r), cpu| {
        let data = percpu::of(cpu);
        (s + data.shootdowns_sent.load(Ordering::Relaxed), r + data.ipis_received.load(Ordering::Relaxed))
    })
}

/// Spins until `phase` holds `value` (interrupts stay on: the other CPUs'
/// shoot-downs still reach this one).
fn wait_for(phase: &AtomicU32, value: u32) {
    while phase.load(Ordering::SeqCst) != value {
        core::hint::spin_loop();
    }
}

fn count_op() {
    percpu::this().ops.fetch_add(1, Ordering::Relaxed);
}

/// An area a CPU holds in the stress step, and what it should map.
struct Live {
    area: Area,
    /// What each page of `area.mapped_range()` maps.
    pas: Vec<Paddr>,
    /// Tracked RAM (written with `seed`) or unbacked untracked space.
    tracked: bool,
    /// Page `i` of the area holds `word(seed, first_page + i)`.
    seed: u64,
    /// After splits: the index of this part's first page in the area it
    /// was split from.
    first_page: usize,
}

fn word(seed: u64, page: usize) -> u64 {
    seed ^ (page as u64).wrapping_mul(0x9e37_79b9)
}

impl Live {
    fn tracked(space: &Space, rng: &mut Rng, seed: u64) -> Self {
        let pages = 1 + rng.below(8);
        let offset = rng.below(2) * P;
        let frames = alloc_frames(space, pages);
        let pas = frames.iter().map(Frame::paddr).collect();
        let area = Area::map_frames(offset + pages * P + rng.below(2) * P, offset, frames, rw());
        let live = Live { area, pas, tracked: true, seed, first_page: 0 };
        for page in 0..pages {
            let va = live.area.mapped_range().start + page * P;
            // SAFETY: a page of tracked RAM this CPU's area maps RW and
            // nothing else reads until the area is published.
            unsafe { (va as *mut u64).write_volatile(word(seed, page)) };
        }
        live
    }

    fn untracked(rng: &mut Rng, cpu: usize) -> Self {
        let pages = 1 + rng.below(4);
        let pa = UNTRACKED_BASE + cpu * SZ_1G + rng.below(256) * P;
        // SAFETY: unbacked physical space above all RAM: no Rust object
        // owns it; the step only queries the mapping.
        let area = unsafe { Area::map_untracked_frames(pages * P, 0, pa..pa + pages * P, uncached()) };
        Live { area, pas: (0..pages).map(|i| pa + i * P).collect(), tracked: false, seed: 0, first_page: 0 }
    }

    /// Checks every page through `query` and, for RAM, by reading it.
    fn check(&self) {
        let mapped = self.area.mapped_range();
        check!(
            mapped.len() == self.pas.len() * P,
            "the area maps {mapped:#x?}, not {} pages",
            self.pas.len()
        );
        for (page, &pa) in self.pas.iter().enumerate() {
            let va = mapped.start + page * P;
            let got = match self.area.query(va) {
                Some(MappedItemRef::Tracked(frame, _)) => Some((frame.paddr(), true)),
                Some(MappedItemRef::Untracked(pa, ..)) => Some((pa, false)),
                None => None,
            };
            check!(got == Some((pa, self.tracked)), "query at {va:#x} gave {got:x?}, not {pa:#x}");
            if self.tracked {
                // SAFETY: tracked RAM mapped by an area that is alive while
                // `self` is borrowed; its creator wrote it before anyone
                // else could see it, and nobody writes it since.
                let value = unsafe { (va as *const u64).read_volatile() };
                check!(
                    value == word(self.seed, self.first_page + page),
                    "page {page} of {va:#x} reads {value:#x}"
                );
            }
        }
    }

    /// Splits after mapped page `k` (0 < k < pages).
    fn split(self, k: usize) -> (Live, Live) {
        let offset = self.area.mapped_range().start + k * P - self.area.start();
        let (a, b) = self.area.split(offset);
        let (first, second) = self.pas.split_at(k);
        let (tracked, seed, first_page) = (self.tracked, self.seed, self.first_page);
        (
            Live { area: a, pas: first.to_vec(), tracked, seed, first_page },
            Live { area: b, pas: second.to_vec(), tracked, seed, first_page: first_page + k },
        )
    }
}

/// Step 1 (see the module documentation), once with eager and once with
/// lazy purge.
fn stress(space: &Space, cpus: usize) -> alloc::string::String {
    let mut parts = Vec::new();
    for (name, ops) in STRESS_OPS {
        let mode = if name == "lazy" { PurgeMode::lazy_for_cpus(cpus) } else { PurgeMode::Eager };
        space.set_purge_mode(mode);
        parts.push(alloc::format!("{name}: {}", stress_in(space, cpus, ops)));
        space.set_purge_mode(PurgeMode::Eager);
    }
    alloc::format!(
        "{cpus} CPUs created, wrote, read, queried, split and dropped areas at once; {}",
        parts.join("; ")
    )
}

/// One run of step 1: `ops` operations on each CPU.
fn stress_in(space: &Space, cpus: usize, ops: usize) -> alloc::string::String {
    let board: spin::Mutex<Vec<Arc<Live>>> = spin::Mutex::new(Vec::new());
    let (splits, cross_reads, cross_drops) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let start = cpu::rdtsc();
    smp::on_every_cpu(&|cpu| {
        let mut rng = Rng::new(0x5eed + cpu as u64);
        let mut mine: Vec<Live> = Vec::new();
        for i in 0..crate::scaled(ops) {
            let seed = ((cpu as u64) << 40) ^ (i as u64) ^ 0x00ab_cdef_0000;
            match rng.below(12) {
                0..=2 => mine.push(Live::tracked(space, &mut rng, seed)),
                3 => mine.push(Live::untracked(&mut rng, cpu)),
                4 | 5 if !mine.is_empty() => mine[rng.below(mine.len())].check(),
                6 if !mine.is_empty() => {
                    let live = mine.swap_remove(rng.below(mine.len()));
                    if live.pas.len() >= 2 {
                        let k = 1 + rng.below(live.pas.len() - 1);
                        let (a, b) = live.split(k);
                        a.check();
                        b.check();
                        mine.extend([a, b]);
                        splits.fetch_add(1, Ordering::Relaxed);
                    } else {
                        mine.push(live);
                    }
                }
                7 if !mine.is_empty() => {
                    let live = mine.swap_remove(rng.below(mine.len()));
                    board.lock().push(Arc::new(live));
                }
                8 | 9 => {
                    let entry = {
                        let board = board.lock();
                        (!board.is_empty()).then(|| board[rng.below(board.len())].clone())
                    };
                    if let Some(entry) = entry {
                        entry.check();
                        cross_reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                10 => {
                    let entry = {
                        let mut board = board.lock();
                        let len = board.len();
                        (len != 0).then(|| board.swap_remove(rng.below(len)))
                    };
                    if entry.is_some() {
                        cross_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ if !mine.is_empty() => drop(mine.swap_remove(rng.below(mine.len()))),
                _ => {}
            }
            count_op();
        }
    });
    let cycles = cpu::rdtsc() - start;
    board.lock().clear();
    alloc::format!(
        "{} operations in {} M TSC cycles, {} splits, {} reads of areas on the shared board, {} areas dropped off \
         it (often not by their maker)",
        cpus * crate::scaled(ops),
        cycles / 1_000_000,
        splits.load(Ordering::Relaxed),
        cross_reads.load(Ordering::Relaxed),
        cross_drops.load(Ordering::Relaxed)
    )
}

/// Step 2 (see the module documentation).
fn raw_cursors(space: &Space, cpus: usize) -> alloc::string::String {
    let pt = PageTable::<KernelPtConfig>::empty_in(space).expect("a page table");
    let hot = WINDOW;
    let pools: Vec<Vec<Frame<dyn AnyFrameMeta>>> =
        (0..cpus).map(|_| alloc_frames(space, 16).into_iter().map(Frame::into_dyn).collect()).collect();
    let walked = AtomicUsize::new(0);
    smp::on_every_cpu(&|cpu| {
        let mut rng = Rng::new(0xc0de + cpu as u64);
        let own = WINDOW + (1 + cpu) * SZ_1G;
        let pool = &pools[cpu];
        let mut model: BTreeMap<Vaddr, Paddr> = BTreeMap::new();
        let page = |rng: &mut Rng| {
            if rng.below(2) == 0 {
                // A hot page: the CPUs own the region's pages in turn.
                hot + (rng.below(SZ_2M / P / cpus) * cpus + cpu) * P
            } else {
                own + rng.below(1024) * P
            }
        };
        for _ in 0..crate::scaled(CURSOR_OPS) {
            let va = page(&mut rng);
            match rng.below(4) {
                0 => {
                    let frame = pool[rng.below(pool.len())].clone();
                    let pa = frame.paddr();
                    let mut c = pt.cursor_mut(&(va..va + P)).expect("a cursor");
                    let mapped = c.try_map(MappedItem::Tracked(frame, rw())).is_ok();
                    let was_free = !model.contains_key(&va);
                    check!(mapped == was_free, "map at {va:#x}: mapped {mapped}, free {was_free}");
                    model.entry(va).or_insert(pa);
                }
                1 => {
                    let mut c = pt.cursor_mut(&(va..va + P)).expect("a cursor");
                    let got = c.take_next(P).map(|frag| match frag {
                        PageTableFrag::Mapped { item: MappedItem::Tracked(frame, _), .. } => frame.paddr(),
                        other => panic!("unmap at {va:#x} took {other:?}"),
                    });
                    check!(got == model.remove(&va), "unmap at {va:#x} took {got:x?}");
                }
                2 => {
                    let mut c = pt.cursor(&(va..va + P)).expect("a cursor");
                    let (_, item) = c.query().expect("a query");
                    let got = item.map(|item| match item {
                        MappedItemRef::Tracked(frame, _) => frame.paddr(),
                        MappedItemRef::Untracked(pa, ..) => panic!("untracked {pa:#x} at {va:#x}"),
                    });
                    check!(got == model.get(&va).copied(), "query at {va:#x} gave {got:x?}");
                }
                _ => {
                    // Another CPU's hot page, walked without locks while
                    // its owner maps, unmaps and reclaims under it.
                    let other = (cpu + 1 + rng.below(cpus.max(2) - 1)) % cpus;
                    let va = hot + (rng.below(SZ_2M / P / cpus) * cpus + other) * P;
                    if let Some((pa, _)) = pt.translate(va) {
                        check!(
                            pools[other].iter().any(|f| f.paddr() == pa),
                            "{va:#x} translates to {pa:#x}, not a frame of CPU {other}"
                        );
                        walked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            count_op();
        }
        for (&va, &pa) in &model {
            let mut c = pt.cursor_mut(&(va..va + P)).expect("a cursor");
            let got = c.take_next(P).map(|frag| match frag {
                PageTableFrag::Mapped { item: MappedItem::Tracked(frame, _), .. } => frame.paddr(),
                other => panic!("unmap at {va:#x} took {other:?}"),
            });
            check!(got == Some(pa), "the final unmap at {va:#x} took {got:x?}");
        }
    });
    let mut c = pt.cursor(&(WINDOW..WINDOW + (1 + cpus) * SZ_1G)).expect("a cursor");
    let left = c.find_next((1 + cpus) * SZ_1G);
    check!(left.is_none(), "the shared table still maps {left:x?}");
    drop(c);
    drop(pt);
    alloc::format!(
        "{cpus} CPUs ran {} map/unmap/query operations through cursors of one shared page table; {} lock-free walks \
         found another CPU's page",
        cpus * crate::scaled(CURSOR_OPS),
        walked.load(Ordering::Relaxed)
    )
}

/// Step 3 (see the module documentation).
fn grace_periods(cpus: usize) -> alloc::string::String {
    let rcu = Rcu::new();
    let phase = AtomicU32::new(0);
    let wait = |value: u32| wait_for(&phase, value);
    for reader in 1..cpus {
        let ran = Arc::new(AtomicBool::new(false));
        phase.store(0, Ordering::SeqCst);
        smp::on_every_cpu(&|cpu| {
            if cpu == reader {
                rcu.read_lock();
                phase.store(1, Ordering::SeqCst);
                wait(2);
                // SAFETY: this CPU entered the section above.
                unsafe { rcu.read_unlock() };
                phase.store(3, Ordering::SeqCst);
            } else if cpu == 0 {
                wait(1);
                let flag = ran.clone();
                rcu.call(alloc::boxed::Box::new(move || flag.store(true, Ordering::SeqCst)));
                // The reader on `reader` began before the call and is
                // still inside: nothing may run, whatever happens here.
                rcu.run_ready();
                check!(
                    !ran.load(Ordering::SeqCst),
                    "a callback ran while CPU {reader} was in a read-side section"
                );
                phase.store(2, Ordering::SeqCst);
                wait(3);
                rcu.barrier();
                check!(ran.load(Ordering::SeqCst), "the callback had not run after the barrier");
            }
        });
    }
    alloc::format!(
        "grace periods: a callback waited for a read-side section on each of the {} other CPUs, and ran after it",
        cpus - 1
    )
}

/// Step 4 (see the module documentation).
fn stale_tlb(space: &Space, cpus: usize) -> alloc::string::String {
    if cpus < 2 {
        return alloc::string::String::from("stale-TLB check skipped: one CPU");
    }
    let pairs = cpus / 2;
    let mut faults = 0;
    for mode in [PurgeMode::Eager, PurgeMode::lazy_for_cpus(cpus)] {
        let lazy = matches!(mode, PurgeMode::Lazy { .. });
        space.set_purge_mode(mode);
        let slots: [(AtomicUsize, AtomicU32); MAX_CPUS / 2] =
            [const { (AtomicUsize::new(0), AtomicU32::new(0)) }; MAX_CPUS / 2];
        let caught = AtomicUsize::new(0);
        smp::on_every_cpu(&|cpu| {
            let pair = cpu / 2;
            if pair >= pairs {
                return;
            }
            let (va_slot, phase) = &slots[pair];
            for round in 0..crate::scaled(STALE_ROUNDS) {
                if cpu % 2 == 0 {
                    // B: makes the area, lets A cache it, drops it.
                    let area = Area::map_frames(P, 0, alloc_frames(space, 1), rw());
                    let va = area.start();
                    // SAFETY: this CPU's fresh area, mapped RW.
                    unsafe { (va as *mut u64).write_volatile(round as u64) };
                    va_slot.store(va, Ordering::SeqCst);
                    phase.store(1, Ordering::SeqCst);
                    wait_for(phase, 2);
                    drop(area);
                    if lazy {
                        space.purge();
                    }
                    phase.store(3, Ordering::SeqCst);
                    wait_for(phase, 0);
                } else {
                    // A: reads the area, then reads it again after the drop.
                    wait_for(phase, 1);
                    let va = va_slot.load(Ordering::SeqCst);
                    // SAFETY: B keeps the area alive until phase 2.
                    let value = unsafe { probe::read_u64(va) };
                    check!(value == Ok(round as u64), "round {round}: CPU {cpu} read {value:x?} at {va:#x}");
                    phase.store(2, Ordering::SeqCst);
                    wait_for(phase, 3);
                    // SAFETY: the area is gone: the read must fault (checked);
                    // were the translation stale it would read a freed frame,
                    // which only this check would observe.
                    let after = unsafe { probe::read_u64(va) };
                    let fault = expect_fault(after, va, "a read on another CPU after the drop");
                    check!(!fault.present(), "the dropped area faults as not present: {fault}");
                    caught.fetch_add(1, Ordering::Relaxed);
                    phase.store(0, Ordering::SeqCst);
                }
                count_op();
            }
        });
        space.set_purge_mode(PurgeMode::Eager);
        faults += caught.load(Ordering::Relaxed);
    }
    alloc::format!(
        "stale TLB: {faults} times a CPU cached an area's translation, another CPU dropped the area (eager, and \
         lazy then purged), and the first CPU's next read faulted"
    )
}

/// One churn row: `workers` CPUs share [`CHURN_OPS`] create+drop pairs.
struct ChurnRow {
    cycles_per_op: u64,
    flushes_per_1000: u64,
    shootdowns_per_1000: u64,
    ipis_per_1000: u64,
}

fn churn_row(space: &Space, mode: PurgeMode, workers: usize) -> ChurnRow {
    space.set_purge_mode(mode);
    let per_cpu = CHURN_OPS / workers;
    let ops = (per_cpu * workers) as u64;
    let (flushes, (sent, received)) = (platform::flushes(), totals());
    let start = cpu::rdtsc();
    smp::on_every_cpu(&|cpu| {
        if cpu < workers {
            for _ in 0..per_cpu {
                drop(Area::map_frames(P, 0, alloc_frames(space, 1), rw()));
            }
        }
    });
    // A lazy run ends with its purge, which belongs to its cost.
    space.purge();
    let cycles = cpu::rdtsc() - start;
    space.set_purge_mode(PurgeMode::Eager);
    let (sent_after, received_after) = totals();
    ChurnRow {
        cycles_per_op: cycles / ops,
        flushes_per_1000: (platform::flushes() - flushes) as u64 * 1000 / ops,
        shootdowns_per_1000: (sent_after - sent) * 1000 / ops,
        ipis_per_1000: (received_after - received) * 1000 / ops,
    }
}

/// Step 5 (see the module documentation).
fn churn(space: &Space, cpus: usize) {
    println!("[smp 5/6] 1-page create+drop churn, {CHURN_OPS} pairs per row, {cpus} CPUs online:");
    println!("    purge  CPUs  TSC cycles per pair  flushes/1000  shoot-downs/1000  IPIs/1000");
    let mut rows = Vec::new();
    let workers = if cpus == 1 { &[1][..] } else { &[1, cpus][..] };
    for &workers in workers {
        for (name, mode) in [("eager", PurgeMode::Eager), ("lazy", PurgeMode::lazy_for_cpus(cpus))] {
            let row = churn_row(space, mode, workers);
            println!(
                "    {name:<5}  {workers:>4}  {:>19}  {:>12}  {:>16}  {:>9}",
                row.cycles_per_op, row.flushes_per_1000, row.shootdowns_per_1000, row.ipis_per_1000
            );
            rows.push((name, workers, row));
        }
    }
    let find =
        |name: &str, workers: usize| rows.iter().find(|(n, w, _)| *n == name && *w == workers).map(|r| &r.2);
    // The flush counts do not depend on timing: checked for every number of
    // working CPUs (with other CPUs online each flush is a shoot-down). The
    // speed-ups are measurements (QEMU's timing is only relative).
    for &workers in workers {
        if let (Some(eager), Some(lazy)) = (find("eager", workers), find("lazy", workers)) {
            check!(
                lazy.flushes_per_1000 * 50 <= eager.flushes_per_1000
                    && lazy.shootdowns_per_1000 * 50 <= eager.shootdowns_per_1000,
                "{workers} CPUs: lazy purge flushed {} times and shot down {} times per 1000 drops, eager {} and {}",
                lazy.flushes_per_1000,
                lazy.shootdowns_per_1000,
                eager.flushes_per_1000,
                eager.shootdowns_per_1000
            );
        }
    }
    if let (Some(eager), Some(lazy), Some(lazy_one)) =
        (find("eager", cpus), find("lazy", cpus), find("lazy", 1))
    {
        println!(
            "    on {cpus} CPUs lazy is {}.{:02}x as fast as eager; {cpus} CPUs churn lazily at {}.{:02}x the \
             throughput of one",
            eager.cycles_per_op / lazy.cycles_per_op.max(1),
            eager.cycles_per_op * 100 / lazy.cycles_per_op.max(1) % 100,
            lazy_one.cycles_per_op / lazy.cycles_per_op.max(1),
            lazy_one.cycles_per_op * 100 / lazy.cycles_per_op.max(1) % 100,
        );
    }
}
