//! The `[rate_limit]` and `[token_limit]` tables as one source gives them
//! ([`RateLimitSettings`], [`TokenLimitSettings`]: the file, or the flags that
//! set each block's default rate, burst and switch) and their resolution into
//! the one [`RateLimitConfig`] that answers every quota.

use std::collections::BTreeMap;

use clap::{ArgAction, Args};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::flags::shown;
use crate::limits::{
    RateLimitConfig, TenantOverride, TokenLimitConfig, TokenOverride, DEFAULT_BURST_SIZE,
    DEFAULT_RATE_LIMIT_ENABLED, DEFAULT_REQUESTS_PER_SECOND, DEFAULT_TOKENS_PER_MINUTE,
    DEFAULT_TOKEN_BURST_SIZE,
};
use crate::named::{LimitBlock, NamedLimits};
use crate::runtime::RuntimeLimits;

/// The llmtrace `[rate_limit]` table (the names of llmtrace 0.2.0), or the
/// flags that set its defaults; `None`: not given. Each flag's doc is its
/// `--help` text.
#[derive(Debug, Clone, Default, Deserialize, Args)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// rate_limit.enabled: false allows every check.
    #[arg(
        long = "rate-limit-enabled",
        env = "LLMTRACE_RATE_LIMIT_ENABLED",
        value_name = "BOOL",
        action = ArgAction::Set,
        default_value = shown!(DEFAULT_RATE_LIMIT_ENABLED)
    )]
    pub enabled: Option<bool>,

    /// rate_limit.requests_per_second: refill rate of every bucket, 0 means
    /// unlimited.
    #[arg(
        long,
        env = "LLMTRACE_REQUESTS_PER_SECOND",
        value_name = "N",
        default_value = shown!(DEFAULT_REQUESTS_PER_SECOND)
    )]
    pub requests_per_second: Option<u32>,

    /// rate_limit.burst_size: bucket capacity; a new tenant starts full.
    #[arg(
        long,
        env = "LLMTRACE_BURST_SIZE",
        value_name = "N",
        default_value = shown!(DEFAULT_BURST_SIZE)
    )]
    pub burst_size: Option<u32>,

    /// Accepted for compatibility with llmtrace 0.2.0 configs and ignored
    /// (file only).
    #[arg(skip)]
    pub window_seconds: Option<u64>,

    /// Per-tenant rate and burst, keyed by tenant id (file only).
    #[arg(skip)]
    pub tenant_overrides: Option<BTreeMap<String, TenantOverride>>,
}

/// The `[token_limit]` table, or the flags that set its defaults; `None`:
/// not given.
#[derive(Debug, Clone, Default, Deserialize, Args)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitSettings {
    /// token_limit.tokens_per_minute: refill rate of every tenant's token
    /// bucket (LLM tokens of proxied calls), 0 means unlimited.
    #[arg(
        long,
        env = "LLMTRACE_TOKENS_PER_MINUTE",
        value_name = "N",
        default_value = shown!(DEFAULT_TOKENS_PER_MINUTE)
    )]
    pub tokens_per_minute: Option<u32>,

    /// token_limit.burst_size: capacity of the token bucket (at most
    /// 100000000), also the largest reservation one call takes.
    #[arg(
        id = "token_burst_size",
        long = "token-burst-size",
        env = "LLMTRACE_TOKEN_BURST_SIZE",
        value_name = "N",
        default_value = shown!(DEFAULT_TOKEN_BURST_SIZE)
    )]
    pub burst_size: Option<u32>,

    /// Per-tenant rate and burst, keyed by tenant id (file only).
    #[arg(skip)]
    pub tenant_overrides: Option<BTreeMap<String, TokenOverride>>,
}

impl RateLimitConfig {
    /// Applies the defaults to both tables and validates; the token table
    /// goes to `tokens`, the `[limits.*]` tables to `named`.
    pub fn resolve(
        rate: RateLimitSettings,
        tokens: TokenLimitSettings,
        limits: BTreeMap<String, LimitBlock>,
    ) -> Result<RateLimitConfig, ConfigError> {
        let config = RateLimitConfig {
            enabled: rate.enabled.unwrap_or(DEFAULT_RATE_LIMIT_ENABLED),
            requests_per_second: rate
                .requests_per_second
                .unwrap_or(DEFAULT_REQUESTS_PER_SECOND),
            burst_size: rate.burst_size.unwrap_or(DEFAULT_BURST_SIZE),
            window_seconds: rate.window_seconds,
            tenant_overrides: rate.tenant_overrides.unwrap_or_default(),
            runtime: RuntimeLimits::default(),
            tokens: TokenLimitConfig {
                tokens_per_minute: tokens
                    .tokens_per_minute
                    .unwrap_or(DEFAULT_TOKENS_PER_MINUTE),
                burst_size: tokens.burst_size.unwrap_or(DEFAULT_TOKEN_BURST_SIZE),
                tenant_overrides: tokens.tenant_overrides.unwrap_or_default(),
            },
            named: NamedLimits::resolve(limits)?,
            rls: Default::default(),
        };
        config.validate()?;
        Ok(config)
    }
}
