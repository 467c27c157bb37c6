//! `sim`: the in-process cluster simulation (`llmtrace_actors::sim`) at
//! BENCH_SIM_SIZES nodes (default 10, 30 and 100), printed as one Markdown
//! table: ring balance and keys moved, convergence after a join, a leave and
//! a crash, gossip bytes per node, handoff traffic, Redis writes, and the
//! Zipf load with token leases off and on.

use std::time::{Duration, Instant};

use llmtrace_actors::sim::{self, report, SimSettings};

use crate::settings::{num, text};

pub fn run() {
    let sizes_text = text("BENCH_SIM_SIZES", "10 30 100");
    let sizes: Vec<usize> = sizes_text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| match w.parse() {
            Ok(n) if n >= 4 => n,
            _ => {
                eprintln!(
                    "bench: BENCH_SIM_SIZES={sizes_text:?}: {w:?} is not a size of at least 4"
                );
                std::process::exit(2);
            }
        })
        .collect();
    let rate: f64 = num("BENCH_SIM_RATE", 20_000.0);
    let seconds: f64 = num("BENCH_SIM_SECONDS", 4.0);
    let per_node: f64 = num("BENCH_SIM_NODE_RATE", 10_000.0);
    let deployment: f64 = num("BENCH_SIM_DEPLOYMENT_RATE", 1_000_000.0);
    let mut figures = Vec::new();
    for &n in &sizes {
        // The lease threshold is the node's default, scaled from a cluster
        // of n nodes at `per_node` checks/s each to the simulated rate.
        let mut s = SimSettings::defaults(
            n,
            rate,
            Duration::from_secs_f64(seconds),
            per_node * n as f64,
        );
        // Tenant 0 never runs out here (its bucket still has to add up):
        // refused checks cannot be leased and would hide what leases do.
        s.limited_burst = 1_000_000_000;
        println!(
            "-- sim: {n} nodes, {rate:.0} checks/s offered for {seconds} s, lease threshold {}",
            s.leases.threshold
        );
        let started = Instant::now();
        match sim::run(s) {
            Ok(f) => figures.push(f),
            Err(e) => {
                eprintln!("bench: simulation of {n} nodes failed: {e:#}");
                std::process::exit(1);
            }
        }
        println!("   done in {:.1} s", started.elapsed().as_secs_f64());
    }
    println!();
    print!("{}", report::markdown(&figures, deployment));
}
