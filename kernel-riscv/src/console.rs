//! The console: OpenSBI's legacy `console_putchar` call, which needs no
//! mapping of the UART (the scenario maps the UART itself, as a device).

use core::fmt::{self, Write};

/// Writes one byte through the SBI.
fn putchar(c: u8) {
    // SAFETY: the legacy SBI extension 0x01 (console_putchar) takes the
    // byte in a0 and touches no memory of ours.
    unsafe {
        core::arch::asm!("ecall", inlateout("a0") usize::from(c) => _, in("a7") 1usize, lateout("a1") _);
    }
}

/// The console as a `fmt::Write`.
#[derive(Debug)]
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(putchar);
        Ok(())
    }
}

/// Prints a line on the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
