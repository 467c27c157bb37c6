//! Noticing that Redis lost the snapshots (`FLUSHALL`, a server restarted
//! empty, a Sentinel failover to a replica that lagged): the node keeps
//! marker keys of its own in Redis and checks every [`CHECK_EVERY`] that they
//! are still there. When one vanished (or the master changed), the loss
//! epoch goes up; shards see it on their next snapshot tick and rewrite
//! every resident bucket that is not full, so a drained tenant stays drained
//! even if the node dies afterwards.
//!
//! In cluster mode the markers spread over the slot space (one every
//! [`CLUSTER_MARKER_SPACING`] slots), so any master that owns a range at
//! least that wide holds one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use redis::cluster_routing::Slot;
use tracing::{info, warn};

use super::redis_client::RedisClient;

/// How often the markers are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a marker outlives its node's last check (markers of nodes gone
/// for good disappear on their own).
pub const MARKER_TTL_MS: u64 = 600_000;
/// Slots between two markers in cluster mode (16384 / 128 markers).
pub const CLUSTER_MARKER_SPACING: u16 = 128;
const SLOTS: u16 = 16384;

/// The marker keys of `node_id`: one, or one every
/// [`CLUSTER_MARKER_SPACING`] slots for a cluster.
pub fn marker_keys(node_id: &str, cluster: bool) -> Vec<String> {
    if !cluster {
        return vec![format!("llmtrace:marker:{node_id}")];
    }
    let mut wanted: HashSet<Slot> = (0..SLOTS / CLUSTER_MARKER_SPACING)
        .filter_map(|i| Slot::new(i * CLUSTER_MARKER_SPACING))
        .collect();
    let mut keys = Vec::with_capacity(wanted.len());
    // About 16384 x ln(128) tags to try; the bound only guards the loop.
    for n in 0..10_000_000u32 {
        if wanted.is_empty() {
            break;
        }
        let tag = format!("m{n}");
        if wanted.remove(&Slot::for_key(&tag)) {
            keys.push(format!("llmtrace:marker:{{{tag}}}:{node_id}"));
        }
    }
    keys
}

/// The loss epoch and the task that keeps it.
pub(super) struct LossWatch {
    epoch: Arc<AtomicU64>,
}

impl LossWatch {
    /// Starts checking the markers of `node_id` on the Redis runtime.
    pub(super) fn start(client: &RedisClient, node_id: &str) -> Self {
        let epoch = Arc::new(AtomicU64::new(0));
        let keys = marker_keys(node_id, client.is_cluster());
        let (c, e) = (client.clone(), Arc::clone(&epoch));
        client.spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut first = true;
            loop {
                tick.tick().await;
                match check(&c, &keys).await {
                    Ok(false) => {}
                    Ok(true) if first => {
                        info!("redis markers written");
                        e.fetch_add(1, Relaxed);
                    }
                    Ok(true) => {
                        warn!("redis lost data (a marker key vanished); rewriting every resident bucket");
                        e.fetch_add(1, Relaxed);
                    }
                    // Redis unreachable: the next check that succeeds tells.
                    Err(_) => continue,
                }
                first = false;
            }
        });
        LossWatch { epoch }
    }

    /// Goes up each time Redis may have lost snapshots.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Relaxed)
    }
}

/// Refreshes every marker; recreates the missing ones. `Ok(true)`: some
/// were missing (and are back).
async fn check(client: &RedisClient, keys: &[String]) -> Result<bool, ()> {
    let timeout = client.timeout();
    let conn = client.conn().await.map_err(|_| ())?;
    let refresh = keys.iter().map(|k| {
        let mut conn = conn.clone();
        let key = k.clone();
        async move {
            let mut cmd = redis::cmd("PEXPIRE");
            cmd.arg(&key).arg(MARKER_TTL_MS);
            let present = tokio::time::timeout(timeout, cmd.query_async::<i64>(&mut conn))
                .await
                .map_err(|_| client.timed_out())?
                .map_err(|e| client.failed(e))?;
            if present == 1 {
                return Ok(false);
            }
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(1).arg("PX").arg(MARKER_TTL_MS);
            tokio::time::timeout(timeout, set.query_async::<()>(&mut conn))
                .await
                .map_err(|_| client.timed_out())?
                .map_err(|e| client.failed(e))?;
            Ok::<bool, super::CacheError>(true)
        }
    });
    let results = futures_util::future::join_all(refresh).await;
    // A marker recreated counts even if another check failed: the next
    // check would find it present and miss the loss.
    if results.iter().any(|r| matches!(r, Ok(true))) {
        return Ok(true);
    }
    results
        .into_iter()
        .try_fold(false, |_, r| r.map_err(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_markers_cover_the_slot_space_evenly() {
        let keys = marker_keys("n1", true);
        assert_eq!(keys.len(), usize::from(SLOTS / CLUSTER_MARKER_SPACING));
        let slots: HashSet<Slot> = keys.iter().map(Slot::for_key).collect();
        for i in 0..SLOTS / CLUSTER_MARKER_SPACING {
            let slot = Slot::new(i * CLUSTER_MARKER_SPACING).unwrap();
            assert!(slots.contains(&slot), "no marker in slot {slot:?}");
        }
        assert_eq!(marker_keys("n1", false), ["llmtrace:marker:n1"]);
    }
}
