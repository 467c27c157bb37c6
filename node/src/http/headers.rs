//! Rate-limit response headers: the IETF httpapi draft fields
//! (`RateLimit-Policy`, `RateLimit`) and OpenAI's `x-ratelimit-*`.

use actix_web::http::header::HeaderValue;
use actix_web::HttpResponseBuilder;
use llmtrace_actors::{BucketQuota, NANOS};
use llmtrace_cluster_config::Limit;

/// What the headers describe: one named limit's state after a check.
pub struct LimitState {
    pub limit: Limit,
    pub quota: BucketQuota,
    pub remaining: u64,
    pub reset_after_ns: u64,
}

/// OpenAI's header names of a limit (static: no allocation per response).
pub fn openai_names(limit: Limit) -> Option<[&'static str; 3]> {
    if limit == Limit::REQUESTS {
        Some([
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ])
    } else if limit == Limit::TOKENS {
        Some([
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ])
    } else {
        None
    }
}

/// Seconds, rounded up.
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NANOS)
}

/// OpenAI's duration format: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn openai_duration(ns: u64) -> String {
    let ms = ns.div_ceil(1_000_000);
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let secs = if rest % 1_000 == 0 {
        format!("{}s", rest / 1_000)
    } else {
        let s = format!("{}.{:03}", rest / 1_000, rest % 1_000);
        format!("{}s", s.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// Adds the rate-limit headers of `state` to a response.
pub fn insert(builder: &mut HttpResponseBuilder, state: &LimitState) {
    let burst = state.quota.capacity_units();
    // The policy's window: the time a drained bucket takes to refill, or a
    // quota's period.
    let window = state.quota.window_secs();
    let name = state.limit.as_str();
    builder.insert_header((
        "RateLimit-Policy",
        format!("\"{name}\";q={burst};w={window}"),
    ));
    builder.insert_header((
        "RateLimit",
        format!(
            "\"{name}\";r={};t={}",
            state.remaining,
            ceil_secs(state.reset_after_ns)
        ),
    ));
    if let Some([limit, remaining, reset]) = openai_names(state.limit) {
        builder.insert_header((limit, HeaderValue::from(burst)));
        builder.insert_header((remaining, HeaderValue::from(state.remaining)));
        builder.insert_header((reset, openai_duration(state.reset_after_ns)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_durations() {
        let ms = 1_000_000;
        assert_eq!(openai_duration(0), "0ms");
        assert_eq!(openai_duration(17 * ms), "17ms");
        assert_eq!(openai_duration(1_000 * ms), "1s");
        assert_eq!(openai_duration(1_500 * ms), "1.5s");
        assert_eq!(openai_duration(360_000 * ms), "6m0s");
        assert_eq!(openai_duration(3_723_000 * ms), "1h2m3s");
    }
}
