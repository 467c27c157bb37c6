//! The rules of each RLS domain as a tree of descriptor entries, and how a
//! request's descriptor finds its rule: entry by entry, a child keyed
//! `key_value` first, then a wildcard value (`key_prefix*`), then the key
//! alone (any value); the rule is the one of the node the last entry lands
//! on. A descriptor that lands nowhere, or on a node without a rule, is
//! unlimited. This is envoyproxy/ratelimit's lookup.

use std::collections::HashMap;
use std::sync::Arc;

use crate::limit::Limit;
use crate::limits::Policy;
use crate::period::Period;
use crate::tenant::validate_key;

/// The unit of a rule's `requests_per_unit` (the proto's `RateLimitUnit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's length, as envoyproxy/ratelimit counts it: a week is 7
    /// days, a month 30 days, a year 365 days, every window aligned to the
    /// Unix epoch.
    pub fn secs(self) -> u64 {
        const DAY: u64 = 86_400;
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        }
    }

    /// The name in YAML (any case there) and in override limit names.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The unit named `name`, in any case.
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(name))
    }

    /// The proto enum's value (`SECOND` = 1 ... `YEAR` = 7).
    pub fn proto(self) -> i32 {
        Unit::ALL.iter().position(|u| *u == self).unwrap_or(0) as i32 + 1
    }

    /// The unit of a proto value; `None` for `UNKNOWN` and unknown values.
    pub fn from_proto(value: i32) -> Option<Unit> {
        usize::try_from(value - 1)
            .ok()
            .and_then(|i| Unit::ALL.get(i).copied())
    }
}

/// How a rule counts its `requests_per_unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// N per window of the unit, aligned to the epoch (envoyproxy/ratelimit's
    /// counting; the default).
    #[default]
    FixedWindow,
    /// A token bucket of burst N refilled N per unit (an llmtrace extension:
    /// no burst of 2N across a window boundary).
    TokenBucket,
}

/// One rule: the `rate_limit` of a descriptor node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The limit its buckets count under (`rls.<hash of domain and path>`).
    pub limit: Limit,
    pub domain: String,
    /// The entry path in envoyproxy/ratelimit's notation
    /// (`key_value.key2`).
    pub path: String,
    /// `rate_limit.name`, or the path: the metric label and the name
    /// answered in `current_limit`.
    pub name: String,
    /// `name` was given (only named rules can be replaced).
    pub explicit_name: bool,
    /// `rate_limit.replaces`: in a call that matches this rule, the rules
    /// of these names do not apply.
    pub replaces: Vec<String>,
    pub requests_per_unit: u32,
    pub unit: Option<Unit>,
    pub algorithm: Algorithm,
    /// `charge: always` (an llmtrace extension): hits are usage already
    /// spent (tokens after a response): charged even past the limit, never
    /// refused; the bucket stays refused until it recovers.
    pub charge_always: bool,
    /// `unlimited: true`: the descriptor passes, never counted.
    pub unlimited: bool,
    /// Refusals are reported OK and counted as `shadow_refused`.
    pub shadow_mode: bool,
    pub detailed_metric: bool,
}

impl Rule {
    /// The policy its buckets are held to; `None` for an unlimited rule
    /// and for a rule of 0 requests (refused without a bucket).
    pub fn policy(&self) -> Option<Policy> {
        let unit = self.unit?;
        if self.unlimited || self.requests_per_unit == 0 {
            return None;
        }
        Some(policy_of(self.requests_per_unit, unit, self.algorithm))
    }
}

/// The policy of `n` requests per `unit` counted by `algorithm`.
pub fn policy_of(n: u32, unit: Unit, algorithm: Algorithm) -> Policy {
    match algorithm {
        Algorithm::FixedWindow => Policy::Quota {
            amount: u64::from(n),
            period: Period::Fixed(unit.secs()),
        },
        Algorithm::TokenBucket => Policy::TokenBucket {
            rate: n,
            burst: n,
            per_s: unit.secs() as u32,
        },
    }
}

/// A node of a domain's tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Node {
    /// Children by `key_value` (or `key` for any value).
    pub children: HashMap<String, Node>,
    /// Children whose `key_value` holds a `*`, split on it, in file order.
    pub wildcards: Vec<(String, Vec<String>)>,
    pub rule: Option<Arc<Rule>>,
}

/// Every domain's tree, and the rules by limit id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RlsRules {
    pub domains: HashMap<String, Node>,
    by_limit: Vec<Option<Arc<Rule>>>,
}

fn wildcard_match(parts: &[String], value: &str) -> bool {
    let [first, middle @ .., last] = parts else {
        return false;
    };
    if parts.len() == 1 {
        return first == value;
    }
    if !value.starts_with(first.as_str()) || !value.ends_with(last.as_str()) {
        return false;
    }
    if value.len() < parts.iter().map(String::len).sum::<usize>() {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for part in middle {
        match rest.find(part.as_str()) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

impl RlsRules {
    /// Rules from the domains' trees.
    pub fn new(domains: HashMap<String, Node>) -> Self {
        let mut by_limit: Vec<Option<Arc<Rule>>> = Vec::new();
        fn walk(node: &Node, out: &mut Vec<Option<Arc<Rule>>>) {
            if let Some(rule) = &node.rule {
                let id = rule.limit.id();
                if out.len() <= id {
                    out.resize(id + 1, None);
                }
                out[id] = Some(Arc::clone(rule));
            }
            for child in node.children.values() {
                walk(child, out);
            }
        }
        for node in domains.values() {
            walk(node, &mut by_limit);
        }
        RlsRules { domains, by_limit }
    }

    /// The rule counting under `limit`, if it is one of these rules.
    #[inline]
    pub fn rule(&self, limit: Limit) -> Option<&Arc<Rule>> {
        self.by_limit.get(limit.id())?.as_ref()
    }

    /// Every rule.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.by_limit.iter().flatten()
    }

    /// The rule a descriptor of `domain` with `entries` (key, value) lands
    /// on; `None`: unlimited.
    pub fn find<'a, I>(&self, domain: &str, entries: I) -> Option<&Arc<Rule>>
    where
        I: ExactSizeIterator<Item = (&'a str, &'a str)>,
    {
        let mut node = self.domains.get(domain)?;
        let last = entries.len().checked_sub(1)?;
        let mut exact = String::new();
        for (i, (key, value)) in entries.enumerate() {
            exact.clear();
            exact.push_str(key);
            exact.push('_');
            exact.push_str(value);
            let next = node
                .children
                .get(&exact)
                .or_else(|| {
                    node.wildcards
                        .iter()
                        .find(|(_, parts)| wildcard_match(parts, &exact))
                        .and_then(|(k, _)| node.children.get(k))
                })
                .or_else(|| node.children.get(key))?;
            if i == last {
                return next.rule.as_ref();
            }
            node = next;
        }
        None
    }
}

/// The key a descriptor's bucket counts under: `domain|k1=v1|k2=v2`, or,
/// when that is not a valid key (over 256 bytes, bytes other than visible
/// ASCII, or a `|` or `=` that would make it ambiguous), `h:` and a 128-bit
/// hash of the length-prefixed parts.
pub fn bucket_key<'a>(
    domain: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) -> String {
    let plain = entries
        .clone()
        .all(|(k, v)| !k.contains(['|', '=']) && !v.contains(['|', '=']))
        && !domain.contains(['|', '=']);
    if plain {
        let mut key = domain.to_string();
        for (k, v) in entries.clone() {
            key.push('|');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        if validate_key(&key).is_ok() {
            return key;
        }
    }
    let mut raw = Vec::new();
    for part in std::iter::once(domain).chain(entries.flat_map(|(k, v)| [k, v])) {
        raw.extend_from_slice(&(part.len() as u64).to_le_bytes());
        raw.extend_from_slice(part.as_bytes());
    }
    format!("h:{:032x}", xxhash_rust::xxh3::xxh3_128(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_are_readable_when_unambiguous() {
        let k = |e: &[(&'static str, &'static str)]| bucket_key("d", e.iter().copied());
        assert_eq!(k(&[("a", "1"), ("b", "2")]), "d|a=1|b=2");
        assert!(k(&[("a", "1|b=2")]).starts_with("h:"));
        assert_ne!(k(&[("a", "1|b=2")]), k(&[("a", "1"), ("b", "2|")]));
        assert!(k(&[("a", "two words")]).starts_with("h:"));
        assert!(validate_key(&k(&[("a", "é")])).is_ok());
        let long = "x".repeat(300);
        assert!(validate_key(&bucket_key("d", [("a", long.as_str())].into_iter())).is_ok());
    }

    #[test]
    fn units_match_the_proto_and_envoyproxy_ratelimit() {
        for (i, u) in Unit::ALL.into_iter().enumerate() {
            assert_eq!(u.proto(), i as i32 + 1);
            assert_eq!(Unit::from_proto(u.proto()), Some(u));
            assert_eq!(Unit::parse(&u.as_str().to_uppercase()), Some(u));
        }
        assert_eq!(Unit::from_proto(0), None);
        assert_eq!(Unit::from_proto(8), None);
        assert_eq!(Unit::Month.secs(), 30 * 86_400);
        assert_eq!(Unit::Year.secs(), 365 * 86_400);
    }

    #[test]
    fn wildcards_match_like_envoyproxy_ratelimit() {
        let parts = |p: &str| p.split('*').map(String::from).collect::<Vec<_>>();
        assert!(wildcard_match(&parts("path_/foo*"), "path_/foo/bar"));
        assert!(wildcard_match(&parts("path_/foo*"), "path_/foo"));
        assert!(!wildcard_match(&parts("path_/foo*"), "path_/fo"));
        assert!(wildcard_match(&parts("path_a*b*c"), "path_aXbYc"));
        assert!(!wildcard_match(&parts("path_a*b*c"), "path_aXc"));
        assert!(!wildcard_match(&parts("path_ab*ba"), "path_aba"));
    }
}
