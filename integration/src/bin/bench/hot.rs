//! `hot`: token leases (issue 14). The 3 release nodes of `cluster` (node settings
//! of `single`: limits high enough never to refuse; default lease settings) are
//! started once and measured twice in one run with the same load, one wrk per
//! node: every check for one hot tenant, then checks spread over 10,000 tenants.
//! Prints checks/s of each, the ratio hot/spread (target >= 0.9), how the checks
//! were decided (`llmtrace_routed_checks_total` by route, summed over the nodes:
//! forwarded share target <= 0.10 for the hot tenant), server CPU per check, and
//! the forwarding report of [`crate::cluster_report`] for each run.

use crate::cluster::{finish, measure_on, ratio, settle, start_cluster, NODES};
use crate::cluster_report::{report, Snapshot};
use crate::procfs::load_note;
use crate::setup::Bench;
use crate::summary::{self, Totals};
use crate::wrk::Measured;

/// Tenants of the spread run (the figure).
const SPREAD_TENANTS: u64 = 10_000;
/// Most of the hot tenant's checks that may be forwarded.
const FORWARDED_TARGET: f64 = 0.10;
/// Least throughput of the hot tenant against the spread load.
const RATIO_TARGET: f64 = 0.9;
const ROUTES: [&str; 4] = ["local", "forwarded", "leased", "degraded"];

/// Shares of the client checks by route between two metric reads.
struct Routes {
    total: f64,
    shares: [f64; ROUTES.len()],
}

impl Routes {
    fn between(before: &Snapshot, after: &Snapshot) -> Routes {
        let count = |route: &str| {
            before.growth(
                after,
                &format!("llmtrace_routed_checks_total{{route=\"{route}\"}}"),
            )
        };
        let counts = ROUTES.map(count);
        let total: f64 = counts.iter().sum();
        Routes {
            total,
            shares: counts.map(|c| if total > 0.0 { c / total } else { 0.0 }),
        }
    }

    fn share(&self, route: &str) -> f64 {
        let i = ROUTES.iter().position(|r| *r == route).expect("a route");
        self.shares[i]
    }

    fn print(&self, name: &str) {
        let shares: Vec<String> = ROUTES
            .iter()
            .zip(self.shares)
            .map(|(r, s)| format!("{r} {:.1} %", s * 100.0))
            .collect();
        println!(
            "  {name:<8} routes  {}   ({:.0} client checks)",
            shares.join(", "),
            self.total
        );
    }
}

/// One measured run: checks/s and CPU, then how its checks were routed.
fn results(name: &str, m: &(Measured, Snapshot, Snapshot)) -> (Totals, Routes) {
    let (measured, before, after) = m;
    println!("  {name}:");
    let labels: Vec<String> = (0..NODES).map(|i| format!("wrk -> node-{i}")).collect();
    let totals = summary::several(name, &labels, measured);
    report(before, after);
    (totals, Routes::between(before, after))
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    if s.connections < NODES as u32 {
        eprintln!("the hot benchmark needs BENCH_CONNECTIONS >= {NODES}");
        std::process::exit(1);
    }
    println!();
    println!(
        "== hot: POST /v1/check, {NODES} x wrk -t1 -c{} (split) -d{}, one per node of {NODES}; \
         one hot tenant, then {SPREAD_TENANTS} random tenants, same nodes ==",
        s.connections, s.duration
    );
    load_note();
    let template = s
        .cluster_args
        .iter()
        .fold(bench.node().rate(s.rps, s.burst), |b, a| b.arg(a.as_str()));
    println!(
        "-- {NODES} nodes: llmtrace-node {} --node-id node-<i> (node-1, node-2: --seeds <node-0's cluster address>)",
        template.args().join(" ")
    );
    let cluster = start_cluster(bench, NODES, template);
    settle(bench);
    let hot = measure_on(bench, "hot", &cluster, 1);
    let spread = measure_on(bench, "spread", &cluster, SPREAD_TENANTS);
    println!();
    println!("hot results:");
    let (hot_totals, hot_routes) = results("hot", &hot);
    let (spread_totals, spread_routes) = results("spread", &spread);
    println!();
    hot_routes.print("hot");
    spread_routes.print("spread");
    let forwarded = hot_routes.share("forwarded");
    println!(
        "  forwarded share hot    {forwarded:12.3}            (target <= {FORWARDED_TARGET:.2}: {})",
        if forwarded <= FORWARDED_TARGET {
            "met"
        } else {
            "NOT met"
        }
    );
    ratio(
        "hot/spread",
        hot_totals.rps,
        spread_totals.rps,
        RATIO_TARGET,
    );
    println!(
        "  CPU per check hot/spread {:9.3}            ({:.1} vs {:.1} us CPU per check, the {NODES} nodes summed)",
        hot_totals.us_per_check / spread_totals.us_per_check.max(f64::MIN_POSITIVE),
        hot_totals.us_per_check,
        spread_totals.us_per_check
    );
    println!(
        "HOT_RESULT hot_rps={:.1} spread_rps={:.1} ratio={:.3} hot_forwarded={:.4} hot_leased={:.4} \
         spread_forwarded={:.4} hot_us_per_check={:.1} spread_us_per_check={:.1}",
        hot_totals.rps,
        spread_totals.rps,
        hot_totals.rps / spread_totals.rps.max(f64::MIN_POSITIVE),
        forwarded,
        hot_routes.share("leased"),
        spread_routes.share("forwarded"),
        hot_totals.us_per_check,
        spread_totals.us_per_check
    );
    finish(bench, cluster);
}
