//! Entry, the boot page tables, the exception vectors and the fault probe.
//!
//! QEMU loads the ELF at `0x4020_0000` and enters `_start` at EL1 with the
//! MMU off; the device tree is at the start of RAM (`0x4000_0000`). The
//! image is linked at `0xffff_ffff_8020_0000`, so `_start` sets up `MAIR`,
//! `TCR` (4 KiB granule, 48-bit halves) and boot tables of 1 GiB blocks,
//! turns the MMU on, jumps to its link address and calls [`crate::kmain`]:
//!
//! ```text
//!  TTBR0 (lower half)                       TTBR1 (upper half)
//!  0x0000_0000  devices (nGnRE)              0xffff_8000_4000_0000  RAM, kvirt's linear mapping
//!  0x4000_0000  RAM (the code running at     0xffff_ffff_8000_0000  RAM, the image at its link
//!               the load address)                                   address
//! ```
//!
//! kvirt's table replaces both halves once the kernel space is built.
//!
//! Exceptions: the only expected ones are data aborts inside `probe_read`
//! and `probe_write` (used through `kernel-common/probe.rs`); the vector
//! sends those back to the probe's recovery label, which returns `FAR_EL1`
//! and `ESR_EL1`, anything else is fatal ([`trap_fatal`]).

use core::arch::global_asm;

/// The boot tables: TTBR0's level 0 and 1, TTBR1's level 0, and the level
/// 1 tables of the linear mapping and of the image (filled by `_start`).
#[repr(C, align(4096))]
struct BootTables([[u64; 512]; 5]);

#[no_mangle]
#[link_section = ".data.boot_tables"]
static mut BOOT_TABLES: BootTables = BootTables([[0; 512]; 5]);

global_asm!(
    r#"
    .section .text.boot, "ax"
    .globl _start
_start:
    /* Rust code uses FP/SIMD registers: do not trap them (CPACR_EL1.FPEN). */
    mov x5, #(3 << 20)
    msr cpacr_el1, x5
    isb
    adrp x0, BOOT_TABLES
    add x1, x0, #4096
    add x2, x0, #8192
    add x3, x0, #12288
    add x4, x0, #16384
    /* TTBR0: L0[0] -> L1; L1[0] = devices, L1[1] = RAM */
    orr x5, x1, #3
    str x5, [x0]
    ldr x5, =0x0060000000000409
    str x5, [x1]
    ldr x5, =0x0000000040000701
    str x5, [x1, #8]
    /* TTBR1: L0[256] -> linear L1, L0[511] -> image L1 */
    orr x5, x3, #3
    str x5, [x2, #2048]
    orr x5, x4, #3
    str x5, [x2, #4088]
    ldr x5, =0x0000000040000701
    str x5, [x3, #8]
    str x5, [x4, #4080]
    ldr x5, ={mair}
    msr mair_el1, x5
    ldr x5, ={tcr}
    msr tcr_el1, x5
    msr ttbr0_el1, x0
    msr ttbr1_el1, x2
    dsb ish
    tlbi vmalle1
    dsb ish
    isb
    mrs x5, sctlr_el1
    orr x5, x5, #1
    orr x5, x5, #(1 << 2)
    orr x5, x5, #(1 << 12)
    msr sctlr_el1, x5
    isb
    ldr x5, =1f
    br x5
1:  ldr x5, =boot_stack_top
    mov sp, x5
    adrp x5, __bss_start
    add x5, x5, :lo12:__bss_start
    adrp x6, __bss_end
    add x6, x6, :lo12:__bss_end
2:  cmp x5, x6
    b.hs 3f
    str xzr, [x5], #8
    b 2b
3:  adrp x5, vectors
    add x5, x5, :lo12:vectors
    msr vbar_el1, x5
    isb
    mov x0, #0x40000000
    bl kmain
4:  wfe
    b 4b
    .ltorg

    .balign 2048
vectors:
    .rept 4
    b 7f
    .balign 128
    .endr
    /* current EL with SP_ELx: synchronous */
    stp x9, x10, [sp, #-16]!
    adrp x9, PROBE_RECOVER
    ldr x9, [x9, :lo12:PROBE_RECOVER]
    cbz x9, 6f
    msr elr_el1, x9
    ldp x9, x10, [sp], #16
    eret
6:  ldp x9, x10, [sp], #16
    b trap_fatal
    .balign 128
    .rept 11
    b 7f
    .balign 128
    .endr
7:  b trap_fatal

    .globl probe_read
probe_read:
    adrp x9, PROBE_RECOVER
    add x9, x9, :lo12:PROBE_RECOVER
    adr x10, 8f
    str x10, [x9]
    ldr x0, [x0]
    mov x1, #0
    str xzr, [x9]
    ret
8:  mrs x1, esr_el1
    mrs x0, far_el1
    str xzr, [x9]
    ret

    .globl probe_write
probe_write:
    adrp x9, PROBE_RECOVER
    add x9, x9, :lo12:PROBE_RECOVER
    adr x10, 9f
    str x10, [x9]
    str x1, [x0]
    mov x0, #0
    mov x1, #0
    str xzr, [x9]
    ret
9:  mrs x1, esr_el1
    mrs x0, far_el1
    str xzr, [x9]
    ret

    .section .bss.stack, "aw", @nobits
    .balign 4096
boot_stack:
    .space 65536
boot_stack_top:
"#,
    mair = const kvirt::arch::aarch64::MAIR_EL1_VALUE,
    tcr = const TCR,
);

/// `TCR_EL1`: 48-bit halves (`T0SZ` = `T1SZ` = 16), 4 KiB granules,
/// write-back inner-shareable walks, 48-bit physical addresses.
const TCR: u64 = 16 | 1 << 8 | 1 << 10 | 3 << 12 | 16 << 16 | 1 << 24 | 1 << 26 | 3 << 28 | 2 << 30 | 5 << 32;

/// Where a data abort inside a probe resumes (0: no probe is running).
#[no_mangle]
static mut PROBE_RECOVER: usize = 0;

/// A data abort a probe took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address (`FAR_EL1`).
    pub addr: usize,
    /// `ESR_EL1`.
    esr: u64,
}

impl Fault {
    /// The fault at `addr` whose cause register reads `code` (see
    /// `kernel-common/probe.rs`).
    pub fn new(addr: usize, code: u64) -> Self {
        Self { addr, esr: code }
    }

    /// A data abort from EL1 (EC 0x25) with a translation fault (DFSC
    /// 0b0001xx): no valid entry.
    fn translation(self) -> bool {
        self.esr >> 26 == 0x25 && self.esr & 0x3c == 0x04
    }

    /// Whether the entry was there (anything but a translation fault).
    pub fn present(self) -> bool {
        !self.translation()
    }

    /// The access was a write (`WnR`).
    pub fn write(self) -> bool {
        self.esr & (1 << 6) != 0
    }
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = if self.write() { "write" } else { "read" };
        let kind = if self.translation() { "translation fault" } else { "data abort" };
        write!(f, "{kind} on a {what} at {:#x} (ESR {:#x})", self.addr, self.esr)
    }
}

/// An unexpected exception: reports it and fails the run.
#[no_mangle]
extern "C" fn trap_fatal() -> ! {
    let (esr, elr, far): (u64, u64, u64);
    // SAFETY: reading exception registers has no side effect.
    unsafe {
        core::arch::asm!("mrs {0}, esr_el1", "mrs {1}, elr_el1", "mrs {2}, far_el1", out(reg) esr, out(reg) elr, out(reg) far);
    }
    panic!("unexpected exception: ESR {esr:#x} at ELR {elr:#x}, FAR {far:#x}");
}
