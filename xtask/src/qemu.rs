//! `cargo xtask qemu`: build the demo kernel and boot it under QEMU.
//!
//! The kernel prints its progress on COM1, which QEMU connects to its
//! standard output; this task streams those lines and ends QEMU after a
//! timeout. The kernel leaves through the `isa-debug-exit` device: it writes
//! 0x10 on success, which QEMU turns into exit status 33; anything else
//! (a panic writes 0x11, giving 35; a triple fault with `-no-reboot` gives
//! 0) is a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The kernel's target triple.
const TARGET: &str = "x86_64-unknown-none";
/// The kernel's binary name (kernel/Cargo.toml).
const KERNEL_BIN: &str = "kvirt-kernel";
/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// QEMU's exit status when the kernel writes 0x10 to `isa-debug-exit`.
const QEMU_SUCCESS: i32 = 33;
/// The line the kernel prints last when every check passed.
const SUCCESS_LINE: &str = "kvirt-kernel: all checks passed";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of the `qemu` task.
#[derive(Debug)]
pub struct Options {
    /// How long QEMU may run before it is killed and the run fails.
    pub timeout: Duration,
}

/// Parses the arguments after `qemu`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options { timeout: DEFAULT_TIMEOUT };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" => {
                let value = args.next().ok_or("--timeout needs a number of seconds")?;
                let secs: u64 =
                    value.parse().map_err(|_| format!("--timeout: `{value}` is not a number of seconds"))?;
                options.timeout = Duration::from_secs(secs);
            }
            other => return Err(format!("qemu: unknown option `{other}`")),
        }
    }
    Ok(options)
}

/// Builds the kernel, boots it, and succeeds if it reports success.
pub fn run(options: &Options) -> Result<(), String> {
    let root = project_root();
    let kernel = build_kernel(&root)?;
    println!("xtask: booting {} (timeout {} s)", kernel.display(), options.timeout.as_secs());
    let outcome = boot(&kernel, options.timeout)?;
    judge(&outcome)?;
    println!("xtask: the kernel passed");
    Ok(())
}

/// The repository root (the parent of `xtask/`).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_path_buf()
}

/// `cargo build --release` in `kernel/`; returns the kernel ELF.
///
/// Runs from inside `kernel/` so that cargo reads `kernel/.cargo/config.toml`
/// (the static relocation model and kernel code model), and clears
/// `RUSTFLAGS`, which would replace those flags.
fn build_kernel(root: &Path) -> Result<PathBuf, String> {
    let kernel_dir = root.join("kernel");
    let target_dir = kernel_dir.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("xtask: building the kernel in {}", kernel_dir.display());
    let status = Command::new(cargo)
        .current_dir(&kernel_dir)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the kernel failed ({status})"));
    }
    Ok(target_dir.join(TARGET).join("release").join(KERNEL_BIN))
}

/// The QEMU command line: a PC with one CPU that has 1 GiB pages and NX,
/// COM1 on standard output, the exit device, no display and no reboot (a
/// triple fault ends the run).
fn qemu_command(kernel: &Path) -> Command {
    let mut command = Command::new(QEMU);
    command
        .args(["-machine", "q35", "-cpu", "max", "-smp", "1", "-m", "256M"])
        .args(["-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// How a QEMU run ended.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    /// QEMU's exit status, or `None` if it was killed at the timeout.
    exit_code: Option<i32>,
    timed_out: bool,
    saw_success_line: bool,
}

/// Boots `kernel`, echoing its serial output, for at most `timeout`.
fn boot(kernel: &Path, timeout: Duration) -> Result<Outcome, String> {
    let mut child = qemu_command(kernel).spawn().map_err(|e| {
        format!("cannot start {QEMU}: {e} (install QEMU; on Debian: apt-get install qemu-system-x86)")
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let echo = thread::spawn(move || {
        let mut saw_success = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            let _ = std::io::stdout().flush();
            saw_success |= line.trim_end() == SUCCESS_LINE;
        }
        let _ = tx.send(saw_success);
    });
    let (exit_code, timed_out) = wait_with_timeout(&mut child, timeout)?;
    // QEMU is gone, so its output ends and the echo thread finishes.
    let saw_success_line = rx.recv().unwrap_or(false);
    let _ = echo.join();
    Ok(Outcome { exit_code, timed_out, saw_success_line })
}

/// Waits for `child`, killing it once `timeout` has passed. Returns its
/// exit code (if it exited with one) and whether it timed out.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Result<(Option<i32>, bool), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for {QEMU}: {e}"))? {
            return Ok((status.code(), false));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((None, true));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Success is exit status 33 *and* the kernel's final line. A pure
/// function of the outcome: the error says what went wrong.
fn judge(outcome: &Outcome) -> Result<(), String> {
    if outcome.timed_out {
        return Err("the kernel did not finish before the timeout; QEMU was killed".into());
    }
    match outcome.exit_code {
        Some(QEMU_SUCCESS) if outcome.saw_success_line => Ok(()),
        Some(QEMU_SUCCESS) => {
            Err(format!("QEMU exited with {QEMU_SUCCESS} but the kernel never printed `{SUCCESS_LINE}`"))
        }
        Some(0) => Err("QEMU exited with 0: the kernel reset the machine (triple fault?)".into()),
        Some(code) => Err(format!("the kernel failed (QEMU exit status {code})")),
        None => Err(format!("{QEMU} was killed by a signal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(exit_code: Option<i32>, timed_out: bool, saw_success_line: bool) -> Outcome {
        Outcome { exit_code, timed_out, saw_success_line }
    }

    mod judge {
        use super::*;

        #[test]
        fn exit_status_33_with_the_success_line_passes() {
            assert_eq!(judge(&outcome(Some(33), false, true)), Ok(()));
        }

        #[test]
        fn a_timeout_fails_whatever_else_was_seen() {
            for o in [outcome(None, true, false), outcome(Some(33), true, true)] {
                let e = judge(&o).unwrap_err();
                assert!(e.contains("did not finish before the timeout"), "{o:?}: {e}");
            }
        }

        #[test]
        fn exit_status_33_without_the_success_line_fails() {
            let e = judge(&outcome(Some(33), false, false)).unwrap_err();
            assert!(e.contains("never printed `kvirt-kernel: all checks passed`"), "{e}");
        }

        #[test]
        fn a_panic_exit_status_fails_and_names_it() {
            // The kernel's panic handler writes 0x11: QEMU exits with 35,
            // success line or not.
            for line in [false, true] {
                let e = judge(&outcome(Some(35), false, line)).unwrap_err();
                assert_eq!(e, "the kernel failed (QEMU exit status 35)");
            }
        }

        #[test]
        fn exit_status_0_fails_as_a_reset() {
            let e = judge(&outcome(Some(0), false, true)).unwrap_err();
            assert!(e.contains("triple fault"), "{e}");
        }

        #[test]
        fn death_by_a_signal_fails() {
            let e = judge(&outcome(None, false, true)).unwrap_err();
            assert!(e.contains("killed by a signal"), "{e}");
        }
    }

    mod wait_with_timeout {
        use super::*;

        #[test]
        fn a_child_past_the_timeout_is_killed_and_reported() {
            let mut child = Command::new("sleep").arg("5").spawn().expect("sleep(1) is available");
            let started = Instant::now();
            let result = wait_with_timeout(&mut child, Duration::from_millis(200));
            let waited = started.elapsed();
            assert_eq!(result, Ok((None, true)));
            assert!(waited >= Duration::from_millis(200), "returned after {waited:?}");
            assert!(waited < Duration::from_secs(3), "waited {waited:?} for a 5 s child");
            // Killed and reaped: its exit status is there at once, by SIGKILL.
            let status = child.try_wait().expect("try_wait").expect("the child is gone");
            assert_eq!(status.code(), None, "{status}");
        }

        #[test]
        fn a_child_that_exits_in_time_reports_its_status() {
            let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().expect("sh(1) is available");
            assert_eq!(wait_with_timeout(&mut child, Duration::from_secs(30)), Ok((Some(3), false)));
        }
    }
}
