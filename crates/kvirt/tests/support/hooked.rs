//! The hosted platform with a test's hooks in front of it: [`Hooked`]
//! forwards every `Platform` call to `SimPlatform` and lets the test watch
//! (count read-side sections, record flushes), answer `current_cpu`
//! itself, or make `call_rcu` panic. Written once, so that each test states
//! only what it changes.

#![allow(dead_code, reason = "each includer uses a different part")]

use std::fmt::Debug;
use std::ptr::NonNull;
use std::sync::Arc;

use kvirt::kspace::KernelSpace;
use kvirt::platform::hosted::{memory_map_of, SimPlatform};
use kvirt::platform::{Platform, RcuCallback, TlbFlushOp, TlbScope};
use kvirt::sim::{Machine, MachineConfig};

/// What a test adds to the hosted platform. Each hook runs just before the
/// call is forwarded (`on_read_unlock`: just before, too, while the section
/// is still open); the defaults do nothing.
///
/// # Safety
///
/// No hook but [`on_call_rcu`](Self::on_call_rcu) may unwind (`Platform`
/// lets `call_rcu` and `rcu_barrier` unwind, nothing else); a callback
/// whose `call_rcu` panics is dropped unrun, which `Platform` allows. The
/// hooks must not touch the simulated RAM.
pub unsafe trait Hooks: Debug + Send + Sync + 'static {
    /// Before a TLB flush.
    fn on_flush(&self, _op: &TlbFlushOp, _scope: TlbScope) {}
    /// The CPU to report instead of the hosted platform's (`Platform`
    /// promises nothing of its range).
    fn current_cpu(&self) -> Option<usize> {
        None
    }
    /// After a read-side section begins.
    fn on_read_lock(&self) {}
    /// Before a read-side section ends.
    fn on_read_unlock(&self) {}
    /// Before a callback is queued; may panic.
    fn on_call_rcu(&self) {}
}

/// `SimPlatform` behind `H`'s hooks.
#[derive(Debug)]
pub struct Hooked<H> {
    inner: SimPlatform,
    hooks: H,
}

// SAFETY: every promise is `SimPlatform`'s, to which every call is
// forwarded unchanged; `current_cpu` may answer anything (the contract asks
// nothing of it), and the hooks unwind only where rule 5 allows (their
// own safety rule).
unsafe impl<H: Hooks> Platform for Hooked<H> {
    fn phys_base(&self) -> NonNull<u8> {
        self.inner.phys_base()
    }

    fn flush_tlb(&self, op: TlbFlushOp, scope: TlbScope) {
        self.hooks.on_flush(&op, scope);
        self.inner.flush_tlb(op, scope);
    }

    fn current_cpu(&self) -> usize {
        self.hooks.current_cpu().unwrap_or_else(|| self.inner.current_cpu())
    }

    fn rcu_read_lock(&self) {
        self.inner.rcu_read_lock();
        self.hooks.on_read_lock();
    }

    unsafe fn rcu_read_unlock(&self) {
        self.hooks.on_read_unlock();
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.inner.rcu_read_unlock() };
    }

    fn call_rcu(&self, callback: RcuCallback) {
        self.hooks.on_call_rcu();
        self.inner.call_rcu(callback);
    }

    fn rcu_barrier(&self) {
        self.inner.rcu_barrier();
    }
}

/// A kernel space over a new machine of `config`, whose platform is the
/// hosted one behind the hooks `hooks` makes (which may keep the machine).
///
/// # Panics
///
/// Panics if the machine cannot hold a kernel space.
///
/// # Safety
///
/// The hooks and the caller, which both get the machine, use it as
/// `KernelSpace::machine`'s rules say (rules 1 to 3 there): no write to
/// memory kvirt keeps for itself, no second platform or space over it.
pub unsafe fn hooked_space<H: Hooks>(
    config: MachineConfig,
    hooks: impl FnOnce(&Arc<Machine>) -> H,
) -> (Arc<Machine>, KernelSpace) {
    let machine = Arc::new(Machine::new(config));
    let hooks = hooks(&machine);
    // SAFETY: a new machine, no other platform over it; the hooks and the
    // caller use it by `KernelSpace::machine`'s rules (this function's
    // safety rule), which are `SimPlatform::new`'s rule 2.
    let inner = unsafe { SimPlatform::new(machine.clone()) };
    let map = memory_map_of(&machine);
    // SAFETY: the machine's own map; a new machine's RAM reads as zero.
    let space = unsafe { KernelSpace::new(Box::new(Hooked { inner, hooks }), &map, true) }
        .expect("the machine can hold a kernel space");
    (machine, space)
}
