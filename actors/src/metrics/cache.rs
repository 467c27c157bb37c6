//! Round trips of the Redis cache layer: the histograms a
//! [`RedisCacheLayer`](crate::RedisCacheLayer) observes, registered by whoever
//! builds it (the cache layer itself knows nothing of Prometheus).

use super::{latency_histogram, Family, Histogram, Label, Registry};
use crate::cache::RedisLatency;

/// Registers `llmtrace_redis_duration_seconds{op="restore"|"store"}` and
/// answers the handles to build the Redis layer with.
pub fn register_redis(registry: &mut Registry) -> RedisLatency {
    let family =
        Family::<Label, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
    let latency = RedisLatency {
        restore: family.get_or_create_owned(&[("op", "restore")]),
        store: family.get_or_create_owned(&[("op", "store")]),
    };
    registry.register(
        "llmtrace_redis_duration_seconds",
        "Round trip of Redis calls: restore (GET) and store (one pipelined snapshot batch)",
        family,
    );
    latency
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{check, render};

    #[test]
    fn renders_both_operations() {
        let mut registry = Registry::default();
        let latency = register_redis(&mut registry);
        latency.restore.observe(0.000_2);
        latency.store.observe(0.5);
        latency.store.observe(5.0);
        let text = render(&registry);
        check::has_lines(
            &text,
            &[
                "# TYPE llmtrace_redis_duration_seconds histogram",
                "llmtrace_redis_duration_seconds_bucket{op=\"restore\",le=\"0.0001\"} 0",
                "llmtrace_redis_duration_seconds_bucket{op=\"restore\",le=\"0.00025\"} 1",
                "llmtrace_redis_duration_seconds_count{op=\"restore\"} 1",
                "llmtrace_redis_duration_seconds_bucket{op=\"store\",le=\"0.000025\"} 0",
                "llmtrace_redis_duration_seconds_bucket{op=\"store\",le=\"1\"} 1",
                "llmtrace_redis_duration_seconds_bucket{op=\"store\",le=\"+Inf\"} 2",
                "llmtrace_redis_duration_seconds_sum{op=\"store\"} 5.5",
                "llmtrace_redis_duration_seconds_count{op=\"store\"} 2",
            ],
        );
    }
}
