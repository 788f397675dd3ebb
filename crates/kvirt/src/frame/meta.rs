//! Frame metadata: one fixed-size slot per physical page.
//!
//! ```text
//!   physical memory                      metadata array (in RAM, 64 B a slot)
//!  +---------+---------+---------+      +--------+--------+--------+
//!  | page 0  | page 1  | page 2  | ...  | slot 0 | slot 1 | slot 2 | ...
//!  +---------+---------+---------+      +--------+--------+--------+
//!                                        slot i describes page i
//!
//!  one slot:  | storage: 40 B | ref_count: 8 B | vtable: 8 B | owner: 8 B |
//! ```
//!
//! The array lives in physical pages that the kernel space reserves at
//! start-up and reaches through the platform's physical window, so a
//! 4 GiB machine needs 64 MiB of it. All-zero bytes are a valid slot in the
//! [`REF_COUNT_UNUSED`](ref_count::REF_COUNT_UNUSED) state, so the array
//! needs no initialisation pass and, on the hosted machine, costs nothing
//! until touched.
//!
//! ## Reference count states
//!
//! The slot's `ref_count` field is its state. The states, every transition
//! between them, who may take each and with which memory ordering are
//! documented once, in the [`ref_count`] module; [`MetaSlot`] changes the
//! count only through that module's functions, and writes its other fields
//! only in the states those functions give it ownership in. In the safety
//! contracts below, "a reference" includes the one handle of a `UNIQUE`
//! slot.
//!
//! ## Typed metadata
//!
//! A frame's metadata is any `M: AnyFrameMeta` of at most
//! [`META_STORAGE_SIZE`] bytes and alignment at most 8, stored in place.
//! The slot also stores a function that turns the storage address into a
//! `*const dyn AnyFrameMeta`, which is how `Frame<dyn AnyFrameMeta>` finds
//! the concrete type (and its drop hook) without nightly pointer metadata.
//!
//! ## A panicking drop hook aborts
//!
//! When the last reference to a frame goes, [`AnyFrameMeta::on_drop`] runs
//! and then the metadata's destructor (its `Drop`), before the page goes
//! back to the allocator. Both must not panic: if either does, the process
//! aborts (with the `std` feature, after printing a line on stderr; without
//! it, by panicking again while unwinding, which a kernel's panic handler
//! turns into a halt). The frame is half torn down at that point, its slot
//! neither in use nor free, and there is no consistent state to unwind to:
//! the last reference may be going in a handle's `Drop`, in an area's
//! `Drop` or in an RCU callback, none of which could undo it. This is what
//! a frame drop in a kernel does too.

use core::any::Any;
use core::cell::UnsafeCell;
use core::fmt::{self, Debug};
use core::mem::{align_of, size_of, MaybeUninit};
use core::sync::atomic::{AtomicU64, Ordering};

use super::ref_count;
use crate::abort::AbortOnUnwind;
use crate::addr::Paddr;

/// The size of one metadata slot.
pub const META_SLOT_SIZE: usize = 64;
/// The room for a frame's metadata value inside its slot.
pub const META_STORAGE_SIZE: usize = 40;

/// Metadata of a frame: what a frame is used for, kept in its slot and
/// dropped when the last reference to the frame goes.
///
/// Implement it for a type to allocate frames carrying that type
/// (`FrameAllocOptions::alloc_frame_with`). The type must fit in
/// [`META_STORAGE_SIZE`] bytes with alignment at most 8 (checked at compile
/// time when a frame is created). Neither its drop hook
/// ([`on_drop`](Self::on_drop)) nor its destructor may panic: the process
/// aborts if one does.
///
/// Metadata must not hold the last handle of the kernel space its frame
/// belongs to. A frame may be released inside an RCU callback (a whole
/// page-table sub-tree taken at once is freed after a grace period), and a
/// space's teardown waits for every callback (`rcu_barrier`), including
/// the one it would run in: on the hosted platform that panics after 30 s,
/// which then aborts; a kernel's RCU would wait for ever.
pub trait AnyFrameMeta: Any + Send + Sync + Debug {
    /// Called once when the last reference to the frame is dropped, before
    /// the metadata is dropped and the page is returned to the allocator.
    /// `paddr` is the frame's physical address.
    ///
    /// It must not panic, nor may the metadata's destructor (its `Drop`):
    /// if either does, the process aborts, as a frame drop in a kernel
    /// would. The frame is half torn down then, neither in use nor free,
    /// and there is no consistent state to unwind to. With the `std`
    /// feature a line on stderr says why; without it kvirt panics again
    /// while unwinding, which aborts (or halts, in a kernel).
    fn on_drop(&mut self, paddr: Paddr) {
        let _ = paddr;
    }

    /// The metadata as untyped metadata, if the frame's contents are plain
    /// bytes that any holder may read and write. Implement
    /// [`AnyUFrameMeta`] with [`impl_untyped_frame_meta!`](crate::impl_untyped_frame_meta)
    /// instead of overriding this by hand.
    fn as_untyped(&self) -> Option<&dyn AnyUFrameMeta> {
        None
    }

    /// `self` as [`Any`], for down-casts in user code. kvirt's own type
    /// checks do not trust it (a safe implementation may return anything);
    /// they use [`Any::type_id`], which cannot be overridden.
    fn as_any(&self) -> &dyn Any;
}

/// Whether `meta` is of type `M`.
///
/// Asks the vtable's [`Any::type_id`] (the blanket implementation, which no
/// metadata type can override), never [`AnyFrameMeta::as_any`]: a
/// down-cast that trusted a lying `as_any` would view one type's bytes as
/// another's.
pub(crate) fn meta_is<M: AnyFrameMeta>(meta: &dyn AnyFrameMeta) -> bool {
    Any::type_id(meta) == core::any::TypeId::of::<M>()
}

/// Metadata of a frame whose contents are untyped bytes.
///
/// Frames with such metadata convert to [`UFrame`](super::UFrame), which
/// offers byte access. Implement it through
/// [`impl_untyped_frame_meta!`](crate::impl_untyped_frame_meta), which also
/// implements [`AnyFrameMeta`] consistently.
pub trait AnyUFrameMeta: AnyFrameMeta {}

/// Implements [`AnyFrameMeta`] and [`AnyUFrameMeta`] for a type whose frames
/// hold plain bytes.
///
/// ```
/// #[derive(Debug)]
/// struct BufferMeta { id: u32 }
/// kvirt::impl_untyped_frame_meta!(BufferMeta);
/// ```
#[macro_export]
macro_rules! impl_untyped_frame_meta {
    ($t:ty) => {
        impl $crate::frame::AnyFrameMeta for $t {
            fn as_untyped(&self) -> ::core::option::Option<&dyn $crate::frame::AnyUFrameMeta> {
                ::core::option::Option::Some(self)
            }
            fn as_any(&self) -> &dyn ::core::any::Any {
                self
            }
        }
        impl $crate::frame::AnyUFrameMeta for $t {}
    };
}

/// Implements [`AnyFrameMeta`] for a type whose frames are not plain bytes
/// (their contents are managed by whoever owns the metadata type).
#[macro_export]
macro_rules! impl_frame_meta {
    ($t:ty) => {
        impl $crate::frame::AnyFrameMeta for $t {
            fn as_any(&self) -> &dyn ::core::any::Any {
                self
            }
        }
    };
}

impl_untyped_frame_meta!(());

/// Turns a storage address into a fat pointer to the stored metadata.
pub(crate) type AsDynFn = fn(*const u8) -> *const dyn AnyFrameMeta;

fn as_dyn<M: AnyFrameMeta>(storage: *const u8) -> *const dyn AnyFrameMeta {
    storage.cast::<M>() as *const dyn AnyFrameMeta
}

/// One metadata slot. The `ref_count` module documents the states.
///
/// Nominally `pub` because the sealed trait behind [`MetaPtr`] names it,
/// but not exported: no code outside kvirt can name a slot.
#[repr(C)]
pub struct MetaSlot {
    /// The metadata value. Initialised exactly while the count is not
    /// `UNUSED`; written only in the `BUSY` state and, in the `UNIQUE`
    /// state, by the one `UniqueFrame`; shared (`&M`) otherwise.
    storage: UnsafeCell<[MaybeUninit<u64>; META_STORAGE_SIZE / 8]>,
    /// The reference count and state; changed only through the `ref_count`
    /// module's transitions.
    pub(super) ref_count: AtomicU64,
    /// How to view `storage` as `dyn AnyFrameMeta`. Initialised with it.
    vtable: UnsafeCell<MaybeUninit<AsDynFn>>,
    /// The physical memory this slot belongs to. Written while `BUSY` at
    /// allocation; read by handles to find their allocator.
    owner: UnsafeCell<*const super::PhysMem>,
}

const _: () = assert!(size_of::<MetaSlot>() == META_SLOT_SIZE);
const _: () = assert!(align_of::<MetaSlot>() <= 8);

// SAFETY: `storage`, `vtable` and `owner` are written only by the one thread
// that moved the slot to `BUSY` (and `storage` by the one `UniqueFrame` of a
// `UNIQUE` slot, through `&mut`, while no other reference exists), and read
// only by holders of a reference, which synchronise with those writers
// through the Release/Acquire operations on `ref_count`. Metadata types are
// `Send + Sync`.
unsafe impl Sync for MetaSlot {}

impl fmt::Debug for MetaSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaSlot").field("ref_count", &self.ref_count()).finish_non_exhaustive()
    }
}

impl MetaSlot {
    /// Moves a free slot to `BUSY` and writes `meta` into it, then makes it
    /// a frame with one reference.
    ///
    /// Returns `Err(meta)` back if the slot was not free.
    pub(super) fn init<M: AnyFrameMeta>(&self, meta: M, owner: *const super::PhysMem) -> Result<(), M> {
        const { assert!(size_of::<M>() <= META_STORAGE_SIZE, "frame metadata too large") };
        const { assert!(align_of::<M>() <= 8, "frame metadata over-aligned") };
        if !ref_count::try_begin_init(&self.ref_count) {
            return Err(meta);
        }
        // SAFETY: the slot is `BUSY` and we made it so: no other thread reads
        // or writes these fields until `finish_init` publishes them. The
        // storage is 8-aligned and large enough for `M` (checked above).
        unsafe { self.storage.get().cast::<M>().write(meta) };
        // SAFETY: as above, for the vtable field.
        unsafe { self.vtable.get().write(MaybeUninit::new(as_dyn::<M> as AsDynFn)) };
        // SAFETY: as above, for the owner field.
        unsafe { self.owner.get().write(owner) };
        ref_count::finish_init(&self.ref_count);
        Ok(())
    }

    /// Adds one reference to a slot that has at least one.
    #[inline]
    pub(super) fn inc_ref(&self) {
        ref_count::inc(&self.ref_count);
    }

    /// Drops one reference. Returns `true` if it was the last one; the slot
    /// is then `BUSY` and the caller must call [`Self::tear_down`].
    #[inline]
    pub(super) fn dec_ref(&self) -> bool {
        ref_count::dec(&self.ref_count)
    }

    /// Makes the caller's reference, if it is the only one, the unique
    /// owner of the frame (`1 -> UNIQUE`). Returns whether it did.
    #[inline]
    pub(super) fn try_make_unique(&self) -> bool {
        ref_count::try_make_unique(&self.ref_count)
    }

    /// Turns the unique owner back into the one reference (`UNIQUE -> 1`).
    #[inline]
    pub(super) fn share_unique(&self) {
        ref_count::share_unique(&self.ref_count);
    }

    /// Gives up the unique ownership for teardown (`UNIQUE -> BUSY`); the
    /// caller must call [`Self::tear_down`].
    #[inline]
    pub(super) fn begin_unique_tear_down(&self) {
        ref_count::begin_unique_tear_down(&self.ref_count);
    }

    /// Runs the drop hook and the destructor of the metadata and frees the
    /// slot. Aborts the process if the hook or the destructor panics (see
    /// the module documentation).
    ///
    /// # Safety
    ///
    /// The caller moved the slot to `BUSY` through [`Self::dec_ref`]
    /// returning `true` or through [`Self::begin_unique_tear_down`], and
    /// calls this once.
    pub(super) unsafe fn tear_down(&self, paddr: Paddr) {
        // SAFETY: the slot is `BUSY` and owned by this thread (caller
        // contract), so it holds metadata.
        let meta = unsafe { self.as_dyn_ptr() }.cast_mut();
        // The hook and the destructor are the user's code; if either
        // unwinds, the slot is left half torn down.
        let abort_on_unwind =
            AbortOnUnwind("kvirt: a frame metadata drop hook or destructor panicked; aborting");
        // SAFETY: the metadata is initialised and nobody else accesses it
        // while this thread holds the `BUSY` state.
        unsafe { (*meta).on_drop(paddr) };
        // SAFETY: as above; it is dropped once, and never used again until
        // the slot is initialised anew.
        unsafe { core::ptr::drop_in_place(meta) };
        core::mem::forget(abort_on_unwind);
        ref_count::finish_tear_down(&self.ref_count);
    }

    /// The metadata as a `dyn` pointer.
    ///
    /// # Safety
    ///
    /// The slot holds metadata: the caller owns a reference or the `BUSY`
    /// state.
    pub(super) unsafe fn as_dyn_ptr(&self) -> *const dyn AnyFrameMeta {
        // SAFETY: the field is only written while `BUSY`, before the
        // caller's reference (or `BUSY` ownership) was obtained.
        let vtable = unsafe { *self.vtable.get() };
        // SAFETY: initialised together with the metadata (caller contract).
        let vtable = unsafe { vtable.assume_init() };
        vtable(self.storage.get().cast::<u8>())
    }

    /// The metadata as a `dyn` pointer, for invariant checks.
    ///
    /// # Safety
    ///
    /// The slot holds metadata (it is not `UNUSED` and stays so while the
    /// result is used).
    pub(crate) unsafe fn as_dyn_meta(&self) -> *const dyn AnyFrameMeta {
        // SAFETY: forwarded to the caller.
        unsafe { self.as_dyn_ptr() }
    }

    /// The address of the storage, for sized metadata.
    #[inline]
    pub(crate) fn storage_ptr(&self) -> *const u8 {
        self.storage.get().cast::<u8>()
    }

    /// The physical memory the slot belongs to.
    ///
    /// # Safety
    ///
    /// The caller owns a reference to the frame.
    #[inline]
    pub(super) unsafe fn owner(&self) -> *const super::PhysMem {
        // SAFETY: written at allocation, before the Release store that the
        // caller's reference synchronises with; never written while the
        // frame is alive.
        unsafe { *self.owner.get() }
    }

    /// The current count (a snapshot): the raw state, see the `ref_count`
    /// module.
    pub(crate) fn ref_count(&self) -> u64 {
        self.ref_count.load(Ordering::Relaxed)
    }

    /// The live references the current count stands for (a snapshot; a
    /// unique frame has one).
    pub(crate) fn live_references(&self) -> u64 {
        ref_count::live_references(self.ref_count())
    }

    /// Replaces the count without any transition and returns the old one:
    /// for unit tests that corrupt a slot to see the invariant checks
    /// catch it (and then put the old count back).
    #[cfg(test)]
    pub(crate) fn swap_ref_count(&self, count: u64) -> u64 {
        self.ref_count.swap(count, Ordering::Relaxed)
    }
}

/// The metadata types a frame handle can be typed with: every sized
/// [`AnyFrameMeta`] type, `dyn AnyFrameMeta` and `dyn AnyUFrameMeta`.
///
/// Sealed: kvirt implements it for exactly these (its one method, which
/// finds a slot's metadata as `Self`, is what handle accessors such as
/// [`Frame::meta`](super::Frame::meta) rest on, so no other implementation
/// may exist).
pub trait MetaPtr: sealed::FromSlot {}

impl<T: ?Sized + sealed::FromSlot> MetaPtr for T {}

mod sealed {
    use super::MetaSlot;

    /// What [`MetaPtr`](super::MetaPtr) stands for. Unnameable outside
    /// kvirt.
    ///
    /// # Safety
    ///
    /// When `slot` holds metadata that can be viewed as `Self`,
    /// `from_slot` must return a pointer that is valid for shared reads as
    /// `Self` for as long as that metadata lives: the stored value itself
    /// (for a concrete type, or `dyn AnyFrameMeta`), or what the stored
    /// value lends through `&self` (for `dyn AnyUFrameMeta`, the result of
    /// its `as_untyped`). Otherwise it returns `None`.
    pub unsafe trait FromSlot: 'static {
        /// The metadata of `slot` as `*const Self`, or `None` if the stored
        /// metadata cannot be viewed as `Self`.
        ///
        /// # Safety
        ///
        /// The slot holds metadata (the caller owns a reference).
        unsafe fn from_slot(slot: &MetaSlot) -> Option<*const Self>;
    }
}

// SAFETY: the slot stores an `M` at the start of the storage; the type check
// (on the real type id, not on `as_any`) makes `None` the answer for any
// other type.
unsafe impl<M: AnyFrameMeta> sealed::FromSlot for M {
    unsafe fn from_slot(slot: &MetaSlot) -> Option<*const Self> {
        // SAFETY: the slot holds metadata (caller contract).
        let dyn_ptr = unsafe { slot.as_dyn_ptr() };
        // SAFETY: the pointer targets initialised metadata that lives while
        // the caller's reference does.
        let is_m = meta_is::<M>(unsafe { &*dyn_ptr });
        is_m.then(|| slot.storage_ptr().cast::<M>())
    }
}

// SAFETY: the vtable function stored with the metadata builds exactly this.
unsafe impl sealed::FromSlot for dyn AnyFrameMeta {
    unsafe fn from_slot(slot: &MetaSlot) -> Option<*const Self> {
        // SAFETY: the slot holds metadata (caller contract).
        Some(unsafe { slot.as_dyn_ptr() })
    }
}

// SAFETY: the pointer comes from the reference `as_untyped` returns, which
// borrows from the stored value (its signature ties it to `&self`), so it
// is valid for shared reads for as long as that value lives. A safe
// `as_untyped` may return some other value it lends, not the stored one;
// that only decides which bytes a caller's own frame exposes, never the
// validity of the pointer.
unsafe impl sealed::FromSlot for dyn AnyUFrameMeta {
    unsafe fn from_slot(slot: &MetaSlot) -> Option<*const Self> {
        // SAFETY: the slot holds metadata (caller contract).
        let meta = unsafe { slot.as_dyn_ptr() };
        // SAFETY: it is alive while the caller's reference is.
        let meta = unsafe { &*meta };
        meta.as_untyped().map(|m| m as *const dyn AnyUFrameMeta)
    }
}
