//! Project automation: `cargo xtask <task>`.
//!
//! Dependency-free (std only), so it builds as fast as possible and never
//! needs anything the stock toolchain does not have.

use std::process::ExitCode;

mod ablation;
mod fuzz;
mod instructions;
mod miri;
mod qemu;
mod verus;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  qemu [--arch ARCH] [--smp N] [--kvm] [--timeout SECS]
                          build a demo kernel and boot it under QEMU: x86_64 (the
                          default: kernel/, qemu-system-x86_64, 4 CPUs unless --smp
                          says otherwise; --kvm runs it under KVM with
                          -cpu host,-arch-capabilities), riscv64
                          (kernel-riscv/, qemu-system-riscv64 with OpenSBI) or aarch64
                          (kernel-aarch64/, qemu-system-aarch64), both on one CPU;
                          succeeds when the kernel reports that every check passed
                          (default timeout: 120 s)
  fuzz [--time SECS] [TARGET...]
                          run the cargo-fuzz targets (default: all of kvirt_api,
                          pte_decode) for SECS each (default 60) on nightly, installing
                          cargo-fuzz if missing; a crashing input is saved under
                          fuzz/regressions/<target>/ and fails the task
  miri                    run the unsafe core's tests under Miri with strict provenance
                          (crates/kvirt/tests/miri.rs, kvirt-sim's unit tests) on
                          nightly, installing miri and rust-src if missing
  verus [--crate DIR]...  verify every crate under crates/ that depends on vstd (or the
                          given crate directories) with `cargo verus focus`; finds Verus
                          in KVIRT_VERUS_BIN, on PATH, or builds it with the script in
                          KVIRT_VERUS_INSTALLER; fails if any proof fails
  instructions [--out PATH]
                          count the instructions per page of every implementation's
                          map and unmap in `kvirt bench` with Valgrind's callgrind
                          (hardware counters for perf stat are often missing in VMs);
                          writes docs/instructions.md, which docs/BENCHMARKS.md includes
  ablation [--rounds N] [--check]
                          what each piece of kvirt's work the peers do not do costs in
                          `kvirt bench`'s 1-, 16- and 512-page map and unmap: builds
                          `kvirt` with docs/ablation.patch applied, once per variant (a
                          piece taken out), in a worktree under target/ablation, runs
                          the variants' benches round-robin (default 5 rounds) and
                          writes docs/ablation.md (about 15 minutes on 2 cores);
                          --check only applies the patch and compiles every switch
  help                    print this message
";

/// The repository root (the parent of `xtask/`).
fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_path_buf()
}

/// The cargo that runs this task (`CARGO`), to build with the same
/// toolchain; `cargo` on `PATH` if it is not set.
fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match task.as_str() {
        "qemu" => qemu::parse_args(rest).and_then(|options| qemu::run(&options)),
        "fuzz" => fuzz::parse_args(rest).and_then(|options| fuzz::run(&options)),
        "miri" => miri::parse_args(rest).and_then(|()| miri::run()),
        "verus" => verus::parse_args(rest).and_then(|options| verus::run(&options)),
        "instructions" => instructions::parse_args(rest).and_then(|options| instructions::run(&options)),
        "ablation" => ablation::parse_args(rest).and_then(|options| ablation::run(&options)),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
