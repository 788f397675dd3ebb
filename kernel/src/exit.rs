//! Leaving QEMU through the `isa-debug-exit` device.
//!
//! QEMU is started with `-device isa-debug-exit,iobase=0xf4,iosize=0x04`;
//! writing `v` to port `0xf4` ends it with exit status `(v << 1) | 1`. So
//! [`ExitCode::Success`] (0x10) gives 33, which `cargo xtask qemu` takes as
//! success, and anything else is a failure.

use crate::cpu;

/// The `isa-debug-exit` port.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Every check passed (QEMU exits with 33).
    Success = 0x10,
    /// Something failed (QEMU exits with 35).
    Failure = 0x11,
}

/// Ends the QEMU run. Without the exit device, halts for ever (the runner's
/// timeout then fails the run).
pub fn exit_qemu(code: ExitCode) -> ! {
    // SAFETY: the port belongs to the exit device, whose only effect is to
    // end the virtual machine; on a machine without it the write is ignored.
    unsafe { cpu::outl(DEBUG_EXIT_PORT, code as u32) };
    crate::serial::print_unlocked(format_args!("kvirt-kernel: no isa-debug-exit device; halting\n"));
    cpu::halt()
}
