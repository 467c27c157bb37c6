//! Runtime limit overrides: the numbers of one key under one limit, set
//! through the admin API while the node runs; and the runtime part of the
//! proxy's key table (a key id's team and org), which travels with them. They take precedence over the
//! configuration (defaults and configured overrides) and are read on every
//! policy resolution, so the table is an immutable map swapped whole on change
//! (one atomic load on the hot path, no lock).
//!
//! This type only holds the table in force on this node; propagation between
//! nodes (gossip) and persistence (Redis) live in `llmtrace-actors`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::limit::Limit;
use crate::named::OverrideValue;
use crate::proxy_rules::KeyInfo;

/// Largest `requests_per_second` or `burst_size` a runtime override may set
/// (a billion units: far above any real tenant, and small enough that the
/// bucket math in nano-units cannot overflow).
pub const MAX_RUNTIME_VALUE: u64 = 1_000_000_000;

type Table = HashMap<String, Vec<(Limit, OverrideValue)>>;

type KeyTable = HashMap<String, KeyInfo>;

/// The runtime overrides in force, and the runtime key table. Cloning gives
/// another handle to the same tables (the limiter, the shards, the proxy
/// and the admin API share one).
#[derive(Clone, Default)]
pub struct RuntimeLimits(Arc<ArcSwap<Table>>, Arc<ArcSwap<KeyTable>>);

impl RuntimeLimits {
    pub fn new() -> Self {
        Self::default()
    }

    /// The override of `(key, limit)`, if any.
    #[inline]
    pub fn get(&self, tenant: &str, limit: Limit) -> Option<OverrideValue> {
        let table = self.0.load();
        if table.is_empty() {
            return None;
        }
        table
            .get(tenant)?
            .iter()
            .find(|(l, _)| *l == limit)
            .map(|(_, o)| *o)
    }

    /// Replaces the whole table.
    pub fn replace(&self, entries: impl IntoIterator<Item = ((String, Limit), OverrideValue)>) {
        let mut table = Table::new();
        for ((tenant, limit), o) in entries {
            let v = table.entry(tenant).or_default();
            v.retain(|(l, _)| *l != limit);
            v.push((limit, o));
        }
        self.0.store(Arc::new(table));
    }

    /// Every override, sorted by tenant then limit.
    pub fn entries(&self) -> BTreeMap<(String, Limit), OverrideValue> {
        let table = self.0.load();
        table
            .iter()
            .flat_map(|(t, v)| v.iter().map(move |(l, o)| ((t.clone(), *l), *o)))
            .collect()
    }

    /// The team and org set at runtime for a proxy key id, if any.
    pub fn key_info(&self, key_id: &str) -> Option<KeyInfo> {
        let keys = self.1.load();
        if keys.is_empty() {
            return None;
        }
        keys.get(key_id).cloned()
    }

    /// Replaces the whole runtime key table.
    pub fn replace_keys(&self, entries: impl IntoIterator<Item = (String, KeyInfo)>) {
        self.1.store(Arc::new(entries.into_iter().collect()));
    }

    /// Every runtime key table entry, sorted by key id.
    pub fn key_entries(&self) -> BTreeMap<String, KeyInfo> {
        let keys = self.1.load();
        keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.0.load().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }
}

impl PartialEq for RuntimeLimits {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries() && self.key_entries() == other.key_entries()
    }
}

impl Eq for RuntimeLimits {}

impl fmt::Debug for RuntimeLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.entries()).finish()
    }
}

/// Why a runtime override value was refused: names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideError {
    pub field: &'static str,
    pub message: String,
}

/// Validates a runtime override of a token bucket given in the names of the
/// `[rate_limit]` block. `requests_per_second` 0 means unlimited;
/// `burst_size` must be at least 1.
pub fn validate_runtime_override(
    requests_per_second: u64,
    burst_size: u64,
) -> Result<OverrideValue, OverrideError> {
    if requests_per_second > MAX_RUNTIME_VALUE {
        return Err(OverrideError {
            field: "requests_per_second",
            message: format!("`requests_per_second` must be at most {MAX_RUNTIME_VALUE}"),
        });
    }
    if burst_size == 0 {
        return Err(OverrideError {
            field: "burst_size",
            message: "`burst_size` must be at least 1 (a bucket of capacity 0 refuses everything)"
                .into(),
        });
    }
    if burst_size > MAX_RUNTIME_VALUE {
        return Err(OverrideError {
            field: "burst_size",
            message: format!("`burst_size` must be at most {MAX_RUNTIME_VALUE}"),
        });
    }
    Ok(OverrideValue::TokenBucket {
        rate: requests_per_second as u32,
        burst: burst_size as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(rate: u32, burst: u32) -> OverrideValue {
        OverrideValue::TokenBucket { rate, burst }
    }

    #[test]
    fn replace_and_get() {
        let r = RuntimeLimits::new();
        assert_eq!(r.get("a", Limit::REQUESTS), None);
        let shared = r.clone();
        r.replace([(("a".to_string(), Limit::REQUESTS), o(5, 10))]);
        assert_eq!(shared.get("a", Limit::REQUESTS), Some(o(5, 10)));
        assert_eq!(shared.get("b", Limit::REQUESTS), None);
        assert_eq!(shared.len(), 1);
        r.replace([]);
        assert!(shared.is_empty());
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(validate_runtime_override(5, 10), Ok(o(5, 10)));
        assert_eq!(validate_runtime_override(0, 1), Ok(o(0, 1)));
        assert_eq!(
            validate_runtime_override(5, 0).unwrap_err().field,
            "burst_size"
        );
        assert_eq!(
            validate_runtime_override(MAX_RUNTIME_VALUE + 1, 1)
                .unwrap_err()
                .field,
            "requests_per_second"
        );
        assert_eq!(
            validate_runtime_override(1, u64::MAX).unwrap_err().field,
            "burst_size"
        );
    }
}
