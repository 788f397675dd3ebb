//! Boot: the PVH entry, the way into 64-bit mode, and the start-of-day
//! information the loader leaves behind.
//!
//! QEMU's `-kernel` loads an ELF file that carries the Xen
//! `XEN_ELFNOTE_PHYS32_ENTRY` note (type 18) at the physical addresses of its
//! program headers, and starts the given 32-bit entry in protected mode with
//! paging off and `EBX` = the physical address of `struct hvm_start_info`.
//!
//! `pvh_start32` (below, linked at its physical address in the `boot`
//! segment) then:
//!
//! 1. checks that the CPU has long mode and NX (kvirt sets NX on every
//!    non-executable mapping), and otherwise says so on COM1 and exits QEMU;
//! 2. zeroes the boot page tables, the boot stack and `.bss` (QEMU zeroes
//!    them as it loads, but the PVH ABI does not promise it);
//! 3. builds the boot page tables: the first 4 GiB with 2 MiB pages, mapped
//!    three times: identity (the code running now), at the linear-mapping
//!    base `0xffff_8000_0000_0000` (where kvirt reaches physical memory
//!    while it builds its own tables), and the first GiB at
//!    `0xffff_ffff_8000_0000` (the kernel image at its link address);
//! 4. enables PAE, `EFER.LME` and `EFER.NXE`, then paging with `CR0.WP`,
//!    loads a 64-bit GDT and far-jumps into 64-bit code (`boot_enter_long_mode`,
//!    which the application processors run too);
//! 5. switches to the boot stack (in the image's `.bss`-like `.stack`
//!    section, so kvirt's mapping of the image covers it) and calls
//!    [`kernel_entry`] with the `hvm_start_info` address.
//!
//! The boot page tables live in the `boot` segment (physical addresses); once
//! the kernel switches to kvirt's page table nothing maps them any more.

use alloc::vec::Vec;
use core::ops::Range;

use kvirt::kspace::paddr_to_vaddr;
use kvirt::Paddr;

use crate::cpu;

/// How much physical memory the boot page tables map at the linear-mapping
/// base. kvirt reaches physical memory there before the switch, so only RAM
/// below this bound is handed to it.
pub const BOOT_LINEAR_MAP_LIMIT: Paddr = 4 << 30;

core::arch::global_asm!(
    r#"
    .section .note.xen, "a", @note
    .p2align 2
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start32

    .section .boot.bss, "aw", @nobits
    .p2align 12
    .global boot_pml4           /* the application processors' way in too (`smp`) */
boot_pml4:
    .skip 4096
boot_pdpt_low:
    .skip 4096
boot_pdpt_high:
    .skip 4096
boot_pd:
    .skip 4 * 4096          /* four page directories: 4 GiB of 2 MiB pages */
boot_tables_end:

    .section .boot.data, "aw"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff    /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
boot_bsp_far:                           /* where the bootstrap CPU enters 64-bit mode */
    .long boot_long_mode
    .word 0x08
boot_msg_no_long_mode:
    .asciz "kvirt-kernel: the CPU has no long mode\n"
boot_msg_no_nx:
    .asciz "kvirt-kernel: the CPU has no NX bit (kvirt sets it on every non-executable page)\n"

    .section .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov ebp, ebx                        /* hvm_start_info, kept for later */

    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .Lboot_no_long_mode
    mov eax, 0x80000001
    cpuid
    bt edx, 29                          /* LM */
    jnc .Lboot_no_long_mode
    bt edx, 20                          /* NX */
    jnc .Lboot_no_nx

    xor eax, eax
    mov edi, offset boot_pml4
    mov ecx, offset boot_tables_end
    sub ecx, edi
    shr ecx, 2
    rep stosd
    mov edi, offset __stack_phys_start
    mov ecx, offset __bss_phys_end
    sub ecx, edi
    shr ecx, 2
    rep stosd

    /* boot_pd[i] = i * 2 MiB | PS | W | P, for i in 0..2048 */
    mov edi, offset boot_pd
    xor ecx, ecx
.Lboot_fill_pd:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [edi + ecx * 8], eax
    mov eax, ecx
    shr eax, 11
    mov dword ptr [edi + ecx * 8 + 4], eax
    inc ecx
    cmp ecx, 2048
    jb .Lboot_fill_pd

    /* boot_pdpt_low[0..4] = the four page directories */
    mov edi, offset boot_pdpt_low
    mov eax, offset boot_pd
    or eax, 0x3
    mov ecx, 4
.Lboot_fill_pdpt:
    mov dword ptr [edi], eax
    add eax, 4096
    add edi, 8
    dec ecx
    jnz .Lboot_fill_pdpt

    /* 0xffff_ffff_8000_0000: PML4 entry 511, PDPT entry 510 -> the first GiB */
    mov eax, offset boot_pd
    or eax, 0x3
    mov dword ptr [boot_pdpt_high + 510 * 8], eax

    mov eax, offset boot_pdpt_low
    or eax, 0x3
    mov dword ptr [boot_pml4], eax              /* identity */
    mov dword ptr [boot_pml4 + 256 * 8], eax    /* linear mapping base */
    mov eax, offset boot_pdpt_high
    or eax, 0x3
    mov dword ptr [boot_pml4 + 511 * 8], eax    /* kernel image */

    mov edi, offset boot_bsp_far
    /* fall through */

    /* Enters 64-bit mode on the boot tables and the boot GDT, then jumps to
       the far pointer at `edi` (a 64-bit code address and selector 0x08).
       Needs no stack; the application processors come here too (`smp`). */
    .global boot_enter_long_mode
boot_enter_long_mode:
    mov eax, cr4
    or eax, 0x20                        /* PAE */
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xc0000080                 /* IA32_EFER */
    rdmsr
    or eax, 0x900                       /* LME | NXE */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001                  /* PG | WP | PE */
    mov cr0, eax
    lgdt [boot_gdtr]
    jmp fword ptr [edi]

.Lboot_no_long_mode:
    mov esi, offset boot_msg_no_long_mode
    jmp .Lboot_fail
.Lboot_no_nx:
    mov esi, offset boot_msg_no_nx
.Lboot_fail:
    mov dx, 0x3f8                       /* COM1 */
.Lboot_fail_print:
    lodsb
    test al, al
    jz .Lboot_fail_exit
    out dx, al
    jmp .Lboot_fail_print
.Lboot_fail_exit:
    mov dx, 0xf4                        /* isa-debug-exit */
    mov eax, 0x11
    out dx, eax
.Lboot_fail_halt:
    hlt
    jmp .Lboot_fail_halt

    .code64
boot_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    movabs rax, offset __stack_top
    mov rsp, rax
    mov edi, ebp                        /* kernel_entry(hvm_start_info) */
    movabs rax, offset kernel_entry
    call rax
.Lboot_halt:
    hlt
    jmp .Lboot_halt

    .section .bss.boot_stack, "aw", @nobits
    .p2align 12
    .skip 256 * 1024
"#
);

/// The 64-bit entry, called from `boot_long_mode` on the boot stack.
#[no_mangle]
extern "C" fn kernel_entry(start_info_paddr: u32) -> ! {
    crate::kernel_main(start_info_paddr as Paddr)
}

/// `struct hvm_start_info` (Xen `arch-x86/hvm/start_info.h`), version 1.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`: an E820-style memory-map entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The E820 type of RAM.
pub const E820_RAM: u32 = 1;

/// One entry of the firmware memory map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareRegion {
    /// The physical range (as reported, not page aligned).
    pub range: Range<Paddr>,
    /// The E820 type (1 = RAM).
    pub kind: u32,
}

/// What the loader told us, copied out of its memory.
#[derive(Debug)]
pub struct BootInfo {
    /// The firmware memory map.
    pub memory_map: Vec<FirmwareRegion>,
    /// The ACPI RSDP's physical address, or 0 if the loader gave none.
    pub rsdp: Paddr,
}

/// A type every bit pattern of which is a valid value, so it may be read
/// from memory that firmware wrote.
///
/// # Safety
///
/// The type has no invalid bit patterns and no padding: integers, arrays of
/// them, and `repr(C)` structs of them laid out without gaps.
pub(crate) unsafe trait Plain: Copy {}

// SAFETY: integers and byte arrays have no invalid bit patterns.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl<const N: usize> Plain for [u8; N] {}
// SAFETY: `repr(C)`, four `u32`, four `u64` and two `u32`: no gaps.
unsafe impl Plain for HvmStartInfo {}
// SAFETY: `repr(C)`, two `u64` and two `u32`: no gaps.
unsafe impl Plain for HvmMemmapEntry {}

extern "C" {
    // The boot page tables' root (a label of the assembly above).
    static boot_pml4: u8;
}

/// Reads a `T` at physical `pa` through the boot tables' linear mapping.
///
/// # Panics
///
/// Unless the boot page tables are loaded and `pa..pa + size_of::<T>()`
/// lies below [`BOOT_LINEAR_MAP_LIMIT`], which they map linearly.
pub(crate) fn read_phys<T: Plain>(pa: Paddr) -> T {
    let root = core::ptr::addr_of!(boot_pml4) as u64;
    assert!(
        cpu::read_cr3() & !0xfff == root,
        "physical memory is read this way only on the boot page tables"
    );
    assert!(
        pa.checked_add(core::mem::size_of::<T>()).is_some_and(|end| end <= BOOT_LINEAR_MAP_LIMIT),
        "physical {pa:#x} is beyond the boot linear mapping"
    );
    let ptr = paddr_to_vaddr(pa) as *const T;
    // SAFETY: checked above: the boot tables are loaded and map the range
    // (RAM or firmware tables) at the linear base; every bit pattern is a
    // `T` (`Plain`); an unaligned read makes no alignment assumption.
    unsafe { ptr.read_unaligned() }
}

/// Copies the memory map out of the loader's `hvm_start_info` at physical
/// `start_info`. Must run while the boot page tables are loaded, before
/// kvirt may hand out the pages that hold it.
///
/// # Panics
///
/// Panics if the structure is not a version-1 `hvm_start_info` (no memory
/// map) or lies beyond the boot linear mapping.
pub fn read_start_info(start_info: Paddr) -> BootInfo {
    assert!(start_info != 0, "the loader gave no hvm_start_info");
    let info: HvmStartInfo = read_phys(start_info);
    assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE, "hvm_start_info has a bad magic value");
    assert!(info.version >= 1, "hvm_start_info version {} has no memory map", info.version);
    let entries = info.memmap_entries as usize;
    let entry_size = core::mem::size_of::<HvmMemmapEntry>();
    let table = info.memmap_paddr as Paddr;
    assert!(table != 0 || entries == 0, "hvm_start_info has {entries} memory-map entries at address 0");
    let memory_map = (0..entries)
        .map(|i| {
            let e: HvmMemmapEntry = read_phys(table + i * entry_size);
            FirmwareRegion { range: e.addr as Paddr..e.addr.saturating_add(e.size) as Paddr, kind: e.kind }
        })
        .collect();
    BootInfo { memory_map, rsdp: info.rsdp_paddr as Paddr }
}
