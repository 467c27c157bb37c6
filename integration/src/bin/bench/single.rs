//! `single`: checks/s of one node against the plain actix-web handler
//! (`llmtrace-plain-bench`, the ceiling), wrk with random tenants on both, plus each
//! server's CPU per check and the node's restore / eviction counters.

use crate::cleanup::Guarded;
use crate::procfs::load_note;
use crate::setup::Bench;
use crate::summary::{self, health, node_health, us_per_check};
use crate::wrk::measure;
use llmtrace_integration::output::Captured;
use llmtrace_integration::process::{self, line_field};
use std::process::{Child, Command};

/// A running `llmtrace-plain-bench`, killed on drop.
pub struct Plain {
    child: Child,
    output: Captured,
    pub url: String,
}

impl Plain {
    /// Starts the plain server (`--listen 127.0.0.1:0`, BENCH_WORKERS as `--workers`).
    pub fn start(bench: &Bench) -> Guarded<Plain> {
        let mut cmd = Command::new(bench.plain_bin());
        cmd.args(["--listen", "127.0.0.1:0"]);
        if let Some(w) = &bench.s.workers {
            cmd.args(["--workers", w]);
        }
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        println!("-- llmtrace-plain-bench {}", args.join(" "));
        let started = process::start(&mut cmd, |l| {
            l.starts_with("llmtrace-plain-bench listening ")
        })
        .unwrap_or_else(|f| panic!("llmtrace-plain-bench did not start: {f:?}"));
        let public = line_field(&started.line, "public").expect("public= in the ready line");
        let pid = started.child.id();
        eprintln!("plain pid={pid}: {}", started.line);
        let plain = Plain {
            child: started.child,
            output: started.output,
            url: format!("http://{public}"),
        };
        Guarded::new(plain, vec![pid])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn health(&mut self, bench: &Bench) {
        let alive = matches!(self.child.try_wait(), Ok(None));
        let stderr = self.output.stderr();
        bench.keep("plain.err", &stderr);
        health("plain", alive, &stderr);
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    println!();
    println!(
        "== single: POST /v1/check, wrk -t{} -c{} -d{}, {} random tenants, keep-alive ==",
        s.threads, s.connections, s.duration, s.tenant_space
    );
    load_note();

    let mut node = bench.start_node("node-single", bench.node().rate(s.rps, s.burst));
    let load = bench.check_load(
        node.public_url(),
        s.threads,
        s.connections,
        s.tenant_space,
        0,
    );
    let on_node = measure(bench, "node", &[load], &[node.pid()], || {});
    on_node.print();
    // Which path did the checks take? Restores mean buckets were not resident.
    summary::metrics_of(
        &node,
        &[
            "llmtrace_checks_total",
            "llmtrace_restore_hits_total",
            "llmtrace_restore_misses_total",
            "llmtrace_bucket_evictions_total",
            "llmtrace_buckets_resident",
            "llmtrace_snapshot_writes_total",
        ],
        "",
    );
    node_health(bench, "node-single", &mut node);
    drop(node);

    let mut plain = Plain::start(bench);
    let load = bench.check_load(&plain.url, s.threads, s.connections, s.tenant_space, 0);
    let on_plain = measure(bench, "plain", &[load], &[plain.pid()], || {});
    on_plain.print();
    plain.health(bench);
    drop(plain);

    println!();
    println!("single results:");
    summary::one("node", &on_node);
    summary::one("plain", &on_plain);
    let ratio = if on_plain.only().rps > 0.0 {
        on_node.only().rps / on_plain.only().rps
    } else {
        0.0
    };
    println!(
        "  ratio node/plain       {ratio:12.3}            (target >= 0.70: {})",
        if ratio >= 0.7 { "met" } else { "NOT met" }
    );
    let node_us = us_per_check(&on_node.cpu, on_node.only().requests);
    let plain_us = us_per_check(&on_plain.cpu, on_plain.only().requests);
    if node_us > 0.0 {
        println!(
            "  server CPU plain/node  {:12.3}            (same ratio measured in server CPU per \
             check; less sensitive to noise)",
            plain_us / node_us
        );
    }
}
