//! The `kvirt` command: `demo` (the default), `bench` and `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kvirt_cli::{bench, check, demo, exhaustive};

/// kvirt on a simulated x86-64 machine: a narrated demo, benchmarks against
/// peer page-table crates, and a model-based checker.
#[derive(Debug, Parser)]
#[command(name = "kvirt", version, about)]
struct Cli {
    /// What to run (default: demo).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A narrated scenario: areas, queries, the software MMU, a stale TLB
    /// entry cured by a flush, the area registry and the leak counters.
    Demo,
    /// kvirt and its peers over the same simulated RAM, in one run.
    Bench(BenchArgs),
    /// Random operation sequences checked against a model, with shrinking.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Small iteration counts (for CI): finishes in seconds.
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write a bar plot (SVG) here.
    #[arg(long, value_name = "PATH")]
    svg: Option<PathBuf>,
    /// Write docs/BENCHMARKS.md-style Markdown here (machine, table,
    /// targets, plot); the plot is linked by the SVG path's file name.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,
    /// Run only the workloads whose id contains this text (for example
    /// `map-4k-x512` or `area-1p`), or, ending in `$`, whose id ends with
    /// the text before it (`map-4k-x1$`: the 1-page map and unmap, not the
    /// 16-page ones); every implementation still runs.
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// The paging format of the 4 KiB and 1 GiB workloads: `x86-64` (every
    /// peer) or `sv48` (kvirt beside `page_table_multiarch`'s generic table
    /// with an Sv48 entry; the area workloads run on x86-64 only).
    #[arg(long, value_name = "FORMAT", default_value = "x86-64")]
    arch: bench::Arch,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// How many random sequences to run.
    #[arg(long, default_value_t = 200)]
    sequences: u64,
    /// The base seed; sequence `i` runs with a seed derived from it and `i`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The most operations in one sequence.
    #[arg(long, default_value_t = 40)]
    max_len: usize,
    /// Instead of random sequences, run every sequence up to `--depth`
    /// operations on the tiny paging format.
    #[arg(long)]
    exhaustive: bool,
    /// The longest sequence `--exhaustive` enumerates.
    #[arg(long, default_value_t = 4, requires = "exhaustive")]
    depth: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Demo => demo::run(&mut std::io::stdout().lock()),
        Command::Bench(a) => bench::run(&bench::Options {
            quick: a.quick,
            json: a.json,
            svg: a.svg,
            markdown: a.markdown,
            only: a.only,
            arch: a.arch,
        }),
        Command::Check(a) if a.exhaustive => {
            let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            exhaustive::run(a.depth, threads, &mut std::io::stdout().lock())
        }
        Command::Check(a) => {
            let options = check::Options {
                sequences: a.sequences,
                seed: a.seed,
                max_len: a.max_len,
                ..check::Options::default()
            };
            check::run(&options, &mut std::io::stdout().lock())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvirt: {}", e.0);
            ExitCode::FAILURE
        }
    }
}
