//! The shard's side of ownership fencing (see [`crate::core::fence`]): a
//! shard decides from a resident bucket only while the node's fence is
//! open, and after a lapse it sets every bucket it held aside. A bucket set
//! aside is not resident: its next check restores it (from the node that
//! holds it now, else the cache layer) and the copy set aside only ever
//! lowers what comes back (units consumed on either side stay consumed), so
//! what this node spent before the lapse is not lost and what another node
//! spent meanwhile is not spent again.
//!
//! Snapshots wait while the fence is closed: a frozen node's last writes
//! would overwrite what the bucket's new owner stored meanwhile.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tracing::info;

use super::ShardState;
use crate::core::bucket::BucketQuota;
use crate::core::fence::Fence;
use crate::core::held::Held;
use crate::core::key::BucketKey;

/// On what ground a shard is asked to decide a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// This node owns the key (or decides where a check landed).
    Owner,
    /// This node owns the key again (the node it handed the key to left the
    /// ring): forget the tombstone and serve.
    Reclaim,
    /// The owner is unreachable and `on_owner_unreachable = local` decides
    /// here: as [`Serve::Reclaim`], and also while the fence is closed (the
    /// answer is marked degraded).
    Degraded,
}

impl Serve {
    /// A tombstone of the key is dropped.
    pub fn reclaims(self) -> bool {
        !matches!(self, Serve::Owner)
    }
}

impl ShardState {
    /// Gates decisions (and snapshots) through `fence`.
    pub fn fence(mut self, fence: Arc<Fence>) -> Self {
        self.fence = fence;
        self
    }

    /// Whether this shard may decide from its resident buckets now. The
    /// first time after a lapse, every resident bucket is set aside.
    pub(super) fn may_decide(&mut self) -> bool {
        match self.fence.admits() {
            None => false,
            Some(epoch) if epoch == self.fence_epoch => true,
            Some(epoch) => {
                self.fence_epoch = epoch;
                self.set_aside();
                true
            }
        }
    }

    /// Sets every resident bucket aside (not resident, not dirty).
    /// Write-through checks still waiting for their batch are answered not
    /// persisted (fail closed): their state is not written now, since it
    /// could overwrite what a new owner stored meanwhile.
    fn set_aside(&mut self) {
        super::snapshots::answer_durable(std::mem::take(&mut self.durable_waiting), false);
        let keys: Vec<BucketKey> = self.buckets.keys().cloned().collect();
        for key in &keys {
            if let Some(slot) = self.evict(key) {
                self.put_aside(key.clone(), slot.into_held());
            }
        }
        if !keys.is_empty() {
            info!(
                shard = self.id,
                buckets = keys.len(),
                "fence lapsed: buckets set aside until taken back"
            );
        }
        self.metrics.shards[self.id]
            .set_aside
            .fetch_add(keys.len() as u64, Relaxed);
    }

    /// The fence is closed, or lapsed since `epoch`.
    pub(super) fn lapsed_since(&mut self, epoch: u64) -> bool {
        !self.may_decide() || self.fence_epoch != epoch
    }

    /// Sets `held` aside for `key`, lowering a copy already set aside.
    pub(super) fn put_aside(&mut self, key: BucketKey, held: Held) {
        let held = self
            .with_aside(&key, Some(held))
            .expect("a state was given");
        self.aside.insert(key, held);
    }

    /// `state` (restored or handed over), lowered by the copy of the key set
    /// aside at a lapse, if any.
    pub(super) fn with_aside(&mut self, key: &BucketKey, state: Option<Held>) -> Option<Held> {
        let Some(aside) = self.aside.remove(key) else {
            return state;
        };
        let Some(mut state) = state else {
            return Some(aside);
        };
        if let Some(quota) = BucketQuota::of(self.limits.policy(&key.tenant, key.limit)) {
            state.merge(aside, quota, self.clock.now_ns());
        }
        Some(state)
    }

    /// Drops the buckets set aside that are full by now (they carry no
    /// information).
    pub(super) fn sweep_aside(&mut self, now: u64) {
        let limits = &self.limits;
        self.aside.retain(|key, held| {
            match BucketQuota::of(limits.policy(&key.tenant, key.limit)) {
                None => false,
                Some(quota) => !held.is_full_at(quota, now),
            }
        });
        super::shrink_sparse(&mut self.aside);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures_util::future::{FutureExt, LocalBoxFuture};
    use llmtrace_cluster_config::{Limit, RateLimitConfig};

    use crate::cache::InMemoryCacheLayer;
    use crate::core::bucket::{BucketQuota, Decision, Op};
    use crate::core::clock::{Clock, ManualClock};
    use crate::core::fence::Fence;
    use crate::core::held::Held;
    use crate::core::key::BucketKey;
    use crate::core::verdict::{CheckError, Verdict};
    use crate::local::limiter::Limiter;
    use crate::shard::{HandoffSource, Ownership, ShardTiming};

    /// The node that served keys while this one was paused: gives up what
    /// it holds when asked, once its gate (if any) lets the answer go.
    #[derive(Default)]
    struct Peer {
        held: Mutex<Vec<(BucketKey, Held)>>,
        gate: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
        /// Signalled (one permit) on each pull.
        asked: tokio::sync::Notify,
    }

    impl HandoffSource for Peer {
        fn would_pull(&self, _: &BucketKey, _: bool) -> bool {
            true
        }

        fn pull(
            &self,
            key: &BucketKey,
            _: Option<&str>,
            _: bool,
        ) -> Option<LocalBoxFuture<'static, Result<Option<Held>, String>>> {
            let mut held = self.held.lock().unwrap();
            let state = held
                .iter()
                .position(|(k, _)| k == key)
                .map(|i| held.remove(i).1);
            let gate = self.gate.lock().unwrap().take();
            self.asked.notify_one();
            Some(
                async move {
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                    Ok(state)
                }
                .boxed_local(),
            )
        }
    }

    fn limiter(clock: &Arc<ManualClock>, fence: &Arc<Fence>, peer: &Arc<Peer>) -> Limiter {
        Limiter::start_owning(
            1,
            Arc::new(RateLimitConfig::with_requests(1, 10)),
            Arc::new(InMemoryCacheLayer::new(clock.clone())),
            clock.clone(),
            ShardTiming {
                write_behind: false,
                ..ShardTiming::default()
            },
            Ownership {
                handoff: Some(peer.clone()),
                fence: Arc::clone(fence),
            },
        )
    }

    /// Another node's state of a key: `left` of the 10 units.
    fn served(clock: &ManualClock, left: u64) -> Held {
        let limits = RateLimitConfig::with_requests(1, 10);
        let quota = BucketQuota::of(limits.policy("t", Limit::REQUESTS)).unwrap();
        let mut held = Held::full(quota, clock.now_ns());
        held.apply(quota, clock.now_ns(), Op::Take, 10 - left);
        held
    }

    async fn take(l: &Limiter, tenant: &str, cost: u64) -> Result<Option<u64>, CheckError> {
        l.check(tenant.into(), Limit::REQUESTS, cost)
            .await
            .map(|v| match v {
                Verdict::Limited {
                    decision: Decision::Allowed { remaining, .. },
                    ..
                } => Some(remaining),
                _ => None,
            })
    }

    #[actix_rt::test]
    async fn after_a_lapse_buckets_are_taken_back_never_spent_from_memory() {
        let clock = ManualClock::new(1_000_000_000_000);
        let fence = Fence::leased(Duration::from_secs(3600));
        let peer = Arc::new(Peer::default());
        let l = limiter(&clock, &fence, &peer);
        // Before the pause: t spent 4 of 10 here, u all 10.
        assert_eq!(take(&l, "t", 4).await, Ok(Some(6)));
        assert_eq!(take(&l, "u", 10).await, Ok(Some(0)));
        // Frozen: the gate closed on its own; nothing is decided.
        fence.renew(fence.now_ns());
        assert!(matches!(
            take(&l, "t", 1).await,
            Err(CheckError::Fenced { tenant }) if tenant == "t"
        ));
        // Meanwhile another node served t down to 2 (u saw no check there).
        let key = BucketKey::new("t", Limit::REQUESTS);
        peer.held.lock().unwrap().push((key, served(&clock, 2)));
        // Caught up: a lapse, then the gate opens again.
        fence.lapse();
        fence.renew(u64::MAX - 1);
        // t comes back from the peer (2 left, not the 6 kept here) ...
        assert_eq!(take(&l, "t", 1).await, Ok(Some(1)));
        // ... and u, which nobody else held, keeps what this node spent.
        assert_eq!(take(&l, "u", 1).await, Ok(None));
        assert_eq!(l.metrics().shards[0].set_aside.load(Relaxed), 2);
        assert_eq!(l.metrics().shards[0].handoffs_in.load(Relaxed), 1);
    }

    #[actix_rt::test]
    async fn a_restore_that_spans_a_lapse_is_set_aside_not_served() {
        let clock = ManualClock::new(1_000_000_000_000);
        let fence = Fence::leased(Duration::from_secs(3600));
        let peer = Arc::new(Peer::default());
        let l = limiter(&clock, &fence, &peer);
        // The first check of t asks the peer, whose answer (2 left) is held.
        let key = BucketKey::new("t", Limit::REQUESTS);
        peer.held.lock().unwrap().push((key, served(&clock, 2)));
        let (open_gate, gate) = tokio::sync::oneshot::channel();
        *peer.gate.lock().unwrap() = Some(gate);
        let first = {
            let l = l.clone();
            actix_rt::spawn(async move { take(&l, "t", 1).await })
        };
        peer.asked.notified().await;
        // Meanwhile the node was paused and caught up: a lapse.
        fence.renew(fence.now_ns());
        fence.lapse();
        fence.renew(u64::MAX - 1);
        open_gate.send(()).unwrap();
        assert!(
            matches!(first.await.unwrap(), Err(CheckError::Fenced { .. })),
            "an answer from before the lapse is not decided on"
        );
        // The next check restores again (the peer holds nothing now) and
        // keeps what was set aside: 2 left, 1 after this check.
        assert_eq!(take(&l, "t", 1).await, Ok(Some(1)));
    }
}
