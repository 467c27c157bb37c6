//! Wiring: the cache layer, the shards, the two listeners, and an orderly stop.
//!
//! [`run`] binds the configured addresses; [`serve`] takes listeners that are
//! already bound (port 0 in tests) and a shutdown future, as mini-redis does.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use llmtrace_actors::{
    CacheLayer, InMemoryCacheLayer, Limiter, RedisCacheLayer, ShardTiming, SystemClock,
};
use llmtrace_cluster_config::NodeConfig;
use tracing::{info, warn};

use crate::http;

/// How long a stopping node waits for in-flight requests, then for the final
/// snapshot flush.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Binds the configured listeners and runs until SIGTERM or SIGINT.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let public = TcpListener::bind(config.listen)
        .with_context(|| format!("cannot bind listen address {}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .with_context(|| format!("cannot bind admin_listen address {}", config.admin_listen))?;
    serve(config, public, admin, shutdown_signal()).await
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, stopping"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received, stopping"),
    }
}

/// Builds the cache layer the configuration asks for.
fn cache_layer(config: &NodeConfig) -> anyhow::Result<Arc<dyn CacheLayer>> {
    Ok(match &config.redis_url {
        None => Arc::new(InMemoryCacheLayer::new(Arc::new(SystemClock))),
        Some(url) => Arc::new(
            RedisCacheLayer::new(url, Duration::from_millis(config.redis_timeout_ms))
                .with_context(|| "invalid value for `redis_url`".to_string())?,
        ),
    })
}

/// Runs a node on already-bound listeners until `shutdown` resolves, then
/// stops taking requests, writes every dirty bucket and returns.
pub async fn serve(
    config: NodeConfig,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cache = cache_layer(&config)?;
    let limiter = Limiter::start(
        config.shards,
        Arc::new(config.rate_limit.clone()),
        cache,
        Arc::new(SystemClock),
        ShardTiming {
            snapshot_interval: Duration::from_millis(config.snapshot_interval_ms),
            ..ShardTiming::default()
        },
    );
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let data = web::Data::new(limiter.clone());

    let public_data = data.clone();
    let public_server = HttpServer::new(move || {
        App::new()
            .app_data(public_data.clone())
            .configure(http::public_routes)
    })
    .workers(config.http_workers)
    .disable_signals()
    .shutdown_timeout(STOP_GRACE.as_secs())
    .listen(public)
    .context("cannot serve the public listener")?
    .run();
    let admin_data = data.clone();
    let admin_server = HttpServer::new(move || {
        App::new()
            .app_data(admin_data.clone())
            .configure(http::admin_routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(admin)
    .context("cannot serve the admin listener")?
    .run();

    let (public_handle, admin_handle) = (public_server.handle(), admin_server.handle());
    let public_task = actix_rt::spawn(public_server);
    let admin_task = actix_rt::spawn(admin_server);

    info!(
        node_id = %config.node_id,
        %public_addr,
        %admin_addr,
        cache = limiter.cache_name(),
        shards = config.shards,
        "llmtrace-node started"
    );
    // Machine-readable start line (tests and scripts wait for it).
    println!(
        "llmtrace-node listening public={public_addr} admin={admin_addr} node_id={}",
        config.node_id
    );

    shutdown.await;
    public_handle.stop(true).await;
    match limiter.flush_all(STOP_GRACE).await {
        Ok(n) => info!(snapshots = n, "final snapshot flush done"),
        Err(e) => warn!("final snapshot flush failed, recent consumption may be lost: {e}"),
    }
    admin_handle.stop(true).await;
    let _ = public_task.await;
    let _ = admin_task.await;
    info!("llmtrace-node stopped");
    Ok(())
}
