//! Headers of proxied calls: hop-by-hop fields are dropped both ways
//! (RFC 9110 section 7.6.1: `Connection` and every field it names,
//! `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`, `Upgrade`,
//! plus the proxy's own `Proxy-Authorization`/`Proxy-Authenticate`); the
//! tenant, team and org headers are not forwarded; answers carry OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpResponse, HttpResponseBuilder};
use llmtrace_actors::{BucketQuota, Decision};
use llmtrace_cluster_config::Limit;

use super::errors::ProxyError;
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

/// Adds `x-ratelimit-*` of every limited limit (OpenAI's formats: limit
/// and remaining as integers, reset as a duration like `6m0s`).
pub fn insert_limits(b: &mut HttpResponseBuilder, states: &[(Limit, BucketQuota, Decision)]) {
    for (limit, quota, decision) in states {
        let Some([l, r, t]) = openai_names(*limit) else {
            continue;
        };
        b.insert_header((l, HeaderValue::from(quota.capacity_units())));
        b.insert_header((r, HeaderValue::from(remaining(decision))));
        b.insert_header((t, openai_duration(reset(decision))));
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

/// The 429 of a refused call in OpenAI's shape: the error's `message` names
/// every refusing limit and its `code` the first one (`rate_limit_exceeded`
/// for the built-in `requests` and `tokens`), `Retry-After` (whole seconds,
/// rounded up) and `retry-after-ms` from `retry_after_ns`, and the
/// `x-ratelimit-*` of `states` (the tightest request and token limits).
pub fn refusal(
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
    insert_limits(&mut b, states);
    b.json(e.body())
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
}
