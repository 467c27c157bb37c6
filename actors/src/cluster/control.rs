//! [`ClusterControl`]: what the admin API steers through gossip — the
//! merged runtime override table (read, publish, adopt what peers publish)
//! and when each member was last heard from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::{ChitchatId, NodeState};
use llmtrace_cluster_config::{Limit, RuntimeLimits};

use crate::cluster::overrides::{self, OverrideEntry, OverrideTable, GOSSIP_PREFIX};

pub(crate) type Chitchat = Arc<tokio::sync::Mutex<chitchat::Chitchat>>;

/// What the admin API needs from membership: the override table (read and
/// publish) and when each member was last heard from. Cheap to clone.
#[derive(Clone)]
pub struct ClusterControl {
    pub(crate) chitchat: Chitchat,
    /// Every override entry known (tombstones included), merged.
    table: Arc<ArcSwap<OverrideTable>>,
    runtime: RuntimeLimits,
    /// Last heartbeat value seen per node id, and when it last changed.
    last_seen: Arc<std::sync::Mutex<HashMap<String, (chitchat::Heartbeat, std::time::Instant)>>>,
}

impl ClusterControl {
    /// Control over the gossip state of `chitchat`; overrides are installed
    /// into `runtime`. Starts the task that tracks when members were last
    /// heard from (every `interval`).
    pub(crate) fn start(chitchat: Chitchat, runtime: RuntimeLimits, interval: Duration) -> Self {
        let control = ClusterControl {
            chitchat,
            table: Arc::new(ArcSwap::from_pointee(OverrideTable::new())),
            runtime,
            last_seen: Arc::default(),
        };
        control.track_last_seen(interval);
        control
    }

    /// The merged override table (tombstones included).
    pub fn overrides(&self) -> Arc<OverrideTable> {
        self.table.load_full()
    }

    /// Publishes an override entry under this node's gossip state and puts
    /// it in force here at once (peers adopt it within a few gossip rounds).
    pub async fn publish_override(&self, tenant: &str, limit: Limit, entry: OverrideEntry) {
        let mut chitchat = self.chitchat.lock().await;
        chitchat
            .self_node_state()
            .set(overrides::gossip_key(tenant, limit), entry.encode());
        let mut table = (**self.table.load()).clone();
        overrides::merge_into(&mut table, (tenant.to_string(), limit), entry);
        overrides::install(&self.runtime, &table);
        self.table.store(Arc::new(table));
    }

    /// Adds entries loaded from Redis at start-up (older ones are ignored).
    pub async fn seed_overrides(&self, loaded: OverrideTable) {
        for ((tenant, limit), entry) in loaded {
            let newer = match self.table.load().get(&(tenant.clone(), limit)) {
                Some(have) => entry.newer_than(have),
                None => true,
            };
            if newer {
                self.publish_override(&tenant, limit, entry).await;
            }
        }
    }

    /// Milliseconds since this node last heard from `node_id` (a new
    /// heartbeat), `None` if never.
    pub fn last_seen_ms(&self, node_id: &str) -> Option<u64> {
        let map = self.last_seen.lock().ok()?;
        map.get(node_id)
            .map(|(_, at)| at.elapsed().as_millis() as u64)
    }

    /// The override entries published by the live members, merged.
    pub(crate) fn published(live: &BTreeMap<ChitchatId, NodeState>) -> OverrideTable {
        let mut table = OverrideTable::new();
        for state in live.values() {
            merge_published(&mut table, state);
        }
        table
    }

    /// Adopts `table`, the override entries published by the live members: merges
    /// this node's own published entries in, republishes the entries it
    /// lacks or holds older (so they outlive the node that set them), and
    /// installs the result.
    pub(crate) async fn adopt_overrides(&self, mut table: OverrideTable) {
        let mut chitchat = self.chitchat.lock().await;
        let own = chitchat.self_node_state();
        let mut mine = OverrideTable::new();
        merge_published(&mut mine, own);
        for (k, e) in &mine {
            overrides::merge_into(&mut table, k.clone(), e.clone());
        }
        for ((tenant, limit), entry) in &table {
            if mine.get(&(tenant.clone(), *limit)) != Some(entry) {
                own.set(overrides::gossip_key(tenant, *limit), entry.encode());
            }
        }
        drop(chitchat);
        if **self.table.load() != table {
            overrides::install(&self.runtime, &table);
            self.table.store(Arc::new(table));
        }
    }

    /// Records when each node's heartbeat last changed, every gossip round.
    fn track_last_seen(&self, interval: Duration) {
        let chitchat = Arc::downgrade(&self.chitchat);
        let last_seen = Arc::clone(&self.last_seen);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(chitchat) = chitchat.upgrade() else {
                    return;
                };
                let chitchat = chitchat.lock().await;
                let now = std::time::Instant::now();
                let Ok(mut map) = last_seen.lock() else {
                    return;
                };
                for (id, state) in chitchat.node_states() {
                    let hb = state.heartbeat();
                    let e = map.entry(id.node_id.to_string()).or_insert((hb, now));
                    if e.0 != hb {
                        *e = (hb, now);
                    }
                }
            }
        });
    }
}

/// Merges the override entries one member publishes into `table`.
fn merge_published(table: &mut OverrideTable, state: &NodeState) {
    overrides::merge_fields(
        table,
        state
            .iter_prefix(GOSSIP_PREFIX)
            .map(|(k, v)| (&k[GOSSIP_PREFIX.len()..], v.value.as_str())),
    );
}
