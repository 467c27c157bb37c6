//! Rate-limit response headers: the IETF httpapi draft fields
//! (`RateLimit-Policy`, `RateLimit`) and OpenAI's `x-ratelimit-*`.
//!
//! These headers go on every check's answer, so they are written without
//! `format!`: names are static, numbers are written digit by digit into one
//! buffer per value, and the two values that depend only on the policy
//! (`RateLimit-Policy` and the limit) are kept per thread for the last
//! policy seen and reused (a reference count, no allocation).

use std::cell::RefCell;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::HttpResponseBuilder;
use bytes::{BufMut, BytesMut};
use llmtrace_actors::{BucketQuota, NANOS};
use llmtrace_cluster_config::Limit;

/// What the headers describe: one named limit's state after a check.
pub struct LimitState {
    pub limit: Limit,
    pub quota: BucketQuota,
    pub remaining: u64,
    pub reset_after_ns: u64,
}

/// `RateLimit-Policy` (IETF draft).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

static OPENAI_REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
static OPENAI_TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// OpenAI's header names of a limit: limit, remaining, reset.
pub fn openai_header_names(limit: Limit) -> Option<&'static [HeaderName; 3]> {
    if limit == Limit::REQUESTS {
        Some(&OPENAI_REQUESTS)
    } else if limit == Limit::TOKENS {
        Some(&OPENAI_TOKENS)
    } else {
        None
    }
}

/// [`openai_header_names`] as strings.
pub fn openai_names(limit: Limit) -> Option<[&'static str; 3]> {
    openai_header_names(limit).map(|names| names.each_ref().map(HeaderName::as_str))
}

/// Seconds, rounded up.
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NANOS)
}

/// Appends `n` in decimal.
fn put_u64(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

/// Appends OpenAI's duration format: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
fn put_openai_duration(buf: &mut BytesMut, ns: u64) {
    let ms = ns.div_ceil(1_000_000);
    if ms < 1_000 {
        put_u64(buf, ms);
        buf.put_slice(b"ms");
        return;
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    if h > 0 {
        put_u64(buf, h);
        buf.put_u8(b'h');
    }
    if h > 0 || m > 0 {
        put_u64(buf, m);
        buf.put_u8(b'm');
    }
    put_u64(buf, rest / 1_000);
    let mut frac = rest % 1_000;
    if frac != 0 {
        buf.put_u8(b'.');
        let mut places = 3;
        while frac % 10 == 0 {
            frac /= 10;
            places -= 1;
        }
        let mut digits = [b'0'; 3];
        for d in digits[..places].iter_mut().rev() {
            *d = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        buf.put_slice(&digits[..places]);
    }
    buf.put_u8(b's');
}

/// OpenAI's duration format: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn openai_duration(ns: u64) -> String {
    let mut buf = BytesMut::with_capacity(24);
    put_openai_duration(&mut buf, ns);
    String::from_utf8(buf.to_vec()).expect("ASCII")
}

/// A header value written by `write` (digits and ASCII only).
fn value(capacity: usize, write: impl FnOnce(&mut BytesMut)) -> HeaderValue {
    let mut buf = BytesMut::with_capacity(capacity);
    write(&mut buf);
    HeaderValue::from_maybe_shared(buf.freeze()).expect("visible ASCII")
}

/// The values that depend on the policy alone: `RateLimit-Policy` and the
/// limit (OpenAI's `x-ratelimit-limit-*`).
#[derive(Clone)]
struct PolicyValues {
    limit: Limit,
    quota: BucketQuota,
    policy: HeaderValue,
    capacity: HeaderValue,
}

thread_local! {
    /// The last policy's values on this thread (checks of one policy are
    /// the common case).
    static LAST_POLICY: RefCell<Option<PolicyValues>> = const { RefCell::new(None) };
}

fn policy_values(limit: Limit, quota: BucketQuota) -> PolicyValues {
    let cached = LAST_POLICY.with_borrow(|last| {
        last.as_ref()
            .filter(|v| v.limit == limit && v.quota == quota)
            .cloned()
    });
    if let Some(values) = cached {
        return values;
    }
    let burst = quota.capacity_units();
    // The policy's window: the time a drained bucket takes to refill, or a
    // quota's period.
    let window = quota.window_secs();
    let name = limit.as_str();
    let values = PolicyValues {
        limit,
        quota,
        policy: value(name.len() + 48, |b| {
            b.put_u8(b'"');
            b.put_slice(name.as_bytes());
            b.put_slice(b"\";q=");
            put_u64(b, burst);
            b.put_slice(b";w=");
            put_u64(b, window);
        }),
        capacity: value(20, |b| put_u64(b, burst)),
    };
    LAST_POLICY.set(Some(values.clone()));
    values
}

/// Adds the rate-limit headers of `state` to a response.
pub fn insert(builder: &mut HttpResponseBuilder, state: &LimitState) {
    let PolicyValues {
        policy, capacity, ..
    } = policy_values(state.limit, state.quota);
    let name = state.limit.as_str();
    builder.insert_header((RATELIMIT_POLICY.clone(), policy));
    builder.insert_header((
        RATELIMIT.clone(),
        value(name.len() + 48, |b| {
            b.put_u8(b'"');
            b.put_slice(name.as_bytes());
            b.put_slice(b"\";r=");
            put_u64(b, state.remaining);
            b.put_slice(b";t=");
            put_u64(b, ceil_secs(state.reset_after_ns));
        }),
    ));
    if let Some([limit, remaining, reset]) = openai_header_names(state.limit) {
        builder.insert_header((limit.clone(), capacity));
        builder.insert_header((
            remaining.clone(),
            value(20, |b| put_u64(b, state.remaining)),
        ));
        builder.insert_header((
            reset.clone(),
            value(24, |b| put_openai_duration(b, state.reset_after_ns)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_durations() {
        let ms = 1_000_000;
        assert_eq!(openai_duration(0), "0ms");
        assert_eq!(openai_duration(1), "1ms");
        assert_eq!(openai_duration(17 * ms), "17ms");
        assert_eq!(openai_duration(999 * ms), "999ms");
        assert_eq!(openai_duration(1_000 * ms), "1s");
        assert_eq!(openai_duration(1_500 * ms), "1.5s");
        assert_eq!(openai_duration(1_050 * ms), "1.05s");
        assert_eq!(openai_duration(1_005 * ms), "1.005s");
        assert_eq!(openai_duration(60_000 * ms), "1m0s");
        assert_eq!(openai_duration(360_000 * ms), "6m0s");
        assert_eq!(openai_duration(3_600_000 * ms), "1h0m0s");
        assert_eq!(openai_duration(3_723_000 * ms), "1h2m3s");
        assert_eq!(openai_duration(3_723_400 * ms), "1h2m3.4s");
    }

    #[test]
    fn numbers() {
        for n in [0, 7, 10, 999, 1_000_000_000, u64::MAX] {
            let mut b = BytesMut::new();
            put_u64(&mut b, n);
            assert_eq!(&b[..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn headers_of_a_check() {
        let quota = BucketQuota::per_second(10, 100);
        let state = LimitState {
            limit: Limit::REQUESTS,
            quota,
            remaining: 42,
            reset_after_ns: 5_800_000_000,
        };
        // Twice: the second answer reuses the policy's values.
        for _ in 0..2 {
            let mut b = actix_web::HttpResponse::Ok();
            insert(&mut b, &state);
            let resp = b.finish();
            let h = |n: &str| resp.headers().get(n).unwrap().to_str().unwrap().to_string();
            assert_eq!(h("RateLimit-Policy"), "\"requests\";q=100;w=10");
            assert_eq!(h("RateLimit"), "\"requests\";r=42;t=6");
            assert_eq!(h("x-ratelimit-limit-requests"), "100");
            assert_eq!(h("x-ratelimit-remaining-requests"), "42");
            assert_eq!(h("x-ratelimit-reset-requests"), "5.8s");
        }
        // Another policy is not answered from the last one.
        let other = LimitState {
            quota: BucketQuota::per_second(1, 5),
            ..state
        };
        let mut b = actix_web::HttpResponse::Ok();
        insert(&mut b, &other);
        let resp = b.finish();
        assert_eq!(
            resp.headers().get("ratelimit-policy").unwrap(),
            "\"requests\";q=5;w=5"
        );
        assert_eq!(
            resp.headers().get("x-ratelimit-limit-requests").unwrap(),
            "5"
        );
    }
}
