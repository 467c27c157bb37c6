//! Named limits: the `[limits.<name>]` blocks. Each names a [`LimitKind`]
//! with its numbers, and per-key overrides of those numbers:
//!
//! ```toml
//! [limits.rpm]                # token bucket: `rate` per `per`, `burst` held
//! rate = 60
//! per = "1m"
//! burst = 10
//! [limits.rpm.overrides."acme"]
//! rate = 600
//! burst = 100
//!
//! [limits.daily]              # quota: `amount` per UTC-aligned window
//! kind = "quota"
//! amount = 1000
//! period = "1d"
//!
//! [limits.inflight]           # concurrency: `max` leases held at once
//! kind = "concurrency"
//! max = 4
//! lease_ttl = "10m"
//!
//! [limits.new_cap]            # any kind: `shadow = true` decides and
//! rate = 5                    # reports refusals but refuses nothing
//! shadow = true
//! ```
//!
//! A block resolves into a [`LimitDef`]; every definition of a node is in
//! [`NamedLimits`], indexed by the limit's id so a lookup on the hot path is
//! one vector access.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::limit::Limit;
use crate::limits::{Policy, PolicySource, MAX_BURST_TIMES_PER_S};
use crate::period::{format_duration_secs, parse_duration_secs, Period};
use crate::runtime::RuntimeLimits;
use crate::tenant::validate_key;

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// `rate` units per `per`, at most `burst` held; refills continuously.
    TokenBucket,
    /// `amount` units per fixed window aligned to UTC; resets at each
    /// window boundary.
    Quota,
    /// At most `max` leases held at once.
    Concurrency,
}

impl LimitKind {
    pub const ALL: [LimitKind; 3] = [
        LimitKind::TokenBucket,
        LimitKind::Quota,
        LimitKind::Concurrency,
    ];

    /// The name in config and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::TokenBucket => "token_bucket",
            LimitKind::Quota => "quota",
            LimitKind::Concurrency => "concurrency",
        }
    }

    /// The numbers an override of this kind sets.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            LimitKind::TokenBucket => &["rate", "burst"],
            LimitKind::Quota => &["amount"],
            LimitKind::Concurrency => &["max"],
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The numbers of a limit for one key: the block's own, a configured
/// override or a runtime override (the fixed parts — `per`, `period`,
/// `lease_ttl` — stay the limit's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideValue {
    /// `rate` 0 means unlimited.
    TokenBucket {
        rate: u32,
        burst: u32,
    },
    Quota {
        amount: u64,
    },
    Concurrency {
        max: u32,
    },
}

impl OverrideValue {
    pub fn kind(self) -> LimitKind {
        match self {
            OverrideValue::TokenBucket { .. } => LimitKind::TokenBucket,
            OverrideValue::Quota { .. } => LimitKind::Quota,
            OverrideValue::Concurrency { .. } => LimitKind::Concurrency,
        }
    }
}

/// Largest quota `amount` (the level is a signed 64-bit count with room for
/// debt).
pub const MAX_QUOTA_AMOUNT: u64 = 1 << 60;
/// Largest concurrency `max`: a key's leases travel whole in one snapshot
/// and one handoff message, so their number is bounded.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Default `lease_ttl` of a concurrency limit.
pub const DEFAULT_LEASE_TTL_S: u64 = 600;
/// Longest `lease_ttl`.
pub const MAX_LEASE_TTL_S: u64 = 7 * 86_400;

/// Why an override's numbers were refused: names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub field: &'static str,
    pub message: String,
}

fn value_error(field: &'static str, message: impl Into<String>) -> ValueError {
    ValueError {
        field,
        message: message.into(),
    }
}

/// One limit, resolved from its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDef {
    pub limit: Limit,
    pub kind: LimitKind,
    /// Token bucket: the period `rate` is counted over, in seconds.
    pub per_s: u32,
    /// Quota: the window.
    pub period: Period,
    /// Concurrency: how long an unreleased lease is held.
    pub lease_ttl_s: u64,
    /// The block's own numbers.
    pub value: OverrideValue,
    /// Per-key numbers from the file.
    pub overrides: BTreeMap<String, OverrideValue>,
    /// Shadow mode: refusals are decided, counted and reported, but nothing
    /// is refused (a limit rolled out before it is enforced).
    pub shadow: bool,
}

impl LimitDef {
    /// The policy of `value` under this limit; `None` when `value` is of
    /// another kind (a runtime override left from before a config change).
    pub fn resolve(&self, value: OverrideValue) -> Option<Policy> {
        Some(match value {
            OverrideValue::TokenBucket { rate, burst } if self.kind == LimitKind::TokenBucket => {
                if rate == 0 {
                    Policy::Unlimited
                } else {
                    Policy::TokenBucket {
                        rate,
                        burst,
                        per_s: self.per_s,
                    }
                }
            }
            OverrideValue::Quota { amount } if self.kind == LimitKind::Quota => Policy::Quota {
                amount,
                period: self.period,
            },
            OverrideValue::Concurrency { max } if self.kind == LimitKind::Concurrency => {
                Policy::Concurrency {
                    max,
                    lease_ttl_s: self.lease_ttl_s,
                }
            }
            _ => return None,
        })
    }

    /// Checks numbers for this limit (config and runtime overrides alike).
    pub fn check(&self, value: OverrideValue) -> Result<(), ValueError> {
        if value.kind() != self.kind {
            return Err(value_error(
                value.kind().fields()[0],
                format!(
                    "`{}` is a {} limit: its numbers are {}",
                    self.limit,
                    self.kind,
                    self.kind.fields().join(", ")
                ),
            ));
        }
        check_value(value, self.per_s)
    }

    /// The block's `per`, `period` or `lease_ttl`, as written in config.
    pub fn span(&self) -> String {
        match self.kind {
            LimitKind::TokenBucket => format_duration_secs(u64::from(self.per_s)),
            LimitKind::Quota => self.period.to_string(),
            LimitKind::Concurrency => format_duration_secs(self.lease_ttl_s),
        }
    }
}

/// Checks the numbers of a value; `per_s` is the token bucket's period.
pub fn check_value(value: OverrideValue, per_s: u32) -> Result<(), ValueError> {
    match value {
        OverrideValue::TokenBucket { rate, burst } => {
            if rate > 0 && burst == 0 {
                return Err(value_error(
                    "burst",
                    "must be at least 1 when rate > 0 (a bucket of capacity 0 refuses everything)",
                ));
            }
            if u64::from(burst) * u64::from(per_s) > MAX_BURST_TIMES_PER_S {
                return Err(value_error(
                    "burst",
                    format!(
                        "burst × per must be at most {MAX_BURST_TIMES_PER_S} unit-seconds for \
                         exact arithmetic (at most {} with per = {}); use kind = \"quota\" for \
                         large amounts over long periods",
                        MAX_BURST_TIMES_PER_S / u64::from(per_s.max(1)),
                        format_duration_secs(u64::from(per_s)),
                    ),
                ));
            }
        }
        OverrideValue::Quota { amount } => {
            if amount == 0 || amount > MAX_QUOTA_AMOUNT {
                return Err(value_error(
                    "amount",
                    format!("must be between 1 and {MAX_QUOTA_AMOUNT}"),
                ));
            }
        }
        OverrideValue::Concurrency { max } => {
            if max == 0 || max > MAX_CONCURRENCY {
                return Err(value_error(
                    "max",
                    format!("must be between 1 and {MAX_CONCURRENCY}"),
                ));
            }
        }
    }
    Ok(())
}

/// Every `[limits.<name>]` block of a node, by limit id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedLimits {
    defs: Vec<Option<LimitDef>>,
}

impl NamedLimits {
    /// The definition of `limit`, if configured.
    #[inline]
    pub fn get(&self, limit: Limit) -> Option<&LimitDef> {
        self.defs.get(limit.id())?.as_ref()
    }

    /// The limit named `name`, if configured.
    pub fn find(&self, name: &str) -> Option<Limit> {
        self.iter().map(|d| d.limit).find(|l| l.as_str() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &LimitDef> {
        self.defs.iter().flatten()
    }

    /// Adds (or replaces) a definition.
    pub fn insert(&mut self, def: LimitDef) {
        let id = def.limit.id();
        if self.defs.len() <= id {
            self.defs.resize(id + 1, None);
        }
        self.defs[id] = Some(def);
    }

    /// See [`crate::RateLimitConfig::policy_with_source`].
    pub fn policy_with_source(
        &self,
        key: &str,
        limit: Limit,
        runtime: &RuntimeLimits,
    ) -> (Policy, PolicySource) {
        let Some(def) = self.get(limit) else {
            return (Policy::Unlimited, PolicySource::Default);
        };
        if let Some(policy) = runtime.get(key, limit).and_then(|v| def.resolve(v)) {
            return (policy, PolicySource::Runtime);
        }
        if let Some(policy) = def.overrides.get(key).and_then(|v| def.resolve(*v)) {
            return (policy, PolicySource::Config);
        }
        let policy = def.resolve(def.value).unwrap_or(Policy::Unlimited);
        (policy, PolicySource::Default)
    }

    /// Every definition's numbers are valid (resolution validates; this is
    /// for configurations built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for def in self.iter() {
            let at = |field: &str| format!("limits.{}.{field}", def.limit);
            def.check(def.value)
                .map_err(|e| ConfigError::invalid(at(e.field), e.message))?;
            for (key, value) in &def.overrides {
                let at = |field: &str| format!("limits.{}.overrides.\"{key}\".{field}", def.limit);
                validate_key(key).map_err(|e| ConfigError::invalid(at("key"), e.to_string()))?;
                def.check(*value)
                    .map_err(|e| ConfigError::invalid(at(e.field), e.message))?;
            }
        }
        Ok(())
    }

    /// Resolves the `[limits]` table.
    pub fn resolve(blocks: BTreeMap<String, LimitBlock>) -> Result<NamedLimits, ConfigError> {
        let mut named = NamedLimits::default();
        for (name, block) in blocks {
            named.insert(block.resolve(&name)?);
        }
        named.validate()?;
        Ok(named)
    }
}

/// One `[limits.<name>]` block as the file gives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitBlock {
    /// `token_bucket` (the default), `quota` or `concurrency`.
    pub kind: Option<String>,
    pub rate: Option<u32>,
    pub per: Option<String>,
    pub burst: Option<u32>,
    pub amount: Option<u64>,
    pub period: Option<String>,
    pub max: Option<u32>,
    pub lease_ttl: Option<String>,
    /// Decide and report refusals without refusing.
    pub shadow: Option<bool>,
    pub overrides: Option<BTreeMap<String, OverrideBlock>>,
}

/// `[limits.<name>.overrides."<key>"]`: the numbers of one key.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideBlock {
    pub rate: Option<u32>,
    pub burst: Option<u32>,
    pub amount: Option<u64>,
    pub max: Option<u32>,
}

impl LimitBlock {
    fn resolve(self, name: &str) -> Result<LimitDef, ConfigError> {
        let at = |field: &str| format!("limits.{name}.{field}");
        let limit =
            Limit::intern(name).map_err(|e| ConfigError::invalid(at("name"), e.to_string()))?;
        if name == crate::proxy_rules::KEY_TABLE {
            return Err(ConfigError::invalid(
                format!("limits.{name}"),
                "the name is reserved for the proxy's key table",
            ));
        }
        if limit == Limit::REQUESTS || limit == Limit::TOKENS {
            return Err(ConfigError::invalid(
                format!("limits.{name}"),
                format!(
                    "the limit `{name}` is the [{}] block; configure it there",
                    if limit == Limit::REQUESTS {
                        "rate_limit"
                    } else {
                        "token_limit"
                    }
                ),
            ));
        }
        let kind = match self.kind.as_deref() {
            None | Some("token_bucket") => LimitKind::TokenBucket,
            Some("quota") => LimitKind::Quota,
            Some("concurrency") => LimitKind::Concurrency,
            Some(other) => {
                return Err(ConfigError::invalid(
                    at("kind"),
                    format!("unknown kind {other:?}; use token_bucket, quota or concurrency"),
                ))
            }
        };
        let given: [(&str, bool); 7] = [
            ("rate", self.rate.is_some()),
            ("per", self.per.is_some()),
            ("burst", self.burst.is_some()),
            ("amount", self.amount.is_some()),
            ("period", self.period.is_some()),
            ("max", self.max.is_some()),
            ("lease_ttl", self.lease_ttl.is_some()),
        ];
        let allowed: &[&str] = match kind {
            LimitKind::TokenBucket => &["rate", "per", "burst"],
            LimitKind::Quota => &["amount", "period"],
            LimitKind::Concurrency => &["max", "lease_ttl"],
        };
        if let Some((field, _)) = given.iter().find(|(f, set)| *set && !allowed.contains(f)) {
            return Err(ConfigError::invalid(
                at(field),
                format!(
                    "not a setting of a {kind} limit (its settings: {})",
                    allowed.join(", ")
                ),
            ));
        }
        let required = |field: &str, v: Option<u64>| {
            v.ok_or_else(|| {
                ConfigError::invalid(at(field), format!("a {kind} limit needs `{field}`"))
            })
        };
        let mut def = LimitDef {
            limit,
            kind,
            per_s: 1,
            period: Period::Fixed(86_400),
            lease_ttl_s: DEFAULT_LEASE_TTL_S,
            value: OverrideValue::Quota { amount: 1 },
            overrides: BTreeMap::new(),
            shadow: self.shadow.unwrap_or(false),
        };
        match kind {
            LimitKind::TokenBucket => {
                if let Some(per) = &self.per {
                    let secs =
                        parse_duration_secs(per).map_err(|e| ConfigError::invalid(at("per"), e))?;
                    def.per_s = u32::try_from(secs)
                        .map_err(|_| ConfigError::invalid(at("per"), "too long"))?;
                }
                let rate = required("rate", self.rate.map(u64::from))? as u32;
                // Without a burst, a bucket holds one period's worth.
                let burst = self.burst.unwrap_or(rate);
                def.value = OverrideValue::TokenBucket { rate, burst };
            }
            LimitKind::Quota => {
                let period = self.period.as_deref().ok_or_else(|| {
                    ConfigError::invalid(at("period"), "a quota limit needs `period`")
                })?;
                def.period = period
                    .parse()
                    .map_err(|e: String| ConfigError::invalid(at("period"), e))?;
                def.value = OverrideValue::Quota {
                    amount: required("amount", self.amount)?,
                };
            }
            LimitKind::Concurrency => {
                if let Some(ttl) = &self.lease_ttl {
                    let secs = parse_duration_secs(ttl)
                        .map_err(|e| ConfigError::invalid(at("lease_ttl"), e))?;
                    if secs > MAX_LEASE_TTL_S {
                        return Err(ConfigError::invalid(at("lease_ttl"), "must be at most 7d"));
                    }
                    def.lease_ttl_s = secs;
                }
                def.value = OverrideValue::Concurrency {
                    max: required("max", self.max.map(u64::from))? as u32,
                };
            }
        }
        for (key, o) in self.overrides.unwrap_or_default() {
            let at = |field: &str| format!("limits.{name}.overrides.\"{key}\".{field}");
            let value = o.resolve(def.value).map_err(|field| {
                ConfigError::invalid(
                    at(field),
                    format!(
                        "not a number of a {kind} limit (its numbers: {})",
                        kind.fields().join(", ")
                    ),
                )
            })?;
            def.overrides.insert(key, value);
        }
        Ok(def)
    }
}

impl OverrideBlock {
    /// The override's numbers over `base` (a number left out keeps the
    /// limit's); `Err(field)` for a number of another kind.
    fn resolve(self, base: OverrideValue) -> Result<OverrideValue, &'static str> {
        let foreign = match base {
            OverrideValue::TokenBucket { .. } => [
                ("amount", self.amount.is_some()),
                ("max", self.max.is_some()),
            ],
            OverrideValue::Quota { .. } => {
                [("rate", self.rate.is_some()), ("max", self.max.is_some())]
            }
            OverrideValue::Concurrency { .. } => [
                ("rate", self.rate.is_some()),
                ("amount", self.amount.is_some()),
            ],
        };
        if let Some((field, _)) = foreign.iter().find(|(_, set)| *set) {
            return Err(field);
        }
        if self.burst.is_some() && !matches!(base, OverrideValue::TokenBucket { .. }) {
            return Err("burst");
        }
        Ok(match base {
            OverrideValue::TokenBucket { rate, burst } => OverrideValue::TokenBucket {
                rate: self.rate.unwrap_or(rate),
                burst: self.burst.unwrap_or(burst),
            },
            OverrideValue::Quota { amount } => OverrideValue::Quota {
                amount: self.amount.unwrap_or(amount),
            },
            OverrideValue::Concurrency { max } => OverrideValue::Concurrency {
                max: self.max.unwrap_or(max),
            },
        })
    }
}

#[cfg(test)]
mod tests;
