//! The safe face of the fault probe of the RISC-V and AArch64 kernels
//! (each includes this file with `#[path]`).
//!
//! The kernel's `boot` assembly defines `probe_read(addr)` and
//! `probe_write(addr, value)`: each makes its one access and returns two
//! words, a value (the word read) and a code, 0 when nothing faulted. When
//! the access faults, the trap vector resumes the routine at its recovery
//! label, which returns the faulting address as the value and the trap's
//! cause register (`scause`, `ESR_EL1`) as the code;
//! `crate::boot::Fault::new` reads them.

pub use crate::boot::Fault;

/// What a probe routine returns (in two registers).
#[repr(C)]
struct ProbeResult {
    value: u64,
    code: u64,
}

extern "C" {
    fn probe_read(addr: usize) -> ProbeResult;
    fn probe_write(addr: usize, value: u64) -> ProbeResult;
}

fn result(r: ProbeResult) -> Result<u64, Fault> {
    if r.code == 0 {
        Ok(r.value)
    } else {
        Err(Fault::new(r.value as usize, r.code))
    }
}

/// Reads the `u64` at `addr`, or returns the fault the read took.
///
/// # Safety
///
/// If `addr` is mapped, reading it must be sound (memory the caller may
/// read, aligned).
pub unsafe fn read_u64(addr: usize) -> Result<u64, Fault> {
    // SAFETY: the probe reads `addr` once; the caller vouches for the read
    // if it is mapped, and a fault returns through the trap vector.
    result(unsafe { probe_read(addr) })
}

/// Writes `value` at `addr`, or returns the fault the write took.
///
/// # Safety
///
/// If `addr` is mapped, writing it must be sound.
pub unsafe fn write_u64(addr: usize, value: u64) -> Result<(), Fault> {
    // SAFETY: as for `read_u64`.
    result(unsafe { probe_write(addr, value) }).map(drop)
}
