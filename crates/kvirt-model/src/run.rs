//! Running a whole sequence of operations on a fresh hosted space, every
//! check after every operation, a panic turned into a [`Failure`]: what
//! `kvirt check`, the exhaustive checker and the proptest suite do.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kvirt::kspace::{KernelLayout, KernelSpace};
use kvirt::sim::MachineConfig;

use crate::model::{Checks, Failure, Model, ModelFault};
use crate::op::Op;

/// How to run a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// RAM of the machine under the space.
    pub ram_size: usize,
    /// RAM of a second machine whose space gives foreign frames, if any.
    pub foreign_ram_size: Option<usize>,
    /// A deliberately wrong model.
    pub fault: Option<ModelFault>,
}

impl Setup {
    /// A space of `ram_size` bytes of RAM, no foreign space, the right
    /// model.
    #[must_use]
    pub fn new(ram_size: usize) -> Self {
        Self { ram_size, foreign_ram_size: None, fault: None }
    }
}

/// Runs `ops` on a fresh space laid out as `L` (on a two-CPU machine):
/// [`Checks::Full`] before the first operation and after every one, then
/// [`Model::finish`] with [`Checks::Full`]. Calls `visit` (if any) with [`Model::state_hash`]
/// after every operation. Returns the number of checks that passed.
///
/// # Errors
///
/// The first failure; a panic is a failure of the check "no panic".
pub fn run_sequence<L: KernelLayout>(
    ops: &[Op],
    setup: &Setup,
    mut visit: Option<&mut dyn FnMut(u64)>,
) -> Result<u64, Failure> {
    let step = std::cell::Cell::new(0);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let space = KernelSpace::<L>::hosted_with_layout(MachineConfig::new(setup.ram_size).cpus(2));
        let foreign = setup.foreign_ram_size.map(|ram| KernelSpace::new_hosted(MachineConfig::new(ram)));
        let mut model = Model::new(&space, setup.fault);
        if let Some(foreign) = &foreign {
            model = model.with_foreign(foreign);
        }
        let outcome = (|| {
            model.check(Checks::Full)?;
            for op in ops {
                step.set(model.steps());
                model.step(op)?;
                model.check(Checks::Full)?;
                if let Some(visit) = visit.as_mut() {
                    visit(model.state_hash());
                }
            }
            step.set(model.steps());
            model.finish(Checks::Full)
        })();
        let checks = model.checks_passed();
        // After a failure the state may be broken: a panic while tearing it
        // down must not hide the failure (and a space with areas or frames
        // left is leaked by its own drop, not freed).
        let _ = catch_unwind(AssertUnwindSafe(move || drop(model)));
        drop(foreign);
        drop(space);
        outcome.map(|()| checks)
    }));
    match result {
        Ok(r) => r,
        Err(payload) => Err(Failure {
            step: step.get(),
            check: "no panic",
            message: crate::panic::message(payload.as_ref()),
        }),
    }
}
