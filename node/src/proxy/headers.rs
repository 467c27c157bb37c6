//! Headers of proxied calls: hop-by-hop fields are dropped both ways
//! (RFC 9110 section 7.6.1: `Connection` and every field it names,
//! `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`, `Upgrade`,
//! plus the proxy's own `Proxy-Authorization`/`Proxy-Authenticate`); the
//! tenant, team and org headers are not forwarded; answers carry OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, or on
//! Anthropic's API `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`
//! (reset: the RFC 3339 time the bucket is full again).

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder};
use llmtrace_actors::{BucketQuota, Decision};
use llmtrace_cluster_config::Limit;

use super::errors::{Dialect, ProxyError};
use super::keys::{ORG_HEADER, TEAM_HEADER};
use super::tenant::TENANT_HEADER;
use crate::http::headers::{openai_duration, openai_names};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The fields a `Connection` header names (lower-cased); usually none.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    let mut named = Vec::new();
    for v in headers.get_all("connection") {
        if let Ok(v) = v.to_str() {
            named.extend(
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty() && t != "keep-alive" && t != "close"),
            );
        }
    }
    named
}

/// True when `name` must not be copied: hop-by-hop, named by
/// `Connection`, or in `extra`.
fn skip(name: &str, named: &[String], extra: &[&str]) -> bool {
    HOP_BY_HOP.contains(&name) || extra.contains(&name) || named.iter().any(|n| n == name)
}

/// Copies a client's request headers to the upstream request. `Host` and
/// `Content-Length` are set by the client library; token-accounted calls ask
/// for an unencoded answer (its `usage` must be readable).
pub fn copy_request(from: &HeaderMap, to: &mut HeaderMap, identity: bool) {
    let named = connection_named(from);
    let extra = [
        "host",
        "content-length",
        TENANT_HEADER,
        TEAM_HEADER,
        ORG_HEADER,
        "accept-encoding",
    ];
    for (name, value) in from.iter() {
        if !skip(name.as_str(), &named, &extra) {
            to.append(name.clone(), value.clone());
        }
    }
    if identity {
        to.insert(
            HeaderName::from_static("accept-encoding"),
            HeaderValue::from_static("identity"),
        );
    } else if let Some(v) = from.get("accept-encoding") {
        to.insert(HeaderName::from_static("accept-encoding"), v.clone());
    }
}

/// Copies the upstream's response headers to the client's response (the
/// body is re-framed by this server, so `Content-Length` goes too).
pub fn copy_response(from: &HeaderMap, to: &mut HttpResponseBuilder) {
    let named = connection_named(from);
    for (name, value) in from.iter() {
        if !skip(name.as_str(), &named, &["content-length"]) {
            to.append_header((name.clone(), value.clone()));
        }
    }
}

fn remaining(d: &Decision) -> u64 {
    match d {
        Decision::Allowed { remaining, .. } | Decision::Refused { remaining, .. } => *remaining,
    }
}

fn reset(d: &Decision) -> u64 {
    match d {
        Decision::Allowed { reset_after_ns, .. } | Decision::Refused { reset_after_ns, .. } => {
            *reset_after_ns
        }
    }
}

/// Anthropic's header names of a limit.
fn anthropic_names(limit: Limit) -> Option<[&'static str; 3]> {
    [
        (
            Limit::REQUESTS,
            [
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            ],
        ),
        (
            Limit::TOKENS,
            [
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
            ],
        ),
    ]
    .into_iter()
    .find_map(|(l, names)| (l == limit).then_some(names))
}

/// The RFC 3339 time `ns` from now, rounded up to a whole second (UTC).
fn rfc3339_in(ns: u64) -> String {
    let ns = i64::try_from(ns).unwrap_or(i64::MAX);
    let at = chrono::Utc::now()
        .checked_add_signed(chrono::Duration::nanoseconds(ns))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    let secs = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or(at)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Adds the headers of every limited limit in the `dialect`'s names and
/// formats: limit and remaining as integers, reset as a duration like
/// `6m0s` (OpenAI) or the RFC 3339 time it is full again (Anthropic).
pub fn insert_limits(
    dialect: Dialect,
    b: &mut HttpResponseBuilder,
    states: &[(Limit, BucketQuota, Decision)],
) {
    for (limit, quota, decision) in states {
        let names = match dialect {
            Dialect::OpenAi => openai_names(*limit),
            Dialect::Anthropic => anthropic_names(*limit),
        };
        // Static names: not parsed (nor copied) on every call.
        let Some([l, r, t]) = names.map(|n| n.map(HeaderName::from_static)) else {
            continue;
        };
        b.insert_header((l, HeaderValue::from(quota.capacity_units())));
        b.insert_header((r, HeaderValue::from(remaining(decision))));
        let at = match dialect {
            Dialect::OpenAi => openai_duration(reset(decision)),
            Dialect::Anthropic => rfc3339_in(reset(decision)),
        };
        b.insert_header((t, at));
    }
}

/// One limit that refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub limit: Limit,
    /// The bucket's capacity.
    pub capacity: u64,
    pub remaining: u64,
    /// Units asked for, when more than one (a `tokens` or `usd_micros`
    /// reservation).
    pub requested: Option<u64>,
}

/// The 429 of a refused call in the `dialect`'s shape: the error's
/// `message` names every refusing limit, OpenAI's `code` the first one
/// (`rate_limit_exceeded` for the built-in `requests` and `tokens`);
/// `Retry-After` (whole seconds, rounded up) and `retry-after-ms` from
/// `retry_after_ns`; and the limit headers of `states` (the tightest request
/// and token limits).
pub fn refusal(
    dialect: Dialect,
    refused: &[Refused],
    retry_after_ns: u64,
    states: &[(Limit, BucketQuota, Decision)],
) -> HttpResponse {
    let what: Vec<String> = refused
        .iter()
        .map(|r| match r.requested {
            Some(n) => format!(
                "{} (limit {}, remaining {}, requested {n})",
                r.limit, r.capacity, r.remaining
            ),
            None => format!(
                "{} (limit {}, remaining {})",
                r.limit, r.capacity, r.remaining
            ),
        })
        .collect();
    let mut e = ProxyError::rate_limited(format!(
        "Rate limit reached for {}. Please try again in {}.",
        what.join(" and "),
        openai_duration(retry_after_ns)
    ));
    if let Some(r) = refused.first() {
        if r.limit != Limit::REQUESTS && r.limit != Limit::TOKENS {
            e.code = r.limit.as_str();
        }
    }
    let mut b = e.builder();
    b.insert_header(("retry-after", retry_after_ns.div_ceil(1_000_000_000).max(1)));
    b.insert_header(("retry-after-ms", retry_after_ns.div_ceil(1_000_000).max(1)));
    insert_limits(dialect, &mut b, states);
    b.json(e.body(dialect))
}

/// A header map of `pairs` (repeated names appended), for the tests.
#[cfg(test)]
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::header_map as map;
    use super::*;

    #[test]
    fn request_drops_hop_by_hop_and_named_fields() {
        let from = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("host", "proxy.local"),
            ("content-length", "12"),
            (TENANT_HEADER, "acme"),
            ("authorization", "Bearer sk"),
            ("x-custom", "a"),
            ("x-custom", "b"),
            ("accept-encoding", "gzip"),
        ]);
        let mut to = HeaderMap::new();
        copy_request(&from, &mut to, true);
        let names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "host",
            "content-length",
            TENANT_HEADER,
        ] {
            assert!(!names.contains(&gone), "{gone} forwarded: {names:?}");
        }
        assert_eq!(to.get("authorization").unwrap(), "Bearer sk");
        assert_eq!(to.get_all("x-custom").count(), 2);
        assert_eq!(to.get("accept-encoding").unwrap(), "identity");
        let mut to = HeaderMap::new();
        copy_request(&from, &mut to, false);
        assert_eq!(to.get("accept-encoding").unwrap(), "gzip");
    }

    #[test]
    fn limit_headers_in_each_dialect() {
        let quota = BucketQuota::per_second(1, 100);
        let states = [(
            Limit::TOKENS,
            quota,
            Decision::Refused {
                remaining: 7,
                retry_after_ns: 2_500_000_000,
                reset_after_ns: 93_000_000_000,
            },
        )];
        let before = chrono::Utc::now();
        let refused = [Refused {
            limit: Limit::TOKENS,
            capacity: 100,
            remaining: 7,
            requested: Some(20),
        }];
        let resp = refusal(Dialect::Anthropic, &refused, 2_500_000_000, &states);
        let h = resp.headers();
        assert_eq!(h.get("retry-after").unwrap(), "3");
        assert_eq!(h.get("anthropic-ratelimit-tokens-limit").unwrap(), "100");
        assert_eq!(h.get("anthropic-ratelimit-tokens-remaining").unwrap(), "7");
        let reset = h
            .get("anthropic-ratelimit-tokens-reset")
            .unwrap()
            .to_str()
            .unwrap();
        let reset = chrono::DateTime::parse_from_rfc3339(reset).unwrap();
        let ahead = (reset.with_timezone(&chrono::Utc) - before).num_seconds();
        assert!((93..=95).contains(&ahead), "{ahead}");
        assert!(h.get("x-ratelimit-limit-tokens").is_none());
        // Never out of range, however far.
        assert!(rfc3339_in(u64::MAX).ends_with('Z'));
        let resp = refusal(Dialect::OpenAi, &refused, 2_500_000_000, &states);
        assert_eq!(
            resp.headers().get("x-ratelimit-reset-tokens").unwrap(),
            "1m33s"
        );
        assert!(resp
            .headers()
            .get("anthropic-ratelimit-tokens-limit")
            .is_none());
    }
}
