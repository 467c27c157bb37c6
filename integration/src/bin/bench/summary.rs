//! The lines every benchmark prints the same way: a wrk run's checks/s and latencies,
//! its errors, the CPU the servers and wrk used, a server's health after a run, and
//! counters read from a node's `/metrics`.

use crate::procfs::CpuUse;
use crate::wrk::{Measured, WrkResult};
use llmtrace_integration::{metrics, Node};

/// Microseconds as `1.23 ms`.
pub fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// Seconds as `1.23 ms`, or `45 us` below a millisecond.
pub fn ms_or_us(s: f64) -> String {
    if s.is_infinite() {
        "+Inf".into()
    } else if s >= 0.001 {
        format!("{:.2} ms", s * 1000.0)
    } else {
        format!("{:.0} us", s * 1e6)
    }
}

/// Warnings about one wrk run: non-2xx answers, socket errors, and the statuses seen.
fn errors(name: &str, r: &WrkResult, indent: &str) {
    if r.non2xx != 0 {
        println!(
            "  !! {name}: {} non-2xx responses (429 or errors) out of {}",
            r.non2xx, r.requests
        );
    }
    if let Some(e) = r.socket_errors() {
        println!("  !! {name}: socket errors: {e}");
    }
    if let Some(s) = &r.statuses {
        println!("{indent}{name} statuses: {s}");
    }
}

/// Server CPU per check and the cores each side used; warns when other processes used
/// a noticeable share of the machine.
fn cpu_line(
    name: &str,
    cpu: &CpuUse,
    requests: u64,
    duration_s: f64,
    label_width: usize,
    indent: &str,
) {
    let other = (cpu.busy_s - cpu.server_s - cpu.client_s).max(0.0);
    let d = duration_s.max(1e-9);
    println!(
        "{indent}{:<label_width$} server {:.1} us CPU/check ({:.2} cores), wrk {:.2} cores, other processes {:.2} cores, host steal {:.1}%",
        "",
        us_per_check(cpu, requests),
        cpu.server_s / d,
        cpu.client_s / d,
        other / d,
        100.0 * cpu.steal
    );
    steal_warning(name, cpu.steal);
    if other / d > 0.15 {
        println!(
            "  !! {name}: other processes used {:.2} cores during the run: the figures are skewed",
            other / d
        );
    }
}

/// Above this share of the machine's CPU taken by the hypervisor during a measured
/// run, its latency tails are the host's, not the server's.
pub const STEAL_LIMIT: f64 = 0.02;

/// Warns when the hypervisor took more than [`STEAL_LIMIT`] of the CPU during a run.
pub fn steal_warning(name: &str, steal: f64) {
    if steal > STEAL_LIMIT {
        println!(
            "  !! {name}: the host took {:.1}% of this machine's CPU (steal) during the run: \
             latency tails are the host's",
            100.0 * steal
        );
    }
}

/// Server CPU microseconds per check.
pub fn us_per_check(cpu: &CpuUse, requests: u64) -> f64 {
    if requests > 0 {
        1e6 * cpu.server_s / requests as f64
    } else {
        0.0
    }
}

/// `LABEL  N checks/s   p50 ..   p99 ..   max ..` of one wrk run.
fn rate_line(indent: &str, label: &str, width: usize, r: &WrkResult) {
    println!(
        "{indent}{label:<width$} {:>12.1} checks/s   p50 {}   p99 {}   max {}",
        r.rps,
        ms(r.p50_us),
        ms(r.p99_us),
        ms(r.max_us)
    );
}

/// One wrk run against one server: checks/s, p50 / p99 / max, errors, CPU.
pub fn one(name: &str, m: &Measured) {
    let r = m.only();
    rate_line("  ", name, 22, r);
    errors(name, r, "  ");
    cpu_line(name, &m.cpu, r.requests, r.duration_s, 22, "  ");
}

/// Totals of several parallel wrk runs.
pub struct Totals {
    pub rps: f64,
    /// The worst wrk's p99.
    pub p99_us: f64,
    pub us_per_check: f64,
}

/// Several wrk runs at once (one label each): a line per wrk, the total, errors, CPU.
pub fn several(name: &str, labels: &[String], m: &Measured) -> Totals {
    let mut totals = Totals {
        rps: 0.0,
        p99_us: 0.0,
        us_per_check: 0.0,
    };
    let mut requests = 0;
    let mut duration_s: f64 = 0.0;
    for (label, run) in labels.iter().zip(&m.runs) {
        let r = &run.result;
        rate_line("    ", label, 20, r);
        errors(&format!("{name} {label}"), r, "    ");
        totals.rps += r.rps;
        totals.p99_us = totals.p99_us.max(r.p99_us);
        requests += r.requests;
        duration_s = r.duration_s;
    }
    totals.us_per_check = us_per_check(&m.cpu, requests);
    println!(
        "    {:<20} {:>12.1} checks/s   worst p99 {}   ({requests} checks)",
        "total",
        totals.rps,
        ms(totals.p99_us)
    );
    cpu_line(name, &m.cpu, requests, duration_s, 20, "    ");
    totals
}

/// After a run: is the server still alive, did it log panics or errors?
pub fn health(name: &str, alive: bool, stderr: &str) {
    if !alive {
        println!("  !! {name} is no longer running; stderr tail:");
        let lines: Vec<&str> = stderr.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            println!("     {l}");
        }
        return;
    }
    let stderr = strip_ansi(stderr);
    let bad: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("panick") || l.contains("error")
        })
        .collect();
    quote(name, &bad, "line(s) matching panic/error");
}

/// `!! NAME logged N WHAT on stderr` and the first five of `lines`, when there are any.
fn quote(name: &str, lines: &[&str], what: &str) {
    if lines.is_empty() {
        return;
    }
    println!(
        "  !! {name} logged {} {what} on stderr; first ones:",
        lines.len()
    );
    for l in lines.iter().take(5) {
        println!("     {}", l.chars().take(300).collect::<String>());
    }
}

/// A node's health after a run ([`health`]); its output is kept with BENCH_KEEP_LOGS.
pub fn node_health(bench: &crate::setup::Bench, name: &str, node: &mut Node) {
    let alive = node.is_running();
    let stderr = node.stderr();
    bench.keep(&format!("{name}.out"), &node.stdout());
    bench.keep(&format!("{name}.err"), &stderr);
    health(name, alive, &stderr);
}

/// A node's warnings on stderr (besides [`health`]'s panics and errors).
pub fn warnings(name: &str, node: &Node) {
    let stderr = strip_ansi(&node.stderr());
    let warns: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN")).collect();
    quote(name, &warns, "warning(s)");
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `  metric NAME VALUE` (summed over labels; `missing` when absent) for each name,
/// with `note` after the value.
pub fn metrics_of(node: &Node, names: &[&str], note: &str) {
    let Some(text) = node
        .admin()
        .try_get("/metrics")
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| r.text)
    else {
        println!("  !! could not read {}/metrics", node.admin_url());
        return;
    };
    for name in names {
        let shown = match metrics::value(&text, name) {
            None => "missing".to_string(),
            Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
            Some(v) => v.to_string(),
        };
        println!("  metric {name} {shown}{note}");
    }
}
