//! `cargo xtask fuzz`: run the cargo-fuzz targets of `fuzz/` for a while.
//!
//! Installs what it needs (the nightly toolchain, `cargo-fuzz`), builds the
//! targets once with debug assertions, then runs each for the given time,
//! as many at once as there are CPUs (libFuzzer uses one).
//! libFuzzer's corpus is `fuzz/corpus/<target>` (not committed), seeded with
//! the committed inputs of `fuzz/regressions/<target>`. A crash, leak,
//! timeout or out-of-memory input is copied into `fuzz/regressions/<target>/`
//! (where `cargo test` replays it from then on) and the task fails.
//!
//! libFuzzer's progress lines are filtered down to its periodic status and
//! final statistics; the last lines of a failed run are printed in full.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 2] = ["kvirt_api", "pte_decode"];
const DEFAULT_SECS: u64 = 60;
/// The toolchain cargo-fuzz builds with (sanitizers need nightly).
const TOOLCHAIN: &str = "+nightly";
/// libFuzzer options besides the time limit: a memory limit above what the
/// simulated machines need, inputs up to 1 KiB (about 250 operations for
/// `kvirt_api`) at full length from the start (`len_control=0`: short inputs
/// reach little state), a per-input timeout that only a hang reaches, and
/// the statistics at the end.
const LIBFUZZER_OPTIONS: [&str; 5] =
    ["-rss_limit_mb=4096", "-max_len=1024", "-len_control=0", "-timeout=60", "-print_final_stats=1"];
/// How many of the last output lines of a failed run are shown.
const TAIL_LINES: usize = 80;

/// Options of the `fuzz` task.
#[derive(Debug)]
pub struct Options {
    /// Seconds each target runs.
    pub secs: u64,
    /// The targets, in order.
    pub targets: Vec<String>,
}

/// Parses the arguments after `fuzz`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options { secs: DEFAULT_SECS, targets: Vec::new() };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--time" => {
                let value = args.next().ok_or("--time needs a number of seconds")?;
                options.secs =
                    value.parse().map_err(|_| format!("--time: `{value}` is not a number of seconds"))?;
                if options.secs == 0 {
                    return Err("--time: give at least one second".into());
                }
            }
            target if TARGETS.contains(&target) => options.targets.push(target.to_owned()),
            other => {
                return Err(format!(
                    "fuzz: unknown option or target `{other}` (targets: {})",
                    TARGETS.join(", ")
                ))
            }
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    Ok(options)
}

/// Installs the tools, builds the targets and runs each; fails if any found
/// a crash (saved under `fuzz/regressions/`).
pub fn run(options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let fuzz_dir = crate::project_root().join("fuzz");
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    println!("xtask: building the fuzz targets");
    let status = cargo_fuzz(&fuzz_dir)
        .args(["build", "--debug-assertions"])
        .status()
        .map_err(|e| format!("cannot run cargo fuzz build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo fuzz build failed ({status})"));
    }
    // One target per CPU at a time: libFuzzer runs on one thread.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut failures = Vec::new();
    for batch in options.targets.chunks(cpus) {
        let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let runs: Vec<_> = batch
                .iter()
                .map(|target| {
                    let fuzz_dir = &fuzz_dir;
                    scope.spawn(move || run_target(fuzz_dir, target, options.secs))
                })
                .collect();
            runs.into_iter()
                .map(|run| run.join().unwrap_or_else(|_| Err("a fuzz run panicked".into())))
                .collect()
        });
        failures.extend(results.into_iter().filter_map(Result::err));
    }
    println!("xtask: fuzzing done in {} s", started.elapsed().as_secs());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// `cargo +nightly fuzz` in `fuzz/`, without the toolchain choice of the
/// `cargo xtask` that runs it.
fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(fuzz_dir).env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO").args([TOOLCHAIN, "fuzz"]);
    cmd
}

fn ensure_nightly() -> Result<(), String> {
    let ok = Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([TOOLCHAIN, "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Ok(());
    }
    println!("xtask: installing the nightly toolchain");
    let status = Command::new("rustup")
        .args(["toolchain", "install", "nightly", "--profile", "minimal"])
        .status()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("rustup toolchain install nightly failed ({status})"))
    }
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz");
    let started = Instant::now();
    let status = Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !status.success() {
        return Err(format!("cargo install cargo-fuzz failed ({status})"));
    }
    println!("xtask: cargo-fuzz installed in {} s", started.elapsed().as_secs());
    Ok(())
}

/// The file names in `dir` (none if it does not exist).
fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// Whether libFuzzer's line is worth showing while all goes well.
fn is_status_line(line: &str) -> bool {
    // `#4096\tpulse  cov: ...`
    let status = line.starts_with('#')
        && line.split_whitespace().nth(1).is_some_and(|w| ["pulse", "INITED", "DONE"].contains(&w));
    status
        || line.starts_with("stat::")
        || line.starts_with("Done ")
        || line.starts_with("INFO: seed corpus")
        || line.trim_start().starts_with("Compiling")
        || line.trim_start().starts_with("Finished")
}

fn run_target(fuzz_dir: &Path, target: &str, secs: u64) -> Result<(), String> {
    let corpus = fuzz_dir.join("corpus").join(target);
    let regressions = fuzz_dir.join("regressions").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    for dir in [&corpus, &regressions] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let known = file_names(&artifacts);
    println!("xtask: fuzzing {target} for {secs} s");
    let started = Instant::now();
    let mut child = cargo_fuzz(fuzz_dir)
        .args(["run", "--debug-assertions", target])
        .arg(&corpus)
        .arg(&regressions)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .args(LIBFUZZER_OPTIONS)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo fuzz run: {e}"))?;
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let mut reader = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf).map_err(|e| format!("reading cargo fuzz output: {e}"))? > 0 {
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        buf.clear();
        if is_status_line(&line) {
            eprintln!("[{target}] {line}");
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().map_err(|e| format!("waiting for cargo fuzz run: {e}"))?;
    let found: Vec<String> = file_names(&artifacts).difference(&known).cloned().collect();
    println!("xtask: {target} ran for {} s", started.elapsed().as_secs());
    if status.success() && found.is_empty() {
        return Ok(());
    }
    // One block, so that a run in parallel does not interleave with it.
    let mut report = format!("xtask: the last lines of the {target} run:\n");
    for line in &tail {
        report.push_str(&format!("    {line}\n"));
    }
    eprint!("{report}");
    if found.is_empty() {
        return Err(format!("fuzzing {target} failed ({status}) without leaving an input"));
    }
    let mut saved = Vec::new();
    for name in &found {
        let to = regressions.join(name);
        std::fs::copy(artifacts.join(name), &to).map_err(|e| format!("cannot copy {name}: {e}"))?;
        saved.push(to.display().to_string());
    }
    Err(format!(
        "fuzzing {target} found {} failing input(s), saved as {} (replayed by `cargo test -p kvirt --test fuzz_regressions`)",
        saved.len(),
        saved.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_to_every_target_for_a_minute() {
        let options = parse_args(&[]).unwrap();
        assert_eq!(options.secs, DEFAULT_SECS);
        assert_eq!(options.targets, args(&TARGETS));
    }

    #[test]
    fn time_and_targets_are_parsed() {
        let options = parse_args(&args(&["--time", "5", "pte_decode"])).unwrap();
        assert_eq!(options.secs, 5);
        assert_eq!(options.targets, args(&["pte_decode"]));
    }

    #[test]
    fn status_lines_pass_the_filter() {
        assert!(is_status_line("#4096\tpulse  cov: 3983 ft: 18920 corp: 1484/132Kb exec/s: 97 rss: 205Mb"));
        assert!(is_status_line("#46172\tDONE   cov: 4520 ft: 23268 corp: 2183/428Kb lim: 1024 exec/s: 38"));
        assert!(is_status_line("stat::average_exec_per_sec:     125"));
        assert!(!is_status_line("#40218\tNEW    cov: 4458 ft: 22955 corp: 2127/393Kb lim: 1024 exec/s: 44"));
        assert!(!is_status_line("\"\\000\\000\" # Uses: 1321"));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        assert!(parse_args(&args(&["--time"])).is_err());
        assert!(parse_args(&args(&["--time", "soon"])).is_err());
        assert!(parse_args(&args(&["--time", "0"])).is_err());
        assert!(parse_args(&args(&["no_such_target"])).is_err());
    }

    #[test]
    fn every_target_has_a_source_and_a_regressions_directory() {
        let fuzz = crate::project_root().join("fuzz");
        for target in TARGETS {
            assert!(fuzz.join("fuzz_targets").join(format!("{target}.rs")).is_file(), "{target}");
            assert!(fuzz.join("regressions").join(target).is_dir(), "{target}");
        }
    }
}
