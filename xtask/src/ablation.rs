//! `cargo xtask ablation`: what each piece of the work kvirt does and the
//! peers do not costs in `kvirt bench`'s 1-page, 16-page and 512-page map
//! and unmap, measured by taking it out.
//!
//! `docs/ablation.patch` adds one `cfg` switch per piece (the read-side
//! section, the node lock, the frame's reference count, the child count,
//! the map's checks, and every implementation's TLB flush). Each switch
//! makes kvirt unsound or leak, so the switches are not in the library: the
//! task checks the committed tree out into `target/ablation/src` (a git
//! worktree of `HEAD`), applies the patch there, builds one `kvirt` per
//! variant with its switches in `RUSTFLAGS`, then runs the variants' benches
//! one after the other, round after round, so that a slow spell of the
//! machine hits every variant alike, and writes the medians to
//! `docs/ablation.md`, a section `docs/BENCHMARKS.md` includes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The variants: name, the `cfg`s set, and what they take out.
const VARIANTS: [(&str, &[&str], &str); 9] = [
    ("base", &[], "nothing: the code as committed"),
    ("rcu", &["ablation_rcu"], "the read-side section of the 1-page map and unmap (a cursor keeps its own)"),
    (
        "lock",
        &["ablation_lock"],
        "the node lock's compare-exchange (a plain store instead) and the stray check",
    ),
    (
        "ref",
        &["ablation_ref"],
        "the reference an unmap gives back to each frame it takes (the handles are forgotten)",
    ),
    (
        "count",
        &["ablation_count"],
        "the child count of one entry's write, and with it the reclaiming of emptied nodes (no node is ever found empty)",
    ),
    ("checks", &["ablation_checks"], "the map's checks: the entry is absent, the frame is the space's"),
    ("noflush", &["ablation_noflush"], "every implementation's TLB flush (the peers' too)"),
    (
        "all",
        &["ablation_rcu", "ablation_lock", "ablation_ref", "ablation_count", "ablation_checks"],
        "rcu, lock, ref, count and checks together",
    ),
    (
        "all-noflush",
        &[
            "ablation_rcu",
            "ablation_lock",
            "ablation_ref",
            "ablation_count",
            "ablation_checks",
            "ablation_noflush",
        ],
        "all of the above, and every implementation's flush",
    ),
];

/// The `--only` filters each variant runs with, per round (but see
/// [`runs`]).
const RUNS: [&str; 3] = ["map-4k-x1$", "map-4k-x16$", "map-4k-x512$"];

/// The rows reported: (workload, column title).
const ROWS: [(&str, &str); 6] = [
    ("map-4k-x1", "map, 1 page"),
    ("unmap-4k-x1", "unmap, 1 page"),
    ("map-4k-x16", "map, 16 pages"),
    ("unmap-4k-x16", "unmap, 16 pages"),
    ("map-4k-x512", "map, 512 pages"),
    ("unmap-4k-x512", "unmap, 512 pages"),
];

/// Whether a variant with `cfgs` runs the `only` filter: every one but the
/// 16-page rows without the child count, whose area workloads (16-page
/// areas, each at a new address) would then leave a node behind each time
/// until the hosted machine runs out of memory.
fn runs(cfgs: &[&str], only: &str) -> bool {
    !(only == "map-4k-x16$" && cfgs.contains(&"ablation_count"))
}

/// The peers, as `kvirt bench` names them.
const PEERS: [&str; 2] = ["x86_64", "multiarch"];

/// Options of the task.
#[derive(Debug)]
pub struct Options {
    /// Rounds of every variant's runs.
    pub rounds: usize,
    /// Where to write the Markdown page.
    pub out: PathBuf,
    /// Only check that the patch applies and that every switch compiles
    /// (what CI runs, so that the patch cannot rot unnoticed).
    pub check: bool,
}

/// Parses the arguments after `ablation`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options =
        Options { rounds: 5, out: crate::project_root().join("docs/ablation.md"), check: false };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                let n = args.next().ok_or("--rounds needs a number")?;
                options.rounds = n.parse().ok().filter(|&n| n > 0).ok_or(format!("bad --rounds `{n}`"))?;
            }
            "--out" => options.out = PathBuf::from(args.next().ok_or("--out needs a path")?),
            "--check" => options.check = true,
            other => return Err(format!("ablation: unknown option `{other}`")),
        }
    }
    Ok(options)
}

/// Builds the variants, runs them and writes the page.
pub fn run(options: &Options) -> Result<(), String> {
    let root = crate::project_root();
    let work = root.join("target/ablation");
    let src = work.join("src");
    let commit = git(&root, &["rev-parse", "--short", "HEAD"])?;
    if src.exists() {
        remove_worktree(&root, &src)?;
    }
    git(&root, &["worktree", "add", "--detach", &src.to_string_lossy(), "HEAD"])?;
    git(&src, &["apply", &root.join("docs/ablation.patch").to_string_lossy()])?;
    if options.check {
        // Warnings denied too: a switch the patch misspells is an
        // `unexpected_cfgs` warning, and would silently take out nothing.
        let (name, cfgs, _) = VARIANTS[VARIANTS.len() - 1];
        cargo(&src, &work, name, &format!("{} -D warnings", rustflags(cfgs)), "check")?;
        println!("xtask: the patch applies, and kvirt-cli compiles with every switch set");
        return remove_worktree(&root, &src);
    }
    let mut binaries = Vec::new();
    for (name, cfgs, _) in VARIANTS {
        binaries.push(build(&src, &work, name, cfgs)?);
        println!("xtask: built the `{name}` variant");
    }
    // (variant, workload, impl) -> ns per op of each round
    let mut times: BTreeMap<(&str, String, String), Vec<f64>> = BTreeMap::new();
    for round in 1..=options.rounds {
        for ((name, cfgs, _), kvirt) in VARIANTS.iter().zip(&binaries) {
            for only in RUNS.into_iter().filter(|only| runs(cfgs, only)) {
                for (workload, implementation, ns) in bench(kvirt, only, &work)? {
                    times.entry((name, workload, implementation)).or_default().push(ns);
                }
            }
        }
        println!("xtask: round {round} of {} done", options.rounds);
    }
    let medians: BTreeMap<_, f64> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
    let text = markdown(&medians, &commit, options.rounds);
    std::fs::write(&options.out, &text).map_err(|e| format!("writing {}: {e}", options.out.display()))?;
    print!("{text}");
    println!("xtask: wrote {}", options.out.display());
    remove_worktree(&root, &src)
}

/// Removes the worktree at `src` (with the patch applied to it) from the
/// repository at `root`.
fn remove_worktree(root: &Path, src: &Path) -> Result<(), String> {
    git(root, &["worktree", "remove", "--force", &src.to_string_lossy()]).map(drop)
}

/// Runs `git args` in `dir`; its trimmed output.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!("git {} failed ({})", args.join(" "), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds `kvirt` from `src` with `cfgs` set; where the binary was copied.
fn build(src: &Path, work: &Path, name: &str, cfgs: &[&str]) -> Result<PathBuf, String> {
    cargo(src, work, name, &rustflags(cfgs), "build")?;
    let binary = work.join(format!("kvirt-{name}"));
    let built = work.join("target/release/kvirt");
    std::fs::copy(built, &binary).map_err(|e| format!("copying the `{name}` binary: {e}"))?;
    Ok(binary)
}

/// The `RUSTFLAGS` that set `cfgs`.
fn rustflags(cfgs: &[&str]) -> String {
    cfgs.iter().map(|c| format!("--cfg {c}")).collect::<Vec<_>>().join(" ")
}

/// `cargo command --release -p kvirt-cli` in `src` with `rustflags`, for
/// the variant `name`.
fn cargo(src: &Path, work: &Path, name: &str, rustflags: &str, command: &str) -> Result<(), String> {
    let status = crate::cargo()
        .current_dir(src)
        .env("RUSTFLAGS", rustflags)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .args([command, "--release", "-q", "-p", "kvirt-cli"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo {command} of the `{name}` variant failed ({status})"));
    }
    Ok(())
}

/// One `kvirt bench --only only` run: (workload, implementation, ns per op)
/// of each result.
fn bench(kvirt: &Path, only: &str, work: &Path) -> Result<Vec<(String, String, f64)>, String> {
    let json = work.join("run.json");
    let status = Command::new(kvirt)
        .args(["bench", "--only", only, "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", kvirt.display()))?;
    if !status.success() {
        return Err(format!("{} bench --only {only} failed ({status})", kvirt.display()));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("reading {}: {e}", json.display()))?;
    parse_results(&text)
}

/// The `results` of a `kvirt bench --json` file: each supported one's
/// workload, implementation and median ns per op.
pub fn parse_results(text: &str) -> Result<Vec<(String, String, f64)>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the bench's JSON does not parse: {e}"))?;
    let results = json["results"].as_array().ok_or("no `results` array in the bench's JSON")?;
    results
        .iter()
        .filter(|r| r["supported"] != false)
        .map(|r| {
            let text = |key: &str| r[key].as_str().map(str::to_string);
            (|| Some((text("workload")?, text("impl")?, r["ns_per_op"].as_f64()?)))()
                .ok_or_else(|| format!("cannot read the bench result `{r}`"))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The page.
fn markdown(medians: &BTreeMap<(&str, String, String), f64>, commit: &str, rounds: usize) -> String {
    let get = |variant: &str, workload: &str, implementation: &str| {
        medians.get(&(variant, workload.to_string(), implementation.to_string())).copied()
    };
    let peer = |variant: &str, workload: &str| {
        PEERS.iter().filter_map(|p| get(variant, workload, p)).min_by(f64::total_cmp)
    };
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let mut out = format!(
        "## What kvirt's map and unmap pay for: an ablation\n\n\
         Written by `cargo xtask ablation` (see `xtask/src/ablation.rs`) at commit `{commit}`: ns per page, \
         the median over {rounds} rounds of the run's own median, of `kvirt-pt` (kvirt's page table, used \
         directly) and of the faster peer (`x86_64` or `multiarch`) in the same runs. Each variant is `kvirt` \
         built with `docs/ablation.patch` applied and some of its switches set: each switch takes out one \
         piece of what kvirt does and the peers do not, making kvirt unsound or leaky, which is why the \
         switches live in a patch and never in the library. `kvirt bench --only 'map-4k-x1$'` times the 1-page \
         rows, `--only 'map-4k-x16$'` and `--only 'map-4k-x512$'` the 16-page and 512-page ones, as in \
         `docs/BENCHMARKS.md`. A variant's change from \
         `base` is what the piece it takes out costs in that row; pieces that wait on one another (locked \
         instructions drain the store buffer) cost more together than the sum of their own changes, which \
         `all` shows. The variants without the child count (`count`, `all`, `all-noflush`) do not run the \
         16-page rows (`-`): their area workloads, each 16-page area at a new address, would leave a node \
         behind each time until the hosted machine runs out of memory.\n\n\
         | variant | takes out |\n|---|---|\n"
    );
    for (name, _, what) in VARIANTS {
        out.push_str(&format!("| {name} | {what} |\n"));
    }
    out.push_str(
        "\nEach cell: `kvirt-pt` (its change from `base`) / the faster peer, ns per page.\n\n| variant |",
    );
    for (_, title) in ROWS {
        out.push_str(&format!(" {title} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(ROWS.len()));
    out.push('\n');
    for (name, _, _) in VARIANTS {
        out.push_str(&format!("| {name} |"));
        for (workload, _) in ROWS {
            let kvirt = get(name, workload, "kvirt-pt");
            let change = match (kvirt, get("base", workload, "kvirt-pt")) {
                (Some(v), Some(base)) if name != "base" => format!(" ({:+.2})", v - base),
                _ => String::new(),
            };
            out.push_str(&format!(" {}{change} / {} |", cell(kvirt), cell(peer(name, workload))));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_results_are_read_from_the_results_array_only() {
        let text = "{\n  \"tool\": \"kvirt bench\",\n  \"results\": [\n\
            {\"workload\": \"map-4k-x1\", \"impl\": \"kvirt-pt\", \"supported\": true, \"ns_per_op\": 34.5, \"runs\": [1]},\n\
            {\"workload\": \"unmap-4k-x1\", \"impl\": \"x86_64\", \"supported\": true, \"ns_per_op\": 55},\n\
            {\"workload\": \"shared-1p-1thread\", \"impl\": \"floor\", \"supported\": false, \"reason\": \"n/a\"}\n  ],\n\
            \"targets\": [{\"workload\": \"ignored\", \"impl\": \"x\", \"ns_per_op\": 1}]\n}";
        let results = parse_results(text).unwrap();
        assert_eq!(
            results,
            vec![
                ("map-4k-x1".into(), "kvirt-pt".into(), 34.5),
                ("unmap-4k-x1".into(), "x86_64".into(), 55.0)
            ]
        );
    }

    #[test]
    fn a_result_without_its_time_is_an_error() {
        let text =
            "{\"results\": [{\"workload\": \"map-4k-x1\", \"impl\": \"kvirt-pt\", \"supported\": true}]}";
        let err = parse_results(text).unwrap_err();
        assert!(err.starts_with("cannot read the bench result"), "{err}");
    }

    #[test]
    fn a_cell_shows_kvirt_its_change_from_base_and_the_faster_peer() {
        let mut medians = BTreeMap::new();
        for (variant, implementation, ns) in [
            ("base", "kvirt-pt", 33.0),
            ("rcu", "kvirt-pt", 31.0),
            ("rcu", "x86_64", 29.0),
            ("rcu", "multiarch", 27.5),
        ] {
            medians.insert((variant, "map-4k-x1".to_string(), implementation.to_string()), ns);
        }
        let page = markdown(&medians, "abc1234", 3);
        assert!(page.contains("at commit `abc1234`"), "{page}");
        assert!(page.contains("| rcu | 31.00 (-2.00) / 27.50 | - / - |"), "{page}");
        assert!(page.contains("| base | 33.00 / - |"), "{page}");
    }

    #[test]
    fn only_the_variants_with_the_child_count_run_the_16_page_rows() {
        let run_16 = |name: &str| {
            let (_, cfgs, _) = VARIANTS.iter().find(|(n, _, _)| *n == name).unwrap();
            runs(cfgs, "map-4k-x16$")
        };
        assert!(run_16("base") && run_16("ref") && run_16("noflush"));
        assert!(!run_16("count") && !run_16("all") && !run_16("all-noflush"));
        assert!(VARIANTS.iter().all(|(_, cfgs, _)| runs(cfgs, "map-4k-x1$") && runs(cfgs, "map-4k-x512$")));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
