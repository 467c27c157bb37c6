//! Runtime limit overrides across the cluster: how they travel (gossip) and
//! where they persist (Redis).
//!
//! An override of `(tenant, limit)` is an [`OverrideEntry`]: a value (rate,
//! burst) or a deletion, stamped with a version (wall-clock milliseconds at
//! the node that accepted it) and that node's id. Entries merge by "highest
//! `(version, origin)` wins", so every node reaches the same table whatever
//! order it hears them in.
//!
//! - **Gossip.** Every node publishes, under its own chitchat state, the key
//!   `override/{limit}/{tenant}` for every entry it knows, and adopts any
//!   newer entry a peer publishes. The table therefore lives as long as one
//!   node does (the node that accepted a change may leave), and a joining
//!   node learns it in its first gossip rounds. Deletions stay as tombstones
//!   (one short key per tenant ever overridden).
//! - **Redis** (when configured). The node that accepts a change writes it
//!   to the hash `llmtrace:overrides` before answering; every node loads the
//!   hash at start-up. This is what survives a restart of the whole cluster;
//!   without Redis, overrides last while at least one node runs.
//!
//! The merged table is installed into [`RuntimeLimits`], which every quota
//! resolution reads.
//!
//! The runtime entries of the proxy's key table (a key id's team and org)
//! travel the same way, as entries of the reserved limit
//! [`llmtrace_cluster_config::proxy_rules::KEY_TABLE`].

use std::collections::BTreeMap;
use std::time::Duration;

use llmtrace_cluster_config::proxy_rules::{key_table_limit, KeyInfo};
use llmtrace_cluster_config::{
    validate_key, validate_tenant_id, Limit, OverrideValue, RuntimeLimits,
};

use crate::cache::RedisClient;

/// Prefix of the gossip keys.
pub const GOSSIP_PREFIX: &str = "override/";
/// The Redis hash holding every entry (field = gossip key without prefix).
pub const REDIS_KEY: &str = "llmtrace:overrides";

/// One override, or its deletion, with the version that orders changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideEntry {
    /// Milliseconds since the epoch at the accepting node (bumped past the
    /// entry it replaces, so a later change always wins there).
    pub version: u64,
    /// Node id of the accepting node (breaks version ties).
    pub origin: String,
    /// `None` (and no `key`): the override was deleted.
    pub value: Option<OverrideValue>,
    /// A key table entry (under [`key_table_limit`]) instead of numbers.
    pub key: Option<KeyInfo>,
}

impl OverrideEntry {
    /// True when `self` replaces `other`.
    pub fn newer_than(&self, other: &OverrideEntry) -> bool {
        (self.version, self.origin.as_str()) > (other.version, other.origin.as_str())
    }

    /// `version;origin;rate;burst` (a token bucket, as the first version
    /// wrote it), `version;origin;q;amount` (a quota),
    /// `version;origin;c;max` (a concurrency limit),
    /// `version;origin;k;{"team":..,"org":..}` (a key table entry) or
    /// `version;origin;-`.
    pub fn encode(&self) -> String {
        let (v, o) = (self.version, &self.origin);
        if let Some(key) = &self.key {
            let json = serde_json::to_string(key).unwrap_or_default();
            return format!("{v};{o};k;{json}");
        }
        match self.value {
            Some(OverrideValue::TokenBucket { rate, burst }) => format!("{v};{o};{rate};{burst}"),
            Some(OverrideValue::Quota { amount }) => format!("{v};{o};q;{amount}"),
            Some(OverrideValue::Concurrency { max }) => format!("{v};{o};c;{max}"),
            None => format!("{v};{o};-"),
        }
    }

    /// Parses [`OverrideEntry::encode`]'s text; `None` for anything else.
    pub fn decode(text: &str) -> Option<OverrideEntry> {
        let mut head = text.splitn(4, ';');
        if let (Some(version), Some(origin), Some("k"), Some(json)) =
            (head.next(), head.next(), head.next(), head.next())
        {
            validate_tenant_id(origin).ok()?;
            let key: KeyInfo = serde_json::from_str(json).ok()?;
            key.check().ok()?;
            return Some(OverrideEntry {
                version: version.parse().ok()?,
                origin: origin.to_string(),
                value: None,
                key: Some(key),
            });
        }
        let mut parts = text.split(';');
        let version = parts.next()?.parse().ok()?;
        let origin = parts.next()?;
        validate_tenant_id(origin).ok()?;
        let value = match (parts.next()?, parts.next()) {
            ("-", None) => None,
            ("q", Some(amount)) => {
                let value = OverrideValue::Quota {
                    amount: amount.parse().ok()?,
                };
                llmtrace_cluster_config::check_value(value, 1).ok()?;
                Some(value)
            }
            ("c", Some(max)) => {
                let value = OverrideValue::Concurrency {
                    max: max.parse().ok()?,
                };
                llmtrace_cluster_config::check_value(value, 1).ok()?;
                Some(value)
            }
            (rate, Some(burst)) => Some(
                llmtrace_cluster_config::validate_runtime_override(
                    rate.parse().ok()?,
                    burst.parse().ok()?,
                )
                .ok()?,
            ),
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(OverrideEntry {
            version,
            origin: origin.to_string(),
            value,
            key: None,
        })
    }
}

/// Every override known, by `(tenant, limit)`.
pub type OverrideTable = BTreeMap<(String, Limit), OverrideEntry>;

/// `{limit}/{tenant}`: the Redis field, and the gossip key after the prefix.
pub fn field(tenant: &str, limit: Limit) -> String {
    format!("{}/{tenant}", limit.as_str())
}

/// The gossip key of `(tenant, limit)`.
pub fn gossip_key(tenant: &str, limit: Limit) -> String {
    format!("{GOSSIP_PREFIX}{}", field(tenant, limit))
}

/// Parses a field written by [`field`]; only limits this process's
/// configuration knows are accepted.
pub fn parse_field(field: &str) -> Option<(String, Limit)> {
    let (limit, key) = field.split_once('/')?;
    let limit = Limit::find(limit)?;
    validate_key(key).ok()?;
    Some((key.to_string(), limit))
}

/// Adds `entry` to `table` unless the table holds a newer one; true when
/// it was added.
pub fn merge_into(table: &mut OverrideTable, key: (String, Limit), entry: OverrideEntry) -> bool {
    match table.get(&key) {
        Some(have) if !entry.newer_than(have) => false,
        _ => {
            table.insert(key, entry);
            true
        }
    }
}

/// Merges `(field, encoded entry)` pairs (gossip or Redis); malformed ones
/// are skipped.
pub fn merge_fields<'a>(
    table: &mut OverrideTable,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    for (f, v) in pairs {
        if let (Some(key), Some(entry)) = (parse_field(f), OverrideEntry::decode(v)) {
            merge_into(table, key, entry);
        }
    }
}

/// Installs the live entries of `table` (tombstones left out): limit
/// overrides and key table entries.
pub fn install(runtime: &RuntimeLimits, table: &OverrideTable) {
    runtime.replace(
        table
            .iter()
            .filter_map(|(k, e)| e.value.map(|v| (k.clone(), v))),
    );
    let keys = key_table_limit();
    runtime.replace_keys(
        table
            .iter()
            .filter(|((_, l), _)| *l == keys)
            .filter_map(|((id, _), e)| Some((id.clone(), e.key.clone()?))),
    );
}

/// The version for a change of an entry currently at `current`: now, but
/// always past the current one.
pub fn next_version(now_ms: u64, current: Option<&OverrideEntry>) -> u64 {
    now_ms.max(current.map_or(0, |c| c.version + 1))
}

/// Overrides in Redis: the hash [`REDIS_KEY`] (one key, so one slot on a
/// Redis Cluster). Every call is bounded by the timeout and runs on the
/// Redis runtime; errors never contain a password.
#[derive(Clone)]
pub struct RedisOverrideStore {
    client: RedisClient,
    timeout: Duration,
}

impl RedisOverrideStore {
    pub fn new(client: RedisClient, timeout: Duration) -> Self {
        RedisOverrideStore { client, timeout }
    }

    /// Runs `cmd` with the timeout; `what` names it in errors.
    async fn query<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
        what: &'static str,
    ) -> Result<T, String> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        self.client
            .run(async move {
                let mut conn = client.conn().await?;
                tokio::time::timeout(timeout, cmd.query_async::<T>(&mut conn))
                    .await
                    .map_err(|_| client.timed_out())?
                    .map_err(|e| client.failed(e))
            })
            .await
            .map_err(|e| format!("redis {what} failed: {e}"))
    }

    /// Every stored entry, merged.
    pub async fn load(&self) -> Result<OverrideTable, String> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(REDIS_KEY);
        let pairs: Vec<(String, String)> = self.query(cmd, "HGETALL").await?;
        let mut table = OverrideTable::new();
        merge_fields(
            &mut table,
            pairs.iter().map(|(f, v)| (f.as_str(), v.as_str())),
        );
        Ok(table)
    }

    /// Stores one entry (a deletion is stored as a tombstone, so an older
    /// value gossiped by a node that missed the change cannot come back).
    pub async fn save(
        &self,
        tenant: &str,
        limit: Limit,
        entry: &OverrideEntry,
    ) -> Result<(), String> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(REDIS_KEY)
            .arg(field(tenant, limit))
            .arg(entry.encode());
        self.query::<i64>(cmd, "HSET").await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(version: u64, origin: &str, value: Option<(u32, u32)>) -> OverrideEntry {
        OverrideEntry {
            version,
            origin: origin.into(),
            value: value.map(|(rate, burst)| OverrideValue::TokenBucket { rate, burst }),
            key: None,
        }
    }

    #[test]
    fn entries_round_trip_and_refuse_garbage() {
        let quota = OverrideEntry {
            value: Some(OverrideValue::Quota { amount: 1_000 }),
            ..e(8, "n3", None)
        };
        let inflight = OverrideEntry {
            value: Some(OverrideValue::Concurrency { max: 4 }),
            ..e(9, "n3", None)
        };
        let key = OverrideEntry {
            key: Some(KeyInfo {
                team: Some("a;b".into()),
                org: None,
            }),
            ..e(10, "n3", None)
        };
        for entry in [
            e(5, "n1", Some((3, 9))),
            e(7, "n-2", None),
            quota,
            inflight,
            key,
        ] {
            assert_eq!(OverrideEntry::decode(&entry.encode()), Some(entry));
        }
        for bad in [
            "",
            "x;n;1;1",
            "1;;1;1",
            "1;n;0;0",
            "1;n;1",
            "1;n;-;1",
            "1;n;1;1;1",
            "1;n;q;0",
            "1;n;c;0",
            "1;n;q;x",
            "1;n;k;{\"team\":\"a b\"}",
            "1;n;k;{\"who\":\"a\"}",
        ] {
            assert_eq!(OverrideEntry::decode(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_field("requests/a/b"),
            Some(("a/b".to_string(), Limit::REQUESTS))
        );
        assert_eq!(parse_field("nope/a"), None);
        assert_eq!(parse_field("requests/"), None);
    }

    #[test]
    fn merge_keeps_the_newest_whatever_the_order() {
        let k = ("t".to_string(), Limit::REQUESTS);
        let entries = [
            e(5, "a", Some((1, 1))),
            e(6, "a", None),
            e(6, "b", Some((2, 2))),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut table = OverrideTable::new();
            for i in order {
                merge_into(&mut table, k.clone(), entries[i].clone());
            }
            assert_eq!(table[&k], entries[2]);
        }
        let runtime = RuntimeLimits::new();
        let mut table = OverrideTable::new();
        table.insert(k.clone(), e(1, "a", None));
        table.insert(("u".into(), Limit::REQUESTS), e(1, "a", Some((4, 8))));
        install(&runtime, &table);
        assert_eq!(runtime.get("t", Limit::REQUESTS), None);
        assert_eq!(
            runtime.get("u", Limit::REQUESTS),
            Some(OverrideValue::TokenBucket { rate: 4, burst: 8 })
        );
        assert_eq!(next_version(10, Some(&e(50, "a", None))), 51);
        assert_eq!(next_version(100, Some(&e(50, "a", None))), 100);
    }
}
