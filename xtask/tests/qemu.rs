//! Boots the demo kernels under QEMU (`cargo xtask qemu`, `--arch riscv64`
//! and `--arch aarch64`) when QEMU is installed.
//!
//! Without the QEMU binary on `PATH` a test passes with a SKIPPED note,
//! unless `KVIRT_REQUIRE_QEMU=1` asks for it to fail instead (for CI
//! machines that are meant to have QEMU).

use std::path::Path;
use std::process::Command;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| Path::new(&dir).join(program).is_file()))
}

/// Runs `cargo xtask qemu` with `args` if `qemu` is installed, checks that
/// it passed with `success_line`, and returns what the kernel printed
/// (`None` if skipped).
fn boots(qemu: &str, args: &[&str], success_line: &str) -> Option<String> {
    if !on_path(qemu) {
        if std::env::var("KVIRT_REQUIRE_QEMU").is_ok_and(|v| v == "1") {
            panic!("{qemu} not found on PATH, and KVIRT_REQUIRE_QEMU=1 requires it");
        }
        println!("SKIPPED: {qemu} not found; set KVIRT_REQUIRE_QEMU=1 to make this fail");
        return None;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("qemu")
        .args(args)
        .output()
        .expect("cannot run the xtask binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "cargo xtask qemu {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(stdout.contains(success_line), "no success line in:\n{stdout}");
    Some(stdout.into_owned())
}

#[test]
fn demo_kernel_passes_under_qemu_on_four_cpus() {
    let stdout = boots("qemu-system-x86_64", &[], "kvirt-kernel: all checks passed");
    if let Some(stdout) = stdout {
        for line in [
            "kvirt-kernel: 4 CPUs online",
            "[smp 3/6] grace periods",
            "[smp 4/6] stale TLB",
            "[smp 6/6] everything returned on 4 CPUs",
        ] {
            assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
        }
    }
}

#[test]
fn riscv_demo_kernel_passes_under_qemu() {
    boots("qemu-system-riscv64", &["--arch", "riscv64"], "kvirt-kernel-riscv: all checks passed");
}

#[test]
fn aarch64_demo_kernel_passes_under_qemu() {
    boots("qemu-system-aarch64", &["--arch", "aarch64"], "kvirt-kernel-aarch64: all checks passed");
}
