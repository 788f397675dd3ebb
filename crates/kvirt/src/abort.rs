//! Ending the process where kvirt cannot go on.
//!
//! Some code cannot be left half-way: a frame slot half torn down, a
//! reference count past its bound, a read-side section whose end was
//! promised not to unwind. There kvirt aborts rather than unwind into
//! callers that would go on from a broken state.

/// Ends the process where no consistent state is left to go on from: with
/// the `std` feature, prints `message` on stderr and aborts. Without it,
/// panics with `message`: a kernel's panic handler halts, and a panic
/// while unwinding (as from [`AbortOnUnwind`]'s `Drop`) aborts.
#[cold]
#[inline(never)]
pub(crate) fn abort_with(message: &str) -> ! {
    #[cfg(feature = "std")]
    {
        extern crate std;
        std::eprintln!("{message}");
        std::process::abort();
    }
    #[cfg(not(feature = "std"))]
    panic!("{message}");
}

/// Aborts the process with its message when dropped. It is forgotten on
/// the normal path, so it drops only if a panic unwinds through the code
/// it guards.
pub(crate) struct AbortOnUnwind(pub(crate) &'static str);

impl Drop for AbortOnUnwind {
    #[cold]
    fn drop(&mut self) {
        abort_with(self.0);
    }
}
