//! The COM1 serial console, `println!`, and the `log` backend.
//!
//! The 16550 UART needs seven register writes to set up and a status poll
//! per byte, so this module drives it directly through [`crate::cpu`]'s port
//! I/O rather than through the `uart_16550` crate: that crate would bring
//! the `x86_64` crate along for two port instructions, and its API has
//! changed between releases. Output only; no interrupts.

use core::fmt::{self, Write};

use crate::cpu;

/// The I/O base of COM1.
const COM1: u16 = 0x3f8;
/// Line status register: transmitter holding register empty.
const LSR_THR_EMPTY: u8 = 1 << 5;

static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Sets COM1 up for 115200 baud, 8 data bits, no parity, one stop bit.
pub fn init() {
    let setup: [(u16, u8); 7] = [
        (1, 0x00), // no interrupts
        (3, 0x80), // DLAB: divisor follows
        (0, 0x01), // divisor 1: 115200 baud
        (1, 0x00),
        (3, 0x03), // 8N1, DLAB off
        (2, 0xc7), // FIFO on, cleared, 14-byte threshold
        (4, 0x03), // DTR, RTS
    ];
    for (offset, value) in setup {
        // SAFETY: the kernel owns COM1; these are its documented set-up
        // writes and touch no memory.
        unsafe { cpu::outb(COM1 + offset, value) };
    }
}

fn write_byte(byte: u8) {
    // SAFETY: reading COM1's line status has no side effect.
    while unsafe { cpu::inb(COM1 + 5) } & LSR_THR_EMPTY == 0 {
        core::hint::spin_loop();
    }
    // SAFETY: the transmitter is empty; the kernel owns COM1.
    unsafe { cpu::outb(COM1, byte) };
}

/// A writer to COM1 (callers serialise through [`LOCK`], except the panic
/// path).
struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(write_byte);
        Ok(())
    }
}

/// Prints to COM1 (behind the console lock).
pub fn print(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    let _ = Com1.write_fmt(args);
}

/// Prints to COM1 without taking the console lock: for the panic handler,
/// which may run while the lock is held (and lets only the first
/// panicking CPU print).
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let _ = Com1.write_fmt(args);
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::serial::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// The `log` backend: one line per record on COM1.
#[derive(Debug)]
struct SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            print(format_args!("[{:<5} {}] {}\n", record.level(), record.target(), record.args()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: SerialLogger = SerialLogger;

/// Routes `log` records (kvirt's included) to the serial console.
pub fn init_logger(level: log::LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
