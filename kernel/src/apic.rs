//! The local APIC, in xAPIC mode: its register page is mapped once with
//! kvirt (untracked, uncached) at the same virtual address on every CPU;
//! each CPU sees its own APIC there.
//!
//! Only what SMP needs: the APIC ID, enabling the APIC with a spurious
//! vector, inter-processor interrupts (INIT, start-up and fixed) and
//! end-of-interrupt.

use core::sync::atomic::{AtomicUsize, Ordering};

use kvirt::kspace::KVirtArea;
use kvirt::{Paddr, PAGE_SIZE};

use crate::cpu;

/// `IA32_APIC_BASE`.
const MSR_APIC_BASE: u32 = 0x1b;

const REG_ID: usize = 0x20;
const REG_EOI: usize = 0xb0;
const REG_SPURIOUS: usize = 0xf0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
/// ICR: the IPI is still being sent.
const ICR_PENDING: u32 = 1 << 12;
/// ICR: level "assert" (required for every delivery mode but INIT de-assert).
const ICR_ASSERT: u32 = 1 << 14;

/// The vector of spurious interrupts (handled without an EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Where the register page is mapped (0 until [`map`]).
static BASE: AtomicUsize = AtomicUsize::new(0);

/// The physical address of the local APIC's register page.
///
/// # Panics
///
/// If the APIC is disabled or in x2APIC mode (which has no MMIO page).
pub fn paddr() -> Paddr {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let msr = unsafe { cpu::rdmsr(MSR_APIC_BASE) };
    assert!(msr & (1 << 11) != 0, "the local APIC is disabled");
    assert!(msr & (1 << 10) == 0, "the local APIC is in x2APIC mode (no MMIO)");
    (msr & 0x000f_ffff_ffff_f000) as Paddr
}

/// Maps the local APIC's register page (once, on the bootstrap CPU, after
/// the global kernel space exists).
pub fn map() {
    let pa = paddr();
    let prop = crate::steps::uncached();
    // SAFETY: the local APIC's register page: device memory no Rust object
    // owns; only this module touches it, through the accessors below.
    let area = unsafe { KVirtArea::map_untracked_frames(PAGE_SIZE, 0, pa..pa + PAGE_SIZE, prop) };
    BASE.store(area.start(), Ordering::SeqCst);
    // The mapping lives as long as the kernel.
    core::mem::forget(area);
}

fn reg(offset: usize) -> *mut u32 {
    let base = BASE.load(Ordering::Relaxed);
    assert!(base != 0, "the local APIC is not mapped yet");
    (base + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: a 32-bit aligned register of the APIC page, mapped uncached
    // for the kernel's lifetime; the registers read here have no side effect.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`; the callers write registers whose effect they
    // own (spurious vector, EOI, ICR).
    unsafe { reg(offset).write_volatile(value) }
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Masks every line of the two legacy 8259 PICs. Firmware leaves their
/// timer line on vector 8 (the double fault's), which would fire the moment
/// interrupts are on; the kernel takes interrupts from the local APIC only.
pub fn mask_legacy_pic() {
    // SAFETY: writing the interrupt mask registers of the 8259s (data ports
    // 0x21 and 0xa1) only masks their lines; nothing else uses them.
    unsafe {
        cpu::outb(0x21, 0xff);
    }
    // SAFETY: as above, for the second PIC.
    unsafe { cpu::outb(0xa1, 0xff) };
}

/// Enables this CPU's APIC, with [`SPURIOUS_VECTOR`].
pub fn enable() {
    write(REG_SPURIOUS, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Sends an IPI with ICR low word `command` to the CPU with APIC ID
/// `apic_id`, and waits until the APIC has sent it. Interrupt handlers do
/// not send IPIs, so the two ICR writes are not interleaved on one CPU.
fn send(apic_id: u32, command: u32) {
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, command);
    while read(REG_ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// A fixed interrupt with `vector` to `apic_id`.
pub fn send_fixed(apic_id: u32, vector: u8) {
    send(apic_id, ICR_ASSERT | u32::from(vector));
}

/// INIT to `apic_id` (it then waits for a start-up IPI).
pub fn send_init(apic_id: u32) {
    send(apic_id, ICR_ASSERT | 0x500);
}

/// A start-up IPI: `apic_id` begins in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    send(apic_id, ICR_ASSERT | 0x600 | u32::from(page));
}
