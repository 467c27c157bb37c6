//! `bench`: the benchmarks of the llmtrace cluster node (`scripts/bench.sh` runs it).
//! It builds and measures the release `llmtrace-node` and `llmtrace-plain-bench`, drives
//! wrk with the Lua scripts of `scripts/bench`, and starts nodes, clusters and
//! redis-server through the integration harness. `--help` lists modes and knobs.
//!
//! Layout: [`settings`] (knobs and usage), [`setup`] (binaries, tools, node flags),
//! [`cleanup`] (children stopped on a signal), [`procfs`] (CPU and memory from /proc),
//! [`wrk`] (running and parsing wrk), [`summary`] (the shared result lines), and one
//! module per mode: [`single`], [`memory`], [`cluster`] (+ [`cluster_report`]), [`hot`],
//! [`redis`], [`failover`], [`proxy`], [`rls`] (+ [`rls_load`]), [`sim`] (the
//! in-process simulation).

mod cleanup;
mod cluster;
mod cluster_report;
mod failover;
mod hot;
mod memory;
mod procfs;
mod proxy;
mod redis;
mod rls;
mod rls_load;
mod settings;
mod setup;
mod sim;
mod single;
mod summary;
mod wrk;

use settings::{wrk_seconds, Settings, USAGE};
use setup::{ensure_tool, Bench};

const MODES: [&str; 10] = [
    "single", "memory", "cluster", "hot", "redis", "failover", "proxy", "rls", "sim", "all",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.as_slice() {
        [] => "all",
        [m] if m == "-h" || m == "--help" => {
            print!("{USAGE}");
            return;
        }
        [m] if MODES.contains(&m.as_str()) => m.as_str(),
        _ => {
            eprintln!(
                "usage: bench [{}]   (--help: modes and settings)",
                MODES.join("|")
            );
            std::process::exit(2);
        }
    };
    if mode == "sim" {
        // In process: no binaries to build, no tools.
        sim::run();
        return;
    }
    let settings = Settings::from_env();
    for (name, value) in [
        ("BENCH_DURATION", &settings.duration),
        ("BENCH_WARMUP", &settings.warmup),
    ] {
        if wrk_seconds(value).is_none() {
            eprintln!("bench: {name}={value:?} is not a wrk duration (10, 10s, 1m)");
            std::process::exit(2);
        }
    }
    cleanup::install();
    if !matches!(mode, "memory" | "failover") {
        ensure_tool("wrk", "wrk");
    }
    if matches!(mode, "redis" | "failover" | "all") {
        ensure_tool("redis-server", "redis-server");
    }
    let mut bench = Bench::prepare(settings);
    if bench.s.keep_logs {
        bench.keep_logs();
    }
    let run: &[fn(&Bench)] = match mode {
        "single" => &[single::run],
        "memory" => &[memory::run],
        "cluster" => &[cluster::run],
        "hot" => &[hot::run],
        "redis" => &[redis::run],
        "failover" => &[failover::run],
        "proxy" => &[proxy::run],
        "rls" => &[rls::run],
        _ => &[
            single::run,
            cluster::run,
            hot::run,
            redis::run,
            failover::run,
            memory::run,
            proxy::run,
            rls::run,
        ],
    };
    for scenario in run {
        scenario(&bench);
    }
}
