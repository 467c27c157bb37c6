//! Prometheus metrics of the proxy listener: proxied requests by status,
//! tokens reserved / charged / refunded, upstream latency (time to the
//! response head), and the refusals of limits in shadow mode (counted here
//! for the proxy and `POST /v1/check` alike).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use llmtrace_actors::metrics::{
    counter_family, Counter, Family, Histogram, Label, Registry, Scraped,
};
use llmtrace_cluster_config::Limit;

/// Upper bounds (seconds) of the upstream-latency histogram: LLM calls take
/// from milliseconds to minutes.
pub const UPSTREAM_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters of the proxy.
pub struct ProxyMetrics {
    /// Responses by HTTP status code (100..=599), the proxy's own included;
    /// a status is rendered once seen.
    by_status: Vec<AtomicU64>,
    /// Tokens taken as reservations before forwarding.
    pub tokens_reserved: Counter,
    /// Tokens charged after the answer, beyond the reservation.
    pub tokens_charged: Counter,
    /// Tokens given back after the answer (unused, or the call failed).
    pub tokens_refunded: Counter,
    /// Refunds or charges that could not be applied (limiter unavailable).
    pub reconcile_errors: Counter,
    /// Time from sending to the upstream's response head.
    pub upstream_latency: Histogram,
    /// `llmtrace_proxy_tokens_total{op}`, the family of the token handles.
    tokens: Family<Label, Counter>,
    /// Refusals of limits in shadow mode (not enforced), by limit.
    shadow_refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let (tokens, [tokens_reserved, tokens_charged, tokens_refunded]) =
            counter_family("op", ["reserved", "charged", "refunded"]);
        ProxyMetrics {
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            tokens_reserved,
            tokens_charged,
            tokens_refunded,
            reconcile_errors: Counter::default(),
            upstream_latency: Histogram::new(UPSTREAM_BUCKETS),
            tokens,
            shadow_refused: Mutex::default(),
        }
    }
}

impl ProxyMetrics {
    pub fn count_status(&self, status: u16) {
        if let Some(c) = self.by_status.get(usize::from(status)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A limit in shadow mode would have refused.
    pub fn count_shadow_refused(&self, limit: Limit) {
        let mut counts = self
            .shadow_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *counts.entry(limit.as_str()).or_default() += 1;
    }

    /// Shadow refusals by limit, in name order.
    pub fn shadow_refusals(&self) -> Vec<([(&'static str, &'static str); 1], u64)> {
        let counts = self
            .shadow_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(l, n)| ([("limit", *l)], *n)).collect()
    }

    /// The statuses seen so far, in order, with their counts.
    fn statuses(&self) -> Vec<([(&'static str, usize); 1], u64)> {
        let seen = self.by_status.iter().map(|c| c.load(Relaxed)).enumerate();
        seen.filter(|(_, n)| *n > 0)
            .map(|(code, n)| ([("status", code)], n))
            .collect()
    }

    /// Registers the proxy's series.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_proxy_requests",
            "Proxied requests by response status",
            Scraped::counters(move || m.statuses()),
        );
        registry.register(
            "llmtrace_proxy_tokens",
            "Tokens reserved before forwarding, charged beyond and refunded after the answer",
            self.tokens.clone(),
        );
        registry.register(
            "llmtrace_proxy_reconcile_errors",
            "Refunds or charges not applied",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "llmtrace_proxy_upstream_latency_seconds",
            "Time to the upstream's response head",
            self.upstream_latency.clone(),
        );
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_shadow_refused",
            "Refusals of limits in shadow mode (decided and reported, not enforced), by limit",
            Scraped::counters(move || m.shadow_refusals()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_statuses_and_tokens() {
        let m = Arc::new(ProxyMetrics::default());
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.count_status(200);
        m.count_status(200);
        m.count_status(429);
        m.count_status(999);
        m.tokens_refunded.inc_by(7);
        m.count_shadow_refused(Limit::TOKENS);
        m.upstream_latency.observe(0.001);
        m.upstream_latency.observe(7.0);
        let text = llmtrace_actors::metrics::render(&registry);
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("# HELP")).collect();
        lines.sort_unstable();
        let mut want = vec![
            "# TYPE llmtrace_proxy_requests_total counter",
            "llmtrace_proxy_requests_total{status=\"200\"} 2",
            "llmtrace_proxy_requests_total{status=\"429\"} 1",
            "# TYPE llmtrace_proxy_tokens_total counter",
            "llmtrace_proxy_tokens_total{op=\"reserved\"} 0",
            "llmtrace_proxy_tokens_total{op=\"charged\"} 0",
            "llmtrace_proxy_tokens_total{op=\"refunded\"} 7",
            "# TYPE llmtrace_proxy_reconcile_errors_total counter",
            "llmtrace_proxy_reconcile_errors_total 0",
            "# TYPE llmtrace_proxy_upstream_latency_seconds histogram",
            // Slow LLM calls land in their own buckets, not only in +Inf.
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.001\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.0025\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.005\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.01\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.025\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.05\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.1\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.25\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.5\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"1\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"2.5\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"5\"} 1",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"10\"} 2",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"30\"} 2",
            "llmtrace_proxy_upstream_latency_seconds_bucket{le=\"+Inf\"} 2",
            "llmtrace_proxy_upstream_latency_seconds_sum 7.001",
            "llmtrace_proxy_upstream_latency_seconds_count 2",
            "# TYPE llmtrace_shadow_refused_total counter",
            "llmtrace_shadow_refused_total{limit=\"tokens\"} 1",
        ];
        want.sort_unstable();
        assert_eq!(lines, want, "{text}");
    }

    #[test]
    fn renders_the_requests_family_before_any_request() {
        let mut registry = Registry::default();
        Arc::new(ProxyMetrics::default()).register(&mut registry);
        let text = llmtrace_actors::metrics::render(&registry);
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            [
                "# TYPE llmtrace_proxy_requests_total counter",
                "# TYPE llmtrace_proxy_tokens_total counter",
                "# TYPE llmtrace_proxy_reconcile_errors_total counter",
                "# TYPE llmtrace_proxy_upstream_latency_seconds histogram",
                "# TYPE llmtrace_shadow_refused_total counter",
            ]
        );
    }
}
