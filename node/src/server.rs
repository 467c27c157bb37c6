//! Wiring: the cache layer, the shards, membership, the router and the three
//! listeners, then an orderly stop.
//!
//! [`run`] binds the configured addresses; [`serve`] takes listeners that are
//! already bound (port 0 in tests) and a shutdown future, as mini-redis does.

use std::future::Future;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use llmtrace_actors::handoff::push_all;
use llmtrace_actors::{snapshot, BucketQuota, SnapshotWrite};
use llmtrace_actors::{
    AwcPeerClient, BatchSettings, CacheError, CacheLayer, ClientFactory, ClusterMetrics,
    HandoffSource, InMemoryCacheLayer, Limiter, Member, MemberState, Membership,
    MembershipSettings, PeerClient, PeerHandoff, RedisCacheLayer, Router, RouterSettings,
    ShardTiming, SystemClock,
};
use llmtrace_cluster_config::{NodeConfig, ShardPlacement, SnapshotMode};
use tracing::{info, warn};

use crate::http::middleware::{admin_auth, request_id};
use crate::http::{self, AdminContext, DrainState, NodeContext};
use crate::proxy::{self, ProxyContext};
use actix_web::middleware::from_fn;
use llmtrace_actors::overrides::RedisOverrideStore;

/// How long a stopping node waits for in-flight requests, then for the final
/// snapshot flush.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a node with seeds waits to hear from a peer before it starts as
/// a cluster of one.
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a joining node waits for its view to match the ring the members
/// publish before it announces itself ready.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a leaving node waits for its peers to drop it from their rings
/// while it still answers (readyz already 503).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The listeners of a node.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
    /// TCP for node-to-node RPC; gossip binds UDP on the same port.
    pub cluster: TcpListener,
    /// The LLM proxy listener, when proxy mode is on.
    pub proxy: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses. With cluster port 0, picks a port
    /// free for both TCP and UDP.
    pub fn bind(config: &NodeConfig) -> anyhow::Result<Self> {
        let public = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot bind listen address {}", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .with_context(|| format!("cannot bind admin_listen address {}", config.admin_listen))?;
        let cluster = bind_cluster(config.cluster.listen)?;
        let proxy = match config.proxy.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("cannot bind proxy.listen address {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            public,
            admin,
            cluster,
            proxy,
        })
    }
}

fn bind_cluster(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let what = || format!("cannot bind cluster.listen address {addr}");
    if addr.port() != 0 {
        UdpSocket::bind(addr).with_context(|| format!("{}/UDP (gossip)", what()))?;
        return TcpListener::bind(addr).with_context(what);
    }
    for _ in 0..50 {
        let tcp = TcpListener::bind(addr).with_context(what)?;
        if UdpSocket::bind(tcp.local_addr()?).is_ok() {
            return Ok(tcp);
        }
    }
    anyhow::bail!("{}: no port free for both TCP and UDP", what())
}

/// Binds the configured listeners and runs until SIGTERM or SIGINT.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config)?;
    serve(config, listeners, shutdown_signal()).await
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

/// Nodes gossip only with nodes of the same cluster id; deriving it from the
/// secret keeps clusters with different secrets apart.
fn cluster_id(secret: Option<&str>) -> String {
    match secret {
        None => "llmtrace".to_string(),
        Some(s) => {
            let h = llmtrace_actors::key::stable_hash(s, llmtrace_cluster_config::Limit::Requests);
            format!("llmtrace-{:08x}", h as u32)
        }
    }
}

fn peer_clients(secret: Option<String>, timeout: Duration) -> ClientFactory {
    Arc::new(move |m: &Member| {
        Box::new(AwcPeerClient::new(m.cluster_addr, secret.clone(), timeout)) as Box<dyn PeerClient>
    })
}

/// Leaves the ring in order: readyz turns 503 (load balancers stop
/// sending), peers learn `leaving` and drop this node from their rings, then
/// every bucket still held here goes to its new owner (those already asked
/// for were pulled); what cannot be delivered goes to Redis. Checks arriving
/// meanwhile are still answered. Answers (pushed, undelivered).
async fn leave(
    ctx: &NodeContext,
    membership: &Membership,
    limiter: &Limiter,
    cache: &Arc<dyn CacheLayer>,
    config: &NodeConfig,
    timing: ShardTiming,
) -> (usize, usize) {
    let c = &config.cluster;
    let forward_timeout = Duration::from_millis(c.forward_timeout_ms);
    ctx.set_ready(false);
    membership.set_state(MemberState::Leaving).await;
    if membership.wait_until_left(LEAVE_TIMEOUT).await {
        info!("peers dropped this node from their rings");
    } else {
        warn!("peers did not confirm the leave within {LEAVE_TIMEOUT:?}; stopping anyway");
    }
    let (pushed, undelivered) = push_all(
        limiter,
        &membership.view(),
        c.secret.as_deref(),
        forward_timeout,
    )
    .await;
    let n_undelivered = undelivered.len();
    info!(
        pushed,
        undelivered = n_undelivered,
        "buckets handed to their new owners"
    );
    if !undelivered.is_empty() && timing.write_behind {
        let writes: Vec<SnapshotWrite> = undelivered
            .into_iter()
            .filter_map(|(key, state)| {
                let quota = BucketQuota::of(config.rate_limit.quota(&key.tenant, key.limit))?;
                Some(SnapshotWrite {
                    ttl_ms: snapshot::ttl_ms(&state, quota),
                    key,
                    state,
                })
            })
            .collect();
        if let Err(e) = cache.store(Arc::new(writes)).await {
            warn!("could not snapshot undelivered buckets: {e}");
        }
    }
    (pushed, n_undelivered)
}

/// Runs a node on already-bound listeners until `shutdown` resolves, then
/// leaves the cluster, stops taking requests, writes every dirty bucket and
/// returns.
pub async fn serve(
    config: NodeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cache = cache_layer(&config)?;
    let timing = ShardTiming {
        // Without Redis the shards' maps are the only copy that matters:
        // snapshots into the same process would double the memory of every
        // bucket and survive nothing the maps do not.
        write_behind: config.redis_url.is_some(),
        write_through: config.snapshot_mode == SnapshotMode::WriteThrough,
        snapshot_interval: Duration::from_millis(config.snapshot_interval_ms),
        ..ShardTiming::default()
    };
    let public_addr = listeners.public.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let cluster_addr = listeners.cluster.local_addr()?;
    let c = &config.cluster;
    let advertise = if c.advertise.port() == 0 {
        SocketAddr::new(c.advertise.ip(), cluster_addr.port())
    } else {
        c.advertise
    };
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let cluster_metrics = Arc::new(ClusterMetrics::default());
    let membership = Membership::start(
        MembershipSettings {
            node_id: config.node_id.clone(),
            generation,
            listen: cluster_addr,
            advertise,
            public_addr,
            admin_addr,
            seeds: c.seeds.clone(),
            cluster_id: cluster_id(c.secret.as_deref()),
            vnodes: c.vnodes,
            gossip_interval: Duration::from_millis(c.gossip_interval_ms),
            phi_threshold: c.phi_threshold,
            // Shared with the limiter's copy of the block (clones share it).
            runtime: config.rate_limit.runtime.clone(),
        },
        Arc::clone(&cluster_metrics),
    )
    .await
    .context("cannot start gossip")?;
    let forward_timeout = Duration::from_millis(c.forward_timeout_ms);
    // A bucket that moved is pulled from its previous owner on its first
    // check here (graceful joins and leaves lose nothing).
    let handoff: Arc<dyn HandoffSource> =
        PeerHandoff::new(membership.view(), c.secret.clone(), forward_timeout);
    let limits = Arc::new(config.rate_limit.clone());
    let clock = Arc::new(SystemClock);
    let (limiter, host) = match config.shard_placement {
        ShardPlacement::Dedicated => (
            Limiter::start_with_handoff(
                config.shards,
                limits,
                Arc::clone(&cache),
                clock,
                timing,
                Some(handoff),
            ),
            None,
        ),
        ShardPlacement::Workers => {
            let (limiter, host) = Limiter::hosted(
                config.shards,
                config.http_workers,
                limits,
                Arc::clone(&cache),
                clock,
                timing,
                Some(handoff),
            );
            (limiter, Some(host))
        }
    };

    let router = Router::new(
        limiter.clone(),
        membership.view(),
        RouterSettings {
            batch: BatchSettings {
                max_items: c.forward_batch_max,
                max_wait: Duration::from_micros(c.forward_batch_wait_us),
            },
            forward_timeout,
            on_owner_unreachable: c.on_owner_unreachable,
        },
        cluster_metrics,
        peer_clients(c.secret.clone(), forward_timeout),
    );
    // Runtime overrides: those stored in Redis first (a restarted cluster
    // keeps them), then whatever peers gossip.
    let control = membership.control();
    let store = match &config.redis_url {
        None => None,
        Some(url) => match RedisOverrideStore::new(
            url,
            Duration::from_millis(config.redis_timeout_ms).max(Duration::from_secs(1)),
        ) {
            Ok(store) => {
                match store.load().await {
                    Ok(table) => {
                        let n = table.values().filter(|e| e.value.is_some()).count();
                        control.seed_overrides(table).await;
                        info!(overrides = n, "runtime limit overrides loaded from Redis");
                    }
                    Err(e) => warn!("could not load runtime limit overrides from Redis (peers may still gossip them): {e}"),
                }
                Some(store)
            }
            Err(e) => {
                warn!("runtime limit overrides will not persist: {e}");
                None
            }
        },
    };
    let ctx = web::Data::from(NodeContext::with_admin(
        router,
        c.secret.clone(),
        cluster_addr,
        AdminContext {
            token: config.admin_token.clone(),
            control: Some(control),
            store,
            rpc_timeout: forward_timeout,
            ..AdminContext::default()
        },
    ));

    // One server, one set of worker threads for the public and the cluster
    // listener: the workers host the shards, so a forwarded check whose shard
    // lives on the worker that received it does not change thread either.
    // The node-to-node route answers only on the cluster listener.
    let data = ctx.clone();
    let shard_host = host.clone();
    // The proxy listener (when on) is served by the same workers: its limit
    // checks reach a shard on the worker that parsed the call without a
    // thread hop, as public checks do.
    let proxy_addr = match &listeners.proxy {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let pctx = web::Data::from(ProxyContext::new(
        ctx.router.clone(),
        config.proxy.clone(),
        Arc::clone(&ctx.proxy_metrics),
    )?);
    let public_server = HttpServer::new(move || {
        // Runs once on each worker thread as it starts.
        if let Some(host) = &shard_host {
            host.host_here();
        }
        App::new()
            .app_data(data.clone())
            .app_data(pctx.clone())
            .app_data(web::Data::new(proxy::client(&pctx)))
            .wrap_fn(move |req, srv| proxy::dispatch(proxy_addr, req, srv))
            .configure(http::node_routes)
            .wrap_fn(request_id)
    })
    .workers(config.http_workers)
    // Streamed answers go out as several writes (head, chunks, end): with
    // Nagle's algorithm the last would wait for the client's delayed ACK.
    .tcp_nodelay(true)
    // A client that closes its side is gone: stop handling its request (a
    // proxied call still waiting for the upstream's answer is cancelled).
    .h1_allow_half_closed(false)
    .disable_signals()
    .shutdown_timeout(STOP_GRACE.as_secs())
    .listen(listeners.public)
    .context("cannot serve the public listener")?
    .listen(listeners.cluster)
    .context("cannot serve the cluster listener")?;
    let public_server = match listeners.proxy {
        Some(l) => public_server
            .listen(l)
            .context("cannot serve the proxy listener")?,
        None => public_server,
    }
    .run();
    let data = ctx.clone();
    let admin_server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(http::admin_routes)
            .wrap(from_fn(admin_auth))
            .wrap_fn(request_id)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listeners.admin)
    .context("cannot serve the admin listener")?
    .run();
    let handles = [public_server.handle(), admin_server.handle()];
    let tasks = [
        actix_rt::spawn(public_server),
        actix_rt::spawn(admin_server),
    ];

    info!(
        node_id = %config.node_id,
        %public_addr,
        %admin_addr,
        %advertise,
        seeds = ?c.seeds,
        cache = limiter.cache_name(),
        shards = config.shards,
        "llmtrace-node started"
    );
    // Machine-readable start line (tests and scripts wait for it).
    let proxy_field = proxy_addr.map_or(String::new(), |a| format!(" proxy={a}"));
    println!(
        "llmtrace-node listening public={public_addr} admin={admin_addr} cluster={advertise} node_id={}{proxy_field}",
        config.node_id
    );

    let join = async {
        if !limiter.shards().wait_all(Duration::from_secs(10)).await {
            warn!("not every shard started; staying not ready");
            return std::future::pending::<()>().await;
        }
        if membership.wait_for_peers(JOIN_TIMEOUT).await
            && !membership.wait_until_caught_up(CATCH_UP_TIMEOUT).await
        {
            warn!("the members' published rings did not match this node's view within {CATCH_UP_TIMEOUT:?}; joining anyway");
        }
        membership.set_state(MemberState::Ready).await;
        if membership
            .wait_until_ready_in_view(Duration::from_secs(10))
            .await
        {
            ctx.set_ready(true);
            let view = ctx.router.view();
            info!(fingerprint = %view.fingerprint(), members = ?view.ring.members(), "node ready");
        } else {
            warn!("this node did not appear in its own ring; staying not ready");
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(shutdown);
    let mut drain_rx = ctx.admin.drain.subscribe();
    let drain_requested = async move {
        if drain_rx.wait_for(|s| *s != DrainState::Idle).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let drained = tokio::select! {
        _ = &mut shutdown => false,
        _ = join => false,
        _ = drain_requested => true,
    };

    let (pushed, undelivered) = leave(&ctx, &membership, &limiter, &cache, &config, timing).await;
    if drained {
        ctx.admin.drain.send_replace(DrainState::Drained {
            pushed,
            undelivered,
        });
        info!(
            pushed,
            undelivered, "drained: out of the ring, still answering; stops on SIGTERM"
        );
        shutdown.await;
    }
    handles[0].stop(true).await;
    let flushed = match host {
        None => limiter.flush_all(STOP_GRACE).await,
        // Shards on workers stopped with them and handed over their dirty set.
        Some(host) => {
            let writes = actix_rt::task::spawn_blocking(move || host.final_writes(STOP_GRACE))
                .await
                .unwrap_or_default();
            let n = writes.len();
            if n == 0 {
                Ok(0)
            } else {
                tokio::time::timeout(STOP_GRACE, cache.store(Arc::new(writes)))
                    .await
                    .unwrap_or(Err(CacheError::Timeout))
                    .map(|()| n)
            }
        }
    };
    match flushed {
        Ok(n) => info!(snapshots = n, "final snapshot flush done"),
        Err(e) => warn!("final snapshot flush failed, recent consumption may be lost: {e}"),
    }
    membership.shutdown().await;
    handles[1].stop(true).await;
    for t in tasks {
        let _ = t.await;
    }
    info!("llmtrace-node stopped");
    Ok(())
}
