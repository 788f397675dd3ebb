//! The application processors: bring-up, the idle loop, running a job on
//! every CPU, and TLB shoot-downs by IPI.
//!
//! ## Bring-up
//!
//! An application processor (AP) wakes in real mode at the page a
//! start-up IPI names, which must lie below 1 MiB. `kernel_main` copies the
//! trampoline below there ([`install_trampoline`], page 8, inside the first
//! MiB that kvirt is told is Reserved) while the boot page tables are still
//! loaded. The AP then goes:
//!
//! ```text
//!  0x8000  real mode        lgdt (the trampoline's own GDT), CR0.PE
//!     |    far jump
//!  boot    32-bit, paging   boot_enter_long_mode, as the bootstrap CPU:
//!  text    off              PAE, CR3 = boot_pml4 (its boot tables, still in
//!     |                     the image, which kvirt never hands out),
//!     |    far jump         EFER.LME|NXE, CR0.PG|WP, the boot GDT
//!  boot    64-bit, boot     identity-mapped; jumps to the kernel's link
//!  text    tables           address, which the boot tables also map
//!     |
//!  .text   64-bit           CR3 = kvirt's root, RSP = its own stack (a kvirt
//!                           area, with guard pages), call kvirt_ap_main
//! ```
//!
//! so the table the AP enables is the boot one, which maps the trampoline,
//! and it reaches kvirt's table from code both tables map: kvirt's table
//! needs no identity mapping. [`start_aps`] starts the APs one at a time
//! (INIT, start-up, start-up) and waits for each to come online;
//! `kvirt_ap_main` sets the CPU's `GS` base ([`crate::percpu`]), its own
//! GDT and TSS, `IA32_PAT` and `CR4.PGE` as on the bootstrap CPU, enables
//! its local APIC, comes online, flushes its whole TLB and waits for work
//! with interrupts on.
//!
//! ## Shoot-downs
//!
//! [`shootdown`] serialises on one lock, posts the range, sends
//! [`SHOOTDOWN_VECTOR`] to every other online CPU and waits until each has
//! invalidated it (the handler counts down `PENDING`). Every CPU runs the
//! kernel with interrupts on, so a CPU spinning on any lock still takes a
//! shoot-down; handlers take no lock and never wait. A CPU that comes
//! online flushes its whole TLB *after* it is counted online, so a
//! shoot-down that did not reach it left nothing stale behind.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use kvirt::kspace::{paddr_to_vaddr, KVirtArea};
use kvirt::platform::TlbFlushOp;
use kvirt::{Paddr, PAGE_SIZE};

use crate::percpu::{self, MAX_CPUS};
use crate::{apic, cpu, interrupts, platform, println};

/// Where the real-mode trampoline is copied (start-up IPI page 8).
const TRAMPOLINE: Paddr = 0x8000;
/// Each application processor's stack.
const AP_STACK_SIZE: usize = 64 * 1024;
/// TSC cycles to wait for an AP to come online before giving up.
const START_TIMEOUT_CYCLES: u64 = 20_000_000_000;

/// The vector of TLB shoot-down IPIs.
pub const SHOOTDOWN_VECTOR: u8 = 0xf0;
/// The vector that wakes an idle CPU for a job.
pub const WAKE_VECTOR: u8 = 0xf1;

core::arch::global_asm!(
    r#"
    .section .boot.text, "ax"
    .p2align 12
    .code16
    .global kvirt_ap_trampoline_start
kvirt_ap_trampoline_start:
    cli
    cld
    xor ax, ax
    mov ds, ax
    lgdt [kvirt_ap_gdtr_offset + 0x8000]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea                    /* ljmpl 0x08:kvirt_ap_start32 */
    .long kvirt_ap_start32
    .word 0x08
    .p2align 3
kvirt_ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff            /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff            /* 0x10: data */
kvirt_ap_gdt_end:
kvirt_ap_gdtr:
    .word kvirt_ap_gdt_end - kvirt_ap_gdt - 1
    .long kvirt_ap_gdt - kvirt_ap_trampoline_start + 0x8000
    .global kvirt_ap_trampoline_end
kvirt_ap_trampoline_end:
    .set kvirt_ap_gdtr_offset, kvirt_ap_gdtr - kvirt_ap_trampoline_start

    .code32
kvirt_ap_start32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov edi, offset kvirt_ap_far
    jmp boot_enter_long_mode            /* as the bootstrap CPU did (`boot`) */
kvirt_ap_far:
    .long kvirt_ap_long_mode
    .word 0x08                          /* the boot GDT's 64-bit code */

    .code64
kvirt_ap_long_mode:
    movabs rax, offset kvirt_ap_entry64
    jmp rax

    .section .text.kvirt_ap_entry, "ax"
kvirt_ap_entry64:
    mov rax, qword ptr [rip + KVIRT_AP_CR3]
    mov cr3, rax
    mov rsp, qword ptr [rip + KVIRT_AP_STACK_TOP]
    xor ebp, ebp
    call kvirt_ap_main
3:
    hlt
    jmp 3b
"#
);

extern "C" {
    // Labels: only their addresses mean something.
    static kvirt_ap_trampoline_start: u8;
    static kvirt_ap_trampoline_end: u8;
}

/// The page-table root the starting AP loads (kvirt's).
#[no_mangle]
static KVIRT_AP_CR3: AtomicU64 = AtomicU64::new(0);
/// The top of the starting AP's stack.
#[no_mangle]
static KVIRT_AP_STACK_TOP: AtomicU64 = AtomicU64::new(0);
/// The index the starting AP takes.
static AP_INDEX: AtomicUsize = AtomicUsize::new(0);

/// Copies the trampoline to [`TRAMPOLINE`]. Runs on the bootstrap CPU
/// while the boot tables (with their linear mapping of the first 4 GiB) are
/// loaded, after the loader's start-of-day data was copied out.
pub fn install_trampoline() {
    let start = core::ptr::addr_of!(kvirt_ap_trampoline_start);
    let len = core::ptr::addr_of!(kvirt_ap_trampoline_end) as usize - start as usize;
    assert!(len <= PAGE_SIZE, "the trampoline ({len} bytes) does not fit its page");
    // SAFETY: the source is the trampoline's code in the loaded `boot`
    // segment (identity mapped by the boot tables); the destination is page
    // 8 of the first MiB through the boot linear mapping: RAM in every PC
    // memory map, Reserved for kvirt, and unused by anything else now.
    unsafe { core::ptr::copy_nonoverlapping(start, paddr_to_vaddr(TRAMPOLINE) as *mut u8, len) };
}

/// Starts every processor of `apic_ids` but this one, one after the
/// other, and returns how many CPUs are online. Each gets a kvirt area as
/// its stack, which lives as long as the kernel.
///
/// # Panics
///
/// If an AP does not come online in time.
pub fn start_aps(space: &crate::steps::Space, apic_ids: &[u32]) -> usize {
    let bsp = apic::id();
    percpu::of(0).apic_id.store(bsp, Ordering::SeqCst);
    for &id in apic_ids.iter().filter(|&&id| id != bsp) {
        let index = percpu::online();
        if index == MAX_CPUS {
            println!("kvirt-kernel: more than {MAX_CPUS} CPUs; APIC {id} and later stay halted");
            break;
        }
        let frames = crate::steps::alloc_frames(space, AP_STACK_SIZE / PAGE_SIZE);
        let stack = KVirtArea::map_frames(AP_STACK_SIZE, 0, frames, crate::steps::rw());
        KVIRT_AP_STACK_TOP.store(stack.mapped_range().end as u64, Ordering::SeqCst);
        core::mem::forget(stack);
        KVIRT_AP_CR3.store(cpu::read_cr3(), Ordering::SeqCst);
        AP_INDEX.store(index, Ordering::SeqCst);
        percpu::of(index).apic_id.store(id, Ordering::SeqCst);

        // INIT, 10 ms, start-up, 200 us, start-up (QEMU needs none of the
        // delays, hardware does).
        apic::send_init(id);
        delay_us(10_000);
        let page = (TRAMPOLINE >> 12) as u8;
        apic::send_startup(id, page);
        delay_us(200);
        if percpu::online() == index {
            apic::send_startup(id, page);
        }
        let deadline = cpu::rdtsc() + START_TIMEOUT_CYCLES;
        while percpu::online() == index {
            assert!(cpu::rdtsc() < deadline, "the CPU with APIC ID {id} did not come online");
            core::hint::spin_loop();
        }
    }
    percpu::online()
}

/// TSC cycles per microsecond, at most: the TSC of no x86-64 CPU runs
/// faster than this, so [`delay_us`] waits at least as long as asked.
const TSC_CYCLES_PER_US_MAX: u64 = 5_000;

/// Waits at least `us` microseconds (more on a slower TSC).
fn delay_us(us: u64) {
    let end = cpu::rdtsc() + us * TSC_CYCLES_PER_US_MAX;
    while cpu::rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// The Rust entry of an application processor, on its own stack and
/// kvirt's page table, interrupts off.
#[no_mangle]
extern "C" fn kvirt_ap_main() -> ! {
    let index = AP_INDEX.load(Ordering::SeqCst);
    percpu::init(index);
    interrupts::init_cpu();
    cpu::init_paging_features();
    apic::enable();
    debug_assert_eq!(apic::id(), percpu::this().apic_id.load(Ordering::SeqCst));
    percpu::set_online(index);
    // See the module documentation: after being counted online.
    cpu::flush_tlb_all();
    cpu::enable_interrupts();
    idle(index)
}

/// A job [`on_every_cpu`] runs.
#[derive(Clone, Copy)]
struct Job(&'static (dyn Fn(usize) + Sync));

static JOB: spin::Mutex<Option<Job>> = spin::Mutex::new(None);
/// Bumped for each job.
static JOB_GENERATION: AtomicU64 = AtomicU64::new(0);
/// Application processors done with the current job.
static JOB_DONE: AtomicUsize = AtomicUsize::new(0);

/// Waits for jobs, halted with interrupts on (a shoot-down or a wake-up
/// IPI ends the halt).
fn idle(index: usize) -> ! {
    let mut seen = JOB_GENERATION.load(Ordering::SeqCst);
    loop {
        cpu::disable_interrupts();
        let generation = JOB_GENERATION.load(Ordering::SeqCst);
        if generation == seen {
            // An IPI sent since the load is pending and ends this halt.
            cpu::enable_interrupts_and_halt();
            continue;
        }
        cpu::enable_interrupts();
        seen = generation;
        let job = JOB.lock().expect("a job is posted while its generation is current");
        (job.0)(index);
        JOB_DONE.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `job(cpu)` on every online CPU at once (this one as well, as the
/// bootstrap CPU, index 0) and returns when all are done.
pub fn on_every_cpu<F: Fn(usize) + Sync>(job: &F) {
    assert_eq!(percpu::index(), 0, "jobs are posted by the bootstrap CPU");
    // A job that posted a job would reset the count the outer call waits
    // on, which could then return (and end the borrow) while another CPU
    // still runs the outer job.
    static POSTING: AtomicBool = AtomicBool::new(false);
    assert!(!POSTING.swap(true, Ordering::SeqCst), "on_every_cpu is not reentrant");
    let cpus = percpu::online();
    let job: &(dyn Fn(usize) + Sync) = job;
    // SAFETY: only the lifetime changes. The reference is used by the
    // application processors between the generation bump below and their
    // JOB_DONE increments, all of which this function waits for before it
    // clears JOB and returns (no other call can reset the count meanwhile:
    // `POSTING`); so no use outlives the borrow.
    let job: &'static (dyn Fn(usize) + Sync) = unsafe { core::mem::transmute(job) };
    *JOB.lock() = Some(Job(job));
    JOB_DONE.store(0, Ordering::SeqCst);
    JOB_GENERATION.fetch_add(1, Ordering::SeqCst);
    for cpu in 1..cpus {
        apic::send_fixed(percpu::of(cpu).apic_id.load(Ordering::SeqCst), WAKE_VECTOR);
    }
    job(0);
    while JOB_DONE.load(Ordering::SeqCst) < cpus - 1 {
        core::hint::spin_loop();
    }
    *JOB.lock() = None;
    POSTING.store(false, Ordering::SeqCst);
}

static SHOOTDOWN: spin::Mutex<()> = spin::Mutex::new(());
static REQUEST_START: AtomicUsize = AtomicUsize::new(0);
/// `usize::MAX` for "everything".
static REQUEST_END: AtomicUsize = AtomicUsize::new(0);
/// CPUs that have not yet invalidated the posted request.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Invalidates `op` on every other online CPU and returns when all have.
pub fn shootdown(op: &TlbFlushOp) {
    let cpus = percpu::online();
    if cpus == 1 {
        return;
    }
    let me = percpu::index();
    let (start, end) = match op {
        TlbFlushOp::Page(va) => (*va, va + PAGE_SIZE),
        TlbFlushOp::Range(range) => (range.start, range.end),
        TlbFlushOp::All => (0, usize::MAX),
    };
    let _serialised = SHOOTDOWN.lock();
    REQUEST_START.store(start, Ordering::SeqCst);
    REQUEST_END.store(end, Ordering::SeqCst);
    PENDING.store(cpus - 1, Ordering::SeqCst);
    for cpu in (0..cpus).filter(|&cpu| cpu != me) {
        apic::send_fixed(percpu::of(cpu).apic_id.load(Ordering::SeqCst), SHOOTDOWN_VECTOR);
    }
    while PENDING.load(Ordering::SeqCst) != 0 {
        core::hint::spin_loop();
    }
    percpu::this().shootdowns_sent.fetch_add(1, Ordering::Relaxed);
}

/// The shoot-down IPI's handler (interrupts off).
pub fn on_shootdown_ipi() {
    let (start, end) = (REQUEST_START.load(Ordering::SeqCst), REQUEST_END.load(Ordering::SeqCst));
    let op = if end == usize::MAX { TlbFlushOp::All } else { TlbFlushOp::Range(start..end) };
    platform::flush_local(&op);
    percpu::this().ipis_received.fetch_add(1, Ordering::Relaxed);
    PENDING.fetch_sub(1, Ordering::SeqCst);
    apic::eoi();
}

/// The wake-up IPI's handler: the idle loop does the rest.
pub fn on_wake_ipi() {
    percpu::this().ipis_received.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}
