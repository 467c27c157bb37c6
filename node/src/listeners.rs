//! The sockets a node serves: bound before the node is built, so tests bind
//! port 0 and read the addresses back.

use std::net::{SocketAddr, TcpListener, UdpSocket};

use anyhow::Context as _;
use llmtrace_cluster_config::NodeConfig;

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
