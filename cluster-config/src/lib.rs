//! Configuration of an llmtrace cluster node: plain types, one place for
//! defaults, loading from TOML and validation that names the key at fault.
//!
//! # Layout
//!
//! - [`limit`]: limit names ([`Limit`], interned).
//! - [`limits`]: the llmtrace `[rate_limit]` block (seed-compatible names)
//!   and the [`Policy`] a key resolves to under any limit.
//! - [`named`]: the `[limits.<name>]` blocks (token buckets, quotas,
//!   concurrency) and their per-key overrides.
//! - [`period`]: durations and the UTC-aligned windows of quotas.
//! - [`limit_settings`]: the `[rate_limit]` and `[token_limit]` tables as the
//!   file or the flags give them, resolved into [`RateLimitConfig`].
//! - [`runtime`]: runtime limit overrides (admin API), swapped atomically.
//! - [`tenant`]: validation of tenant ids and keys (shared by config, HTTP
//!   input and the wire).
//! - [`cluster`]: the `[cluster]` block (membership, forwarding).
//! - [`cluster_tls`]: the cluster port's mutual TLS files.
//! - [`proxy`]: the `[proxy]` block (the LLM proxy listener).
//! - [`proxy_rules`]: `[[proxy.rules]]` (what a proxied call is charged) and
//!   the key table `[proxy.keys]`.
//! - [`proxy_prices`]: `[proxy.prices]`, model prices in integer micro-dollars.
//! - [`rls`]: the `[rls]` block and the Envoy rate limit service's rules
//!   (envoyproxy/ratelimit YAML), hot-swappable.
//! - [`redis`]: the top-level `redis_*` keys: where snapshots persist.
//! - [`ring`]: the consistent-hash ring that places buckets on nodes.
//! - [`node`]: the node's settings, top-level keys and the blocks above.
//! - [`flags`]: the settings as flags and environment variables, their
//!   precedence (flag > environment > file > default), the defaults shown
//!   in `--help` and the names of the config enums.
//! - [`error`]: [`ConfigError`], which always names the offending key.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod cluster_tls;
pub mod error;
pub mod flags;
pub mod limit;
pub mod limit_settings;
pub mod limits;
pub mod named;
pub mod node;
pub mod period;
pub mod proxy;
pub mod proxy_prices;
pub mod proxy_rules;
pub mod redis;
pub mod ring;
pub mod rls;
pub mod runtime;
pub mod tenant;

pub use cluster::{ClusterConfig, ClusterSettings, OwnerUnreachable};
pub use cluster_tls::ClusterTlsFiles;
pub use error::ConfigError;
pub use flags::Flags;
pub use limit::{validate_limit_name, Limit, LimitNameError, MAX_LIMIT_NAME_LEN};
pub use limit_settings::{RateLimitSettings, TokenLimitSettings};
pub use limits::{
    Policy, PolicySource, RateLimitConfig, TenantOverride, TokenLimitConfig, TokenOverride,
    MAX_BURST_TIMES_PER_S, MAX_TOKEN_BURST,
};
pub use named::{check_value, LimitDef, LimitKind, NamedLimits, OverrideValue, ValueError};
pub use node::{LogFormat, NodeConfig, NodeSettings, ShardPlacement, SnapshotMode};
pub use period::{format_duration_secs, parse_duration_secs, Period};
pub use proxy::{ProxyConfig, ProxySettings};
pub use redis::{RedisConfig, RedisMode};
pub use ring::{Fingerprint, Ring, DEFAULT_VNODES};
pub use rls::{RlsConfig, RlsLimits, RlsRules, RlsSettings};
pub use runtime::{validate_runtime_override, OverrideError, RuntimeLimits, MAX_RUNTIME_VALUE};
pub use tenant::{
    validate_key, validate_tenant_id, KeyError, TenantIdError, MAX_KEY_LEN, MAX_TENANT_ID_LEN,
};
