//! Console and exit through Arm semihosting (QEMU's `-semihosting`): no
//! device mapping is needed before or after the switch to kvirt's table.

use core::fmt::{self, Write};

/// Makes semihosting call `op` with parameter `arg`.
fn call(op: u64, arg: usize) -> u64 {
    let ret: u64;
    // SAFETY: `hlt #0xf000` is the AArch64 semihosting trap, which QEMU
    // handles; `arg` points to memory the call only reads.
    unsafe { core::arch::asm!("hlt #0xf000", inlateout("x0") op => ret, in("x1") arg) };
    ret
}

/// The console as a `fmt::Write` (`SYS_WRITEC`, one byte at a time).
#[derive(Debug)]
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            call(0x03, core::ptr::addr_of!(b) as usize);
        }
        Ok(())
    }
}

/// Prints a line on the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::semihosting::Console, $($arg)*);
    }};
}

/// Ends the run with QEMU exit status `code` (`SYS_EXIT` with
/// `ADP_Stopped_ApplicationExit`).
pub fn exit(code: u32) -> ! {
    let block: [u64; 2] = [0x20026, u64::from(code)];
    call(0x18, block.as_ptr() as usize);
    loop {
        core::hint::spin_loop();
    }
}
