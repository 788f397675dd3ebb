//! The few x86-64 instructions the kernel needs: port I/O, MSRs, control
//! registers, TLB invalidation, descriptor tables, CPUID.
//!
//! Each is a one-line `asm!` wrapper. Those that can break memory safety or
//! the machine's state (port writes, MSR writes, CR3/CR4 writes, loading
//! descriptor tables) are `unsafe fn`s with their contract spelled out;
//! those that only read state or drop cached translations are safe.

use core::arch::asm;

/// `IA32_PAT`.
pub const MSR_IA32_PAT: u32 = 0x277;
/// `CR4.PGE`: global pages.
pub const CR4_PGE: u64 = 1 << 7;

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// The write must not break an invariant the rest of the kernel relies on
/// (the kernel owns the devices it talks to: COM1 and isa-debug-exit).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the device effect; no memory is touched.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// Writes a double word to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) };
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// Reading some device registers has side effects; the caller owns the
/// device.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes a model-specific register.
///
/// # Safety
///
/// `msr` exists and `value` is valid for it, and changing it keeps every
/// assumption of the running code (for `IA32_PAT`: the memory types of live
/// mappings stay what their users expect).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the register and value.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags)
        );
    }
}

/// Reads a model-specific register.
///
/// # Safety
///
/// `msr` exists (reading a missing one raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller vouches that the register exists; reading has no
    // side effect on memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The page-fault linear address.
pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// The page-table root (and flags) in use.
pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Switches to the page table at physical `root` (flushing non-global
/// translations).
///
/// # Safety
///
/// The new table maps everything the kernel uses from now on (its code,
/// stack, data, heap, descriptor tables) at the same virtual addresses,
/// with the rights the code needs.
pub unsafe fn write_cr3(root: u64) {
    // SAFETY: the caller vouches for the new table. Not `nomem`: memory
    // accesses must not move across the switch.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
}

/// `CR4`.
pub fn read_cr4() -> u64 {
    let value: u64;
    // SAFETY: reading CR4 has no side effect.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes `CR4`.
///
/// # Safety
///
/// The new value keeps the running code's assumptions (PAE stays on; the
/// features turned on are supported).
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: the caller vouches for the value; not `nomem`, as it may flush
    // the TLB.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// The time-stamp counter: cycles of a constant-rate clock, for relative
/// timings (under TCG only the ratio of two readings means anything).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads a counter; it touches no memory.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Drops the translation of the page containing `va`, global or not.
pub fn invlpg(va: usize) {
    // SAFETY: invalidating a translation is always safe: the next access
    // walks the page table again.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

/// Drops every translation, global ones included.
pub fn flush_tlb_all() {
    let cr4 = read_cr4();
    if cr4 & CR4_PGE != 0 {
        // SAFETY: toggling PGE off and on again is the architectural way to
        // flush global translations; nothing else in CR4 changes.
        unsafe {
            write_cr4(cr4 & !CR4_PGE);
        }
        // SAFETY: as above, restoring the original value.
        unsafe { write_cr4(cr4) };
    } else {
        // SAFETY: reloading the same root changes no mapping.
        unsafe { write_cr3(read_cr3()) };
    }
}

/// A `lgdt`/`lidt` operand.
#[repr(C, packed)]
#[derive(Debug)]
pub struct DescriptorTablePointer {
    /// Size in bytes minus one.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

/// Loads the GDT, reloads `CS` with `code` and the data segment registers
/// with `data`, and loads the task register with `tss`.
///
/// # Safety
///
/// `gdt` describes a table that stays valid and mapped for as long as it is
/// loaded, in which `code` is a 64-bit code segment, `data` a data segment
/// and `tss` an available 64-bit TSS whose memory also stays valid.
pub unsafe fn load_gdt(gdt: &DescriptorTablePointer, code: u16, data: u16, tss: u16) {
    // SAFETY: the caller vouches for the table and selectors; the far return
    // lands on the next instruction with the new CS.
    unsafe {
        asm!(
            "lgdt [{gdt}]",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "ltr {tss:x}",
            gdt = in(reg) gdt,
            code = in(reg) u64::from(code),
            data = in(reg) u64::from(data),
            tss = in(reg) u64::from(tss),
            tmp = lateout(reg) _,
            options(preserves_flags)
        );
    }
}

/// Loads the IDT.
///
/// # Safety
///
/// `idt` describes a table of valid gates that stays valid and mapped for
/// as long as it is loaded.
pub unsafe fn load_idt(idt: &DescriptorTablePointer) {
    // SAFETY: the caller vouches for the table.
    unsafe { asm!("lidt [{}]", in(reg) idt, options(readonly, nostack, preserves_flags)) };
}

/// Turns interrupts on (`sti`).
pub fn enable_interrupts() {
    // SAFETY: every vector the kernel can receive has a gate (exceptions,
    // shoot-down, wake-up and spurious), whose handlers take no lock.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Turns interrupts off (`cli`).
pub fn disable_interrupts() {
    // SAFETY: masking interrupts has no memory effect; nothing waits with
    // them off (see `crate::smp`).
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Turns interrupts on and halts until the next one, with no window in
/// between (`sti` takes effect after the next instruction).
pub fn enable_interrupts_and_halt() {
    // SAFETY: as in `enable_interrupts`; `hlt` only waits.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

/// Sets what kvirt's mappings assume on this CPU: kvirt's `IA32_PAT`
/// layout, and `CR4.PGE` where the CPU has global pages. The bootstrap CPU
/// calls it when it switches to kvirt's table, each AP as it starts.
pub fn init_paging_features() {
    // SAFETY: PAT support is checked at boot; index 0 stays writeback,
    // which is what every mapping in use so far has, and kvirt's encoding
    // assumes this value.
    unsafe { wrmsr(MSR_IA32_PAT, kvirt::arch::x86_64::PAT_MSR_VALUE) };
    if has_global_pages() {
        // SAFETY: PGE is supported; turning it on only makes kvirt's global
        // kernel mappings survive CR3 reloads (the platform flushes them
        // with invlpg or a PGE toggle).
        unsafe { write_cr4(read_cr4() | CR4_PGE) };
    }
}

/// Halts until the next interrupt (for ever, as interrupts stay off).
pub fn halt() -> ! {
    loop {
        // SAFETY: `hlt` only stops the CPU; interrupts are disabled, so it
        // stays stopped (the loop covers an NMI).
        unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}

/// `CPUID` leaf `leaf`: `(eax, ebx, ecx, edx)`.
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Whether the CPU can map 1 GiB pages (kvirt uses them wherever a range
/// allows).
pub fn has_1gib_pages() -> bool {
    cpuid(0x8000_0000).0 >= 0x8000_0001 && cpuid(0x8000_0001).3 & (1 << 26) != 0
}

/// Whether the CPU has global pages (`CR4.PGE`).
pub fn has_global_pages() -> bool {
    cpuid(1).3 & (1 << 13) != 0
}

/// Whether the CPU has the page attribute table (`IA32_PAT`).
pub fn has_pat() -> bool {
    cpuid(1).3 & (1 << 16) != 0
}

/// Whether the kernel runs under KVM (the hypervisor CPUID leaf says
/// `KVMKVMKVM`).
pub fn under_kvm() -> bool {
    if cpuid(1).2 & (1 << 31) == 0 {
        return false;
    }
    let (_, b, c, d) = cpuid(0x4000_0000);
    let mut signature = [0u8; 12];
    for (chunk, word) in signature.chunks_mut(4).zip([b, c, d]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    &signature == b"KVMKVMKVM\0\0\0"
}
