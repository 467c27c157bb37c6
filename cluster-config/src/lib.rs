//! Configuration of an llmtrace cluster node: plain types, one place for
//! defaults, loading from TOML and validation that names the key at fault.
//!
//! # Layout
//!
//! - [`limits`]: the llmtrace `[rate_limit]` block (seed-compatible names),
//!   named limits and the quota a tenant resolves to.
//! - [`limit_settings`]: the `[rate_limit]` and `[token_limit]` tables as the
//!   file or the flags give them, resolved into [`RateLimitConfig`].
//! - [`runtime`]: runtime limit overrides (admin API), swapped atomically.
//! - [`tenant`]: validation of tenant ids (shared by config and HTTP input).
//! - [`cluster`]: the `[cluster]` block (membership, forwarding).
//! - [`cluster_tls`]: the cluster port's mutual TLS files.
//! - [`proxy`]: the `[proxy]` block (the LLM proxy listener).
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
pub mod limit_settings;
pub mod limits;
pub mod node;
pub mod proxy;
pub mod ring;
pub mod runtime;
pub mod tenant;

pub use cluster::{ClusterConfig, ClusterSettings, OwnerUnreachable};
pub use cluster_tls::ClusterTlsFiles;
pub use error::ConfigError;
pub use flags::Flags;
pub use limit_settings::{RateLimitSettings, TokenLimitSettings};
pub use limits::{
    Limit, Per, Quota, QuotaSource, RateLimitConfig, TenantOverride, TokenLimitConfig,
    TokenOverride, MAX_TOKEN_BURST,
};
pub use node::{LogFormat, NodeConfig, NodeSettings, ShardPlacement, SnapshotMode};
pub use proxy::{ProxyConfig, ProxySettings};
pub use ring::{Fingerprint, Ring, DEFAULT_VNODES};
pub use runtime::{validate_runtime_override, OverrideError, RuntimeLimits, MAX_RUNTIME_VALUE};
pub use tenant::{validate_tenant_id, TenantIdError, MAX_TENANT_ID_LEN};
