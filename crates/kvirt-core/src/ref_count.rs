//! The reference count of a frame's metadata slot: its values, the
//! abstract states they stand for, and every transition, as pure functions
//! that kvirt's atomic code uses for the values it stores and the
//! decisions it takes.
//!
//! | value | abstract state ([`FrameState`]) |
//! |---|---|
//! | [`UNUSED`] (0) | `Unused`: free |
//! | `1..=`[`MAX`] (`i64::MAX`) | `InUse(n)`: `n` references |
//! | [`UNIQUE`] (`u64::MAX - 1`) | `Unique`: one `UniqueFrame` |
//! | [`BUSY`] (`u64::MAX`) | `Busy`: being built or torn down by one thread |
//!
//! These are the states of the frame model of OSTD's verified port (free,
//! unique, under construction or destruction, in use with a count up to
//! `i64::MAX`), with other values for free and busy: all-zero memory is a
//! free slot, so a zeroed metadata array needs no initialisation.
//!
//! Proven: every transition, from the state it is defined for, yields a
//! valid count (`valid`) whose abstract state is the one the model's
//! transition gives; no other value is ever stored. The increment is the
//! one exception, and the proof says exactly how: the atomic `fetch_add`
//! stores `old + 1` before kvirt can look at `old`, so at `old == MAX` it
//! has already stored an invalid count (`lemma_overflowing_increment`).
//! The invariant holds only because kvirt then aborts the process
//! ([`inc_overflows`] decides it) and nothing reads the slot again.
//!
//! What is not proven here is the atomic protocol itself (memory
//! orderings, races between holders): vstd's atomics are sequentially
//! consistent only. The loom test `tests/loom_ref_count.rs` explores it
//! over these very functions.

use vstd::prelude::*;

verus! {

/// The count of a free slot.
pub const UNUSED: u64 = 0;

/// The largest count of a shared frame (`i64::MAX`).
pub const MAX: u64 = 0x7fff_ffff_ffff_ffff;

/// The count of a frame owned by one `UniqueFrame`.
pub const UNIQUE: u64 = 0xffff_ffff_ffff_fffe;

/// The count of a slot being built or torn down.
pub const BUSY: u64 = 0xffff_ffff_ffff_ffff;

/// The abstract state of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameState {
    /// Free: no metadata, no reference.
    Unused,
    /// In use by this many references (at least 1).
    InUse(u64),
    /// Owned by one unique handle and nothing else.
    Unique,
    /// Owned by the one thread building or tearing it down.
    Busy,
}

/// The counts a slot may hold.
pub open spec fn valid(count: u64) -> bool {
    count == UNUSED || (1 <= count <= MAX) || count == UNIQUE || count == BUSY
}

/// The abstract state a valid count stands for.
pub open spec fn state_of(count: u64) -> FrameState {
    if count == UNUSED {
        FrameState::Unused
    } else if count == UNIQUE {
        FrameState::Unique
    } else if count == BUSY {
        FrameState::Busy
    } else {
        FrameState::InUse(count)
    }
}

/// `UNUSED -> BUSY`: the value to compare against and the value to store
/// when taking a free slot.
#[inline]
pub const fn begin_init() -> (r: (u64, u64))
    ensures
        state_of(r.0) is Unused,
        state_of(r.1) is Busy,
        valid(r.0) && valid(r.1),
{
    (UNUSED, BUSY)
}

/// `BUSY -> 1`: the value stored once the metadata is written; the builder
/// then holds the one reference.
#[inline]
pub const fn finish_init(_old: u64) -> (r: u64)
    requires
        state_of(_old) is Busy,
    ensures
        valid(r),
        state_of(r) == FrameState::InUse(1),
{
    1
}

/// Whether the increment that read `old` overflowed: kvirt aborts then.
#[inline]
pub const fn inc_overflows(old: u64) -> (r: bool)
    ensures
        r == (old >= MAX),
{
    old >= MAX
}

/// `n -> n + 1` for `n < MAX`: what an increment stores, in the model's
/// terms.
pub proof fn lemma_increment(old: u64)
    requires
        valid(old),
        state_of(old) matches FrameState::InUse(n),
        old < MAX,
    ensures
        valid((old + 1) as u64),
        state_of((old + 1) as u64) == FrameState::InUse((old + 1) as u64),
{
}

/// An increment past `MAX` has stored a count no slot may hold: the
/// process must not go on (kvirt aborts).
pub proof fn lemma_overflowing_increment(old: u64)
    requires
        valid(old),
        state_of(old) matches FrameState::InUse(n),
        old >= MAX,
    ensures
        old == MAX,
        !valid((old + 1) as u64),
{
}

/// Drops one reference of `old`: the value to store and whether it was
/// the last. The last goes straight to `BUSY`, never through `UNUSED`.
#[inline]
pub const fn dec(old: u64) -> (r: (u64, bool))
    requires
        state_of(old) matches FrameState::InUse(n),
        valid(old),
    ensures
        valid(r.0),
        r.1 == (old == 1),
        r.1 ==> state_of(r.0) is Busy,
        !r.1 ==> state_of(r.0) == FrameState::InUse((old - 1) as u64),
{
    if old == 1 {
        (BUSY, true)
    } else {
        (old - 1, false)
    }
}

/// `1 -> UNIQUE`: the value to compare against (only the one reference may
/// become unique) and the value to store.
#[inline]
pub const fn make_unique() -> (r: (u64, u64))
    ensures
        state_of(r.0) == FrameState::InUse(1),
        state_of(r.1) is Unique,
        valid(r.0) && valid(r.1),
{
    (1, UNIQUE)
}

/// `UNIQUE -> 1`: the unique holder shares the frame again.
#[inline]
pub const fn share_unique(_old: u64) -> (r: u64)
    requires
        state_of(_old) is Unique,
    ensures
        valid(r),
        state_of(r) == FrameState::InUse(1),
{
    1
}

/// `UNIQUE -> BUSY`: the unique holder gives the frame up.
#[inline]
pub const fn begin_unique_tear_down(_old: u64) -> (r: u64)
    requires
        state_of(_old) is Unique,
    ensures
        valid(r),
        state_of(r) is Busy,
{
    BUSY
}

/// `BUSY -> UNUSED`: the torn-down slot is free again.
#[inline]
pub const fn finish_tear_down(_old: u64) -> (r: u64)
    requires
        state_of(_old) is Busy,
    ensures
        valid(r),
        state_of(r) is Unused,
{
    UNUSED
}

/// The references a count stands for: `n` in use, 1 for a unique frame
/// (its one handle), none for a free or busy slot.
#[inline]
pub const fn live_references(count: u64) -> (r: u64)
    requires
        valid(count),
    ensures
        r == match state_of(count) {
            FrameState::InUse(n) => n,
            FrameState::Unique => 1,
            _ => 0,
        },
{
    if count == UNUSED || count == BUSY {
        0
    } else if count == UNIQUE {
        1
    } else {
        count
    }
}

} // verus!
