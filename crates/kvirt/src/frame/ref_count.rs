//! The reference count of a frame's metadata slot: its states and every
//! transition between them, written once over an abstract atomic cell.
//!
//! `MetaSlot` (the `meta` module) keeps the count in a
//! [`core::sync::atomic::AtomicU64`] inside its 64-byte slot in RAM and
//! calls these functions for every change of state; the loom test
//! (`tests/loom_ref_count.rs`) runs the very same functions over loom's
//! atomics, so every interleaving of a few holders on one slot is explored.
//!
//! ## States
//!
//! | value | state | the slot's metadata |
//! |---|---|---|
//! | [`REF_COUNT_UNUSED`] (0) | free, or never allocatable | uninitialised |
//! | `1..=`[`REF_COUNT_MAX`] | shared: in use by that many references (`Frame` handles, page-table entries, segments, references given up by `Frame::into_raw`) | initialised; shared, read-only |
//! | [`REF_COUNT_UNIQUE`] | unique: owned by one `UniqueFrame` and nothing else | initialised; that handle may write it (`UniqueFrame::meta_mut`) |
//! | [`REF_COUNT_BUSY`] | being built or torn down | owned by the one thread that made it `BUSY` |
//!
//! All-zero bytes are `UNUSED`, so a zeroed metadata array needs no
//! initialisation pass. The values between `REF_COUNT_MAX` and
//! `REF_COUNT_UNIQUE` are never stored: an increment that would reach them
//! aborts first. A unique frame counts as one live reference
//! ([`live_references`]): it is one handle, and the only one.
//!
//! ## Transitions
//!
//! ```text
//!          try_begin_init         finish_init           inc
//!  UNUSED ----------------> BUSY ------------> 1 <-------------> 2..=MAX
//!    ^                                         |  |  ^    dec
//!    |                      dec of the last    |  |  |
//!    |                        reference        |  |  | share_unique
//!    |          +------------------------------+  |  |
//!    |          |                 try_make_unique |  |
//!    |          v                                 v  |
//!    +------- BUSY <------------------------- UNIQUE
//!   finish_tear_down   begin_unique_tear_down
//! ```
//!
//! (`BUSY` is drawn twice only to keep the lines apart: a unique frame is
//! torn down exactly as a shared frame whose last reference is dropped.)
//!
//! | function | from | to | taken by | ordering |
//! |---|---|---|---|---|
//! | [`try_begin_init`] | `UNUSED` | `BUSY` | the thread the allocator handed the page to (`MetaSlot::init`); of racing attempts at most one wins, the others change nothing | Acquire, pairing with `finish_tear_down`: the new metadata is written after the old was dropped |
//! | [`finish_init`] | `BUSY` | 1 | the thread whose `try_begin_init` won, once it has written the metadata; it then owns the one reference | Release, pairing with the last `dec`: the build comes before the teardown, whatever carried the reference |
//! | [`inc`] | `n` | `n + 1` | a holder of a reference, for the new one (`Frame::clone`, `Segment::clone`, `Segment::slice`); past `MAX` it aborts (2^63 leaked references) | Relaxed: the holder already sees the metadata |
//! | [`dec`] | `n > 1` | `n - 1` | a holder giving its reference up (`Frame::drop`, `Segment::drop`) | Release: its uses of the frame come before the teardown, or before a `try_make_unique` |
//! | [`dec`] | 1 | `BUSY` | the holder of the last reference; `dec` returns `true` and the thread owns the slot | Release, then an Acquire fence: every holder's uses come before the teardown |
//! | [`try_make_unique`] | 1 | `UNIQUE` | the holder of a reference that is the only one (`UniqueFrame::try_from(Frame)`); with other references it fails and changes nothing | Acquire, pairing with the `dec`s of the other references: their uses of the frame come before the unique holder's writes |
//! | [`share_unique`] | `UNIQUE` | 1 | the unique holder, which then owns the one reference (`Frame::from(UniqueFrame)`) | Release, pairing with the last `dec`: its writes come before the teardown, whatever carried the reference |
//! | [`begin_unique_tear_down`] | `UNIQUE` | `BUSY` | the unique holder dropping its handle (`UniqueFrame::drop`); it then owns the slot, as after the last `dec` | Relaxed: the holder owns the slot and its metadata already |
//! | [`finish_tear_down`] | `BUSY` | `UNUSED` | the thread that made the slot `BUSY` by `dec` or `begin_unique_tear_down`, once it has run the drop hook and dropped the metadata (`MetaSlot::tear_down`); it then returns the page to the allocator | Release, pairing with the next `try_begin_init` |
//!
//! A new reference is only ever made from an existing one (`inc`), or by
//! `finish_init` or `share_unique`; nothing looks a frame up by address and
//! takes a reference to it. So no reference can appear once the last one is
//! dropped, and the holder whose `dec` saw 1 is the only thread left to
//! touch the slot. For the same reason, a `try_make_unique` that sees 1
//! was called with the only reference, and no other can appear: while the
//! slot is `UNIQUE` nothing but the unique holder touches it (no `inc` or
//! `dec` can run, as no reference exists to run them with).
//!
//! The last `dec` goes from 1 straight to `BUSY` (a compare-exchange loop,
//! where a `fetch_sub` would pass through 0), so a slot never reads
//! `UNUSED` while it still holds metadata: a racing `try_begin_init` fails
//! until `finish_tear_down`, and then builds after the teardown. The
//! allocator, which gets the page back only after `finish_tear_down`, does
//! not have to order the two lives of a slot (its lock does, as well).
//!
//! Debug builds assert the `from` state of `finish_init`, `inc`, `dec`,
//! `share_unique`, `begin_unique_tear_down` and `finish_tear_down`.
//!
//! The values each transition stores and the decisions it takes (which
//! decrement is the last, which increment overflows) come from
//! `kvirt_core::ref_count`, where every transition is proven to go from
//! its state to a valid count in the next state of OSTD's verified frame
//! model. The orderings are this file's, checked by loom.

use core::sync::atomic::{AtomicU64, Ordering};

use kvirt_core::ref_count as rc;

/// The count of a free slot.
pub const REF_COUNT_UNUSED: u64 = rc::UNUSED;
/// The largest count of a shared frame (`i64::MAX`).
pub const REF_COUNT_MAX: u64 = rc::MAX;
/// The count of a frame owned by one `UniqueFrame` (it counts as one live
/// reference: `live_references`).
pub const REF_COUNT_UNIQUE: u64 = rc::UNIQUE;
/// The count of a slot being built or torn down.
pub const REF_COUNT_BUSY: u64 = rc::BUSY;

/// The atomic operations the transitions need, on one 64-bit cell.
///
/// Implemented for [`AtomicU64`], and with `--cfg loom` for loom's
/// `AtomicU64` (each method is the inherent one of the same name).
pub trait RefCountCell {
    /// Like [`AtomicU64::load`].
    fn load(&self, order: Ordering) -> u64;
    /// Like [`AtomicU64::store`].
    fn store(&self, value: u64, order: Ordering);
    /// Like [`AtomicU64::fetch_add`].
    fn fetch_add(&self, value: u64, order: Ordering) -> u64;
    /// Like [`AtomicU64::compare_exchange`].
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// Like [`AtomicU64::compare_exchange_weak`].
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// Like [`core::sync::atomic::fence`].
    fn fence(order: Ordering);
}

/// Implements [`RefCountCell`] for an atomic type whose inherent methods of
/// the same names do the work, with `$fence` as the fence.
macro_rules! impl_ref_count_cell {
    ($atomic:ty, $fence:path) => {
        impl RefCountCell for $atomic {
            #[inline]
            fn load(&self, order: Ordering) -> u64 {
                <$atomic>::load(self, order)
            }
            #[inline]
            fn store(&self, value: u64, order: Ordering) {
                <$atomic>::store(self, value, order);
            }
            #[inline]
            fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
                <$atomic>::fetch_add(self, value, order)
            }
            #[inline]
            fn compare_exchange(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                <$atomic>::compare_exchange(self, current, new, success, failure)
            }
            #[inline]
            fn compare_exchange_weak(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                <$atomic>::compare_exchange_weak(self, current, new, success, failure)
            }
            #[inline]
            fn fence(order: Ordering) {
                $fence(order);
            }
        }
    };
}

impl_ref_count_cell!(AtomicU64, core::sync::atomic::fence);
// The loom test (`tests/loom_ref_count.rs`) drives these very transitions
// over loom's atomic.
#[cfg(loom)]
impl_ref_count_cell!(loom::sync::atomic::AtomicU64, loom::sync::atomic::fence);

/// `UNUSED -> BUSY`. Returns `true` if this call took the slot: the caller
/// then owns it, writes the metadata and calls [`finish_init`]. Returns
/// `false`, changing nothing, if the slot was not free.
#[inline]
pub fn try_begin_init<C: RefCountCell>(count: &C) -> bool {
    let (free, busy) = rc::begin_init();
    count.compare_exchange(free, busy, Ordering::Acquire, Ordering::Relaxed).is_ok()
}

/// `BUSY -> 1`, after [`try_begin_init`] took the slot and the metadata was
/// written. The caller then owns the one reference.
#[inline]
pub fn finish_init<C: RefCountCell>(count: &C) {
    debug_assert_eq!(
        count.load(Ordering::Relaxed),
        REF_COUNT_BUSY,
        "finished building a slot not being built"
    );
    count.store(rc::finish_init(REF_COUNT_BUSY), Ordering::Release);
}

/// `n -> n + 1`: one more reference, made by a holder of one.
#[inline]
pub fn inc<C: RefCountCell>(count: &C) {
    let old = count.fetch_add(1, Ordering::Relaxed);
    debug_assert!(old != REF_COUNT_UNUSED && old != REF_COUNT_BUSY, "new reference to a dead frame");
    debug_assert!(old != REF_COUNT_UNIQUE, "new reference to a uniquely owned frame");
    // `fetch_add` has stored `old + 1` already: past `MAX` that is a count
    // no slot may hold (`lemma_overflowing_increment`), so nothing may go
    // on.
    if rc::inc_overflows(old) {
        overflow();
    }
}

/// Drops one reference. Returns `true` if it was the last one: the slot is
/// then `BUSY`, owned by the caller, which tears the metadata down and calls
/// [`finish_tear_down`].
#[inline]
pub fn dec<C: RefCountCell>(count: &C) -> bool {
    let mut old = count.load(Ordering::Relaxed);
    let last = loop {
        debug_assert!((1..=REF_COUNT_MAX).contains(&old), "dropped a reference to a dead frame");
        // The last reference goes straight to `BUSY`: the slot must not
        // read `UNUSED` (free) while it is torn down.
        let (new, last) = rc::dec(old);
        match count.compare_exchange_weak(old, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break last,
            Err(actual) => old = actual,
        }
    };
    if last {
        // Pairs with the Release decrements of the other references (and
        // with `finish_init`), so every use of the frame happens before its
        // teardown.
        C::fence(Ordering::Acquire);
        true
    } else {
        false
    }
}

/// `1 -> UNIQUE`. Returns `true` if the caller's reference was the only
/// one: the caller then owns the frame exclusively, and may write its
/// metadata, until [`share_unique`] or [`begin_unique_tear_down`]. Returns
/// `false`, changing nothing, if other references exist.
#[inline]
pub fn try_make_unique<C: RefCountCell>(count: &C) -> bool {
    // Acquire pairs with the Release `dec`s of the references dropped
    // before: their uses of the frame come before the unique holder's
    // writes.
    let (one, unique) = rc::make_unique();
    count.compare_exchange(one, unique, Ordering::Acquire, Ordering::Relaxed).is_ok()
}

/// `UNIQUE -> 1`: the unique holder shares the frame again. The caller then
/// owns the one reference.
#[inline]
pub fn share_unique<C: RefCountCell>(count: &C) {
    debug_assert_eq!(count.load(Ordering::Relaxed), REF_COUNT_UNIQUE, "shared a frame that is not unique");
    // Release pairs with the last `dec`, as in `finish_init`: the unique
    // holder's writes come before the teardown, whatever carried the
    // reference.
    count.store(rc::share_unique(REF_COUNT_UNIQUE), Ordering::Release);
}

/// `UNIQUE -> BUSY`: the unique holder gives the frame up. The caller then
/// owns the slot, as after a [`dec`] that returned `true`: it tears the
/// metadata down and calls [`finish_tear_down`].
#[inline]
pub fn begin_unique_tear_down<C: RefCountCell>(count: &C) {
    debug_assert_eq!(count.load(Ordering::Relaxed), REF_COUNT_UNIQUE, "tore down a frame that is not unique");
    // Relaxed: no other thread touches a unique slot, and the holder
    // already sees everything written to it.
    count.store(rc::begin_unique_tear_down(REF_COUNT_UNIQUE), Ordering::Relaxed);
}

/// The number of live references a count stands for: `n` for a shared
/// frame, 1 for a unique frame (its one handle), 0 for a slot that is free
/// or being built or torn down.
#[must_use]
pub const fn live_references(count: u64) -> u64 {
    rc::live_references(count)
}

/// `BUSY -> UNUSED`, after [`dec`] returned `true` (or
/// [`begin_unique_tear_down`] ran) and the metadata was torn down. The
/// caller then returns the page to the allocator.
#[inline]
pub fn finish_tear_down<C: RefCountCell>(count: &C) {
    debug_assert_eq!(count.load(Ordering::Relaxed), REF_COUNT_BUSY, "freed a slot not being torn down");
    count.store(rc::finish_tear_down(REF_COUNT_BUSY), Ordering::Release);
}

#[cold]
fn overflow() -> ! {
    crate::abort::abort_with("kvirt: frame reference count overflow");
}
