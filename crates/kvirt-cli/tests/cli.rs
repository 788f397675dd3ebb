//! The `kvirt` command end to end: demo, bench --quick, check.

use std::path::PathBuf;
use std::process::{Command, Output};

fn kvirt(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kvirt")).args(args).output().expect("run kvirt");
    assert!(
        out.status.success(),
        "kvirt {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvirt-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn demo_narrates_and_ends_with_equal_counters() {
    let text = stdout(&kvirt(&["demo"]));
    for line in [
        "Creating kernel virtual areas",
        "demo: tracked buffer",
        "tracked frame pa",
        "level 3 page (1 GiB)",
        "hello from CPU 0",
        "<- STALE: its TLB still maps frame A",
        "<- correct",
        "(like /proc/vmallocinfo)",
        "registry now holds 0 area(s)",
        "phys counters: equal",
        "vmalloc counters: equal",
    ] {
        assert!(text.contains(line), "demo output lacks {line:?}:\n{text}");
    }
    // The before/after lines of each counter are identical.
    let after = |prefix: &str| {
        text.lines().find(|l| l.starts_with(prefix)).map(|l| l[prefix.len()..].trim().to_string())
    };
    assert_eq!(after("physical memory before:"), after("physical memory after:"));
    assert_eq!(after("VMALLOC before:"), after("VMALLOC after:"));
}

#[test]
fn no_subcommand_runs_the_demo() {
    assert!(stdout(&kvirt(&[])).contains("kvirt demo: kernel virtual areas"));
}

#[test]
fn quick_bench_writes_every_workload_and_impl() {
    let (json, svg, md) = (temp("bench.json"), temp("bench.svg"), temp("BENCHMARKS.md"));
    // The demo kernel's section, which the page includes from beside it.
    std::fs::write(temp("kernel-churn.md"), "## Kernel section\n\nmeasured under QEMU\n").unwrap();
    let out = kvirt(&[
        "bench",
        "--quick",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
    ]);
    let table = stdout(&out);
    assert!(table.contains("targets:") && table.contains("(a)") && table.contains("(d)"), "{table}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("[ 1/"), "progress goes to stderr");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    let impls: Vec<&str> = v["impls"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
    assert_eq!(impls, ["kvirt-area", "kvirt-pt", "x86_64", "multiarch", "floor"]);
    let workloads: Vec<&str> =
        v["workloads"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect();
    for n in [1, 16, 512, 65536] {
        for op in ["map", "query", "unmap"] {
            assert!(workloads.contains(&format!("{op}-4k-x{n}").as_str()), "{workloads:?}");
        }
    }
    for w in [
        "untracked-1g",
        "area-1p",
        "area-1p-busy",
        "area-rand-1-100p",
        "area-2m-aligned",
        "shared-1p-1thread",
        "shared-1p-2threads",
    ] {
        assert!(workloads.contains(&w), "{w} missing from {workloads:?}");
    }
    let results = v["results"].as_array().unwrap();
    for w in &workloads {
        for i in &impls {
            let cell = results
                .iter()
                .find(|c| c["workload"] == *w && c["impl"] == *i)
                .unwrap_or_else(|| panic!("no result for {w} x {i}"));
            if cell["supported"].as_bool().unwrap() {
                assert!(cell["ns_per_op"].as_f64().unwrap() > 0.0, "{cell}");
                assert!(cell["ops_per_s"].as_f64().unwrap() > 0.0, "{cell}");
            } else {
                assert!(cell["reason"].is_string(), "{cell}");
            }
        }
    }
    // Every page workload is measured for every implementation; the
    // shared-table ones for the page tables.
    for w in workloads.iter().filter(|w| !w.starts_with("area-") && !w.starts_with("shared-")) {
        assert!(results.iter().filter(|c| c["workload"] == **w).all(|c| c["supported"] == true), "{w}");
    }
    for w in workloads.iter().filter(|w| w.starts_with("shared-")) {
        for c in results.iter().filter(|c| c["workload"] == **w) {
            let table = ["kvirt-pt", "x86_64", "multiarch"].contains(&c["impl"].as_str().unwrap());
            assert_eq!(c["supported"], table, "{c}");
        }
    }
    assert_eq!(v["targets"].as_array().unwrap().len(), 8);

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("## Machine") && md.contains("| workload | impl |") && md.contains("![time per op"));
    let (kernel, plot) =
        (md.find("## Kernel section\n\nmeasured under QEMU").unwrap(), md.find("## Plot").unwrap());
    assert!(kernel < plot, "the kernel's section comes before the plot");
}

#[test]
fn check_runs_seeded_sequences_and_prints_counts() {
    let text = stdout(&kvirt(&["check", "--sequences", "50", "--seed", "1"]));
    assert!(text.contains("sequences: 50"), "{text}");
    let count = |key: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {text}"));
        line[key.len()..].trim().parse().unwrap()
    };
    assert!(count("operations:") > 50);
    assert!(count("checks:") > count("operations:"));
    assert!(text.contains("result: all passed"));
}
