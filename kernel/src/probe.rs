//! Memory probes that survive a page fault.
//!
//! To check that an access faults (a guard page, a dropped area, a
//! read-only page), the access is made by a tiny assembly routine whose one
//! memory instruction is at a known label. If that instruction faults, the
//! page-fault handler ([`recover`]) records CR2 and the error code, sets the
//! routine's "faulted" result register and resumes at the label right after
//! the instruction, so the routine returns normally and the caller gets
//! `Err(PageFault)`. A fault anywhere else is still fatal.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::interrupts::TrapFrame;

core::arch::global_asm!(
    r#"
    .section .text.kernel_probe, "ax"

    /* probe_read(addr: rdi) -> (value: rax, faulted: rdx) */
    .global kernel_probe_read
kernel_probe_read:
    xor edx, edx
    .global kernel_probe_read_access
kernel_probe_read_access:
    mov rax, qword ptr [rdi]
    .global kernel_probe_read_resume
kernel_probe_read_resume:
    ret

    /* probe_write(addr: rdi, value: rsi) -> (0: rax, faulted: rdx) */
    .global kernel_probe_write
kernel_probe_write:
    xor edx, edx
    xor eax, eax
    .global kernel_probe_write_access
kernel_probe_write_access:
    mov qword ptr [rdi], rsi
    .global kernel_probe_write_resume
kernel_probe_write_resume:
    ret
"#
);

/// What a probe routine returns (in RAX:RDX).
#[repr(C)]
#[derive(Debug)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

extern "C" {
    fn kernel_probe_read(addr: usize) -> ProbeResult;
    fn kernel_probe_write(addr: usize, value: u64) -> ProbeResult;
    // Labels, not functions: only their addresses are used.
    fn kernel_probe_read_access();
    fn kernel_probe_read_resume();
    fn kernel_probe_write_access();
    fn kernel_probe_write_resume();
}

/// Faults caught on all CPUs (each CPU records its last one in its
/// [`PerCpu`](crate::percpu::PerCpu)).
static FAULTS_RECOVERED: AtomicUsize = AtomicUsize::new(0);

/// A page fault a probe caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address (CR2).
    pub addr: usize,
    /// The page-fault error code.
    pub error_code: u64,
}

/// The fault type the shared steps name.
pub type Fault = PageFault;

impl PageFault {
    /// The page was present: a protection violation (else: not present).
    pub fn present(&self) -> bool {
        self.error_code & 1 != 0
    }

    /// The access was a write.
    pub fn write(&self) -> bool {
        self.error_code & 2 != 0
    }
}

impl fmt::Display for PageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error code {:#x}: {}, {}, {}",
            self.error_code,
            if self.present() { "protection violation" } else { "not present" },
            if self.write() { "write" } else { "read" },
            if self.error_code & 4 != 0 { "user" } else { "supervisor" },
        )?;
        if self.error_code & 8 != 0 {
            f.write_str(", reserved bit set")?;
        }
        if self.error_code & 16 != 0 {
            f.write_str(", instruction fetch")?;
        }
        Ok(())
    }
}

/// Called by the page-fault handler: if the fault is a probe's access,
/// records it, makes the probe return "faulted" and returns `true`.
pub fn recover(frame: &mut TrapFrame, cr2: usize) -> bool {
    let resume = if frame.rip == kernel_probe_read_access as *const () as u64 {
        kernel_probe_read_resume as *const () as u64
    } else if frame.rip == kernel_probe_write_access as *const () as u64 {
        kernel_probe_write_resume as *const () as u64
    } else {
        return false;
    };
    let cpu = crate::percpu::this();
    cpu.fault_addr.store(cr2, Ordering::SeqCst);
    cpu.fault_code.store(frame.error_code, Ordering::SeqCst);
    FAULTS_RECOVERED.fetch_add(1, Ordering::SeqCst);
    frame.rax = 0;
    frame.rdx = 1;
    frame.rip = resume;
    true
}

fn last_fault() -> PageFault {
    let cpu = crate::percpu::this();
    PageFault {
        addr: cpu.fault_addr.load(Ordering::SeqCst),
        error_code: cpu.fault_code.load(Ordering::SeqCst),
    }
}

/// How many faults the probes have caught so far.
pub fn faults_recovered() -> usize {
    FAULTS_RECOVERED.load(Ordering::SeqCst)
}

/// Reads the `u64` at `addr`, or reports the page fault the read raised.
///
/// # Safety
///
/// If `addr` is mapped, reading 8 bytes there must be sound (no side
/// effects anyone relies on, no data race with a writer).
pub unsafe fn read_u64(addr: usize) -> Result<u64, PageFault> {
    // SAFETY: the caller vouches for the read if it succeeds; if it faults,
    // `recover` resumes the routine, which then returns normally.
    let r = unsafe { kernel_probe_read(addr) };
    if r.faulted != 0 {
        Err(last_fault())
    } else {
        Ok(r.value)
    }
}

/// Writes `value` at `addr`, or reports the page fault the write raised.
///
/// # Safety
///
/// If `addr` is mapped and writable, writing 8 bytes there must be sound
/// (nothing else owns that memory).
pub unsafe fn write_u64(addr: usize, value: u64) -> Result<(), PageFault> {
    // SAFETY: as in `read_u64`.
    let r = unsafe { kernel_probe_write(addr, value) };
    if r.faulted != 0 {
        Err(last_fault())
    } else {
        Ok(())
    }
}
