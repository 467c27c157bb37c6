//! The node's settings: the resolved, validated values ([`NodeConfig`]), the
//! optional values one source gives ([`NodeSettings`]: the TOML file, or the
//! flags with their environment variables) and the one place where they get
//! their defaults and are validated ([`NodeConfig::resolve`]).
//!
//! Precedence: flag > environment (`LLMTRACE_*`) > TOML file > default; see
//! [`crate::flags`] for how the sources are laid over each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::cluster::{ClusterConfig, ClusterSettings};
use crate::error::{in_range, parse_addr, ConfigError};
use crate::flags::{shown, value_names};
use crate::limit_settings::{RateLimitSettings, TokenLimitSettings};
use crate::limits::RateLimitConfig;
use crate::named::LimitBlock;
use crate::proxy::{ProxyConfig, ProxySettings};
use crate::redis::{RedisConfig, RedisMode};
use crate::rls::{RlsConfig, RlsSettings};
use crate::tenant::validate_tenant_id;

/// Default public listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener (loopback: operators only).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default write-behind interval.
pub const DEFAULT_SNAPSHOT_INTERVAL_MS: u64 = 100;
/// Default bound on one Redis call (connect or response).
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 250;
/// Default shutdown grace: long enough for a readiness probe or a load
/// balancer's health check polling every second or two to see readyz 503.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 3_000;
/// Default bound on reading a whole request body, once its headers are in.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 5_000;
/// Default cap on the connections the public, cluster and proxy listeners
/// hold open together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Upper bound of `max_connections`.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// Upper bound of every millisecond setting (one minute).
pub const MAX_INTERVAL_MS: u64 = 60_000;
/// Upper bound of shard and worker counts.
pub const MAX_THREADS: usize = 256;
/// Longest admin token accepted.
pub const MAX_ADMIN_TOKEN_LEN: usize = 512;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where shard actors run (their timers, restores and writes; a check of a
/// bucket in memory is decided by the worker that parsed it either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ShardPlacement {
    /// On the public HTTP worker threads: no extra threads compete with
    /// the workers for the cores.
    #[default]
    Workers,
    /// Each shard on a thread of its own.
    Dedicated,
}

/// When a check's new bucket state reaches the cache layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// Answer at once; changed buckets are written every
    /// `snapshot_interval_ms` in one batch. A crash loses at most the
    /// consumption of the last interval.
    #[default]
    WriteBehind,
    /// Answer an admitting check only after its new state is in Redis
    /// (group commit per shard). A crash loses nothing; every admitted check
    /// waits one Redis round trip; needs a Redis URL, and while Redis is down
    /// admitting checks get 503.
    WriteThrough,
}

value_names!(LogFormat, ShardPlacement, SnapshotMode);

/// A node's resolved, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Public listener (behind the load balancer): checks, health.
    pub listen: SocketAddr,
    /// Admin listener: metrics (and later the admin API).
    pub admin_listen: SocketAddr,
    /// Bearer token required on admin routes (all but `/healthz` and
    /// `/admin/ui`). Mandatory when the admin listener is not on loopback.
    pub admin_token: Option<String>,
    /// This node's identity; stable across restarts when configured.
    pub node_id: String,
    /// Where snapshots and runtime overrides persist; `None` keeps
    /// snapshots in process memory.
    pub redis: Option<RedisConfig>,
    /// Write-behind period: dirty buckets go to the cache layer this often.
    pub snapshot_interval_ms: u64,
    /// Write-behind (default) or write-through.
    pub snapshot_mode: SnapshotMode,
    /// Number of shard actors.
    pub shards: usize,
    /// Where the shard actors run.
    pub shard_placement: ShardPlacement,
    /// Number of HTTP worker threads of the public listener.
    pub http_workers: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// How long a stopping node keeps serving with readyz 503 before its
    /// listeners close (0: as soon as it left the ring).
    pub shutdown_grace_ms: u64,
    /// Longest a request body may take to arrive once its headers are in
    /// (public, admin and cluster listeners): 408 after it.
    pub body_timeout_ms: u64,
    /// Connections the public, cluster and proxy listeners hold open
    /// together; past it they accept no more until one closes.
    pub max_connections: usize,
    /// The llmtrace `[rate_limit]` block, with the `[token_limit]` block
    /// resolved into `rate_limit.tokens`.
    pub rate_limit: RateLimitConfig,
    /// The `[cluster]` block: membership and forwarding.
    pub cluster: ClusterConfig,
    /// The `[proxy]` block: the LLM proxy listener (off by default).
    pub proxy: ProxyConfig,
    /// The `[rls]` block: the Envoy rate limit service (off by default);
    /// its rules are in force in `rate_limit.rls`.
    pub rls: RlsConfig,
}

/// The node's settings as one source gives them: the TOML file (top-level
/// keys and the `[rate_limit]`, `[token_limit]`, `[proxy]` and `[cluster]`
/// tables; unknown keys refused), or the flags with their environment
/// variables. `None`: not given by this source. Each field's doc is its
/// `--help` text; addresses stay text until [`NodeConfig::resolve`], so a bad
/// one names its key whatever its source.
#[derive(Debug, Clone, Default, Deserialize, Args)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Public listener (checks, health), behind the load balancer. Port 0 picks a
    /// free port; the bound addresses are printed on stdout.
    #[arg(long, env = "LLMTRACE_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: Option<String>,

    /// Admin listener (cluster view, tenant inspection, runtime limits,
    /// drain, Prometheus /metrics). Keep it on loopback, or set --admin-token.
    #[arg(
        long,
        env = "LLMTRACE_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = DEFAULT_ADMIN_LISTEN
    )]
    pub admin_listen: Option<String>,

    /// Bearer token required on every admin route except /healthz and
    /// /admin/ui (`Authorization: Bearer <token>`, 401 otherwise). Required
    /// when --admin-listen is not a loopback address. Prefer the environment
    /// variable or the file: a flag shows in the process list. [default: none]
    #[arg(
        long,
        env = "LLMTRACE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// This node's identity (1-128 visible ASCII characters). [default: a new UUID]
    #[arg(long, env = "LLMTRACE_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// Redis URL for bucket snapshots (redis://[user:password@]host:port/db,
    /// rediss:// for TLS). Cluster mode: the seed nodes, comma-separated;
    /// sentinel mode: the sentinels, comma-separated (their user, password
    /// and db apply to the master). Without it, buckets live only in this
    /// node's memory and a restart forgets them. Runtime limit overrides
    /// (admin API) are kept there too. A password in the URL is never logged
    /// nor shown by the admin API. [default: none]
    #[arg(
        long,
        env = "LLMTRACE_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,

    /// How Redis is deployed: one server, a Redis Cluster, or a master
    /// found through Sentinel.
    #[arg(
        long,
        env = "LLMTRACE_REDIS_MODE",
        value_name = "MODE",
        default_value = shown!(RedisMode::default())
    )]
    pub redis_mode: Option<RedisMode>,

    /// Sentinel mode: the master's name as the sentinels monitor it.
    /// [default: none]
    #[arg(long, env = "LLMTRACE_REDIS_SENTINEL_MASTER", value_name = "NAME")]
    pub redis_sentinel_master: Option<String>,

    /// PEM file of the CA certificate(s) that sign the Redis servers'
    /// certificates (rediss:// URLs). [default: the system's roots]
    #[arg(long, env = "LLMTRACE_REDIS_CA_FILE", value_name = "PATH")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate, for Redis servers that ask for one (with
    /// --redis-client-key). [default: none]
    #[arg(long, env = "LLMTRACE_REDIS_CLIENT_CERT", value_name = "PATH")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert. [default: none]
    #[arg(long, env = "LLMTRACE_REDIS_CLIENT_KEY", value_name = "PATH")]
    pub redis_client_key: Option<PathBuf>,

    /// Write-behind period: changed buckets are snapshotted this often, in one
    /// pipeline. At most this much consumption is lost on a crash.
    #[arg(
        long,
        env = "LLMTRACE_SNAPSHOT_INTERVAL_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_SNAPSHOT_INTERVAL_MS)
    )]
    pub snapshot_interval_ms: Option<u64>,

    /// When an admitted check's new bucket state is written: at once in the
    /// background, or before the answer (needs --redis-url).
    #[arg(
        long,
        env = "LLMTRACE_SNAPSHOT_MODE",
        value_name = "MODE",
        default_value = shown!(SnapshotMode::default())
    )]
    pub snapshot_mode: Option<SnapshotMode>,

    /// Bound on each Redis call; a hung Redis delays a tenant's first check by
    /// at most this long and never blocks resident buckets.
    #[arg(
        long,
        env = "LLMTRACE_REDIS_TIMEOUT_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_REDIS_TIMEOUT_MS)
    )]
    pub redis_timeout_ms: Option<u64>,

    /// Number of shards (each the only place its buckets change, under its
    /// own lock).
    /// [default: number of CPUs]
    #[arg(long, env = "LLMTRACE_SHARDS", value_name = "N")]
    pub shards: Option<usize>,

    /// Where shard actors run (timers, restores, writes; checks of buckets
    /// in memory are decided by the worker that parsed them either way).
    #[arg(
        long,
        env = "LLMTRACE_SHARD_PLACEMENT",
        value_name = "PLACEMENT",
        default_value = shown!(ShardPlacement::default())
    )]
    pub shard_placement: Option<ShardPlacement>,

    /// HTTP worker threads serving the public, cluster and proxy listeners (with
    /// the default placement they also host the shards). [default: number of
    /// CPUs]
    #[arg(long, env = "LLMTRACE_HTTP_WORKERS", value_name = "N")]
    pub http_workers: Option<usize>,

    /// Log format on stderr (filter with RUST_LOG).
    #[arg(
        long,
        env = "LLMTRACE_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = shown!(LogFormat::default())
    )]
    pub log_format: Option<LogFormat>,

    /// On SIGTERM or SIGINT, /readyz answers 503 at once and every listener
    /// keeps serving for this long (the node leaves the ring meanwhile); then
    /// the listeners close. Load balancers stop sending only once they notice:
    /// Kubernetes takes a stopping pod out of its Service asynchronously (and
    /// its readiness probe sees the 503), nginx and HAProxy health checks poll
    /// every few seconds. 0 closes as soon as the node has left the ring.
    #[arg(
        long,
        env = "LLMTRACE_SHUTDOWN_GRACE_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_SHUTDOWN_GRACE_MS)
    )]
    pub shutdown_grace_ms: Option<u64>,

    /// Longest a request body may take to arrive once its headers are in, on
    /// the public, admin and cluster listeners: a client still sending then
    /// gets 408 and the connection closes. (Headers have 5 s; proxy uploads
    /// have --proxy-body-idle-timeout-ms instead.)
    #[arg(
        long,
        env = "LLMTRACE_BODY_TIMEOUT_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_BODY_TIMEOUT_MS)
    )]
    pub body_timeout_ms: Option<u64>,

    /// Connections the public, cluster and proxy listeners hold open
    /// together; past it they accept no more until one closes (new ones wait
    /// in the kernel's backlog). Lowered at start to fit the open-file limit
    /// (the log says so); the admin listener has a cap of its own (32).
    #[arg(
        long,
        env = "LLMTRACE_MAX_CONNECTIONS",
        value_name = "N",
        default_value = shown!(DEFAULT_MAX_CONNECTIONS)
    )]
    pub max_connections: Option<usize>,

    /// The `[rate_limit]` table (its defaults are also flags).
    #[command(flatten)]
    #[serde(default)]
    pub rate_limit: RateLimitSettings,

    /// The `[token_limit]` table (its defaults are also flags).
    #[command(flatten)]
    #[serde(default)]
    pub token_limit: TokenLimitSettings,

    /// The `[limits.<name>]` tables: named limits (file only).
    #[arg(skip)]
    #[serde(default)]
    pub limits: BTreeMap<String, LimitBlock>,

    /// The `[proxy]` table (flags under the heading Proxy).
    #[command(flatten)]
    #[serde(default)]
    pub proxy: ProxySettings,

    /// The `[rls]` table (flags under the heading RLS).
    #[command(flatten)]
    #[serde(default)]
    pub rls: RlsSettings,

    /// The `[cluster]` table (flags under the heading Cluster). Last: a
    /// flattened block's heading holds for every flag after it.
    #[command(flatten)]
    #[serde(default)]
    pub cluster: ClusterSettings,
}

impl NodeSettings {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| ConfigError::Parse {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses TOML text; the error text comes from the TOML parser and names
    /// the key and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A token is 1 to 512 visible ASCII characters; an admin listener off
/// loopback must have one (the admin API steers the whole cluster).
fn validate_admin_token(token: Option<&str>, admin_listen: SocketAddr) -> Result<(), ConfigError> {
    match token {
        Some(t) => {
            if t.is_empty() || t.len() > MAX_ADMIN_TOKEN_LEN {
                return Err(ConfigError::invalid(
                    "admin_token",
                    format!("must be 1 to {MAX_ADMIN_TOKEN_LEN} characters"),
                ));
            }
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::invalid(
                    "admin_token",
                    "must be visible ASCII characters (no spaces or control characters)",
                ));
            }
            Ok(())
        }
        None if !admin_listen.ip().is_loopback() => Err(ConfigError::invalid(
            "admin_token",
            format!(
                "is required when admin_listen ({admin_listen}) is not a loopback address: \
                 set --admin-token or LLMTRACE_ADMIN_TOKEN"
            ),
        )),
        None => Ok(()),
    }
}

impl NodeConfig {
    /// Applies the defaults to the settings given (flags and environment
    /// already laid over the file, see [`crate::Flags::over`]) and validates.
    pub fn resolve(s: NodeSettings) -> Result<NodeConfig, ConfigError> {
        let listen = parse_addr("listen", s.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let admin_listen = parse_addr(
            "admin_listen",
            s.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
        )?;
        validate_admin_token(s.admin_token.as_deref(), admin_listen)?;
        let redis = RedisConfig::resolve(&s)?;
        let node_id = s
            .node_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        validate_tenant_id(&node_id).map_err(|e| ConfigError::invalid("node_id", e.to_string()))?;
        let snapshot_interval_ms = in_range(
            "snapshot_interval_ms",
            s.snapshot_interval_ms
                .unwrap_or(DEFAULT_SNAPSHOT_INTERVAL_MS),
            1,
            MAX_INTERVAL_MS,
        )?;
        let snapshot_mode = s.snapshot_mode.unwrap_or_default();
        if snapshot_mode == SnapshotMode::WriteThrough && redis.is_none() {
            return Err(ConfigError::invalid(
                "snapshot_mode",
                "write-through needs redis_url (without Redis, buckets live only in memory)",
            ));
        }
        let threads = |key, n: Option<usize>| {
            in_range(key, n.unwrap_or_else(default_parallelism), 1, MAX_THREADS)
        };
        let shutdown_grace_ms = in_range(
            "shutdown_grace_ms",
            s.shutdown_grace_ms.unwrap_or(DEFAULT_SHUTDOWN_GRACE_MS),
            0,
            MAX_INTERVAL_MS,
        )?;
        let body_timeout_ms = in_range(
            "body_timeout_ms",
            s.body_timeout_ms.unwrap_or(DEFAULT_BODY_TIMEOUT_MS),
            1,
            MAX_INTERVAL_MS,
        )?;
        let max_connections = in_range(
            "max_connections",
            s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            1,
            MAX_MAX_CONNECTIONS,
        )?;
        let shards = threads("shards", s.shards)?;
        let http_workers = threads("http_workers", s.http_workers)?;
        let rate_limit = RateLimitConfig::resolve(s.rate_limit, s.token_limit, s.limits)?;
        let proxy = ProxyConfig::resolve(s.proxy, &rate_limit)?;
        let (rls, rules) = RlsConfig::resolve(s.rls)?;
        rate_limit.rls.replace(rules);
        Ok(NodeConfig {
            listen,
            admin_listen,
            admin_token: s.admin_token,
            node_id,
            redis,
            snapshot_interval_ms,
            snapshot_mode,
            shards,
            shard_placement: s.shard_placement.unwrap_or_default(),
            http_workers,
            log_format: s.log_format.unwrap_or_default(),
            shutdown_grace_ms,
            body_timeout_ms,
            max_connections,
            rate_limit,
            cluster: ClusterConfig::resolve(s.cluster)?,
            proxy,
            rls,
        })
    }
}

#[cfg(test)]
mod tests;
