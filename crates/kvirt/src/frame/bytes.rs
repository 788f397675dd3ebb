//! Byte copies into and out of untyped physical memory.
//!
//! Untyped frames can be shared (`UFrame` is `Clone`) and written through
//! any clone, and the hosted MMU or a device may touch the same bytes. Plain
//! `memcpy` on such memory would be a data race, which Rust makes undefined
//! behaviour. So every byte access to untyped frame contents goes through
//! here and uses relaxed `AtomicU8` operations: racing accesses are then
//! merely unordered, never undefined. All accesses use the same size, as the
//! memory model requires for racing atomics.

use core::sync::atomic::{AtomicU8, Ordering};

/// Copies `dst.len()` bytes starting at `src` into `dst`.
///
/// # Safety
///
/// `src..src + dst.len()` is valid for reads for the duration of the call
/// and is accessed by others, if at all, only atomically or through this
/// module.
pub(crate) unsafe fn copy_from(src: *const u8, dst: &mut [u8]) {
    for (i, out) in dst.iter_mut().enumerate() {
        let byte = src.wrapping_add(i).cast_mut();
        // SAFETY: in bounds of the valid range (caller contract); `AtomicU8`
        // has the layout and alignment of `u8`; other accesses are atomic.
        *out = unsafe { AtomicU8::from_ptr(byte) }.load(Ordering::Relaxed);
    }
}

/// Copies `src` to `dst..dst + src.len()`.
///
/// # Safety
///
/// `dst..dst + src.len()` is valid for writes for the duration of the call
/// and is accessed by others, if at all, only atomically or through this
/// module.
pub(crate) unsafe fn copy_to(src: &[u8], dst: *mut u8) {
    for (i, byte) in src.iter().enumerate() {
        let at = dst.wrapping_add(i);
        // SAFETY: as in `copy_from`.
        unsafe { AtomicU8::from_ptr(at) }.store(*byte, Ordering::Relaxed);
    }
}

/// Fills `dst..dst + len` with `value`.
///
/// # Safety
///
/// As for [`copy_to`].
pub(crate) unsafe fn fill(dst: *mut u8, value: u8, len: usize) {
    for i in 0..len {
        let at = dst.wrapping_add(i);
        // SAFETY: as in `copy_from`.
        unsafe { AtomicU8::from_ptr(at) }.store(value, Ordering::Relaxed);
    }
}
