//! A shard: a map of buckets ([`ShardState`]) and everything that touches
//! their state — checks, restores of unknown keys from the cache layer,
//! write-behind snapshots, and dropping full buckets.
//!
//! A key always maps to the same shard (see [`crate::core::key`]), and the
//! shard's state sits behind one lock, so every check of a bucket is
//! serialised there. A check of a bucket in memory is decided on the thread
//! that asks ([`ShardState::decide_now`]: a lock taken without waiting, no
//! message, no hop to another thread); everything else — restores, writes,
//! handoffs, timers, and any check that needs one of them — goes through the
//! shard's actor ([`ShardActor`]), which runs on an arbiter (thread) and takes
//! the same lock for each message.
//!
//! Snapshot bookkeeping: a bucket is *dirty* when a check took units since its
//! last snapshot. Each dirty key sits once in `dirty` (the flag in the slot
//! dedups it), so the dirty set is bounded by the number of resident buckets,
//! whatever happens to the cache layer. Every snapshot interval the dirty set
//! is written in one batch; a failed batch is re-marked dirty and retried with
//! exponential backoff (up to [`MAX_BACKOFF`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use llmtrace_cluster_config::RateLimitConfig;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::cache::{CacheError, CacheLayer, SnapshotWrite};
use crate::core::bucket::{BucketQuota, Decision, Op};
use crate::core::clock::Clock;
use crate::core::fence::Fence;
use crate::core::held::Held;
use crate::core::key::BucketKey;
use crate::metrics::{Metrics, ShardStats};

mod handoff;
pub use self::handoff::{HandoffSource, Install, OwnerOf, TakeAll, TakeBucket};
mod admin;
pub use self::admin::{BucketReport, Inspect, Reset};
mod snapshots;
pub use self::snapshots::FlushNow;
mod fencing;
pub use self::fencing::Serve;
mod slot;
use self::slot::Slot;
mod token_leases;
pub use self::token_leases::{Grant, GrantTokens, ReturnTokens};
mod actor;
pub use self::actor::{lock, try_lock, ShardActor};

/// Longest wait between retries of a failed snapshot batch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Minimum time between two warnings about the cache layer, per shard.
const WARN_EVERY_NS: u64 = 10_000_000_000;

/// What ties a node's shards to the cluster's ownership of keys: where a
/// moved bucket comes from, and the fence decisions pass. The default (no
/// cluster) pulls nothing and never fences.
#[derive(Clone, Default)]
pub struct Ownership {
    pub handoff: Option<Arc<dyn HandoffSource>>,
    pub fence: Arc<Fence>,
}

/// Timing of a shard's background work.
#[derive(Debug, Clone, Copy)]
pub struct ShardTiming {
    /// Write changed buckets to the cache layer. Off when the cache layer is
    /// the node's own memory: the shard map already is that copy, and a crash
    /// would lose both. Off must mean that no snapshot can exist anywhere: a
    /// key not in memory then starts full without asking the cache layer
    /// ([`ShardState::decide_now`]).
    pub write_behind: bool,
    /// Write-through: an admitting check is answered only once the batch
    /// holding its new state was acknowledged by the cache layer (group
    /// commit: checks arriving while a batch is in flight share the next).
    /// Needs `write_behind`.
    pub write_through: bool,
    /// Write-behind period.
    pub snapshot_interval: Duration,
    /// How often full buckets are dropped from memory.
    pub sweep_interval: Duration,
    /// Token leases are on: how long after a bucket's last stored state
    /// leases its previous owner granted may still be spent (lease
    /// lifetime and margin). Zero: token leases are off.
    pub token_lease_horizon: Duration,
}

impl Default for ShardTiming {
    fn default() -> Self {
        ShardTiming {
            write_behind: true,
            write_through: false,
            snapshot_interval: Duration::from_millis(100),
            sweep_interval: Duration::from_secs(1),
            token_lease_horizon: Duration::ZERO,
        }
    }
}

/// Apply `op` with `cost` units (take, refund, charge) to the bucket `key`
/// under `quota`. `Err(Unserved::Moved)` when the bucket was handed to
/// another node moments ago: ask that node.
#[derive(Debug, Message)]
#[rtype(result = "Result<Decision, Unserved>")]
pub struct Check {
    pub key: BucketKey,
    pub quota: BucketQuota,
    pub op: Op,
    pub cost: u64,
    /// On what ground this shard decides it.
    pub serve: Serve,
}

/// Drop full buckets now (tests; otherwise done every sweep interval).
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct SweepNow;

/// The bucket was handed to node `to` moments ago; the check's tenant is
/// given back so the caller can send it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub to: Arc<str>,
    pub tenant: Box<str>,
}

/// Why a shard did not decide a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unserved {
    /// The bucket lives on another node now.
    Moved(Moved),
    /// Write-through: the new state could not be written to the cache layer,
    /// so the check is not admitted. The units stay taken (fail closed).
    NotPersisted,
    /// The node's fence is closed (its view of the cluster is stale): no
    /// decision now. The check's tenant is given back.
    Fenced(Box<str>),
}

/// How long a shard refuses to serve a key it handed over (views converge
/// in about a second; a check arriving meanwhile is sent to the new owner).
pub const TOMBSTONE_TTL_NS: u64 = 10_000_000_000;
/// How long a shard remembers where it handed a key after the tombstone
/// lapsed: if the key comes back to it, that node is asked for the bucket.
pub const HANDED_HINT_NS: u64 = 30_000_000_000;

/// Most tombstones a shard keeps before it stops recording those of keys it
/// was asked for without holding them (see [`handoff`]).
pub const MAX_UNHELD_TOMBSTONES: usize = 16_384;

type Reply = oneshot::Sender<Result<Decision, Unserved>>;

struct Waiter {
    quota: BucketQuota,
    op: Op,
    cost: u64,
    reply: Reply,
    /// The fence epoch when the check arrived.
    epoch: u64,
}

/// One shard of a node's buckets.
pub struct ShardState {
    /// Index of this shard, for metrics and logs.
    id: usize,
    /// The buckets this shard owns; full buckets are absent. Hashed with
    /// foldhash seeded at random per map (keys come from clients): every
    /// check looks its key up, and SipHash took twice the instructions.
    buckets: HashMap<BucketKey, Slot, foldhash::fast::RandomState>,
    /// Keys changed since their last snapshot, each at most once.
    dirty: Vec<BucketKey>,
    /// When the oldest entry of `dirty` became dirty.
    oldest_dirty_ns: Option<u64>,
    /// Keys whose snapshot is being restored, with the checks waiting on it.
    pending: HashMap<BucketKey, Vec<Waiter>>,
    /// Quotas, to tell whether a resident bucket is full.
    limits: Arc<RateLimitConfig>,
    cache: Arc<dyn CacheLayer>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    timing: ShardTiming,
    /// A snapshot batch is being written; the next waits for it.
    flush_in_flight: bool,
    /// After a failed batch: no new batch before this instant.
    retry_at_ns: u64,
    backoff: Duration,
    last_warn_ns: u64,
    /// Where the last dirty buckets go when the shard stops with its thread.
    on_stop: Option<std::sync::mpsc::Sender<Vec<SnapshotWrite>>>,
    /// Keys handed to another node, with that node and when to forget it.
    tombstones: HashMap<BucketKey, (Arc<str>, u64)>,
    /// Fetches a moved bucket from its previous owner before the cache layer.
    handoff: Option<Arc<dyn HandoffSource>>,
    /// Buckets a leaving node is pushing to their new owners; a pull that
    /// overtakes the push is answered from here.
    outbox: HashMap<BucketKey, Held>,
    /// Write-through: admitted checks whose state is in no batch yet.
    durable_waiting: Vec<(Decision, Reply)>,
    /// Set once every bucket was given up (the node leaves): where keys
    /// this shard does not hold are served now.
    handed_over: Option<OwnerOf>,
    /// The cache layer's loss epoch when this shard last rewrote its
    /// buckets (see `CacheLayer::loss_epoch`).
    loss_epoch: u64,
    /// Decisions pass this gate ([`fencing`]).
    fence: Arc<Fence>,
    /// The fence epoch this shard's resident buckets belong to.
    fence_epoch: u64,
    /// Buckets set aside at a fence lapse, until their next check.
    aside: HashMap<BucketKey, Held>,
    /// Token leases granted from resident buckets, and buckets that
    /// arrived while leases of their previous owner may be out.
    token_leases: HashMap<BucketKey, crate::core::token_lease::OwnerLeases>,
    /// Id of the next token lease (from the clock: ids of a restarted
    /// shard do not repeat its previous ones).
    next_lease_id: u64,
    /// The actor stopped (with its thread): checks go to it and fail.
    stopped: bool,
}

impl ShardState {
    pub fn new(
        id: usize,
        limits: Arc<RateLimitConfig>,
        cache: Arc<dyn CacheLayer>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        timing: ShardTiming,
    ) -> Self {
        let next_lease_id = clock.now_ns();
        ShardState {
            id,
            buckets: HashMap::default(),
            dirty: Vec::new(),
            oldest_dirty_ns: None,
            pending: HashMap::new(),
            limits,
            cache,
            clock,
            metrics,
            timing,
            flush_in_flight: false,
            retry_at_ns: 0,
            backoff: Duration::ZERO,
            last_warn_ns: 0,
            on_stop: None,
            tombstones: HashMap::new(),
            handoff: None,
            outbox: HashMap::new(),
            durable_waiting: Vec::new(),
            handed_over: None,
            loss_epoch: 0,
            fence: Arc::default(),
            fence_epoch: 0,
            aside: HashMap::new(),
            token_leases: HashMap::new(),
            next_lease_id,
            stopped: false,
        }
    }

    /// Pulls moved buckets from their previous owner through `source`.
    pub fn handoff(mut self, source: Option<Arc<dyn HandoffSource>>) -> Self {
        self.handoff = source;
        self
    }

    /// Hands the dirty buckets to `tx` when the actor stops (shards hosted
    /// on HTTP workers stop with them, before a final flush could reach them).
    pub fn on_stop(mut self, tx: Option<std::sync::mpsc::Sender<Vec<SnapshotWrite>>>) -> Self {
        self.on_stop = tx;
        self
    }

    fn stats(&self) -> &ShardStats {
        &self.metrics.shards[self.id]
    }

    fn warn_throttled(&mut self, now: u64, what: &str, err: &CacheError) {
        if self.last_warn_ns == 0 || now.saturating_sub(self.last_warn_ns) >= WARN_EVERY_NS {
            self.last_warn_ns = now;
            warn!(shard = self.id, cache = self.cache.name(), error = %err, "{what}");
        }
    }

    /// Moves the leases-held gauge of `key`'s limit by `delta`.
    pub(super) fn count_leases(&self, key: &BucketKey, delta: i64) {
        if delta != 0 {
            if let Some(held) = self.metrics.shards[self.id].leases.get(key.limit.id()) {
                held.fetch_add(delta, Relaxed);
            }
        }
    }

    /// Removes a resident bucket with its bookkeeping (resident and dirty
    /// counts, leases gauge, dirty list); answers it if it was resident.
    fn evict(&mut self, key: &BucketKey) -> Option<Slot> {
        let slot = self.buckets.remove(key)?;
        self.token_leases.remove(key);
        let now = self.clock.now_ns();
        self.count_leases(key, -(slot.leases(now) as i64));
        let stats = &self.metrics.shards[self.id];
        stats.resident.fetch_sub(1, Relaxed);
        if slot.dirty() {
            stats.dirty.fetch_sub(1, Relaxed);
            self.dirty.retain(|k| k != key);
            if self.dirty.is_empty() {
                self.oldest_dirty_ns = None;
            }
        }
        Some(slot)
    }

    /// Makes `state` the resident bucket of a key not in memory, with its
    /// bookkeeping (resident count, leases gauge); the counterpart of
    /// [`ShardState::evict`].
    fn insert_resident(&mut self, key: BucketKey, state: Held, now: u64) {
        self.count_leases(&key, state.leases(now) as i64);
        self.buckets.insert(key, Slot::new(state));
        self.stats().resident.fetch_add(1, Relaxed);
    }

    /// Decides one check (any op) on a resident bucket.
    fn decide(
        &mut self,
        key: &BucketKey,
        quota: BucketQuota,
        op: Op,
        cost: u64,
        now: u64,
    ) -> Decision {
        let (decision, leases) = match self.leased_decision(key, quota, op, cost, now) {
            Some(decision) => (decision, 0),
            None => {
                let slot = self.buckets.get_mut(key).expect("caller checked residency");
                slot.with_held(|h| h.apply(quota, now, op, cost))
            }
        };
        if op == Op::Peek {
            // Nothing changed: neither a decision to count nor a write.
            return decision;
        }
        let stats = &self.metrics.shards[self.id];
        if leases != 0 {
            if let Some(held) = stats.leases.get(key.limit.id()) {
                held.fetch_add(leases, Relaxed);
            }
        }
        if !matches!(op, Op::Take | Op::Acquire) {
            // Refunds, charges and releases always change the bucket (a
            // release that found nothing changes nothing worth writing);
            // they are not decisions.
            if decision.is_allowed() || op != Op::Release {
                self.mark_dirty(key, now);
            }
            return decision;
        }
        let allowed = decision.is_allowed();
        if let Some(counts) = stats.decisions.get(key.limit.id()) {
            counts[usize::from(!allowed)].fetch_add(1, Relaxed);
        }
        if allowed {
            self.mark_dirty(key, now);
        } else {
            stats.top_refused.record(key.limit, &key.tenant, now);
        }
        decision
    }

    /// A restore finished: install the bucket and answer the waiting checks.
    /// A bucket handed over by its previous owner is marked dirty, so this
    /// node snapshots it.
    fn restored(
        &mut self,
        key: BucketKey,
        result: Result<Option<Held>, CacheError>,
        from_peer: bool,
        ctx: &mut Context<ShardActor>,
    ) {
        let now = self.clock.now_ns();
        let waiters = self.pending.remove(&key).unwrap_or_default();
        let Some(first) = waiters.first() else { return };
        if self.lapsed_since(first.epoch) {
            // The view went stale while this restore was under way: what
            // came back may predate what another node served meanwhile. It
            // is set aside, and the checks wait for the node to catch up.
            if let Ok(Some(state)) = result {
                self.put_aside(key.clone(), state);
            }
            for w in waiters {
                let _ = w.reply.send(Err(Unserved::Fenced(key.tenant.clone())));
            }
            return;
        }
        let quota = first.quota;
        let result = match result {
            Ok(state) => Ok(self.with_aside(&key, state)),
            // Nothing came back: the copy set aside is all there is.
            Err(e) => match self.with_aside(&key, None) {
                Some(aside) => Ok(Some(aside)),
                None => Err(e),
            },
        };
        let state = match result {
            Ok(Some(state)) => {
                self.stats().restore_hits.fetch_add(1, Relaxed);
                debug!(shard = self.id, %key, "restored snapshot");
                self.arrived(&key, &state, quota);
                state
            }
            Ok(None) => {
                self.stats().restore_misses.fetch_add(1, Relaxed);
                Held::full(quota, now)
            }
            Err(e) => {
                self.stats().restore_errors.fetch_add(1, Relaxed);
                self.warn_throttled(now, "snapshot restore failed; bucket starts full", &e);
                Held::full(quota, now)
            }
        };
        if self.buckets.contains_key(&key) {
            // A push from the previous owner arrived while restoring: merge.
            self.install(key.clone(), state);
            self.stats().handoffs_in.fetch_sub(1, Relaxed);
        } else {
            self.insert_resident(key.clone(), state, now);
        }
        if from_peer {
            self.stats().handoffs_in.fetch_add(1, Relaxed);
            self.mark_dirty(&key, now);
        }
        for w in waiters {
            if let Some(refusal) = self.unpersistable(&key, w.quota, w.op, w.cost, now) {
                let _ = w.reply.send(refusal);
                continue;
            }
            let d = self.decide(&key, w.quota, w.op, w.cost, now);
            self.answer(d, w.op, w.reply);
        }
        self.flush_through(ctx);
        // Handed over while the restore was under way: the checks that came
        // first were answered; the key now lives on its new owner.
        if self.moved_to(&key).is_some() {
            self.evict(&key);
        }
    }

    /// Drops every bucket that is full now; returns how many.
    fn sweep(&mut self) -> usize {
        let now = self.clock.now_ns();
        self.sweep_aside(now);
        self.settle_token_leases(now);
        self.tombstones
            .retain(|_, (_, until)| until.saturating_add(HANDED_HINT_NS - TOMBSTONE_TTL_NS) > now);
        // Maps of per-key bookkeeping give their memory back once emptied.
        shrink_sparse(&mut self.tombstones);
        shrink_sparse(&mut self.pending);
        shrink_sparse(&mut self.outbox);
        let limits = &self.limits;
        let leased = &self.token_leases;
        let stats = &self.metrics.shards[self.id];
        let mut dropped = 0usize;
        let mut dropped_dirty = 0i64;
        self.buckets.retain(|key, slot| {
            // Expired leases leave the gauge (and the set) here, even when
            // no check looks at the key again.
            let expired = slot.expire_leases(now) as i64;
            if expired > 0 {
                if let Some(held) = stats.leases.get(key.limit.id()) {
                    held.fetch_sub(expired, Relaxed);
                }
            }
            let full = match BucketQuota::of(limits.policy(&key.tenant, key.limit)) {
                // Its leases hold units: not full, whatever its level says.
                _ if leased.contains_key(key) => false,
                None => true,
                Some(quota) => slot.is_full_at(quota, now),
            };
            if full {
                // A full bucket carries no information; an older snapshot of
                // it also refills to full by now, so nothing is lost.
                dropped += 1;
                dropped_dirty += i64::from(slot.dirty());
            }
            !full
        });
        if dropped > 0 {
            let stats = &self.metrics.shards[self.id];
            stats.resident.fetch_sub(dropped as i64, Relaxed);
            stats.dirty.fetch_sub(dropped_dirty, Relaxed);
            stats.evictions.fetch_add(dropped as u64, Relaxed);
            self.dirty.retain(|k| self.buckets.contains_key(k));
            if self.dirty.is_empty() {
                self.oldest_dirty_ns = None;
            }
            shrink_sparse(&mut self.buckets);
        }
        dropped
    }
}

/// Shrinks a map holding far fewer entries than it has room for.
fn shrink_sparse<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > 4 * map.len().max(1024) {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests;
