//! Configuration of an llmtrace cluster node: plain types, one place for
//! defaults, loading from TOML and validation that names the key at fault.
//!
//! # Layout
//!
//! - [`limits`]: the llmtrace `[rate_limit]` block (seed-compatible names),
//!   named limits and the quota a tenant resolves to.
//! - [`runtime`]: runtime limit overrides (admin API), swapped atomically.
//! - [`tenant`]: validation of tenant ids (shared by config and HTTP input).
//! - [`cluster`]: the `[cluster]` block (membership, forwarding).
//! - [`ring`]: the consistent-hash ring that places buckets on nodes.
//! - [`node`]: the node's settings and their precedence
//!   (flag > environment > file > default).
//! - [`error`]: [`ConfigError`], which always names the offending key.

pub mod cluster;
pub mod error;
pub mod limits;
pub mod node;
pub mod proxy;
pub mod ring;
pub mod runtime;
pub mod tenant;

pub use cluster::{ClusterConfig, ClusterFile, ClusterOverrides, OwnerUnreachable};
pub use error::ConfigError;
pub use limits::{
    Limit, Per, Quota, QuotaSource, RateLimitConfig, TenantOverride, TokenLimitConfig,
    TokenOverride, MAX_TOKEN_BURST,
};
pub use node::{FileConfig, LogFormat, NodeConfig, Overrides, ShardPlacement, SnapshotMode};
pub use proxy::{ProxyConfig, ProxyFile, ProxyOverrides};
pub use ring::{Fingerprint, Ring, DEFAULT_VNODES};
pub use runtime::{validate_runtime_override, OverrideError, RuntimeLimits, MAX_RUNTIME_VALUE};
pub use tenant::{validate_tenant_id, TenantIdError, MAX_TENANT_ID_LEN};
