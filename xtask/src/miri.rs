//! `cargo xtask miri`: the unsafe core under Miri.
//!
//! Installs what it needs (the nightly toolchain with the `miri` and
//! `rust-src` components), prepares Miri's standard library
//! (`cargo miri setup`), then runs, each with `cargo +nightly miri test`:
//!
//! 1. `crates/kvirt/tests/miri.rs`: frame metadata slots and handles,
//!    segments, byte access, raw round trips, page-table node memory and
//!    cursors (map, query, protect, take, huge-page splits, node
//!    reclamation), kernel virtual areas, and two threads sharing frames
//!    and a page table. The file's module docs say how it is kept fast.
//! 2. The threaded test of that file again with other seeds, so that Miri
//!    explores other thread schedules and weak-memory outcomes.
//! 3. The hosted platform's RCU (`platform::hosted::rcu` in the kvirt
//!    library's unit tests): per-thread counters read by other threads,
//!    deferred functions, thread exit. Under Miri it runs with its fence
//!    fallback (Miri cannot make the `membarrier` system call), which the
//!    data-race detector then checks.
//! 4. kvirt-sim's unit tests: its simulated RAM is its only unsafe code,
//!    and the bus, page walker and TLB tests drive it. The one proptest
//!    test is skipped (hundreds of random cases are too slow under Miri and
//!    add no unsafe code to the run).
//!
//! Flags, all runs:
//!
//! * `-Zmiri-strict-provenance`: integer-to-pointer casts are errors, so
//!   every pointer kvirt dereferences must carry its provenance.
//!
//! Nothing else: Stacked Borrows, the data-race detector, alignment and
//! validity checks and the leak check stay at Miri's defaults (all on). In
//! particular there is no `-Zmiri-ignore-leaks`: the tests run on spaces
//! whose platform uses kvirt's own counting RCU (see `tests/miri.rs`), so a
//! leak is a real error.
//! Extra flags in the caller's `MIRIFLAGS` are passed on after these (for
//! example `-Zmiri-tree-borrows`).
//!
//! The kvirt library's other unit tests are not in the set: the unsafe code
//! they would reach is covered above, and the buddy allocator's (which is
//! `forbid(unsafe_code)`) take many minutes under Miri.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The toolchain Miri runs on.
const TOOLCHAIN: &str = "nightly";
/// The flags of every run (see the module documentation).
const MIRIFLAGS: &str = "-Zmiri-strict-provenance";
/// The threaded test, run again with these seeds.
const THREADED_TEST: &str = "threads_share_frames_and_map_areas_side_by_side";
const THREADED_SEEDS: &str = "-Zmiri-many-seeds=1..5";

/// One `cargo miri test` invocation.
struct Run {
    what: &'static str,
    /// Arguments to `cargo miri test` (package and target).
    cargo_args: &'static [&'static str],
    /// Arguments to the test harness.
    test_args: &'static [&'static str],
    /// Flags added to [`MIRIFLAGS`].
    extra_flags: &'static str,
}

const RUNS: &[Run] = &[
    Run {
        what: "kvirt: frames, metadata slots, page-table nodes and cursors, areas",
        cargo_args: &["-p", "kvirt", "--test", "miri"],
        test_args: &[],
        extra_flags: "",
    },
    Run {
        what: "kvirt: the threaded test under four more schedules",
        cargo_args: &["-p", "kvirt", "--test", "miri"],
        test_args: &["--exact", THREADED_TEST],
        extra_flags: THREADED_SEEDS,
    },
    Run {
        what: "kvirt: the hosted platform's RCU (its fence fallback, threads, thread exit)",
        cargo_args: &["-p", "kvirt", "--lib"],
        test_args: &["platform::hosted::rcu::"],
        extra_flags: "",
    },
    Run {
        what: "kvirt-sim: simulated RAM, bus, page walker and TLBs",
        cargo_args: &["-p", "kvirt-sim", "--lib"],
        test_args: &["--skip", "tests::properties::"],
        extra_flags: "",
    },
];

/// Parses the arguments after `miri` (there are none).
pub fn parse_args(args: &[String]) -> Result<(), String> {
    match args.first() {
        None => Ok(()),
        Some(other) => Err(format!("miri: unknown option `{other}`")),
    }
}

/// Installs Miri if needed and runs every test set; fails if any fails.
pub fn run() -> Result<(), String> {
    let started = Instant::now();
    ensure_miri()?;
    let root = crate::project_root();
    let status = cargo(&root)
        .args(["miri", "setup"])
        .status()
        .map_err(|e| format!("cannot run cargo miri setup: {e}"))?;
    if !status.success() {
        return Err(format!("cargo miri setup failed ({status})"));
    }
    let user_flags = std::env::var("MIRIFLAGS").unwrap_or_default();
    let mut failures = Vec::new();
    for run in RUNS {
        let flags = [MIRIFLAGS, run.extra_flags, &user_flags]
            .into_iter()
            .filter(|f| !f.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        println!("xtask: miri: {} (MIRIFLAGS=\"{flags}\")", run.what);
        let run_started = Instant::now();
        let status = cargo(&root)
            .args(["miri", "test"])
            .args(run.cargo_args)
            .arg("--")
            .args(run.test_args)
            .env("MIRIFLAGS", &flags)
            .status()
            .map_err(|e| format!("cannot run cargo miri test: {e}"))?;
        println!("xtask: miri: {} s", run_started.elapsed().as_secs());
        if !status.success() {
            failures.push(format!("{} ({status})", run.what));
        }
    }
    println!("xtask: miri: done in {} s", started.elapsed().as_secs());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("Miri found errors in:\n  {}", failures.join("\n  ")))
    }
}

/// `cargo +nightly` in `dir`, without the toolchain choice of the
/// `cargo xtask` that runs it.
fn cargo(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO").arg(format!("+{TOOLCHAIN}"));
    cmd
}

/// Adds the `miri` and `rust-src` components to the nightly toolchain,
/// installing the toolchain first if it is missing.
fn ensure_miri() -> Result<(), String> {
    let listed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", TOOLCHAIN])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    let installed = String::from_utf8_lossy(&listed.stdout);
    let has = |component: &str| installed.lines().any(|line| line.starts_with(component));
    if listed.status.success() && has("miri") && has("rust-src") {
        return Ok(());
    }
    let args: &[&str] = if listed.status.success() {
        println!("xtask: adding miri and rust-src to the {TOOLCHAIN} toolchain");
        &["component", "add", "miri", "rust-src", "--toolchain", TOOLCHAIN]
    } else {
        println!("xtask: installing the {TOOLCHAIN} toolchain with miri and rust-src");
        &["toolchain", "install", TOOLCHAIN, "--profile", "minimal", "--component", "miri,rust-src"]
    };
    let status = Command::new("rustup").args(args).status().map_err(|e| format!("cannot run rustup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("rustup {} failed ({status})", args.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_no_options() {
        assert!(parse_args(&[]).is_ok());
        assert!(parse_args(&["--fast".to_string()]).is_err());
    }

    #[test]
    fn the_threaded_test_exists() {
        let source = std::fs::read_to_string(crate::project_root().join("crates/kvirt/tests/miri.rs"))
            .expect("crates/kvirt/tests/miri.rs");
        assert!(source.contains(&format!("fn {THREADED_TEST}()")));
    }
}
