//! Reports of a benchmark run: the text table with the targets as a footer,
//! hand-written JSON, a hand-written SVG bar plot and the Markdown page.

use std::fmt::Write as _;
use std::path::Path;

use super::breakdown::Step;
use super::{Results, Stats, IMPLS};

/// The machine the benchmark ran on.
#[derive(Clone, Debug, Default)]
pub struct MachineInfo {
    /// `available_parallelism`.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// `MemTotal` from /proc/meminfo.
    pub memory: String,
    /// Kernel release.
    pub os: String,
    /// `rustc --version`, if rustc is on the path.
    pub rustc: String,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// The 1, 5 and 15 minute load averages when the run started (other
    /// work on the machine skews the numbers).
    pub load: String,
}

impl MachineInfo {
    /// Reads what the host tells.
    #[must_use]
    pub fn probe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        let mem_kb: Option<u64> =
            field(&read("/proc/meminfo"), "MemTotal").split_whitespace().next().and_then(|v| v.parse().ok());
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            cpu: field(&read("/proc/cpuinfo"), "model name"),
            memory: mem_kb
                .map_or_else(|| "unknown".into(), |kb| format!("{:.1} GiB", kb as f64 / (1 << 20) as f64)),
            os: format!("{} {}", std::env::consts::OS, read("/proc/sys/kernel/osrelease").trim()),
            rustc,
            profile: if cfg!(debug_assertions) { "debug" } else { "release" },
            load: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        }
    }
}

/// A performance target of the issue, evaluated on a run.
#[derive(Clone, Debug)]
pub struct Target {
    /// Short id: (a), (b), ...
    pub id: &'static str,
    /// The goal.
    pub goal: &'static str,
    /// Whether it was met (`None` if a number is missing).
    pub pass: Option<bool>,
    /// The measured numbers.
    pub measured: String,
}

impl Target {
    /// `PASS`, `FAIL` or `n/a`.
    #[must_use]
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "n/a",
        }
    }
}

fn ns(results: &Results, workload: &str, impl_name: &str) -> Option<f64> {
    results.get(workload, impl_name).map(|s| s.ns_per_op)
}

/// The issue's targets.
#[must_use]
pub fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let map = "map-4k-x512";
    out.push(match (ns(r, map, "kvirt-area"), ns(r, map, "floor"), ns(r, map, "x86_64"), ns(r, map, "multiarch")) {
        (Some(k), Some(f), Some(x), Some(m)) => Target {
            id: "(a)",
            goal: "map 512 tracked 4 KiB pages with KVirtArea::map_frames: <= 3x the raw-store floor per page, and >= 3x faster per page than both peers",
            pass: Some(k <= 3.0 * f && x >= 3.0 * k && m >= 3.0 * k),
            measured: format!(
                "kvirt-area {k:.1} ns/page = {:.1}x floor ({f:.2} ns); x86_64 {x:.1} ns = {:.2}x kvirt-area, multiarch {m:.1} ns = {:.2}x kvirt-area{}",
                k / f,
                x / k,
                m / k,
                map_floor_note(r).unwrap_or_default()
            ),
        },
        _ => missing("(a)"),
    });
    let q = "query-4k-x512";
    out.push(match (ns(r, q, "kvirt-area"), ns(r, q, "kvirt-pt"), ns(r, q, "floor")) {
        (Some(k), Some(t), Some(f)) => Target {
            id: "(b)",
            goal: "a query (KVirtArea::query, random addresses in 512-page areas) costs <= 2x the raw 4-level walk",
            pass: Some(k <= 2.0 * f),
            measured: format!(
                "KVirtArea::query {k:.1} ns = {:.1}x the raw walk ({f:.1} ns); kvirt-pt's lock-free translate_addr {t:.1} ns = {:.1}x{}",
                k / f,
                t / f,
                match (ns(r, "query-chain-4k-x512", "kvirt-area"), ns(r, "query-chain-4k-x512", "floor")) {
                    (Some(kc), Some(fc)) => format!(
                        "; chained (latency) {kc:.1} ns = {:.1}x the raw walk's {fc:.1} ns",
                        kc / fc
                    ),
                    _ => String::new(),
                }
            ),
        },
        _ => missing("(b)"),
    });
    out.push(match (ns(r, "area-1p", "kvirt-area"), ns(r, "area-1p-busy", "kvirt-area")) {
        (Some(idle), Some(busy)) => Target {
            id: "(c)",
            goal: "create+drop of a 1-page area stays within 1.5x from 0 to 10k live areas",
            pass: Some(busy <= 1.5 * idle),
            measured: format!(
                "{idle:.1} ns with no other area, {busy:.1} ns with 10k live: {:.2}x",
                busy / idle
            ),
        },
        _ => missing("(c)"),
    });
    let tput = |w: &str| r.get(w, "kvirt-area").map(Stats::ops_per_s);
    out.push(match (tput("area-1p-1thread"), tput("area-1p-2threads")) {
        (Some(one), Some(two)) => Target {
            id: "(d)",
            goal: "2 threads give >= 1.6x the create+drop throughput of 1",
            pass: Some(two >= 1.6 * one),
            measured: format!(
                "1 thread {}/s, 2 threads {}/s: {:.2}x{}{}",
                si(one),
                si(two),
                two / one,
                tput("area-1p-2threads-apart").map_or(String::new(), |apart| format!(
                    " (2 threads on a space each, sharing nothing of kvirt's: {}/s = {:.2}x, what this machine gives two threads)",
                    si(apart),
                    apart / one
                )),
                churn_scaling(r, "lazy", 2).map_or(String::new(), |lazy| format!(
                    "; with lazy purge (the churn table below), where a drop does not shoot down every CPU, 2 threads give {lazy:.2}x"
                ))
            ),
        },
        _ => missing("(d)"),
    });
    out.extend(peer_targets(r));
    out
}

/// The faster peer's time on `workload`.
fn faster_peer(r: &Results, workload: &str) -> Option<f64> {
    match (ns(r, workload, "x86_64"), ns(r, workload, "multiarch")) {
        (Some(x), Some(m)) => Some(x.min(m)),
        (x, m) => x.or(m),
    }
}

/// Checks `impl_name` against `limit` times the reference on each workload;
/// the verdict, and the rows that miss (worst first) or the worst ratio.
fn within(
    r: &Results,
    impl_name: &str,
    workloads: &[String],
    limit: f64,
    reference: impl Fn(&str) -> Option<f64>,
) -> Option<(bool, String)> {
    let mut ratios = Vec::new();
    for w in workloads {
        let (Some(k), Some(p)) = (ns(r, w, impl_name), reference(w)) else { continue };
        ratios.push((k / p, w.as_str(), k, p));
    }
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(|a, b| b.0.total_cmp(&a.0));
    let misses: Vec<String> = ratios
        .iter()
        .filter(|(ratio, ..)| *ratio > limit)
        .map(|(ratio, w, k, p)| format!("{w} {k:.1} vs {p:.1} ns = {ratio:.2}x"))
        .collect();
    let text = if misses.is_empty() {
        let (ratio, w, ..) = ratios[0];
        format!("all {} rows within; worst {w} at {ratio:.2}x", ratios.len())
    } else {
        format!("{} of {} rows over: {}", misses.len(), ratios.len(), misses.join("; "))
    };
    Some((misses.is_empty(), text))
}

/// Performance against the peers: the same work in each row (every unmap
/// flushes), kvirt at most as slow as the faster peer.
fn peer_targets(r: &Results) -> Vec<Target> {
    let rows = |ops: &[&str]| -> Vec<String> {
        crate::bench::SIZES.iter().flat_map(|n| ops.iter().map(move |op| format!("{op}-4k-x{n}"))).collect()
    };
    let peer = |w: &str| faster_peer(r, w);
    let floor = |w: &str| ns(r, w, "floor");
    let target = |id, goal, result: Option<(bool, String)>| match result {
        Some((pass, measured)) => Target { id, goal, pass: Some(pass), measured },
        None => missing(id),
    };
    let area_512 = within(r, "kvirt-area", &["map-4k-x512".into(), "unmap-4k-x512".into()], 1.5, peer);
    let map_floor = within(r, "kvirt-area", &["map-4k-x512".into()], 3.0, floor);
    let area_512 = match (area_512, map_floor) {
        (Some((a, at)), Some((b, bt))) => {
            let counts = reference_count_note(r).unwrap_or_default();
            let split = map_floor_note(r).unwrap_or_default();
            Some((a && b, format!("against the faster peer: {at}; against the floor: {bt}{split}{counts}")))
        }
        _ => None,
    };
    vec![
        target(
            "(e)",
            "kvirt-pt at most 1.0x the faster peer on every map, unmap and query row (1 to 65536 pages)",
            within(r, "kvirt-pt", &rows(&["map", "unmap", "query", "query-chain"]), 1.0, peer).map(|(pass, measured)| {
                (pass, format!("{measured}{}", peer_free_work_note(r, &rows(&["map", "unmap"]))))
            }),
        ),
        target(
            "(f)",
            "KVirtArea::query throughput (random queries) at most 1.0x the faster peer's, at every size",
            within(r, "kvirt-area", &rows(&["query"]), 1.0, peer)
                .map(|(pass, measured)| (pass, format!("{measured}{}", handle_note(r, "query")))),
        ),
        target(
            "(g)",
            "KVirtArea::query latency (chained queries) at most 1.1x the raw walk, at every size",
            within(r, "kvirt-area", &rows(&["query-chain"]), 1.1, floor)
                .map(|(pass, measured)| (pass, format!("{measured}{}", handle_note(r, "query-chain")))),
        ),
        target(
            "(h)",
            "kvirt-area map and unmap of 512 pages at most 1.5x the faster peer per page, and map at most 3x the floor",
            area_512,
        ),
    ]
}

fn missing(id: &'static str) -> Target {
    Target { id, goal: "", pass: None, measured: "not measured".into() }
}

/// A number with an SI suffix: `12.3 M`.
#[must_use]
pub fn si(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    for (scale, suffix) in [(1e9, " G"), (1e6, " M"), (1e3, " k")] {
        if v >= scale {
            return format!("{:.2}{suffix}", v / scale);
        }
    }
    format!("{v:.1}")
}

/// Nanoseconds with a precision that suits their size.
#[must_use]
pub fn fmt_ns(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The reference for "x kvirt": kvirt-area if measured, else kvirt-pt.
fn reference(r: &Results, workload: &str) -> Option<f64> {
    ns(r, workload, "kvirt-area").or_else(|| ns(r, workload, "kvirt-pt"))
}

/// The spread of the timed runs: (max - min) / median, in percent.
fn spread(s: &Stats) -> String {
    let (lo, hi) = s.runs.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if s.runs.len() < 2 || !s.ns_per_op.is_finite() {
        return "-".into();
    }
    format!("{:.0}%", (hi - lo) / s.ns_per_op * 100.0)
}

/// Rows of (workload title, impl, unit, ns/op, ops/s, ratio, spread) for
/// measured cells.
fn rows(r: &Results) -> Vec<[String; 7]> {
    let mut out = Vec::new();
    for w in r.workloads() {
        let base = reference(r, &w.id);
        for name in IMPLS {
            let Some(s) = r.get(&w.id, name) else { continue };
            let ratio = base.map_or_else(|| "-".into(), |b| format!("{:.2}", s.ns_per_op / b));
            out.push([
                w.title.clone(),
                name.to_string(),
                w.unit.to_string(),
                fmt_ns(s.ns_per_op),
                si(s.ops_per_s()),
                ratio,
                spread(s),
            ]);
        }
    }
    out
}

const HEADER: [&str; 7] = ["workload", "impl", "op", "ns/op", "ops/s", "x kvirt", "spread"];

/// The table printed on stdout, with the targets as its footer.
#[must_use]
pub fn text_table(r: &Results, targets: &[Target]) -> String {
    let rows = rows(r);
    let mut width = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 7]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}  {:>w5$}  {:>w6$}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4],
            w5 = width[5],
            w6 = width[6]
        )
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(HEADER));
    let _ = writeln!(out, "{}", "-".repeat(width.iter().sum::<usize>() + 12));
    let mut last = String::new();
    for row in &rows {
        if !last.is_empty() && last != row[0] {
            let _ = writeln!(out);
        }
        last.clone_from(&row[0]);
        let _ = writeln!(out, "{}", line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6]]));
    }
    let _ = writeln!(out, "{}", "-".repeat(width.iter().sum::<usize>() + 12));
    let _ = writeln!(out, "x kvirt: time per op relative to kvirt-area (kvirt-pt where kvirt-area has no such op); above 1 is slower; spread: (slowest - fastest run) / median.");
    let _ = writeln!(
        out,
        "{} run on {} pages, {} build: median of {} rounds x {} runs, each round after {} warm-up run(s); {} CPUs ({}), load average {} at start",
        if r.quick { "quick" } else { "full" },
        r.arch.name(),
        r.machine.profile,
        r.config.rounds,
        r.config.runs,
        r.config.warmup,
        r.machine.nproc,
        r.machine.cpu,
        r.machine.load
    );
    if !r.churn.is_empty() {
        let _ = writeln!(out, "\n{}", churn_text(r));
    }
    if !r.breakdown.is_empty() {
        let _ = writeln!(out, "\nbreakdown of kvirt's 1-page map+unmap (hosted, 2 simulated CPUs):");
        for row in breakdown_rows(r) {
            let _ = writeln!(out, "  {:<13} {:>9} ns {:>9} ns  {}", row[0], row[2], row[3], row[1]);
        }
    }
    let _ = writeln!(out, "\ntargets:");
    for t in targets {
        let _ = writeln!(out, "  {} {} {}\n       {}", t.verdict(), t.id, t.goal, t.measured);
    }
    out
}

/// The lazy-purge churn rows as lines of text (also the Markdown table's
/// body, with `|` separators).
fn churn_rows(r: &Results) -> Vec<[String; 6]> {
    let eager = |cpus| r.churn.iter().find(|c| c.mode == "eager" && c.cpus == cpus);
    r.churn
        .iter()
        .map(|c| {
            let vs_one = match churn_scaling(r, c.mode, c.cpus) {
                Some(x) if c.cpus > 1 => format!("{x:.2}x"),
                _ => String::new(),
            };
            let vs_eager = match eager(c.cpus) {
                Some(e) if c.mode == "lazy" => format!(
                    "{:.0}x fewer shoot-downs, {:.2}x the speed",
                    e.shootdowns_per_1000 / c.shootdowns_per_1000.max(1e-9),
                    e.stats.ns_per_op / c.stats.ns_per_op
                ),
                _ => String::new(),
            };
            [
                c.mode.to_string(),
                c.cpus.to_string(),
                format!("{:.1}", c.stats.ns_per_op),
                format!("{:.2}", c.shootdowns_per_1000),
                vs_one,
                vs_eager,
            ]
        })
        .collect()
}

/// The churn's throughput on `cpus` threads in `mode` over its throughput
/// on one thread in the same mode.
fn churn_scaling(r: &Results, mode: &str, cpus: usize) -> Option<f64> {
    let ns = |n| r.churn.iter().find(|c| c.mode == mode && c.cpus == n).map(|c| c.stats.ns_per_op);
    Some(ns(1)? / ns(cpus)?)
}

const CHURN_HEADER: [&str; 6] = [
    "purge",
    "threads",
    "ns per create+drop",
    "shoot-downs per 1000 drops",
    "throughput vs 1 thread",
    "lazy vs eager",
];

fn churn_text(r: &Results) -> String {
    let mut out =
        String::from("lazy-purge churn (1-page areas, 4 simulated CPUs; shoot-downs counted at CPU 0):\n");
    let _ = writeln!(
        out,
        "  {:<6} {:>7} {:>20} {:>28} {:>24}  {}",
        CHURN_HEADER[0], CHURN_HEADER[1], CHURN_HEADER[2], CHURN_HEADER[3], CHURN_HEADER[4], CHURN_HEADER[5]
    );
    for row in churn_rows(r) {
        let _ = writeln!(
            out,
            "  {:<6} {:>7} {:>20} {:>28} {:>24}  {}",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    out
}

/// The own cost of a breakdown step: its time less that of the steps it
/// builds on (`None` if one of them was not measured).
fn breakdown_own(r: &Results, step: &Step) -> Option<f64> {
    let ns = |name: &str| r.breakdown.iter().find(|s| s.name == name).map(|s| s.stats.ns_per_op);
    let base: Option<f64> = step.builds_on.iter().map(|b| ns(b)).sum();
    base.map(|b| step.stats.ns_per_op - b)
}

/// The breakdown's rows: step, what it adds, ns per op, and its own cost.
fn breakdown_rows(r: &Results) -> Vec<[String; 4]> {
    r.breakdown
        .iter()
        .map(|s| {
            let own = breakdown_own(r, s).map_or_else(String::new, fmt_ns);
            [s.name.to_string(), s.what.to_string(), fmt_ns(s.stats.ns_per_op), own]
        })
        .collect()
}

/// Where kvirt-area's 512-page map spends its time per page, against the
/// floor's one store: the fill alone (the breakdown's `512-fill`), the leaf
/// nodes kvirt-pt's map allocates (its row less the fill), and the area
/// (kvirt-area's row less kvirt-pt's), as a clause for the targets that
/// hold the map to 3x the floor.
fn map_floor_note(r: &Results) -> Option<String> {
    let map = "map-4k-x512";
    let (area, pt, floor) = (ns(r, map, "kvirt-area")?, ns(r, map, "kvirt-pt")?, ns(r, map, "floor")?);
    let fill = r.breakdown.iter().find(|s| s.name == "512-fill")?.stats.ns_per_op;
    Some(format!(
        "; where kvirt-area's {} ns a page go: the fill alone, into leaf nodes that exist (the breakdown's `512-fill`: per page an absent check, the frame's ownership check, the entry's encoding and an atomic store; the ablation (`docs/ablation.md`, `cargo xtask ablation`) times the 512-page map without the two checks), {} ns = {:.1}x floor; the rest of kvirt-pt's map, mostly the leaf node a range needs, allocated and zeroed where the floor's are built beforehand (kvirt-pt's row less the fill), {} ns; the area's VMALLOC range, registry entry and handle (kvirt-area's row less kvirt-pt's), {} ns",
        fmt_ns(area),
        fmt_ns(fill),
        fill / floor,
        fmt_ns(pt - fill),
        fmt_ns(area - pt),
    ))
}

/// What an area query adds to kvirt-pt's walk of the same address, row by
/// row, beside how many handles a run picks from at random: a clause for
/// the targets on `KVirtArea::query`, `op` being `query` or `query-chain`.
/// Besides the area's handle, the difference holds the levels an area
/// query skips (its walk starts at the lowest node holding the area) and
/// the metadata slot of the tracked frame it finds.
fn handle_note(r: &Results, op: &str) -> String {
    let size = core::mem::size_of::<kvirt::kspace::KVirtArea>();
    let parts: Vec<String> = crate::bench::SIZES
        .iter()
        .filter_map(|&n| {
            let w = format!("{op}-4k-x{n}");
            let (area, pt) = (ns(r, &w, "kvirt-area")?, ns(r, &w, "kvirt-pt")?);
            let handles = (r.config.pages_per_round / n).max(1);
            Some(format!("{handles} ({} KiB): {:+.1} ns", (handles * size).div_ceil(1024), area - pt))
        })
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!(
        "; an area query first reads the area's handle ({size} bytes), which holds where its walk starts: the lowest node on the path of each of its pages (for an area inside one leaf node's span, that leaf, so the walk loads one entry where kvirt-pt's loads four), then finds the tracked frame's metadata slot; what it adds to kvirt-pt's row (less than nothing where the levels it skips outweigh the handle), by the number of handles a run picks from at random: {}",
        parts.join(", ")
    )
}

/// What the tracked frames' reference counts cost per page, up and down
/// (a count taken at map and given back at unmap, each a locked
/// read-modify-write of the frame's metadata): the breakdown's
/// `512-tracked` less `512-untracked`.
fn reference_count_cost(r: &Results) -> Option<f64> {
    breakdown_own(r, r.breakdown.iter().find(|s| s.name == "512-tracked")?)
}

/// [`reference_count_cost`] as a clause for the targets the peers meet by
/// not counting: they map raw physical addresses.
fn reference_count_note(r: &Results) -> Option<String> {
    let own = reference_count_cost(r)?;
    Some(format!(
        "; the frames' reference counts, which the peers do not keep, cost kvirt {own:.1} ns per page here, up and down, {:.1} ns per change (the breakdown's `512-tracked` less `512-untracked`): an unmap gives one back per page",
        own / 2.0
    ))
}

/// What the work the peers do not do costs, from the breakdown: a
/// read-side section (`rcu`) and a leaf node's lock (`lock-op`: the lock's
/// own instructions) per range, and one reference given back per page
/// unmapped (`512-tracked` less `512-untracked`, halved).
struct PeerFreePrices {
    section: f64,
    lock: f64,
    give_back: f64,
}

impl PeerFreePrices {
    /// `None` where the breakdown did not run.
    fn of(r: &Results) -> Option<Self> {
        let step = |name: &str| r.breakdown.iter().find(|s| s.name == name).map(|s| s.stats.ns_per_op);
        Some(Self {
            section: step("rcu")?,
            lock: step("lock-op")?,
            give_back: reference_count_cost(r)? / 2.0,
        })
    }

    /// What a `kvirt-pt` row pays per page for that work: the range's
    /// section and lock spread over its pages, and for an unmap the
    /// reference of each page. `None` for the queries, which take no lock
    /// and one section per run.
    fn per_page(&self, workload: &str) -> Option<f64> {
        let (op, pages) = workload.rsplit_once("-4k-x")?;
        let per_range = (self.section + self.lock) / pages.parse::<f64>().ok()?;
        match op {
            "map" => Some(per_range),
            "unmap" => Some(per_range + self.give_back),
            _ => None,
        }
    }
}

/// For target (e): what the peers do not do, priced
/// ([`PeerFreePrices`]), and each map or unmap row over the faster peer
/// with that taken off, worst first: whether the row is over because of it.
/// Beside the lock, what kvirt's whole path to a locked leaf adds to a
/// lock-free walk (`leaf-lock` less `walk`): the lock, and kvirt's own cost
/// of finding the leaf by the lock protocol, which is not priced.
fn peer_free_work_note(r: &Results, workloads: &[String]) -> String {
    let Some(prices) = PeerFreePrices::of(r) else {
        return String::new();
    };
    let path = r.breakdown.iter().find(|s| s.name == "leaf-lock").and_then(|s| breakdown_own(r, s)).map_or_else(String::new, |path| {
        format!(
            "; kvirt's whole path to the locked leaf adds {} ns to a lock-free walk (`leaf-lock` less `walk`), the rest of it kvirt's own cost of finding the leaf by the lock protocol, not priced here",
            fmt_ns(path)
        )
    });
    let mut over: Vec<(f64, String)> = workloads
        .iter()
        .filter_map(|w| {
            let (k, p, free) = (ns(r, w, "kvirt-pt")?, faster_peer(r, w)?, prices.per_page(w)?);
            (k > p).then(|| {
                let rest = k - free;
                (k / p, format!("{w} {k:.1} - {free:.1} = {rest:.1} ns = {:.2}x", rest / p))
            })
        })
        .collect();
    over.sort_by(|a, b| b.0.total_cmp(&a.0));
    let rows: Vec<String> = over.into_iter().map(|(_, text)| text).collect();
    let rows = if rows.is_empty() {
        String::new()
    } else {
        format!("; the map and unmap rows over, less it: {}", rows.join("; "))
    };
    format!(
        "; what the peers do not do, priced from the breakdown: each range's read-side section ({} ns, `rcu`) and the lock of the leaf node it changes ({} ns, `lock-op`: the lock's compare-exchange and release store{path}), so that several CPUs can change one table at once (the shared-table rows), and, for each page an unmap takes, the reference it gives back to the frame ({:.1} ns, a locked read-modify-write of its metadata: `512-tracked` less `512-untracked`, halved){rows}; the ablation (`docs/ablation.md`, `cargo xtask ablation`) times the 1-, 16- and 512-page rows again with each of these taken out of kvirt's code",
        fmt_ns(prices.section),
        fmt_ns(prices.lock),
        prices.give_back,
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "null".into()
    }
}

/// The results as JSON: machine, configuration, every workload x impl cell
/// (unsupported ones with the reason), and the targets.
#[must_use]
pub fn json(r: &Results, targets: &[Target]) -> String {
    let m = &r.machine;
    let c = &r.config;
    let mut out = String::from("{\n");
    let _ = writeln!(
        out,
        "  \"tool\": \"kvirt bench\",\n  \"quick\": {},\n  \"arch\": {},",
        r.quick,
        json_str(r.arch.name())
    );
    let _ = writeln!(
        out,
        "  \"machine\": {{\"nproc\": {}, \"cpu\": {}, \"memory\": {}, \"os\": {}, \"rustc\": {}, \"profile\": {}, \"load\": {}}},",
        m.nproc,
        json_str(&m.cpu),
        json_str(&m.memory),
        json_str(&m.os),
        json_str(&m.rustc),
        json_str(m.profile),
        json_str(&m.load)
    );
    let _ = writeln!(
        out,
        "  \"config\": {{\"pages_per_round\": {}, \"warmup\": {}, \"runs\": {}, \"rounds\": {}, \"huge_ops\": {}, \"area_ops\": {}, \"random_area_ops\": {}, \"busy_areas\": {}, \"thread_ops\": {}}},",
        c.pages_per_round, c.warmup, c.runs, c.rounds, c.huge_ops, c.area_ops, c.random_area_ops, c.busy_areas, c.thread_ops
    );
    let impls: Vec<String> = IMPLS.iter().map(|i| json_str(i)).collect();
    let _ = writeln!(out, "  \"impls\": [{}],", impls.join(", "));
    let workloads: Vec<String> = r
        .workloads()
        .iter()
        .map(|w| {
            format!(
                "    {{\"id\": {}, \"title\": {}, \"unit\": {}}}",
                json_str(&w.id),
                json_str(&w.title),
                json_str(w.unit)
            )
        })
        .collect();
    let _ = writeln!(out, "  \"workloads\": [\n{}\n  ],", workloads.join(",\n"));
    let cells: Vec<String> = r
        .cells
        .iter()
        .map(|cell| {
            let head = format!("\"workload\": {}, \"impl\": {}", json_str(&cell.workload.id), json_str(cell.impl_name));
            match &cell.result {
                Ok(s) => {
                    let ratio = reference(r, &cell.workload.id).map_or(f64::NAN, |b| s.ns_per_op / b);
                    let runs: Vec<String> = s.runs.iter().map(|v| json_num(*v)).collect();
                    format!(
                        "    {{{head}, \"supported\": true, \"ns_per_op\": {}, \"ops_per_s\": {}, \"ratio_to_kvirt\": {}, \"ops_per_run\": {}, \"runs_ns_per_op\": [{}]}}",
                        json_num(s.ns_per_op),
                        json_num(s.ops_per_s()),
                        json_num(ratio),
                        s.ops_per_run,
                        runs.join(", ")
                    )
                }
                Err(why) => format!("    {{{head}, \"supported\": false, \"reason\": {}}}", json_str(why)),
            }
        })
        .collect();
    let _ = writeln!(out, "  \"results\": [\n{}\n  ],", cells.join(",\n"));
    let ts: Vec<String> = targets
        .iter()
        .map(|t| {
            format!(
                "    {{\"id\": {}, \"goal\": {}, \"pass\": {}, \"measured\": {}}}",
                json_str(t.id),
                json_str(t.goal),
                t.pass.map_or_else(|| "null".into(), |p| p.to_string()),
                json_str(&t.measured)
            )
        })
        .collect();
    let _ = writeln!(out, "  \"targets\": [\n{}\n  ],", ts.join(",\n"));
    let churn: Vec<String> = r
        .churn
        .iter()
        .map(|c| {
            format!(
                "    {{\"mode\": {}, \"threads\": {}, \"ns_per_op\": {}, \"runs\": [{}], \"shootdowns_per_1000_drops\": {}}}",
                json_str(c.mode),
                c.cpus,
                json_num(c.stats.ns_per_op),
                c.stats.runs.iter().map(|v| json_num(*v)).collect::<Vec<_>>().join(", "),
                json_num(c.shootdowns_per_1000)
            )
        })
        .collect();
    let _ = writeln!(out, "  \"churn\": [\n{}\n  ],", churn.join(",\n"));
    let breakdown: Vec<String> = r
        .breakdown
        .iter()
        .map(|s| {
            format!(
                "    {{\"step\": {}, \"what\": {}, \"ns_per_op\": {}, \"runs\": [{}]}}",
                json_str(s.name),
                json_str(s.what),
                json_num(s.stats.ns_per_op),
                s.stats.runs.iter().map(|v| json_num(*v)).collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    let _ = writeln!(out, "  \"breakdown\": [\n{}\n  ]", breakdown.join(",\n"));
    out.push_str("}\n");
    out
}

fn color(impl_name: &str) -> &'static str {
    match impl_name {
        "kvirt-area" => "#1f5fa8",
        "kvirt-pt" => "#6ea8dc",
        "x86_64" => "#c8372d",
        "multiarch" => "#e8902a",
        _ => "#8a8a8a",
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal bar plot of ns/op (log scale), grouped by workload.
#[must_use]
pub fn svg(r: &Results) -> String {
    const WIDTH: f64 = 1100.0;
    const LEFT: f64 = 330.0;
    const RIGHT: f64 = 1000.0;
    const BAR: f64 = 11.0;
    const ROW: f64 = 14.0;
    const GROUP_HEAD: f64 = 20.0;
    const TOP: f64 = 70.0;
    let values: Vec<f64> = r
        .cells
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .map(|s| s.ns_per_op)
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3).log10().floor();
    let hi = values.iter().copied().fold(0.0, f64::max).max(1.0).log10().ceil().max(lo + 1.0);
    let x = |v: f64| LEFT + (v.max(1e-3).log10() - lo) / (hi - lo) * (RIGHT - LEFT);
    let workloads = r.workloads();
    let bars: usize = r.cells.iter().filter(|c| c.result.is_ok()).count();
    let height = TOP + workloads.len() as f64 * (GROUP_HEAD + 6.0) + bars as f64 * ROW + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(out, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">kvirt bench: time per op (log scale, shorter is faster)</text>"
    );
    let _ = writeln!(
        out,
        "<text x=\"10\" y=\"40\" fill=\"#555\">{} run, {} CPUs ({}), {} build; median of {} runs</text>",
        if r.quick { "quick" } else { "full" },
        r.machine.nproc,
        xml(&r.machine.cpu),
        r.machine.profile,
        r.config.runs
    );
    let mut lx = LEFT;
    for name in IMPLS {
        let _ = writeln!(
            out,
            "<rect x=\"{lx:.0}\" y=\"50\" width=\"12\" height=\"10\" fill=\"{}\"/>",
            color(name)
        );
        let _ = writeln!(out, "<text x=\"{:.0}\" y=\"59\">{name}</text>", lx + 16.0);
        lx += 110.0;
    }
    let bottom = height - 30.0;
    let mut decade = lo;
    while decade <= hi {
        let v = 10f64.powf(decade);
        let gx = x(v);
        let label = if v >= 1e6 {
            format!("{} ms", v / 1e6)
        } else if v >= 1e3 {
            format!("{} µs", v / 1e3)
        } else {
            format!("{v} ns")
        };
        let _ = writeln!(
            out,
            "<line x1=\"{gx:.1}\" y1=\"{TOP}\" x2=\"{gx:.1}\" y2=\"{bottom:.0}\" stroke=\"#ddd\"/>"
        );
        let _ = writeln!(
            out,
            "<text x=\"{gx:.1}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#555\">{label}</text>",
            bottom + 14.0
        );
        decade += 1.0;
    }
    let mut y = TOP;
    for w in &workloads {
        y += GROUP_HEAD;
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{} <tspan font-weight=\"normal\" fill=\"#555\">(ns per {})</tspan></text>",
            y - 5.0,
            xml(&w.title),
            xml(w.unit)
        );
        for name in IMPLS {
            let Some(s) = r.get(&w.id, name) else { continue };
            let end = x(s.ns_per_op);
            let _ = writeln!(
                out,
                "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{name}</text>",
                LEFT - 6.0,
                y + BAR - 2.0
            );
            let _ = writeln!(
                out,
                "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BAR}\" fill=\"{}\"/>",
                (end - LEFT).max(1.0),
                color(name)
            );
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                end + 4.0,
                y + BAR - 2.0,
                fmt_ns(s.ns_per_op)
            );
            y += ROW;
        }
        y += 6.0;
    }
    out.push_str("</svg>\n");
    out
}

/// How the Markdown file at `md` should link to `svg`.
#[must_use]
pub fn relative_link(md: &Path, svg: &Path) -> String {
    let same_dir = md.parent().map(Path::to_path_buf).unwrap_or_default()
        == svg.parent().map(Path::to_path_buf).unwrap_or_default();
    match (same_dir, svg.file_name()) {
        (true, Some(name)) => name.to_string_lossy().into_owned(),
        _ => svg.display().to_string(),
    }
}

/// The command that regenerates docs/BENCHMARKS.md.
pub const REGENERATE: &str =
    "cargo run --release -p kvirt-cli -- bench --json docs/bench.json --svg docs/bench.svg --markdown docs/BENCHMARKS.md";

/// The command that regenerates docs/BENCHMARKS-sv48.md.
pub const REGENERATE_SV48: &str = "cargo run --release -p kvirt-cli -- bench --arch sv48 --json docs/bench-sv48.json --svg docs/bench-sv48.svg --markdown docs/BENCHMARKS-sv48.md";

/// Files, next to the Markdown page, whose texts the page includes as
/// sections of their own, in this order, when they exist: measurements
/// `kvirt bench` cannot take itself. `instructions.md` is written by `cargo
/// xtask instructions` (callgrind); `ablation.md` by `cargo xtask
/// ablation` (the rows timed again with one piece of kvirt's work taken out
/// at a time); `kernel-churn.md` holds the demo kernel's SMP churn under
/// QEMU, copied from its report.
pub const INCLUDED: [&str; 3] = ["instructions.md", "ablation.md", "kernel-churn.md"];

/// docs/BENCHMARKS.md; `included` are the texts of the [`INCLUDED`] files
/// that exist.
#[must_use]
pub fn markdown(r: &Results, targets: &[Target], svg_link: Option<&str>, included: &[String]) -> String {
    let m = &r.machine;
    let mut out = String::new();
    let (title, regenerate) = match r.arch {
        super::Arch::X86_64 => ("kvirt benchmarks", REGENERATE),
        super::Arch::Sv48 => ("kvirt benchmarks on Sv48 pages", REGENERATE_SV48),
    };
    let _ = writeln!(out, "# {title}\n");
    let _ = writeln!(
        out,
        "Generated by `kvirt bench`; do not edit by hand. To regenerate this page and its JSON and SVG:\n\n```sh\n{regenerate}\n```\n"
    );
    let _ = writeln!(out, "## Machine\n\n| | |\n|---|---|");
    let _ = writeln!(out, "| CPUs (nproc) | {} |", m.nproc);
    let _ = writeln!(out, "| CPU model | {} |", m.cpu);
    let _ = writeln!(out, "| memory | {} |", m.memory);
    let _ = writeln!(out, "| OS | {} |", m.os);
    let _ = writeln!(out, "| compiler | {} |", m.rustc);
    let _ = writeln!(out, "| build | {} |", m.profile);
    let _ = writeln!(out, "| load average at start (1, 5, 15 min) | {} |", m.load);
    let _ = writeln!(out, "| paging format of the page workloads | {} |", r.arch.name());
    let _ = writeln!(
        out,
        "| run | {}: the whole suite run {} times in turn; each cell is the median of its {} x {} timed runs, each round's after {} warm-up run(s); {} pages (and queries) per run of the 4 KiB workloads |\n",
        if r.quick { "quick" } else { "full" },
        r.config.rounds,
        r.config.rounds,
        r.config.runs,
        r.config.warmup,
        r.config.pages_per_round
    );
    let _ = writeln!(
        out,
        "The machine is shared (other builds may run at the same time), so single numbers can be noisy; `bench.json` keeps every run.\n"
    );
    let _ = writeln!(out, "## Implementations\n");
    let _ = writeln!(out, "| impl | what |\n|---|---|");
    let _ = writeln!(out, "| `kvirt-area` | kvirt's public API: `KVirtArea::map_frames` with pre-allocated frames, `KVirtArea::query`, drop (unmap, TLB flush, free the range) |");
    let _ = writeln!(out, "| `kvirt-pt` | kvirt's raw page table: `PageTable<KernelPtConfig>`, one `CursorMut` per range to map (`try_map_frames`), `PageTable::try_take_range` to unmap (without a cursor where the range lies in one leaf node, filling a `TakenRange` in place as `KVirtArea`'s drop does, then a TLB flush), a single page without a cursor (`PageTable::try_map_frame`, `try_take_page`, then the flush), queries by the lock-free `translate_addr` (the address only, as the `x86_64` crate's `translate_addr`) of one `PageTable::read_section` per run of queries |");
    let _ = writeln!(out, "| `x86_64` | the `x86_64` crate 0.15 (default features off): `OffsetPageTable` `map_to` / `translate_addr` / `unmap` (its per-page `MapperFlush`es ignored), then one flush of the unmapped range on both simulated CPUs |");
    let _ = writeln!(out, "| `multiarch` | `page_table_multiarch` 0.6 (ArceOS): `X64PageTable` with a `PagingHandler` over simulated RAM; `map` / `query` / `unmap`, `map_region` with huge pages, then one flush of the unmapped range on both simulated CPUs |");
    let _ = writeln!(out, "| `floor` | the cheapest possible table: map = one PTE store per page into pre-allocated, pre-linked leaves; query = a raw 4-level walk; unmap = one store of zero |\n");
    let _ = writeln!(
        out,
        "All of them run over the same kind of simulated RAM (`kvirt::sim::Machine`): the peers and the floor get a frame allocator over a range of their machine's RAM and its `ram_base()` as the physical-memory offset. kvirt maps tracked frames (each entry owns a reference), so its map and unmap include reference counting, node locking and reclaiming emptied page-table nodes (the frames of a node taken whole are released by an RCU callback, which the hosted RCU runs as soon as its grace period is over, mostly inside a later unmap of the same timed loop); its cursors and lock-free queries enter an RCU read-side section, which on this hosted platform is a per-thread counter (a kernel's is often a preemption count). The peers map raw physical addresses, keep their tables, and take no lock: a kernel sharing one of their tables between CPUs would have to wrap it in one.\n"
    );
    let _ = writeln!(
        out,
        "Both peers build on stable Rust (1.95 here), so none had to be left out: the `x86_64` crate's default features include `nightly`, so it is used with `default-features = false` (the paging structures and `OffsetPageTable` need no feature); `page_table_multiarch` 0.6.2 (and its `page_table_entry`, `memory_addr`) needs nothing special. Its TLB flushes compile only for `target_os = \"none\"`, and the `x86_64` crate's `MapperFlush`es (an `invlpg`) cannot run in user mode; so that every unmap row does the same work, each peer's unmap ends with one flush of the unmapped range on the simulated TLBs of its machine's two CPUs, the very call kvirt's hosted platform makes for a shoot-down, as kvirt's drop and `kvirt-pt`'s unmap do. The floor does not flush.\n"
    );
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(out, "`x kvirt` is the time per op relative to `kvirt-area` (or `kvirt-pt` where `kvirt-area` has no such op): above 1 is slower than kvirt. `spread` is (slowest - fastest timed run) / median. The area workloads exist only for kvirt (the peers have no virtual-range allocator; `bench.json` marks those cells unsupported).\n");
    let _ = writeln!(out, "| workload | impl | op | ns/op | ops/s | x kvirt |\n|---|---|---|---:|---:|---:|");
    for row in rows(r) {
        let _ =
            writeln!(out, "| {} | {} | {} | {} | {} | {} |", row[0], row[1], row[2], row[3], row[4], row[5]);
    }
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| | target | result | measured |\n|---|---|---|---|");
    for t in targets {
        let _ = writeln!(out, "| {} | {} | **{}** | {} |", t.id, t.goal, t.verdict(), t.measured);
    }
    if !r.churn.is_empty() {
        let _ = writeln!(out, "\n## Lazy purge: create+drop churn\n");
        let _ = writeln!(out, "1-page areas created and dropped by 1, 2 and 4 threads on a simulated machine with 4 CPUs (one kept space, as a kernel's, whose purge mode each row sets), in eager mode (every drop shoots down every CPU) and in lazy mode (`PurgeMode::lazy_for_cpus(threads)`: Linux's `lazy_max_pages`). Shoot-downs are the TLB flushes CPU 0 carried out, which every shoot-down reaches; they include the flushes that reclaim emptied page-table nodes. On the hosted machine a shoot-down is a few function calls, not an IPI round trip, so the speed-up here is a floor of what a real SMP kernel gains.\n");
        let _ = writeln!(out, "| {} |\n|---|---:|---:|---:|---:|---|", CHURN_HEADER.join(" | "));
        for row in churn_rows(r) {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
    }
    if !r.breakdown.is_empty() {
        let _ = writeln!(out, "\n## Breakdown: where a 1-page map and unmap go\n");
        let _ = writeln!(out, "kvirt's 1-page map and unmap measured with one more piece of work at a time, on `kvirt-pt`'s raw table of a hosted space with two simulated CPUs (`bench/breakdown.rs`). `ns` is the step's whole time per map+unmap (per page for the 512-page steps); `own` is what it adds to the step it builds on (for `no-cursor`: to `rcu`, to compare with `tracked` less `rcu`; for `leaf-lock`: to `walk`; for `area`: to `no-cursor` plus `flush`; for `512-tracked`: to `512-untracked`), the cost the step names. `512-fill` times a map alone, per page.\n");
        let _ = writeln!(out, "| step | what | ns | own |\n|---|---|---:|---:|");
        for row in breakdown_rows(r) {
            let _ = writeln!(out, "| {} | {} | {} | {} |", row[0], row[1], row[2], row[3]);
        }
    }
    for text in included.iter().filter(|_| r.arch == super::Arch::X86_64) {
        let _ = writeln!(out, "\n{}", text.trim_end());
    }
    if let Some(link) = svg_link {
        let _ = writeln!(out, "\n## Plot\n\n![time per op, log scale]({link})\n");
    }
    let _ = writeln!(out, "## Method\n");
    let _ = writeln!(out, "- Every cell is the median of the timed runs of all rounds: the whole suite runs {} time(s) one after the other, so that a slow spell of this shared machine (a few seconds of other load) hits one round's runs of a workload rather than all of them. Each run times whole batches with `std::time::Instant` (no per-op timer reads).", r.config.rounds);
    let _ = writeln!(out, "- map / query / unmap of N x 4 KiB: a run maps {} pages as ranges of N (N = 1, 16, 512, 65536), laid out like VMALLOC (one unmapped page between ranges), maps pool frame `i % 512` at page `i`, then does {} queries at random pages of random ranges, then unmaps every range. Inputs (frame handles, addresses) are prepared outside the timed region. The sum of all query results is checked against the expected addresses.", r.config.pages_per_round, r.config.pages_per_round);
    let _ = writeln!(out, "- Each map takes its range's frames in a `Vec` and frees it, as every implementation does (kvirt's handles move into the table, the peers read addresses). The free is a large part of a 1-page map, and it costs more once the process has started a thread: glibc's allocator then takes its multi-threaded paths for good. A full run's first round runs before any threaded workload and the other rounds after, so a run of the 1-page rows alone (`--only 'map-4k-x1$'`) times them faster than a full run does: on this machine `kvirt-pt` 34 against 41 ns, the floor 17 against 22, the peers 2 to 5 ns less (one thread started and joined before the run is enough to turn the first into the second).");
    let _ = writeln!(out, "- What a query pays for besides the walk, and what it saves: `KVirtArea::query` starts from the area (its mapped range, the node its walk starts at, and its space), so it first reads the area's handle. With N = 1 a run holds {} handles of {} bytes, picked at random, and that read is mostly a cache miss that a query by address alone (`kvirt-pt`, the peers, the floor) never makes. In return, the walk starts at the lowest page-table node on the path of every page of the area, which the area found when it was mapped and which its own mappings keep alive: the leaf node for an area inside one leaf node's span (1 level of 4), the node above for one across two leaf nodes that share it. That is why a chained area query, whose time is the latency of its loads, is faster than the raw 4-level walk wherever the handle is in the cache. `kvirt-pt` walks by address, inside a read-side section that lets it run while other CPUs unmap and free page-table nodes: it opens one `ReadSection` for each run of {} queries, as the peers borrow their table for the run (so that no unmap runs meanwhile, which is why they need no section). `PageTable::translate_addr` alone opens a section per call, two calls into the platform that cost the hosted platform about 37 instructions (callgrind: a query with a section of its own retires 37 instructions more than one inside a shared section).", r.config.pages_per_round, core::mem::size_of::<kvirt::kspace::KVirtArea>(), r.config.pages_per_round);
    let _ = writeln!(out, "- untracked 1 GiB: map + unmap of 1 GiB of the simulated device window as one 1 GiB page (`map_untracked_frames` for kvirt-area).");
    let _ = writeln!(out, "- area workloads follow Linux's `lib/test_vmalloc.c`: fixed size (1 page), random size (1-100 pages), a long busy list ({} live areas, then fixed-size create+drop), aligned allocations (2 MiB untracked areas, which kvirt aligns to 2 MiB), and fixed size from 1 and from 2 threads on one space (ops/s of the whole), and from 2 threads on a space each: two spaces share no lock, no page-table node, no simulated CPU and no memory of kvirt's, so that row is the most this machine gives two threads, and the one-space row is read beside it. Each create allocates its frames (not zeroed, like `vmalloc`), and every area workload checks that the counters are back afterwards. They all run on one hosted space kept for the whole run, as a kernel keeps its own (`KernelSpace::leak`, so its areas hold no reference count of it); the row with a space per thread adds a second one.", r.config.busy_areas);
    let _ = writeln!(out, "- `area create+drop, 1 page` runs with no other area in the space, so every drop empties the page-table leaf under the area; a kernel space keeps emptied nodes for a batch (the same leaf, emptied again and again, waits in it once), so the next create finds the leaf in place. With 10 000 live areas around, the leaf never empties. Target (c) compares exactly these two.");
    let _ = writeln!(out, "- map+unmap 1 x 4 KiB, one table (`bench/shared.rs`): what kvirt's node locks and read-side sections buy. Each thread maps {} 1-page ranges, laid out as in the 1-page rows in a 1 GiB region of its own, then unmaps them; the time is per page mapped and unmapped, of the wall time of all threads (the inverse of the table's throughput), from the first thread's start to the last one's end; the threads start together, spinning until every one has made its inputs (a thread woken from a sleeping barrier was often queued behind the one that woke it, and the two ran one after the other). kvirt-pt's table is shared as it is (cursors lock only the leaves they change); a peer's table changes through `&mut self`, so it is shared the way a kernel would share it, behind one fair spinlock (`spin`'s ticket lock, FIFO like Linux's queued spinlock), taken for each map and each unmap. Each map and unmap is the implementation's own, as in the page rows, but no unmap in these rows flushes the TLB: the simulated flush is a lock and a hash map per CPU, which two threads flushing both CPUs contend for alike, so with it the rows measured the simulator. Each thread makes its inputs before the clock starts, and each map's 1-frame `Vec` just before the map (freeing memory another thread allocated takes the allocator's shared lock, which once made every row flat). An untimed run before the timed ones and one after check every page's translation, and each run maps the pages the previous one unmapped, which every implementation refuses if one was left mapped. The two-thread rows need both threads running at once, on an otherwise idle machine: a kernel holds a spinlock with preemption off, but here a thread waiting its turn in the ticket lock can be descheduled, and then the other waits for it. Under other load the peers' two-thread figure swings from their one-thread figure (the threads ran one after the other) to many times it; look at `runs_ns_per_op` in `bench.json`.", r.config.shared_pages);
    let _ = writeln!(out, "- The threaded workload needs both CPUs of this 2-CPU machine, and its result is unstable *between* `kvirt bench` processes while the timed runs inside one process agree: while this page was written, target (d) measured anywhere from about 0.4x to 1.8x on consecutive runs, and other load on the machine (builds and tests of other sessions) pushes every number up. One run decides nothing; rerun (and look at `runs_ns_per_op` in `bench.json`) before reading much into it.");
    let _ = writeln!(out, "- The benchmark binary is built with one codegen unit (`[profile.release.package.kvirt-cli]` in the workspace manifest). Every implementation's generic code is compiled in it, and with several units, whether a call was inlined depended on how the units were cut: a change to kvirt alone once took `page_table_multiarch`'s query from 73 to 94 instructions, and the `x86_64` crate's query stood at 116 instructions where one unit gives 94. One unit gives each implementation the same code from build to build.");
    let _ = writeln!(out, "- The targets are reported as measured; nothing is tuned to pass them.");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{measure_round, Arch, Config, Measurement, Workload};

    /// A made-up cell: `impl_name` took `ns` per op on workload `id`.
    fn cell(id: &str, impl_name: &'static str, ns: f64) -> Measurement {
        Measurement {
            workload: Workload { id: id.into(), title: id.into(), unit: "op" },
            impl_name,
            result: Ok(Stats::from_runs(vec![ns], 1)),
        }
    }

    /// The reference-count clause reads the breakdown's `512-tracked` step
    /// less `512-untracked`, and is left out when the breakdown was not run.
    #[test]
    fn the_reference_count_clause_is_the_tracked_step_own_cost() {
        let mut r = measure_round(&Config::quick(), true, Some("breakdown"), Arch::X86_64).unwrap();
        for step in &mut r.breakdown {
            let ns = match step.name {
                "512-untracked" => 12.0,
                "512-tracked" => 20.5,
                _ => continue,
            };
            step.stats = Stats::from_runs(vec![ns], step.stats.ops_per_run);
        }
        let note = reference_count_note(&r).expect("the breakdown ran");
        assert!(note.contains("cost kvirt 8.5 ns per page here, up and down, 4.2 ns per change"), "{note}");
        r.breakdown.clear();
        assert_eq!(reference_count_note(&r), None);
    }

    /// Target (e)'s clause prices what the peers do not do from the
    /// breakdown (a range's read-side section and leaf lock spread over its
    /// pages; a reference given back per page unmapped) and takes it off
    /// each map and unmap row over the faster peer, worst first; rows
    /// within, query rows and a run without the breakdown get nothing.
    #[test]
    fn the_peer_free_work_clause_takes_the_priced_guarantees_off_each_row_over() {
        let mut r = measure_round(&Config::quick(), true, Some("no such workload"), Arch::X86_64).unwrap();
        let step =
            |name, builds_on, ns| Step { name, what: "", builds_on, stats: Stats::from_runs(vec![ns], 1) };
        r.breakdown = vec![
            step("rcu", &[], 3.0),
            step("walk", &[], 10.0),
            step("leaf-lock", &["walk"], 27.0),
            step("lock-op", &[], 7.0),
            step("512-untracked", &[], 12.0),
            step("512-tracked", &["512-untracked"], 24.0),
        ];
        r.cells = vec![
            cell("map-4k-x1", "kvirt-pt", 40.0),
            cell("map-4k-x1", "multiarch", 28.0),
            cell("unmap-4k-x1", "kvirt-pt", 80.0),
            cell("unmap-4k-x1", "x86_64", 50.0),
            cell("unmap-4k-x1", "multiarch", 60.0),
            cell("unmap-4k-x16", "kvirt-pt", 15.0),
            cell("unmap-4k-x16", "x86_64", 8.0),
            cell("map-4k-x16", "kvirt-pt", 5.0),
            cell("map-4k-x16", "x86_64", 9.0),
            cell("query-4k-x1", "kvirt-pt", 9.0),
            cell("query-4k-x1", "x86_64", 8.0),
        ];
        let rows: Vec<String> = ["map-4k-x1", "unmap-4k-x1", "map-4k-x16", "unmap-4k-x16", "query-4k-x1"]
            .map(String::from)
            .into();
        let note = peer_free_work_note(&r, &rows);
        for part in [
            "read-side section (3.00 ns, `rcu`)",
            "leaf node it changes (7.00 ns, `lock-op`",
            "to the locked leaf adds 17.0 ns to a lock-free walk",
            "the reference it gives back to the frame (6.0 ns",
            // 80 - (3 + 7) - 6 against x86_64's 50; 15 - 10 / 16 - 6;
            // 40 - (3 + 7) against multiarch's 28.
            "less it: unmap-4k-x16 15.0 - 6.6 = 8.4 ns = 1.05x; unmap-4k-x1 80.0 - 16.0 = 64.0 ns = 1.28x; map-4k-x1 40.0 - 10.0 = 30.0 ns = 1.07x",
        ] {
            assert!(note.contains(part), "{part:?} not in {note}");
        }
        assert!(
            !note.contains(" map-4k-x16") && !note.contains("query"),
            "only the map and unmap rows over: {note}"
        );
        // Target (e) carries it.
        let e = peer_targets(&r).into_iter().find(|t| t.id == "(e)").expect("target (e)").measured;
        assert!(e.contains("less it: unmap-4k-x16"), "{e}");
        r.breakdown.retain(|s| s.name != "leaf-lock");
        let note = peer_free_work_note(&r, &rows);
        assert!(note.contains("less it: unmap-4k-x16") && !note.contains("whole path"), "{note}");
        r.breakdown.retain(|s| s.name != "lock-op");
        assert_eq!(peer_free_work_note(&r, &rows), "", "a step missing: no price");
    }

    /// The map's split against the floor: the fill is the breakdown's
    /// `512-fill`, the leaf nodes kvirt-pt's row less the fill, the area
    /// kvirt-area's row less kvirt-pt's; without the breakdown it is left
    /// out.
    #[test]
    fn the_map_floor_clause_splits_the_area_map_into_fill_nodes_and_area() {
        let mut r = measure_round(&Config::quick(), true, Some("no such workload"), Arch::X86_64).unwrap();
        let map = "map-4k-x512";
        r.cells = vec![cell(map, "kvirt-area", 1.7), cell(map, "kvirt-pt", 1.3), cell(map, "floor", 0.25)];
        r.breakdown.clear();
        assert_eq!(map_floor_note(&r), None);
        r.breakdown = vec![Step {
            name: "512-fill",
            what: "",
            builds_on: &[],
            stats: Stats::from_runs(vec![1.0], 512),
        }];
        let note = map_floor_note(&r).expect("the breakdown and the cells are there");
        for part in [
            "kvirt-area's 1.70 ns a page go",
            "1.00 ns = 4.0x floor",
            "(kvirt-pt's row less the fill), 0.30 ns",
            "(kvirt-area's row less kvirt-pt's), 0.40 ns",
        ] {
            assert!(note.contains(part), "{part:?} not in {note}");
        }
    }

    /// The handle clause gives, for each size measured, kvirt-area's row
    /// less kvirt-pt's beside how many handles a run picks from (pages per
    /// run over pages per area) and their size; without both rows there is
    /// no clause.
    #[test]
    fn the_handle_clause_is_the_area_row_less_the_walk_by_address() {
        let mut r = measure_round(&Config::quick(), true, Some("no such workload"), Arch::X86_64).unwrap();
        assert_eq!(handle_note(&r, "query"), "");
        r.cells = vec![
            cell("query-4k-x1", "kvirt-area", 16.5),
            cell("query-4k-x1", "kvirt-pt", 7.0),
            cell("query-4k-x512", "kvirt-area", 6.0),
            cell("query-4k-x512", "kvirt-pt", 5.5),
            cell("query-chain-4k-x1", "kvirt-area", 30.0),
        ];
        let size = core::mem::size_of::<kvirt::kspace::KVirtArea>();
        let pages = r.config.pages_per_round;
        let note = handle_note(&r, "query");
        for part in [
            format!("reads the area's handle ({size} bytes)"),
            format!("{pages} ({} KiB): +9.5 ns", (pages * size).div_ceil(1024)),
            format!("{} ({} KiB): +0.5 ns", pages / 512, (pages / 512 * size).div_ceil(1024)),
        ] {
            assert!(note.contains(&part), "{part:?} not in {note}");
        }
        assert_eq!(note.matches(" KiB): ").count(), 2, "only the sizes with both rows: {note}");
        assert_eq!(handle_note(&r, "query-chain"), "", "kvirt-pt's chained row is missing");
        // The targets on area queries carry the clause.
        let measured =
            |r: &Results, id| peer_targets(r).into_iter().find(|t| t.id == id).expect("the target").measured;
        r.cells.push(cell("query-4k-x1", "multiarch", 8.0));
        let f = measured(&r, "(f)");
        assert!(f.contains("reads the area's handle") && f.contains("+9.5 ns"), "{f}");
        r.cells.push(cell("query-chain-4k-x1", "kvirt-pt", 21.0));
        r.cells.push(cell("query-chain-4k-x1", "floor", 20.0));
        let g = measured(&r, "(g)");
        assert!(g.contains("+9.0 ns"), "{g}");
    }

    /// The churn's scaling column divides the one-thread time of the same
    /// mode by the row's, and is empty for one thread.
    #[test]
    fn the_churn_scaling_column_is_throughput_over_one_thread_in_the_same_mode() {
        // No workload runs (the churn's kept space is another test's), and
        // the rows are made up.
        let mut r = measure_round(&Config::quick(), true, Some("no such workload"), Arch::X86_64).unwrap();
        assert!(r.churn.is_empty() && r.cells.is_empty());
        for (mode, cpus, ns) in [
            ("eager", 1, 250.0),
            ("lazy", 1, 200.0),
            ("eager", 2, 125.0),
            ("lazy", 2, 160.0),
            ("lazy", 4, 160.0),
        ] {
            let stats = Stats::from_runs(vec![ns], 1000);
            r.churn.push(crate::bench::Churn { mode, cpus, stats, shootdowns_per_1000: 1.0 });
        }
        let rows = churn_rows(&r);
        let column = |mode: &str, cpus: &str| {
            rows.iter().find(|row| row[0] == mode && row[1] == cpus).map(|row| row[4].clone()).unwrap()
        };
        assert_eq!(column("eager", "1"), "");
        assert_eq!(column("eager", "2"), "2.00x");
        assert_eq!(column("lazy", "2"), "1.25x");
        assert_eq!(column("lazy", "4"), "1.25x");
        assert_eq!(churn_scaling(&r, "lazy", 2), Some(1.25));
    }
}
