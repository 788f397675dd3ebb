//! The one interface for invariants.
//!
//! Every structure with an invariant kvirt can check at run time implements
//! [`Inv`]: kernel spaces and areas (`spec`), page tables, the frame
//! allocator, VMALLOC and its range allocators. The trait sits at the
//! bottom of the crate so that each structure implements it where it is
//! defined, without importing anything above it; `spec` re-exports it.

/// A structure's invariant.
pub trait Inv {
    /// Whether the invariant holds. Meant for quiescent points (no other
    /// thread changing the structure), as in tests and contract checks.
    fn inv(&self) -> bool {
        self.check().is_ok()
    }

    /// The invariant, with the first violated clause named.
    fn check(&self) -> Result<(), &'static str>;
}
