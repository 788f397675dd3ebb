//! Leaving QEMU through the `sifive_test` device of the `virt` machine:
//! `0x5555` powers off with status 0 (pass), `code << 16 | 0x3333` with
//! status `code` (fail).

use core::sync::atomic::{AtomicUsize, Ordering};

/// The device's physical address on QEMU's `virt` machine.
pub const TEST_DEVICE: usize = 0x10_0000;

/// Where the device is reachable now: its physical address under the boot
/// table (identity gigapage), an untracked kvirt area once the kernel runs
/// on kvirt's table.
static DEVICE_VA: AtomicUsize = AtomicUsize::new(TEST_DEVICE);

/// Records where the device is mapped from now on.
pub fn set_device_va(va: usize) {
    DEVICE_VA.store(va, Ordering::SeqCst);
}

fn write(value: u32) -> ! {
    let va = DEVICE_VA.load(Ordering::SeqCst);
    // SAFETY: `va` maps the test device (identity under the boot table, an
    // area kept for the whole run afterwards); a 32-bit write ends the run.
    unsafe { (va as *mut u32).write_volatile(value) };
    loop {
        core::hint::spin_loop();
    }
}

/// Ends the run: pass.
pub fn pass() -> ! {
    write(0x5555)
}

/// Ends the run: fail with status `code`.
pub fn fail(code: u16) -> ! {
    write(u32::from(code) << 16 | 0x3333)
}
