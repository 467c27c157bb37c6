//! A node's lifecycle as a type: [`Node::build`] wires the cache layer, the
//! shards, membership, the router and the listeners' servers;
//! [`Node::serve`] joins the ring and runs until shutdown (or an admin
//! drain), then turns readyz 503 and [`Node::leave`]s the ring while the
//! shutdown grace runs, and [`Node::shutdown`]s in order once both are over.
//!
//! [`run`] binds the configured addresses and serves until SIGTERM or
//! SIGINT; tests build a node on listeners bound to port 0 and give their
//! own shutdown future, as mini-redis does.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use llmtrace_actors::cluster::handoff_client::hand_over;
use llmtrace_actors::cluster::rpc::tls::ClusterTls;
use llmtrace_actors::cluster::token_leases::{TokenLeaseSettings, TokenLeases};
use llmtrace_actors::metrics::Registry;
use llmtrace_actors::{
    BatchSettings, CacheLayer, ClientFactory, ClusterClient, ClusterMetrics, ClusterView, Limiter,
    Member, MemberState, Membership, MembershipSettings, Ownership, PeerClient, PeerHandoff,
    Router, RouterSettings, ShardHost, ShardTiming, StreamPeer, SystemClock,
};
use llmtrace_cluster_config::{NodeConfig, ShardPlacement, SnapshotMode};
use tracing::{info, warn};

use crate::http::body_timeout::{bound_body, BodyBounds};
use crate::http::middleware::{admin_auth, request_id};
use crate::http::{self, AdminContext, DrainState, NodeContext};
use crate::listeners;
pub use crate::listeners::{ConnectionCaps, Listeners};
use crate::proxy::{self, ProxyContext};
use crate::rls::{RlsMetrics, RlsServer, RlsService};
use crate::storage::{cache_layer, load_overrides, redis_client};

/// How long a stopping node waits for in-flight requests, then for the final
/// snapshot flush.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node waits for its shards to start before it stays not ready.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node with seeds waits to hear from a peer before it starts as
/// a cluster of one.
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a joining node waits for its view to match the ring the members
/// publish before it announces itself ready.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node that announced itself ready waits to see itself in its
/// own ring.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving node waits for its peers to drop it from their rings
/// while it still answers (readyz already 503).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the configured listeners and runs until SIGTERM or SIGINT.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config)?;
    let node = Node::build(config, listeners).await?;
    if let Some(tls) = &node.tls {
        actix_rt::spawn(listeners::reload_on_sighup(Arc::clone(tls)));
    }
    node.serve(shutdown_signal()).await
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

/// A running node: its parts and the servers of its listeners.
pub struct Node {
    config: NodeConfig,
    limiter: Limiter,
    /// The HTTP workers hosting the shards (default placement), `None` with
    /// dedicated shard threads.
    host: Option<Arc<ShardHost>>,
    membership: Membership,
    ctx: web::Data<NodeContext>,
    /// Sends buckets to their new owner when this node leaves.
    client: ClusterClient,
    /// The cluster port's mutual TLS (reloaded on SIGHUP), when configured.
    tls: Option<Arc<ClusterTls>>,
    /// The server of the public, cluster and proxy listeners.
    public: ServerHandle,
    /// The server of the admin listener.
    admin: ServerHandle,
    /// The RLS listener's server, when it is on.
    rls: Option<RlsServer>,
    tasks: Vec<actix_rt::task::JoinHandle<std::io::Result<()>>>,
}

impl Node {
    /// Builds every part on already-bound listeners and starts serving them
    /// (readyz answers 503 until [`Node::join`] is done).
    pub async fn build(config: NodeConfig, listeners: Listeners) -> anyhow::Result<Node> {
        // Every series of `GET /metrics`: the cache layer's here, the
        // rest by the node context.
        let mut registry = Registry::default();
        let redis = redis_client(&config)?;
        let cache = cache_layer(&config, redis.clone(), &mut registry);
        let public_addr = listeners.public.local_addr()?;
        let admin_addr = listeners.admin.local_addr()?;
        let cluster_addr = listeners.cluster.local_addr()?;
        let c = &config.cluster;
        let advertise = if !c.enabled {
            cluster_addr
        } else if c.advertise.port() == 0 {
            SocketAddr::new(c.advertise.ip(), cluster_addr.port())
        } else {
            c.advertise
        };
        let cluster_metrics = Arc::new(ClusterMetrics::default());
        let membership = start_membership(
            &config,
            cluster_addr,
            advertise,
            public_addr,
            admin_addr,
            &cluster_metrics,
        )
        .await?;
        let forward_timeout = Duration::from_millis(c.forward_timeout_ms);
        let tls = listeners::cluster_tls(&config)?;
        let mut client = ClusterClient::new(c.secret.as_deref(), forward_timeout);
        if let Some(tls) = &tls {
            client = client.with_tls(Arc::new(tls.client_config()?));
        }
        // A bucket that moved is pulled from its previous owner on its first
        // check here (graceful joins and leaves lose nothing).
        let ownership = Ownership {
            handoff: Some(PeerHandoff::new(
                membership.view(),
                membership.fence(),
                client.clone(),
            )),
            fence: membership.fence(),
        };
        let (limiter, host) = start_shards(&config, cache, ownership);
        let mut router = Router::new(
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
            Arc::clone(&cluster_metrics),
            peer_clients(client.clone(), cluster_metrics),
        );
        if let Some(settings) = token_lease_settings(&config) {
            let call = client.clone();
            let leases = TokenLeases::new(
                settings,
                Arc::new(move |m: &Member, req| Box::pin(call.call(m.cluster_addr, &req))),
            );
            router = router.with_token_leases(Arc::clone(&leases));
            actix_rt::spawn(leases.run_sweeper(router.clone()));
        }
        let rls_metrics = Arc::new(RlsMetrics::default());
        rls_metrics.track(&config.rate_limit.rls.load().rules);
        crate::rls::log_rules(&config.rate_limit.rls.load().rules);
        rls_metrics.register(&mut registry);
        let rls_router = router.clone();
        let control = membership.control();
        let store = load_overrides(redis, &control).await;
        let ctx = web::Data::from(NodeContext::with_admin(
            router,
            c.secret.clone(),
            cluster_addr,
            AdminContext {
                token: config.admin_token.clone(),
                control: Some(control),
                store,
                client: client.clone(),
                ..AdminContext::default()
            },
            registry,
        ));
        let proxy_addr = match &listeners.proxy {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let rls_addr = match &listeners.rls {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let Listeners {
            public,
            admin,
            cluster,
            proxy,
            rls,
        } = listeners;
        let rls_workers = crate::rls::Workers::default();
        let rls = match rls {
            Some(l) => Some(RlsServer::start(
                l,
                RlsService {
                    router: rls_router,
                    limits: config.rate_limit.rls.clone(),
                    response_headers: config.rls.response_headers,
                    metrics: rls_metrics,
                },
                config.rls.config.clone(),
                rls_workers.clone(),
            )?),
            None => None,
        };
        let caps = ConnectionCaps::fit(&config);
        let cluster_tls = tls.as_ref().map(|t| t.server_config()).transpose()?;
        let (public, public_task) = public_server(
            &config,
            &ctx,
            (host.clone(), rls_workers),
            caps,
            [Some(public), Some(cluster), proxy],
            cluster_tls,
        )?;
        let body_bound = Duration::from_millis(config.body_timeout_ms);
        let (admin, admin_task) = admin_server(&ctx, caps, body_bound, admin)?;
        info!(
            node_id = %config.node_id,
            %public_addr,
            %admin_addr,
            %advertise,
            seeds = ?config.cluster.seeds,
            cache = limiter.cache_name(),
            shards = config.shards,
            max_connections = caps.public,
            open_file_limit = caps.nofile,
            "llmtrace-node started"
        );
        if caps.public < config.max_connections {
            warn!(
                configured = config.max_connections,
                accepted = caps.public,
                open_file_limit = caps.nofile,
                "max_connections lowered to fit the open-file limit"
            );
        }
        // Machine-readable start line (tests and scripts wait for it).
        let proxy_field = proxy_addr.map_or(String::new(), |a| format!(" proxy={a}"));
        let rls_field = rls_addr.map_or(String::new(), |a| format!(" rls={a}"));
        println!(
            "llmtrace-node listening public={public_addr} admin={admin_addr} cluster={advertise} node_id={}{proxy_field}{rls_field}",
            config.node_id
        );
        Ok(Node {
            config,
            limiter,
            host,
            membership,
            ctx,
            client,
            tls,
            public,
            admin,
            rls,
            tasks: vec![public_task, admin_task],
        })
    }

    /// Joins the ring: waits for the shards, for a peer (with seeds) and for
    /// this node's view to match the ring the members publish, announces
    /// itself ready and turns readyz 200 once it is in its own ring. Returns
    /// false when the node stays not ready.
    pub async fn join(&self) -> bool {
        if !self.limiter.shards().wait_all(SHARD_START_TIMEOUT).await {
            warn!("not every shard started; staying not ready");
            return false;
        }
        let m = &self.membership;
        if m.wait_for_peers(JOIN_TIMEOUT).await
            && !m.wait_until(CATCH_UP_TIMEOUT, ClusterView::caught_up).await
        {
            warn!("the members' published rings did not match this node's view within {CATCH_UP_TIMEOUT:?}; joining anyway");
        }
        m.set_state(MemberState::Ready).await;
        if !m.wait_until(READY_TIMEOUT, ClusterView::self_ready).await {
            warn!("this node did not appear in its own ring; staying not ready");
            return false;
        }
        self.ctx.set_ready(true);
        let view = self.ctx.router.view();
        info!(fingerprint = %view.fingerprint(), members = ?view.ring.members(), "node ready");
        true
    }

    /// Joins, then serves until `shutdown` resolves or an admin drain is
    /// asked for. Then readyz turns 503 and the node leaves the ring while
    /// the shutdown grace runs (both mean "answer what still comes while the
    /// others stop sending here"), and shuts down once both are over. A
    /// drained node keeps answering until `shutdown`; its grace counts from
    /// the drain.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut drain_rx = self.ctx.admin.drain.subscribe();
        let drain_requested = async move {
            if drain_rx.wait_for(|s| *s != DrainState::Idle).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let join = async {
            self.join().await;
            std::future::pending::<()>().await
        };
        let drained = tokio::select! {
            _ = &mut shutdown => false,
            _ = join => false,
            _ = drain_requested => true,
        };
        self.ctx.set_ready(false);
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        // The deadline is fixed now, when readyz turned 503.
        let grace_over = tokio::time::sleep(grace);
        if !drained {
            info!(
                ?grace,
                "readyz 503; serving through the shutdown grace while leaving"
            );
        }
        let (pushed, undelivered) = self.leave().await;
        if drained {
            self.ctx.admin.drain.send_replace(DrainState::Drained {
                pushed,
                undelivered,
            });
            info!(
                pushed,
                undelivered, "drained: out of the ring, still answering; stops on SIGTERM"
            );
            shutdown.await;
        }
        grace_over.await;
        self.shutdown().await;
        Ok(())
    }

    /// Leaves the ring in order: readyz turns 503 (load balancers stop
    /// sending), peers learn `leaving` and drop this node from their rings,
    /// then every bucket still held here goes to its new owner (those
    /// already asked for were pulled); what cannot be delivered is
    /// snapshotted. Checks arriving meanwhile are still answered. Answers
    /// (pushed, undelivered).
    pub async fn leave(&self) -> (usize, usize) {
        self.ctx.set_ready(false);
        self.membership.set_state(MemberState::Leaving).await;
        if self
            .membership
            .wait_until(LEAVE_TIMEOUT, ClusterView::left)
            .await
        {
            info!("peers dropped this node from their rings");
        } else {
            warn!("peers did not confirm the leave within {LEAVE_TIMEOUT:?}; stopping anyway");
        }
        if let Some(leases) = self.ctx.router.token_leases() {
            // Token leases this node holds go back to their owners.
            leases.sweep(&self.ctx.router.view(), true);
        }
        hand_over(&self.limiter, &self.membership.view(), &self.client).await
    }

    /// Stops taking requests, writes every dirty bucket, stops gossip and
    /// the admin listener.
    pub async fn shutdown(self) {
        if let Some(rls) = self.rls {
            rls.stop().await;
        }
        self.public.stop(true).await;
        match self.limiter.final_flush(self.host, STOP_TIMEOUT).await {
            Ok(n) => info!(snapshots = n, "final snapshot flush done"),
            Err(e) => warn!("final snapshot flush failed, recent consumption may be lost: {e}"),
        }
        self.membership.shutdown().await;
        self.admin.stop(true).await;
        for t in self.tasks {
            let _ = t.await;
        }
        info!(node_id = %self.config.node_id, "llmtrace-node stopped");
    }
}

/// Starts gossip on the cluster port (state `joining`).
async fn start_membership(
    config: &NodeConfig,
    cluster_addr: SocketAddr,
    advertise: SocketAddr,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics: &Arc<ClusterMetrics>,
) -> anyhow::Result<Membership> {
    let c = &config.cluster;
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Membership::start(
        MembershipSettings {
            node_id: config.node_id.clone(),
            generation,
            listen: cluster_addr,
            advertise,
            public_addr,
            admin_addr,
            seeds: c.seeds.clone(),
            secret: c.secret.clone(),
            vnodes: c.vnodes,
            gossip_interval: Duration::from_millis(c.gossip_interval_ms),
            phi_threshold: c.phi_threshold,
            fence: Duration::from_millis(c.fence_ms),
            // Shared with the limiter's copy of the block (clones share it).
            runtime: config.rate_limit.runtime.clone(),
        },
        Arc::clone(metrics),
    )
    .await
    .context("cannot start gossip")
}

/// Starts the shards where the configuration places them.
fn start_shards(
    config: &NodeConfig,
    cache: Arc<dyn CacheLayer>,
    ownership: Ownership,
) -> (Limiter, Option<Arc<ShardHost>>) {
    let timing = ShardTiming {
        // Without Redis the shards' maps are the only copy that matters:
        // snapshots into the same process would double the memory of every
        // bucket and survive nothing the maps do not.
        write_behind: config.redis.is_some(),
        write_through: config.snapshot_mode == SnapshotMode::WriteThrough,
        snapshot_interval: Duration::from_millis(config.snapshot_interval_ms),
        token_lease_horizon: token_lease_settings(config).map_or(Duration::ZERO, |s| s.horizon()),
        ..ShardTiming::default()
    };
    let limits = Arc::new(config.rate_limit.clone());
    let clock = Arc::new(SystemClock);
    match config.shard_placement {
        ShardPlacement::Dedicated => (
            Limiter::start_owning(config.shards, limits, cache, clock, timing, ownership),
            None,
        ),
        ShardPlacement::Workers => {
            let (limiter, host) = Limiter::hosted(
                config.shards,
                config.http_workers,
                limits,
                cache,
                clock,
                timing,
                ownership,
            );
            (limiter, Some(host))
        }
    }
}

/// Token leases, when on (a cluster, a threshold above 0).
fn token_lease_settings(config: &NodeConfig) -> Option<TokenLeaseSettings> {
    let c = &config.cluster;
    (c.enabled && c.token_lease_threshold > 0).then(|| TokenLeaseSettings {
        threshold: c.token_lease_threshold,
        ttl: Duration::from_millis(c.token_lease_ms),
    })
}

fn peer_clients(client: ClusterClient, metrics: Arc<ClusterMetrics>) -> ClientFactory {
    Arc::new(move |m: &Member| {
        Box::new(StreamPeer::new(
            client.clone(),
            m.cluster_addr,
            Arc::clone(&metrics),
        )) as Box<dyn PeerClient>
    })
}

type ServerTask = actix_rt::task::JoinHandle<std::io::Result<()>>;

/// One server, one set of worker threads for the public, the cluster and
/// the proxy listener: the workers host the shards, so a check (public,
/// forwarded or proxied) whose shard lives on the worker that received it
/// does not change thread. The workers serve the RLS connections too. The
/// node-to-node routes answer only on the cluster listener; the proxy
/// answers only on the proxy listener. With `cluster_tls`, the cluster
/// listener speaks TLS only.
fn public_server(
    config: &NodeConfig,
    ctx: &web::Data<NodeContext>,
    (host, rls_workers): (Option<Arc<ShardHost>>, crate::rls::Workers),
    caps: ConnectionCaps,
    [public, cluster, proxy]: [Option<TcpListener>; 3],
    cluster_tls: Option<rustls::ServerConfig>,
) -> anyhow::Result<(ServerHandle, ServerTask)> {
    let data = ctx.clone();
    let proxy_addr = match &proxy {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let bounds = BodyBounds {
        total: Duration::from_millis(config.body_timeout_ms),
        proxy_idle: Duration::from_millis(config.proxy.body_idle_timeout_ms),
        proxy: proxy_addr,
    };
    let pctx = web::Data::from(ProxyContext::new(
        ctx.router.clone(),
        config.proxy.clone(),
        Arc::clone(&ctx.proxy_metrics),
    )?);
    let mut server = HttpServer::new(move || {
        // Runs once on each worker thread as it starts.
        if let Some(host) = &host {
            host.host_here();
        }
        rls_workers.register_current();
        App::new()
            .app_data(data.clone())
            .app_data(pctx.clone())
            .app_data(web::Data::new(proxy::client(&pctx)))
            .wrap_fn(move |req, srv| proxy::dispatch(proxy_addr, req, srv))
            .configure(http::node_routes)
            .wrap_fn(move |req, srv| bound_body(bounds, req, srv))
            .wrap_fn(request_id)
    })
    .workers(config.http_workers)
    .max_connections(caps.public_per_worker(config.http_workers))
    // Streamed answers go out as several writes (head, chunks, end): with
    // Nagle's algorithm the last would wait for the client's delayed ACK.
    .tcp_nodelay(true)
    // A client that closes its side is gone: stop handling its request (a
    // proxied call still waiting for the upstream's answer is cancelled).
    .h1_allow_half_closed(false)
    .disable_signals()
    .shutdown_timeout(STOP_TIMEOUT.as_secs());
    for (listener, name) in [(public, "public"), (cluster, "cluster"), (proxy, "proxy")] {
        let Some(l) = listener else { continue };
        server = match (&cluster_tls, name) {
            (Some(tls), "cluster") => server.listen_rustls_0_23(l, tls.clone()),
            _ => server.listen(l),
        }
        .with_context(|| format!("cannot serve the {name} listener"))?;
    }
    let server = server.run();
    Ok((server.handle(), actix_rt::spawn(server)))
}

/// The admin listener, on a worker of its own.
fn admin_server(
    ctx: &web::Data<NodeContext>,
    caps: ConnectionCaps,
    body_bound: Duration,
    listener: TcpListener,
) -> anyhow::Result<(ServerHandle, ServerTask)> {
    let data = ctx.clone();
    let bounds = BodyBounds::total(body_bound);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(http::admin_routes)
            .wrap(from_fn(admin_auth))
            .wrap_fn(move |req, srv| bound_body(bounds, req, srv))
            .wrap_fn(request_id)
    })
    .workers(1)
    .max_connections(caps.admin)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .context("cannot serve the admin listener")?
    .run();
    Ok((server.handle(), actix_rt::spawn(server)))
}
