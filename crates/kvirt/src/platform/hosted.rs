//! The hosted platform: kvirt over a simulated machine from `kvirt-sim`.
//!
//! * Physical memory is the machine's RAM allocation.
//! * TLB flushes invalidate the simulated per-CPU TLBs, so a flush the
//!   library forgets shows up as a stale translation in tests.
//! * The current CPU is a per-thread setting ([`set_current_cpu`]), 0 by
//!   default, so tests can play several CPUs from several threads.
//! * Read-side sections and deferred reclamation are this module's own
//!   RCU (`hosted/rcu.rs`): a counter per thread, odd inside a section,
//!   and Linux's `membarrier` on the reclaiming side, so that entering a
//!   section costs no locked instruction (liburcu's "memb" flavour; plain
//!   fences where `membarrier` is missing). Callbacks are gathered in a
//!   batch per simulated CPU and handed over 64 at a time (handing over
//!   costs a `membarrier`, a few microseconds); deferring longer than
//!   needed is always safe. [`Platform::rcu_barrier`] hands every batch
//!   over and waits for a marker it defers after them: deferred functions
//!   run oldest first, so by then every callback queued before the barrier
//!   has run, and those other CPUs queue meanwhile do not hold it up (as a
//!   kernel's `rcu_barrier`). Batches are per CPU, each in its own cache
//!   line, so that CPUs freeing page-table nodes at once do not meet on
//!   them.
//! * A callback that panics does not stop the others: each runs under
//!   `catch_unwind` and the rest of its batch still runs, so
//!   `rcu_barrier`'s marker, deferred after the batch, runs too. No panic
//!   unwinds out of whatever thread happened to run the batch; the first
//!   one is raised again by the next [`Platform::rcu_barrier`] on this
//!   platform, once every callback queued before it has run (unless that
//!   thread is already panicking).
//! * `rcu_barrier` called inside a read-side section of its own thread
//!   panics at once: a kernel's RCU would wait there for ever.

extern crate std;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use kvirt_sim::{Machine, RegionKind};

use super::{MemoryRegion, MemoryRegionKind, Platform, RcuCallback, TlbFlushOp, TlbScope};

mod rcu;

std::thread_local! {
    static CURRENT_CPU: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread act as CPU `cpu` for every hosted platform
/// (flushes with [`TlbScope::Local`] reach that CPU's TLB).
pub fn set_current_cpu(cpu: usize) {
    CURRENT_CPU.with(|c| c.set(cpu));
}

/// A simulated machine's memory map in kvirt's terms (for any platform
/// built over a `kvirt-sim` machine).
#[must_use]
pub fn memory_map_of(machine: &Machine) -> Vec<MemoryRegion> {
    machine
        .memory_map()
        .iter()
        .map(|r| MemoryRegion {
            range: r.range.start as usize..r.range.end as usize,
            kind: match r.kind {
                RegionKind::Usable => MemoryRegionKind::Usable,
                RegionKind::Reserved => MemoryRegionKind::Reserved,
                RegionKind::Device => MemoryRegionKind::Device,
            },
        })
        .collect()
}

/// The platform of a simulated machine.
pub struct SimPlatform {
    machine: Arc<Machine>,
    /// Per CPU: callbacks queued but not yet handed over to the RCU.
    batches: Vec<CachePadded<std::sync::Mutex<Vec<RcuCallback>>>>,
    /// The first panic of a callback not yet raised again by `rcu_barrier`.
    callback_panic: Arc<std::sync::Mutex<Option<PanicPayload>>>,
}

/// What a panic carries.
type PanicPayload = Box<dyn Any + Send>;

/// Callbacks handed over to the RCU at once.
const RCU_BATCH: usize = 64;

impl core::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimPlatform").field("machine", &self.machine).finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// A platform over `machine`.
    ///
    /// # Safety
    ///
    /// The platform promises [`Platform`]'s contract for the machine, which
    /// only the caller can make true:
    ///
    /// 1. No other platform is, or will be, built over the same machine.
    /// 2. Nothing but the kernel space built on this platform writes the
    ///    machine's `Usable` RAM, and nothing reads the parts of it that
    ///    kvirt keeps for itself (frame metadata, page-table nodes, free
    ///    pages), whether by physical address (`Machine::write_phys` and
    ///    the like) or through a CPU, except memory that the space has
    ///    handed out (see [`KernelSpace::machine`](crate::kspace::KernelSpace::machine)).
    ///
    /// A second platform over a space's machine would let a second space
    /// overwrite the first one's page tables and metadata; it takes an
    /// `unsafe` block:
    ///
    /// ```compile_fail,E0133
    /// use std::sync::Arc;
    /// use kvirt::platform::hosted::SimPlatform;
    /// use kvirt::sim::{Machine, MachineConfig};
    ///
    /// let platform = SimPlatform::new(Arc::new(Machine::new(MachineConfig::new(4 << 20))));
    /// ```
    #[must_use]
    pub unsafe fn new(machine: Arc<Machine>) -> Self {
        let cpus = machine.nr_cpus();
        Self {
            machine,
            batches: (0..cpus).map(|_| CachePadded::new(std::sync::Mutex::new(Vec::new()))).collect(),
            callback_panic: Arc::default(),
        }
    }

    /// The simulated machine.
    #[must_use]
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The machine's memory map in kvirt's terms.
    #[must_use]
    pub fn memory_map(&self) -> Vec<MemoryRegion> {
        memory_map_of(&self.machine)
    }
}

impl SimPlatform {
    /// Defers the batched callbacks through the RCU: they run once every
    /// read-side section open now has ended, which includes every section
    /// that began before any of them was queued.
    fn hand_over_batch(&self, cpu: usize) {
        let batch = core::mem::take(&mut *lock(&self.batches[cpu]));
        if batch.is_empty() {
            return;
        }
        let callback_panic = self.callback_panic.clone();
        rcu::defer(Box::new(move || {
            for callback in batch {
                // A panic does not stop the batch (see the module docs). The
                // callback is consumed either way; any state it shares is
                // left as after any other panic.
                if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback)) {
                    lock(&callback_panic).get_or_insert(payload);
                }
            }
        }));
    }
}

/// Locks `mutex`, poisoned or not: whatever panicked while holding it
/// left a consistent value (each critical section of the hosted platform,
/// here and in `rcu`, is one push, pop, take, insert, retain or snapshot).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// SAFETY:
// 1. `ram_base()` is fixed for the machine's life, covers all its RAM
//    (the memory map's Usable and Reserved regions) and supports atomics;
//    the platform keeps the machine alive.
// 2. The simulated RAM is touched only through kvirt and through accesses
//    to memory kvirt handed out: the promise of whoever called the
//    `unsafe` `SimPlatform::new`.
// 3. Simulated TLB flushes complete before returning.
// 4. Callbacks are deferred through `hosted/rcu.rs`: they run once every
//    read-side section open when their batch was handed over has ended
//    (its module docs give the argument); sections are per thread, so
//    they cannot migrate.
// 5. Only `rcu_barrier` panics (on a read-side section open for 30 s, or
//    to pass on a callback's panic); the mutexes are taken through
//    poisoning.
unsafe impl Platform for SimPlatform {
    fn phys_base(&self) -> NonNull<u8> {
        self.machine.ram_base()
    }

    fn flush_tlb(&self, op: TlbFlushOp, scope: TlbScope) {
        // The CPUs as a slice and the operation matched once: what a
        // benchmark's peer calls on the simulated CPUs directly, with no
        // more around it.
        let cpus = self.machine.cpus();
        let cpus = match scope {
            TlbScope::Local => core::slice::from_ref(&cpus[self.current_cpu()]),
            TlbScope::AllCpus => cpus,
        };
        match op {
            TlbFlushOp::Page(va) => cpus.iter().for_each(|cpu| cpu.flush_page(va)),
            TlbFlushOp::Range(range) => cpus.iter().for_each(|cpu| cpu.flush_range(range.clone())),
            TlbFlushOp::All => cpus.iter().for_each(kvirt_sim::Cpu::flush_all),
        }
    }

    fn current_cpu(&self) -> usize {
        CURRENT_CPU.with(Cell::get).min(self.machine.nr_cpus() - 1)
    }

    #[inline]
    fn rcu_read_lock(&self) {
        rcu::read_lock();
    }

    #[inline]
    unsafe fn rcu_read_unlock(&self) {
        rcu::read_unlock();
    }

    fn call_rcu(&self, callback: RcuCallback) {
        let cpu = self.current_cpu();
        let full = {
            let mut batch = lock(&self.batches[cpu]);
            batch.push(callback);
            batch.len() >= RCU_BATCH
        };
        if full {
            self.hand_over_batch(cpu);
        }
    }

    fn rcu_barrier(&self) {
        // A kernel's RCU would wait for the caller's own section forever;
        // say so at once, whether or not a callback is pending.
        assert!(!rcu::in_section(), "rcu_barrier inside a read-side section would wait for that section");
        (0..self.batches.len()).for_each(|cpu| self.hand_over_batch(cpu));
        // Deferred functions run oldest first (`rcu::poll`): once this
        // marker has run, so has every batch handed over before it, which
        // holds every callback queued before the barrier. Waiting for no
        // callback to be pending instead would also wait for those that
        // other CPUs queue meanwhile, in batches no one hands over: for as
        // long as they go on.
        let done = Arc::new(AtomicBool::new(false));
        let marker = done.clone();
        rcu::defer(Box::new(move || marker.store(true, Ordering::Release)));
        let started = Instant::now();
        while !done.load(Ordering::Acquire) {
            rcu::poll();
            if started.elapsed() > Duration::from_secs(30) {
                panic!("rcu_barrier: a read-side section has not ended for 30 s");
            }
            std::thread::yield_now();
        }
        if !std::thread::panicking() {
            let payload = lock(&self.callback_panic).take();
            if let Some(payload) = payload {
                std::panic::resume_unwind(payload);
            }
        }
    }
}

/// The simulator's walker for paging format `F`, if it has one.
pub(crate) fn sim_paging<F: crate::arch::PagingFormat>() -> Option<kvirt_sim::Paging> {
    use core::any::TypeId;

    use crate::arch::{aarch64::Aarch64, riscv, x86_64::X86_64};
    let f = TypeId::of::<F>();
    [
        (TypeId::of::<X86_64>(), kvirt_sim::Paging::X86_64),
        (TypeId::of::<riscv::Sv39>(), kvirt_sim::Paging::Sv39),
        (TypeId::of::<riscv::Sv48>(), kvirt_sim::Paging::Sv48),
        (TypeId::of::<Aarch64>(), kvirt_sim::Paging::Aarch64),
    ]
    .into_iter()
    .find_map(|(t, paging)| (t == f).then_some(paging))
}

#[cfg(test)]
mod tests {
    use alloc::string::String;
    use core::sync::atomic::AtomicUsize;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;

    /// The message of a panic payload.
    fn message(payload: &(dyn core::any::Any + Send)) -> String {
        match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
            (Some(s), _) => String::from(*s),
            (_, Some(s)) => s.clone(),
            _ => String::from("(not a string)"),
        }
    }

    #[test]
    fn a_panicking_callback_neither_stops_the_others_nor_holds_up_rcu_barrier() {
        // SAFETY: a new machine; the test only queues callbacks on it.
        let platform =
            unsafe { SimPlatform::new(Arc::new(Machine::new(kvirt_sim::MachineConfig::new(16 << 20)))) };
        let ran = Arc::new(AtomicUsize::new(0));
        for i in 0..3 {
            let ran = ran.clone();
            platform.call_rcu(Box::new(move || {
                assert_ne!(i, 1, "the second callback panics");
                ran.fetch_add(1, Ordering::SeqCst);
            }));
        }
        let started = Instant::now();
        // The panic surfaces in `rcu_barrier`, wherever the batch ran.
        let payload = catch_unwind(AssertUnwindSafe(|| platform.rcu_barrier()))
            .expect_err("the callback's panic is raised again by rcu_barrier");
        assert!(message(&*payload).contains("the second callback panics"), "{}", message(&*payload));
        assert!(started.elapsed() < Duration::from_secs(10), "rcu_barrier waited {:?}", started.elapsed());
        assert_eq!(ran.load(Ordering::SeqCst), 2, "the callbacks batched with the panicking one ran");
        // Raised once: the platform goes on as usual.
        let ran_later = Arc::new(AtomicUsize::new(0));
        let r = ran_later.clone();
        platform.call_rcu(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        platform.rcu_barrier();
        assert_eq!(ran_later.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(10), "rcu_barrier waited {:?}", started.elapsed());
    }

    #[test]
    fn rcu_barrier_waits_for_the_callbacks_queued_before_it_not_for_those_queued_meanwhile() {
        // SAFETY: a new machine; the test only queues callbacks on it.
        let platform = Arc::new(unsafe {
            SimPlatform::new(Arc::new(Machine::new(kvirt_sim::MachineConfig::new(16 << 20))))
        });
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        platform.call_rcu(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        // A reader holds the barrier up until a callback has been queued
        // while it waits (once it has handed the batches over), in a batch
        // no one hands over.
        let (reader, leave) = rcu::reader_in_section();
        let ran_meanwhile = Arc::new(AtomicBool::new(false));
        let meanwhile = {
            let (platform, ran_meanwhile) = (platform.clone(), ran_meanwhile.clone());
            std::thread::spawn(move || {
                while !lock(&platform.batches[0]).is_empty() {
                    std::thread::yield_now();
                }
                platform.call_rcu(Box::new(move || ran_meanwhile.store(true, Ordering::SeqCst)));
                leave.send(()).unwrap();
            })
        };
        let started = Instant::now();
        platform.rcu_barrier();
        let waited = started.elapsed();
        meanwhile.join().unwrap();
        reader.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the callback queued before the barrier ran");
        assert!(waited < Duration::from_secs(10), "rcu_barrier waited {waited:?}");
        assert!(!ran_meanwhile.load(Ordering::SeqCst), "the one queued meanwhile waits for the next barrier");
        platform.rcu_barrier();
        assert!(ran_meanwhile.load(Ordering::SeqCst), "the next barrier runs it");
    }

    #[test]
    fn rcu_barrier_inside_a_read_side_section_panics_at_once_and_leaves_the_section_intact() {
        // SAFETY: a new machine; the test only queues callbacks on it.
        let platform =
            unsafe { SimPlatform::new(Arc::new(Machine::new(kvirt_sim::MachineConfig::new(16 << 20)))) };
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        platform.call_rcu(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        platform.rcu_read_lock();
        let started = Instant::now();
        let payload = catch_unwind(AssertUnwindSafe(|| platform.rcu_barrier()))
            .expect_err("a barrier inside a section would wait for it");
        assert!(message(&*payload).contains("inside a read-side section"), "{}", message(&*payload));
        assert!(started.elapsed() < Duration::from_secs(10), "rcu_barrier waited {:?}", started.elapsed());
        assert!(rcu::in_section(), "the section is still open");
        // SAFETY: this test began the section above, on this thread.
        unsafe { platform.rcu_read_unlock() };
        assert!(!rcu::in_section());
        platform.rcu_barrier();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the callback ran once the section ended");
    }
}
