//! The `[rate_limit]` block, with the names of llmtrace 0.2.0 so existing
//! users can paste their config, and the quota a `(tenant, limit)` resolves to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::limit::Limit;
use crate::named::{LimitKind, NamedLimits, OverrideValue};
use crate::period::Period;
use crate::rls::RlsLimits;
use crate::runtime::RuntimeLimits;
use crate::tenant::validate_tenant_id;

/// What one key is held to under one limit: the limit's kind with its
/// numbers resolved (default, configured override or runtime override).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Limiting disabled, or a rate of 0: every check passes.
    Unlimited,
    /// A token bucket of capacity `burst` refilled continuously at `rate`
    /// units per `per_s` seconds. Both are at least 1, and
    /// `burst × per_s × 10^9` fits in 63 bits (the bucket math is exact).
    TokenBucket { rate: u32, burst: u32, per_s: u32 },
    /// `amount` units per window of `period`, aligned to UTC.
    Quota { amount: u64, period: Period },
    /// At most `max` leases held at once; an unreleased lease returns after
    /// `lease_ttl_s` seconds.
    Concurrency { max: u32, lease_ttl_s: u64 },
}

/// A token bucket's capacity in sub-units (`burst × per_s × 10^9`) must fit
/// in an `i64`: this is the largest `burst × per_s`.
pub const MAX_BURST_TIMES_PER_S: u64 = i64::MAX as u64 / 1_000_000_000;

/// Where a key's policy under one limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The block's default rate and burst.
    Default,
    /// A `tenant_overrides` entry of the configuration.
    Config,
    /// A runtime override set through the admin API.
    Runtime,
}

impl PolicySource {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Default => "default",
            PolicySource::Config => "config",
            PolicySource::Runtime => "runtime",
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
    /// struct so that one [`RateLimitConfig::policy`] answers every limit).
    pub tokens: TokenLimitConfig,
    /// The `[limits.<name>]` blocks.
    pub named: NamedLimits,
    /// The RLS rules in force (`rls.*` limits); clones share them and a
    /// reload swaps them.
    pub rls: RlsLimits,
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
            named: NamedLimits::default(),
            rls: RlsLimits::default(),
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

    /// The policy `key` is held to under `limit`: the one place policies
    /// resolve. A limit this configuration does not define is unlimited
    /// (callers look names up with [`RateLimitConfig::limit`] first).
    #[inline]
    pub fn policy(&self, key: &str, limit: Limit) -> Policy {
        self.policy_with_source(key, limit).0
    }

    /// The policy of `key` under `limit` and where it comes from: a runtime
    /// override, else a configured override, else the limit's default.
    /// `enabled = false` turns off the requests limit (it wins over
    /// everything there); the token limit is off when its rate is 0. A
    /// runtime override of `tokens` gives tokens per minute, and its burst
    /// is capped at [`MAX_TOKEN_BURST`].
    pub fn policy_with_source(&self, key: &str, limit: Limit) -> (Policy, PolicySource) {
        if limit != Limit::REQUESTS && limit != Limit::TOKENS {
            if self.named.get(limit).is_none() {
                if let Some(policy) = self.rls.policy(limit) {
                    return (policy, PolicySource::Default);
                }
            }
            return self.named.policy_with_source(key, limit, &self.runtime);
        }
        if limit == Limit::REQUESTS && !self.enabled {
            return (Policy::Unlimited, PolicySource::Default);
        }
        let runtime = match self.runtime.get(key, limit) {
            Some(OverrideValue::TokenBucket { rate, burst }) => Some((rate, burst)),
            _ => None,
        };
        let (rate, burst, source) = if let Some((rate, burst)) = runtime {
            (rate, burst, PolicySource::Runtime)
        } else if limit == Limit::TOKENS {
            match self.tokens.tenant_overrides.get(key) {
                Some(o) => (o.tokens_per_minute, o.burst_size, PolicySource::Config),
                None => (
                    self.tokens.tokens_per_minute,
                    self.tokens.burst_size,
                    PolicySource::Default,
                ),
            }
        } else {
            match self.tenant_overrides.get(key) {
                Some(o) => (o.requests_per_second, o.burst_size, PolicySource::Config),
                None => (
                    self.requests_per_second,
                    self.burst_size,
                    PolicySource::Default,
                ),
            }
        };
        let (burst, per_s) = if limit == Limit::TOKENS {
            (burst.min(MAX_TOKEN_BURST), 60)
        } else {
            (burst, 1)
        };
        let policy = if rate == 0 {
            Policy::Unlimited
        } else {
            Policy::TokenBucket { rate, burst, per_s }
        };
        (policy, source)
    }

    /// The limit named `name`, if this configuration defines it (`requests`
    /// and `tokens` always exist).
    pub fn limit(&self, name: &str) -> Option<Limit> {
        match name {
            "requests" => Some(Limit::REQUESTS),
            "tokens" => Some(Limit::TOKENS),
            _ => self.named.find(name).or_else(|| self.rls.find(name)),
        }
    }

    /// Every limit this configuration defines, by name.
    pub fn limits(&self) -> Vec<Limit> {
        let mut all = vec![Limit::REQUESTS, Limit::TOKENS];
        all.extend(self.named.iter().map(|d| d.limit));
        all.sort();
        all
    }

    /// `limit` is in shadow mode (`shadow = true`): its refusals are
    /// reported, not enforced.
    #[inline]
    pub fn is_shadow(&self, limit: Limit) -> bool {
        self.named.get(limit).is_some_and(|d| d.shadow)
    }

    /// The kind of `limit`.
    pub fn kind(&self, limit: Limit) -> LimitKind {
        match self.named.get(limit) {
            Some(d) => d.kind,
            None => self.rls.kind(limit).unwrap_or(LimitKind::TokenBucket),
        }
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
        self.tokens.validate()?;
        self.named.validate()
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
            c.policy("t", Limit::REQUESTS),
            Policy::TokenBucket {
                rate: 100,
                burst: 200,
                per_s: 1
            }
        );
    }

    #[test]
    fn disabled_and_zero_rate_are_unlimited() {
        let mut c = config(1, 1);
        c.enabled = false;
        assert_eq!(c.policy("t", Limit::REQUESTS), Policy::Unlimited);
        assert_eq!(config(0, 5).policy("t", Limit::REQUESTS), Policy::Unlimited);
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
            c.policy("big", Limit::REQUESTS),
            Policy::TokenBucket {
                rate: 500,
                burst: 1000,
                per_s: 1
            }
        );
        assert_eq!(
            c.policy("small", Limit::REQUESTS),
            Policy::TokenBucket {
                rate: 1,
                burst: 2,
                per_s: 1
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
        assert_eq!(c.policy("t", Limit::TOKENS), Policy::Unlimited);
        c.tokens.tokens_per_minute = 90;
        c.tokens.burst_size = 1000;
        c.tokens.tenant_overrides.insert(
            "big".into(),
            TokenOverride {
                tokens_per_minute: 7,
                burst_size: 11,
            },
        );
        let per_s = 60;
        assert_eq!(
            c.policy("t", Limit::TOKENS),
            Policy::TokenBucket {
                rate: 90,
                burst: 1000,
                per_s
            }
        );
        assert_eq!(
            c.policy("big", Limit::TOKENS),
            Policy::TokenBucket {
                rate: 7,
                burst: 11,
                per_s
            }
        );
        // Disabling the requests limit leaves the token limit alone.
        c.enabled = false;
        assert_eq!(c.policy("t", Limit::REQUESTS), Policy::Unlimited);
        assert!(matches!(
            c.policy("t", Limit::TOKENS),
            Policy::TokenBucket { .. }
        ));
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
            c.policy_with_source("big", Limit::REQUESTS).1,
            PolicySource::Config
        );
        assert_eq!(
            c.policy_with_source("x", Limit::REQUESTS).1,
            PolicySource::Default
        );
        let shared = c.clone();
        c.runtime.replace([(
            ("big".to_string(), Limit::REQUESTS),
            OverrideValue::TokenBucket { rate: 7, burst: 9 },
        )]);
        assert_eq!(
            shared.policy_with_source("big", Limit::REQUESTS),
            (
                Policy::TokenBucket {
                    rate: 7,
                    burst: 9,
                    per_s: 1
                },
                PolicySource::Runtime
            )
        );
    }

    #[test]
    fn runtime_overrides_of_tokens_are_per_minute_and_capped() {
        let c = RateLimitConfig::default();
        c.runtime.replace([(
            ("t".to_string(), Limit::TOKENS),
            OverrideValue::TokenBucket {
                rate: 600,
                burst: 1_000_000_000,
            },
        )]);
        assert_eq!(
            c.policy_with_source("t", Limit::TOKENS),
            (
                Policy::TokenBucket {
                    rate: 600,
                    burst: MAX_TOKEN_BURST,
                    per_s: 60
                },
                PolicySource::Runtime
            )
        );
        // The requests limit of the same tenant is untouched.
        assert_eq!(
            c.policy_with_source("t", Limit::REQUESTS).1,
            PolicySource::Default
        );
    }
}
