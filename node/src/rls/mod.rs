//! The Envoy rate limit service (`--rls-listen`): gRPC
//! `envoy.service.ratelimit.v3.RateLimitService` and `grpc.health.v1`
//! on the node's runtime, over h2 (tonic).
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use llmtrace_cluster_config::rls::{file::rule_files, load_rules};
use llmtrace_cluster_config::RlsLimits;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use metrics::RlsMetrics;
pub use service::RlsService;

/// How often the rule files are looked at for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A running RLS listener.
pub struct RlsServer {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl RlsServer {
    /// Serves `service` on `listener` (already bound), and watches `config`
    /// for changes.
    pub fn start(
        listener: std::net::TcpListener,
        service: RlsService,
        config: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener =
            tokio::net::TcpListener::from_std(listener).context("cannot serve the rls listener")?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let (stop, stopped) = oneshot::channel::<()>();
        let (reporter, health) = tonic_health::server::health_reporter();
        let watcher = config.map(|path| {
            tokio::spawn(watch(
                path,
                service.limits.clone(),
                Arc::clone(&service.metrics),
            ))
        });
        let rls = RateLimitServiceServer::new(service);
        let task = tokio::spawn(async move {
            reporter
                .set_serving::<RateLimitServiceServer<RlsService>>()
                .await;
            let served = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(rls)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                warn!("the rls listener stopped: {e}");
            }
        });
        Ok(RlsServer {
            stop: Some(stop),
            task,
            watcher,
        })
    }

    /// Stops accepting calls and waits for those under way.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(w) = &self.watcher {
            w.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
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
