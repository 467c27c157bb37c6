//! Limits through the admin API: `GET /admin/limits` (the configured limits
//! and every runtime override), one bucket of any limit
//! (`GET /admin/limits/{limit}/keys/{key}`, `POST .../reset`), and runtime
//! overrides (`PUT`/`DELETE /admin/limits/{limit}/keys/{key}/override`, and
//! the seed-era `PUT`/`DELETE /admin/tenants/{tenant}/limits`).
//!
//! A change is validated, written to Redis when the node has one (before it
//! is answered: a 503 means nothing changed), put in force on this node at
//! once and published over gossip; every node adopts it within a few gossip
//! rounds (see `llmtrace_actors::cluster::overrides`).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpResponse};
use llmtrace_actors::cluster::overrides::{next_version, OverrideEntry};
use llmtrace_actors::cluster::rpc::wire::TenantOp;
use llmtrace_cluster_config::proxy_rules::KeyInfo;
use llmtrace_cluster_config::{
    validate_key, validate_runtime_override, Limit, LimitKind, OverrideValue, RateLimitConfig,
};
use serde_json::{json, Value};

use super::admin::{owner_report, quota_json, tenant_of};
use super::error::ApiError;
use super::input::{self, read_body};
use super::strict_json;
use super::NodeContext;

const PUT_FIELDS: [&str; 3] = ["requests_per_second", "burst_size", "limit"];

/// `limit` of a body: absent is `requests`.
fn parse_limit(v: Option<&Value>, limits: &RateLimitConfig) -> Result<Limit, ApiError> {
    match v {
        None => Ok(Limit::REQUESTS),
        Some(Value::Null) => Err(ApiError::null_field("limit")),
        Some(Value::String(name)) => input::parse_limit(name, limits, "limit"),
        Some(_) => Err(ApiError::field("limit", "`limit` must be a string")),
    }
}

fn parse_count(obj: &serde_json::Map<String, Value>, name: &'static str) -> Result<u64, ApiError> {
    match obj.get(name) {
        None => Err(ApiError::field(name, format!("missing field `{name}`"))),
        Some(Value::Null) => Err(ApiError::null_field(name)),
        Some(v) => v.as_u64().ok_or_else(|| {
            let why = if v.as_i64().is_some_and(|n| n < 0) || v.as_f64().is_some_and(|f| f < 0.0) {
                "must not be negative"
            } else {
                "must be a non-negative integer"
            };
            ApiError::field(name, format!("`{name}` {why}"))
        }),
    }
}

/// Parses and validates `{"requests_per_second", "burst_size", "limit"?}`
/// (each key once, none null); the limit must be a token bucket.
pub fn parse_override(
    body: &[u8],
    limits: &RateLimitConfig,
) -> Result<(Limit, OverrideValue), ApiError> {
    let obj = strict_json::object(body, &PUT_FIELDS)?;
    let rps = parse_count(&obj, "requests_per_second")?;
    let burst = parse_count(&obj, "burst_size")?;
    let limit = parse_limit(obj.get("limit"), limits)?;
    if limits.kind(limit) != LimitKind::TokenBucket {
        return Err(ApiError::field(
            "limit",
            format!(
                "`{limit}` is a {} limit; set its override with PUT \
                 /admin/limits/{limit}/keys/{{key}}/override",
                limits.kind(limit)
            ),
        ));
    }
    let o =
        validate_runtime_override(rps, burst).map_err(|e| ApiError::field(e.field, e.message))?;
    if let Some(def) = limits.named.get(limit) {
        def.check(o).map_err(|e| {
            ApiError::field(
                if e.field == "burst" {
                    "burst_size"
                } else {
                    "requests_per_second"
                },
                e.message,
            )
        })?;
    }
    Ok((limit, o))
}

/// Parses `{"rate", "burst"}`, `{"amount"}` or `{"max"}`: the numbers of
/// `limit`'s kind, each key once, none null, validated as config is.
pub fn parse_value(
    body: &[u8],
    limit: Limit,
    limits: &RateLimitConfig,
) -> Result<OverrideValue, ApiError> {
    let kind = limits.kind(limit);
    let fields = kind.fields();
    let obj = strict_json::object(body, fields)?;
    let small = |name: &'static str| -> Result<u32, ApiError> {
        u32::try_from(parse_count(&obj, name)?)
            .map_err(|_| ApiError::field(name, format!("`{name}` is too large")))
    };
    let value = match kind {
        LimitKind::TokenBucket => OverrideValue::TokenBucket {
            rate: small("rate")?,
            burst: small("burst")?,
        },
        LimitKind::Quota => OverrideValue::Quota {
            amount: parse_count(&obj, "amount")?,
        },
        LimitKind::Concurrency => OverrideValue::Concurrency { max: small("max")? },
    };
    let per_s = limits.named.get(limit).map_or(1, |d| d.per_s);
    llmtrace_cluster_config::check_value(value, per_s)
        .map_err(|e| ApiError::field(e.field, e.message))?;
    if let OverrideValue::TokenBucket { rate, burst } = value {
        validate_runtime_override(u64::from(rate), u64::from(burst)).map_err(|e| {
            ApiError::field(
                if e.field == "burst_size" {
                    "burst"
                } else {
                    "rate"
                },
                e.message,
            )
        })?;
    }
    Ok(value)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Persists (Redis) and publishes (gossip) one change (numbers, or a key
/// table entry under its reserved limit; neither: a deletion); answers
/// the entry and the one it replaced.
pub(super) async fn apply(
    ctx: &NodeContext,
    tenant: &str,
    limit: Limit,
    value: Option<OverrideValue>,
    key: Option<KeyInfo>,
) -> Result<(OverrideEntry, Option<OverrideEntry>), ApiError> {
    let control = ctx
        .admin
        .control
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("runtime overrides need cluster membership"))?;
    let current = control
        .overrides()
        .get(&(tenant.to_string(), limit))
        .cloned();
    let entry = OverrideEntry {
        version: next_version(now_ms(), current.as_ref()),
        origin: ctx.router.view().self_id.to_string(),
        value,
        key,
    };
    if let Some(store) = &ctx.admin.store {
        store.save(tenant, limit, &entry).await.map_err(|e| {
            ApiError::unavailable(format!(
                "could not persist the override in Redis, nothing changed: {e}"
            ))
        })?;
    }
    control.publish_override(tenant, limit, entry.clone()).await;
    tracing::info!(
        tenant = %tenant,
        limit = %limit,
        value = ?value,
        version = entry.version,
        "runtime limit override changed"
    );
    Ok((entry, current))
}

/// One override: its key (also as `tenant_id`), its numbers in the words
/// of its kind (a token bucket's also in the seed's names), its version.
fn entry_json(key: &str, limit: Limit, e: &OverrideEntry, o: OverrideValue) -> Value {
    let mut body = json!({
        "key": key,
        "tenant_id": key,
        "limit": limit.as_str(),
        "version": e.version,
        "origin": e.origin,
    });
    match o {
        OverrideValue::TokenBucket { rate, burst } => {
            body["rate"] = json!(rate);
            body["burst"] = json!(burst);
            body["requests_per_second"] = json!(rate);
            body["burst_size"] = json!(burst);
        }
        OverrideValue::Quota { amount } => body["amount"] = json!(amount),
        OverrideValue::Concurrency { max } => body["max"] = json!(max),
    }
    body
}

/// `PUT /admin/tenants/{tenant}/limits`.
pub async fn put(
    ctx: web::Data<NodeContext>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(path)?;
    let body = read_body(payload).await?;
    let (limit, value) = parse_override(&body, ctx.router.local().limits())?;
    set(&ctx, &tenant, limit, value).await
}

/// Puts `value` in force for `(key, limit)` and answers the entry.
async fn set(
    ctx: &NodeContext,
    key: &str,
    limit: Limit,
    value: OverrideValue,
) -> Result<HttpResponse, ApiError> {
    let (entry, _) = apply(ctx, key, limit, Some(value), None).await?;
    let mut body = entry_json(key, limit, &entry, value);
    body["persisted"] = json!(ctx.admin.store.is_some());
    Ok(HttpResponse::Ok().json(body))
}

/// `DELETE /admin/tenants/{tenant}/limits[?limit=requests]`: back to the
/// configured quota. Idempotent: `deleted` says whether an override existed.
pub async fn delete(
    ctx: web::Data<NodeContext>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(path)?;
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "limit") {
        return Err(ApiError::unknown_field(unknown, &["limit"]));
    }
    let limits = ctx.router.local().limits();
    let limit = query.get("limit").map_or(Ok(Limit::REQUESTS), |name| {
        input::parse_limit(name, limits, "limit")
    })?;
    let (entry, before) = apply(&ctx, &tenant, limit, None, None).await?;
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant,
        "limit": limit.as_str(),
        "deleted": before.is_some_and(|b| b.value.is_some()),
        "version": entry.version,
        "persisted": ctx.admin.store.is_some(),
    })))
}

/// `GET /admin/limits`: the configured limits (with their configured
/// overrides) and every runtime override in force on this node.
pub async fn list(ctx: web::Data<NodeContext>) -> HttpResponse {
    let overrides: Vec<Value> = match &ctx.admin.control {
        Some(control) => control
            .overrides()
            .iter()
            .filter_map(|((t, l), e)| e.value.map(|o| entry_json(t, *l, e, o)))
            .collect(),
        None => Vec::new(),
    };
    let config = ctx.router.local().limits();
    let limits: Vec<Value> = config
        .limits()
        .into_iter()
        .map(|limit| limit_json(config, limit))
        .collect();
    HttpResponse::Ok().json(json!({ "limits": limits, "overrides": overrides }))
}

/// A configured limit: its kind, default numbers and configured overrides.
fn limit_json(config: &RateLimitConfig, limit: Limit) -> Value {
    let policy = config.policy_with_source("\u{0}", limit).0;
    let mut body = Value::Object(quota_json(llmtrace_actors::BucketQuota::of(policy)));
    body["name"] = json!(limit.as_str());
    body["kind"] = json!(config.kind(limit).as_str());
    if config.is_shadow(limit) {
        body["shadow"] = json!(true);
    }
    if let llmtrace_cluster_config::Policy::Concurrency { max, lease_ttl_s } = policy {
        body["max"] = json!(max);
        body["lease_ttl"] = json!(llmtrace_cluster_config::format_duration_secs(lease_ttl_s));
        body.as_object_mut().map(|o| o.remove("unlimited"));
    }
    let overrides: serde_json::Map<String, Value> = match config.named.get(limit) {
        Some(def) => def
            .overrides
            .iter()
            .filter_map(|(key, value)| {
                let policy = def.resolve(*value)?;
                let numbers = match policy {
                    llmtrace_cluster_config::Policy::Concurrency { max, .. } => {
                        json!({ "max": max })
                    }
                    other => Value::Object(quota_json(llmtrace_actors::BucketQuota::of(other))),
                };
                Some((key.clone(), numbers))
            })
            .collect(),
        None => config
            .tenant_overrides
            .iter()
            .filter(|_| limit == Limit::REQUESTS)
            .map(|(k, o)| {
                (
                    k.clone(),
                    json!({ "rate": o.requests_per_second, "burst": o.burst_size }),
                )
            })
            .chain(
                config
                    .tokens
                    .tenant_overrides
                    .iter()
                    .filter(|_| limit == Limit::TOKENS)
                    .map(|(k, o)| {
                        (
                            k.clone(),
                            json!({ "rate": o.tokens_per_minute, "burst": o.burst_size }),
                        )
                    }),
            )
            .collect(),
    };
    body["overrides"] = Value::Object(overrides);
    body
}

/// The limit and key of a `/admin/limits/{limit}/keys/{key}` path.
fn limit_and_key(
    ctx: &NodeContext,
    path: web::Path<(String, String)>,
) -> Result<(Limit, String), ApiError> {
    let (name, key) = path.into_inner();
    let limit = input::parse_limit(&name, ctx.router.local().limits(), "limit")?;
    validate_key(&key).map_err(|e| ApiError::field("key", format!("`key` {e}")))?;
    Ok((limit, key))
}

/// Reports (or refills) one bucket through its owner.
async fn bucket(
    ctx: &NodeContext,
    limit: Limit,
    key: &str,
    op: TenantOp,
) -> Result<Value, ApiError> {
    let (report, owner, degraded) = owner_report(ctx, key, limit, op).await?;
    let mut body = Value::Object(quota_json(report.quota));
    body["limit"] = json!(limit.as_str());
    body["key"] = json!(key);
    body["kind"] = json!(ctx.router.local().limits().kind(limit).as_str());
    for (k, v) in [
        ("owner", json!(owner)),
        (
            "source",
            json!(llmtrace_actors::cluster::tenant_rpc::source_of(report.source).as_str()),
        ),
        (
            "remaining",
            json!(report
                .quota
                .is_some()
                .then_some(report.level / llmtrace_actors::NANOS)),
        ),
        ("full_in_ms", json!(report.full_in_ns.div_ceil(1_000_000))),
        ("degraded", json!(degraded)),
        (
            "snapshot_age_ms",
            json!(report.snapshot_age_ns.map(|ns| ns / 1_000_000)),
        ),
        ("resident", json!(report.resident)),
    ] {
        body[k] = v;
    }
    Ok(body)
}

/// `GET /admin/limits/{limit}/keys/{key}`: the bucket as its owner sees it.
pub async fn key_report(
    ctx: web::Data<NodeContext>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (limit, key) = limit_and_key(&ctx, path)?;
    Ok(HttpResponse::Ok().json(bucket(&ctx, limit, &key, TenantOp::Inspect).await?))
}

/// `POST /admin/limits/{limit}/keys/{key}/reset`: refills the bucket on its
/// owner (and its snapshot), then reports it.
pub async fn key_reset(
    ctx: web::Data<NodeContext>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (limit, key) = limit_and_key(&ctx, path)?;
    tracing::info!(limit = %limit, key = %key, "admin reset of a bucket");
    Ok(HttpResponse::Ok().json(bucket(&ctx, limit, &key, TenantOp::Reset).await?))
}

/// `PUT /admin/limits/{limit}/keys/{key}/override`: the key's numbers
/// under the limit, in every node, until deleted.
pub async fn key_put(
    ctx: web::Data<NodeContext>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (limit, key) = limit_and_key(&ctx, path)?;
    let body = read_body(payload).await?;
    let value = parse_value(&body, limit, ctx.router.local().limits())?;
    set(&ctx, &key, limit, value).await
}

/// `DELETE /admin/limits/{limit}/keys/{key}/override`: back to the
/// configured numbers. Idempotent: `deleted` says whether one existed.
pub async fn key_delete(
    ctx: web::Data<NodeContext>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (limit, key) = limit_and_key(&ctx, path)?;
    let (entry, before) = apply(&ctx, &key, limit, None, None).await?;
    Ok(HttpResponse::Ok().json(json!({
        "key": key,
        "limit": limit.as_str(),
        "deleted": before.is_some_and(|b| b.value.is_some()),
        "version": entry.version,
        "persisted": ctx.admin.store.is_some(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> String {
        parse_override(body.as_bytes(), &RateLimitConfig::default())
            .unwrap_err()
            .field
            .map(|f| f.into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn validates_and_names_the_field() {
        let c = RateLimitConfig::default();
        let (l, o) = parse_override(br#"{"requests_per_second":5,"burst_size":10}"#, &c).unwrap();
        assert_eq!(l, Limit::REQUESTS);
        assert_eq!(o, OverrideValue::TokenBucket { rate: 5, burst: 10 });
        assert_eq!(
            field(r#"{"requests_per_second":-1,"burst_size":10}"#),
            "requests_per_second"
        );
        assert_eq!(
            field(r#"{"requests_per_second":1,"burst_size":0}"#),
            "burst_size"
        );
        assert_eq!(
            field(r#"{"requests_per_second":1,"burst_size":1.5}"#),
            "burst_size"
        );
        assert_eq!(
            field(r#"{"requests_per_second":1,"burst_size":"9"}"#),
            "burst_size"
        );
        assert_eq!(
            field(r#"{"requests_per_second":1e12,"burst_size":9}"#),
            "requests_per_second"
        );
        assert_eq!(
            field(r#"{"requests_per_second":1,"burst_size":99999999999}"#),
            "burst_size"
        );
        assert_eq!(field(r#"{"burst_size":9}"#), "requests_per_second");
        assert_eq!(
            field(r#"{"requests_per_second":1,"burst_size":9,"burst":1}"#),
            "burst"
        );
        assert_eq!(
            field(r#"{"requests_per_second":1,"burst_size":9,"limit":"nope"}"#),
            "limit"
        );
        assert_eq!(
            field(r#"{"requests_per_second":1,"burst_size":9,"limit":3}"#),
            "limit"
        );
        assert_eq!(
            field(r#"{"requests_per_second":null,"burst_size":9}"#),
            "requests_per_second"
        );
        assert_eq!(
            field(r#"{"requests_per_second":1,"burst_size":9,"limit":null}"#),
            "limit"
        );
        assert!(parse_override(b"[1]", &c).unwrap_err().code == "invalid_json");
        assert!(parse_override(b"{", &c).unwrap_err().code == "invalid_json");
    }

    #[test]
    fn a_duplicated_key_is_invalid_json_naming_it() {
        for (body, key) in [
            (
                r#"{"requests_per_second":1,"burst_size":9,"burst_size":99}"#,
                Some("burst_size"),
            ),
            (
                r#"{"limit":"requests","requests_per_second":1,"burst_size":9,"limit":"tokens"}"#,
                Some("limit"),
            ),
            (
                r#"{"requests_per_second":1,"burst_size":9,"x":1,"x":2}"#,
                None,
            ),
        ] {
            let e = parse_override(body.as_bytes(), &RateLimitConfig::default()).unwrap_err();
            assert_eq!(e.code, "invalid_json", "{body}: {e}");
            assert_eq!(e.field.as_deref(), key, "{body}: {e}");
            let named = key.unwrap_or("x");
            assert!(e.message.contains(&format!("`{named}`")), "{body}: {e}");
        }
    }
}
