//! The sockets a node serves: bound before the node is built, so tests bind
//! port 0 and read the addresses back; how many connections they may hold
//! at once ([`ConnectionCaps`]), fitted to the open-file limit so that
//! clients can never take the descriptors the node needs for itself; and the
//! cluster listener's mutual TLS, loaded at start and reloaded on SIGHUP.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;

use anyhow::Context as _;
use llmtrace_actors::cluster::rpc::tls::ClusterTls;
use llmtrace_cluster_config::NodeConfig;
use tracing::{info, warn};

/// The listeners of a node.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
    /// TCP for node-to-node RPC; gossip binds UDP on the same port.
    pub cluster: TcpListener,
    /// The LLM proxy listener, when proxy mode is on.
    pub proxy: Option<TcpListener>,
    /// The Envoy rate limit service (gRPC), when `rls.listen` is set.
    pub rls: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses. With cluster port 0, picks a port
    /// free for both TCP and UDP.
    pub fn bind(config: &NodeConfig) -> anyhow::Result<Self> {
        let public = TcpListener::bind(config.listen)
            .with_context(|| format!("cannot bind listen address {}", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen)
            .with_context(|| format!("cannot bind admin_listen address {}", config.admin_listen))?;
        let cluster = bind_cluster(cluster_listen(config))?;
        let proxy = match config.proxy.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("cannot bind proxy.listen address {addr}"))?,
            ),
            None => None,
        };
        let rls = match config.rls.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("cannot bind rls.listen address {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            public,
            admin,
            cluster,
            proxy,
            rls,
        })
    }
}

/// Connections the admin listener holds open at once (operators, Prometheus
/// scrapes, the dashboard).
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// Descriptors kept for what is not a client connection: Redis, peers'
/// connections, log output, the runtimes' own.
pub const RESERVED_FDS: usize = 64;
/// Highest soft open-file limit the node asks for.
const MAX_NOFILE: u64 = 1 << 20;

/// How many connections each server holds open at once; past it, it
/// accepts no more until one closes (new ones wait in the kernel's backlog).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// The public, cluster and proxy listeners together.
    pub public: usize,
    pub admin: usize,
    /// The open-file limit they were fitted to.
    pub nofile: u64,
}

impl ConnectionCaps {
    /// Raises the soft open-file limit to the hard one, then fits the
    /// configured `max_connections` under it: the admin cap and
    /// [`RESERVED_FDS`] come first, and with the proxy on every connection
    /// counts twice (a proxied call holds an upstream connection too).
    pub fn fit(config: &NodeConfig) -> Self {
        Self::within(config, raise_nofile())
    }

    fn within(config: &NodeConfig, nofile: u64) -> Self {
        let per_connection = if config.proxy.listen.is_some() { 2 } else { 1 };
        let room = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .saturating_sub(ADMIN_MAX_CONNECTIONS + RESERVED_FDS)
            / per_connection;
        ConnectionCaps {
            public: config.max_connections.min(room).max(1),
            admin: ADMIN_MAX_CONNECTIONS,
            nofile,
        }
    }

    /// The public cap as actix takes it: per worker (the total stays within
    /// the cap).
    pub fn public_per_worker(&self, workers: usize) -> usize {
        (self.public / workers.max(1)).max(1)
    }
}

/// Sets the soft open-file limit to the hard one (at most [`MAX_NOFILE`]);
/// answers the soft limit in force.
fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(MAX_NOFILE);
    let want = lim.maximum.unwrap_or(MAX_NOFILE).min(MAX_NOFILE);
    if current < want {
        let raised = Rlimit {
            current: Some(want),
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return want;
        }
    }
    current
}

/// Where the cluster port binds: the configured address when clustering was
/// asked for, otherwise a free loopback port (a node running alone still
/// runs membership, but nobody needs to reach it).
fn cluster_listen(config: &NodeConfig) -> SocketAddr {
    if config.cluster.enabled {
        config.cluster.listen
    } else {
        SocketAddr::from(([127, 0, 0, 1], 0))
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

/// The cluster port's mutual TLS, when `cluster.tls_*` are set.
pub fn cluster_tls(config: &NodeConfig) -> anyhow::Result<Option<Arc<ClusterTls>>> {
    config.cluster.tls.clone().map(ClusterTls::load).transpose()
}

/// Reads the TLS files again on every SIGHUP (certificate rotation without
/// a restart); a file that does not load leaves the previous material in
/// use.
pub async fn reload_on_sighup(tls: Arc<ClusterTls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGHUP; cluster TLS files will not be reloaded: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => info!("SIGHUP: cluster TLS certificates reloaded"),
            Err(e) => warn!(
                "SIGHUP: cluster TLS certificates not reloaded, keeping the previous ones: {e:#}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmtrace_cluster_config::{NodeSettings, ProxyConfig};

    fn config(max_connections: usize, proxy: bool) -> NodeConfig {
        let mut c = NodeConfig::resolve(NodeSettings::default()).unwrap();
        c.max_connections = max_connections;
        if proxy {
            c.proxy = ProxyConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                ..c.proxy
            };
        }
        c
    }

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let fixed = ADMIN_MAX_CONNECTIONS + RESERVED_FDS;
        // Room enough: the configured cap.
        let caps = ConnectionCaps::within(&config(500, false), 100_000);
        assert_eq!((caps.public, caps.admin), (500, ADMIN_MAX_CONNECTIONS));
        // A low limit lowers it; with the proxy on, a connection counts twice.
        let caps = ConnectionCaps::within(&config(10_000, false), 1024);
        assert_eq!(caps.public, 1024 - fixed);
        let caps = ConnectionCaps::within(&config(10_000, true), 1024);
        assert_eq!(caps.public, (1024 - fixed) / 2);
        // Never 0, whatever the limit.
        assert_eq!(ConnectionCaps::within(&config(10, false), 16).public, 1);
        // Per worker, the total stays within the cap.
        assert!(caps.public_per_worker(4) * 4 <= caps.public);
        assert_eq!(caps.public_per_worker(0), caps.public);
    }
}
