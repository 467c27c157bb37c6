//! Operator requests a shard answers for the admin API: the state of one
//! bucket ([`Inspect`]) and a refill ([`Reset`]). Neither takes units.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;

use super::{ShardActor, ShardState};
use crate::cache::{CacheError, SnapshotWrite};
use crate::core::bucket::BucketQuota;
use crate::core::held::Held;
use crate::core::key::BucketKey;

/// What an operator sees of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketReport {
    /// Level now, in nano-units (whole units: `level / NANOS`), whatever
    /// the limit's period (a per-minute bucket's finer sub-units are scaled
    /// down); a bucket in debt reads 0.
    pub level: u64,
    /// Time until the bucket is full again.
    pub full_in_ns: u64,
    /// How far the snapshot in the cache layer lags behind this state:
    /// 0 when it holds it, the age of the shard's oldest unwritten change
    /// when the bucket changed since; `None` when there is no snapshot
    /// (no Redis, or a full bucket never written).
    pub snapshot_age_ns: Option<u64>,
    /// The bucket is in this node's memory (else: read from its snapshot,
    /// or full).
    pub resident: bool,
}

/// Reports the bucket `key` under `quota` without changing it. A bucket not
/// in memory is read from the cache layer (read only: no handoff pull, no
/// restore into memory).
#[derive(Debug, Message)]
#[rtype(result = "Result<BucketReport, CacheError>")]
pub struct Inspect {
    pub key: BucketKey,
    pub quota: BucketQuota,
}

/// Refills the bucket `key`: drops it from memory and, with write-behind,
/// writes a full snapshot before answering (so a restore cannot bring the
/// old level back).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), CacheError>")]
pub struct Reset {
    pub key: BucketKey,
    pub quota: BucketQuota,
}

fn report(
    state: &Held,
    quota: BucketQuota,
    now: u64,
    age: Option<u64>,
    resident: bool,
) -> BucketReport {
    BucketReport {
        level: state.free_nanos(quota, now),
        full_in_ns: state.time_to_full_ns(quota, now),
        snapshot_age_ns: age,
        resident,
    }
}

impl ShardState {
    pub(super) fn inspect(
        &mut self,
        msg: Inspect,
        _: &mut Context<ShardActor>,
    ) -> ResponseActFuture<ShardActor, Result<BucketReport, CacheError>> {
        let now = self.clock.now_ns();
        if let Some(slot) = self.buckets.get(&msg.key) {
            let age = if !self.timing.write_behind {
                None
            } else if slot.dirty() {
                Some(now.saturating_sub(self.oldest_dirty_ns.unwrap_or(now)))
            } else {
                Some(0)
            };
            let r = report(&slot.held(), msg.quota, now, age, true);
            return Box::pin(fut::ready(Ok(r)));
        }
        if let Some(aside) = self.aside.get(&msg.key) {
            // Set aside at a fence lapse: what this node last knew of it.
            let r = report(aside, msg.quota, now, None, false);
            return Box::pin(fut::ready(Ok(r)));
        }
        let full = Held::full(msg.quota, now);
        if !self.timing.write_behind {
            return Box::pin(fut::ready(Ok(report(&full, msg.quota, now, None, false))));
        }
        let restore = self.cache.restore(msg.key);
        Box::pin(fut::wrap_future::<_, ShardActor>(restore).map(
            move |res, act: &mut ShardActor, _| {
                let act = act.lock();
                let now = act.clock.now_ns();
                // As a check would: a snapshot that cannot be read (Redis
                // down) leaves the bucket full.
                Ok(match res {
                    Ok(Some(state)) => report(&state, msg.quota, now, Some(0), false),
                    Ok(None) | Err(_) => report(&full, msg.quota, now, None, false),
                })
            },
        ))
    }
}

impl ShardState {
    pub(super) fn reset(
        &mut self,
        msg: Reset,
        _: &mut Context<ShardActor>,
    ) -> ResponseActFuture<ShardActor, Result<(), CacheError>> {
        let now = self.clock.now_ns();
        self.outbox.remove(&msg.key);
        self.aside.remove(&msg.key);
        // Token leases may be out: full but for what they may still spend.
        let state = match self.reset_leased(&msg.key, msg.quota) {
            Some(state) => {
                let slot = self
                    .buckets
                    .get_mut(&msg.key)
                    .expect("leased buckets are resident");
                slot.with_held(|h| *h = state.clone());
                self.mark_dirty(&msg.key, now);
                state
            }
            None => {
                self.evict(&msg.key);
                Held::full(msg.quota, now)
            }
        };
        if !self.timing.write_behind {
            return Box::pin(fut::ready(Ok(())));
        }
        let write = SnapshotWrite::new(msg.key, state, msg.quota, now);
        let store = self.cache.store(Arc::new(vec![write]));
        Box::pin(
            fut::wrap_future::<_, ShardActor>(store).map(|res, act: &mut ShardActor, _| {
                let act = act.lock();
                match &res {
                    Ok(()) => {
                        act.stats().snapshot_writes.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        act.stats().snapshot_errors.fetch_add(1, Relaxed);
                    }
                }
                res
            }),
        )
    }
}
