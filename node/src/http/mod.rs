//! HTTP surfaces: the public listener (checks, health), the admin listener
//! (metrics, cluster view, dashboard) and the cluster listener (node-to-node RPC).
//! Errors map to HTTP in exactly one place, [`error::ApiError`].

pub mod admin;
pub mod admin_keys;
pub mod admin_limits;
pub mod body_timeout;
pub mod check;
pub mod cluster;
pub mod cluster_stream;
pub mod descriptors;
pub mod error;
pub mod headers;
pub mod input;
pub mod middleware;
pub mod strict_json;
pub mod top_refused;
pub mod ui;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use actix_web::{web, HttpResponse};
use llmtrace_actors::cluster::overrides::RedisOverrideStore;
use llmtrace_actors::metrics::Registry;
use llmtrace_actors::{ClusterClient, ClusterControl, Metrics, Router, Rpc};
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
    /// Counters of the proxy listener (rendered on `/metrics`).
    pub proxy_metrics: Arc<crate::proxy::metrics::ProxyMetrics>,
    /// Every series of `GET /metrics`, registered once at start.
    pub registry: Registry,
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
    /// Asks a tenant's owner for its bucket.
    pub client: ClusterClient,
    /// Drain requests (admin) and progress (server).
    pub drain: watch::Sender<DrainState>,
}

impl Default for AdminContext {
    fn default() -> Self {
        AdminContext {
            token: None,
            control: None,
            store: None,
            client: ClusterClient::new(None, std::time::Duration::from_millis(500)),
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
            Registry::default(),
        )
    }

    /// A node's context; `registry` holds what the node registered before
    /// (the Redis layer's series), the context registers the rest.
    pub fn with_admin(
        router: Router,
        cluster_secret: Option<String>,
        cluster_listener: std::net::SocketAddr,
        admin: AdminContext,
        mut registry: Registry,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<NodeContext>| {
            let proxy_metrics = Arc::default();
            admin::register_metrics(&mut registry, &router, &proxy_metrics, me.clone());
            NodeContext {
                router,
                ready: AtomicBool::new(false),
                cluster_secret,
                cluster_listener,
                admin,
                proxy_metrics,
                registry,
            }
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

/// A resource serving `route` at `path`; other methods answer 405.
fn resource(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// A route table: `(method, path, handler)`. The listeners are registered
/// from these tables, and [`public_route_list`] / [`admin_route_list`] read
/// the same tables, so the OpenAPI test compares the document with exactly
/// what is served.
type RouteTable = Vec<(&'static str, &'static str, actix_web::Route)>;

fn public_table() -> RouteTable {
    vec![
        ("POST", "/v1/check", web::post().to(check::check)),
        (
            "POST",
            "/v1/check/batch",
            web::post().to(check::check_batch),
        ),
        ("POST", "/v1/release", web::post().to(descriptors::release)),
        ("POST", "/v1/adjust", web::post().to(descriptors::adjust)),
        ("GET", "/healthz", web::get().to(healthz)),
        ("GET", "/readyz", web::get().to(readyz)),
    ]
}

fn admin_table() -> RouteTable {
    vec![
        ("GET", "/metrics", web::get().to(admin::metrics)),
        ("GET", "/healthz", web::get().to(healthz)),
        ("GET", "/admin/cluster", web::get().to(admin::cluster)),
        (
            "GET",
            "/admin/tenants/{tenant}",
            web::get().to(admin::tenant),
        ),
        (
            "PUT",
            "/admin/tenants/{tenant}/limits",
            web::put().to(admin_limits::put),
        ),
        (
            "DELETE",
            "/admin/tenants/{tenant}/limits",
            web::delete().to(admin_limits::delete),
        ),
        (
            "POST",
            "/admin/tenants/{tenant}/reset",
            web::post().to(admin::reset),
        ),
        ("GET", "/admin/limits", web::get().to(admin_limits::list)),
        (
            "GET",
            "/admin/limits/top-refused",
            web::get().to(top_refused::list),
        ),
        (
            "GET",
            "/admin/limits/{limit}/keys/{key}",
            web::get().to(admin_limits::key_report),
        ),
        (
            "POST",
            "/admin/limits/{limit}/keys/{key}/reset",
            web::post().to(admin_limits::key_reset),
        ),
        (
            "PUT",
            "/admin/limits/{limit}/keys/{key}/override",
            web::put().to(admin_limits::key_put),
        ),
        (
            "DELETE",
            "/admin/limits/{limit}/keys/{key}/override",
            web::delete().to(admin_limits::key_delete),
        ),
        ("GET", "/admin/proxy/keys", web::get().to(admin_keys::list)),
        (
            "PUT",
            "/admin/proxy/keys/{key_id}",
            web::put().to(admin_keys::put),
        ),
        (
            "DELETE",
            "/admin/proxy/keys/{key_id}",
            web::delete().to(admin_keys::delete),
        ),
        ("POST", "/admin/drain", web::post().to(admin::drain)),
        ("GET", "/admin/ui", web::get().to(ui::page)),
    ]
}

fn list(table: RouteTable) -> Vec<(&'static str, &'static str)> {
    table.into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// `(method, path)` of every public route.
pub fn public_route_list() -> Vec<(&'static str, &'static str)> {
    list(public_table())
}

/// `(method, path)` of every admin route.
pub fn admin_route_list() -> Vec<(&'static str, &'static str)> {
    list(admin_table())
}

/// Registers a table: one resource per path (in first-seen order) with its
/// methods; other methods answer 405.
fn register(cfg: &mut web::ServiceConfig, table: RouteTable) {
    let mut by_path: Vec<(&'static str, Vec<actix_web::Route>)> = Vec::new();
    for (_, path, route) in table {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, routes)) => routes.push(route),
            None => by_path.push((path, vec![route])),
        }
    }
    for (path, routes) in by_path {
        let resource = routes
            .into_iter()
            .fold(web::resource(path), |r, route| r.route(route))
            .default_service(web::to(method_not_allowed));
        cfg.service(resource);
    }
}

/// Routes of the public listener (wrap the app in [`middleware::request_id`]).
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    register(cfg, public_table());
    cfg.default_service(web::to(not_found));
}

/// Routes of the admin listener (wrap the app in [`middleware::admin_auth`]
/// and [`middleware::request_id`]).
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    register(cfg, admin_table());
    cfg.default_service(web::to(not_found));
}

/// The node-to-node routes (each refuses requests that did not arrive on
/// the cluster listener).
fn node_to_node(cfg: &mut web::ServiceConfig) {
    use llmtrace_actors::cluster::rpc::token_lease_wire::TokenLeaseRequest;
    use llmtrace_actors::cluster::rpc::wire::{
        BatchRequest, HandoffRequest, InstallRequest, TenantRequest, TopRefusedRequest,
    };
    cfg.service(resource(
        BatchRequest::PATH,
        web::post().to(cluster::checks),
    ))
    .service(resource(
        llmtrace_actors::cluster::rpc::stream::STREAM_PATH,
        web::get().to(cluster_stream::stream),
    ))
    .service(resource(
        HandoffRequest::PATH,
        web::post().to(cluster::handoff),
    ))
    .service(resource(
        TenantRequest::PATH,
        web::post().to(cluster::tenant),
    ))
    .service(resource(
        InstallRequest::PATH,
        web::post().to(cluster::install),
    ))
    .service(resource(
        TopRefusedRequest::PATH,
        web::post().to(cluster::top_refused),
    ))
    .service(resource(
        TokenLeaseRequest::PATH,
        web::post().to(cluster::token_lease),
    ));
}

/// Routes of the cluster listener alone (tests).
pub fn cluster_routes(cfg: &mut web::ServiceConfig) {
    node_to_node(cfg);
    cfg.default_service(web::to(not_found));
}

/// Routes of the server behind both the public and the cluster listener:
/// the public API and the node-to-node routes. The router tries resources
/// in the order they were registered: the public ones (checks first) come
/// first.
pub fn node_routes(cfg: &mut web::ServiceConfig) {
    public_routes(cfg);
    node_to_node(cfg);
}

#[cfg(test)]
mod tests;
