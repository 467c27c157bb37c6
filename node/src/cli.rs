//! Command-line flags. Every flag can also be given as an environment variable
//! `LLMTRACE_<NAME>` and as a key of the TOML file given by `--config`.
//! Precedence: flag > environment > file > default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser};
use llmtrace_cluster_config::{
    ClusterOverrides, ConfigError, FileConfig, LogFormat, NodeConfig, Overrides, OwnerUnreachable,
    ProxyOverrides, ShardPlacement, SnapshotMode,
};

/// One node of an llmtrace cluster: exact per-tenant token-bucket rate
/// limiting over HTTP (`POST /v1/check`), with bucket state snapshotted to
/// memory or Redis.
///
/// Every option is also read from the environment variable shown, and from the
/// TOML file given by --config (same name, snake_case); a flag beats the
/// environment, which beats the file, which beats the default. The file also
/// holds the llmtrace `[rate_limit]` block, including
/// `[rate_limit.tenant_overrides."<tenant>"]`, the `[token_limit]` block
/// (with `[token_limit.tenant_overrides."<tenant>"]`) and the `[proxy]` block.
///
/// Proxy mode (--proxy-listen, off by default) forwards every request to an
/// OpenAI-compatible upstream and streams the answer back, holding each
/// tenant to its requests and tokens limits across the cluster.
#[derive(Debug, Parser)]
#[command(name = "llmtrace-node", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "LLMTRACE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Public listener (checks, health), behind the load balancer. Port 0 picks a
    /// free port; the bound addresses are printed on stdout.
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "LLMTRACE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Admin listener (cluster view, tenant inspection, runtime limits,
    /// drain, Prometheus /metrics). Keep it on loopback, or set --admin-token.
    /// [default: 127.0.0.1:9090]
    #[arg(long, env = "LLMTRACE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

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

    /// Redis URL for bucket snapshots (redis://host:port/db). Without it,
    /// buckets live only in this node's memory and a restart forgets them.
    /// Runtime limit overrides (admin API) are kept there too. A password in
    /// the URL is never logged nor shown by the admin API.
    #[arg(
        long,
        env = "LLMTRACE_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,

    /// Write-behind period: changed buckets are snapshotted this often, in one
    /// pipeline. At most this much consumption is lost on a crash. [default: 100]
    #[arg(long, env = "LLMTRACE_SNAPSHOT_INTERVAL_MS", value_name = "MS")]
    pub snapshot_interval_ms: Option<u64>,

    /// `write-behind`: answer at once, snapshot every interval (a crash loses
    /// at most one interval of consumption). `write-through`: answer an
    /// admitted check only once its new state is in Redis (a crash loses
    /// nothing; needs --redis-url; while Redis is down admitting checks get
    /// 503). [default: write-behind]
    #[arg(long, env = "LLMTRACE_SNAPSHOT_MODE", value_name = "MODE")]
    pub snapshot_mode: Option<SnapshotMode>,

    /// Bound on each Redis call; a hung Redis delays a tenant's first check by
    /// at most this long and never blocks resident buckets. [default: 250]
    #[arg(long, env = "LLMTRACE_REDIS_TIMEOUT_MS", value_name = "MS")]
    pub redis_timeout_ms: Option<u64>,

    /// Number of shard actors (single writers of the buckets).
    /// [default: number of CPUs]
    #[arg(long, env = "LLMTRACE_SHARDS", value_name = "N")]
    pub shards: Option<usize>,

    /// Where shards run: `workers` (on the public HTTP worker threads, so a
    /// check for a shard on its own worker never changes thread) or
    /// `dedicated` (a thread per shard). [default: workers]
    #[arg(long, env = "LLMTRACE_SHARD_PLACEMENT", value_name = "PLACEMENT")]
    pub shard_placement: Option<ShardPlacement>,

    /// HTTP worker threads serving the public, cluster and proxy listeners (with
    /// the default placement they also host the shards). [default: number of
    /// CPUs]
    #[arg(long, env = "LLMTRACE_HTTP_WORKERS", value_name = "N")]
    pub http_workers: Option<usize>,

    /// Log format on stderr: text or json (filter with RUST_LOG). [default: text]
    #[arg(long, env = "LLMTRACE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// rate_limit.enabled: false allows every check. [default: true]
    #[arg(long, env = "LLMTRACE_RATE_LIMIT_ENABLED", value_name = "BOOL", action = ArgAction::Set)]
    pub rate_limit_enabled: Option<bool>,

    /// rate_limit.requests_per_second: refill rate of every bucket, 0 means
    /// unlimited. [default: 100]
    #[arg(long, env = "LLMTRACE_REQUESTS_PER_SECOND", value_name = "N")]
    pub requests_per_second: Option<u32>,

    /// rate_limit.burst_size: bucket capacity; a new tenant starts full.
    /// [default: 200]
    #[arg(long, env = "LLMTRACE_BURST_SIZE", value_name = "N")]
    pub burst_size: Option<u32>,

    /// token_limit.tokens_per_minute: refill rate of every tenant's token
    /// bucket (LLM tokens of proxied calls), 0 means unlimited. [default: 0]
    #[arg(long, env = "LLMTRACE_TOKENS_PER_MINUTE", value_name = "N")]
    pub tokens_per_minute: Option<u32>,

    /// token_limit.burst_size: capacity of the token bucket (at most
    /// 100000000), also the largest reservation one call takes.
    /// [default: 100000]
    #[arg(long, env = "LLMTRACE_TOKEN_BURST_SIZE", value_name = "N")]
    pub token_burst_size: Option<u32>,

    /// proxy.listen: open the LLM proxy listener here; every request is
    /// forwarded to --proxy-upstream. Off unless given.
    #[arg(
        long,
        env = "LLMTRACE_PROXY_LISTEN",
        value_name = "ADDR",
        help_heading = "Proxy"
    )]
    pub proxy_listen: Option<SocketAddr>,

    /// proxy.upstream: base URL of the OpenAI-compatible upstream
    /// (http://host:port[/prefix] or https://...); the request path and
    /// query are appended.
    /// Required with --proxy-listen.
    #[arg(
        long,
        env = "LLMTRACE_PROXY_UPSTREAM",
        value_name = "URL",
        help_heading = "Proxy"
    )]
    pub proxy_upstream: Option<String>,

    /// proxy.ca_file: PEM certificates trusted for an https:// upstream on
    /// top of the built-in Web PKI roots (private CA, self-signed server).
    #[arg(
        long,
        env = "LLMTRACE_PROXY_CA_FILE",
        value_name = "FILE",
        help_heading = "Proxy"
    )]
    pub proxy_ca_file: Option<PathBuf>,

    /// proxy.trust_tenant_header: take the tenant from X-LLMTrace-Tenant-ID
    /// (only behind a gateway that sets it); otherwise the tenant is the
    /// UUID v5 of the bearer key. [default: false]
    #[arg(long, env = "LLMTRACE_PROXY_TRUST_TENANT_HEADER", value_name = "BOOL", action = ArgAction::Set, help_heading = "Proxy")]
    pub proxy_trust_tenant_header: Option<bool>,

    /// proxy.upstream_timeout_ms: time to the upstream's response head
    /// (504 after), and longest silence between two chunks of its body.
    /// [default: 60000]
    #[arg(
        long,
        env = "LLMTRACE_PROXY_UPSTREAM_TIMEOUT_MS",
        value_name = "MS",
        help_heading = "Proxy"
    )]
    pub proxy_upstream_timeout_ms: Option<u64>,

    /// proxy.connect_timeout_ms: bound on connecting to the upstream.
    /// [default: 5000]
    #[arg(
        long,
        env = "LLMTRACE_PROXY_CONNECT_TIMEOUT_MS",
        value_name = "MS",
        help_heading = "Proxy"
    )]
    pub proxy_connect_timeout_ms: Option<u64>,

    /// proxy.max_request_bytes: largest request body (413 above).
    /// [default: 4194304]
    #[arg(
        long,
        env = "LLMTRACE_PROXY_MAX_REQUEST_BYTES",
        value_name = "BYTES",
        help_heading = "Proxy"
    )]
    pub proxy_max_request_bytes: Option<usize>,

    /// proxy.max_response_bytes: largest upstream answer relayed (502 when
    /// declared larger, the stream is cut when it grows larger).
    /// [default: 67108864]
    #[arg(
        long,
        env = "LLMTRACE_PROXY_MAX_RESPONSE_BYTES",
        value_name = "BYTES",
        help_heading = "Proxy"
    )]
    pub proxy_max_response_bytes: Option<usize>,

    /// proxy.default_max_tokens: completion tokens reserved for a call that
    /// sets neither max_tokens nor max_completion_tokens. [default: 4096]
    #[arg(
        long,
        env = "LLMTRACE_PROXY_DEFAULT_MAX_TOKENS",
        value_name = "N",
        help_heading = "Proxy"
    )]
    pub proxy_default_max_tokens: Option<u32>,

    /// cluster.listen: node-to-node RPC (TCP) and gossip (UDP) on the same
    /// port. Port 0 picks a free one. [default: 127.0.0.1:7946]
    #[arg(
        long,
        env = "LLMTRACE_CLUSTER_LISTEN",
        value_name = "ADDR",
        help_heading = "Cluster"
    )]
    pub cluster_listen: Option<SocketAddr>,

    /// cluster.advertise: the address peers use to reach this node; required
    /// when --cluster-listen is a wildcard address. [default: the listen address]
    #[arg(
        long,
        env = "LLMTRACE_CLUSTER_ADVERTISE",
        value_name = "ADDR",
        help_heading = "Cluster"
    )]
    pub cluster_advertise: Option<SocketAddr>,

    /// cluster.seeds: cluster addresses (host:port, comma-separated) of nodes to
    /// join through. Without seeds the node forms a cluster of one.
    #[arg(
        long,
        env = "LLMTRACE_SEEDS",
        value_name = "ADDRS",
        value_delimiter = ',',
        help_heading = "Cluster"
    )]
    pub seeds: Option<Vec<String>>,

    /// cluster.secret: shared secret (8-256 visible ASCII); node-to-node
    /// requests without it are refused with 401. Nodes with different secrets
    /// also ignore each other's gossip.
    #[arg(
        long,
        env = "LLMTRACE_CLUSTER_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        help_heading = "Cluster"
    )]
    pub cluster_secret: Option<String>,

    /// cluster.vnodes: virtual nodes per member on the hash ring; every node of
    /// a cluster must use the same value. [default: 256]
    #[arg(
        long,
        env = "LLMTRACE_VNODES",
        value_name = "N",
        help_heading = "Cluster"
    )]
    pub vnodes: Option<u32>,

    /// cluster.gossip_interval_ms: gossip round period; failure detection takes
    /// roughly 10-20 rounds. [default: 100]
    #[arg(
        long,
        env = "LLMTRACE_GOSSIP_INTERVAL_MS",
        value_name = "MS",
        help_heading = "Cluster"
    )]
    pub gossip_interval_ms: Option<u64>,

    /// cluster.phi_threshold: phi-accrual failure detector threshold; lower
    /// detects a dead node sooner, with more false alarms. [default: 8]
    #[arg(
        long,
        env = "LLMTRACE_PHI_THRESHOLD",
        value_name = "PHI",
        help_heading = "Cluster"
    )]
    pub phi_threshold: Option<f64>,

    /// cluster.forward_batch_max: checks per forwarded batch before it is sent.
    /// [default: 256]
    #[arg(
        long,
        env = "LLMTRACE_FORWARD_BATCH_MAX",
        value_name = "N",
        help_heading = "Cluster"
    )]
    pub forward_batch_max: Option<usize>,

    /// cluster.forward_batch_wait_us: longest a forwarded check waits for its
    /// batch to fill. [default: 200]
    #[arg(
        long,
        env = "LLMTRACE_FORWARD_BATCH_WAIT_US",
        value_name = "US",
        help_heading = "Cluster"
    )]
    pub forward_batch_wait_us: Option<u64>,

    /// cluster.forward_timeout_ms: a forward unanswered this long is retried
    /// once (same check id: never counted twice). [default: 500]
    #[arg(
        long,
        env = "LLMTRACE_FORWARD_TIMEOUT_MS",
        value_name = "MS",
        help_heading = "Cluster"
    )]
    pub forward_timeout_ms: Option<u64>,

    /// cluster.on_owner_unreachable: when the owner stays unreachable, `local`
    /// decides on this node's shard (answer marked degraded), `allow` admits,
    /// `deny` refuses. [default: local]
    #[arg(
        long,
        env = "LLMTRACE_ON_OWNER_UNREACHABLE",
        value_name = "POLICY",
        help_heading = "Cluster"
    )]
    pub on_owner_unreachable: Option<OwnerUnreachable>,
}

impl Cli {
    /// Reads the file (if any) and merges everything into a valid config.
    pub fn load(&self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        NodeConfig::resolve(file, self.overrides())
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            admin_listen: self.admin_listen,
            admin_token: self.admin_token.clone(),
            node_id: self.node_id.clone(),
            redis_url: self.redis_url.clone(),
            snapshot_interval_ms: self.snapshot_interval_ms,
            snapshot_mode: self.snapshot_mode,
            redis_timeout_ms: self.redis_timeout_ms,
            shards: self.shards,
            shard_placement: self.shard_placement,
            http_workers: self.http_workers,
            log_format: self.log_format,
            rate_limit_enabled: self.rate_limit_enabled,
            requests_per_second: self.requests_per_second,
            burst_size: self.burst_size,
            tokens_per_minute: self.tokens_per_minute,
            token_burst_size: self.token_burst_size,
            proxy: ProxyOverrides {
                listen: self.proxy_listen,
                upstream: self.proxy_upstream.clone(),
                ca_file: self.proxy_ca_file.clone(),
                trust_tenant_header: self.proxy_trust_tenant_header,
                upstream_timeout_ms: self.proxy_upstream_timeout_ms,
                connect_timeout_ms: self.proxy_connect_timeout_ms,
                max_request_bytes: self.proxy_max_request_bytes,
                max_response_bytes: self.proxy_max_response_bytes,
                default_max_tokens: self.proxy_default_max_tokens,
            },
            cluster: ClusterOverrides {
                listen: self.cluster_listen,
                advertise: self.cluster_advertise,
                seeds: self.seeds.clone(),
                secret: self.cluster_secret.clone(),
                vnodes: self.vnodes,
                gossip_interval_ms: self.gossip_interval_ms,
                phi_threshold: self.phi_threshold,
                forward_batch_max: self.forward_batch_max,
                forward_batch_wait_us: self.forward_batch_wait_us,
                forward_timeout_ms: self.forward_timeout_ms,
                on_owner_unreachable: self.on_owner_unreachable,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = std::env::temp_dir().join(format!("llmtrace-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "[rate_limit]\nburst_size = 5\nrequests_per_second = 2\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "llmtrace-node",
            "--config",
            path.to_str().unwrap(),
            "--burst-size",
            "3",
        ])
        .unwrap();
        let c = cli.load().unwrap();
        assert_eq!(
            (c.rate_limit.requests_per_second, c.rate_limit.burst_size),
            (2, 3)
        );
    }

    #[test]
    fn missing_file_is_named() {
        let cli =
            Cli::try_parse_from(["llmtrace-node", "--config", "/nonexistent/x.toml"]).unwrap();
        assert!(cli
            .load()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/x.toml"));
    }
}
