//! Ownership handoff, shard side. A bucket moves between nodes when the ring
//! changes; its new owner asks the previous one for it on its first check
//! ([`HandoffSource`]), and the previous owner gives it up ([`TakeBucket`]):
//! it removes the bucket and, for [`TOMBSTONE_TTL_NS`], answers checks for
//! that key with [`Moved`] so they reach the new owner instead of a fresh
//! bucket. A key is therefore served by one shard at a time, whichever node's
//! view is stale.
//!
//! When the previous owner is gone (crash) or does not answer, the bucket is
//! restored from the cache layer (the last snapshot plus refill since).
//!
//! Tombstones of keys a shard gave up while holding them are as many as the
//! buckets they replace; a node can also be asked for keys it never held
//! (any node may be asked for any key), and once a shard keeps
//! [`MAX_UNHELD_TOMBSTONES`] such a request leaves none (counted as a
//! handoff error): a check that then reaches this node with a stale view
//! restores the key from the cache layer, as a check after the tombstone's
//! lifetime would.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::{FutureExt, LocalBoxFuture};

use super::{ShardActor, ShardState, MAX_UNHELD_TOMBSTONES, TOMBSTONE_TTL_NS};
use crate::cache::CacheError;
use crate::core::held::Held;
use crate::core::key::BucketKey;

/// Where a new owner gets a moved bucket from.
pub trait HandoffSource: Send + Sync + 'static {
    /// `None` when no other node can hold `key` (nothing to ask).
    /// Otherwise a future resolving to the state given up by the node that
    /// held it, `None` when none did, `Err` when they could not be asked.
    /// `hint` is the node this shard handed the key to last; `reclaim` is
    /// set for a check decided here because the owner is unreachable (the
    /// owner is not asked then).
    #[allow(clippy::type_complexity)]
    fn pull(
        &self,
        key: &BucketKey,
        hint: Option<&str>,
        reclaim: bool,
    ) -> Option<LocalBoxFuture<'static, Result<Option<Held>, String>>>;

    /// Whether another node may hold `key` now: [`HandoffSource::pull`]
    /// without a hint would ask someone. Cheap: builds no request.
    fn would_pull(&self, key: &BucketKey, reclaim: bool) -> bool;
}

/// The node that owns a key now, when it is not this node.
pub type OwnerOf = Arc<dyn Fn(&BucketKey) -> Option<Arc<str>> + Send + Sync>;

/// Give up every resident bucket another node owns (a leaving node pushes
/// them to their new owners); answers them. From then on a check of a key
/// the shard does not hold is answered [`super::Unserved::Moved`] to the
/// key's owner by `owner_of` (a check that still reaches a leaving node
/// would otherwise start a second bucket beside the one pushed). Buckets no
/// other node owns stay.
#[derive(Message)]
#[rtype(result = "Vec<(BucketKey, Held)>")]
pub struct TakeAll {
    pub owner_of: OwnerOf,
}

impl std::fmt::Debug for TakeAll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TakeAll")
    }
}

/// Install a bucket pushed by its previous owner. If this shard already
/// holds the key (a check got here first), the lower level wins: units
/// consumed on either side stay consumed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Install {
    pub key: BucketKey,
    pub state: Held,
}

/// Give up the bucket `key` to node `to`; answers its state if resident.
#[derive(Debug, Message)]
#[rtype(result = "Option<Held>")]
pub struct TakeBucket {
    pub key: BucketKey,
    pub to: Arc<str>,
}

impl ShardState {
    /// The node a key was handed to, while the tombstone lasts; after
    /// [`TakeAll`], the key's owner.
    pub(super) fn moved_to(&self, key: &BucketKey) -> Option<Arc<str>> {
        if let Some(owner_of) = &self.handed_over {
            return owner_of(key);
        }
        if self.tombstones.is_empty() {
            return None;
        }
        let (to, until) = self.tombstones.get(key)?;
        (*until > self.clock.now_ns()).then(|| Arc::clone(to))
    }

    /// The state of a key this shard does not hold: from its previous owner
    /// if the ring moved it here lately, else from the cache layer. The flag
    /// says whether a peer handed it over.
    pub(super) fn restore(
        &self,
        key: BucketKey,
        hint: Option<Arc<str>>,
        reclaim: bool,
    ) -> LocalBoxFuture<'static, (Result<Option<Held>, CacheError>, bool)> {
        let cache = Arc::clone(&self.cache);
        let pull = self
            .handoff
            .as_ref()
            .and_then(|h| h.pull(&key, hint.as_deref(), reclaim));
        let metrics = Arc::clone(&self.metrics);
        let id = self.id;
        async move {
            if let Some(pull) = pull {
                match pull.await {
                    Ok(Some(state)) => return (Ok(Some(state)), true),
                    Ok(None) => {}
                    Err(e) => {
                        metrics.shards[id].handoff_errors.fetch_add(1, Relaxed);
                        tracing::debug!(%key, error = %e, "handoff pull failed; restoring from the cache layer");
                    }
                }
            }
            (cache.restore(key).await, false)
        }
        .boxed_local()
    }
}

impl ShardState {
    /// Puts a handed-over state in place, merging with a resident bucket.
    pub(super) fn install(&mut self, key: BucketKey, state: Held) {
        let state = self
            .with_aside(&key, Some(state))
            .expect("a state was given");
        let now = self.clock.now_ns();
        if let Some(quota) =
            crate::core::bucket::BucketQuota::of(self.limits.policy(&key.tenant, key.limit))
        {
            self.arrived(&key, &state, quota);
        }
        self.tombstones.remove(&key);
        self.metrics.shards[self.id]
            .handoffs_in
            .fetch_add(1, Relaxed);
        match self.buckets.get_mut(&key) {
            Some(slot) => {
                let Some(quota) = crate::core::bucket::BucketQuota::of(
                    self.limits.policy(&key.tenant, key.limit),
                ) else {
                    return;
                };
                let before = slot.leases(now) as i64;
                slot.with_held(|h| h.merge(state, quota, now));
                let after = slot.leases(now) as i64;
                self.count_leases(&key, after - before);
            }
            None => self.insert_resident(key.clone(), state, now),
        }
        self.mark_dirty(&key, now);
    }
}

impl ShardState {
    pub(super) fn install_pushed(&mut self, msg: Install, _: &mut Context<ShardActor>) {
        self.install(msg.key, msg.state);
    }
}

impl ShardState {
    pub(super) fn take_all(
        &mut self,
        msg: TakeAll,
        _: &mut Context<ShardActor>,
    ) -> Vec<(BucketKey, Held)> {
        // A bucket no other node owns stays here, served and snapshotted as
        // before (the final flush writes it): given up, its next check would
        // restore it from the cache layer while its last state is still
        // being written there, and lose what was taken since the last
        // snapshot.
        let owner_of = msg.owner_of;
        let keys: Vec<BucketKey> = self
            .buckets
            .keys()
            .filter(|k| owner_of(k).is_some())
            .cloned()
            .collect();
        self.handed_over = Some(owner_of);
        let stats = &self.metrics.shards[self.id];
        let now = self.clock.now_ns();
        let mut taken = Vec::with_capacity(keys.len());
        let mut dirty = 0i64;
        for key in keys {
            if let Some(slot) = self.buckets.remove(&key) {
                dirty += i64::from(slot.dirty());
                if let Some(held) = stats.leases.get(key.limit.id()) {
                    held.fetch_sub(slot.leases(now) as i64, Relaxed);
                }
                taken.push((key, slot.into_held()));
            }
        }
        let n = taken.len();
        stats.resident.fetch_sub(n as i64, Relaxed);
        stats.handoffs_out.fetch_add(n as u64, Relaxed);
        stats.dirty.fetch_sub(dirty, Relaxed);
        if dirty > 0 {
            self.dirty.retain(|k| self.buckets.contains_key(k));
        }
        if self.dirty.is_empty() {
            self.oldest_dirty_ns = None;
        }
        // A pull for one of these may arrive before the push: keep a copy to
        // answer it (a bucket delivered twice merges to the lower level).
        self.outbox.extend(taken.iter().cloned());
        taken
    }
}

impl ShardState {
    pub(super) fn take_bucket(
        &mut self,
        msg: TakeBucket,
        _: &mut Context<ShardActor>,
    ) -> Option<Held> {
        let now = self.clock.now_ns();
        let tombstone = (msg.to, now.saturating_add(TOMBSTONE_TTL_NS));
        let Some(slot) = self.evict(&msg.key) else {
            // Asked for a key it does not hold: the tombstone only keeps a
            // check that reaches this node with a stale view from starting
            // a second bucket, and any node may be asked for any key, so
            // their number is bounded (lapsed ones go every sweep).
            if self.tombstones.len() < MAX_UNHELD_TOMBSTONES
                || self.tombstones.contains_key(&msg.key)
            {
                self.tombstones.insert(msg.key.clone(), tombstone);
            } else {
                self.metrics.shards[self.id]
                    .handoff_errors
                    .fetch_add(1, Relaxed);
            }
            // A copy set aside at a fence lapse goes too: whoever asks
            // merges it (it only lowers what they hold).
            return self
                .outbox
                .remove(&msg.key)
                .or_else(|| self.aside.remove(&msg.key));
        };
        self.tombstones.insert(msg.key.clone(), tombstone);
        self.metrics.shards[self.id]
            .handoffs_out
            .fetch_add(1, Relaxed);
        Some(slot.into_held())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    use llmtrace_cluster_config::{Limit, RateLimitConfig};

    use super::super::{HANDED_HINT_NS, MAX_UNHELD_TOMBSTONES};
    use crate::cache::InMemoryCacheLayer;
    use crate::core::clock::ManualClock;
    use crate::core::held::Held;
    use crate::core::verdict::CheckError;
    use crate::local::limiter::Limiter;
    use crate::shard::ShardTiming;

    async fn moved(l: &Limiter, tenant: &str) -> bool {
        match l.check(tenant.into(), Limit::REQUESTS, 1).await {
            Err(CheckError::Moved { .. }) => true,
            Ok(v) => {
                assert!(v.is_allowed(), "{tenant}: {v:?}");
                false
            }
            Err(e) => panic!("{tenant}: {e:?}"),
        }
    }

    async fn take(l: &Limiter, tenant: &str) -> Result<Option<Held>, CheckError> {
        l.take(tenant, Limit::REQUESTS, "node-b".into()).await
    }

    #[actix_rt::test]
    async fn tombstones_of_keys_never_held_are_bounded() {
        let clock = ManualClock::new(1_000_000_000_000);
        let cache = Arc::new(InMemoryCacheLayer::new(clock.clone()));
        let l = Limiter::start(
            1,
            Arc::new(RateLimitConfig::with_requests(1, 10)),
            cache,
            clock.clone(),
            ShardTiming::default(),
        );
        for i in 0..MAX_UNHELD_TOMBSTONES {
            assert_eq!(take(&l, &format!("k{i}")).await, Ok(None));
        }
        assert!(moved(&l, "k0").await, "a recorded tombstone redirects");
        // Full: a key never held leaves no tombstone, and says so.
        assert_eq!(take(&l, "over").await, Ok(None));
        assert_eq!(l.metrics().shards[0].handoff_errors.load(Relaxed), 1);
        assert!(!moved(&l, "over").await, "no tombstone past the bound");
        // A held key always leaves one (it replaces the bucket).
        assert!(!moved(&l, "held").await);
        assert!(take(&l, "held").await.unwrap().is_some());
        assert!(moved(&l, "held").await);
        // Once they lapse, the sweep forgets them and there is room again.
        clock.advance_ns(HANDED_HINT_NS + 1);
        l.sweep_all().await;
        assert_eq!(take(&l, "later").await, Ok(None));
        assert!(moved(&l, "later").await);
    }
}
