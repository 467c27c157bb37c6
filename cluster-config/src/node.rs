//! The node's settings: one struct of resolved values ([`NodeConfig`]), the
//! optional values each source may give ([`FileConfig`] from TOML,
//! [`Overrides`] from flags and environment) and the single place where they
//! are merged with the defaults.
//!
//! Precedence: flag > environment (`LLMTRACE_*`) > TOML file > default. The
//! node binary gives flags and environment as one [`Overrides`] (clap reads
//! both, preferring the flag).

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::cluster::{ClusterConfig, ClusterFile, ClusterOverrides};
use crate::error::{in_range, ConfigError};
use crate::limits::{RateLimitConfig, TokenLimitConfig};
use crate::proxy::{ProxyConfig, ProxyFile, ProxyOverrides};
use crate::tenant::validate_tenant_id;

/// Default public listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener (loopback: operators only).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default write-behind interval.
pub const DEFAULT_SNAPSHOT_INTERVAL_MS: u64 = 100;
/// Default bound on one Redis call (connect or response).
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 250;
/// Upper bound of every millisecond setting (one minute).
pub const MAX_INTERVAL_MS: u64 = 60_000;
/// Upper bound of shard and worker counts.
pub const MAX_THREADS: usize = 256;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected `text` or `json`, got `{other}`")),
        }
    }
}

/// Where shard actors run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShardPlacement {
    /// On the public HTTP worker threads: a check whose shard lives on the
    /// worker that parsed it never changes thread.
    #[default]
    Workers,
    /// Each shard on a thread of its own.
    Dedicated,
}

impl std::str::FromStr for ShardPlacement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "workers" => Ok(ShardPlacement::Workers),
            "dedicated" => Ok(ShardPlacement::Dedicated),
            other => Err(format!("expected `workers` or `dedicated`, got `{other}`")),
        }
    }
}

/// When a check's new bucket state reaches the cache layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// Answer at once; changed buckets are written every
    /// `snapshot_interval_ms` in one batch. A crash loses at most the
    /// consumption of the last interval.
    #[default]
    WriteBehind,
    /// Answer an admitting check only after its new state is in Redis
    /// (group commit per shard). A crash loses nothing; every admitted check
    /// waits one Redis round trip.
    WriteThrough,
}

impl SnapshotMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMode::WriteBehind => "write-behind",
            SnapshotMode::WriteThrough => "write-through",
        }
    }
}

impl std::str::FromStr for SnapshotMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "write-behind" => Ok(SnapshotMode::WriteBehind),
            "write-through" => Ok(SnapshotMode::WriteThrough),
            other => Err(format!(
                "expected `write-behind` or `write-through`, got `{other}`"
            )),
        }
    }
}

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
    /// Redis URL for snapshots; `None` keeps snapshots in process memory.
    pub redis_url: Option<String>,
    /// Write-behind period: dirty buckets go to the cache layer this often.
    pub snapshot_interval_ms: u64,
    /// Write-behind (default) or write-through.
    pub snapshot_mode: SnapshotMode,
    /// Bound on every Redis call, so a hung Redis cannot stall checks.
    pub redis_timeout_ms: u64,
    /// Number of shard actors.
    pub shards: usize,
    /// Where the shard actors run.
    pub shard_placement: ShardPlacement,
    /// Number of HTTP worker threads of the public listener.
    pub http_workers: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// The llmtrace `[rate_limit]` block, with the `[token_limit]` block
    /// resolved into `rate_limit.tokens`.
    pub rate_limit: RateLimitConfig,
    /// The `[cluster]` block: membership and forwarding.
    pub cluster: ClusterConfig,
    /// The `[proxy]` block: the LLM proxy listener (off by default).
    pub proxy: ProxyConfig,
}

/// The TOML file: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub node_id: Option<String>,
    pub redis_url: Option<String>,
    pub snapshot_interval_ms: Option<u64>,
    pub snapshot_mode: Option<SnapshotMode>,
    pub redis_timeout_ms: Option<u64>,
    pub shards: Option<usize>,
    pub shard_placement: Option<ShardPlacement>,
    pub http_workers: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub rate_limit: Option<RateLimitConfig>,
    pub token_limit: Option<TokenLimitConfig>,
    pub cluster: Option<ClusterFile>,
    pub proxy: Option<ProxyFile>,
}

impl FileConfig {
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

/// Values given by flags or environment; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub node_id: Option<String>,
    pub redis_url: Option<String>,
    pub snapshot_interval_ms: Option<u64>,
    pub snapshot_mode: Option<SnapshotMode>,
    pub redis_timeout_ms: Option<u64>,
    pub shards: Option<usize>,
    pub shard_placement: Option<ShardPlacement>,
    pub http_workers: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub rate_limit_enabled: Option<bool>,
    pub requests_per_second: Option<u32>,
    pub burst_size: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub token_burst_size: Option<u32>,
    pub cluster: ClusterOverrides,
    pub proxy: ProxyOverrides,
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{value}` is not an IP:port address")))
}

fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Longest admin token accepted.
pub const MAX_ADMIN_TOKEN_LEN: usize = 512;

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
    /// Merges `overrides` over `file` over the defaults and validates.
    pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<NodeConfig, ConfigError> {
        let listen = match (overrides.listen, file.listen) {
            (Some(a), _) => a,
            (None, Some(s)) => parse_addr("listen", &s)?,
            (None, None) => DEFAULT_LISTEN.parse().expect("valid default"),
        };
        let admin_listen = match (overrides.admin_listen, file.admin_listen) {
            (Some(a), _) => a,
            (None, Some(s)) => parse_addr("admin_listen", &s)?,
            (None, None) => DEFAULT_ADMIN_LISTEN.parse().expect("valid default"),
        };
        let admin_token = overrides.admin_token.or(file.admin_token);
        validate_admin_token(admin_token.as_deref(), admin_listen)?;
        let node_id = overrides
            .node_id
            .or(file.node_id)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        validate_tenant_id(&node_id).map_err(|e| ConfigError::invalid("node_id", e.to_string()))?;
        let redis_url = overrides.redis_url.or(file.redis_url);
        if let Some(url) = &redis_url {
            let ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !ok {
                return Err(ConfigError::invalid(
                    "redis_url",
                    "must start with redis://, rediss:// or unix://",
                ));
            }
        }
        let snapshot_interval_ms = in_range(
            "snapshot_interval_ms",
            overrides
                .snapshot_interval_ms
                .or(file.snapshot_interval_ms)
                .unwrap_or(DEFAULT_SNAPSHOT_INTERVAL_MS),
            1,
            MAX_INTERVAL_MS,
        )?;
        let snapshot_mode = overrides
            .snapshot_mode
            .or(file.snapshot_mode)
            .unwrap_or_default();
        if snapshot_mode == SnapshotMode::WriteThrough && redis_url.is_none() {
            return Err(ConfigError::invalid(
                "snapshot_mode",
                "write-through needs redis_url (without Redis, buckets live only in memory)",
            ));
        }
        let redis_timeout_ms = in_range(
            "redis_timeout_ms",
            overrides
                .redis_timeout_ms
                .or(file.redis_timeout_ms)
                .unwrap_or(DEFAULT_REDIS_TIMEOUT_MS),
            1,
            MAX_INTERVAL_MS,
        )?;
        let shards = in_range(
            "shards",
            overrides
                .shards
                .or(file.shards)
                .unwrap_or_else(default_parallelism),
            1,
            MAX_THREADS,
        )?;
        let http_workers = in_range(
            "http_workers",
            overrides
                .http_workers
                .or(file.http_workers)
                .unwrap_or_else(default_parallelism),
            1,
            MAX_THREADS,
        )?;
        let log_format = overrides.log_format.or(file.log_format).unwrap_or_default();
        let shard_placement = overrides
            .shard_placement
            .or(file.shard_placement)
            .unwrap_or_default();
        let mut rate_limit = file.rate_limit.unwrap_or_default();
        if let Some(v) = overrides.rate_limit_enabled {
            rate_limit.enabled = v;
        }
        if let Some(v) = overrides.requests_per_second {
            rate_limit.requests_per_second = v;
        }
        if let Some(v) = overrides.burst_size {
            rate_limit.burst_size = v;
        }
        let mut tokens = file.token_limit.unwrap_or_default();
        if let Some(v) = overrides.tokens_per_minute {
            tokens.tokens_per_minute = v;
        }
        if let Some(v) = overrides.token_burst_size {
            tokens.burst_size = v;
        }
        rate_limit.tokens = tokens;
        rate_limit.validate()?;
        let cluster = ClusterConfig::resolve(file.cluster.unwrap_or_default(), overrides.cluster)?;
        let proxy = ProxyConfig::resolve(file.proxy.unwrap_or_default(), overrides.proxy)?;
        Ok(NodeConfig {
            listen,
            admin_listen,
            admin_token,
            node_id,
            redis_url,
            snapshot_interval_ms,
            snapshot_mode,
            redis_timeout_ms,
            shards,
            shard_placement,
            http_workers,
            log_format,
            rate_limit,
            cluster,
            proxy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text).expect("valid toml")
    }

    #[test]
    fn defaults() {
        let c = NodeConfig::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.snapshot_interval_ms, 100);
        assert!(c.redis_url.is_none());
        assert!(c.shards >= 1);
        assert_eq!(c.rate_limit, RateLimitConfig::default());
        assert_eq!(uuid::Uuid::parse_str(&c.node_id).map(|_| ()), Ok(()));
    }

    #[test]
    fn overrides_beat_file_beat_defaults() {
        let f = file(
            "listen = \"127.0.0.1:1\"\nsnapshot_interval_ms = 7\n\
             [rate_limit]\nrequests_per_second = 3\nburst_size = 9\n",
        );
        let o = Overrides {
            snapshot_interval_ms: Some(8),
            burst_size: Some(4),
            ..Overrides::default()
        };
        let c = NodeConfig::resolve(f, o).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.snapshot_interval_ms, 8);
        assert_eq!(c.rate_limit.requests_per_second, 3);
        assert_eq!(c.rate_limit.burst_size, 4);
    }

    #[test]
    fn seed_block_with_overrides_parses() {
        let f = file(
            "[rate_limit]\nenabled = true\nrequests_per_second = 100\nburst_size = 200\n\
             window_seconds = 60\n\
             [rate_limit.tenant_overrides.\"acme\"]\nrequests_per_second = 500\nburst_size = 1000\n",
        );
        let c = NodeConfig::resolve(f, Overrides::default()).unwrap();
        assert_eq!(c.rate_limit.tenant_overrides["acme"].burst_size, 1000);
        assert_eq!(c.rate_limit.warnings().len(), 1);
    }

    #[test]
    fn token_limit_block_and_precedence() {
        let f = file(
            "[token_limit]\ntokens_per_minute = 600\nburst_size = 50\n\
             [token_limit.tenant_overrides.\"acme\"]\ntokens_per_minute = 6\nburst_size = 7\n\
             [proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\n",
        );
        let o = Overrides {
            token_burst_size: Some(40),
            ..Overrides::default()
        };
        let c = NodeConfig::resolve(f, o).unwrap();
        assert_eq!(c.rate_limit.tokens.tokens_per_minute, 600);
        assert_eq!(c.rate_limit.tokens.burst_size, 40);
        assert_eq!(c.rate_limit.tokens.tenant_overrides["acme"].burst_size, 7);
        assert!(c.proxy.listen.is_some());
        let err = NodeConfig::resolve(
            file("[token_limit]\ntokens_per_minute = 1\nburst_size = 0\n"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("token_limit.burst_size"), "{err}");
        let err = FileConfig::parse("[token_limit]\ntokens_per_second = 1").unwrap_err();
        assert!(err.contains("tokens_per_second"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases: Vec<(FileConfig, Overrides, &str)> = vec![
            (file("listen = \"nope\""), Overrides::default(), "listen"),
            (
                file("admin_listen = \"1.2.3.4\""),
                Overrides::default(),
                "admin_listen",
            ),
            (
                file("snapshot_interval_ms = 0"),
                Overrides::default(),
                "snapshot_interval_ms",
            ),
            (
                file("redis_url = \"http://x\""),
                Overrides::default(),
                "redis_url",
            ),
            (file("node_id = \"a b\""), Overrides::default(), "node_id"),
            (
                file("snapshot_mode = \"write-through\""),
                Overrides::default(),
                "snapshot_mode",
            ),
            (
                file("admin_listen = \"0.0.0.0:9090\""),
                Overrides::default(),
                "admin_token",
            ),
            (
                file("admin_token = \"has space\""),
                Overrides::default(),
                "admin_token",
            ),
            (
                FileConfig::default(),
                Overrides {
                    shards: Some(0),
                    ..Overrides::default()
                },
                "shards",
            ),
            (
                FileConfig::default(),
                Overrides {
                    burst_size: Some(0),
                    ..Overrides::default()
                },
                "rate_limit.burst_size",
            ),
        ];
        for (f, o, key) in cases {
            let err = NodeConfig::resolve(f, o).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn snapshot_mode_defaults_to_write_behind_and_parses_from_every_source() {
        let c = NodeConfig::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.snapshot_mode, SnapshotMode::WriteBehind);
        let redis = "redis_url = \"redis://127.0.0.1:1\"\n";
        let c = NodeConfig::resolve(
            file(&format!("{redis}snapshot_mode = \"write-through\"")),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.snapshot_mode, SnapshotMode::WriteThrough);
        let c = NodeConfig::resolve(
            file(&format!("{redis}snapshot_mode = \"write-through\"")),
            Overrides {
                snapshot_mode: Some(SnapshotMode::WriteBehind),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.snapshot_mode,
            SnapshotMode::WriteBehind,
            "flag beats file"
        );
        assert!(FileConfig::parse("snapshot_mode = \"write-around\"").is_err());
        assert_eq!("write-through".parse(), Ok(SnapshotMode::WriteThrough));
        assert!("writethrough".parse::<SnapshotMode>().is_err());
    }

    #[test]
    fn admin_token_precedence_and_loopback_rule() {
        let f = file("admin_token = \"from-file\"\nadmin_listen = \"0.0.0.0:9090\"");
        let c = NodeConfig::resolve(f.clone(), Overrides::default()).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("from-file"));
        let o = Overrides {
            admin_token: Some("from-flag".into()),
            ..Overrides::default()
        };
        let c = NodeConfig::resolve(f, o).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("from-flag"));
        // Loopback (v4 and v6) needs no token.
        for addr in ["127.0.0.1:9090", "[::1]:9090"] {
            let f = file(&format!("admin_listen = \"{addr}\""));
            assert!(
                NodeConfig::resolve(f, Overrides::default()).is_ok(),
                "{addr}"
            );
        }
        let err = NodeConfig::resolve(file("admin_listen = \"[::]:9090\""), Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("admin_token"), "{err}");
    }

    #[test]
    fn unknown_and_mistyped_keys_are_refused_by_name() {
        let err = FileConfig::parse("bogus = 1").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = FileConfig::parse("[rate_limit]\nburst_size = -1").unwrap_err();
        assert!(err.contains("burst_size"), "{err}");
        let err = FileConfig::parse("[rate_limit]\nburts_size = 1").unwrap_err();
        assert!(err.contains("burts_size"), "{err}");
    }
}
