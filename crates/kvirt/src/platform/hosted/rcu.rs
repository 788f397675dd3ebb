//! The hosted platform's RCU: a counter per thread, and asymmetric fences.
//!
//! Every thread that enters a read-side section registers a slot holding a
//! counter, odd while the thread is inside a section and even outside; the
//! outermost entry and exit each add one. Deferring a function (`defer`)
//! snapshots every slot after a full memory barrier on every thread of the
//! process; the function runs (`poll`) once each slot that was odd in the
//! snapshot has moved on, that is, once every section open at the snapshot
//! has ended. Sections begun after the snapshot cannot see what the
//! deferring thread unlinked before it.
//!
//! ```text
//!   reader                          reclaimer
//!   slot = odd                      unlink the node
//!   (compiler fence)                heavy fence: a barrier on every thread
//!   read the table ...              snapshot: the odd slots
//!   slot = even   (Release)   ...   run once each has changed (Acquire)
//! ```
//!
//! Why a reader needs no fence of its own: the heavy fence is Linux's
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which runs a full
//! barrier on every CPU running a thread of the process before it returns.
//! If that barrier fell after the reader's entry store, the snapshot sees
//! the slot odd and waits for it; if before, every read of the section
//! comes after the barrier, so after the unlink, and cannot reach the
//! unlinked node. Where `membarrier` is missing (other systems, old
//! kernels, Miri), both sides use a `SeqCst` fence instead, the usual
//! store-buffering argument. This is liburcu's "memb" flavour; it makes a
//! read-side section a thread-local increment and two stores, where an
//! epoch pin (crossbeam-epoch, which this replaced) costs a locked
//! instruction on every entry: the hosted bench then measures kvirt's
//! page table rather than its stand-in for a kernel's RCU (a kernel's is
//! often just a preemption count).
//!
//! A thread's read-side state is a thread-local without a destructor, so
//! entering and leaving a section is a few plain instructions, with no
//! check that the thread-local is still alive. A second thread-local,
//! `RELEASE`, exists for its destructor alone: when the thread's
//! thread-locals are destroyed it takes the slot out of the registry and
//! keeps it for the next new thread. Slots are never freed (at most one per
//! thread alive at once); a reused slot's count goes on from where it stood,
//! so a snapshot of its former thread still sees it move.
//!
//! A section entered on a thread whose thread-locals are gone, or still
//! open when they go (a guard kept in another thread-local, whose
//! destructor may still read the table), counts as an "outsider" in a
//! shared counter, and no deferred function runs while that counter is
//! above zero. So a guard leaked for good on a thread that then exits
//! stops reclamation for good, as it would on a thread that lives on.

extern crate std;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cell::Cell;
use core::sync::atomic::{fence, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};

use crossbeam_utils::CachePadded;

use super::lock;

/// A thread's counter: odd while it is inside a read-side section.
type Slot = CachePadded<AtomicUsize>;

/// Every registered thread's slot.
static REGISTRY: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());
/// Slots of threads that are gone, for new threads (always even).
static SPARE: Mutex<Vec<&'static Slot>> = Mutex::new(Vec::new());
/// Sections open on threads without thread-locals (see the module docs).
static OUTSIDERS: AtomicUsize = AtomicUsize::new(0);
/// Deferred functions waiting for their grace period, oldest first.
static WAITING: Mutex<VecDeque<Deferred>> = Mutex::new(VecDeque::new());
/// Held while deferred functions run: one runner at a time, and a
/// function that defers or polls again does not wait for itself.
static RUNNER: Mutex<()> = Mutex::new(());

std::thread_local! {
    /// The thread's read-side state. No destructor: it lasts as long as
    /// the thread, through other thread-locals' destructors too.
    static STATE: State = const { State { depth: Cell::new(0), slot: Cell::new(None) } };
    /// Only its destructor matters (see the module docs).
    static RELEASE: Release = const { Release };
}

/// A thread's read-side state.
struct State {
    /// Open sections (they nest); only the outermost touches the slot or
    /// the outsider count.
    depth: Cell<usize>,
    /// The thread's registered slot: `None` before its first section, and
    /// after its thread-locals are gone (its sections are outsiders then).
    slot: Cell<Option<&'static Slot>>,
}

/// Hands the thread's slot back when its thread-locals are destroyed.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        STATE.with(|state| {
            let Some(slot) = state.slot.take() else { return };
            if state.depth.get() > 0 {
                // A section still open as the thread-locals go: a guard kept
                // in another thread-local, whose destructor may still read
                // the table, or one leaked for good. It goes on as an
                // outsider, which every deferred function waits for, before
                // the slot says it ended; its exit, with no slot, counts it
                // down.
                OUTSIDERS.fetch_add(1, Ordering::SeqCst);
                slot.store(slot.load(Ordering::Relaxed) + 1, Ordering::Release);
            }
            lock(&REGISTRY).retain(|s| !core::ptr::eq(*s, slot));
            lock(&SPARE).push(slot);
        });
    }
}

/// A function waiting for the sections open when it was deferred.
struct Deferred {
    /// The odd slots of the snapshot and their counts.
    open: Vec<(&'static Slot, usize)>,
    run: Box<dyn FnOnce() + Send>,
}

impl Deferred {
    /// Whether every section the snapshot saw open has ended, and no
    /// outsider's is open. The slots are read first: a slot that moved
    /// because its thread's locals went made its sections outsiders
    /// before (`Release::drop`), which the Acquire load makes visible here.
    fn ready(&self) -> bool {
        self.open.iter().all(|(slot, count)| slot.load(Ordering::Acquire) != *count)
            && OUTSIDERS.load(Ordering::Acquire) == 0
    }
}

/// How the fences are made, decided once.
static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
/// `membarrier` works: readers need only a compiler fence.
const ASYMMETRIC: u8 = 1;
/// Both sides use `SeqCst` fences.
const SYMMETRIC: u8 = 2;

/// The fence mode, registering with `membarrier` on the first call.
#[inline]
fn mode() -> u8 {
    match MODE.load(Ordering::Relaxed) {
        UNKNOWN => decide_mode(),
        mode => mode,
    }
}

#[cold]
#[inline(never)]
fn decide_mode() -> u8 {
    let found = if membarrier::register() { ASYMMETRIC } else { SYMMETRIC };
    // The first answer stands for good, for every thread (registering the
    // process twice is harmless).
    match MODE.compare_exchange(UNKNOWN, found, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => found,
        Err(first) => first,
    }
}

/// The reader's side of the fence pair. A thread decides the mode before
/// its first section (`enter_unregistered`), so it is known here; anything
/// but `ASYMMETRIC` would get the full fence anyway.
#[inline]
fn light_fence() {
    if MODE.load(Ordering::Relaxed) == ASYMMETRIC {
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The reclaimer's side: a full barrier on every thread of the process.
fn heavy_fence() {
    if mode() == ASYMMETRIC {
        // Readers rely on it: going on without it would free memory a
        // reader may still see.
        assert!(membarrier::barrier(), "membarrier failed after the process registered for it");
    } else {
        fence(Ordering::SeqCst);
    }
}

/// Enters a read-side section.
#[inline]
pub(super) fn read_lock() {
    STATE.with(|state| {
        let depth = state.depth.get();
        if depth == 0 {
            let Some(slot) = state.slot.get() else { return enter_unregistered(state) };
            enter(slot);
        }
        state.depth.set(depth + 1);
    });
}

/// Whether the calling thread is inside a read-side section.
pub(super) fn in_section() -> bool {
    STATE.try_with(|state| state.depth.get() > 0).unwrap_or(false)
}

/// Makes `slot`, the calling thread's, odd.
#[inline]
fn enter(slot: &Slot) {
    // Only this thread writes its slot.
    slot.store(slot.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    light_fence();
}

/// The outermost entry of a thread with no slot: its first section, or one
/// after its thread-locals are gone.
#[cold]
fn enter_unregistered(state: &State) {
    state.depth.set(1);
    // Touching `RELEASE` registers its destructor; it fails once that has run.
    if RELEASE.try_with(|_| ()).is_ok() {
        // Decided before the thread's first section: `light_fence` reads it.
        mode();
        let slot = register();
        state.slot.set(Some(slot));
        enter(slot);
    } else {
        OUTSIDERS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Leaves a read-side section.
#[inline]
pub(super) fn read_unlock() {
    STATE.with(|state| {
        let depth = state.depth.get();
        debug_assert!(depth > 0, "rcu_read_unlock without rcu_read_lock");
        state.depth.set(depth.saturating_sub(1));
        if depth == 1 {
            match state.slot.get() {
                // Release: the section's reads come before the reclaimer's
                // Acquire load that sees the new count.
                Some(slot) => slot.store(slot.load(Ordering::Relaxed) + 1, Ordering::Release),
                None => {
                    OUTSIDERS.fetch_sub(1, Ordering::Release);
                }
            }
        }
    });
}

/// Registers a slot for the calling thread: a gone thread's, or a new one.
fn register() -> &'static Slot {
    let spare = lock(&SPARE).pop();
    let slot = spare.unwrap_or_else(|| Box::leak(Box::new(CachePadded::new(AtomicUsize::new(0)))));
    lock(&REGISTRY).push(slot);
    slot
}

/// Runs `run` once every read-side section open now, on any thread, has
/// ended (see the module docs); it may run on any thread, from `defer` or
/// `poll`. The caller unlinked what `run` frees before calling this.
pub(super) fn defer(run: Box<dyn FnOnce() + Send>) {
    heavy_fence();
    let open = lock(&REGISTRY)
        .iter()
        .filter_map(|slot| {
            let count = slot.load(Ordering::Relaxed);
            (count % 2 == 1).then_some((*slot, count))
        })
        .collect();
    lock(&WAITING).push_back(Deferred { open, run });
    poll();
}

/// Runs the deferred functions whose grace period is over, oldest first,
/// unless another thread (or this one, further up) is running them.
pub(super) fn poll() {
    let _runner = match RUNNER.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    loop {
        let ready = {
            let mut waiting = lock(&WAITING);
            match waiting.front() {
                Some(first) if first.ready() => waiting.pop_front(),
                _ => None,
            }
        };
        match ready {
            // Run without the queue's lock: it may defer again.
            Some(deferred) => (deferred.run)(),
            None => return,
        }
    }
}

/// Linux's `membarrier(2)`, where it can be used.
mod membarrier {
    /// Runs a full barrier on every CPU running a thread of the process.
    #[cfg(all(target_os = "linux", not(miri)))]
    const PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    /// Announces the use of `PRIVATE_EXPEDITED`.
    #[cfg(all(target_os = "linux", not(miri)))]
    const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    /// Registers the process; whether `barrier` may be used.
    pub(super) fn register() -> bool {
        #[cfg(all(target_os = "linux", not(miri)))]
        {
            // SAFETY: `membarrier` takes two integers and touches no memory
            // of ours; an unsupported command returns an error.
            unsafe { libc::syscall(libc::SYS_membarrier, REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 }
        }
        #[cfg(not(all(target_os = "linux", not(miri))))]
        {
            false
        }
    }

    /// The barrier; whether it ran.
    pub(super) fn barrier() -> bool {
        #[cfg(all(target_os = "linux", not(miri)))]
        {
            // SAFETY: as in `register`.
            unsafe { libc::syscall(libc::SYS_membarrier, PRIVATE_EXPEDITED, 0, 0) == 0 }
        }
        #[cfg(not(all(target_os = "linux", not(miri))))]
        {
            false
        }
    }
}

/// A thread inside a read-side section, once this returns; sending on
/// the sender lets it leave and end. For the tests of this RCU and of the
/// platform over it.
#[cfg(test)]
pub(super) fn reader_in_section() -> (std::thread::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    let (entered, wait_entered) = std::sync::mpsc::channel();
    let (leave, wait_leave) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        read_lock();
        entered.send(()).unwrap();
        wait_leave.recv().unwrap();
        read_unlock();
    });
    wait_entered.recv().unwrap();
    (reader, leave)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    /// Defers a function that raises the returned flag.
    fn defer_flag() -> Arc<AtomicBool> {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        defer(Box::new(move || flag.store(true, Ordering::SeqCst)));
        ran
    }

    /// Polls a hundred times; `ran` must stay down throughout.
    fn assert_held(ran: &AtomicBool, why: &str) {
        for _ in 0..100 {
            poll();
            assert!(!ran.load(Ordering::SeqCst), "{why}");
        }
    }

    /// Polls until `done` or 10 s.
    fn poll_until(done: &AtomicBool) -> bool {
        let started = Instant::now();
        while !done.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(10) {
            poll();
            std::thread::yield_now();
        }
        done.load(Ordering::SeqCst)
    }

    #[test]
    fn a_deferred_function_waits_for_a_section_open_on_another_thread() {
        let (reader, leave) = reader_in_section();
        let ran = defer_flag();
        assert_held(&ran, "ran while a section open before it was still open");
        leave.send(()).unwrap();
        reader.join().unwrap();
        assert!(poll_until(&ran), "never ran after the section ended");
    }

    #[test]
    fn sections_begun_after_the_deferral_do_not_hold_it_up() {
        let ran = defer_flag();
        let (reader, leave) = reader_in_section();
        assert!(poll_until(&ran), "a later section held up the function");
        leave.send(()).unwrap();
        reader.join().unwrap();
    }

    /// A gone thread's slot goes on counting for the next thread: a
    /// function deferred while the old thread was inside a section runs
    /// once that section ended, whatever the slot's new thread does.
    #[test]
    fn a_slot_handed_on_to_a_new_thread_does_not_hold_up_what_its_old_thread_held() {
        let (reader, leave) = reader_in_section();
        let ran = defer_flag();
        leave.send(()).unwrap();
        reader.join().unwrap();
        // The old thread is gone: its slot is spare, and the next thread to
        // register (likely this one) enters sections on it.
        let (next, leave_next) = reader_in_section();
        assert!(poll_until(&ran), "a section on a handed-on slot held up a function deferred before it");
        leave_next.send(()).unwrap();
        next.join().unwrap();
    }

    #[test]
    fn nested_sections_end_with_the_outermost() {
        let (entered, wait_entered) = mpsc::channel();
        let (step, wait_step) = mpsc::channel::<()>();
        let (stepped, wait_stepped) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            read_lock();
            read_lock();
            entered.send(()).unwrap();
            wait_step.recv().unwrap();
            read_unlock();
            stepped.send(()).unwrap();
            wait_step.recv().unwrap();
            read_unlock();
        });
        wait_entered.recv().unwrap();
        let ran = defer_flag();
        step.send(()).unwrap();
        wait_stepped.recv().unwrap();
        assert_held(&ran, "the inner exit ended the outer section");
        step.send(()).unwrap();
        reader.join().unwrap();
        assert!(poll_until(&ran), "the outer exit did not end the section");
    }

    /// A guard kept in a thread-local whose destructor runs after this
    /// module's: its section must stay open until it really ends.
    #[test]
    fn a_section_open_when_the_thread_locals_go_holds_deferred_functions_until_it_ends() {
        static PHASE: AtomicUsize = AtomicUsize::new(0);
        let wait = |phase| {
            while PHASE.load(Ordering::SeqCst) != phase {
                std::thread::yield_now();
            }
        };
        struct Holder;
        impl Drop for Holder {
            fn drop(&mut self) {
                // Destructors run in the reverse order of their
                // registration: `RELEASE`'s, registered after this one's,
                // has run.
                PHASE.store(3, Ordering::SeqCst);
                while PHASE.load(Ordering::SeqCst) != 4 {
                    std::thread::yield_now();
                }
                read_unlock();
            }
        }
        std::thread_local! {
            static HOLDER: Holder = const { Holder };
        }
        let reader = std::thread::spawn(move || {
            HOLDER.with(|_| {});
            read_lock();
            PHASE.store(1, Ordering::SeqCst);
            while PHASE.load(Ordering::SeqCst) != 2 {
                std::thread::yield_now();
            }
        });
        wait(1);
        let ran = defer_flag();
        PHASE.store(2, Ordering::SeqCst);
        wait(3);
        assert_held(&ran, "a section still open in a thread-local's destructor was taken as ended");
        PHASE.store(4, Ordering::SeqCst);
        reader.join().unwrap();
        assert!(poll_until(&ran), "the section's end, after the thread-locals, did not count");
    }

    #[test]
    fn a_function_may_defer_another() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        defer(Box::new(move || defer(Box::new(move || flag.store(true, Ordering::SeqCst)))));
        assert!(poll_until(&ran));
    }
}
