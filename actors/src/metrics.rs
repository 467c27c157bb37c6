//! Prometheus metrics of a node, rendered in the text exposition format.
//!
//! Counters the shards bump on every check live in one cache-line-aligned
//! block per shard, so shards never write to the same line; the renderer sums
//! them. Everything is a relaxed atomic: metrics are observations, not
//! synchronisation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use llmtrace_cluster_config::Limit;

/// Upper bounds (seconds) of the check-latency histogram.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0015, 0.002, 0.002_5, 0.003, 0.004,
    0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Per-shard counters, one cache line pair each.
#[repr(align(128))]
#[derive(Default)]
pub struct ShardStats {
    /// Decisions by limit: [allowed, refused] per `Limit::ALL` index.
    pub decisions: [[AtomicU64; 2]; Limit::ALL.len()],
    /// Buckets held in memory.
    pub resident: AtomicI64,
    /// Buckets marked dirty and not yet written.
    pub dirty: AtomicI64,
    /// Full buckets dropped from memory.
    pub evictions: AtomicU64,
    /// Restores that found a snapshot / found none / failed.
    pub restore_hits: AtomicU64,
    pub restore_misses: AtomicU64,
    pub restore_errors: AtomicU64,
    /// Snapshots written / batches written / batches failed.
    pub snapshot_writes: AtomicU64,
    pub snapshot_batches: AtomicU64,
    pub snapshot_errors: AtomicU64,
    /// Age of the oldest unwritten change when the last batch started (ms).
    pub snapshot_lag_ms: AtomicU64,
    /// Buckets received from / given to another node on a ownership move,
    /// and pulls that failed (the cache layer was used instead).
    pub handoffs_in: AtomicU64,
    pub handoffs_out: AtomicU64,
    pub handoff_errors: AtomicU64,
}

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe_ns(&self, ns: u64) {
        let secs = ns as f64 / 1e9;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let trimmed = labels.trim_end_matches(',');
        let braces = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{{{trimmed}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// All metrics of a node.
pub struct Metrics {
    pub shards: Vec<ShardStats>,
    /// Checks allowed without a bucket (limiting disabled or rate 0).
    pub unlimited: AtomicU64,
    /// Requests refused as invalid input, before any bucket was touched.
    pub invalid_requests: AtomicU64,
    /// Latency of `POST /v1/check` handling, from parsed body to decision.
    pub check_latency: Histogram,
}

impl Metrics {
    pub fn new(shards: usize) -> Self {
        Metrics {
            shards: (0..shards).map(|_| ShardStats::default()).collect(),
            unlimited: AtomicU64::new(0),
            invalid_requests: AtomicU64::new(0),
            check_latency: Histogram::default(),
        }
    }

    fn sum(&self, f: impl Fn(&ShardStats) -> u64) -> u64 {
        self.shards.iter().map(f).sum()
    }

    /// Buckets resident in memory across all shards.
    pub fn resident(&self) -> i64 {
        self.shards.iter().map(|s| s.resident.load(Relaxed)).sum()
    }

    /// Renders the Prometheus text format.
    pub fn render(&self, cache: &str) -> String {
        let mut o = String::with_capacity(4096);
        let h = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        h(
            &mut o,
            "llmtrace_checks_total",
            "counter",
            "Checks answered, by limit and decision.",
        );
        for (i, limit) in Limit::ALL.iter().enumerate() {
            for (j, decision) in ["allowed", "refused"].iter().enumerate() {
                let v = self.sum(|s| s.decisions[i][j].load(Relaxed));
                let _ = writeln!(
                    o,
                    "llmtrace_checks_total{{limit=\"{limit}\",decision=\"{decision}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            o,
            "llmtrace_checks_total{{limit=\"any\",decision=\"unlimited\"}} {}",
            self.unlimited.load(Relaxed)
        );
        h(
            &mut o,
            "llmtrace_invalid_requests_total",
            "counter",
            "Requests refused as invalid input.",
        );
        let _ = writeln!(
            o,
            "llmtrace_invalid_requests_total {}",
            self.invalid_requests.load(Relaxed)
        );
        h(
            &mut o,
            "llmtrace_check_duration_seconds",
            "histogram",
            "Time to decide one check.",
        );
        self.check_latency
            .render(&mut o, "llmtrace_check_duration_seconds", "");
        let gauges: [(&str, &str, i64); 2] = [
            (
                "llmtrace_buckets_resident",
                "Buckets held in memory (full buckets are dropped).",
                self.resident(),
            ),
            (
                "llmtrace_snapshot_dirty",
                "Buckets changed since their last snapshot.",
                self.shards.iter().map(|s| s.dirty.load(Relaxed)).sum(),
            ),
        ];
        for (name, help, v) in gauges {
            h(&mut o, name, "gauge", help);
            let _ = writeln!(o, "{name} {v}");
        }
        let lag = self
            .shards
            .iter()
            .map(|s| s.snapshot_lag_ms.load(Relaxed))
            .max()
            .unwrap_or(0);
        h(
            &mut o,
            "llmtrace_snapshot_lag_seconds",
            "gauge",
            "Age of the oldest change in the last snapshot batch.",
        );
        let _ = writeln!(o, "llmtrace_snapshot_lag_seconds {}", lag as f64 / 1e3);
        let counters: [(&str, &str, u64); 10] = [
            (
                "llmtrace_bucket_evictions_total",
                "Full buckets dropped from memory.",
                self.sum(|s| s.evictions.load(Relaxed)),
            ),
            (
                "llmtrace_snapshot_writes_total",
                "Snapshots written to the cache layer.",
                self.sum(|s| s.snapshot_writes.load(Relaxed)),
            ),
            (
                "llmtrace_snapshot_batches_total",
                "Snapshot batches (pipelines) written.",
                self.sum(|s| s.snapshot_batches.load(Relaxed)),
            ),
            (
                "llmtrace_snapshot_errors_total",
                "Snapshot batches that failed (retried with backoff).",
                self.sum(|s| s.snapshot_errors.load(Relaxed)),
            ),
            (
                "llmtrace_restore_hits_total",
                "Restores that found a snapshot.",
                self.sum(|s| s.restore_hits.load(Relaxed)),
            ),
            (
                "llmtrace_restore_misses_total",
                "Restores that found no snapshot (bucket starts full).",
                self.sum(|s| s.restore_misses.load(Relaxed)),
            ),
            (
                "llmtrace_handoffs_in_total",
                "Buckets handed over by their previous owner.",
                self.sum(|s| s.handoffs_in.load(Relaxed)),
            ),
            (
                "llmtrace_handoffs_out_total",
                "Buckets handed to their new owner.",
                self.sum(|s| s.handoffs_out.load(Relaxed)),
            ),
            (
                "llmtrace_handoff_errors_total",
                "Handoff pulls that failed (restored from the cache layer instead).",
                self.sum(|s| s.handoff_errors.load(Relaxed)),
            ),
            (
                "llmtrace_restore_errors_total",
                "Restores that failed (bucket starts full).",
                self.sum(|s| s.restore_errors.load(Relaxed)),
            ),
        ];
        for (name, help, v) in counters {
            h(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        h(
            &mut o,
            "llmtrace_cache_info",
            "gauge",
            "The cache layer in use.",
        );
        let _ = writeln!(o, "llmtrace_cache_info{{layer=\"{cache}\"}} 1");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_and_histogram() {
        let m = Metrics::new(2);
        m.shards[0].decisions[0][0].fetch_add(2, Relaxed);
        m.shards[1].decisions[0][0].fetch_add(3, Relaxed);
        m.shards[1].resident.fetch_add(4, Relaxed);
        m.check_latency.observe_ns(30_000);
        let text = m.render("memory");
        assert!(text.contains("llmtrace_checks_total{limit=\"requests\",decision=\"allowed\"} 5"));
        assert!(text.contains("llmtrace_buckets_resident 4"));
        assert!(text.contains("llmtrace_check_duration_seconds_bucket{le=\"0.000025\"} 0"));
        assert!(text.contains("llmtrace_check_duration_seconds_bucket{le=\"0.00005\"} 1"));
        assert!(text.contains("llmtrace_check_duration_seconds_count 1"));
    }
}
