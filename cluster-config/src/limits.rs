//! The `[rate_limit]` block, with the names of llmtrace 0.2.0 so existing
//! users can paste their config, and the quota a `(tenant, limit)` resolves to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::runtime::RuntimeLimits;
use crate::tenant::validate_tenant_id;

/// A named limit. A bucket is keyed by `(tenant_id, Limit)`; the proxy's
/// token limit becomes a second variant, not a rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// One unit per request (or `cost` units).
    Requests,
}

impl Limit {
    /// Every limit, in a fixed order.
    pub const ALL: [Limit; 1] = [Limit::Requests];

    /// The name used in the API, in metrics and in Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
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
    /// units per second. Both are at least 1.
    Bucket { rate: u32, burst: u32 },
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

/// Per-tenant replacement of the default rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantOverride {
    pub requests_per_second: u32,
    pub burst_size: u32,
}

/// The llmtrace `[rate_limit]` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// `false`: every check is allowed.
    pub enabled: bool,
    /// Refill rate in units per second; 0 means unlimited.
    pub requests_per_second: u32,
    /// Bucket capacity; a new tenant starts full.
    pub burst_size: u32,
    /// Accepted for compatibility with llmtrace 0.2.0 configs and ignored:
    /// the bucket refills continuously, there is no window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    /// Per-tenant rate and burst, keyed by tenant id.
    pub tenant_overrides: BTreeMap<String, TenantOverride>,
    /// Runtime overrides (admin API), consulted before `tenant_overrides`.
    /// Not part of the file; clones share the same table.
    #[serde(skip)]
    pub runtime: RuntimeLimits,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            requests_per_second: 100,
            burst_size: 200,
            window_seconds: None,
            tenant_overrides: BTreeMap::new(),
            runtime: RuntimeLimits::default(),
        }
    }
}

impl RateLimitConfig {
    /// The quota of `tenant` for `limit`.
    #[inline]
    pub fn quota(&self, tenant: &str, limit: Limit) -> Quota {
        self.quota_with_source(tenant, limit).0
    }

    /// The quota of `tenant` for `limit` and where it comes from: a runtime
    /// override, else a configured tenant override, else the default.
    /// Limiting disabled (`enabled = false`) wins over everything.
    pub fn quota_with_source(&self, tenant: &str, limit: Limit) -> (Quota, QuotaSource) {
        if !self.enabled {
            return (Quota::Unlimited, QuotaSource::Default);
        }
        let (rate, burst, source) = if let Some(o) = self.runtime.get(tenant, limit) {
            (o.requests_per_second, o.burst_size, QuotaSource::Runtime)
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
        let quota = if rate == 0 {
            Quota::Unlimited
        } else {
            Quota::Bucket { rate, burst }
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
        Ok(())
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
        RateLimitConfig {
            requests_per_second: rate,
            burst_size: burst,
            ..RateLimitConfig::default()
        }
    }

    #[test]
    fn seed_defaults() {
        let c = RateLimitConfig::default();
        assert!(c.enabled);
        assert_eq!(
            c.quota("t", Limit::Requests),
            Quota::Bucket {
                rate: 100,
                burst: 200
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
                burst: 1000
            }
        );
        assert_eq!(
            c.quota("small", Limit::Requests),
            Quota::Bucket { rate: 1, burst: 2 }
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
            (Quota::Bucket { rate: 7, burst: 9 }, QuotaSource::Runtime)
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
