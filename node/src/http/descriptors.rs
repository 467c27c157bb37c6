//! Checks of several limits at once, leases, and adjustments after the
//! fact: `POST /v1/check` with `descriptors`, `POST /v1/release` and
//! `POST /v1/adjust`.
//!
//! A descriptors check is all or nothing ([`crate::multi_check`]). A
//! descriptor of a concurrency limit takes a lease. Its id is chosen here
//! (random), so a retried forward finds the lease it took instead of taking
//! a second; the client gets it as `lease_id` = `{limit}:{id}:{key}`, which
//! names the bucket, so `/v1/release` reaches the owner from any node.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use llmtrace_actors::{retry_after_secs, Decision, Op, Verdict};
use llmtrace_cluster_config::{validate_key, Limit, LimitKind, RateLimitConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::check::{check_error, invalid};
use super::error::ApiError;
use super::headers::{RATELIMIT, RATELIMIT_POLICY};
use super::input::{given, parse_limit, read_body};
use super::strict_json;
use super::NodeContext;
use crate::multi_check::{
    check_all, remaining_and_reset, shadow_header, Descriptor, HeaderItems, SHADOW_HEADER,
};

/// Most descriptors in one check.
pub const MAX_DESCRIPTORS: usize = 16;
const DESCRIPTOR_FIELDS: [&str; 3] = ["limit", "key", "cost"];
const ADJUST_FIELDS: [&str; 3] = ["limit", "key", "delta"];

/// The `lease_id` a client holds: `{limit}:{id as 16 hex digits}:{key}`.
pub fn lease_id(limit: Limit, id: u64, key: &str) -> String {
    format!("{limit}:{id:016x}:{key}")
}

/// Parses a `lease_id`; `None` when malformed.
pub fn parse_lease_id(text: &str, limits: &RateLimitConfig) -> Option<(Limit, u64, String)> {
    let (limit, rest) = text.split_once(':')?;
    let (id, key) = rest.split_once(':')?;
    if id.len() != 16 {
        return None;
    }
    let id = u64::from_str_radix(id, 16).ok().filter(|id| *id != 0)?;
    let limit = limits.limit(limit)?;
    validate_key(key).ok()?;
    (limits.kind(limit) == LimitKind::Concurrency).then(|| (limit, id, key.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptors {
    descriptors: Vec<RawDescriptor>,
}

/// One descriptor as the fast path reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDescriptor {
    limit: String,
    key: String,
    #[serde(default, deserialize_with = "given")]
    cost: Option<u64>,
}

fn at(i: usize, field: &str) -> String {
    format!("descriptors[{i}].{field}")
}

fn descriptor(
    i: usize,
    limit: &str,
    key: String,
    cost: Option<u64>,
    limits: &RateLimitConfig,
) -> Result<Descriptor, ApiError> {
    let limit = parse_limit(limit, limits, &at(i, "limit"))?;
    validate_key(&key).map_err(|e| ApiError::field(at(i, "key"), format!("`key` {e}")))?;
    let cost = cost.unwrap_or(1);
    if cost == 0 {
        return Err(ApiError::field(at(i, "cost"), "`cost` must be at least 1"));
    }
    let lease = limits.kind(limit) == LimitKind::Concurrency;
    if lease && cost != 1 {
        return Err(ApiError::field(
            at(i, "cost"),
            format!("`{limit}` is a concurrency limit: a descriptor takes one lease (cost 1)"),
        ));
    }
    Ok(if lease {
        Descriptor::lease(limit, key)
    } else {
        Descriptor::take(limit, key, cost)
    })
}

fn count_of(list: usize) -> Result<(), ApiError> {
    if list == 0 || list > MAX_DESCRIPTORS {
        return Err(ApiError::field(
            "descriptors",
            format!("`descriptors` must hold 1 to {MAX_DESCRIPTORS} items, not {list}"),
        ));
    }
    Ok(())
}

/// Validates descriptors read by a fast path.
pub(super) fn from_raw(
    items: Vec<RawDescriptor>,
    limits: &RateLimitConfig,
) -> Result<Vec<Descriptor>, ApiError> {
    count_of(items.len())?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, d)| descriptor(i, &d.limit, d.key, d.cost, limits))
        .collect()
}

/// Parses `{"descriptors": [{"limit", "key", "cost"?}, ...]}`; errors name
/// the item's field (`descriptors[2].limit`).
pub fn parse_descriptors(
    body: &[u8],
    limits: &RateLimitConfig,
) -> Result<Vec<Descriptor>, ApiError> {
    if let Ok(raw) = serde_json::from_slice::<RawDescriptors>(body) {
        return from_raw(raw.descriptors, limits);
    }
    // The error path: tell the client exactly what is wrong.
    let obj = strict_json::object(body, &["descriptors"])?;
    let items = match obj.get("descriptors") {
        Some(Value::Array(items)) => items,
        Some(Value::Null) => return Err(ApiError::null_field("descriptors")),
        _ => {
            return Err(ApiError::field(
                "descriptors",
                "`descriptors` must be an array",
            ))
        }
    };
    count_of(items.len())?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let obj = item.as_object().ok_or_else(|| {
                ApiError::field(
                    format!("descriptors[{i}]"),
                    "a descriptor must be an object",
                )
            })?;
            if let Some(unknown) = obj
                .keys()
                .find(|k| !DESCRIPTOR_FIELDS.contains(&k.as_str()))
            {
                let mut e = ApiError::unknown_field(unknown, &DESCRIPTOR_FIELDS);
                e.field = Some(at(i, unknown).into());
                return Err(e);
            }
            let text = |name: &str| strict_json::required_str(obj, name, at(i, name));
            let (limit, key) = (text("limit")?, text("key")?.to_string());
            let cost = match obj.get("cost") {
                None => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    ApiError::field(at(i, "cost"), "`cost` must be an integer of at least 1")
                })?),
            };
            descriptor(i, limit, key, cost, limits)
        })
        .collect()
}

/// One descriptor of the answer.
#[derive(Serialize)]
struct DescriptorBody<'a> {
    allowed: bool,
    limit: &'static str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    unlimited: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reset_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    /// A concurrency descriptor of an admitted check: the lease to release.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<bool>,
    /// A limit in shadow mode refused: reported, not enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_refused: Option<bool>,
}

fn ms(ns: u64) -> u64 {
    ns.div_ceil(1_000_000)
}

/// The answer of a descriptors check.
#[derive(Serialize)]
struct Answer<'a> {
    allowed: bool,
    descriptors: Vec<DescriptorBody<'a>>,
}

/// `POST /v1/check` with `descriptors`: 200 when every descriptor admits,
/// 429 when any refuses (and then none stays charged).
pub async fn check(
    ctx: &NodeContext,
    descriptors: Vec<Descriptor>,
) -> Result<HttpResponse, ApiError> {
    let outcome = check_all(&ctx.router, &descriptors).await;
    if let Some(i) = outcome.failed() {
        let Err(e) = &outcome.results[i] else {
            unreachable!()
        };
        let mut e = check_error(e.clone());
        if let Some(field) = &e.field {
            let field = at(i, field);
            e.message = format!("`{field}`: {}", e.message);
            e.field = Some(field.into());
        }
        return Err(e);
    }
    let mut items = Vec::with_capacity(descriptors.len());
    let mut headers = HeaderItems::default();
    let mut wait_ns = None::<u64>;
    for (i, (d, r)) in descriptors.iter().zip(&outcome.results).enumerate() {
        let routed = r.as_ref().expect("errors answered above");
        let mut item = DescriptorBody {
            allowed: true,
            limit: d.limit.as_str(),
            key: &d.key,
            unlimited: None,
            remaining: None,
            reset_after_ms: None,
            retry_after_ms: None,
            lease_id: None,
            degraded: matches!(routed.route, llmtrace_actors::Route::Degraded(_)).then_some(true),
            shadow_refused: None,
        };
        match routed.verdict {
            Verdict::Unlimited => item.unlimited = Some(true),
            Verdict::Limited { quota, decision } => {
                let (remaining, reset_ns) =
                    remaining_and_reset(outcome.undone(i).unwrap_or(decision));
                if let (Decision::Refused { .. }, true) = (decision, outcome.is_shadow(i)) {
                    item.shadow_refused = Some(true);
                } else if let Decision::Refused { retry_after_ns, .. } = decision {
                    item.allowed = false;
                    item.retry_after_ms = Some(ms(retry_after_ns));
                    wait_ns = Some(wait_ns.unwrap_or(0).max(retry_after_ns));
                }
                item.remaining = Some(remaining);
                item.reset_after_ms = Some(ms(reset_ns));
                headers.push(d.limit.as_str(), quota, remaining, reset_ns);
            }
        }
        items.push(item);
    }
    let allowed = wait_ns.is_none();
    if allowed {
        for (item, d) in items.iter_mut().zip(&descriptors) {
            if let (Some(id), None) = (d.lease_id(), item.unlimited) {
                item.lease_id = Some(lease_id(d.limit, id, &d.key));
            }
        }
    }
    let mut resp = HttpResponse::build(if allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    });
    if !headers.is_empty() {
        resp.insert_header((RATELIMIT_POLICY.clone(), headers.policy));
        resp.insert_header((RATELIMIT.clone(), headers.state));
    }
    if let Some(wait) = wait_ns {
        resp.insert_header((RETRY_AFTER, HeaderValue::from(retry_after_secs(wait))));
    }
    let shadow: Vec<&str> = outcome
        .shadow_refused()
        .map(|i| {
            ctx.proxy_metrics.count_shadow_refused(descriptors[i].limit);
            descriptors[i].limit.as_str()
        })
        .collect();
    if let Some(value) = shadow_header(&shadow) {
        resp.insert_header((SHADOW_HEADER, value));
    }
    Ok(resp.json(Answer {
        allowed,
        descriptors: items,
    }))
}

/// `POST /v1/release` `{"lease_id"}`: returns a lease. Idempotent:
/// `released` is false when the lease was not held (released already,
/// expired, or never taken).
pub async fn release(
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload).await.map_err(|e| invalid(&ctx, e))?;
    let obj = strict_json::object(&body, &["lease_id"]).map_err(|e| invalid(&ctx, e))?;
    let text =
        strict_json::required_str(&obj, "lease_id", "lease_id").map_err(|e| invalid(&ctx, e))?;
    let (limit, id, key) = parse_lease_id(text, ctx.router.local().limits()).ok_or_else(|| {
        invalid(
            &ctx,
            ApiError::field(
                "lease_id",
                "`lease_id` is not a lease of a configured concurrency limit (as a check answered it)",
            ),
        )
    })?;
    let routed = ctx
        .router
        .perform(key.clone(), limit, Op::Release, id)
        .await
        .map_err(|e| invalid(&ctx, check_error(e)))?;
    let released = matches!(
        routed.verdict,
        Verdict::Limited {
            decision: Decision::Allowed { .. },
            ..
        }
    );
    let mut body = serde_json::json!({
        "released": released,
        "limit": limit.as_str(),
        "key": key,
    });
    if let Verdict::Limited {
        decision: Decision::Allowed { remaining, .. } | Decision::Refused { remaining, .. },
        ..
    } = routed.verdict
    {
        body["remaining"] = remaining.into();
    }
    if matches!(routed.route, llmtrace_actors::Route::Degraded(_)) {
        body["degraded"] = true.into();
    }
    Ok(HttpResponse::Ok().json(body))
}

/// A validated adjustment: `delta` units charged (positive) or refunded
/// (negative) to `limit`'s bucket of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjust {
    pub limit: Limit,
    pub key: String,
    pub delta: i64,
}

/// Parses `{"limit", "key", "delta"}` (each once, none null, delta ≠ 0).
pub fn parse_adjust(body: &[u8], limits: &RateLimitConfig) -> Result<Adjust, ApiError> {
    let obj = strict_json::object(body, &ADJUST_FIELDS)?;
    let text = |name: &'static str| strict_json::required_str(&obj, name, name);
    let limit = parse_limit(text("limit")?, limits, "limit")?;
    if limits.kind(limit) == LimitKind::Concurrency {
        return Err(ApiError::field(
            "limit",
            format!("`{limit}` is a concurrency limit: leases are released, not adjusted"),
        ));
    }
    let key = text("key")?.to_string();
    validate_key(&key).map_err(|e| ApiError::field("key", format!("`key` {e}")))?;
    let delta = match obj.get("delta") {
        None => return Err(ApiError::field("delta", "missing field `delta`")),
        Some(Value::Null) => return Err(ApiError::null_field("delta")),
        Some(v) => v
            .as_i64()
            .filter(|d| *d != 0 && *d != i64::MIN)
            .ok_or_else(|| {
                ApiError::field(
                    "delta",
                    "`delta` must be a non-zero integer: positive charges, negative refunds",
                )
            })?,
    };
    Ok(Adjust { limit, key, delta })
}

/// `POST /v1/adjust`: settles usage known after the fact. A negative delta
/// refunds (never above full); a positive one charges without refusing
/// (the level may go below zero, and refill or the next window repays it).
pub async fn adjust(
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload).await.map_err(|e| invalid(&ctx, e))?;
    let a = parse_adjust(&body, ctx.router.local().limits()).map_err(|e| invalid(&ctx, e))?;
    let (op, units) = if a.delta < 0 {
        (Op::Refund, a.delta.unsigned_abs())
    } else {
        (Op::Charge, a.delta as u64)
    };
    let routed = ctx
        .router
        .perform(a.key.clone(), a.limit, op, units)
        .await
        .map_err(|e| invalid(&ctx, check_error(e)))?;
    let mut body = serde_json::json!({
        "limit": a.limit.as_str(),
        "key": a.key,
        "delta": a.delta,
    });
    match routed.verdict {
        Verdict::Unlimited => body["unlimited"] = true.into(),
        Verdict::Limited { decision, .. } => {
            let (Decision::Allowed {
                remaining,
                reset_after_ns,
            }
            | Decision::Refused {
                remaining,
                reset_after_ns,
                ..
            }) = decision;
            body["remaining"] = remaining.into();
            body["reset_after_ms"] = ms(reset_after_ns).into();
        }
    }
    if matches!(routed.route, llmtrace_actors::Route::Degraded(_)) {
        body["degraded"] = true.into();
    }
    Ok(HttpResponse::Ok().json(body))
}

#[cfg(test)]
mod tests;
