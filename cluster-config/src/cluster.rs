//! The `[cluster]` settings: where a node gossips and answers its peers, whom
//! it asks to join, and how checks are forwarded to the owning node.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::error::{in_range as range, ConfigError};

/// Default cluster listener: TCP for node-to-node RPC, UDP for gossip.
pub const DEFAULT_CLUSTER_LISTEN: &str = "127.0.0.1:7946";

/// What a node does with a check whose owner cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OwnerUnreachable {
    /// Decide on this node's own shard and mark the tenant degraded.
    #[default]
    Local,
    /// Admit the check.
    Allow,
    /// Refuse the check.
    Deny,
}

impl std::str::FromStr for OwnerUnreachable {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(OwnerUnreachable::Local),
            "allow" => Ok(OwnerUnreachable::Allow),
            "deny" => Ok(OwnerUnreachable::Deny),
            other => Err(format!(
                "expected `local`, `allow` or `deny`, got `{other}`"
            )),
        }
    }
}

impl OwnerUnreachable {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerUnreachable::Local => "local",
            OwnerUnreachable::Allow => "allow",
            OwnerUnreachable::Deny => "deny",
        }
    }
}

/// Resolved cluster settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Cluster listener: node-to-node RPC over TCP, gossip over UDP, same port.
    pub listen: SocketAddr,
    /// Address peers use to reach this node (default: `listen`).
    pub advertise: SocketAddr,
    /// Cluster addresses of nodes to join through (`host:port`).
    pub seeds: Vec<String>,
    /// Shared secret required on node-to-node requests, when set.
    pub secret: Option<String>,
    /// Virtual nodes per member on the hash ring.
    pub vnodes: u32,
    /// Gossip round period.
    pub gossip_interval_ms: u64,
    /// Phi-accrual failure detector threshold (higher: slower, surer).
    pub phi_threshold: f64,
    /// A forwarded batch is sent when it holds this many checks...
    pub forward_batch_max: usize,
    /// ...or when its first check has waited this long (microseconds).
    pub forward_batch_wait_us: u64,
    /// A forward not answered within this time is retried once.
    pub forward_timeout_ms: u64,
    /// Policy when the owner stays unreachable.
    pub on_owner_unreachable: OwnerUnreachable,
}

/// The `[cluster]` table of the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub seeds: Option<Vec<String>>,
    pub secret: Option<String>,
    pub vnodes: Option<u32>,
    pub gossip_interval_ms: Option<u64>,
    pub phi_threshold: Option<f64>,
    pub forward_batch_max: Option<usize>,
    pub forward_batch_wait_us: Option<u64>,
    pub forward_timeout_ms: Option<u64>,
    pub on_owner_unreachable: Option<OwnerUnreachable>,
}

/// Cluster values given by flags or environment.
#[derive(Debug, Clone, Default)]
pub struct ClusterOverrides {
    pub listen: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub seeds: Option<Vec<String>>,
    pub secret: Option<String>,
    pub vnodes: Option<u32>,
    pub gossip_interval_ms: Option<u64>,
    pub phi_threshold: Option<f64>,
    pub forward_batch_max: Option<usize>,
    pub forward_batch_wait_us: Option<u64>,
    pub forward_timeout_ms: Option<u64>,
    pub on_owner_unreachable: Option<OwnerUnreachable>,
}

fn addr(
    key: &str,
    flag: Option<SocketAddr>,
    file: Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    match (flag, file) {
        (Some(a), _) => Ok(Some(a)),
        (None, Some(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::invalid(key, format!("`{s}` is not an IP:port address"))),
        (None, None) => Ok(None),
    }
}

impl ClusterConfig {
    /// Merges flags/environment over the file over the defaults and validates.
    pub fn resolve(file: ClusterFile, o: ClusterOverrides) -> Result<ClusterConfig, ConfigError> {
        let listen = addr("cluster.listen", o.listen, file.listen)?
            .unwrap_or_else(|| DEFAULT_CLUSTER_LISTEN.parse().expect("valid default"));
        let advertise = match addr("cluster.advertise", o.advertise, file.advertise)? {
            Some(a) => a,
            None if listen.ip().is_unspecified() => {
                return Err(ConfigError::invalid(
                    "cluster.advertise",
                    format!("required when cluster.listen is a wildcard address ({listen}): peers must know where to reach this node"),
                ))
            }
            None => listen,
        };
        if advertise.ip().is_unspecified() || (advertise.port() == 0 && listen.port() != 0) {
            return Err(ConfigError::invalid(
                "cluster.advertise",
                format!("`{advertise}` is not an address peers can reach"),
            ));
        }
        let seeds: Vec<String> = o
            .seeds
            .or(file.seeds)
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for s in &seeds {
            let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(ConfigError::invalid(
                    "cluster.seeds",
                    format!("`{s}` is not host:port"),
                ));
            }
        }
        let secret = o.secret.or(file.secret);
        if let Some(s) = &secret {
            if s.len() < 8 || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::invalid(
                    "cluster.secret",
                    "must be 8 to 256 visible ASCII characters",
                ));
            }
        }
        let phi = o.phi_threshold.or(file.phi_threshold).unwrap_or(8.0);
        if !(phi.is_finite() && (1.0..=100.0).contains(&phi)) {
            return Err(ConfigError::invalid(
                "cluster.phi_threshold",
                format!("{phi} is out of range 1..=100"),
            ));
        }
        Ok(ClusterConfig {
            listen,
            advertise,
            seeds,
            secret,
            vnodes: range(
                "cluster.vnodes",
                o.vnodes
                    .or(file.vnodes)
                    .unwrap_or(crate::ring::DEFAULT_VNODES),
                1,
                4096,
            )?,
            gossip_interval_ms: range(
                "cluster.gossip_interval_ms",
                o.gossip_interval_ms
                    .or(file.gossip_interval_ms)
                    .unwrap_or(100),
                10,
                10_000,
            )?,
            phi_threshold: phi,
            forward_batch_max: range(
                "cluster.forward_batch_max",
                o.forward_batch_max
                    .or(file.forward_batch_max)
                    .unwrap_or(256),
                1,
                4096,
            )?,
            forward_batch_wait_us: range(
                "cluster.forward_batch_wait_us",
                o.forward_batch_wait_us
                    .or(file.forward_batch_wait_us)
                    .unwrap_or(200),
                0,
                100_000,
            )?,
            forward_timeout_ms: range(
                "cluster.forward_timeout_ms",
                o.forward_timeout_ms
                    .or(file.forward_timeout_ms)
                    .unwrap_or(500),
                1,
                60_000,
            )?,
            on_owner_unreachable: o
                .on_owner_unreachable
                .or(file.on_owner_unreachable)
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(file: &str, o: ClusterOverrides) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::resolve(toml::from_str(file).unwrap(), o)
    }

    #[test]
    fn defaults() {
        let c = resolve("", ClusterOverrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_CLUSTER_LISTEN);
        assert_eq!(c.advertise, c.listen);
        assert_eq!(c.vnodes, 256);
        assert!(c.seeds.is_empty() && c.secret.is_none());
        assert_eq!(c.on_owner_unreachable, OwnerUnreachable::Local);
    }

    #[test]
    fn flags_beat_file() {
        let o = ClusterOverrides {
            seeds: Some(vec!["127.0.0.1:1".into(), " ".into()]),
            ..Default::default()
        };
        let c = resolve(
            "seeds = [\"127.0.0.1:9\"]\nvnodes = 64\non_owner_unreachable = \"deny\"",
            o,
        )
        .unwrap();
        assert_eq!(c.seeds, vec!["127.0.0.1:1"]);
        assert_eq!(c.vnodes, 64);
        assert_eq!(c.on_owner_unreachable, OwnerUnreachable::Deny);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listen = \"0.0.0.0:7946\"", "cluster.advertise"),
            ("seeds = [\"nope\"]", "cluster.seeds"),
            ("seeds = [\"h:0\"]", "cluster.seeds"),
            ("secret = \"short\"", "cluster.secret"),
            ("vnodes = 0", "cluster.vnodes"),
            ("phi_threshold = 0.5", "cluster.phi_threshold"),
            ("forward_timeout_ms = 0", "cluster.forward_timeout_ms"),
            ("forward_batch_max = 0", "cluster.forward_batch_max"),
        ];
        for (file, key) in cases {
            let err = resolve(file, ClusterOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{file}: {err}");
        }
        assert!(toml::from_str::<ClusterFile>("on_owner_unreachable = \"maybe\"").is_err());
    }
}
