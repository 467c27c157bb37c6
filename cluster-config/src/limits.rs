//! The `[rate_limit]` block, with the names of llmtrace 0.2.0 so existing
//! users can paste their config, and the quota a `(tenant, limit)` resolves to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::runtime::RuntimeLimits;
use crate::tenant::validate_tenant_id;

/// A named limit. A bucket is keyed by `(tenant_id, Limit)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// One unit per request (or `cost` units); the `[rate_limit]` block.
    Requests,
    /// LLM tokens (prompt + completion) of proxied calls; the
    /// `[token_limit]` block, refilled per minute.
    Tokens,
}

impl Limit {
    /// Every limit, in a fixed order (the index is the wire and metrics id).
    pub const ALL: [Limit; 2] = [Limit::Requests, Limit::Tokens];

    /// The name used in the API, in metrics and in Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Tokens => "tokens",
        }
    }

    /// The period the configured rate of this limit is given per.
    pub fn per(self) -> Per {
        match self {
            Limit::Requests => Per::Second,
            Limit::Tokens => Per::Minute,
        }
    }
}

/// The period a refill rate is counted over. Bucket math keeps the rate as an
/// integer per this period (no float, no rounding): tokens per minute are
/// not an integer per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Second,
    Minute,
}

impl Per {
    /// Length of the period in seconds.
    pub const fn secs(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Limit {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Limit::ALL.into_iter().find(|l| l.as_str() == s).ok_or(())
    }
}

/// What a tenant is held to for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Limiting disabled, or `requests_per_second = 0`: every check passes.
    Unlimited,
    /// A token bucket of capacity `burst` refilled continuously at `rate`
    /// units per `per`. Both are at least 1.
    Bucket { rate: u32, burst: u32, per: Per },
}

/// Where a tenant's quota for one limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaSource {
    /// The block's default rate and burst.
    Default,
    /// A `tenant_overrides` entry of the configuration.
    Config,
    /// A runtime override set through the admin API.
    Runtime,
}

impl QuotaSource {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaSource::Default => "default",
            QuotaSource::Config => "config",
            QuotaSource::Runtime => "runtime",
        }
    }
}

/// Largest `token_limit` burst: the bucket math keeps a token bucket's level
/// in signed 1/(60·10^9) units, which must fit in 63 bits.
pub const MAX_TOKEN_BURST: u32 = 100_000_000;

/// Per-tenant replacement of the default token rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenOverride {
    pub tokens_per_minute: u32,
    pub burst_size: u32,
}

/// Default `token_limit.tokens_per_minute`: 0, the token limit is off.
pub const DEFAULT_TOKENS_PER_MINUTE: u32 = 0;
/// Default `token_limit.burst_size`.
pub const DEFAULT_TOKEN_BURST_SIZE: u32 = 100_000;

/// The `[token_limit]` block: LLM tokens per tenant, held by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLimitConfig {
    /// Refill rate in tokens per minute; 0 means unlimited.
    pub tokens_per_minute: u32,
    /// Bucket capacity in tokens (at most [`MAX_TOKEN_BURST`]); a new
    /// tenant starts full. Also the largest reservation one call can take.
    pub burst_size: u32,
    /// Per-tenant rate and burst, keyed by tenant id.
    pub tenant_overrides: BTreeMap<String, TokenOverride>,
}

impl Default for TokenLimitConfig {
    fn default() -> Self {
        TokenLimitConfig {
            tokens_per_minute: DEFAULT_TOKENS_PER_MINUTE,
            burst_size: DEFAULT_TOKEN_BURST_SIZE,
            tenant_overrides: BTreeMap::new(),
        }
    }
}

impl TokenLimitConfig {
    /// Checks every value; the error names the key (`token_limit.burst_size`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_tokens("token_limit", self.tokens_per_minute, self.burst_size)?;
        for (tenant, o) in &self.tenant_overrides {
            let key = format!("token_limit.tenant_overrides.\"{tenant}\"");
            validate_tenant_id(tenant)
                .map_err(|e| ConfigError::invalid(&key, format!("tenant id {e}")))?;
            check_tokens(&key, o.tokens_per_minute, o.burst_size)?;
        }
        Ok(())
    }
}

fn check_tokens(prefix: &str, rate: u32, burst: u32) -> Result<(), ConfigError> {
    if rate > 0 && burst == 0 {
        return Err(ConfigError::invalid(
            format!("{prefix}.burst_size"),
            "must be at least 1 when tokens_per_minute > 0",
        ));
    }
    if burst > MAX_TOKEN_BURST {
        return Err(ConfigError::invalid(
            format!("{prefix}.burst_size"),
            format!("{burst} exceeds the largest token burst {MAX_TOKEN_BURST}"),
        ));
    }
    Ok(())
}

/// Per-tenant replacement of the default rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantOverride {
    pub requests_per_second: u32,
    pub burst_size: u32,
}

/// Default `rate_limit.enabled` (the seed's).
pub const DEFAULT_RATE_LIMIT_ENABLED: bool = true;
/// Default `rate_limit.requests_per_second` (the seed's).
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 100;
/// Default `rate_limit.burst_size` (the seed's).
pub const DEFAULT_BURST_SIZE: u32 = 200;

/// The llmtrace `[rate_limit]` block, resolved (the file's table is
/// [`crate::RateLimitSettings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// `false`: every check is allowed.
    pub enabled: bool,
    /// Refill rate in units per second; 0 means unlimited.
    pub requests_per_second: u32,
    /// Bucket capacity; a new tenant starts full.
    pub burst_size: u32,
    /// Accepted for compatibility with llmtrace 0.2.0 configs and ignored:
    /// the bucket refills continuously, there is no window.
    pub window_seconds: Option<u64>,
    /// Per-tenant rate and burst, keyed by tenant id.
    pub tenant_overrides: BTreeMap<String, TenantOverride>,
    /// Runtime overrides (admin API), consulted before `tenant_overrides`.
    /// Not part of the file; clones share the same table.
    pub runtime: RuntimeLimits,
    /// The `[token_limit]` block (a separate TOML table, resolved into this
    /// struct so that one [`RateLimitConfig::quota`] answers every limit).
    pub tokens: TokenLimitConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: DEFAULT_RATE_LIMIT_ENABLED,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            burst_size: DEFAULT_BURST_SIZE,
            window_seconds: None,
            tenant_overrides: BTreeMap::new(),
            runtime: RuntimeLimits::default(),
            tokens: TokenLimitConfig::default(),
        }
    }
}

impl RateLimitConfig {
    /// Limiting on, `rate` requests per second with capacity `burst`, and
    /// the defaults for everything else (no overrides, tokens unlimited).
    pub fn with_requests(rate: u32, burst: u32) -> Self {
        RateLimitConfig {
            enabled: true,
            requests_per_second: rate,
            burst_size: burst,
            ..RateLimitConfig::default()
        }
    }

    /// The quota of `tenant` for `limit`: the one place quotas resolve.
    #[inline]
    pub fn quota(&self, tenant: &str, limit: Limit) -> Quota {
        self.quota_with_source(tenant, limit).0
    }

    /// The quota of `tenant` for `limit` and where it comes from: a runtime
    /// override, else a configured tenant override, else the default.
    /// `enabled = false` turns off the requests limit (it wins over
    /// everything there); the token limit is off when its rate is 0. A
    /// runtime override of `tokens` gives tokens per minute in its
    /// `requests_per_second` field, and its burst is capped at
    /// [`MAX_TOKEN_BURST`].
    pub fn quota_with_source(&self, tenant: &str, limit: Limit) -> (Quota, QuotaSource) {
        if limit == Limit::Requests && !self.enabled {
            return (Quota::Unlimited, QuotaSource::Default);
        }
        let (rate, burst, source) = if let Some(o) = self.runtime.get(tenant, limit) {
            (o.requests_per_second, o.burst_size, QuotaSource::Runtime)
        } else if limit == Limit::Tokens {
            match self.tokens.tenant_overrides.get(tenant) {
                Some(o) => (o.tokens_per_minute, o.burst_size, QuotaSource::Config),
                None => (
                    self.tokens.tokens_per_minute,
                    self.tokens.burst_size,
                    QuotaSource::Default,
                ),
            }
        } else {
            match self.tenant_overrides.get(tenant) {
                Some(o) => (o.requests_per_second, o.burst_size, QuotaSource::Config),
                None => (
                    self.requests_per_second,
                    self.burst_size,
                    QuotaSource::Default,
                ),
            }
        };
        let burst = if limit == Limit::Tokens {
            burst.min(MAX_TOKEN_BURST)
        } else {
            burst
        };
        let quota = if rate == 0 {
            Quota::Unlimited
        } else {
            Quota::Bucket {
                rate,
                burst,
                per: limit.per(),
            }
        };
        (quota, source)
    }

    /// Checks every value; the error names the key (`rate_limit.burst_size`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_pair("rate_limit", self.requests_per_second, self.burst_size)?;
        for (tenant, o) in &self.tenant_overrides {
            let key = format!("rate_limit.tenant_overrides.\"{tenant}\"");
            validate_tenant_id(tenant)
                .map_err(|e| ConfigError::invalid(&key, format!("tenant id {e}")))?;
            check_pair(&key, o.requests_per_second, o.burst_size)?;
        }
        self.tokens.validate()
    }

    /// Warnings worth logging at start-up (accepted but meaningless keys).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.window_seconds.is_some() {
            w.push(
                "rate_limit.window_seconds is ignored: buckets refill continuously at \
                 requests_per_second"
                    .to_string(),
            );
        }
        w
    }
}

fn check_pair(prefix: &str, rate: u32, burst: u32) -> Result<(), ConfigError> {
    if rate > 0 && burst == 0 {
        return Err(ConfigError::invalid(
            format!("{prefix}.burst_size"),
            "must be at least 1 when requests_per_second > 0 (a bucket of capacity 0 refuses \
             everything)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig::with_requests(rate, burst)
    }

    #[test]
    fn seed_defaults() {
        let c = RateLimitConfig::default();
        assert!(c.enabled);
        assert_eq!(
            c.quota("t", Limit::Requests),
            Quota::Bucket {
                rate: 100,
                burst: 200,
                per: Per::Second
            }
        );
    }

    #[test]
    fn disabled_and_zero_rate_are_unlimited() {
        let mut c = config(1, 1);
        c.enabled = false;
        assert_eq!(c.quota("t", Limit::Requests), Quota::Unlimited);
        assert_eq!(config(0, 5).quota("t", Limit::Requests), Quota::Unlimited);
    }

    #[test]
    fn overrides_apply_to_their_tenant_only() {
        let mut c = config(1, 2);
        c.tenant_overrides.insert(
            "big".into(),
            TenantOverride {
                requests_per_second: 500,
                burst_size: 1000,
            },
        );
        assert_eq!(
            c.quota("big", Limit::Requests),
            Quota::Bucket {
                rate: 500,
                burst: 1000,
                per: Per::Second
            }
        );
        assert_eq!(
            c.quota("small", Limit::Requests),
            Quota::Bucket {
                rate: 1,
                burst: 2,
                per: Per::Second
            }
        );
    }

    #[test]
    fn validation_names_the_key() {
        let err = config(5, 0).validate().unwrap_err();
        assert!(err.to_string().contains("rate_limit.burst_size"), "{err}");
        let mut c = config(1, 1);
        c.tenant_overrides.insert(
            "x".into(),
            TenantOverride {
                requests_per_second: 3,
                burst_size: 0,
            },
        );
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("tenant_overrides.\"x\".burst_size"),
            "{err}"
        );
        let mut c = config(1, 1);
        c.tenant_overrides.insert(
            "has space".into(),
            TenantOverride {
                requests_per_second: 3,
                burst_size: 3,
            },
        );
        assert!(c.validate().unwrap_err().to_string().contains("has space"));
    }

    #[test]
    fn token_quota_is_per_minute_with_overrides() {
        let mut c = RateLimitConfig::default();
        assert_eq!(c.quota("t", Limit::Tokens), Quota::Unlimited);
        c.tokens.tokens_per_minute = 90;
        c.tokens.burst_size = 1000;
        c.tokens.tenant_overrides.insert(
            "big".into(),
            TokenOverride {
                tokens_per_minute: 7,
                burst_size: 11,
            },
        );
        let per = Per::Minute;
        assert_eq!(
            c.quota("t", Limit::Tokens),
            Quota::Bucket {
                rate: 90,
                burst: 1000,
                per
            }
        );
        assert_eq!(
            c.quota("big", Limit::Tokens),
            Quota::Bucket {
                rate: 7,
                burst: 11,
                per
            }
        );
        // Disabling the requests limit leaves the token limit alone.
        c.enabled = false;
        assert_eq!(c.quota("t", Limit::Requests), Quota::Unlimited);
        assert!(matches!(c.quota("t", Limit::Tokens), Quota::Bucket { .. }));
    }

    #[test]
    fn token_validation_names_the_key() {
        let mut c = RateLimitConfig::default();
        c.tokens.tokens_per_minute = 5;
        c.tokens.burst_size = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("token_limit.burst_size"), "{err}");
        c.tokens.burst_size = MAX_TOKEN_BURST + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("token_limit.burst_size"), "{err}");
        c.tokens.burst_size = MAX_TOKEN_BURST;
        assert!(c.validate().is_ok());
        c.tokens.tenant_overrides.insert(
            "x".into(),
            TokenOverride {
                tokens_per_minute: 1,
                burst_size: 0,
            },
        );
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("token_limit.tenant_overrides.\"x\".burst_size"),
            "{err}"
        );
    }

    #[test]
    fn runtime_overrides_win_and_report_their_source() {
        let mut c = config(1, 2);
        c.tenant_overrides.insert(
            "big".into(),
            TenantOverride {
                requests_per_second: 500,
                burst_size: 1000,
            },
        );
        assert_eq!(
            c.quota_with_source("big", Limit::Requests).1,
            QuotaSource::Config
        );
        assert_eq!(
            c.quota_with_source("x", Limit::Requests).1,
            QuotaSource::Default
        );
        let shared = c.clone();
        c.runtime.replace([(
            ("big".to_string(), Limit::Requests),
            TenantOverride {
                requests_per_second: 7,
                burst_size: 9,
            },
        )]);
        assert_eq!(
            shared.quota_with_source("big", Limit::Requests),
            (
                Quota::Bucket {
                    rate: 7,
                    burst: 9,
                    per: Per::Second
                },
                QuotaSource::Runtime
            )
        );
    }

    #[test]
    fn runtime_overrides_of_tokens_are_per_minute_and_capped() {
        let c = RateLimitConfig::default();
        c.runtime.replace([(
            ("t".to_string(), Limit::Tokens),
            TenantOverride {
                requests_per_second: 600,
                burst_size: 1_000_000_000,
            },
        )]);
        assert_eq!(
            c.quota_with_source("t", Limit::Tokens),
            (
                Quota::Bucket {
                    rate: 600,
                    burst: MAX_TOKEN_BURST,
                    per: Per::Minute
                },
                QuotaSource::Runtime
            )
        );
        // The requests limit of the same tenant is untouched.
        assert_eq!(
            c.quota_with_source("t", Limit::Requests).1,
            QuotaSource::Default
        );
    }

    #[test]
    fn limit_names_round_trip() {
        for l in Limit::ALL {
            assert_eq!(l.as_str().parse::<Limit>(), Ok(l));
        }
        assert!("tokens-nope".parse::<Limit>().is_err());
    }
}
