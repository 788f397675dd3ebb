//! `cargo xtask instructions`: instructions per page of every
//! implementation's map and unmap in `kvirt bench`, and per query, counted
//! by Valgrind's callgrind.
//!
//! `perf stat` needs hardware counters, which virtual machines like ours
//! often lack; callgrind counts the instructions a function and its callees
//! retire, exactly and on any machine. For each range size this runs
//! `kvirt bench --quick --only map-4k-x{n}$` (maps, queries and unmaps of
//! `n`-page ranges, every implementation) under callgrind, collecting only
//! inside the adapters' `Mapper::map`, `Mapper::unmap` and `Mapper::query`
//! (kept out of line for this, each implementation alike), and reads from
//! callgrind's output the calls to each and their inclusive instruction
//! counts: per page (per query), that is the instructions one page (one
//! random query) costs, the adapter's few included. Frame handles and addresses are
//! prepared outside those functions, as in the timed runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The operations counted, as the adapters' methods are named.
const OPS: [&str; 3] = ["map", "unmap", "query"];
/// The range sizes (as `kvirt bench`'s).
const SIZES: [usize; 4] = [1, 16, 512, 65536];
/// The implementations, in `kvirt bench`'s order: (name, what its adapter's
/// type path contains).
const IMPLS: [(&str, &str); 5] = [
    ("kvirt-area", "kvirt_area::KvirtArea"),
    ("kvirt-pt", "kvirt_pt::KvirtPt"),
    ("x86_64", "x86_64_crate::X86Crate"),
    ("multiarch", "multiarch::Multiarch"),
    ("floor", "floor::Floor"),
];

/// Options of the task.
#[derive(Debug)]
pub struct Options {
    /// Where to write the Markdown section.
    pub out: PathBuf,
}

/// Parses the arguments after `instructions`.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut out = crate::project_root().join("docs/instructions.md");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(args.next().ok_or("--out needs a path")?),
            other => return Err(format!("instructions: unknown option `{other}`")),
        }
    }
    Ok(Options { out })
}

/// Calls and inclusive instructions of one function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Calls.
    pub calls: u64,
    /// Instructions retired in them, callees included.
    pub instructions: u64,
}

/// Reads a callgrind output file: for every called function whose name
/// contains `filter`, its calls and their inclusive instruction counts.
///
/// A call appears as a `cfn=` line naming the callee (`(id) name` the
/// first time, `(id)` after), a `calls=N ...` line, and a cost line whose
/// second field is the call's inclusive `Ir`.
pub fn parse_callgrind(text: &str, filter: &str) -> BTreeMap<String, Count> {
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut counts: BTreeMap<String, Count> = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(body) = line.strip_prefix("fn=").or_else(|| line.strip_prefix("cfn=")) else { continue };
        let (id, name) = body.split_once(' ').map_or((body, None), |(id, name)| (id, Some(name)));
        if let Some(name) = name {
            names.insert(id, name);
        }
        if !line.starts_with("cfn=") {
            continue;
        }
        let Some(calls_line) = lines.by_ref().find(|l| l.starts_with("calls=")) else { break };
        let calls = calls_line[6..].split(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let cost = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|n| n.parse::<u64>().ok());
        let name = names.get(id).copied().unwrap_or_default();
        if name.contains(filter) {
            let entry = counts.entry(name.to_string()).or_default();
            entry.calls += calls;
            entry.instructions += cost.unwrap_or(0);
        }
    }
    counts
}

/// Builds `kvirt`, counts, and writes the Markdown section.
pub fn run(options: &Options) -> Result<(), String> {
    let root = crate::project_root();
    if !crate::on_path("valgrind") {
        return Err("valgrind not found on PATH (on Debian: apt-get install valgrind)".into());
    }
    let status = crate::cargo()
        .current_dir(&root)
        .args(["build", "--release", "-p", "kvirt-cli"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building kvirt-cli failed ({status})"));
    }
    let kvirt = root.join("target/release/kvirt");
    // (op, pages) -> impl -> instructions per page
    let mut table: BTreeMap<(&str, usize), BTreeMap<&str, f64>> = BTreeMap::new();
    for n in SIZES {
        let counts = count(&kvirt, n)?;
        for op in OPS {
            for (name, path) in IMPLS {
                let suffix = format!("as kvirt_cli::bench::mapper::Mapper>::{op}");
                let found = counts.iter().find(|(f, _)| f.contains(path) && f.ends_with(&suffix));
                if let Some((_, c)) = found.filter(|(_, c)| c.calls > 0) {
                    // Maps and unmaps per page; a query is one call.
                    let per = if op == "query" { c.calls as f64 } else { c.calls as f64 * n as f64 };
                    table.entry((op, n)).or_default().insert(name, c.instructions as f64 / per);
                }
            }
        }
        println!("xtask: counted the {n}-page ranges");
    }
    let text = markdown(&table);
    std::fs::write(&options.out, &text).map_err(|e| format!("writing {}: {e}", options.out.display()))?;
    print!("{text}");
    println!("xtask: wrote {}", options.out.display());
    Ok(())
}

/// Runs the `n`-page workloads under callgrind and parses the result.
fn count(kvirt: &Path, n: usize) -> Result<BTreeMap<String, Count>, String> {
    let out = std::env::temp_dir().join(format!("kvirt-callgrind-{}-{n}.out", std::process::id()));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--toggle-collect=*as kvirt_cli::bench::mapper::Mapper>::map")
        .arg("--toggle-collect=*as kvirt_cli::bench::mapper::Mapper>::unmap")
        .arg("--toggle-collect=*as kvirt_cli::bench::mapper::Mapper>::query")
        .arg(kvirt)
        .args(["bench", "--quick", "--only", &format!("map-4k-x{n}$")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    if !status.success() {
        return Err(format!("kvirt bench under callgrind failed ({status})"));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("reading {}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    Ok(parse_callgrind(&text, "Mapper>::"))
}

/// The Markdown section `docs/BENCHMARKS.md` includes.
fn markdown(table: &BTreeMap<(&str, usize), BTreeMap<&str, f64>>) -> String {
    let mut out = String::from(
        "## Instructions per page\n\n\
         Instructions retired per page by each implementation's map and unmap, and per random query, counted by \
         Valgrind's callgrind \
         (`cargo xtask instructions`, which writes this section; this machine has no hardware counters for \
         `perf stat`). Exact counts of the same code the table times, on `kvirt bench --quick`'s runs; the unmaps \
         include the flush of both simulated CPUs' TLBs that every implementation does. Work kvirt defers to an \
         RCU callback (freeing the frames of a whole page-table node taken at once, as the 65536-page unmaps do) \
         runs where the hosted RCU finds its grace period over: mostly inside a later unmap, when a batch of \
         callbacks is handed over, so these counts include most of it; the timed runs include all of it. \
         Callgrind counts each byte a `rep stosb` stores as an instruction: zeroing a new 4 KiB page-table \
         node (glibc's `memset` uses `rep stosb` at that size) counts about 4100 instructions where the CPU \
         spends some hundred cycles. kvirt's maps allocate the nodes the peers keep (its unmaps give back a \
         node they empty), so its map counts include this: about 16 of the instructions per page of the \
         512-page maps (two leaf nodes a range).\n\n",
    );
    out.push_str("| op | pages per range |");
    for (name, _) in IMPLS {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n|---|---:|");
    out.push_str(&"---:|".repeat(IMPLS.len()));
    out.push('\n');
    for op in OPS {
        for n in SIZES {
            out.push_str(&format!("| {op} | {n} |"));
            for (name, _) in IMPLS {
                match table.get(&(op, n)).and_then(|row| row.get(name)) {
                    Some(v) => out.push_str(&format!(" {v:.1} |")),
                    None => out.push_str(" - |"),
                }
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_inclusive_costs_are_summed_per_callee() {
        let text = "\
fn=(1) caller
cfn=(2) <a::KvirtPt<L> as kvirt_cli::bench::mapper::Mapper>::map
calls=3 0x10
5 300
cfn=(3) other
calls=1 0x20
6 999
fn=(4) caller2
cfn=(2)
calls=1 0x10
7 100
";
        let counts = parse_callgrind(text, "Mapper>::");
        assert_eq!(counts.len(), 1);
        let c = counts.values().next().unwrap();
        assert_eq!(*c, Count { calls: 4, instructions: 400 });
    }
}
