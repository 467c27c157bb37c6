//! The `[cluster]` settings: where a node gossips and answers its peers, whom
//! it asks to join, and how checks are forwarded to the owning node. The
//! table as one source gives it ([`ClusterSettings`], also the flags under
//! the heading Cluster) and its resolved form ([`ClusterConfig`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::cluster_tls::{tls_files, ClusterTlsFiles};
use crate::error::{in_range as range, parse_addr, ConfigError};
use crate::flags::{shown, value_names};
use crate::ring::DEFAULT_VNODES;

/// Default cluster listener: TCP for node-to-node RPC, UDP for gossip.
pub const DEFAULT_CLUSTER_LISTEN: &str = "127.0.0.1:7946";
/// Default gossip round period.
pub const DEFAULT_GOSSIP_INTERVAL_MS: u64 = 100;
/// Default phi-accrual failure detector threshold.
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;
/// Default number of checks per forwarded batch.
pub const DEFAULT_FORWARD_BATCH_MAX: usize = 256;
/// Default longest wait of a forwarded check for its batch to fill.
pub const DEFAULT_FORWARD_BATCH_WAIT_US: u64 = 200;
/// Default time after which an unanswered forward is retried.
pub const DEFAULT_FORWARD_TIMEOUT_MS: u64 = 500;
/// Default forwards per second of one bucket above which a node asks its
/// owner for a token lease.
pub const DEFAULT_TOKEN_LEASE_THRESHOLD: u32 = 500;
/// Default lifetime of a token lease.
pub const DEFAULT_TOKEN_LEASE_MS: u64 = 200;
/// Default fence, in gossip rounds: a node keeps deciding this long after it
/// last heard from a majority of its ring (failure detection takes roughly
/// 10-20 rounds).
pub const DEFAULT_FENCE_ROUNDS: u64 = 5;
/// Least fence, in gossip rounds (a shorter one would close between two
/// heartbeats).
const MIN_FENCE_ROUNDS: u64 = 3;

/// What a node does with a check whose owner cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OwnerUnreachable {
    /// Decide on this node's own shard and mark the answer degraded.
    #[default]
    Local,
    /// Admit the check.
    Allow,
    /// Refuse the check.
    Deny,
}

value_names!(OwnerUnreachable);

/// Resolved cluster settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Whether clustering was asked for: `cluster.listen`, `cluster.advertise`
    /// or `cluster.seeds` was given by some source (flag, environment or
    /// file). A node without any of them is meant to run alone, and need not
    /// open the cluster listener (two such nodes on one machine would
    /// otherwise both claim the default port).
    pub enabled: bool,
    /// Cluster listener: node-to-node RPC over TCP, gossip over UDP, same port.
    pub listen: SocketAddr,
    /// Address peers use to reach this node (default: `listen`).
    pub advertise: SocketAddr,
    /// Cluster addresses of nodes to join through (`host:port`).
    pub seeds: Vec<String>,
    /// Shared secret required on node-to-node requests, when set; gossip is
    /// sealed with a key derived from it. Required off loopback.
    pub secret: Option<String>,
    /// Mutual TLS on the cluster listener and its clients, when set.
    pub tls: Option<ClusterTlsFiles>,
    /// Virtual nodes per member on the hash ring.
    pub vnodes: u32,
    /// Gossip round period.
    pub gossip_interval_ms: u64,
    /// Phi-accrual failure detector threshold (higher: slower, surer).
    pub phi_threshold: f64,
    /// A node decides for its buckets only while it heard from a majority
    /// of its ring within this time, and after a longer silence (or pause)
    /// takes its buckets back before deciding again; 0: never fenced.
    pub fence_ms: u64,
    /// A forwarded batch is sent when it holds this many checks...
    pub forward_batch_max: usize,
    /// ...or when its first check has waited this long (microseconds).
    pub forward_batch_wait_us: u64,
    /// A forward not answered within this time is retried once.
    pub forward_timeout_ms: u64,
    /// Policy when the owner stays unreachable.
    pub on_owner_unreachable: OwnerUnreachable,
    /// Forwards per second of one bucket above which a node asks the
    /// owner for a token lease; 0: token leases off.
    pub token_lease_threshold: u32,
    /// Lifetime of a token lease.
    pub token_lease_ms: u64,
}

/// The `[cluster]` table, or the cluster flags, as one source gives them;
/// `None`: not given. Each field's doc is its `--help` text.
#[derive(Debug, Clone, Default, Deserialize, Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterSettings {
    /// cluster.listen: node-to-node RPC (TCP) and gossip (UDP) on the same
    /// port. Port 0 picks a free one. A node given none of --cluster-listen,
    /// --cluster-advertise and --seeds runs alone and takes a free loopback
    /// port instead of the default, so single nodes on one machine do not
    /// collide; give this flag to the first node of a cluster.
    #[arg(
        id = "cluster_listen",
        long = "cluster-listen",
        env = "LLMTRACE_CLUSTER_LISTEN",
        value_name = "ADDR",
        default_value = DEFAULT_CLUSTER_LISTEN
    )]
    pub listen: Option<String>,

    /// cluster.advertise: the address peers use to reach this node; required
    /// when --cluster-listen is a wildcard address. [default: the listen address]
    #[arg(
        long = "cluster-advertise",
        env = "LLMTRACE_CLUSTER_ADVERTISE",
        value_name = "ADDR"
    )]
    pub advertise: Option<String>,

    /// cluster.seeds: cluster addresses (host:port, comma-separated) of nodes to
    /// join through. [default: none: the node forms a cluster of one]
    #[arg(
        long,
        env = "LLMTRACE_SEEDS",
        value_name = "ADDRS",
        value_delimiter = ','
    )]
    pub seeds: Option<Vec<String>>,

    /// cluster.secret: shared secret (8-256 visible ASCII); node-to-node
    /// requests without it are refused with 401, and every gossip datagram is
    /// authenticated and encrypted with a key derived from it. Required when
    /// --cluster-listen is not a loopback address. [default: none]
    #[arg(
        long = "cluster-secret",
        env = "LLMTRACE_CLUSTER_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,

    /// cluster.tls_cert: PEM certificate chain this node presents to its
    /// peers, as server and as client (mutual TLS on the cluster port; with
    /// --cluster-tls-key and --cluster-tls-ca). Reloaded on SIGHUP. [default:
    /// none: node-to-node RPC in plain HTTP]
    #[arg(
        long = "cluster-tls-cert",
        env = "LLMTRACE_CLUSTER_TLS_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// cluster.tls_key: PEM private key of --cluster-tls-cert. [default: none]
    #[arg(
        long = "cluster-tls-key",
        env = "LLMTRACE_CLUSTER_TLS_KEY",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// cluster.tls_ca: PEM CA certificate(s); a peer's certificate must chain
    /// to one of them. [default: none]
    #[arg(
        long = "cluster-tls-ca",
        env = "LLMTRACE_CLUSTER_TLS_CA",
        value_name = "FILE"
    )]
    pub tls_ca: Option<PathBuf>,

    /// cluster.vnodes: virtual nodes per member on the hash ring; every node of
    /// a cluster must use the same value.
    #[arg(
        long,
        env = "LLMTRACE_VNODES",
        value_name = "N",
        default_value = shown!(DEFAULT_VNODES)
    )]
    pub vnodes: Option<u32>,

    /// cluster.gossip_interval_ms: gossip round period; failure detection takes
    /// roughly 10-20 rounds.
    #[arg(
        long,
        env = "LLMTRACE_GOSSIP_INTERVAL_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_GOSSIP_INTERVAL_MS)
    )]
    pub gossip_interval_ms: Option<u64>,

    /// cluster.phi_threshold: phi-accrual failure detector threshold; lower
    /// detects a dead node sooner, with more false alarms.
    #[arg(
        long,
        env = "LLMTRACE_PHI_THRESHOLD",
        value_name = "PHI",
        default_value = shown!(DEFAULT_PHI_THRESHOLD)
    )]
    pub phi_threshold: Option<f64>,

    /// cluster.fence_ms: a node decides for its buckets only while it has
    /// heard from a majority of its ring within this time; after a longer
    /// silence or a pause of its own (GC, SIGSTOP, VM migration) it catches
    /// up first and takes each bucket back from whichever node served it
    /// meanwhile. Keep it well below failure detection; 0 turns fencing off.
    /// [default: 5 gossip rounds]
    #[arg(long, env = "LLMTRACE_FENCE_MS", value_name = "MS")]
    pub fence_ms: Option<u64>,

    /// cluster.forward_batch_max: checks per forwarded batch before it is sent.
    #[arg(
        long,
        env = "LLMTRACE_FORWARD_BATCH_MAX",
        value_name = "N",
        default_value = shown!(DEFAULT_FORWARD_BATCH_MAX)
    )]
    pub forward_batch_max: Option<usize>,

    /// cluster.forward_batch_wait_us: longest a forwarded check waits for its
    /// batch to fill.
    #[arg(
        long,
        env = "LLMTRACE_FORWARD_BATCH_WAIT_US",
        value_name = "US",
        default_value = shown!(DEFAULT_FORWARD_BATCH_WAIT_US)
    )]
    pub forward_batch_wait_us: Option<u64>,

    /// cluster.forward_timeout_ms: a forward unanswered this long is retried
    /// once (same check id: never counted twice).
    #[arg(
        long,
        env = "LLMTRACE_FORWARD_TIMEOUT_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_FORWARD_TIMEOUT_MS)
    )]
    pub forward_timeout_ms: Option<u64>,

    /// cluster.on_owner_unreachable: what to do with a check whose owner stays
    /// unreachable.
    #[arg(
        long,
        env = "LLMTRACE_ON_OWNER_UNREACHABLE",
        value_name = "POLICY",
        default_value = shown!(OwnerUnreachable::default())
    )]
    pub on_owner_unreachable: Option<OwnerUnreachable>,

    /// cluster.token_lease_threshold: a node forwarding checks of one bucket
    /// faster than this (per second) asks the owner for a token lease, a
    /// slice of the bucket it then spends locally (exact: every unit is
    /// taken from the bucket first); 0 turns token leases off.
    #[arg(
        long,
        env = "LLMTRACE_TOKEN_LEASE_THRESHOLD",
        value_name = "PER_S",
        default_value = shown!(DEFAULT_TOKEN_LEASE_THRESHOLD)
    )]
    pub token_lease_threshold: Option<u32>,

    /// cluster.token_lease_ms: lifetime of a token lease; renewed while the
    /// bucket stays hot, what is left goes back to the owner.
    #[arg(
        long,
        env = "LLMTRACE_TOKEN_LEASE_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_TOKEN_LEASE_MS)
    )]
    pub token_lease_ms: Option<u64>,
}

impl ClusterConfig {
    /// Applies the defaults to the settings given and validates.
    pub fn resolve(s: ClusterSettings) -> Result<ClusterConfig, ConfigError> {
        let enabled = s.listen.is_some() || s.advertise.is_some() || s.seeds.is_some();
        let listen = parse_addr(
            "cluster.listen",
            s.listen.as_deref().unwrap_or(DEFAULT_CLUSTER_LISTEN),
        )?;
        let advertise = match s.advertise.as_deref() {
            Some(a) => parse_addr("cluster.advertise", a)?,
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
        let seeds: Vec<String> = s
            .seeds
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
        if let Some(secret) = &s.secret {
            if secret.len() < 8
                || secret.len() > 256
                || !secret.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ConfigError::invalid(
                    "cluster.secret",
                    "must be 8 to 256 visible ASCII characters",
                ));
            }
        }
        if s.secret.is_none() && enabled && !listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "cluster.secret",
                format!(
                    "is required when cluster.listen ({listen}) is not a loopback address: \
                     set --cluster-secret or LLMTRACE_CLUSTER_SECRET (cluster_secret)"
                ),
            ));
        }
        let tls = tls_files(s.tls_cert, s.tls_key, s.tls_ca)?;
        let phi = s.phi_threshold.unwrap_or(DEFAULT_PHI_THRESHOLD);
        if !(phi.is_finite() && (1.0..=100.0).contains(&phi)) {
            return Err(ConfigError::invalid(
                "cluster.phi_threshold",
                format!("{phi} is out of range 1..=100"),
            ));
        }
        let gossip_interval_ms = range(
            "cluster.gossip_interval_ms",
            s.gossip_interval_ms.unwrap_or(DEFAULT_GOSSIP_INTERVAL_MS),
            10,
            10_000,
        )?;
        let fence_ms = s
            .fence_ms
            .unwrap_or(DEFAULT_FENCE_ROUNDS * gossip_interval_ms);
        if fence_ms != 0 && fence_ms < MIN_FENCE_ROUNDS * gossip_interval_ms {
            return Err(ConfigError::invalid(
                "cluster.fence_ms",
                format!(
                    "{fence_ms} is shorter than {MIN_FENCE_ROUNDS} gossip rounds \
                     ({gossip_interval_ms} ms each): the fence would close between heartbeats \
                     (0 turns fencing off)"
                ),
            ));
        }
        let fence_ms = range("cluster.fence_ms", fence_ms, 0, 600_000)?;
        Ok(ClusterConfig {
            enabled,
            listen,
            advertise,
            seeds,
            secret: s.secret,
            tls,
            vnodes: range(
                "cluster.vnodes",
                s.vnodes.unwrap_or(DEFAULT_VNODES),
                1,
                4096,
            )?,
            gossip_interval_ms,
            phi_threshold: phi,
            fence_ms,
            forward_batch_max: range(
                "cluster.forward_batch_max",
                s.forward_batch_max.unwrap_or(DEFAULT_FORWARD_BATCH_MAX),
                1,
                4096,
            )?,
            forward_batch_wait_us: range(
                "cluster.forward_batch_wait_us",
                s.forward_batch_wait_us
                    .unwrap_or(DEFAULT_FORWARD_BATCH_WAIT_US),
                0,
                100_000,
            )?,
            forward_timeout_ms: range(
                "cluster.forward_timeout_ms",
                s.forward_timeout_ms.unwrap_or(DEFAULT_FORWARD_TIMEOUT_MS),
                1,
                60_000,
            )?,
            on_owner_unreachable: s.on_owner_unreachable.unwrap_or_default(),
            token_lease_threshold: s
                .token_lease_threshold
                .unwrap_or(DEFAULT_TOKEN_LEASE_THRESHOLD),
            token_lease_ms: range(
                "cluster.token_lease_ms",
                s.token_lease_ms.unwrap_or(DEFAULT_TOKEN_LEASE_MS),
                10,
                10_000,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::given;

    /// The `[cluster]` table `file` with the cluster flags `flags` over it.
    fn resolve(file: &str, flags: &[&str]) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::resolve(given(toml::from_str(file).unwrap(), flags))
    }

    #[test]
    fn defaults() {
        let c = resolve("", &[]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_CLUSTER_LISTEN);
        assert_eq!(c.advertise, c.listen);
        assert_eq!(c.vnodes, DEFAULT_VNODES);
        assert!(c.seeds.is_empty() && c.secret.is_none());
        assert_eq!(c.on_owner_unreachable, OwnerUnreachable::Local);
        assert!(!c.enabled, "no cluster setting given: not enabled");
    }

    #[test]
    fn flags_beat_file() {
        let c = resolve(
            "seeds = [\"127.0.0.1:9\"]\nvnodes = 64\non_owner_unreachable = \"deny\"",
            &["--seeds", "127.0.0.1:1, "],
        )
        .unwrap();
        assert_eq!(c.seeds, vec!["127.0.0.1:1"]);
        assert_eq!(c.vnodes, 64);
        assert_eq!(c.on_owner_unreachable, OwnerUnreachable::Deny);
        let c = resolve(
            "on_owner_unreachable = \"deny\"",
            &["--on-owner-unreachable", "allow"],
        )
        .unwrap();
        assert_eq!(c.on_owner_unreachable, OwnerUnreachable::Allow);
    }

    #[test]
    fn enabled_when_listen_advertise_or_seeds_is_given_by_any_source() {
        let given_by = [
            ("listen = \"127.0.0.1:7946\"", &[][..]),
            ("advertise = \"127.0.0.1:7946\"", &[]),
            ("seeds = [\"127.0.0.1:7947\"]", &[]),
            ("", &["--cluster-listen", "127.0.0.1:0"]),
            ("", &["--cluster-advertise", "127.0.0.1:7946"]),
            ("", &["--seeds", "127.0.0.1:7947"]),
        ];
        for (file, flags) in given_by {
            assert!(resolve(file, flags).unwrap().enabled, "{file} {flags:?}");
        }
        let others = resolve(
            "vnodes = 64\nsecret = \"long-enough\"",
            &["--forward-batch-max", "8"],
        );
        assert!(
            !others.unwrap().enabled,
            "other cluster settings do not enable it"
        );
    }

    #[test]
    fn secret_required_off_loopback_only() {
        assert!(resolve("listen = \"127.0.0.1:7946\"", &[]).is_ok());
        assert!(resolve("listen = \"[::1]:7946\"", &[]).is_ok());
        let off = "listen = \"0.0.0.0:7946\"\nadvertise = \"10.0.0.1:7946\"";
        let err = resolve(off, &[]).unwrap_err().to_string();
        assert!(err.contains("LLMTRACE_CLUSTER_SECRET"), "{err}");
        let c = resolve(off, &["--cluster-secret", "long-enough"]).unwrap();
        assert_eq!(c.secret.as_deref(), Some("long-enough"));
    }

    #[test]
    fn tls_files_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("llmtrace-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let cert = write(
            "c.pem",
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        );
        let key = write(
            "k.pem",
            "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n",
        );
        let flags = [
            "--cluster-tls-cert",
            &cert,
            "--cluster-tls-key",
            &key,
            "--cluster-tls-ca",
            &cert,
        ];
        let tls = resolve("", &flags).unwrap().tls.unwrap();
        assert_eq!(tls.key.display().to_string(), key);
        let swapped = [
            "--cluster-tls-cert",
            &key,
            "--cluster-tls-key",
            &key,
            "--cluster-tls-ca",
            &cert,
        ];
        let err = resolve("", &swapped).unwrap_err().to_string();
        assert!(err.contains("cluster.tls_cert"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listen = \"0.0.0.0:7946\"", "cluster.advertise"),
            ("listen = \"nope\"", "cluster.listen"),
            ("seeds = [\"nope\"]", "cluster.seeds"),
            ("seeds = [\"h:0\"]", "cluster.seeds"),
            ("secret = \"short\"", "cluster.secret"),
            (
                "listen = \"0.0.0.0:7946\"\nadvertise = \"10.0.0.1:7946\"",
                "cluster.secret",
            ),
            ("listen = \"10.0.0.1:7946\"", "cluster.secret"),
            ("tls_cert = \"/nonexistent.pem\"", "cluster.tls_key"),
            (
                "tls_cert = \"/nonexistent.pem\"\ntls_key = \"/k.pem\"",
                "cluster.tls_ca",
            ),
            (
                "tls_cert = \"/nonexistent.pem\"\ntls_key = \"/k\"\ntls_ca = \"/c\"",
                "cluster.tls_cert",
            ),
            ("vnodes = 0", "cluster.vnodes"),
            ("phi_threshold = 0.5", "cluster.phi_threshold"),
            ("forward_timeout_ms = 0", "cluster.forward_timeout_ms"),
            ("forward_batch_max = 0", "cluster.forward_batch_max"),
            ("fence_ms = 250", "cluster.fence_ms"),
            ("token_lease_ms = 1", "cluster.token_lease_ms"),
            (
                "gossip_interval_ms = 1000\nfence_ms = 2000",
                "cluster.fence_ms",
            ),
        ];
        for (file, key) in cases {
            let err = resolve(file, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{file}: {err}");
        }
    }

    #[test]
    fn the_fence_follows_the_gossip_interval_unless_given() {
        let fence = |file: &str| resolve(file, &[]).unwrap().fence_ms;
        assert_eq!(fence(""), DEFAULT_FENCE_ROUNDS * DEFAULT_GOSSIP_INTERVAL_MS);
        assert_eq!(fence("gossip_interval_ms = 200"), 1000);
        assert_eq!(fence("fence_ms = 0"), 0, "0 turns fencing off");
        assert_eq!(fence("fence_ms = 300"), 300);
    }
}
