//! The `kvirt` command as a library, so that its tests can drive the
//! checker directly.
//!
//! * [`demo`]: a narrated tour of kvirt on the hosted (simulated) machine.
//! * [`bench`]: kvirt against peer page-table crates and raw floors over the
//!   same simulated RAM, with a table, JSON, an SVG plot and Markdown.
//! * [`check`]: a model-based checker of random operation sequences, with
//!   shrinking; [`exhaustive`]: the same checks over every sequence up to a
//!   depth, on the tiny paging format.
//!
//! Everything runs on isolated kernel spaces (`KernelSpace::new_hosted`),
//! never on the process-wide default one, so the subcommands can run in
//! parallel test threads.

pub mod bench;
pub mod check;
pub mod demo;
pub mod exhaustive;
/// The seedable PRNG of `kvirt check` and `kvirt bench`.
pub use kvirt_model::rng;

/// The error of a subcommand: a message (they report it and exit
/// non-zero). Anything printable converts into it, so `?` works on kvirt's
/// `no_std` error types, which implement `Display` but not
/// `std::error::Error`.
pub struct Error(pub String);

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Err` with a message when `cond` is false.
pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Error> {
    if cond {
        Ok(())
    } else {
        Err(Error(msg()))
    }
}

/// Bytes in human units (exact multiples of KiB, MiB, GiB only).
#[must_use]
pub fn human_bytes(n: usize) -> String {
    const UNITS: [(usize, &str); 4] =
        [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n >= unit && n % unit == 0 {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} B")
}
