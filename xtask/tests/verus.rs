//! `cargo xtask verus` reports a failed proof as a failure.
//!
//! A tiny verified crate is written under `target/`, verified once as it
//! is (the task must pass and print Verus's results line), once with a
//! wrong postcondition planted (the task must fail and say which crate),
//! and once without opting into verification (`cargo verus` then checks
//! nothing and exits 0; the task must fail).
//!
//! Needs Verus (see `xtask/src/verus.rs` for where the task looks). Without
//! it the test passes with a SKIPPED note, unless `KVIRT_REQUIRE_VERUS=1`
//! asks for it to fail instead (CI sets it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The pinned version of Verus's crates, as in `crates/kvirt-core`.
const VERUS_CRATES_VERSION: &str = "=0.0.0-2026-08-09-0044";

const MANIFEST: &str = r#"[package]
name = "xtask-verus-fixture"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
vstd = { version = "VERSION", default-features = false }
verus_builtin = "VERSION"
verus_builtin_macros = "VERSION"

[package.metadata.verus]
verify = true

# Its own workspace: it lives under the project's target directory.
[workspace]
"#;

/// `ENSURES` is replaced by the postcondition under test.
const LIB: &str = r#"#![no_std]
use vstd::prelude::*;

verus! {

/// The larger of two sizes, rounded up to an even number.
pub fn even_max(a: u32, b: u32) -> (r: u32)
    requires a < 1000, b < 1000,
    ensures ENSURES,
{
    let m = if a < b { b } else { a };
    m + m % 2
}

} // verus!
"#;

const RIGHT: &str = "r >= a && r >= b && r % 2 == 0 && r <= a + b + 1";
const WRONG: &str = "r >= a && r >= b && r % 2 == 0 && r <= a + b";

fn verus_available() -> bool {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| Path::new(&dir).join("cargo-verus").is_file())
    });
    on_path
        || std::env::var_os("KVIRT_VERUS_BIN").is_some()
        || std::env::var_os("KVIRT_VERUS_INSTALLER").is_some()
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .join("target/xtask-verus-fixture")
}

/// Writes the fixture with `ensures` (and `manifest`) and runs the task on
/// it. A fresh comment each time makes the sources new to cargo, which
/// would otherwise skip a crate it verified before with the same text.
fn verify_with(dir: &Path, manifest: &str, ensures: &str) -> Output {
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    std::fs::create_dir_all(dir.join("src")).expect("create the fixture");
    std::fs::write(dir.join("Cargo.toml"), manifest.replace("VERSION", VERUS_CRATES_VERSION))
        .expect("write manifest");
    let lib = format!("{}// run {nonce}\n", LIB.replace("ENSURES", ensures));
    std::fs::write(dir.join("src/lib.rs"), lib).expect("write lib.rs");
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["verus", "--crate"])
        .arg(dir)
        .output()
        .expect("cannot run the xtask binary")
}

fn text(output: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_planted_wrong_postcondition_fails_the_task() {
    if !verus_available() {
        if std::env::var("KVIRT_REQUIRE_VERUS").is_ok_and(|v| v == "1") {
            panic!("Verus not found (KVIRT_VERUS_BIN, PATH, KVIRT_VERUS_INSTALLER), and KVIRT_REQUIRE_VERUS=1 requires it");
        }
        println!("SKIPPED: Verus not found; set KVIRT_REQUIRE_VERUS=1 to make this fail");
        return;
    }
    let dir = fixture_dir();

    let right = verify_with(&dir, MANIFEST, RIGHT);
    assert!(right.status.success(), "the correct fixture failed to verify:\n{}", text(&right));
    let out = text(&right);
    assert!(
        out.contains("verification results") && out.contains(" 0 errors"),
        "no results line for the correct fixture:\n{out}"
    );

    let wrong = verify_with(&dir, MANIFEST, WRONG);
    let out = text(&wrong);
    assert!(!wrong.status.success(), "a wrong postcondition passed verification:\n{out}");
    assert!(
        out.contains("postcondition not satisfied"),
        "Verus did not name the failed postcondition:\n{out}"
    );
    assert!(out.contains("verification failed in:"), "the task did not report the failure:\n{out}");
    assert!(out.contains("xtask-verus-fixture"), "the task did not name the failing crate:\n{out}");

    // Without the opt-in, `cargo verus` checks nothing and exits 0: the
    // task must not call that a pass.
    let silent = verify_with(&dir, &MANIFEST.replace("[package.metadata.verus]\nverify = true\n", ""), RIGHT);
    let out = text(&silent);
    assert!(!silent.status.success(), "a crate that verified nothing passed:\n{out}");
    assert!(out.contains("not opted into verification"), "the task did not say why it failed:\n{out}");
}
