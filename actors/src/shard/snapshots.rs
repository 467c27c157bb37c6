//! The shard's snapshot side: the dirty set, write-behind batches (one in
//! flight per shard, retried with backoff), write-through answers held
//! until their batch is stored, and the final flush.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::{Reply, ShardActor, ShardState, Unserved, MAX_BACKOFF};
use crate::cache::{CacheError, SnapshotWrite};
use crate::core::bucket::{BucketQuota, Decision, Op};
use crate::core::key::BucketKey;

/// Write every dirty bucket now and answer once the cache layer acknowledged
/// (graceful shutdown, tests). Answers the number of snapshots written.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, CacheError>")]
pub struct FlushNow;

/// Answers write-through checks once their batch is written (or not): their
/// decisions if it was stored, [`Unserved::NotPersisted`] otherwise.
pub(super) fn answer_durable(waiting: Vec<(Decision, Reply)>, stored: bool) {
    for (decision, reply) in waiting {
        let _ = reply.send(if stored {
            Ok(decision)
        } else {
            Err(Unserved::NotPersisted)
        });
    }
}

impl ShardState {
    /// Queues a resident bucket for the next snapshot (once).
    pub(super) fn mark_dirty(&mut self, key: &BucketKey, now: u64) {
        if !self.timing.write_behind {
            return;
        }
        if let Some(slot) = self.buckets.get_mut(key) {
            if !slot.dirty() {
                slot.set_dirty(true);
                self.metrics.shards[self.id].dirty.fetch_add(1, Relaxed);
                self.oldest_dirty_ns.get_or_insert(now);
                self.dirty.push(key.clone());
            }
        }
    }

    /// Takes the dirty set as a batch of writes.
    pub(super) fn take_dirty(&mut self, now: u64) -> Vec<SnapshotWrite> {
        let keys = std::mem::take(&mut self.dirty);
        if let Some(oldest) = self.oldest_dirty_ns.take() {
            let lag_ms = now.saturating_sub(oldest) / 1_000_000;
            self.stats().snapshot_lag_ms.store(lag_ms, Relaxed);
        }
        let mut writes = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(slot) = self.buckets.get_mut(&key) else {
                continue;
            };
            if !slot.dirty() {
                continue;
            }
            slot.set_dirty(false);
            let Some(quota) = BucketQuota::of(self.limits.policy(&key.tenant, key.limit)) else {
                continue;
            };
            writes.push(SnapshotWrite::new(key, slot.held(), quota, now));
        }
        let n = writes.len() as i64;
        self.stats().dirty.fetch_sub(n, Relaxed);
        writes
    }

    /// Puts a failed batch back into the dirty set (unless the bucket changed
    /// or left memory since: then there is nothing older worth writing).
    pub(super) fn remark_dirty(&mut self, writes: &[SnapshotWrite], now: u64) {
        for w in writes {
            if let Some(slot) = self.buckets.get_mut(&w.key) {
                if !slot.dirty() {
                    slot.set_dirty(true);
                    self.metrics.shards[self.id].dirty.fetch_add(1, Relaxed);
                    self.dirty.push(w.key.clone());
                }
            }
        }
        if !self.dirty.is_empty() {
            self.oldest_dirty_ns.get_or_insert(now);
        }
    }

    /// The cache layer may have lost snapshots it acknowledged: queue every
    /// resident bucket that is not full, so none of them comes back full
    /// should this node die before the bucket changes again.
    fn rewrite_after_loss(&mut self, now: u64) {
        let epoch = self.cache.loss_epoch();
        if epoch == self.loss_epoch {
            return;
        }
        self.loss_epoch = epoch;
        let keys: Vec<BucketKey> = self
            .buckets
            .iter()
            .filter(|(key, slot)| {
                BucketQuota::of(self.limits.policy(&key.tenant, key.limit))
                    .is_some_and(|q| !slot.is_full_at(q, now))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            self.mark_dirty(key, now);
        }
    }

    pub(super) fn flush(&mut self, ctx: &mut Context<ShardActor>) {
        if !self.may_decide() {
            // A stale node writes nothing: its buckets may have been served
            // (and written) by another node meanwhile.
            return;
        }
        let now = self.clock.now_ns();
        self.rewrite_after_loss(now);
        if self.flush_in_flight || self.dirty.is_empty() || now < self.retry_at_ns {
            return;
        }
        let writes = Arc::new(self.take_dirty(now));
        // Every waiting admitted check's bucket is dirty, so its state is in
        // this batch (or its bucket left: handed over, nothing to write here).
        let durable = std::mem::take(&mut self.durable_waiting);
        if writes.is_empty() {
            answer_durable(durable, true);
            return;
        }
        self.flush_in_flight = true;
        let fut = self.cache.store(Arc::clone(&writes));
        ctx.spawn(fut::wrap_future::<_, ShardActor>(fut).map(
            move |res, act: &mut ShardActor, ctx| {
                let mut act = act.lock();
                act.flush_in_flight = false;
                let now = act.clock.now_ns();
                answer_durable(durable, res.is_ok());
                match res {
                    Ok(()) => {
                        act.backoff = Duration::ZERO;
                        act.retry_at_ns = 0;
                        act.stats().snapshot_batches.fetch_add(1, Relaxed);
                        act.stats()
                            .snapshot_writes
                            .fetch_add(writes.len() as u64, Relaxed);
                        // Checks admitted while this batch was in flight.
                        act.flush_through(ctx);
                    }
                    Err(e) => {
                        // Checks admitted while the failed batch was in flight
                        // would wait out the backoff: refuse them now.
                        answer_durable(std::mem::take(&mut act.durable_waiting), false);
                        act.stats().snapshot_errors.fetch_add(1, Relaxed);
                        act.warn_throttled(now, "snapshot batch failed; will retry", &e);
                        act.backoff = (act.backoff * 2)
                            .max(act.timing.snapshot_interval)
                            .min(MAX_BACKOFF);
                        act.retry_at_ns = now.saturating_add(act.backoff.as_nanos() as u64);
                        act.remark_dirty(&writes, now);
                    }
                }
            },
        ));
    }

    /// Write-through (and token lease grants, always written through):
    /// starts a batch for the answers waiting on one (unless a batch is in
    /// flight; its completion starts the next).
    pub(super) fn flush_through(&mut self, ctx: &mut Context<ShardActor>) {
        if !self.durable_waiting.is_empty() {
            self.flush(ctx);
        }
    }

    /// Write-through after a failed batch, until its backoff ends: a check
    /// that would be admitted is refused without taking units, rather than
    /// wait on a failing cache. (A refusal changes nothing: answered as usual.)
    pub(super) fn unpersistable(
        &self,
        key: &BucketKey,
        quota: BucketQuota,
        op: Op,
        cost: u64,
        now: u64,
    ) -> Option<Result<Decision, Unserved>> {
        // Refunds, charges and releases are never refused: they account for
        // what already happened (the state changes in memory and is retried
        // to Redis).
        if !self.timing.write_through
            || now >= self.retry_at_ns
            || !matches!(op, Op::Take | Op::Acquire)
        {
            return None;
        }
        let mut probe = self.buckets.get(key)?.held();
        probe
            .apply(quota, now, op, cost)
            .0
            .is_allowed()
            .then_some(Err(Unserved::NotPersisted))
    }

    /// Sends a decision; in write-through an admitting one waits for its
    /// batch (a peek changed nothing and waits for none).
    pub(super) fn answer(&mut self, decision: Decision, op: Op, reply: Reply) {
        if self.timing.write_through && decision.is_allowed() && op != Op::Peek {
            self.durable_waiting.push((decision, reply));
        } else {
            let _ = reply.send(Ok(decision));
        }
    }
}

impl ShardState {
    pub(super) fn flush_now(
        &mut self,
        _: FlushNow,
        _: &mut Context<ShardActor>,
    ) -> ResponseActFuture<ShardActor, Result<usize, CacheError>> {
        let now = self.clock.now_ns();
        self.rewrite_after_loss(now);
        let writes = Arc::new(self.take_dirty(now));
        if writes.is_empty() {
            return Box::pin(fut::ready(Ok(0)));
        }
        let fut = self.cache.store(Arc::clone(&writes));
        Box::pin(
            fut::wrap_future::<_, ShardActor>(fut).map(move |res, act: &mut ShardActor, _| {
                let mut act = act.lock();
                let n = writes.len();
                match res {
                    Ok(()) => {
                        act.stats().snapshot_batches.fetch_add(1, Relaxed);
                        act.stats().snapshot_writes.fetch_add(n as u64, Relaxed);
                        Ok(n)
                    }
                    Err(e) => {
                        act.stats().snapshot_errors.fetch_add(1, Relaxed);
                        let now = act.clock.now_ns();
                        act.remark_dirty(&writes, now);
                        Err(e)
                    }
                }
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use futures_util::future::BoxFuture;
    use llmtrace_cluster_config::{Limit, RateLimitConfig};

    use super::*;
    use crate::cache::{CacheLayer, InMemoryCacheLayer};
    use crate::core::bucket::NANOS;
    use crate::core::clock::ManualClock;
    use crate::local::limiter::Limiter;
    use crate::shard::ShardTiming;

    /// Snapshots in memory, with a loss epoch the test raises.
    struct LossyCache {
        inner: InMemoryCacheLayer,
        epoch: AtomicU64,
    }

    impl CacheLayer for LossyCache {
        fn name(&self) -> &'static str {
            "lossy"
        }
        fn restore(
            &self,
            key: BucketKey,
        ) -> BoxFuture<'static, Result<Option<crate::core::held::Held>, CacheError>> {
            self.inner.restore(key)
        }
        fn store(&self, w: Arc<Vec<SnapshotWrite>>) -> BoxFuture<'static, Result<(), CacheError>> {
            self.inner.store(w)
        }
        fn loss_epoch(&self) -> u64 {
            self.epoch.load(Relaxed)
        }
    }

    #[actix_rt::test]
    async fn a_loss_rewrites_every_resident_bucket_that_is_not_full() {
        let clock = ManualClock::new(1_000 * NANOS);
        let cache = Arc::new(LossyCache {
            inner: InMemoryCacheLayer::new(clock.clone()),
            epoch: AtomicU64::new(0),
        });
        let limiter = Limiter::start(
            2,
            Arc::new(RateLimitConfig::with_requests(1, 10)),
            cache.clone(),
            clock.clone(),
            ShardTiming::default(),
        );
        let flush = || limiter.flush_all(Duration::from_secs(5));
        let take = |tenant: &str, cost| limiter.check(tenant.into(), Limit::REQUESTS, cost);
        assert!(take("refills", 1).await.unwrap().is_allowed());
        clock.advance_ns(NANOS / 2);
        assert!(take("drained", 10).await.unwrap().is_allowed());
        assert_eq!(flush().await, Ok(2));
        assert_eq!(flush().await, Ok(0), "nothing changed");
        // "refills" is full again (still resident): it carries nothing.
        clock.advance_ns(NANOS);
        cache.epoch.fetch_add(1, Relaxed);
        assert_eq!(flush().await, Ok(1), "the drained bucket is written again");
        assert_eq!(flush().await, Ok(0), "once per loss");
    }
}
