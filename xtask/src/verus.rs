//! `cargo xtask verus`: run the Verus verifier over every verified crate.
//!
//! A verified crate is a workspace crate under `crates/` that depends on
//! `vstd` (today only `crates/kvirt-core`). Each is verified alone with
//! `cargo verus focus` in its directory, which checks the crate's own proofs
//! and trusts the pinned `vstd` that Verus itself was built and verified
//! with. The task prints each crate's "verification results" line and fails
//! if any crate fails (Verus exits with status 101 on a failed proof).
//!
//! ## Finding Verus
//!
//! In this order:
//!
//! 1. `KVIRT_VERUS_BIN`: a directory holding `verus` and `cargo-verus`
//!    (with `VERUS_Z3_PATH` set if Z3 is not beside them);
//! 2. `cargo-verus` on `PATH`, for a user who installed Verus as its own
//!    documentation says;
//! 3. `KVIRT_VERUS_INSTALLER`: a script that builds Verus (or reuses a
//!    finished build) and, given `--env`, prints a shell line exporting
//!    `PATH` and `VERUS_Z3_PATH`. Our CI sets it to the build machines'
//!    installer, which builds the pinned snapshot from source.
//!
//! With none of these the task fails and says how to get Verus. The
//! README's build and test commands never need Verus: plain cargo compiles
//! the same `verus! { }` code with its ghost parts erased.
//!
//! ## Caching
//!
//! `cargo verus focus` verifies through cargo, so a crate whose sources did
//! not change since its last successful verification is not verified again
//! and prints no results line; the exit status still reports the last
//! verdict. The task says so rather than printing a line it did not see.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// What `cargo verus` prints, and exits 0 with, when the crate did not opt
/// in: a pass that checked nothing.
const NOT_OPTED_IN: &str = "did not find any crates that opted into verification";

/// Options of `cargo xtask verus`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Crate directories to verify instead of every verified crate.
    pub crates: Vec<PathBuf>,
}

/// Parses the arguments after `verus`: `[--crate DIR]...`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--crate" => {
                let dir = args.next().ok_or("verus: --crate needs a directory")?;
                options.crates.push(PathBuf::from(dir));
            }
            other => return Err(format!("verus: unknown option `{other}`")),
        }
    }
    Ok(options)
}

/// Finds Verus, then verifies each crate; fails if any proof fails.
pub fn run(options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let verus = find_verus()?;
    let crates = if options.crates.is_empty() {
        verified_crates(&crate::project_root())?
    } else {
        options.crates.clone()
    };
    if crates.is_empty() {
        return Err("verus: no crate under crates/ depends on vstd".into());
    }
    let mut failures = Vec::new();
    for dir in &crates {
        let name =
            dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        println!("xtask: verus: {name} ({})", dir.display());
        let run_started = Instant::now();
        let output = verus
            .cargo_verus(dir)
            .args(["focus", "--", "--time"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run cargo-verus: {e}"))?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        print!("{text}");
        let results = text.lines().filter(|line| line.contains("verification results")).collect::<Vec<_>>();
        let seconds = run_started.elapsed().as_secs();
        if text.contains(NOT_OPTED_IN) {
            println!("xtask: verus: {name}: verified nothing: its manifest lacks `[package.metadata.verus] verify = true`");
            failures.push(format!("{name} (not opted into verification)"));
            continue;
        }
        match (output.status.success(), results.is_empty()) {
            (true, false) => {
                for line in results {
                    println!("xtask: verus: {name}: {}", line.trim());
                }
            }
            (true, true) => {
                println!(
                    "xtask: verus: {name}: unchanged since its last successful verification (cargo's cache)"
                )
            }
            (false, _) => {
                for line in &results {
                    println!("xtask: verus: {name}: {}", line.trim());
                }
                failures.push(format!("{name} ({})", output.status));
            }
        }
        println!("xtask: verus: {name}: {seconds} s");
    }
    println!("xtask: verus: done in {} s", started.elapsed().as_secs());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("verification failed in:\n  {}", failures.join("\n  ")))
    }
}

/// Where Verus was found.
#[derive(Debug)]
struct Verus {
    /// The directory holding `cargo-verus`, or `None` to use `PATH`.
    bin: Option<PathBuf>,
    /// `VERUS_Z3_PATH` to set, if known.
    z3: Option<String>,
}

impl Verus {
    fn cargo_verus(&self, dir: &Path) -> Command {
        let program =
            self.bin.as_ref().map_or_else(|| PathBuf::from("cargo-verus"), |b| b.join("cargo-verus"));
        let mut cmd = Command::new(program);
        // `cargo-verus` is called as a cargo subcommand: its first argument
        // is the subcommand's name.
        cmd.arg("verus").current_dir(dir).env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO");
        if let Some(bin) = &self.bin {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![bin.clone()];
            paths.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(paths).expect("PATH entries join"));
        }
        if let Some(z3) = &self.z3 {
            cmd.env("VERUS_Z3_PATH", z3);
        }
        cmd
    }
}

fn find_verus() -> Result<Verus, String> {
    let z3 = std::env::var("VERUS_Z3_PATH").ok();
    if let Some(bin) = std::env::var_os("KVIRT_VERUS_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.join("cargo-verus").is_file() {
            return Err(format!("KVIRT_VERUS_BIN={} holds no cargo-verus", bin.display()));
        }
        return Ok(Verus { bin: Some(bin), z3 });
    }
    let on_path = Command::new("cargo-verus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return Ok(Verus { bin: None, z3 });
    }
    if let Some(installer) = std::env::var_os("KVIRT_VERUS_INSTALLER") {
        println!("xtask: verus: building or reusing Verus with {}", Path::new(&installer).display());
        let output = Command::new(&installer)
            .arg("--env")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", Path::new(&installer).display()))?;
        if !output.status.success() {
            return Err(format!("the Verus installer failed ({})", output.status));
        }
        let (bin, z3) = parse_installer_env(&String::from_utf8_lossy(&output.stdout))
            .ok_or("the Verus installer printed no `export PATH=... VERUS_Z3_PATH=...` line")?;
        return Ok(Verus { bin: Some(bin), z3: Some(z3) });
    }
    Err("Verus not found: set KVIRT_VERUS_BIN to the directory holding `verus` and `cargo-verus`, put \
         cargo-verus on PATH (see Verus's INSTALL.md), or set KVIRT_VERUS_INSTALLER to an installer script"
        .into())
}

/// Reads `export PATH="<bin>:$PATH" VERUS_Z3_PATH="<z3>"` (the installer's
/// `--env` line) into the bin directory and the Z3 path.
fn parse_installer_env(text: &str) -> Option<(PathBuf, String)> {
    let line = text.lines().rev().find(|l| l.starts_with("export "))?;
    let bin = line.split("PATH=\"").nth(1)?.split(":$PATH").next()?;
    let z3 = line.split("VERUS_Z3_PATH=\"").nth(1)?.split('"').next()?;
    Some((PathBuf::from(bin), z3.to_string()))
}

/// Every crate under `crates/` whose manifest depends on `vstd`.
fn verified_crates(root: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(root.join("crates")).map_err(|e| format!("cannot list crates/: {e}"))?;
    let mut crates = Vec::new();
    for entry in entries {
        let dir = entry.map_err(|e| format!("cannot list crates/: {e}"))?.path();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
        if manifest.lines().any(|line| line.trim_start().starts_with("vstd ")) {
            crates.push(dir);
        }
    }
    crates.sort();
    Ok(crates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_options_are_collected_in_order() {
        let args = ["--crate", "a", "--crate", "b"].map(String::from);
        assert_eq!(parse_args(&args).unwrap().crates, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert!(parse_args(&["--crate".to_string()]).is_err());
        assert!(parse_args(&["--fast".to_string()]).is_err());
    }

    #[test]
    fn the_installer_env_line_gives_bin_and_z3() {
        let text = "building...\nexport PATH=\"/h/release:$PATH\" VERUS_Z3_PATH=\"/h/z3\"\n";
        assert_eq!(parse_installer_env(text), Some((PathBuf::from("/h/release"), "/h/z3".to_string())));
        assert_eq!(parse_installer_env("no export here"), None);
    }

    #[test]
    fn kvirt_core_is_a_verified_crate() {
        let crates = verified_crates(&crate::project_root()).unwrap();
        assert!(crates.iter().any(|c| c.ends_with("crates/kvirt-core")), "{crates:?}");
        assert!(
            !crates.iter().any(|c| c.ends_with("crates/kvirt")),
            "kvirt itself is not verified: {crates:?}"
        );
    }
}
