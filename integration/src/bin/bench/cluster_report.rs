//! What the nodes' `/metrics` say about a measured cluster run: every node's page is
//! read right before and right after it, and the differences give, per node and
//! summed, the checks decided (by the bucket's owner) and accepted (on the public
//! listener), the forwarded share, the mean forwarded batch, Prometheus-style quantiles
//! of the forward round trip (per batch), of the forwarded check (hand-off to the
//! forwarder until the answer, batch wait included) and of the check duration, and the
//! counters that stay 0 in a healthy run.

use crate::summary::ms_or_us;
use llmtrace_integration::metrics::{self, Histogram, Quantile, Sample};
use llmtrace_integration::Cluster;
use std::time::Instant;

/// Target of the forwarded-check p99 and of the forward round trip p99.
const FORWARD_TARGET_S: f64 = 0.003;

const ALLOWED: &str = r#"llmtrace_checks_total{limit="requests",decision="allowed"}"#;
const REFUSED: &str = r#"llmtrace_checks_total{limit="requests",decision="refused"}"#;
const FORWARD_RTT: &str = "llmtrace_forward_duration_seconds";
const CHECK: &str = "llmtrace_check_duration_seconds";
const FORWARDED_CHECK: &str = "llmtrace_forwarded_check_duration_seconds";

/// Counters that stay 0 in a healthy run, with what they count.
const WATCH: [(&str, &str); 9] = [
    ("llmtrace_forward_errors_total", "forward errors (batches)"),
    ("llmtrace_forward_retries_total", "forward retries"),
    (
        "llmtrace_owner_unreachable_total",
        "owner-unreachable decisions",
    ),
    ("llmtrace_reforwarded_checks_total", "re-forwarded checks"),
    ("llmtrace_forward_dedup_hits_total", "dedup hits"),
    ("llmtrace_rpc_rejected_auth_total", "RPC refused (auth)"),
    ("llmtrace_rpc_rejected_body_total", "RPC refused (body)"),
    ("llmtrace_invalid_requests_total", "invalid requests"),
    ("llmtrace_ring_changes_total", "ring changes"),
];

/// Every running node's metrics at one moment.
pub struct Snapshot {
    at: Instant,
    nodes: Vec<(String, Vec<Sample>)>,
}

impl Snapshot {
    pub fn take(cluster: &Cluster) -> Snapshot {
        let nodes = cluster
            .running()
            .iter()
            .map(|n| (n.node_id.clone(), metrics::parse(&n.metrics())))
            .collect();
        Snapshot {
            at: Instant::now(),
            nodes,
        }
    }
}

impl Snapshot {
    /// How much the counter `selector`, summed over the nodes, grew from `self` to
    /// `later`.
    pub fn growth(&self, later: &Snapshot, selector: &str) -> f64 {
        let total = |s: &Snapshot| -> f64 {
            s.nodes
                .iter()
                .map(|(_, samples)| metrics::sum(samples, selector).unwrap_or(0.0))
                .sum()
        };
        total(later) - total(self)
    }
}

/// One node's (or the sum's) figures over the run.
#[derive(Default)]
struct Row {
    decided: f64,
    refused: f64,
    accepted: f64,
    forwarded: f64,
    rpc: f64,
    batch_sum: f64,
    batches: f64,
    forward_rtt: Histogram,
    check: Histogram,
    forwarded_check: Histogram,
}

impl Row {
    fn between(b: &[Sample], a: &[Sample]) -> Row {
        let d =
            |sel: &str| metrics::sum(a, sel).unwrap_or(0.0) - metrics::sum(b, sel).unwrap_or(0.0);
        let h = |name: &str| Histogram::of(a, name).since(&Histogram::of(b, name));
        let refused = d(REFUSED);
        Row {
            decided: d(ALLOWED) + refused,
            refused,
            accepted: d("llmtrace_check_duration_seconds_count"),
            forwarded: d("llmtrace_forwarded_checks_total"),
            rpc: d("llmtrace_rpc_checks_total"),
            batch_sum: d("llmtrace_forward_batch_size_sum"),
            batches: d("llmtrace_forward_batch_size_count"),
            forward_rtt: h(FORWARD_RTT),
            check: h(CHECK),
            forwarded_check: h(FORWARDED_CHECK),
        }
    }

    fn add(&mut self, r: &Row) {
        self.decided += r.decided;
        self.refused += r.refused;
        self.accepted += r.accepted;
        self.forwarded += r.forwarded;
        self.rpc += r.rpc;
        self.batch_sum += r.batch_sum;
        self.batches += r.batches;
        self.forward_rtt = self.forward_rtt.plus(&r.forward_rtt);
        self.check = self.check.plus(&r.check);
        self.forwarded_check = self.forwarded_check.plus(&r.forwarded_check);
    }

    fn mean_batch(&self) -> f64 {
        ratio(self.batch_sum, self.batches)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b != 0.0 {
        a / b
    } else {
        0.0
    }
}

/// `1.23 ms (bucket 1.00 ms..2.50 ms)`, or why there is no value.
fn show(q: Option<Quantile>) -> String {
    match q {
        None => "n/a (no observations)".into(),
        Some(q) if q.upper.is_infinite() => format!("> {} (in the +Inf bucket)", ms_or_us(q.lower)),
        Some(q) => format!(
            "{} (bucket {}..{})",
            ms_or_us(q.value),
            ms_or_us(q.lower),
            ms_or_us(q.upper)
        ),
    }
}

/// The verdict of a quantile against a target: certain only when the whole bucket that
/// holds it is on one side (the buckets are coarse).
fn verdict(q: Option<Quantile>, target: f64, empty: &str) -> String {
    match q {
        None => empty.into(),
        Some(q) if q.upper <= target => "met".into(),
        Some(q) if q.lower >= target => "NOT met".into(),
        Some(q) if q.value <= target => "probably met: the target lies inside the bucket".into(),
        Some(_) => "probably NOT met: the target lies inside the bucket".into(),
    }
}

fn micros(q: Option<Quantile>) -> String {
    match q {
        None => "na".into(),
        Some(q) if q.value.is_infinite() => "inf".into(),
        Some(q) => format!("{:.0}", q.value * 1e6),
    }
}

/// Prints the report of the run between `before` and `after`.
pub fn report(before: &Snapshot, after: &Snapshot) {
    let secs = (after.at - before.at).as_secs_f64().max(1e-9);
    let mut total = Row::default();
    let mut watch = [0.0; WATCH.len()];
    println!("  per node over the measured run ({secs:.1} s between metric reads):");
    println!(
        "    {:<8} {:>10} {:>10} {:>10} {:>9} {:>10} {:>6} {:>14} {:>12}",
        "node",
        "accepted",
        "decided",
        "forwarded",
        "fwd share",
        "rpc recv",
        "batch",
        "batch rtt p99",
        "check p99"
    );
    for ((id, b), (_, a)) in before.nodes.iter().zip(&after.nodes) {
        let r = Row::between(b, a);
        let p99 = |h: &Histogram| h.quantile(0.99).map_or("n/a".into(), |q| ms_or_us(q.value));
        println!(
            "    {id:<8} {:>10.0} {:>10.0} {:>10.0} {:>9.3} {:>10.0} {:>6.1} {:>14} {:>12}",
            r.accepted,
            r.decided,
            r.forwarded,
            ratio(r.forwarded, r.accepted),
            r.rpc,
            r.mean_batch(),
            p99(&r.forward_rtt),
            p99(&r.check)
        );
        for (w, (name, _)) in watch.iter_mut().zip(WATCH) {
            *w += metrics::sum(a, name).unwrap_or(0.0) - metrics::sum(b, name).unwrap_or(0.0);
        }
        total.add(&r);
    }

    let share = ratio(total.forwarded, total.decided);
    let (fwd_p50, fwd_p99) = (
        total.forward_rtt.quantile(0.5),
        total.forward_rtt.quantile(0.99),
    );
    let (chk_p50, chk_p99) = (total.check.quantile(0.5), total.check.quantile(0.99));
    let (x_p50, x_p99) = (
        total.forwarded_check.quantile(0.5),
        total.forwarded_check.quantile(0.99),
    );
    let target_ms = FORWARD_TARGET_S * 1000.0;
    println!(
        "  checks decided (owner)  {:12.0}            (accepted on public listeners: {:.0}; refused: {:.0})",
        total.decided, total.accepted, total.refused
    );
    println!(
        "  forwarded share        {share:12.3}            (forwarded {:.0} / decided; expected ~0.667 with 3 nodes; received by peers {:.0})",
        total.forwarded, total.rpc
    );
    println!(
        "  mean forwarded batch   {:12.1} checks     (Δ batch_size_sum / Δ count: {:.0} / {:.0} batches, {:.0} batches/s)",
        total.mean_batch(),
        total.batch_sum,
        total.batches,
        total.batches / secs
    );
    println!(
        "  forward round trip p99 {}   (per batch, all nodes; target <= {target_ms} ms: {})",
        show(fwd_p99),
        verdict(fwd_p99, FORWARD_TARGET_S, "no forwarded batches")
    );
    println!("  forward round trip p50 {}", show(fwd_p50));
    println!(
        "  forwarded check p99    {}   (llmtrace_forwarded_check_duration_seconds: hand-off to forwarder until answer, batch wait included; target <= {target_ms} ms: {})",
        show(x_p99),
        verdict(x_p99, FORWARD_TARGET_S, "no forwarded checks")
    );
    println!("  forwarded check p50    {}", show(x_p50));
    println!(
        "  check duration p50/p99 {} / {}   (in the accepting node, local and forwarded)",
        show(chk_p50),
        show(chk_p99)
    );

    let mut bad: Vec<(&str, f64)> = WATCH
        .iter()
        .zip(watch)
        .filter(|(_, v)| *v != 0.0)
        .map(|((_, label), v)| (*label, v))
        .collect();
    if total.refused != 0.0 {
        bad.push(("refused checks (429)", total.refused));
    }
    if (total.rpc - total.forwarded).abs() > 0.001 * total.forwarded.max(1.0) + 64.0 {
        bad.push(("forwarded - received by peers", total.forwarded - total.rpc));
    }
    for (label, v) in &bad {
        println!("  !! {label}: {v:.0} during the run");
    }
    if bad.is_empty() {
        println!(
            "  cluster counters       forward errors, retries, owner-unreachable, re-forwards, dedup hits, RPC refusals, invalid requests, ring changes, 429: all 0"
        );
    }
    println!(
        "CLUSTER_RESULT decided={:.0} accepted={:.0} forwarded={:.0} forwarded_share={share:.4} mean_batch={:.2} batches={:.0} fwd_rtt_p50_us={} fwd_rtt_p99_us={} fwd_check_p99_us={} check_p50_us={} check_p99_us={} anomalies={}",
        total.decided,
        total.accepted,
        total.forwarded,
        total.mean_batch(),
        total.batches,
        micros(fwd_p50),
        micros(fwd_p99),
        micros(x_p99),
        micros(chk_p50),
        micros(chk_p99),
        bad.len()
    );
}
