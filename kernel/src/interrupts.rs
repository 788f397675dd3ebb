//! The GDT (with a TSS for the double-fault stack), the IDT and the CPU
//! exception handlers.
//!
//! Stable Rust has no `x86-interrupt` calling convention, so each exception
//! vector enters through a few lines of assembly (`exc_stub_N` below) that
//! push a dummy error code where the CPU pushes none, push the vector number,
//! save the caller-saved registers and call [`kernel_exception`] with a
//! pointer to the resulting [`TrapFrame`]. The handler may change the frame
//! (the page-fault probes of [`crate::probe`] do, to resume after a fault);
//! `iretq` then returns to the saved (possibly changed) RIP.
//!
//! Every other exception is fatal: the handler panics with its name, RIP
//! and error code (and CR2 for page faults), which prints and exits QEMU
//! with failure. A double fault runs on its own stack (IST 1), so even a
//! stack overflow into the guard page below the boot stack is reported.
//!
//! The tables are allocated on the heap and leaked: they live in `.bss`, so
//! they stay mapped after the switch to kvirt's page table.

use alloc::boxed::Box;
use alloc::vec;

use crate::cpu::{self, DescriptorTablePointer};

const KERNEL_CODE: u16 = 0x08;
const KERNEL_DATA: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;
const DOUBLE_FAULT_IST: u8 = 1;
const DOUBLE_FAULT_STACK_SIZE: usize = 16 * 1024;

/// The vector of the page fault.
pub const PAGE_FAULT: u64 = 14;

core::arch::global_asm!(
    r#"
    .section .text.kernel_exceptions, "ax"
    .macro exc_stub vec, has_error_code
exc_stub_\vec:
    .if \has_error_code == 0
    push 0
    .endif
    push \vec
    jmp exc_common
    .endm

    exc_stub 0, 0
    exc_stub 1, 0
    exc_stub 2, 0
    exc_stub 3, 0
    exc_stub 4, 0
    exc_stub 5, 0
    exc_stub 6, 0
    exc_stub 7, 0
    exc_stub 8, 1
    exc_stub 9, 0
    exc_stub 10, 1
    exc_stub 11, 1
    exc_stub 12, 1
    exc_stub 13, 1
    exc_stub 14, 1
    exc_stub 15, 0
    exc_stub 16, 0
    exc_stub 17, 1
    exc_stub 18, 0
    exc_stub 19, 0
    exc_stub 20, 0
    exc_stub 21, 1
    exc_stub 22, 0
    exc_stub 23, 0
    exc_stub 24, 0
    exc_stub 25, 0
    exc_stub 26, 0
    exc_stub 27, 0
    exc_stub 28, 0
    exc_stub 29, 1
    exc_stub 30, 1
    exc_stub 31, 0
    exc_stub {shootdown}, 0
    exc_stub {wake}, 0
    exc_stub {spurious}, 0

    /* The CPU aligned RSP to 16 and pushed 5 words; with the error code,
       the vector and 9 registers RSP is 16-aligned again at the call. */
exc_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rdi, rsp
    cld
    call kernel_exception
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq

    .section .rodata.kernel_exceptions, "a"
    .p2align 3
    .global kernel_exception_stubs
kernel_exception_stubs:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\vec
    .endr
    .global kernel_interrupt_stubs
kernel_interrupt_stubs:
    .quad exc_stub_{shootdown}
    .quad exc_stub_{wake}
    .quad exc_stub_{spurious}
"#,
    shootdown = const crate::smp::SHOOTDOWN_VECTOR,
    wake = const crate::smp::WAKE_VECTOR,
    spurious = const crate::apic::SPURIOUS_VECTOR,
);

extern "C" {
    /// The entry points of vectors 0..32, in order.
    static kernel_exception_stubs: [u64; 32];
    /// The entry points of [`INTERRUPT_VECTORS`], in order.
    static kernel_interrupt_stubs: [u64; 3];
}

/// The interrupt vectors with a gate: shoot-down, wake-up and spurious.
const INTERRUPT_VECTORS: [u8; 3] =
    [crate::smp::SHOOTDOWN_VECTOR, crate::smp::WAKE_VECTOR, crate::apic::SPURIOUS_VECTOR];

/// What the entry stub saved, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// The Rust side of every exception.
#[no_mangle]
extern "C" fn kernel_exception(frame: &mut TrapFrame) {
    match frame.vector {
        v if v == u64::from(crate::smp::SHOOTDOWN_VECTOR) => return crate::smp::on_shootdown_ipi(),
        v if v == u64::from(crate::smp::WAKE_VECTOR) => return crate::smp::on_wake_ipi(),
        // A spurious interrupt takes no EOI.
        v if v == u64::from(crate::apic::SPURIOUS_VECTOR) => return,
        _ => {}
    }
    if frame.vector == PAGE_FAULT {
        let cr2 = cpu::read_cr2() as usize;
        if crate::probe::recover(frame, cr2) {
            return;
        }
        panic!(
            "unexpected page fault at {cr2:#x} ({}), rip {:#x}, rsp {:#x}",
            crate::probe::PageFault { addr: cr2, error_code: frame.error_code },
            frame.rip,
            frame.rsp
        );
    }
    panic!(
        "CPU exception {} ({}), error code {:#x}, rip {:#x}, rsp {:#x}",
        frame.vector,
        exception_name(frame.vector),
        frame.error_code,
        frame.rip,
        frame.rsp
    );
}

fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        20 => "virtualisation",
        21 => "control protection",
        _ => "reserved",
    }
}

/// The 64-bit task-state segment: only the interrupt stack table is used.
#[repr(C, packed(4))]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

/// One IDT gate.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}

impl Gate {
    /// A present, DPL-0, 64-bit interrupt gate (interrupts stay off).
    fn interrupt(handler: u64, ist: u8) -> Self {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CODE,
            ist,
            attributes: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            _reserved: 0,
        }
    }
}

/// The IDT, built once and shared by every CPU.
static IDT: spin::Once<&'static [Gate; 256]> = spin::Once::new();

/// Builds the IDT and loads it, with this CPU's GDT and TSS (the bootstrap
/// CPU, once).
pub fn init() {
    IDT.call_once(|| {
        // SAFETY: `kernel_exception_stubs` and `kernel_interrupt_stubs` are
        // read-only tables of code addresses defined in the assembly above.
        let (exceptions, interrupts) = unsafe { (kernel_exception_stubs, kernel_interrupt_stubs) };
        let mut gates = [Gate::default(); 256];
        for (vector, &stub) in exceptions.iter().enumerate() {
            let ist = if vector == 8 { DOUBLE_FAULT_IST } else { 0 };
            gates[vector] = Gate::interrupt(stub, ist);
        }
        for (&vector, &stub) in INTERRUPT_VECTORS.iter().zip(&interrupts) {
            gates[usize::from(vector)] = Gate::interrupt(stub, 0);
        }
        Box::leak(Box::new(gates))
    });
    init_cpu();
}

/// Builds and loads this CPU's GDT and TSS (each CPU needs its own TSS: a
/// loaded one is marked busy), with its own double-fault stack, and loads
/// the shared IDT.
pub fn init_cpu() {
    let df_stack = Box::leak(vec![0u8; DOUBLE_FAULT_STACK_SIZE].into_boxed_slice());
    let df_stack_top = (df_stack.as_ptr() as u64 + DOUBLE_FAULT_STACK_SIZE as u64) & !0xf;
    let mut ist = [0; 7];
    ist[usize::from(DOUBLE_FAULT_IST) - 1] = df_stack_top;
    let tss: &'static Tss = Box::leak(Box::new(Tss {
        _reserved0: 0,
        rsp: [0; 3],
        _reserved1: 0,
        ist,
        _reserved2: 0,
        _reserved3: 0,
        iomap_base: core::mem::size_of::<Tss>() as u16,
    }));
    let tss_base = tss as *const Tss as u64;
    let tss_limit = core::mem::size_of::<Tss>() as u64 - 1;
    let tss_low = (tss_limit & 0xffff)
        | (tss_base & 0xff_ffff) << 16
        | 0x89 << 40 // present, available 64-bit TSS
        | ((tss_limit >> 16) & 0xf) << 48
        | ((tss_base >> 24) & 0xff) << 56;
    let gdt: &'static [u64; 5] = Box::leak(Box::new([
        0,
        0x00af_9a00_0000_ffff, // 0x08: 64-bit code
        0x00cf_9200_0000_ffff, // 0x10: data
        tss_low,               // 0x18: TSS (two slots)
        tss_base >> 32,
    ]));
    let gdt_ptr =
        DescriptorTablePointer { limit: (core::mem::size_of_val(gdt) - 1) as u16, base: gdt.as_ptr() as u64 };
    // SAFETY: the GDT and TSS are leaked (valid for ever) and in `.bss`
    // (mapped before and after the switch to kvirt's table); the selectors
    // name its code, data and TSS descriptors.
    unsafe { cpu::load_gdt(&gdt_ptr, KERNEL_CODE, KERNEL_DATA, TSS_SELECTOR) };

    let idt = IDT.get().expect("interrupts::init runs on the bootstrap CPU first");
    let idt_ptr = DescriptorTablePointer {
        limit: (core::mem::size_of_val(*idt) - 1) as u16,
        base: idt.as_ptr() as u64,
    };
    // SAFETY: the IDT is leaked and in `.bss`; every gate points to an entry
    // stub with the kernel code selector, or is not present.
    unsafe { cpu::load_idt(&idt_ptr) };
}
