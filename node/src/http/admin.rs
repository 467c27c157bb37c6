//! Admin listener handlers: Prometheus metrics (and what the node context
//! registers for them), this node's view of the
//! cluster, a tenant's buckets as their owners see them (from any node),
//! refilling a tenant, and draining this node. Runtime limit overrides are in
//! [`super::admin_limits`]. Every route but `/healthz` (and the dashboard)
//! sits behind the admin token ([`super::middleware::admin_auth`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use llmtrace_actors::cluster::rpc::wire::{TenantOp, TenantRequest, WireLimitReport};
use llmtrace_actors::cluster::tenant_rpc::{serve_tenant, source_of};
use llmtrace_actors::metrics::{self, Registry, Scraped};
use llmtrace_actors::{BucketQuota, Router, NANOS};
use llmtrace_cluster_config::{format_duration_secs, validate_tenant_id, Limit};
use serde_json::{json, Value};
use tracing::warn;

use super::error::ApiError;
use super::{DrainState, NodeContext};
use crate::proxy::metrics::ProxyMetrics;

/// How long `POST /admin/drain` waits for the leave to finish before it
/// answers 202 (the drain goes on).
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// `GET /metrics`.
pub async fn metrics(ctx: web::Data<NodeContext>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render(&ctx.registry))
}

/// Registers the series of a node context: its shards and checks, the
/// cluster, the node's own state (read through `ctx` at each scrape) and
/// the proxy.
pub fn register_metrics(
    registry: &mut Registry,
    router: &Router,
    proxy: &Arc<ProxyMetrics>,
    ctx: Weak<NodeContext>,
) {
    let local = router.local();
    local.metrics().register(registry, local.cache_name());
    let ring = router.clone();
    router
        .metrics()
        .register(registry, move || ring.view().fingerprint().to_string());
    let runtime = local.limits().runtime.clone();
    registry.register(
        "llmtrace_runtime_overrides",
        "Runtime limit overrides in force",
        Scraped::gauge(move || runtime.len() as i64),
    );
    let node = ctx.clone();
    registry.register(
        "llmtrace_node_ready",
        "1 when this node takes checks (readyz 200)",
        Scraped::gauge(move || node.upgrade().is_some_and(|c| c.is_ready()) as i64),
    );
    registry.register(
        "llmtrace_node_draining",
        "1 once an admin drain was requested",
        Scraped::gauge(move || {
            let draining = |c: Arc<NodeContext>| *c.admin.drain.borrow() != DrainState::Idle;
            ctx.upgrade().is_some_and(draining) as i64
        }),
    );
    proxy.register(registry);
}

/// `GET /admin/cluster`: this node's view.
pub async fn cluster(ctx: web::Data<NodeContext>) -> HttpResponse {
    let view = ctx.router.view();
    let shares: std::collections::HashMap<String, f64> = view.ring.shares().into_iter().collect();
    let control = ctx.admin.control.as_ref();
    let members: Vec<_> = view
        .members
        .iter()
        .map(|m| {
            let last_seen_ms = if view.is_self(&m.node_id) {
                Some(0)
            } else {
                control.and_then(|c| c.last_seen_ms(&m.node_id))
            };
            json!({
                "node_id": m.node_id,
                "generation": m.generation,
                "state": m.state.as_str(),
                "public_addr": m.public_addr.map(|a| a.to_string()),
                "cluster_addr": m.cluster_addr.to_string(),
                "admin_addr": m.admin_addr.map(|a| a.to_string()),
                "last_seen_ms": last_seen_ms,
                "share": shares.get(&m.node_id).copied().unwrap_or(0.0),
                "fingerprint": m.fingerprint,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "node_id": &*view.self_id,
        "fingerprint": view.fingerprint().to_string(),
        "vnodes": view.ring.vnodes(),
        "agreed": view.agreed(),
        "members": members,
        "ready": ctx.is_ready(),
        "ring_members": view.ring.members(),
    }))
}

/// The tenant id of an admin path, validated.
pub fn tenant_of(path: web::Path<String>) -> Result<String, ApiError> {
    let tenant = path.into_inner();
    validate_tenant_id(&tenant)
        .map_err(|e| ApiError::field("tenant_id", format!("`tenant_id` {e}")))?;
    Ok(tenant)
}

/// The numbers of a bucket's quota, in the words of its kind.
pub fn quota_json(quota: Option<BucketQuota>) -> serde_json::Map<String, Value> {
    let value = match quota {
        None => json!({ "unlimited": true }),
        Some(BucketQuota::Refill { rate, burst, per_s }) => json!({
            "kind": "token_bucket",
            "rate": rate,
            "per": format_duration_secs(u64::from(per_s)),
            "burst": burst,
        }),
        Some(BucketQuota::Window { amount, period }) => json!({
            "kind": "quota",
            "amount": amount,
            "period": period.to_string(),
        }),
        Some(BucketQuota::Leases { max, ttl_s }) => json!({
            "kind": "concurrency",
            "max": max,
            "lease_ttl": format_duration_secs(ttl_s),
        }),
    };
    match value {
        Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}

/// One bucket as its owner reported it.
fn bucket_json(owner: Option<&str>, r: &WireLimitReport, degraded: bool) -> Value {
    json!({
        "owner": owner,
        "source": source_of(r.source).as_str(),
        "unlimited": r.quota.is_none(),
        "remaining": r.quota.is_some().then_some(r.level / NANOS),
        "full_in_ms": r.full_in_ns.div_ceil(1_000_000),
        "degraded": degraded,
        "snapshot_age_ms": r.snapshot_age_ns.map(|ns| ns / 1_000_000),
        "resident": r.resident,
    })
}

/// A seed limit's bucket, in the names of `/v1/check` answers.
fn limit_json(limit: Limit, owner: Option<&str>, r: &WireLimitReport, degraded: bool) -> Value {
    let mut body = bucket_json(owner, r, degraded);
    body["limit"] = json!(limit.as_str());
    let (rate, burst) = match r.quota {
        Some(BucketQuota::Refill { rate, burst, .. }) => (rate, burst),
        _ => (0, 0),
    };
    let rate_key = if limit == Limit::TOKENS {
        "tokens_per_minute"
    } else {
        "requests_per_second"
    };
    body[rate_key] = json!(rate);
    body["burst_size"] = json!(burst);
    body
}

/// Asks the owner of `(key, limit)` for its bucket (this node's own shards
/// when it is the owner): the report, the owner, and whether this node
/// answered instead because the owner could not be reached (inspection
/// only; a reset fails with 503).
pub async fn owner_report(
    ctx: &NodeContext,
    key: &str,
    limit: Limit,
    op: TenantOp,
) -> Result<(WireLimitReport, Option<String>, bool), ApiError> {
    let view = ctx.router.view();
    let local = ctx.router.local();
    let unavailable = |e: llmtrace_actors::CheckError| ApiError::unavailable(e.to_string());
    let owner = view.owner(key, limit);
    let remote = owner
        .filter(|o| !view.is_self(o))
        .and_then(|o| view.member(o));
    let owner = owner.map(str::to_string);
    let Some(m) = remote else {
        let report = serve_tenant(local, key, limit, op)
            .await
            .map_err(unavailable)?;
        return Ok((report, owner, false));
    };
    let req = TenantRequest {
        origin: view.self_id.to_string(),
        tenant: key.to_string(),
        limit: limit.as_str().to_string(),
        op,
    };
    match ctx.admin.client.call(m.cluster_addr, &req).await {
        Ok(answer) => Ok((answer.report, owner, false)),
        Err(e) => {
            warn!(owner = %m.node_id, error = %e, "owner did not answer a bucket request");
            if op == TenantOp::Reset {
                return Err(ApiError::unavailable(format!(
                    "the owner {} of `{key}`'s {limit} bucket did not answer: {e}",
                    m.node_id
                )));
            }
            let report = serve_tenant(local, key, limit, TenantOp::Inspect)
                .await
                .map_err(unavailable)?;
            Ok((report, owner, true))
        }
    }
}

/// The seed's limits, reported under `/admin/tenants/{tenant}`.
const TENANT_LIMITS: [Limit; 2] = [Limit::REQUESTS, Limit::TOKENS];

/// Reports (or refills) the tenant's `requests` and `tokens` buckets.
async fn tenant_reports(
    ctx: &NodeContext,
    tenant: &str,
    op: TenantOp,
) -> Result<HttpResponse, ApiError> {
    let mut limits = Vec::with_capacity(TENANT_LIMITS.len());
    for limit in TENANT_LIMITS {
        let (report, owner, degraded) = owner_report(ctx, tenant, limit, op).await?;
        limits.push(limit_json(limit, owner.as_deref(), &report, degraded));
    }
    let view = ctx.router.view();
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant,
        "owner": view.owner(tenant, Limit::REQUESTS),
        "limits": limits,
        "fingerprint": view.fingerprint().to_string(),
    })))
}

/// `GET /admin/tenants/{tenant}`: the tenant's buckets as their owners see
/// them. An unknown tenant has full buckets.
pub async fn tenant(
    ctx: web::Data<NodeContext>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(path)?;
    tenant_reports(&ctx, &tenant, TenantOp::Inspect).await
}

/// `POST /admin/tenants/{tenant}/reset`: refills every bucket of the tenant
/// on its owner (and its snapshot), then reports them.
pub async fn reset(
    ctx: web::Data<NodeContext>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(path)?;
    tracing::info!(tenant = %tenant, "admin reset of a tenant's buckets");
    tenant_reports(&ctx, &tenant, TenantOp::Reset).await
}

fn drain_body(state: &DrainState) -> (u16, Value) {
    match state {
        DrainState::Drained {
            pushed,
            undelivered,
        } => (
            200,
            json!({ "status": "drained", "pushed": pushed, "undelivered": undelivered }),
        ),
        _ => (202, json!({ "status": "draining" })),
    }
}

/// `POST /admin/drain`: this node leaves the ring as on SIGTERM (readyz
/// 503, peers drop it, its buckets go to their new owners) but keeps running:
/// it still answers checks (forwarding them to their owners) and the admin
/// API. Answers once drained (200), or 202 if that takes over 30 s.
/// Idempotent.
pub async fn drain(ctx: web::Data<NodeContext>) -> HttpResponse {
    let tx = &ctx.admin.drain;
    let started = tx.send_if_modified(|s| {
        if *s == DrainState::Idle {
            *s = DrainState::Draining;
            true
        } else {
            false
        }
    });
    if started {
        tracing::info!("admin drain requested");
    }
    let mut rx = tx.subscribe();
    let state = tokio::time::timeout(
        DRAIN_WAIT,
        rx.wait_for(|s| matches!(s, DrainState::Drained { .. })),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|s| s.clone())
    .unwrap_or(DrainState::Draining);
    let (status, body) = drain_body(&state);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("valid status"))
        .json(body)
}
