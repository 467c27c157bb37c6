//! Metrics of the cluster layer: membership, routing, forwarding and the
//! node-to-node endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    counter_family, latency_histogram, Counter, Family, Gauge, Histogram, Label, Registry, Scraped,
};

/// A tenant counts as degraded for this long after its last check decided
/// by the unreachable-owner policy.
pub const DEGRADED_WINDOW: Duration = Duration::from_secs(60);
/// Most tenants remembered as degraded (older ones are forgotten first).
const MAX_DEGRADED_TRACKED: usize = 100_000;

/// Upper bounds of the forwarded-batch-size histogram.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub struct ClusterMetrics {
    /// Checks sent to another node (first sends, not retries).
    pub forwarded: Counter,
    /// Checks sent again after a timeout or an unreachable owner.
    pub retries: Counter,
    /// Batches that failed as a whole.
    pub forward_errors: Counter,
    /// Checks decided by the unreachable-owner policy, by policy.
    pub unreachable_local: Counter,
    pub unreachable_allow: Counter,
    pub unreachable_deny: Counter,
    unreachable: Family<Label, Counter>,
    /// Checks per batch sent.
    pub batch_size: Histogram,
    /// Round trip of a forwarded batch.
    pub forward_latency: Histogram,
    /// Time from handing a check to its forwarder to its answer (batch wait
    /// included): what forwarding adds to a check.
    pub forwarded_check_latency: Histogram,
    /// Node-to-node batches received, checks in them, and refusals by reason.
    pub rpc_batches: Counter,
    pub rpc_checks: Counter,
    pub rpc_rejected_auth: Counter,
    pub rpc_rejected_body: Counter,
    /// Forwarding streams opened to peers, and batches sent over one (the
    /// others went over HTTP).
    pub stream_opens: Counter,
    pub stream_batches: Counter,
    /// Gossip datagrams dropped unparsed, by reason: failed authentication
    /// (wrong secret, altered, forged), replayed, stale.
    pub gossip_rejected_auth: Counter,
    pub gossip_rejected_replay: Counter,
    pub gossip_rejected_stale: Counter,
    gossip_rejected: Family<Label, Counter>,
    /// Gossip envelopes too large to seal into one datagram (not sent).
    pub gossip_oversize: Counter,
    /// Checks a receiver forwarded once more (its ring disagreed).
    pub reforwarded: Counter,
    /// Retried checks answered from the dedup cache.
    pub dedup_hits: Counter,
    /// Checks that found this node's fence closed (its view was stale).
    pub fenced: Counter,
    /// Times this node found its view stale (a pause, a partition).
    pub fence_lapses: Counter,
    /// Members in the ring / live members.
    pub ring_members: Gauge,
    pub live_members: Gauge,
    /// Ring rebuilds seen.
    pub ring_changes: Counter,
    /// Checks received from clients, by how they were decided: on this
    /// node, by the owner (forwarded), by the unreachable-owner policy.
    pub routed_local: Counter,
    pub routed_forwarded: Counter,
    pub routed_degraded: Counter,
    /// ... and from a token lease of a bucket owned elsewhere.
    pub routed_leased: Counter,
    routed: Family<Label, Counter>,
    /// As owner: token leases granted to other nodes, the units they took
    /// from buckets, and the unspent units given back into buckets.
    pub token_lease_grants: Counter,
    pub token_lease_granted_units: Counter,
    pub token_lease_returned_units: Counter,
    /// Tenants decided by the unreachable-owner policy lately, with when
    /// (off the hot path: touched only on a degraded decision).
    degraded_tenants: Mutex<HashMap<Box<str>, Instant>>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        let (unreachable, [unreachable_local, unreachable_allow, unreachable_deny]) =
            counter_family("policy", ["local", "allow", "deny"]);
        let (
            gossip_rejected,
            [gossip_rejected_auth, gossip_rejected_replay, gossip_rejected_stale],
        ) = counter_family("reason", ["auth", "replay", "stale"]);
        let (routed, [routed_local, routed_forwarded, routed_degraded, routed_leased]) =
            counter_family("route", ["local", "forwarded", "degraded", "leased"]);
        ClusterMetrics {
            forwarded: Counter::default(),
            retries: Counter::default(),
            forward_errors: Counter::default(),
            unreachable_local,
            unreachable_allow,
            unreachable_deny,
            unreachable,
            batch_size: Histogram::new(BATCH_BUCKETS),
            forward_latency: latency_histogram(),
            forwarded_check_latency: latency_histogram(),
            rpc_batches: Counter::default(),
            rpc_checks: Counter::default(),
            rpc_rejected_auth: Counter::default(),
            rpc_rejected_body: Counter::default(),
            stream_opens: Counter::default(),
            stream_batches: Counter::default(),
            gossip_rejected_auth,
            gossip_rejected_replay,
            gossip_rejected_stale,
            gossip_rejected,
            gossip_oversize: Counter::default(),
            reforwarded: Counter::default(),
            dedup_hits: Counter::default(),
            fenced: Counter::default(),
            fence_lapses: Counter::default(),
            ring_members: Gauge::default(),
            live_members: Gauge::default(),
            ring_changes: Counter::default(),
            routed_local,
            routed_forwarded,
            routed_degraded,
            routed_leased,
            routed,
            token_lease_grants: Counter::default(),
            token_lease_granted_units: Counter::default(),
            token_lease_returned_units: Counter::default(),
            degraded_tenants: Mutex::default(),
        }
    }
}

impl ClusterMetrics {
    /// Remembers a tenant whose client check the unreachable-owner policy
    /// decided (for `llmtrace_degraded_tenants`).
    pub fn mark_degraded(&self, tenant: &str) {
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

    /// Registers the cluster series; `fingerprint` reads this node's ring
    /// fingerprint.
    pub fn register(
        self: &Arc<Self>,
        registry: &mut Registry,
        fingerprint: impl Fn() -> String + Send + Sync + 'static,
    ) {
        let counters = [
            (
                "llmtrace_forwarded_checks",
                "Checks forwarded to their owner",
                &self.forwarded,
            ),
            (
                "llmtrace_forward_retries",
                "Forwarded checks sent again after a failure",
                &self.retries,
            ),
            (
                "llmtrace_forward_errors",
                "Forwarded batches that failed",
                &self.forward_errors,
            ),
            (
                "llmtrace_rpc_batches",
                "Node-to-node batches received",
                &self.rpc_batches,
            ),
            (
                "llmtrace_rpc_checks",
                "Checks received from other nodes",
                &self.rpc_checks,
            ),
            (
                "llmtrace_rpc_rejected_auth",
                "Node-to-node requests refused: bad or missing cluster secret",
                &self.rpc_rejected_auth,
            ),
            (
                "llmtrace_rpc_rejected_body",
                "Node-to-node requests refused: bad body",
                &self.rpc_rejected_body,
            ),
            (
                "llmtrace_forward_streams_opened",
                "Forwarding streams opened to peers",
                &self.stream_opens,
            ),
            (
                "llmtrace_forward_stream_batches",
                "Forwarded batches sent over a forwarding stream (the others went over HTTP)",
                &self.stream_batches,
            ),
            (
                "llmtrace_reforwarded_checks",
                "Received checks forwarded once more (rings disagreed)",
                &self.reforwarded,
            ),
            (
                "llmtrace_forward_dedup_hits",
                "Retried checks answered without counting them twice",
                &self.dedup_hits,
            ),
            ("llmtrace_ring_changes", "Ring rebuilds", &self.ring_changes),
            (
                "llmtrace_fenced_checks",
                "Checks that found this node's view of the cluster stale and waited for it",
                &self.fenced,
            ),
            (
                "llmtrace_fence_lapses",
                "Times this node found its view of the cluster stale (a pause, a partition): \
                 its buckets were set aside",
                &self.fence_lapses,
            ),
            (
                "llmtrace_gossip_oversize",
                "Gossip envelopes too large to seal into one datagram (not sent)",
                &self.gossip_oversize,
            ),
            (
                "llmtrace_token_lease_grants",
                "Token leases this node granted as owner",
                &self.token_lease_grants,
            ),
            (
                "llmtrace_token_lease_granted_units",
                "Units the token leases this node granted took from its buckets",
                &self.token_lease_granted_units,
            ),
            (
                "llmtrace_token_lease_returned_units",
                "Unspent units holders gave back into this node's buckets (returns of \
                 unknown or revoked leases are dropped, not counted)",
                &self.token_lease_returned_units,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "llmtrace_gossip_rejected",
            "Gossip datagrams dropped unparsed: failed authentication (auth), replayed \
             (replay), sent too far from this node's clock (stale)",
            self.gossip_rejected.clone(),
        );
        registry.register(
            "llmtrace_owner_unreachable",
            "Checks decided by the on_owner_unreachable policy",
            self.unreachable.clone(),
        );
        registry.register(
            "llmtrace_routed_checks",
            "Client checks by where they were decided: this node (local), the owner \
             (forwarded), the unreachable-owner policy (degraded), a token lease the \
             owner granted this node (leased)",
            self.routed.clone(),
        );
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_degraded_tenants",
            "Tenants decided by the unreachable-owner policy in the last 60 s",
            Scraped::gauge(move || m.degraded_tenants() as i64),
        );
        let histograms = [
            (
                "llmtrace_forward_batch_size",
                "Checks per forwarded batch",
                &self.batch_size,
            ),
            (
                "llmtrace_forward_duration_seconds",
                "Round trip of a forwarded batch",
                &self.forward_latency,
            ),
            (
                "llmtrace_forwarded_check_duration_seconds",
                "Time to answer a forwarded check, batch wait included",
                &self.forwarded_check_latency,
            ),
        ];
        for (name, help, histogram) in histograms {
            registry.register(name, help, histogram.clone());
        }
        registry.register(
            "llmtrace_ring_members",
            "Members in this node's ring",
            self.ring_members.clone(),
        );
        registry.register(
            "llmtrace_live_members",
            "Live members seen by gossip",
            self.live_members.clone(),
        );
        registry.register(
            "llmtrace_ring_info",
            "This node's ring fingerprint",
            Scraped::info("fingerprint", fingerprint),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{check, render};

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Arc::new(ClusterMetrics::default());
        let mut registry = Registry::default();
        m.register(&mut registry, || "00ff".to_string());
        m.forwarded.inc_by(10);
        m.unreachable_allow.inc();
        m.routed_local.inc_by(3);
        m.routed_degraded.inc();
        m.mark_degraded("t");
        m.mark_degraded("t");
        m.mark_degraded("u");
        m.batch_size.observe(3.0);
        m.batch_size.observe(256.0);
        m.ring_members.set(3);
        m.gossip_rejected_replay.inc();
        m.token_lease_grants.inc();
        m.token_lease_granted_units.inc_by(40);
        let text = render(&registry);
        check::has_lines(
            &text,
            &[
                "llmtrace_forwarded_checks_total 10",
                "llmtrace_forward_retries_total 0",
                "llmtrace_owner_unreachable_total{policy=\"local\"} 0",
                "llmtrace_owner_unreachable_total{policy=\"allow\"} 1",
                "llmtrace_owner_unreachable_total{policy=\"deny\"} 0",
                "llmtrace_routed_checks_total{route=\"local\"} 3",
                "llmtrace_routed_checks_total{route=\"forwarded\"} 0",
                "llmtrace_routed_checks_total{route=\"degraded\"} 1",
                "llmtrace_routed_checks_total{route=\"leased\"} 0",
                "llmtrace_degraded_tenants 2",
                "llmtrace_forward_batch_size_bucket{le=\"2\"} 0",
                "llmtrace_forward_batch_size_bucket{le=\"4\"} 1",
                "llmtrace_forward_batch_size_bucket{le=\"128\"} 1",
                "llmtrace_forward_batch_size_bucket{le=\"256\"} 2",
                "llmtrace_forward_batch_size_bucket{le=\"+Inf\"} 2",
                "llmtrace_forward_batch_size_sum 259.0",
                "llmtrace_forward_batch_size_count 2",
                "llmtrace_forward_duration_seconds_count 0",
                "llmtrace_ring_members 3",
                "llmtrace_live_members 0",
                "llmtrace_ring_info{fingerprint=\"00ff\"} 1",
                "llmtrace_gossip_rejected_total{reason=\"auth\"} 0",
                "llmtrace_gossip_rejected_total{reason=\"replay\"} 1",
                "llmtrace_gossip_rejected_total{reason=\"stale\"} 0",
                "llmtrace_token_lease_grants_total 1",
                "llmtrace_token_lease_granted_units_total 40",
                "llmtrace_token_lease_returned_units_total 0",
            ],
        );
        assert_eq!(
            check::types(&text),
            [
                "# TYPE llmtrace_forwarded_checks_total counter",
                "# TYPE llmtrace_forward_retries_total counter",
                "# TYPE llmtrace_forward_errors_total counter",
                "# TYPE llmtrace_rpc_batches_total counter",
                "# TYPE llmtrace_rpc_checks_total counter",
                "# TYPE llmtrace_rpc_rejected_auth_total counter",
                "# TYPE llmtrace_rpc_rejected_body_total counter",
                "# TYPE llmtrace_forward_streams_opened_total counter",
                "# TYPE llmtrace_forward_stream_batches_total counter",
                "# TYPE llmtrace_reforwarded_checks_total counter",
                "# TYPE llmtrace_forward_dedup_hits_total counter",
                "# TYPE llmtrace_ring_changes_total counter",
                "# TYPE llmtrace_fenced_checks_total counter",
                "# TYPE llmtrace_fence_lapses_total counter",
                "# TYPE llmtrace_gossip_oversize_total counter",
                "# TYPE llmtrace_token_lease_grants_total counter",
                "# TYPE llmtrace_token_lease_granted_units_total counter",
                "# TYPE llmtrace_token_lease_returned_units_total counter",
                "# TYPE llmtrace_gossip_rejected_total counter",
                "# TYPE llmtrace_owner_unreachable_total counter",
                "# TYPE llmtrace_routed_checks_total counter",
                "# TYPE llmtrace_degraded_tenants gauge",
                "# TYPE llmtrace_forward_batch_size histogram",
                "# TYPE llmtrace_forward_duration_seconds histogram",
                "# TYPE llmtrace_forwarded_check_duration_seconds histogram",
                "# TYPE llmtrace_ring_members gauge",
                "# TYPE llmtrace_live_members gauge",
                "# TYPE llmtrace_ring_info gauge",
            ]
        );
    }
}
