//! One model of kvirt's kernel virtual areas, and the step function that
//! checks a real kernel space against it.
//!
//! Three drivers feed it operations ([`Op`]): `kvirt check` (random
//! sequences, shrunk when one fails) and its exhaustive checker (every
//! sequence up to a depth on the tiny paging format), the proptest suite
//! `crates/kvirt/tests/kvirt_area_model.rs`, and the fuzz target
//! `kvirt_api` ([`fuzz`] decodes bytes into operations). A rule
//! of kvirt's — which physical ranges are tracked RAM, which page rights a
//! byte access needs, how a huge page splits — is stated here once.
//!
//! * [`op`]: the operations.
//! * [`Model`]: the model and the real space; [`Model::step`] applies one
//!   operation to both and compares them, [`Model::check`] runs the checks
//!   between operations (every `inv()`, refinement of the page tables
//!   against the model, reference counts, registry, VMALLOC and page
//!   accounting), [`Model::finish`] the final leak check. A discrepancy is
//!   a typed [`Failure`], not a panic.
//! * [`pt`]: the model of a page table's leaves ([`PtModel`]), which also
//!   serves the page-table model test and stress test.
//! * [`view`]: the expected leaves of VMALLOC and how huge pages split.
//! * [`run`]: a whole sequence on a fresh space, every check after every
//!   operation.
//! * [`panic`](mod@panic): documented panics, caught without the panic hook.
//! * [`rng`]: a small seedable PRNG.

pub mod fuzz;
pub mod model;
pub mod op;
pub mod panic;
pub mod pt;
pub mod rng;
pub mod run;
pub mod view;

pub use model::{Area, Checks, Failure, Model, ModelFault, Outcome, SessionView, SLACK_PAGES};
pub use op::{CursorOp, Data, FramePick, Frames, Item, Offset, Op, PaChoice, Protect, QueryAt, SplitAt};
pub use pt::{Leaf, PtModel, Taken, SZ_1G, SZ_2M};
pub use run::{run_sequence, Setup};
