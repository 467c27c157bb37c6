//! Metrics of this node's shards and checks: decisions, buckets in memory,
//! snapshots, restores, handoffs, check latency.
//!
//! Counters the shards bump on every check live in one cache-line-aligned
//! block per shard ([`ShardStats`]), so shards never write to the same line;
//! they are registered as sums over the shards, read at each scrape.
//! Everything is a relaxed atomic: metrics are observations, not
//! synchronisation.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use llmtrace_cluster_config::Limit;

use super::top_refused::{self, Summary, TopRefused};
use super::{latency_histogram, Counter, Histogram, Registry, Scraped};

/// Per-shard counters, one cache line pair each.
#[repr(align(128))]
#[derive(Default)]
pub struct ShardStats {
    /// Decisions by limit: [allowed, refused] per [`Limit::id`].
    pub decisions: Box<[[AtomicU64; 2]]>,
    /// Concurrency leases held, by [`Limit::id`].
    pub leases: Box<[AtomicI64]>,
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
    /// Buckets set aside after a fence lapse (taken back on their next
    /// check).
    pub set_aside: AtomicU64,
    /// The keys this shard refused most in the last minute.
    pub top_refused: TopRefused,
}

/// A counter of [`ShardStats`], summed over the shards as one series.
type ShardCounter = fn(&ShardStats) -> &AtomicU64;

/// The shard counters exposed as they are: name (without `_total`), help,
/// field.
const SHARD_COUNTERS: [(&str, &str, ShardCounter); 11] = [
    (
        "llmtrace_bucket_evictions",
        "Full buckets dropped from memory",
        |s| &s.evictions,
    ),
    (
        "llmtrace_snapshot_writes",
        "Snapshots written to the cache layer",
        |s| &s.snapshot_writes,
    ),
    (
        "llmtrace_snapshot_batches",
        "Snapshot batches (pipelines) written",
        |s| &s.snapshot_batches,
    ),
    (
        "llmtrace_snapshot_errors",
        "Snapshot batches that failed (retried with backoff)",
        |s| &s.snapshot_errors,
    ),
    (
        "llmtrace_restore_hits",
        "Restores that found a snapshot",
        |s| &s.restore_hits,
    ),
    (
        "llmtrace_restore_misses",
        "Restores that found no snapshot (bucket starts full)",
        |s| &s.restore_misses,
    ),
    (
        "llmtrace_handoffs_in",
        "Buckets handed over by their previous owner",
        |s| &s.handoffs_in,
    ),
    (
        "llmtrace_handoffs_out",
        "Buckets handed to their new owner",
        |s| &s.handoffs_out,
    ),
    (
        "llmtrace_handoff_errors",
        "Handoff pulls that failed (restored from the cache layer instead)",
        |s| &s.handoff_errors,
    ),
    (
        "llmtrace_restore_errors",
        "Restores that failed (bucket starts full)",
        |s| &s.restore_errors,
    ),
    (
        "llmtrace_buckets_set_aside",
        "Buckets set aside after this node's view went stale (a pause, a partition): \
         each is taken back from its current holder or the cache layer",
        |s| &s.set_aside,
    ),
];

/// Metrics of this node's shards and checks.
pub struct Metrics {
    pub shards: Vec<ShardStats>,
    /// The limits of the node's configuration (the labels of per-limit
    /// series; never keys).
    limits: Vec<Limit>,
    /// Checks allowed without a bucket (limiting disabled or rate 0).
    pub unlimited: AtomicU64,
    /// Requests refused as invalid input, before any bucket was touched.
    pub invalid_requests: Counter,
    /// Latency of `POST /v1/check` handling, from parsed body to decision.
    pub check_latency: Histogram,
}

impl Metrics {
    /// Metrics of `shards` shards counting decisions of `limits`.
    pub fn new(shards: usize, limits: Vec<Limit>) -> Self {
        let ids = limits.iter().map(|l| l.id() + 1).max().unwrap_or(0);
        let stats = || ShardStats {
            decisions: (0..ids).map(|_| Default::default()).collect(),
            leases: (0..ids).map(|_| Default::default()).collect(),
            ..ShardStats::default()
        };
        Metrics {
            shards: (0..shards).map(|_| stats()).collect(),
            limits,
            unlimited: AtomicU64::new(0),
            invalid_requests: Counter::default(),
            check_latency: latency_histogram(),
        }
    }

    /// The sum over the shards of one of their counters.
    pub fn total(&self, counter: impl Fn(&ShardStats) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| counter(s).load(Relaxed)).sum()
    }

    /// Buckets resident in memory across all shards.
    pub fn resident(&self) -> i64 {
        self.shards.iter().map(|s| s.resident.load(Relaxed)).sum()
    }

    /// Buckets changed since their last snapshot, across all shards.
    pub fn dirty(&self) -> i64 {
        self.shards.iter().map(|s| s.dirty.load(Relaxed)).sum()
    }

    /// The most refused keys of this node's shards in the last 30 to 60 s
    /// at `now_ns` (one merge of every shard's windows).
    pub fn top_refused(&self, now_ns: u64) -> Summary {
        let parts: Vec<Summary> = self
            .shards
            .iter()
            .flat_map(|s| s.top_refused.summaries(now_ns))
            .collect();
        top_refused::merge(&parts, top_refused::K)
    }

    /// A take of `limit` this node allowed from a token lease (no shard
    /// decided it): counted with the decisions, in the first shard's block.
    pub fn count_leased(&self, limit: Limit) {
        let counts = self
            .shards
            .first()
            .and_then(|s| s.decisions.get(limit.id()));
        if let Some(counts) = counts {
            counts[0].fetch_add(1, Relaxed);
        }
    }

    /// `llmtrace_checks_total`: decisions by limit, then the unlimited ones.
    fn decisions(&self) -> Vec<([(&'static str, &'static str); 2], u64)> {
        let mut out = Vec::with_capacity(2 * self.limits.len() + 1);
        for limit in &self.limits {
            let i = limit.id();
            for (j, decision) in ["allowed", "refused"].into_iter().enumerate() {
                let v = self.total(|s| &s.decisions[i][j]);
                out.push(([("limit", limit.as_str()), ("decision", decision)], v));
            }
        }
        let unlimited = self.unlimited.load(Relaxed);
        out.push(([("limit", "any"), ("decision", "unlimited")], unlimited));
        out
    }

    /// `llmtrace_leases_held`: leases of concurrency limits held now (as
    /// of the last look at each bucket: expired leases leave at the next
    /// check or sweep, within a second), by limit.
    fn leases(&self) -> Vec<([(&'static str, &'static str); 1], i64)> {
        self.limits
            .iter()
            .map(|limit| {
                let i = limit.id();
                let held = self.shards.iter().map(|s| s.leases[i].load(Relaxed)).sum();
                ([("limit", limit.as_str())], held)
            })
            .collect()
    }

    /// Registers this node's series; `cache` names the cache layer in use.
    pub fn register(self: &Arc<Self>, registry: &mut Registry, cache: &'static str) {
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_checks",
            "Checks answered, by limit and decision",
            Scraped::counters(move || m.decisions()),
        );
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_leases_held",
            "Leases of concurrency limits held on this node's shards, by limit",
            Scraped::gauges(move || m.leases()),
        );
        registry.register(
            "llmtrace_invalid_requests",
            "Requests refused as invalid input",
            self.invalid_requests.clone(),
        );
        registry.register(
            "llmtrace_check_duration_seconds",
            "Time to decide one check",
            self.check_latency.clone(),
        );
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_buckets_resident",
            "Buckets held in memory (full buckets are dropped)",
            Scraped::gauge(move || m.resident()),
        );
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_snapshot_dirty",
            "Buckets changed since their last snapshot",
            Scraped::gauge(move || m.dirty()),
        );
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_snapshot_lag_seconds",
            "Age of the oldest change in the last snapshot batch",
            Scraped::gauge(move || {
                let lag_ms = m.shards.iter().map(|s| s.snapshot_lag_ms.load(Relaxed));
                lag_ms.max().unwrap_or(0) as f64 / 1e3
            }),
        );
        for (name, help, counter) in SHARD_COUNTERS {
            let m = Arc::clone(self);
            registry.register(name, help, Scraped::counter(move || m.total(counter)));
        }
        registry.register(
            "llmtrace_cache_info",
            "The cache layer in use",
            Scraped::info("layer", move || cache.to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{check, render};

    #[test]
    fn renders_sums_over_the_shards() {
        let m = Arc::new(Metrics::new(2, vec![Limit::REQUESTS, Limit::TOKENS]));
        let mut registry = Registry::default();
        m.register(&mut registry, "memory");
        m.shards[0].decisions[0][0].fetch_add(2, Relaxed);
        m.shards[1].decisions[0][0].fetch_add(8, Relaxed);
        m.shards[1].decisions[1][1].fetch_add(1, Relaxed);
        m.unlimited.fetch_add(3, Relaxed);
        m.invalid_requests.inc();
        m.shards[0].resident.fetch_add(6, Relaxed);
        m.shards[1].resident.fetch_add(4, Relaxed);
        m.shards[1].dirty.fetch_add(2, Relaxed);
        m.shards[0].snapshot_lag_ms.store(250, Relaxed);
        m.shards[1].snapshot_lag_ms.store(1500, Relaxed);
        m.shards[0].restore_hits.fetch_add(1, Relaxed);
        m.shards[1].handoff_errors.fetch_add(7, Relaxed);
        m.shards[0].leases[Limit::TOKENS.id()].fetch_add(2, Relaxed);
        m.check_latency.observe(0.000_03);
        let text = render(&registry);
        check::has_lines(
            &text,
            &[
                "llmtrace_checks_total{limit=\"requests\",decision=\"allowed\"} 10",
                "llmtrace_checks_total{limit=\"requests\",decision=\"refused\"} 0",
                "llmtrace_checks_total{limit=\"tokens\",decision=\"allowed\"} 0",
                "llmtrace_checks_total{limit=\"tokens\",decision=\"refused\"} 1",
                "llmtrace_checks_total{limit=\"any\",decision=\"unlimited\"} 3",
                "llmtrace_leases_held{limit=\"requests\"} 0",
                "llmtrace_leases_held{limit=\"tokens\"} 2",
                "llmtrace_invalid_requests_total 1",
                "llmtrace_check_duration_seconds_bucket{le=\"0.000025\"} 0",
                "llmtrace_check_duration_seconds_bucket{le=\"0.00005\"} 1",
                "llmtrace_check_duration_seconds_count 1",
                "llmtrace_buckets_resident 10",
                "llmtrace_snapshot_dirty 2",
                "llmtrace_snapshot_lag_seconds 1.5",
                "llmtrace_restore_hits_total 1",
                "llmtrace_restore_misses_total 0",
                "llmtrace_handoff_errors_total 7",
                "llmtrace_cache_info{layer=\"memory\"} 1",
            ],
        );
        assert_eq!(
            check::types(&text),
            [
                "# TYPE llmtrace_checks_total counter",
                "# TYPE llmtrace_leases_held gauge",
                "# TYPE llmtrace_invalid_requests_total counter",
                "# TYPE llmtrace_check_duration_seconds histogram",
                "# TYPE llmtrace_buckets_resident gauge",
                "# TYPE llmtrace_snapshot_dirty gauge",
                "# TYPE llmtrace_snapshot_lag_seconds gauge",
                "# TYPE llmtrace_bucket_evictions_total counter",
                "# TYPE llmtrace_snapshot_writes_total counter",
                "# TYPE llmtrace_snapshot_batches_total counter",
                "# TYPE llmtrace_snapshot_errors_total counter",
                "# TYPE llmtrace_restore_hits_total counter",
                "# TYPE llmtrace_restore_misses_total counter",
                "# TYPE llmtrace_handoffs_in_total counter",
                "# TYPE llmtrace_handoffs_out_total counter",
                "# TYPE llmtrace_handoff_errors_total counter",
                "# TYPE llmtrace_restore_errors_total counter",
                "# TYPE llmtrace_buckets_set_aside_total counter",
                "# TYPE llmtrace_cache_info gauge",
            ]
        );
    }
}
