//! Entry from OpenSBI, the boot page table, the trap vector and the fault
//! probe.
//!
//! OpenSBI enters `_start` in S-mode with the MMU off, `a0` = hart id and
//! `a1` = the device tree's physical address. The image is linked at
//! `0xffff_ffff_8020_0000` and loaded at `0x8020_0000`, so `_start` first
//! turns on a boot Sv39 table of four gigapages, jumps to its link address
//! and calls [`crate::kmain`]:
//!
//! ```text
//!  root index  virtual                    physical      for
//!  0           0x0000_0000..0x4000_0000   0x0           devices (UART, test device)
//!  2           0x8000_0000..0xc000_0000   0x8000_0000   the code running at the load address
//!  258         0xffff_ffc0_8000_0000 ..   0x8000_0000   kvirt's linear mapping of RAM
//!  510         0xffff_ffff_8000_0000 ..   0x8000_0000   the image at its link address
//! ```
//!
//! kvirt's own table replaces it once the kernel space is built.
//!
//! Traps: the only expected ones are page faults inside `probe_read` and
//! `probe_write` (used through `kernel-common/probe.rs`). The vector sends
//! those back to the probe's recovery label, which returns `stval` and
//! `scause`; anything else is fatal ([`trap_fatal`]).

use core::arch::global_asm;

/// A gigapage leaf: V, R, W, X, A, D and G, for physical `pa`.
const fn gigapage(pa: u64) -> u64 {
    (pa >> 12) << 10 | 0b1110_1111
}

/// The boot root table (see the module documentation); in `.data`, so it
/// is in place before anything runs.
#[repr(C, align(4096))]
struct Root([u64; 512]);

#[no_mangle]
static BOOT_ROOT: Root = {
    let mut t = [0u64; 512];
    t[0] = gigapage(0);
    t[2] = gigapage(0x8000_0000);
    t[258] = gigapage(0x8000_0000);
    t[510] = gigapage(0x8000_0000);
    Root(t)
};

global_asm!(
    r#"
    .section .text.boot, "ax"
    .globl _start
    .option push
    .option norelax
    .option norvc
_start:
    la t0, BOOT_ROOT
    srli t0, t0, 12
    li t1, 8
    slli t1, t1, 60
    or t0, t0, t1
    csrw satp, t0
    sfence.vma
    ld t0, 1f
    jr t0
    .balign 8
1:  .dword 2f
2:  ld sp, 3f
    la t0, __bss_start
    la t1, __bss_end
4:  bgeu t0, t1, 5f
    sd zero, 0(t0)
    addi t0, t0, 8
    j 4b
5:  la t0, trap_entry
    csrw stvec, t0
    call kmain
6:  wfi
    j 6b
    .balign 8
3:  .dword boot_stack_top

    .balign 4
    .globl trap_entry
trap_entry:
    csrw sscratch, t0
    la t0, PROBE_RECOVER
    ld t0, 0(t0)
    beqz t0, 7f
    csrw sepc, t0
    csrr t0, sscratch
    sret
7:  csrr t0, sscratch
    j trap_fatal

    .globl probe_read
probe_read:
    la t1, PROBE_RECOVER
    la t0, 8f
    sd t0, 0(t1)
    ld a0, 0(a0)
    li a1, 0
    sd zero, 0(t1)
    ret
8:  csrr a1, scause
    csrr a0, stval
    sd zero, 0(t1)
    ret

    .globl probe_write
probe_write:
    la t1, PROBE_RECOVER
    la t0, 9f
    sd t0, 0(t1)
    sd a1, 0(a0)
    li a0, 0
    li a1, 0
    sd zero, 0(t1)
    ret
9:  csrr a1, scause
    csrr a0, stval
    sd zero, 0(t1)
    ret
    .option pop

    .section .bss.stack, "aw", @nobits
    .balign 4096
boot_stack:
    .space 65536
boot_stack_top:
"#
);

/// Where a page fault inside a probe resumes (0: no probe is running).
#[no_mangle]
static mut PROBE_RECOVER: usize = 0;

/// `scause` of a load page fault.
const LOAD_PAGE_FAULT: u64 = 13;
/// `scause` of a store page fault.
const STORE_PAGE_FAULT: u64 = 15;

/// A page fault a probe took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address (`stval`).
    pub addr: usize,
    /// `scause`.
    cause: u64,
}

impl Fault {
    /// The fault at `addr` whose cause register reads `code` (see
    /// `kernel-common/probe.rs`).
    pub fn new(addr: usize, code: u64) -> Self {
        Self { addr, cause: code }
    }

    /// Whether the fault hit a present entry without the rights. RISC-V
    /// reports both cases as the same page fault, so this is always false:
    /// the steps ask it only where nothing is mapped.
    pub fn present(self) -> bool {
        false
    }

    /// A store page fault.
    pub fn write(self) -> bool {
        self.cause == STORE_PAGE_FAULT
    }
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.cause {
            LOAD_PAGE_FAULT => write!(f, "load page fault at {:#x}", self.addr),
            STORE_PAGE_FAULT => write!(f, "store page fault at {:#x}", self.addr),
            cause => write!(f, "trap with scause {cause:#x} at {:#x}", self.addr),
        }
    }
}

/// An unexpected trap: reports it and fails the run.
#[no_mangle]
extern "C" fn trap_fatal() -> ! {
    let (cause, epc, tval): (u64, u64, u64);
    // SAFETY: reading trap CSRs has no side effect.
    unsafe {
        core::arch::asm!("csrr {0}, scause", "csrr {1}, sepc", "csrr {2}, stval", out(reg) cause, out(reg) epc, out(reg) tval);
    }
    panic!("unexpected trap: scause {cause:#x} at sepc {epc:#x}, stval {tval:#x}");
}
