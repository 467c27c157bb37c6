//! The sockets a node serves: bound before the node is built, so tests bind
//! port 0 and read the addresses back; and the cluster listener's mutual
//! TLS, loaded at start and reloaded on SIGHUP.

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
        Ok(Listeners {
            public,
            admin,
            cluster,
            proxy,
        })
    }
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
