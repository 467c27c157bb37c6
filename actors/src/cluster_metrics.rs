//! Metrics of the cluster layer: membership, forwarding and the node-to-node
//! endpoint. Rendered after the node's own metrics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::router::Route;
use crate::metrics::Histogram;

/// A tenant counts as degraded for this long after its last check decided
/// by the unreachable-owner policy.
pub const DEGRADED_WINDOW: Duration = Duration::from_secs(60);
/// Most tenants remembered as degraded (older ones are forgotten first).
const MAX_DEGRADED_TRACKED: usize = 100_000;

/// Upper bounds of the forwarded-batch-size histogram.
const BATCH_BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

#[derive(Default)]
pub struct ClusterMetrics {
    /// Checks sent to another node (first sends, not retries).
    pub forwarded: AtomicU64,
    /// Checks sent again after a timeout or an unreachable owner.
    pub retries: AtomicU64,
    /// Batches that failed as a whole.
    pub forward_errors: AtomicU64,
    /// Checks decided by the unreachable-owner policy, by policy.
    pub unreachable_local: AtomicU64,
    pub unreachable_allow: AtomicU64,
    pub unreachable_deny: AtomicU64,
    /// Batch sizes sent.
    batch_counts: [AtomicU64; BATCH_BUCKETS.len() + 1],
    batch_items: AtomicU64,
    batches: AtomicU64,
    /// Round trip of a forwarded batch.
    pub forward_latency: Histogram,
    /// Time from handing a check to its forwarder to its answer (batch wait
    /// included): what forwarding adds to a check.
    pub forwarded_check_latency: Histogram,
    /// Node-to-node batches received, checks in them, and refusals by reason.
    pub rpc_batches: AtomicU64,
    pub rpc_checks: AtomicU64,
    pub rpc_rejected_auth: AtomicU64,
    pub rpc_rejected_body: AtomicU64,
    /// Checks a receiver forwarded once more (its ring disagreed).
    pub reforwarded: AtomicU64,
    /// Retried checks answered from the dedup cache.
    pub dedup_hits: AtomicU64,
    /// Members in the ring / live members.
    pub ring_members: AtomicI64,
    pub live_members: AtomicI64,
    /// Ring rebuilds seen.
    pub ring_changes: AtomicU64,
    /// Checks received from clients, by how they were decided: on this
    /// node, by the owner (forwarded), by the unreachable-owner policy.
    pub routed: [AtomicU64; 3],
    /// Tenants decided by the unreachable-owner policy lately, with when
    /// (off the hot path: touched only on a degraded decision).
    degraded_tenants: Mutex<HashMap<Box<str>, Instant>>,
}

impl ClusterMetrics {
    /// Counts one client check by route (and remembers degraded tenants).
    #[inline]
    pub fn observe_route(&self, route: &Route, tenant: &str) {
        let i = match route {
            Route::Local => 0,
            Route::Forwarded => 1,
            Route::Degraded(_) => 2,
        };
        self.routed[i].fetch_add(1, Relaxed);
        if i == 2 {
            self.mark_degraded(tenant);
        }
    }

    fn mark_degraded(&self, tenant: &str) {
        let Ok(mut seen) = self.degraded_tenants.lock() else {
            return;
        };
        let now = Instant::now();
        if seen.len() >= MAX_DEGRADED_TRACKED && !seen.contains_key(tenant) {
            seen.retain(|_, at| now.duration_since(*at) < DEGRADED_WINDOW);
            if seen.len() >= MAX_DEGRADED_TRACKED {
                return;
            }
        }
        seen.insert(tenant.into(), now);
    }

    /// Tenants decided by the unreachable-owner policy within the last
    /// [`DEGRADED_WINDOW`].
    pub fn degraded_tenants(&self) -> usize {
        let Ok(mut seen) = self.degraded_tenants.lock() else {
            return 0;
        };
        let now = Instant::now();
        seen.retain(|_, at| now.duration_since(*at) < DEGRADED_WINDOW);
        seen.len()
    }

    pub fn observe_batch(&self, n: usize) {
        let i = BATCH_BUCKETS
            .iter()
            .position(|b| n <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.batch_counts[i].fetch_add(1, Relaxed);
        self.batch_items.fetch_add(n as u64, Relaxed);
        self.batches.fetch_add(1, Relaxed);
    }

    /// Mean forwarded batch size so far.
    pub fn mean_batch(&self) -> f64 {
        let b = self.batches.load(Relaxed);
        if b == 0 {
            0.0
        } else {
            self.batch_items.load(Relaxed) as f64 / b as f64
        }
    }

    pub fn render(&self, out: &mut String, fingerprint: &str) {
        let counters = [
            (
                "llmtrace_forwarded_checks_total",
                "Checks forwarded to their owner.",
                self.forwarded.load(Relaxed),
            ),
            (
                "llmtrace_forward_retries_total",
                "Forwarded checks sent again after a failure.",
                self.retries.load(Relaxed),
            ),
            (
                "llmtrace_forward_errors_total",
                "Forwarded batches that failed.",
                self.forward_errors.load(Relaxed),
            ),
            (
                "llmtrace_rpc_batches_total",
                "Node-to-node batches received.",
                self.rpc_batches.load(Relaxed),
            ),
            (
                "llmtrace_rpc_checks_total",
                "Checks received from other nodes.",
                self.rpc_checks.load(Relaxed),
            ),
            (
                "llmtrace_rpc_rejected_auth_total",
                "Node-to-node requests refused: bad or missing cluster secret.",
                self.rpc_rejected_auth.load(Relaxed),
            ),
            (
                "llmtrace_rpc_rejected_body_total",
                "Node-to-node requests refused: bad body.",
                self.rpc_rejected_body.load(Relaxed),
            ),
            (
                "llmtrace_reforwarded_checks_total",
                "Received checks forwarded once more (rings disagreed).",
                self.reforwarded.load(Relaxed),
            ),
            (
                "llmtrace_forward_dedup_hits_total",
                "Retried checks answered without counting them twice.",
                self.dedup_hits.load(Relaxed),
            ),
            (
                "llmtrace_ring_changes_total",
                "Ring rebuilds.",
                self.ring_changes.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let _ = writeln!(out, "# HELP llmtrace_owner_unreachable_total Checks decided by the on_owner_unreachable policy.\n# TYPE llmtrace_owner_unreachable_total counter");
        for (policy, v) in [
            ("local", &self.unreachable_local),
            ("allow", &self.unreachable_allow),
            ("deny", &self.unreachable_deny),
        ] {
            let _ = writeln!(
                out,
                "llmtrace_owner_unreachable_total{{policy=\"{policy}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP llmtrace_routed_checks_total Client checks by where they were decided: this node (local), the owner (forwarded), the unreachable-owner policy (degraded).\n# TYPE llmtrace_routed_checks_total counter");
        for (route, v) in ["local", "forwarded", "degraded"].iter().zip(&self.routed) {
            let _ = writeln!(
                out,
                "llmtrace_routed_checks_total{{route=\"{route}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP llmtrace_degraded_tenants Tenants decided by the unreachable-owner policy in the last 60 s.\n# TYPE llmtrace_degraded_tenants gauge\nllmtrace_degraded_tenants {}",
            self.degraded_tenants()
        );
        let _ = writeln!(out, "# HELP llmtrace_forward_batch_size Checks per forwarded batch.\n# TYPE llmtrace_forward_batch_size histogram");
        let mut cumulative = 0;
        for (b, c) in BATCH_BUCKETS.iter().zip(&self.batch_counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(
                out,
                "llmtrace_forward_batch_size_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let batches = self.batches.load(Relaxed);
        let _ = writeln!(
            out,
            "llmtrace_forward_batch_size_bucket{{le=\"+Inf\"}} {batches}"
        );
        let _ = writeln!(
            out,
            "llmtrace_forward_batch_size_sum {}",
            self.batch_items.load(Relaxed)
        );
        let _ = writeln!(out, "llmtrace_forward_batch_size_count {batches}");
        let _ = writeln!(out, "# HELP llmtrace_forward_duration_seconds Round trip of a forwarded batch.\n# TYPE llmtrace_forward_duration_seconds histogram");
        self.forward_latency
            .render(out, "llmtrace_forward_duration_seconds", "");
        let _ = writeln!(out, "# HELP llmtrace_forwarded_check_duration_seconds Time to answer a forwarded check, batch wait included.\n# TYPE llmtrace_forwarded_check_duration_seconds histogram");
        self.forwarded_check_latency
            .render(out, "llmtrace_forwarded_check_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP llmtrace_ring_members Members in this node's ring.\n# TYPE llmtrace_ring_members gauge\nllmtrace_ring_members {}",
            self.ring_members.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP llmtrace_live_members Live members seen by gossip.\n# TYPE llmtrace_live_members gauge\nllmtrace_live_members {}",
            self.live_members.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP llmtrace_ring_info This node's ring fingerprint.\n# TYPE llmtrace_ring_info gauge\nllmtrace_ring_info{{fingerprint=\"{fingerprint}\"}} 1"
        );
    }
}
