//! Prometheus metrics of the proxy listener: proxied requests by status,
//! tokens reserved / charged / refunded, upstream latency (time to the
//! response head).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the upstream-latency histogram: LLM calls take
/// from milliseconds to minutes.
pub const UPSTREAM_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram over [`UPSTREAM_BUCKETS`].
#[derive(Default)]
pub struct UpstreamHistogram {
    counts: [AtomicU64; UPSTREAM_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl UpstreamHistogram {
    pub fn observe_ns(&self, ns: u64) {
        let secs = ns as f64 / 1e9;
        if let Some(i) = UPSTREAM_BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn render(&self, o: &mut String, name: &str) {
        let mut cumulative = 0;
        for (b, c) in UPSTREAM_BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(o, "{name}_sum {}", self.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(o, "{name}_count {count}");
    }
}

/// Counters of the proxy; relaxed atomics, summed at render time.
pub struct ProxyMetrics {
    /// Responses by HTTP status code (100..=599), the proxy's own included.
    by_status: Vec<AtomicU64>,
    /// Tokens taken as reservations before forwarding.
    pub tokens_reserved: AtomicU64,
    /// Tokens charged after the answer, beyond the reservation.
    pub tokens_charged: AtomicU64,
    /// Tokens given back after the answer (unused, or the call failed).
    pub tokens_refunded: AtomicU64,
    /// Refunds or charges that could not be applied (limiter unavailable).
    pub reconcile_errors: AtomicU64,
    /// Time from sending to the upstream's response head.
    pub upstream_latency: UpstreamHistogram,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics {
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            tokens_reserved: AtomicU64::new(0),
            tokens_charged: AtomicU64::new(0),
            tokens_refunded: AtomicU64::new(0),
            reconcile_errors: AtomicU64::new(0),
            upstream_latency: UpstreamHistogram::default(),
        }
    }
}

impl ProxyMetrics {
    pub fn count_status(&self, status: u16) {
        if let Some(c) = self.by_status.get(usize::from(status)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Appends the Prometheus text.
    pub fn render(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "# HELP llmtrace_proxy_requests_total Proxied requests by response status.\n\
             # TYPE llmtrace_proxy_requests_total counter"
        );
        for (code, c) in self.by_status.iter().enumerate() {
            let n = c.load(Relaxed);
            if n > 0 {
                let _ = writeln!(o, "llmtrace_proxy_requests_total{{status=\"{code}\"}} {n}");
            }
        }
        let _ = writeln!(
            o,
            "# HELP llmtrace_proxy_tokens_total Tokens reserved before forwarding, charged \
             beyond and refunded after the answer.\n# TYPE llmtrace_proxy_tokens_total counter"
        );
        for (op, c) in [
            ("reserved", &self.tokens_reserved),
            ("charged", &self.tokens_charged),
            ("refunded", &self.tokens_refunded),
        ] {
            let _ = writeln!(
                o,
                "llmtrace_proxy_tokens_total{{op=\"{op}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP llmtrace_proxy_reconcile_errors_total Refunds or charges not applied.\n\
             # TYPE llmtrace_proxy_reconcile_errors_total counter\n\
             llmtrace_proxy_reconcile_errors_total {}",
            self.reconcile_errors.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP llmtrace_proxy_upstream_latency_seconds Time to the upstream's response head.\n\
             # TYPE llmtrace_proxy_upstream_latency_seconds histogram"
        );
        self.upstream_latency
            .render(o, "llmtrace_proxy_upstream_latency_seconds");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_statuses_and_tokens() {
        let m = ProxyMetrics::default();
        m.count_status(200);
        m.count_status(200);
        m.count_status(429);
        m.count_status(999);
        m.tokens_refunded.fetch_add(7, Relaxed);
        m.upstream_latency.observe_ns(1_000_000);
        m.upstream_latency.observe_ns(7_000_000_000);
        let mut o = String::new();
        m.render(&mut o);
        assert!(
            o.contains("llmtrace_proxy_requests_total{status=\"200\"} 2\n"),
            "{o}"
        );
        assert!(o.contains("llmtrace_proxy_requests_total{status=\"429\"} 1\n"));
        assert!(!o.contains("status=\"999\""));
        assert!(o.contains("llmtrace_proxy_tokens_total{op=\"refunded\"} 7\n"));
        assert!(o.contains("llmtrace_proxy_upstream_latency_seconds_count 2\n"));
        // Slow LLM calls land in their own buckets, not only in +Inf.
        assert!(o.contains("llmtrace_proxy_upstream_latency_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(o.contains("llmtrace_proxy_upstream_latency_seconds_bucket{le=\"5\"} 1\n"));
        assert!(o.contains("llmtrace_proxy_upstream_latency_seconds_bucket{le=\"10\"} 2\n"));
    }
}
