//! Runtime limit overrides through the admin API: `PUT` and `DELETE
//! /admin/tenants/{tenant}/limits`, `GET /admin/limits`.
//!
//! A change is validated, written to Redis when the node has one (before it
//! is answered: a 503 means nothing changed), put in force on this node at
//! once and published over gossip; every node adopts it within a few gossip
//! rounds (see `llmtrace_actors::cluster::overrides`).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpResponse};
use llmtrace_actors::cluster::overrides::{next_version, OverrideEntry};
use llmtrace_cluster_config::{validate_runtime_override, Limit, TenantOverride};
use serde_json::{json, Value};

use super::admin::tenant_of;
use super::error::ApiError;
use super::input::{self, read_body};
use super::strict_json;
use super::NodeContext;

const PUT_FIELDS: [&str; 3] = ["requests_per_second", "burst_size", "limit"];

/// `limit` of a body: absent is `requests`.
fn parse_limit(v: Option<&Value>) -> Result<Limit, ApiError> {
    match v {
        None => Ok(Limit::Requests),
        Some(Value::Null) => Err(ApiError::null_field("limit")),
        Some(Value::String(name)) => input::parse_limit(name),
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
/// (each key once, none null).
pub fn parse_override(body: &[u8]) -> Result<(Limit, TenantOverride), ApiError> {
    let v = strict_json::parse(body, &PUT_FIELDS)?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid_json("body must be a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !PUT_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::unknown_field(unknown, &PUT_FIELDS));
    }
    let rps = parse_count(obj, "requests_per_second")?;
    let burst = parse_count(obj, "burst_size")?;
    let limit = parse_limit(obj.get("limit"))?;
    let o =
        validate_runtime_override(rps, burst).map_err(|e| ApiError::field(e.field, e.message))?;
    Ok((limit, o))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Persists (Redis) and publishes (gossip) one change; answers the entry.
async fn apply(
    ctx: &NodeContext,
    tenant: &str,
    limit: Limit,
    value: Option<TenantOverride>,
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

fn entry_json(tenant: &str, limit: Limit, e: &OverrideEntry, o: TenantOverride) -> Value {
    json!({
        "tenant_id": tenant,
        "limit": limit.as_str(),
        "requests_per_second": o.requests_per_second,
        "burst_size": o.burst_size,
        "version": e.version,
        "origin": e.origin,
    })
}

/// `PUT /admin/tenants/{tenant}/limits`.
pub async fn put(
    ctx: web::Data<NodeContext>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(path)?;
    let body = read_body(payload).await?;
    let (limit, value) = parse_override(&body)?;
    let (entry, _) = apply(&ctx, &tenant, limit, Some(value)).await?;
    let mut body = entry_json(&tenant, limit, &entry, value);
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
    let limit = query
        .get("limit")
        .map_or(Ok(Limit::Requests), |name| input::parse_limit(name))?;
    let (entry, before) = apply(&ctx, &tenant, limit, None).await?;
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant,
        "limit": limit.as_str(),
        "deleted": before.is_some_and(|b| b.value.is_some()),
        "version": entry.version,
        "persisted": ctx.admin.store.is_some(),
    })))
}

/// `GET /admin/limits`: every runtime override in force on this node.
pub async fn list(ctx: web::Data<NodeContext>) -> HttpResponse {
    let overrides: Vec<Value> = match &ctx.admin.control {
        Some(control) => control
            .overrides()
            .iter()
            .filter_map(|((t, l), e)| e.value.map(|o| entry_json(t, *l, e, o)))
            .collect(),
        None => Vec::new(),
    };
    HttpResponse::Ok().json(json!({ "overrides": overrides }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> String {
        parse_override(body.as_bytes())
            .unwrap_err()
            .field
            .map(|f| f.into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn validates_and_names_the_field() {
        let (l, o) = parse_override(br#"{"requests_per_second":5,"burst_size":10}"#).unwrap();
        assert_eq!(l, Limit::Requests);
        assert_eq!((o.requests_per_second, o.burst_size), (5, 10));
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
        assert!(parse_override(b"[1]").unwrap_err().code == "invalid_json");
        assert!(parse_override(b"{").unwrap_err().code == "invalid_json");
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
            let e = parse_override(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "invalid_json", "{body}: {e}");
            assert_eq!(e.field.as_deref(), key, "{body}: {e}");
            let named = key.unwrap_or("x");
            assert!(e.message.contains(&format!("`{named}`")), "{body}: {e}");
        }
    }
}
