//! Model checking of the frame reference count with loom.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p kvirt --release --test
//! loom_ref_count`. The test drives the library's own transitions
//! (`kvirt::frame::ref_count`) over a loom atomic, next to a loom
//! `UnsafeCell` that stands for the slot's metadata (storage, vtable and
//! owner). Like `MetaSlot`, the model writes the metadata only in the `BUSY`
//! state it took (building it after `try_begin_init`, tearing it down after
//! the last `dec`), and every holder of a reference reads it. Loom reports
//! any write that is not ordered with another access, so a transition with
//! too weak an ordering fails the test; the holders also check that the
//! metadata they read is alive, so a count that reaches teardown while a
//! reference remains fails too. A unique owner (`UniqueFrame`) writes the
//! metadata too, as `UniqueFrame::meta_mut` does, so a unique conversion
//! that is not ordered after every other holder's last use fails as well.
#![cfg(loom)]

use core::sync::atomic::Ordering;

use kvirt::frame::ref_count;
use kvirt::frame::{REF_COUNT_BUSY, REF_COUNT_UNIQUE, REF_COUNT_UNUSED};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU64};
use loom::sync::Arc;

/// The metadata of a torn-down frame.
const DEAD: u64 = 0xdead;

/// A metadata slot: the count and the metadata it guards.
struct Slot {
    count: AtomicU64,
    meta: UnsafeCell<u64>,
}

impl Slot {
    /// A free slot.
    fn free() -> Arc<Self> {
        Arc::new(Slot { count: AtomicU64::new(REF_COUNT_UNUSED), meta: UnsafeCell::new(0) })
    }

    /// A slot in use with metadata `value` and `refs` references, all held
    /// by the calling thread.
    fn in_use(value: u64, refs: u64) -> Arc<Self> {
        let slot = Self::free();
        assert!(slot.init(value), "the only init of a free slot wins");
        for _ in 1..refs {
            ref_count::inc(&slot.count);
        }
        slot
    }

    /// `MetaSlot::init`: takes the free slot, writes the metadata, publishes
    /// one reference. Returns whether it took the slot.
    fn init(&self, value: u64) -> bool {
        if !ref_count::try_begin_init(&self.count) {
            return false;
        }
        // SAFETY: loom reports any access to the cell that races with this
        // one; that is exactly the property under test.
        self.meta.with_mut(|m| unsafe { *m = value });
        ref_count::finish_init(&self.count);
        true
    }

    /// A holder of a reference using the frame (`Frame::meta`): the
    /// metadata must be alive.
    fn use_meta(&self) -> u64 {
        // SAFETY: as in `init`.
        let value = self.meta.with(|m| unsafe { *m });
        assert_ne!(value, DEAD, "a holder saw its frame torn down");
        value
    }

    /// `Frame::drop`: gives up one reference and, if it was the last, tears
    /// the frame down (`MetaSlot::tear_down`). Returns whether it did.
    fn drop_ref(&self) -> bool {
        if !ref_count::dec(&self.count) {
            return false;
        }
        self.tear_down();
        true
    }

    /// `UniqueFrame::try_from(Frame)`: makes the caller's reference the
    /// unique owner if it is the only one. Returns whether it did.
    fn make_unique(&self) -> bool {
        ref_count::try_make_unique(&self.count)
    }

    /// `UniqueFrame::meta_mut`: the unique owner changes the metadata.
    fn write_meta(&self, value: u64) {
        assert_eq!(self.count.load(Ordering::Relaxed), REF_COUNT_UNIQUE, "only a unique owner writes");
        // SAFETY: as in `init`.
        self.meta.with_mut(|m| unsafe { *m = value });
    }

    /// `Frame::from(UniqueFrame)`: the unique owner becomes the one
    /// reference.
    fn share(&self) {
        ref_count::share_unique(&self.count);
    }

    /// `UniqueFrame::drop`: the unique owner tears the frame down.
    fn drop_unique(&self) {
        ref_count::begin_unique_tear_down(&self.count);
        self.tear_down();
    }

    /// `MetaSlot::tear_down` of a slot the caller made `BUSY`.
    fn tear_down(&self) {
        assert_eq!(self.count.load(Ordering::Relaxed), REF_COUNT_BUSY, "the teardown owns the slot");
        // SAFETY: as in `init`.
        let old = self.meta.with_mut(|m| unsafe { core::ptr::replace(m, DEAD) });
        assert_ne!(old, DEAD, "torn down twice");
        ref_count::finish_tear_down(&self.count);
    }

    /// The count and metadata once every thread has finished.
    fn settled(&self) -> (u64, u64) {
        // SAFETY: as in `init`.
        (self.count.load(Ordering::Relaxed), self.meta.with(|m| unsafe { *m }))
    }
}

/// Runs `work` on another thread, which then hands its reference to this
/// one through a relaxed flag: a channel that gives no ordering of its own
/// (say an address from `Frame::into_raw` in a relaxed atomic, taken back
/// with `Frame::from_raw`). Returns once the reference has arrived.
fn on_another_thread_then_hand_over(
    slot: &Arc<Slot>,
    work: impl FnOnce(&Slot) + Send + 'static,
) -> loom::thread::JoinHandle<()> {
    let handed_over = Arc::new(AtomicBool::new(false));
    let (s, h) = (slot.clone(), handed_over.clone());
    let other = loom::thread::spawn(move || {
        work(&s);
        h.store(true, Ordering::Relaxed);
    });
    while !handed_over.load(Ordering::Relaxed) {
        loom::thread::yield_now();
    }
    other
}

/// (a) Two holders each use the frame and drop their reference at once:
/// exactly one tears it down, after both uses.
#[test]
fn concurrent_drops_tear_down_once_after_every_use() {
    loom::model(|| {
        let slot = Slot::in_use(1, 2);
        let s = slot.clone();
        let other = loom::thread::spawn(move || {
            s.use_meta();
            s.drop_ref()
        });
        slot.use_meta();
        let mine = slot.drop_ref();
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "teardowns: mine {mine}, theirs {theirs}");
        assert_eq!(slot.settled(), (REF_COUNT_UNUSED, DEAD));
    });
}

/// (b) Two threads initialise the same free slot (an allocator handing a
/// page out twice): exactly one wins, and its metadata is the one kept.
#[test]
fn racing_inits_of_a_free_slot_have_one_winner() {
    loom::model(|| {
        let slot = Slot::free();
        let s = slot.clone();
        let other = loom::thread::spawn(move || s.init(2));
        let mine = slot.init(1);
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "winners: mine {mine}, theirs {theirs}");
        assert_eq!(slot.settled(), (1, if mine { 1 } else { 2 }));
    });
}

/// (c) One holder clones its reference while the other holder drops its
/// own: the frame stays alive while any reference remains, and the last of
/// the three drops tears it down.
#[test]
fn clone_racing_a_drop_keeps_the_frame_alive() {
    loom::model(|| {
        let slot = Slot::in_use(1, 2);
        let s = slot.clone();
        let other = loom::thread::spawn(move || {
            s.use_meta();
            s.drop_ref()
        });
        ref_count::inc(&slot.count);
        slot.use_meta();
        assert!(!slot.drop_ref(), "the clone still holds a reference");
        slot.use_meta();
        let mine = slot.drop_ref();
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "teardowns: mine {mine}, theirs {theirs}");
        assert_eq!(slot.settled(), (REF_COUNT_UNUSED, DEAD));
    });
}

/// (d) A frame built by one thread reaches another through a channel that
/// gives no ordering of its own, which drops the last reference: the build
/// still happens before the teardown, through the count alone.
#[test]
fn build_happens_before_teardown_whatever_carried_the_reference() {
    loom::model(|| {
        let slot = Slot::free();
        let builder = on_another_thread_then_hand_over(&slot, |s| {
            assert!(s.init(1), "the only init of a free slot wins");
        });
        assert!(slot.drop_ref(), "the only reference was dropped");
        builder.join().unwrap();
        assert_eq!(slot.settled(), (REF_COUNT_UNUSED, DEAD));
    });
}

/// (e) The holder of the last reference drops it while another thread tries
/// to initialise the slot (as if the page were back in the allocator
/// already): the slot is never free while it is torn down, so the init wins
/// only once the teardown is complete, and builds after it.
#[test]
fn init_racing_the_last_drop_wins_only_after_the_teardown() {
    loom::model(|| {
        let slot = Slot::in_use(1, 1);
        let s = slot.clone();
        let holder = loom::thread::spawn(move || {
            s.use_meta();
            assert!(s.drop_ref(), "the only reference was dropped");
        });
        let won = slot.init(2);
        holder.join().unwrap();
        assert_eq!(slot.settled(), if won { (1, 2) } else { (REF_COUNT_UNUSED, DEAD) });
    });
}

/// (f) One holder drops its clone while the other tries to make its own
/// reference unique (`UniqueFrame::try_from`): the conversion succeeds only
/// once the clone is gone, and then after the clone's last use (the unique
/// owner's write would race that use otherwise). A failed attempt changes
/// nothing, and succeeds once the clone is dropped.
#[test]
fn unique_conversion_racing_the_drop_of_a_clone_waits_for_it() {
    loom::model(|| {
        let slot = Slot::in_use(1, 2);
        let about_to_drop = Arc::new(AtomicBool::new(false));
        let (s, a) = (slot.clone(), about_to_drop.clone());
        let other = loom::thread::spawn(move || {
            s.use_meta();
            a.store(true, Ordering::Relaxed);
            s.drop_ref()
        });
        let unique_at_once = slot.make_unique();
        if unique_at_once {
            // The clone's drop (and so what came before it) happened first.
            assert!(about_to_drop.load(Ordering::Relaxed), "unique while the clone was alive");
            slot.write_meta(2);
        } else {
            assert_eq!(slot.use_meta(), 1, "a failed conversion changes nothing");
        }
        let theirs = other.join().unwrap();
        assert!(!theirs, "the clone was not the last reference");
        if !unique_at_once {
            assert!(slot.make_unique(), "with the clone gone the reference is the only one");
            slot.write_meta(2);
        }
        slot.drop_unique();
        assert_eq!(slot.settled(), (REF_COUNT_UNUSED, DEAD));
    });
}

/// (g) A unique owner changes the metadata and shares the frame
/// (`Frame::from(UniqueFrame)`), whose one reference reaches another thread
/// through a channel that gives no ordering of its own, which drops it: the
/// write still happens before the teardown, through the count alone.
#[test]
fn writes_of_a_unique_owner_happen_before_the_teardown_after_sharing() {
    loom::model(|| {
        let slot = Slot::in_use(1, 1);
        assert!(slot.make_unique(), "the only reference");
        let owner = on_another_thread_then_hand_over(&slot, |s| {
            s.write_meta(2);
            s.share();
        });
        assert!(slot.drop_ref(), "the only reference was dropped");
        owner.join().unwrap();
        assert_eq!(slot.settled(), (REF_COUNT_UNUSED, DEAD));
    });
}

/// (h) A unique owner drops its frame while another thread tries to
/// initialise the slot: as after the last `dec`, the slot is never free
/// while it is torn down, so the init wins only after the teardown.
#[test]
fn init_racing_the_drop_of_a_unique_frame_wins_only_after_the_teardown() {
    loom::model(|| {
        let slot = Slot::in_use(1, 1);
        assert!(slot.make_unique(), "the only reference");
        let s = slot.clone();
        let owner = loom::thread::spawn(move || {
            s.write_meta(3);
            s.drop_unique();
        });
        let won = slot.init(2);
        owner.join().unwrap();
        assert_eq!(slot.settled(), if won { (1, 2) } else { (REF_COUNT_UNUSED, DEAD) });
    });
}
