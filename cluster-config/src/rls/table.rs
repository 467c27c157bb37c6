//! The RLS rules in force on a node, shared by the RLS service (matching)
//! and [`crate::RateLimitConfig::policy`] (the owner of a bucket resolves
//! its policy from the limit's name, as for every limit): one atomic load
//! on the hot path, swapped whole on reload so shards never restart.
//!
//! Two families of limit names:
//! - `rls.<16 hex digits>`: a rule of the files, hashed from its domain and
//!   entry path ([`super::file::rule_limit`]);
//! - `rls.override.<unit>.<n>`: a per-call `RateLimitOverride` of `n`
//!   requests per `unit` (a fixed window, as envoyproxy/ratelimit counts
//!   it). The numbers are in the name, so any owner resolves it without a
//!   table; at most [`MAX_OVERRIDE_LIMITS`] distinct ones per process
//!   (limit names are interned for the life of the process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::rules::{policy_of, Algorithm, RlsRules, Unit};
use crate::limit::Limit;
use crate::limits::Policy;
use crate::named::LimitKind;

/// Most distinct override limits a process interns.
pub const MAX_OVERRIDE_LIMITS: usize = 1024;
const OVERRIDE_PREFIX: &str = "rls.override.";
static OVERRIDES: AtomicUsize = AtomicUsize::new(0);

fn override_name(n: u32, unit: Unit) -> String {
    format!("{OVERRIDE_PREFIX}{}.{n}", unit.as_str())
}

fn parse_override(name: &str) -> Option<(u32, Unit)> {
    let (unit, n) = name.strip_prefix(OVERRIDE_PREFIX)?.split_once('.')?;
    let n: u32 = n.parse().ok()?;
    let unit = Unit::parse(unit)?;
    // One spelling per limit: no leading zeros, no upper case.
    (n >= 1 && override_name(n, unit) == name).then_some((n, unit))
}

/// The limit of an override of `n` (at least 1) requests per `unit`;
/// `None` once [`MAX_OVERRIDE_LIMITS`] distinct ones exist.
pub fn override_limit(n: u32, unit: Unit) -> Option<Limit> {
    let name = override_name(n, unit);
    if let Some(limit) = Limit::find(&name) {
        return Some(limit);
    }
    if n == 0 || OVERRIDES.fetch_add(1, Relaxed) >= MAX_OVERRIDE_LIMITS {
        return None;
    }
    Limit::intern(&name).ok()
}

/// The rules in force; clones share them.
#[derive(Clone, Default)]
pub struct RlsLimits(Arc<ArcSwap<Table>>);

#[derive(Default)]
pub struct Table {
    pub rules: RlsRules,
    by_name: HashMap<&'static str, Limit>,
}

impl RlsLimits {
    /// Puts `rules` in force.
    pub fn replace(&self, rules: RlsRules) {
        let by_name = rules.rules().map(|r| (r.limit.as_str(), r.limit)).collect();
        self.0.store(Arc::new(Table { rules, by_name }));
    }

    /// The rules in force.
    pub fn load(&self) -> Arc<Table> {
        self.0.load_full()
    }

    /// The policy of an RLS limit; `None` when `limit` is not one.
    #[inline]
    pub fn policy(&self, limit: Limit) -> Option<Policy> {
        if !limit.as_str().starts_with("rls.") {
            return None;
        }
        if let Some(rule) = self.0.load().rules.rule(limit) {
            return Some(rule.policy().unwrap_or(Policy::Unlimited));
        }
        parse_override(limit.as_str()).map(|(n, unit)| policy_of(n, unit, Algorithm::FixedWindow))
    }

    /// The kind of an RLS limit.
    pub fn kind(&self, limit: Limit) -> Option<LimitKind> {
        Some(match self.policy(limit)? {
            Policy::TokenBucket { .. } | Policy::Unlimited => LimitKind::TokenBucket,
            _ => LimitKind::Quota,
        })
    }

    /// The RLS limit named `name` (a rule in force, or an override).
    pub fn find(&self, name: &str) -> Option<Limit> {
        if !name.starts_with("rls.") {
            return None;
        }
        if let Some(limit) = self.0.load().by_name.get(name) {
            return Some(*limit);
        }
        let (n, unit) = parse_override(name)?;
        override_limit(n, unit)
    }
}

impl std::fmt::Debug for RlsLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RlsLimits({} rules)",
            self.0.load().rules.rules().count()
        )
    }
}

/// Handles are equal when the rules in force are.
impl PartialEq for RlsLimits {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.load().rules == other.0.load().rules
    }
}

impl Eq for RlsLimits {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::Period;

    #[test]
    fn overrides_resolve_from_their_name_alone() {
        let limit = override_limit(7, Unit::Minute).unwrap();
        assert_eq!(limit.as_str(), "rls.override.minute.7");
        let limits = RlsLimits::default();
        assert_eq!(limits.find("rls.override.minute.7"), Some(limit));
        assert_eq!(
            limits.policy(limit),
            Some(Policy::Quota {
                amount: 7,
                period: Period::Fixed(60)
            })
        );
        for bad in [
            "rls.override.minute.07",
            "rls.override.MINUTE.7",
            "rls.override.minute.0",
            "rls.override.fortnight.7",
            "rls.0123456789abcdef",
        ] {
            assert_eq!(limits.find(bad), None, "{bad}");
        }
        assert_eq!(limits.policy(Limit::REQUESTS), None);
    }
}
