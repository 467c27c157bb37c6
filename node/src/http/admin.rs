//! Admin listener handlers: Prometheus metrics and this node's view of the
//! cluster (members, ring fingerprint and agreement, key-space shares, the
//! owner of a tenant's buckets).

use actix_web::{web, HttpResponse};
use llmtrace_cluster_config::{validate_tenant_id, Limit};
use serde_json::json;

use super::error::ApiError;
use super::NodeContext;

/// `GET /metrics`.
pub async fn metrics(ctx: web::Data<NodeContext>) -> HttpResponse {
    let local = ctx.router.local();
    let mut text = local.metrics().render(local.cache_name());
    let view = ctx.router.view();
    ctx.router
        .metrics()
        .render(&mut text, &view.fingerprint().to_string());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// `GET /admin/cluster`: this node's view.
pub async fn cluster(ctx: web::Data<NodeContext>) -> HttpResponse {
    let view = ctx.router.view();
    let shares: std::collections::HashMap<String, f64> = view.ring.shares().into_iter().collect();
    let members: Vec<_> = view
        .members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.node_id,
                "generation": m.generation,
                "state": m.state.as_str(),
                "public_addr": m.public_addr.map(|a| a.to_string()),
                "cluster_addr": m.cluster_addr.to_string(),
                "admin_addr": m.admin_addr.map(|a| a.to_string()),
                "fingerprint": m.fingerprint,
                "share": shares.get(&m.node_id).copied().unwrap_or(0.0),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "node_id": &*view.self_id,
        "ready": ctx.is_ready(),
        "fingerprint": view.fingerprint().to_string(),
        "vnodes": view.ring.vnodes(),
        "agreed": view.agreed(),
        "ring_members": view.ring.members(),
        "members": members,
    }))
}

/// `GET /admin/tenants/{tenant}`: which node owns each of the tenant's
/// buckets, by this node's ring.
pub async fn tenant(
    ctx: web::Data<NodeContext>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = path.into_inner();
    validate_tenant_id(&tenant)
        .map_err(|e| ApiError::field("tenant_id", format!("`tenant_id` {e}")))?;
    let view = ctx.router.view();
    let limits: Vec<_> = Limit::ALL
        .iter()
        .map(|l| json!({ "limit": l.as_str(), "owner": view.owner(&tenant, *l) }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant,
        "owner": view.owner(&tenant, Limit::Requests),
        "fingerprint": view.fingerprint().to_string(),
        "limits": limits,
    })))
}
