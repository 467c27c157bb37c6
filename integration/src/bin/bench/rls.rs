//! `rls`: the Envoy rate limit service (gRPC) beside the HTTP `/v1/check` path, on one
//! node in the same run: RLS checks/s from the gRPC load generator ([`crate::rls_load`]:
//! many calls in flight over h2), then wrk's `/v1/check` load, and the server CPU per
//! check of each (target: RLS at most 1.3x HTTP).

use std::time::Duration;

use crate::procfs::{load_note, CpuWindow};
use crate::settings::wrk_seconds;
use crate::setup::Bench;
use crate::summary::{self, ms, node_health, us_per_check};
use crate::wrk::measure;
use llmtrace_integration::TempDir;

/// Calls in flight on each h2 connection.
const INFLIGHT: usize = 16;
/// h2 connections of the load generator.
const CONNECTIONS: usize = 4;

/// Every call is admitted: 4e9 per day per user.
const RULES: &str = "domain: bench
descriptors:
  - key: user
    rate_limit:
      unit: day
      requests_per_unit: 4000000000
";

fn seconds(text: &str) -> Duration {
    Duration::from_secs_f64(wrk_seconds(text).unwrap_or(0.0))
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    println!();
    println!(
        "== rls: ShouldRateLimit over h2 ({CONNECTIONS} connections x {INFLIGHT} in flight, \
         {} client threads) beside POST /v1/check (wrk -t{} -c{}), -d{}, {} random users ==",
        s.threads, s.threads, s.connections, s.duration, s.tenant_space
    );
    load_note();
    let dir = TempDir::new("bench-rls");
    let rules = dir.write("rules.yaml", RULES);
    let builder = bench
        .node()
        .rate(s.rps, s.burst)
        .flag("rls-listen", "127.0.0.1:0")
        .flag("rls-config", rules.display());
    let mut node = bench.start_node("node-rls", builder);
    let url = node.rls_url();
    let hits = u32::try_from(s.cost).unwrap_or(u32::MAX);
    let load = |d: Duration| {
        crate::rls_load::run(
            &url,
            s.threads as usize,
            CONNECTIONS,
            INFLIGHT,
            s.tenant_space,
            hits,
            d,
        )
    };
    if seconds(&s.warmup) > Duration::ZERO {
        load(seconds(&s.warmup));
    }
    let window = CpuWindow::start(&[node.pid()]);
    let rls = load(seconds(&s.duration));
    let rls_cpu = window.finish(&[node.pid()]);
    println!(
        "  | rls: {} calls in {:.2} s: {} OK, {} OVER_LIMIT, {} errors",
        rls.requests(),
        rls.elapsed_s,
        rls.ok,
        rls.over,
        rls.errors
    );
    let http_load = bench.check_load(
        node.public_url(),
        s.threads,
        s.connections,
        s.tenant_space,
        0,
    );
    let http = measure(bench, "http", &[http_load], &[node.pid()], || {});
    http.print();
    summary::metrics_of(&node, &["llmtrace_rls_decisions_total"], "");
    node_health(bench, "node-rls", &mut node);
    drop(node);

    println!();
    println!("rls results:");
    println!(
        "  rls   {:>12.1} checks/s   p50 {}   p99 {}",
        rls.rps(),
        ms(rls.p50_us),
        ms(rls.p99_us)
    );
    summary::one("http", &http);
    let rls_us = us_per_check(&rls_cpu, rls.requests());
    let http_us = us_per_check(&http.cpu, http.only().requests);
    println!("  server CPU per check   rls {rls_us:.2} us   http {http_us:.2} us");
    if http_us > 0.0 {
        let ratio = rls_us / http_us;
        println!(
            "  CPU rls/http           {ratio:12.3}            (target <= 1.3: {})",
            if ratio <= 1.3 { "met" } else { "NOT met" }
        );
    }
}
