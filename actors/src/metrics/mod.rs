//! Prometheus metrics of a node: one [`Registry`] (from `prometheus-client`,
//! the Prometheus project's Rust client) in which every part registers its
//! series once, at start, and [`render`], the one text rendering of
//! `GET /metrics`.
//!
//! Code on the hot path holds handles created at registration (a
//! [`Counter`], a [`Histogram`], a shard's own [`ShardStats`]) and never looks
//! a label set up. Values kept elsewhere (per-shard counters, the size of a
//! map, the ring's fingerprint) are [`Scraped`]: read when the registry is
//! encoded.
//!
//! - [`local`]: this node's shards and checks ([`Metrics`]).
//! - [`cluster`]: membership, routing and forwarding ([`ClusterMetrics`]).
//! - [`cache`]: round trips of the Redis cache layer.
//! - [`top_refused`]: the most refused keys of the last minute (keys are
//!   never labels; they are listed there only, at most `K` of them).

pub mod cache;
pub mod cluster;
pub mod local;
pub mod top_refused;

use std::fmt::{self, Write as _};

use prometheus_client::encoding::{
    prometheus_text, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

pub use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
pub use prometheus_client::registry::Registry;

pub use self::cluster::ClusterMetrics;
pub use self::local::{Metrics, ShardStats};

/// The `Content-Type` of `GET /metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Upper bounds (seconds) of the latency histograms of checks, forwards and
/// Redis calls.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0015, 0.002, 0.002_5, 0.003, 0.004,
    0.005, 0.01, 0.025, 0.1, 1.0,
];

/// A histogram over [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A one-label set, e.g. `policy="local"`.
pub type Label = [(&'static str, &'static str); 1];

/// A counter family of one label and a handle of each of its `values`,
/// created now so that counting never looks a label set up.
pub fn counter_family<const N: usize>(
    label: &'static str,
    values: [&'static str; N],
) -> (Family<Label, Counter>, [Counter; N]) {
    let family = Family::<Label, Counter>::default();
    let handles = values.map(|v| family.get_or_create_owned(&[(label, v)]));
    (family, handles)
}

/// Renders every series of `registry` in the Prometheus text format 0.0.4.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 * 1024);
    // Writing into a String does not fail, nor does any metric registered
    // here; a failure would leave the page cut short, and logged.
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        tracing::error!("encoding the metrics failed: {e}");
    }
    decimal_bounds(&text)
}

/// prometheus-client writes a histogram bound below 1e-4 as Go does
/// (`le="2.5e-05"`); this node has always written it in plain decimal
/// (`le="0.000025"`), and a bound is part of a series' identity: rewrites
/// every `le` value written with an exponent in plain decimal.
fn decimal_bounds(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("le=\"") {
        let start = at + "le=\"".len();
        let (head, tail) = rest.split_at(start);
        out.push_str(head);
        let end = tail.find('"').unwrap_or(tail.len());
        let bound = &tail[..end];
        let is_label = matches!(head.as_bytes()[..at].last(), Some(b'{' | b','));
        match bound.parse::<f64>() {
            Ok(v) if is_label && bound.contains('e') => {
                let _ = write!(out, "{v}");
            }
            _ => out.push_str(bound),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

type Encode = dyn Fn(&mut MetricEncoder) -> fmt::Result + Send + Sync;

/// A metric whose values are read when the registry is encoded: for values
/// kept elsewhere (the shards' own counters, summed; the size of a map; the
/// ring's fingerprint).
pub struct Scraped {
    kind: MetricType,
    encode: Box<Encode>,
}

impl Scraped {
    /// A counter without labels.
    pub fn counter(read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self::new(MetricType::Counter, move |e| {
            e.encode_counter::<NoLabelSet, _, u64>(&read(), None)
        })
    }

    /// Counters, one per label set, in the order `read` gives them.
    pub fn counters<L: EncodeLabelSet>(
        read: impl Fn() -> Vec<(L, u64)> + Send + Sync + 'static,
    ) -> Self {
        Self::new(MetricType::Counter, move |e| {
            for (labels, v) in read() {
                e.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
            Ok(())
        })
    }

    /// A gauge without labels.
    pub fn gauge<V: EncodeGaugeValue>(read: impl Fn() -> V + Send + Sync + 'static) -> Self {
        Self::new(MetricType::Gauge, move |e| e.encode_gauge(&read()))
    }

    /// Gauges by label set.
    pub fn gauges<L: EncodeLabelSet>(
        read: impl Fn() -> Vec<(L, i64)> + Send + Sync + 'static,
    ) -> Self {
        Self::new(MetricType::Gauge, move |e| {
            for (labels, v) in read() {
                e.encode_family(&labels)?.encode_gauge(&v)?;
            }
            Ok(())
        })
    }

    /// A gauge of 1 whose `label` says what is in use (an `_info` series).
    pub fn info(label: &'static str, read: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self::new(MetricType::Gauge, move |e| {
            e.encode_family(&[(label, read())])?.encode_gauge(&1i64)
        })
    }

    fn new(
        kind: MetricType,
        encode: impl Fn(&mut MetricEncoder) -> fmt::Result + Send + Sync + 'static,
    ) -> Self {
        Scraped {
            kind,
            encode: Box::new(encode),
        }
    }
}

impl EncodeMetric for Scraped {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        (self.encode)(&mut encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped")
            .field("kind", &self.kind.as_str())
            .finish()
    }
}

/// Exact-line checks of a metrics page for the tests of each part.
#[cfg(test)]
pub(crate) mod check {
    /// Fails unless each of `want` is a whole line of `text` (so that `1`
    /// and `10` are told apart; series of a family come in no fixed order).
    pub fn has_lines(text: &str, want: &[&str]) {
        let lines: std::collections::HashSet<&str> = text.lines().collect();
        for w in want {
            assert!(lines.contains(w), "missing line {w}\n{text}");
        }
    }

    /// The `# TYPE` lines of a page, in order.
    pub fn types(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with("# TYPE ")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_decimal_bounds() {
        let mut registry = Registry::default();
        let (family, [a, b]) = counter_family("route", ["local", "forwarded"]);
        registry.register("llmtrace_routed_checks", "Checks by route", family);
        let h = latency_histogram();
        registry.register("llmtrace_check_duration_seconds", "Time", h.clone());
        registry.register("llmtrace_count", "A sum", Scraped::counter(|| 10));
        registry.register("llmtrace_level", "A level", Scraped::gauge(|| -1i64));
        registry.register(
            "llmtrace_cache_info",
            "In use",
            Scraped::info("layer", || "memory".to_string()),
        );
        a.inc();
        b.inc_by(10);
        h.observe(0.000_03);
        h.observe(2.0);
        let text = render(&registry);
        let mut want = vec![
            "# HELP llmtrace_routed_checks_total Checks by route.",
            "# TYPE llmtrace_routed_checks_total counter",
            "llmtrace_routed_checks_total{route=\"local\"} 1",
            "llmtrace_routed_checks_total{route=\"forwarded\"} 10",
            "# HELP llmtrace_check_duration_seconds Time.",
            "# TYPE llmtrace_check_duration_seconds histogram",
            "llmtrace_check_duration_seconds_bucket{le=\"0.000025\"} 0",
            "llmtrace_check_duration_seconds_bucket{le=\"0.00005\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.0001\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.00025\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.0005\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.001\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.0015\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.002\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.0025\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.003\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.004\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.005\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.01\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.025\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"0.1\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"1\"} 1",
            "llmtrace_check_duration_seconds_bucket{le=\"+Inf\"} 2",
            "llmtrace_check_duration_seconds_sum 2.00003",
            "llmtrace_check_duration_seconds_count 2",
            "# HELP llmtrace_count_total A sum.",
            "# TYPE llmtrace_count_total counter",
            "llmtrace_count_total 10",
            "# HELP llmtrace_level A level.",
            "# TYPE llmtrace_level gauge",
            "llmtrace_level -1",
            "# HELP llmtrace_cache_info In use.",
            "# TYPE llmtrace_cache_info gauge",
            "llmtrace_cache_info{layer=\"memory\"} 1",
        ];
        want.sort_unstable();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, want, "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn only_exponent_bounds_are_rewritten() {
        let text = "a_bucket{op=\"x\",le=\"2.5e-05\"} 1\n\
                    a_bucket{le=\"1e+06\"} 2\n\
                    a_bucket{le=\"+Inf\"} 3\n\
                    rule{name=\"x\",rule=\"2e-05\"} 1\n";
        assert_eq!(
            decimal_bounds(text),
            "a_bucket{op=\"x\",le=\"0.000025\"} 1\n\
             a_bucket{le=\"1000000\"} 2\n\
             a_bucket{le=\"+Inf\"} 3\n\
             rule{name=\"x\",rule=\"2e-05\"} 1\n"
        );
    }
}
