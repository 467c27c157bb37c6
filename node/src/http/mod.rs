//! HTTP surfaces: the public listener (checks, health), the admin listener
//! (metrics, cluster view, dashboard) and the cluster listener (node-to-node RPC).
//! Errors map to HTTP in exactly one place, [`error::ApiError`].

pub mod admin;
pub mod check;
pub mod cluster;
pub mod error;
pub mod headers;
pub mod input;
pub mod ui;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use llmtrace_actors::{Metrics, Router};
use serde_json::json;

use self::error::ApiError;

/// What every handler of a node shares.
pub struct NodeContext {
    /// Routes checks to their owner (this node's shards or a peer).
    pub router: Router,
    /// True once the node joined and its ring holds it; false again while
    /// it leaves. `GET /readyz` answers from it.
    pub ready: AtomicBool,
    /// Required on node-to-node requests, when set.
    pub cluster_secret: Option<String>,
    /// The cluster listener's address: the node-to-node route answers only
    /// requests that arrived there.
    pub cluster_listener: std::net::SocketAddr,
}

impl NodeContext {
    pub fn new(
        router: Router,
        cluster_secret: Option<String>,
        cluster_listener: std::net::SocketAddr,
    ) -> Arc<Self> {
        Arc::new(NodeContext {
            router,
            ready: AtomicBool::new(false),
            cluster_secret,
            cluster_listener,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        self.router.local().metrics()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::not_found())
}

async fn method_not_allowed() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::method_not_allowed())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(ctx: web::Data<NodeContext>) -> HttpResponse {
    if ctx.is_ready() {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready",
            "error": { "code": "not_ready", "message": "the node is joining or leaving the cluster" }
        }))
    }
}

fn get(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

fn post(path: &str, route: actix_web::Route) -> actix_web::Resource {
    get(path, route)
}

/// Routes of the public listener.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(post("/v1/check", web::post().to(check::check)))
        .service(post("/v1/check/batch", web::post().to(check::check_batch)))
        .service(get("/healthz", web::get().to(healthz)))
        .service(get("/readyz", web::get().to(readyz)))
        .default_service(web::to(not_found));
}

/// Routes of the admin listener.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/metrics", web::get().to(admin::metrics)))
        .service(get("/admin/cluster", web::get().to(admin::cluster)))
        .service(get("/admin/tenants/{tenant}", web::get().to(admin::tenant)))
        .service(get("/admin/ui", web::get().to(ui::page)))
        .service(get("/healthz", web::get().to(healthz)))
        .default_service(web::to(not_found));
}

/// The node-to-node routes (each refuses requests that did not arrive on
/// the cluster listener).
fn node_to_node(cfg: &mut web::ServiceConfig) {
    use llmtrace_actors::rpc::{CHECK_PATH, HANDOFF_PATH, INSTALL_PATH};
    cfg.service(post(CHECK_PATH, web::post().to(cluster::checks)))
        .service(post(HANDOFF_PATH, web::post().to(cluster::handoff)))
        .service(post(INSTALL_PATH, web::post().to(cluster::install)));
}

/// Routes of the cluster listener alone (tests).
pub fn cluster_routes(cfg: &mut web::ServiceConfig) {
    node_to_node(cfg);
    cfg.default_service(web::to(not_found));
}

/// Routes of the server behind both the public and the cluster listener:
/// the public API and the node-to-node routes.
pub fn node_routes(cfg: &mut web::ServiceConfig) {
    node_to_node(cfg);
    public_routes(cfg);
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
