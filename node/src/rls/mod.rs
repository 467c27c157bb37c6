//! The Envoy rate limit service (`--rls-listen`): gRPC
//! `envoy.service.ratelimit.v3.RateLimitService` and `grpc.health.v1`
//! over h2 (tonic's services, served by hyper) on the node's runtime: each
//! accepted connection is handed to one of the HTTP worker threads (round
//! robin), which host the shards, so a check whose shard lives there does
//! not change thread, as for HTTP checks.
//!
//! - [`service`]: `ShouldRateLimit`, one all-or-nothing check per request.
//! - [`metrics`]: decisions per domain and rule, reloads.
//!
//! The rules come from `--rls-config` (envoyproxy/ratelimit YAML) and are
//! reloaded on SIGHUP and when a file changes (polled every
//! [`WATCH_INTERVAL`]); an invalid new file is refused with a log line and
//! `llmtrace_rls_config_reloads_total{result="invalid"}`, and the rules in
//! force stay.

pub mod metrics;
pub mod service;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix_rt::ArbiterHandle;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use llmtrace_cluster_config::rls::{file::rule_files, load_rules};
use llmtrace_cluster_config::RlsLimits;
use tonic::service::Routes;
use tracing::{debug, info, warn};

pub use metrics::RlsMetrics;
pub use service::RlsService;

/// How often the rule files are looked at for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The arbiters RLS connections are served on: the HTTP workers register
/// themselves as they start; until one has, the node's own arbiter serves.
#[derive(Clone, Default)]
pub struct Workers {
    arbiters: Arc<Mutex<Vec<ArbiterHandle>>>,
    next: Arc<AtomicUsize>,
}

impl Workers {
    /// Registers the arbiter of the calling thread (a worker starting).
    pub fn register_current(&self) {
        let mut all = self.arbiters.lock().unwrap_or_else(|e| e.into_inner());
        all.push(actix_rt::Arbiter::current());
    }

    /// The arbiter the next connection goes to.
    fn pick(&self) -> ArbiterHandle {
        let all = self.arbiters.lock().unwrap_or_else(|e| e.into_inner());
        match all.len() {
            0 => actix_rt::Arbiter::current(),
            n => all[self.next.fetch_add(1, Relaxed) % n].clone(),
        }
    }
}

/// Spawns hyper's per-stream tasks on the arbiter serving the connection
/// (actix's local task set: the router's forwarders are actors of that
/// thread).
#[derive(Clone, Copy)]
struct Local;

impl<F: Future + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, fut: F) {
        actix_rt::spawn(async move {
            fut.await;
        });
    }
}

/// A running RLS listener.
pub struct RlsServer {
    accept: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl RlsServer {
    /// Serves `service` on `listener` (already bound) on `workers`, and
    /// watches `config` for changes.
    pub fn start(
        listener: std::net::TcpListener,
        service: RlsService,
        config: Option<PathBuf>,
        workers: Workers,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (reporter, health) = tonic_health::server::health_reporter();
        let watcher = config.map(|path| {
            tokio::spawn(watch(
                path,
                service.limits.clone(),
                Arc::clone(&service.metrics),
            ))
        });
        let routes = Routes::new(health)
            .add_service(RateLimitServiceServer::new(service))
            .prepare();
        let accept = tokio::spawn(async move {
            reporter
                .set_serving::<RateLimitServiceServer<RlsService>>()
                .await;
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors and the like: back off, go on.
                        warn!("rls listener: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                let routes = routes.clone();
                workers.pick().spawn_fn(move || {
                    actix_rt::spawn(serve_connection(stream, routes));
                });
            }
        });
        Ok(RlsServer { accept, watcher })
    }

    /// Stops accepting connections (those open end with the workers).
    pub async fn stop(self) {
        self.accept.abort();
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

/// Serves one h2 connection on the calling arbiter.
async fn serve_connection(stream: std::net::TcpStream, routes: Routes) {
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => return warn!("rls listener: cannot serve a connection: {e}"),
    };
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper_util::service::TowerToHyperService::new(routes);
    if let Err(e) = hyper::server::conn::http2::Builder::new(Local)
        .serve_connection(io, service)
        .await
    {
        debug!("rls connection ended: {e}");
    }
}

/// What identifies the rule files' contents cheaply: each file and its
/// modification time and length.
fn fingerprint(path: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    rule_files(path)
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (f, modified, len)
        })
        .collect()
}

/// Logs (at debug level) the limit each rule counts under, for the admin
/// routes of named limits.
pub fn log_rules(rules: &llmtrace_cluster_config::RlsRules) {
    for r in rules.rules() {
        tracing::debug!(domain = %r.domain, rule = %r.name, path = %r.path, limit = %r.limit, "rls rule");
    }
}

/// Loads `path` and puts its rules in force; an invalid file changes
/// nothing.
pub fn reload(path: &Path, limits: &RlsLimits, metrics: &RlsMetrics) -> bool {
    match load_rules(path) {
        Ok(rules) => {
            metrics.track(&rules);
            log_rules(&rules);
            let n = rules.rules().count();
            limits.replace(rules);
            metrics.reloads_ok.inc();
            info!(path = %path.display(), rules = n, "rls rules reloaded");
            true
        }
        Err(e) => {
            metrics.reloads_invalid.inc();
            warn!(path = %path.display(), error = %e, "rls rules not reloaded: the rules in force stay");
            false
        }
    }
}

/// Reloads on SIGHUP and when the files change.
async fn watch(path: PathBuf, limits: RlsLimits, metrics: Arc<RlsMetrics>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("cannot listen for SIGHUP (rls rules reload on file changes only): {e}");
            None
        }
    };
    let mut seen = fingerprint(&path);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        let hangup = async {
            match &mut hup {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hangup => {
                info!("SIGHUP received: reloading the rls rules");
                seen = fingerprint(&path);
                reload(&path, &limits, &metrics);
            }
            _ = tick.tick() => {
                let now = fingerprint(&path);
                if now != seen {
                    seen = now;
                    reload(&path, &limits, &metrics);
                }
            }
        }
    }
}
