//! `cargo xtask qemu`: build a demo kernel and boot it under QEMU.
//!
//! Two kernels, one per architecture ([`Arch`]):
//!
//! * x86-64 (`kernel/`, the default): boots four CPUs (`--smp N`), under
//!   TCG or, with `--kvm`, under KVM with `-cpu host,-arch-capabilities`
//!   (nested KVM on our machines refuses `host` otherwise); prints on COM1 and leaves through the
//!   `isa-debug-exit` device, writing 0x10 on success, which QEMU turns into
//!   exit status 33; anything else (a panic writes 0x11, giving 35; a triple
//!   fault with `-no-reboot` gives 0) is a failure.
//! * RISC-V (`kernel-riscv/`, `--arch riscv64`): prints through the SBI and
//!   leaves through the `virt` machine's `sifive_test` device: status 0 on
//!   success, the kernel's code (1 for a panic) otherwise.
//! * AArch64 (`kernel-aarch64/`, `--arch aarch64`): prints and leaves
//!   through semihosting: status 0 on success, 1 for a panic.
//!
//! This task streams the kernel's lines and ends QEMU after a timeout.
//! Success is the architecture's success status *and* the kernel's final
//! line.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A demo kernel and how to run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    /// The name `--arch` takes.
    pub name: &'static str,
    /// The kernel's directory in the repository.
    dir: &'static str,
    /// The kernel's target triple.
    target: &'static str,
    /// The kernel's binary name.
    bin: &'static str,
    /// The QEMU binary.
    pub qemu: &'static str,
    /// The Debian package that has it.
    package: &'static str,
    /// QEMU's arguments before `-kernel`, but for the CPU model and count.
    args: &'static [&'static str],
    /// The CPU model under TCG (`-cpu`).
    cpu: &'static str,
    /// The CPU model under KVM, if the kernel runs there (`--kvm`).
    kvm_cpu: Option<&'static str>,
    /// How many CPUs the kernel brings up by default; a kernel that brings
    /// up only one takes no `--smp`.
    default_smp: usize,
    /// QEMU's exit status when the kernel reports success.
    success: i32,
    /// The line the kernel prints last when every check passed.
    pub success_line: &'static str,
}

/// The x86-64 kernel: a PC with four CPUs (`--smp`) that have 1 GiB pages
/// and NX (or, with `--kvm`, the host's CPUs, which may lack 1 GiB pages), COM1
/// on standard output, the exit device, no display and no reboot (a triple
/// fault ends the run).
pub const X86_64: Arch = Arch {
    name: "x86_64",
    dir: "kernel",
    target: "x86_64-unknown-none",
    bin: "kvirt-kernel",
    qemu: "qemu-system-x86_64",
    package: "qemu-system-x86",
    args: &[
        "-machine",
        "q35",
        "-m",
        "256M",
        "-nodefaults",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ],
    cpu: "max",
    // Nested KVM on our machines refuses `host` with this feature on.
    kvm_cpu: Some("host,-arch-capabilities"),
    default_smp: 4,
    success: 33,
    success_line: "kvirt-kernel: all checks passed",
};

/// The RISC-V kernel: QEMU's `virt` machine with OpenSBI (`-bios
/// default`), one hart with Svpbmt (kvirt encodes cache policies with it),
/// 128 MiB, the console on standard output.
pub const RISCV64: Arch = Arch {
    name: "riscv64",
    dir: "kernel-riscv",
    target: "riscv64gc-unknown-none-elf",
    bin: "kvirt-kernel-riscv",
    qemu: "qemu-system-riscv64",
    package: "qemu-system-misc",
    args: &[
        "-machine", "virt", "-m", "128M", "-bios", "default", "-display", "none", "-monitor", "none",
        "-serial", "stdio",
    ],
    cpu: "rv64,svpbmt=on",
    kvm_cpu: None,
    default_smp: 1,
    success: 0,
    success_line: "kvirt-kernel-riscv: all checks passed",
};

/// Options of the `qemu` task.
#[derive(Debug)]
pub struct Options {
    /// How long QEMU may run before it is killed and the run fails.
    pub timeout: Duration,
    /// Which kernel.
    pub arch: Arch,
    /// How many CPUs (`-smp`).
    pub smp: usize,
    /// Run under KVM rather than TCG.
    pub kvm: bool,
}

/// The AArch64 kernel: QEMU's `virt` machine with a Cortex-A72 at EL1,
/// 128 MiB, semihosting for the console (on standard output) and the exit
/// status.
pub const AARCH64: Arch = Arch {
    name: "aarch64",
    dir: "kernel-aarch64",
    target: "aarch64-unknown-none",
    bin: "kvirt-kernel-aarch64",
    qemu: "qemu-system-aarch64",
    package: "qemu-system-arm",
    args: &[
        "-machine",
        "virt",
        "-m",
        "128M",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-chardev",
        "stdio,id=out",
        "-semihosting-config",
        "enable=on,target=native,chardev=out",
    ],
    cpu: "cortex-a72",
    kvm_cpu: None,
    default_smp: 1,
    success: 0,
    success_line: "kvirt-kernel-aarch64: all checks passed",
};

/// Parses the arguments after `qemu`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let (mut timeout, mut arch, mut smp, mut kvm) = (DEFAULT_TIMEOUT, X86_64, None, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" => {
                let value = args.next().ok_or("--timeout needs a number of seconds")?;
                let secs: u64 =
                    value.parse().map_err(|_| format!("--timeout: `{value}` is not a number of seconds"))?;
                timeout = Duration::from_secs(secs);
            }
            "--arch" => {
                arch = match args.next().map(String::as_str) {
                    Some("x86_64" | "x86-64") => X86_64,
                    Some("riscv64") => RISCV64,
                    Some("aarch64") => AARCH64,
                    other => {
                        return Err(format!(
                            "--arch: `{}` is not x86_64, riscv64 or aarch64",
                            other.unwrap_or("")
                        ))
                    }
                };
            }
            "--smp" => {
                let value = args.next().ok_or("--smp needs a number of CPUs")?;
                let n = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or_else(|| format!("--smp: `{value}` is not a number of CPUs from 1 to 16"))?;
                smp = Some(n);
            }
            "--kvm" => kvm = true,
            other => return Err(format!("qemu: unknown option `{other}`")),
        }
    }
    let smp = smp.unwrap_or(arch.default_smp);
    if smp != 1 && arch.default_smp == 1 {
        return Err(format!("--smp: the {} kernel runs on one CPU", arch.name));
    }
    if kvm && arch.kvm_cpu.is_none() {
        return Err(format!("--kvm: the {} kernel does not run under KVM here", arch.name));
    }
    Ok(Options { timeout, arch, smp, kvm })
}

/// Builds the kernel, boots it, and succeeds if it reports success.
pub fn run(options: &Options) -> Result<(), String> {
    let root = crate::project_root();
    let arch = options.arch;
    let kernel = build_kernel(&root, arch)?;
    println!("xtask: booting {} (timeout {} s)", kernel.display(), options.timeout.as_secs());
    let outcome = boot(qemu_command(options, &kernel), arch, options.timeout)?;
    judge(arch, &outcome)?;
    println!("xtask: the kernel passed");
    Ok(())
}

/// `cargo build --release` in the kernel's directory; returns the kernel
/// ELF.
///
/// Runs from inside that directory so that cargo reads its
/// `.cargo/config.toml` (relocation and code models), and clears
/// `RUSTFLAGS`, which would replace those flags.
fn build_kernel(root: &Path, arch: Arch) -> Result<PathBuf, String> {
    let kernel_dir = root.join(arch.dir);
    let target_dir = kernel_dir.join("target");
    println!("xtask: building the kernel in {}", kernel_dir.display());
    let status = crate::cargo()
        .current_dir(&kernel_dir)
        .args(["build", "--release", "--target", arch.target, "--target-dir"])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the kernel failed ({status})"));
    }
    Ok(target_dir.join(arch.target).join("release").join(arch.bin))
}

/// The QEMU command line.
fn qemu_command(options: &Options, kernel: &Path) -> Command {
    let arch = options.arch;
    let mut command = Command::new(arch.qemu);
    command.args(arch.args).arg("-smp").arg(options.smp.to_string());
    match arch.kvm_cpu.filter(|_| options.kvm) {
        Some(cpu) => command.args(["-enable-kvm", "-cpu", cpu]),
        None => command.args(["-cpu", arch.cpu]),
    };
    command.arg("-kernel").arg(kernel).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
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

/// Runs QEMU's `command`, echoing the kernel's output, for at most `timeout`.
fn boot(mut command: Command, arch: Arch, timeout: Duration) -> Result<Outcome, String> {
    let mut child = command.spawn().map_err(|e| {
        format!("cannot start {}: {e} (install QEMU; on Debian: apt-get install {})", arch.qemu, arch.package)
    })?;
    let success_line = arch.success_line;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let echo = thread::spawn(move || {
        let mut saw_success = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("{line}");
            let _ = std::io::stdout().flush();
            saw_success |= line.trim_end() == success_line;
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
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for QEMU: {e}"))? {
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

/// Success is the architecture's success status *and* the kernel's final
/// line. A pure function of the outcome: the error says what went wrong.
fn judge(arch: Arch, outcome: &Outcome) -> Result<(), String> {
    if outcome.timed_out {
        return Err("the kernel did not finish before the timeout; QEMU was killed".into());
    }
    match outcome.exit_code {
        Some(code) if code == arch.success && outcome.saw_success_line => Ok(()),
        Some(code) if code == arch.success => {
            Err(format!("QEMU exited with {code} but the kernel never printed `{}`", arch.success_line))
        }
        Some(0) => Err("QEMU exited with 0: the kernel reset the machine (triple fault?)".into()),
        Some(code) => Err(format!("the kernel failed (QEMU exit status {code})")),
        None => Err(format!("{} was killed by a signal", arch.qemu)),
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
            assert_eq!(judge(X86_64, &outcome(Some(33), false, true)), Ok(()));
        }

        #[test]
        fn a_timeout_fails_whatever_else_was_seen() {
            for o in [outcome(None, true, false), outcome(Some(33), true, true)] {
                let e = judge(X86_64, &o).unwrap_err();
                assert!(e.contains("did not finish before the timeout"), "{o:?}: {e}");
            }
        }

        #[test]
        fn exit_status_33_without_the_success_line_fails() {
            let e = judge(X86_64, &outcome(Some(33), false, false)).unwrap_err();
            assert!(e.contains("never printed `kvirt-kernel: all checks passed`"), "{e}");
        }

        #[test]
        fn a_panic_exit_status_fails_and_names_it() {
            // The kernel's panic handler writes 0x11: QEMU exits with 35,
            // success line or not.
            for line in [false, true] {
                let e = judge(X86_64, &outcome(Some(35), false, line)).unwrap_err();
                assert_eq!(e, "the kernel failed (QEMU exit status 35)");
            }
        }

        #[test]
        fn exit_status_0_fails_as_a_reset() {
            let e = judge(X86_64, &outcome(Some(0), false, true)).unwrap_err();
            assert!(e.contains("triple fault"), "{e}");
        }

        #[test]
        fn riscv_passes_on_status_0_with_its_line_and_fails_on_its_panic_status() {
            assert_eq!(judge(RISCV64, &outcome(Some(0), false, true)), Ok(()));
            let e = judge(RISCV64, &outcome(Some(0), false, false)).unwrap_err();
            assert!(e.contains("never printed `kvirt-kernel-riscv: all checks passed`"), "{e}");
            let e = judge(RISCV64, &outcome(Some(1), false, true)).unwrap_err();
            assert_eq!(e, "the kernel failed (QEMU exit status 1)");
            let e = judge(RISCV64, &outcome(Some(33), false, true)).unwrap_err();
            assert!(e.contains("33"), "{e}");
        }

        #[test]
        fn death_by_a_signal_fails() {
            let e = judge(X86_64, &outcome(None, false, true)).unwrap_err();
            assert!(e.contains("killed by a signal"), "{e}");
        }
    }

    #[test]
    fn arch_is_parsed() {
        assert_eq!(parse_args(&[]).unwrap().arch, X86_64);
        for (name, arch) in [("x86_64", X86_64), ("riscv64", RISCV64), ("aarch64", AARCH64)] {
            assert_eq!(parse_args(&["--arch".into(), name.into()]).unwrap().arch, arch);
        }
        assert!(parse_args(&["--arch".into(), "mips".into()]).is_err());
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn x86_64_boots_four_cpus_unless_told_and_the_others_one() {
        assert_eq!(parse_args(&[]).unwrap().smp, 4);
        assert_eq!(parse_args(&args(&["--smp", "2"])).unwrap().smp, 2);
        assert_eq!(parse_args(&args(&["--arch", "riscv64"])).unwrap().smp, 1);
        for bad in ["0", "17", "four"] {
            let e = parse_args(&args(&["--smp", bad])).unwrap_err();
            assert!(e.contains("from 1 to 16"), "{bad}: {e}");
        }
        let e = parse_args(&args(&["--arch", "aarch64", "--smp", "2"])).unwrap_err();
        assert!(e.contains("runs on one CPU"), "{e}");
    }

    #[test]
    fn kvm_uses_the_host_cpu_without_arch_capabilities_and_only_on_x86_64() {
        let options = parse_args(&args(&["--kvm", "--smp", "2"])).unwrap();
        let command = qemu_command(&options, Path::new("kernel.elf"));
        let argv: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let has = |pair: [&str; 2]| argv.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
        assert!(argv.iter().any(|a| a == "-enable-kvm"), "{argv:?}");
        assert!(has(["-cpu", "host,-arch-capabilities"]) && has(["-smp", "2"]), "{argv:?}");
        let tcg = qemu_command(&parse_args(&[]).unwrap(), Path::new("kernel.elf"));
        let argv: Vec<String> = tcg.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(!argv.iter().any(|a| a == "-enable-kvm") && argv.contains(&"max".to_string()), "{argv:?}");
        assert!(parse_args(&args(&["--arch", "riscv64", "--kvm"])).is_err());
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
