//! HTTP surfaces: the public listener (checks, health), the admin listener
//! (metrics, cluster view, dashboard) and the cluster listener (node-to-node RPC).
//! Errors map to HTTP in exactly one place, [`error::ApiError`].

pub mod admin;
pub mod admin_limits;
pub mod check;
pub mod cluster;
pub mod error;
pub mod headers;
pub mod input;
pub mod ui;
pub mod middleware;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use llmtrace_actors::overrides::RedisOverrideStore;
use llmtrace_actors::{ClusterControl, Metrics, Router};
use serde_json::json;
use tokio::sync::watch;

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
    /// What the admin API needs beyond the router.
    pub admin: AdminContext,
}

/// Where a node is in an admin-requested drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainState {
    /// Not asked to drain.
    Idle,
    /// `POST /admin/drain` was received; the leave is under way.
    Draining,
    /// Left the ring; buckets handed over (`pushed`), or written to Redis
    /// when no new owner took them (`undelivered`).
    Drained { pushed: usize, undelivered: usize },
}

/// The admin API's share of a node.
pub struct AdminContext {
    /// Bearer token of the admin routes (`None`: loopback only, open).
    pub token: Option<String>,
    /// Overrides and liveness from membership (`None` in unit tests).
    pub control: Option<ClusterControl>,
    /// Where runtime overrides persist (`None` without Redis).
    pub store: Option<RedisOverrideStore>,
    /// Bound on a tenant request to the owner.
    pub rpc_timeout: std::time::Duration,
    /// Drain requests (admin) and progress (server).
    pub drain: watch::Sender<DrainState>,
}

impl Default for AdminContext {
    fn default() -> Self {
        AdminContext {
            token: None,
            control: None,
            store: None,
            rpc_timeout: std::time::Duration::from_millis(500),
            drain: watch::channel(DrainState::Idle).0,
        }
    }
}

impl NodeContext {
    pub fn new(
        router: Router,
        cluster_secret: Option<String>,
        cluster_listener: std::net::SocketAddr,
    ) -> Arc<Self> {
        Self::with_admin(
            router,
            cluster_secret,
            cluster_listener,
            AdminContext::default(),
        )
    }

    pub fn with_admin(
        router: Router,
        cluster_secret: Option<String>,
        cluster_listener: std::net::SocketAddr,
        admin: AdminContext,
    ) -> Arc<Self> {
        Arc::new(NodeContext {
            router,
            ready: AtomicBool::new(false),
            cluster_secret,
            cluster_listener,
            admin,
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

/// Every route each listener serves, as `(method, path)`: the OpenAPI test
/// compares the document with these.
pub const PUBLIC_ROUTES: [(&str, &str); 4] = [
    ("POST", "/v1/check"),
    ("POST", "/v1/check/batch"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];
pub const ADMIN_ROUTES: [(&str, &str); 9] = [
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/admin/cluster"),
    ("GET", "/admin/tenants/{tenant}"),
    ("PUT", "/admin/tenants/{tenant}/limits"),
    ("DELETE", "/admin/tenants/{tenant}/limits"),
    ("POST", "/admin/tenants/{tenant}/reset"),
    ("GET", "/admin/limits"),
    ("POST", "/admin/drain"),
];

/// Routes of the public listener (wrap the app in [`middleware::request_id`]).
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(post("/v1/check", web::post().to(check::check)))
        .service(post("/v1/check/batch", web::post().to(check::check_batch)))
        .service(get("/healthz", web::get().to(healthz)))
        .service(get("/readyz", web::get().to(readyz)))
        .default_service(web::to(not_found));
}

/// Routes of the admin listener (wrap the app in [`middleware::admin_auth`]
/// and [`middleware::request_id`]).
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/metrics", web::get().to(admin::metrics)))
        .service(get("/admin/cluster", web::get().to(admin::cluster)))
        .service(get("/admin/tenants/{tenant}", web::get().to(admin::tenant)))
        .service(get("/admin/ui", web::get().to(ui::page)))
        .service(
            web::resource("/admin/tenants/{tenant}/limits")
                .route(web::put().to(admin_limits::put))
                .route(web::delete().to(admin_limits::delete))
                .default_service(web::to(method_not_allowed)),
        )
        .service(post(
            "/admin/tenants/{tenant}/reset",
            web::post().to(admin::reset),
        ))
        .service(get("/admin/limits", web::get().to(admin_limits::list)))
        .service(post("/admin/drain", web::post().to(admin::drain)))
        .service(get("/healthz", web::get().to(healthz)))
        .default_service(web::to(not_found));
}

/// The node-to-node routes (each refuses requests that did not arrive on
/// the cluster listener).
fn node_to_node(cfg: &mut web::ServiceConfig) {
    use llmtrace_actors::rpc::{CHECK_PATH, HANDOFF_PATH, INSTALL_PATH, TENANT_PATH};
    cfg.service(post(CHECK_PATH, web::post().to(cluster::checks)))
        .service(post(HANDOFF_PATH, web::post().to(cluster::handoff)))
        .service(post(TENANT_PATH, web::post().to(cluster::tenant)))
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
