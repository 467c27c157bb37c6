//! The node's front to its shards: resolves a tenant's quota, validates the
//! cost, short-circuits unlimited checks and has the rest decided by the
//! shard that holds the key: in place when the bucket is in memory
//! ([`ShardSlots::decide_now`]), else by the shard's actor. Starting a
//! limiter starts its shards.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use llmtrace_cluster_config::{Limit, Policy, RateLimitConfig};

use crate::core::verdict::{CheckError, Verdict};

use crate::cache::{CacheError, CacheLayer, SnapshotWrite};
use crate::core::bucket::{BucketQuota, Op};
use crate::core::clock::Clock;
use crate::core::fence::Fence;
use crate::core::held::Held;
use crate::core::key::{shard_of, BucketKey};
use crate::local::placement::{self, ShardHost, ShardParts, ShardSlots};
use crate::metrics::Metrics;
use crate::shard::{
    BucketReport, Check, FlushNow, Grant, GrantTokens, Inspect, Install, Moved, OwnerOf, Ownership,
    Reset, ReturnTokens, Serve, ShardTiming, SweepNow, TakeAll, TakeBucket, Unserved,
};

/// Handle to a node's shards. Cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    shards: Arc<ShardSlots>,
    limits: Arc<RateLimitConfig>,
    metrics: Arc<Metrics>,
    cache_name: &'static str,
    cache: Arc<dyn CacheLayer>,
    /// Buckets are snapshotted (a persistent cache layer is configured).
    write_behind: bool,
    clock: Arc<dyn Clock>,
    /// The gate of this node's decisions (shared with its shards).
    fence: Arc<Fence>,
}

impl Limiter {
    /// Starts `shards` shard actors, each on a new arbiter, and returns the
    /// front. Must be called from inside an actix system.
    pub fn start(
        shards: usize,
        limits: Arc<RateLimitConfig>,
        cache: Arc<dyn CacheLayer>,
        clock: Arc<dyn Clock>,
        timing: ShardTiming,
    ) -> Self {
        Self::start_owning(shards, limits, cache, clock, timing, Ownership::default())
    }

    /// [`Limiter::start`], with moved buckets pulled and decisions fenced as
    /// `ownership` says.
    pub fn start_owning(
        shards: usize,
        limits: Arc<RateLimitConfig>,
        cache: Arc<dyn CacheLayer>,
        clock: Arc<dyn Clock>,
        timing: ShardTiming,
        ownership: Ownership,
    ) -> Self {
        let (limiter, parts) = Self::unstarted(shards, limits, cache, clock, timing, ownership);
        placement::start_dedicated(&parts, &limiter.shards);
        limiter
    }

    /// A limiter whose shards are hosted by the HTTP worker threads: each
    /// worker calls [`ShardHost::host_here`] as it starts. Checks sent before
    /// their shard started wait for it.
    pub fn hosted(
        shards: usize,
        hosts: usize,
        limits: Arc<RateLimitConfig>,
        cache: Arc<dyn CacheLayer>,
        clock: Arc<dyn Clock>,
        timing: ShardTiming,
        ownership: Ownership,
    ) -> (Self, Arc<ShardHost>) {
        let (limiter, parts) = Self::unstarted(shards, limits, cache, clock, timing, ownership);
        let host = ShardHost::new(parts, Arc::clone(&limiter.shards), hosts);
        (limiter, host)
    }

    fn unstarted(
        shards: usize,
        limits: Arc<RateLimitConfig>,
        cache: Arc<dyn CacheLayer>,
        clock: Arc<dyn Clock>,
        timing: ShardTiming,
        ownership: Ownership,
    ) -> (Self, ShardParts) {
        let shards = shards.max(1);
        let metrics = Arc::new(Metrics::new(shards, limits.limits()));
        let limiter = Limiter {
            shards: ShardSlots::new(shards),
            limits: Arc::clone(&limits),
            metrics: Arc::clone(&metrics),
            cache_name: cache.name(),
            cache: Arc::clone(&cache),
            write_behind: timing.write_behind,
            clock: Arc::clone(&clock),
            fence: Arc::clone(&ownership.fence),
        };
        let parts = ShardParts {
            limits,
            cache,
            clock,
            metrics,
            timing,
            ownership,
        };
        (limiter, parts)
    }

    /// The shard table (start-up waits on it).
    pub fn shards(&self) -> &Arc<ShardSlots> {
        &self.shards
    }

    /// The gate of this node's decisions.
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The clock the shards decide by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn limits(&self) -> &RateLimitConfig {
        &self.limits
    }

    /// The cache layer in use.
    pub fn cache(&self) -> &Arc<dyn CacheLayer> {
        &self.cache
    }

    /// Name of the cache layer in use.
    pub fn cache_name(&self) -> &'static str {
        self.cache_name
    }

    /// The policy `key` is held to under `limit`.
    #[inline]
    pub fn policy(&self, key: &str, limit: Limit) -> Policy {
        self.limits.policy(key, limit)
    }

    /// Validates `cost` of a take against the quota; `Ok(None)` means
    /// unlimited.
    pub fn validate(
        &self,
        tenant: &str,
        limit: Limit,
        cost: u64,
    ) -> Result<Option<BucketQuota>, CheckError> {
        self.validate_op(tenant, limit, Op::Take, cost)
    }

    /// Validates `cost` of `op` against the quota: every cost is at least 1,
    /// and a take's (or a peek's) at most the burst (refunds and charges may
    /// be larger).
    pub fn validate_op(
        &self,
        tenant: &str,
        limit: Limit,
        op: Op,
        cost: u64,
    ) -> Result<Option<BucketQuota>, CheckError> {
        if cost == 0 {
            return Err(CheckError::ZeroCost);
        }
        match BucketQuota::of(self.policy(tenant, limit)) {
            None => Ok(None),
            Some(quota) => {
                if op.is_lease() != matches!(quota, BucketQuota::Leases { .. }) {
                    return Err(CheckError::WrongOp(op.as_str()));
                }
                if matches!(op, Op::Take | Op::Peek) && cost > quota.capacity_units() {
                    return Err(CheckError::CostAboveBurst {
                        cost,
                        burst: quota.capacity_units(),
                    });
                }
                Ok(Some(quota))
            }
        }
    }

    /// Takes `cost` units of `limit` from `tenant` (an already validated id).
    pub async fn check(
        &self,
        tenant: String,
        limit: Limit,
        cost: u64,
    ) -> Result<Verdict, CheckError> {
        self.check_with(tenant, limit, cost, Serve::Owner).await
    }

    /// [`Limiter::check`] on the ground `serve` gives.
    pub async fn check_with(
        &self,
        tenant: String,
        limit: Limit,
        cost: u64,
        serve: Serve,
    ) -> Result<Verdict, CheckError> {
        let quota = self.validate(&tenant, limit, cost)?;
        self.check_validated(tenant, limit, Op::Take, cost, quota, serve)
            .await
    }

    /// [`Limiter::check_with`] for a cost the caller already validated
    /// against `quota` (what [`Limiter::validate`] answered).
    pub async fn check_validated(
        &self,
        tenant: String,
        limit: Limit,
        op: Op,
        cost: u64,
        quota: Option<BucketQuota>,
        serve: Serve,
    ) -> Result<Verdict, CheckError> {
        let Some(quota) = quota else {
            self.metrics.unlimited.fetch_add(1, Relaxed);
            return Ok(Verdict::Unlimited);
        };
        let i = shard_of(&tenant, limit, self.shards.len());
        let key = BucketKey {
            tenant: tenant.into_boxed_str(),
            limit,
        };
        let check = Check {
            key,
            quota,
            op,
            cost,
            serve,
        };
        // Hot path: decided here when the bucket is in memory, without a
        // message to the shard or a hop to its thread.
        if let Some(decision) = self.shards.decide_now(i, &check) {
            return Ok(Verdict::Limited { quota, decision });
        }
        let mut msg = Some(check);
        // No clone of the address (its sender count is shared between
        // threads); only during start-up wait for the shard.
        let request = match self.shards.with(i, |a| a.send(msg.take().expect("unsent"))) {
            Some(request) => request,
            None => self.shards.get(i).await.send(msg.take().expect("unsent")),
        };
        let decision = request
            .await
            .map_err(|e| CheckError::Unavailable(e.to_string()))?
            .map_err(|e| match e {
                Unserved::Moved(Moved { to, tenant }) => CheckError::Moved {
                    to: to.to_string(),
                    tenant: tenant.into(),
                },
                Unserved::NotPersisted => CheckError::NotPersisted,
                Unserved::Fenced(tenant) => CheckError::Fenced {
                    tenant: tenant.into(),
                },
            })?;
        Ok(Verdict::Limited { quota, decision })
    }

    /// Gives up the bucket of `(tenant, limit)` to node `to` (handoff);
    /// answers its state when this node held it.
    pub async fn take(
        &self,
        tenant: &str,
        limit: Limit,
        to: Arc<str>,
    ) -> Result<Option<Held>, CheckError> {
        let i = shard_of(tenant, limit, self.shards.len());
        let key = BucketKey::new(tenant, limit);
        self.shards
            .get(i)
            .await
            .send(TakeBucket { key, to })
            .await
            .map_err(|e| CheckError::Unavailable(e.to_string()))
    }

    /// The state of `tenant`'s bucket for `limit` on this node, without
    /// taking units; `None` when the tenant is unlimited.
    pub async fn inspect(
        &self,
        tenant: &str,
        limit: Limit,
    ) -> Result<Option<(BucketQuota, BucketReport)>, CheckError> {
        let Some(quota) = BucketQuota::of(self.policy(tenant, limit)) else {
            return Ok(None);
        };
        let i = shard_of(tenant, limit, self.shards.len());
        let key = BucketKey::new(tenant, limit);
        let report = self
            .shards
            .get(i)
            .await
            .send(Inspect { key, quota })
            .await
            .map_err(|e| CheckError::Unavailable(e.to_string()))?
            .map_err(|e| CheckError::Unavailable(e.to_string()))?;
        Ok(Some((quota, report)))
    }

    /// Refills `tenant`'s bucket for `limit` on this node (and its
    /// snapshot, with write-behind).
    pub async fn reset(&self, tenant: &str, limit: Limit) -> Result<(), CheckError> {
        let Some(quota) = BucketQuota::of(self.policy(tenant, limit)) else {
            return Ok(());
        };
        let i = shard_of(tenant, limit, self.shards.len());
        let key = BucketKey::new(tenant, limit);
        self.shards
            .get(i)
            .await
            .send(Reset { key, quota })
            .await
            .map_err(|e| CheckError::Unavailable(e.to_string()))?
            .map_err(|e| CheckError::Unavailable(e.to_string()))
    }

    /// Removes and returns every resident bucket another node owns by
    /// `owner_of` (a leaving node pushes them to their new owners); the
    /// others stay, served here and written by the final flush. From then
    /// on, checks of keys not held are sent to `owner_of`.
    pub async fn take_all(&self, owner_of: OwnerOf) -> Vec<(BucketKey, Held)> {
        let shards = self.shards.all();
        let all = join_all(shards.iter().map(|s| {
            s.send(TakeAll {
                owner_of: Arc::clone(&owner_of),
            })
        }))
        .await;
        all.into_iter()
            .flat_map(|r| r.unwrap_or_default())
            .collect()
    }

    /// Installs a bucket pushed by its previous owner.
    pub async fn install(&self, key: BucketKey, state: Held) -> Result<(), CheckError> {
        let i = key.shard(self.shards.len());
        self.shards
            .get(i)
            .await
            .send(Install { key, state })
            .await
            .map_err(|e| CheckError::Unavailable(e.to_string()))
    }

    /// Writes every dirty bucket of every shard; returns how many.
    pub async fn flush_all(&self, timeout: Duration) -> Result<usize, CacheError> {
        let shards = self.shards.all();
        let sends = shards.iter().map(|s| s.send(FlushNow));
        let all = tokio::time::timeout(timeout, join_all(sends))
            .await
            .map_err(|_| CacheError::Timeout)?;
        let mut total = 0;
        for r in all {
            total += r.map_err(|e| CacheError::Unavailable(e.to_string()))??;
        }
        Ok(total)
    }

    /// Snapshots buckets this node holds no longer and could not hand to
    /// their new owner (a leaving node), so the owner restores them; returns
    /// how many were written (none without a persistent cache layer).
    pub async fn persist(&self, buckets: Vec<(BucketKey, Held)>) -> Result<usize, CacheError> {
        if !self.write_behind {
            return Ok(0);
        }
        let now = self.clock.now_ns();
        let writes: Vec<SnapshotWrite> = buckets
            .into_iter()
            .filter_map(|(key, state)| {
                let quota = BucketQuota::of(self.policy(&key.tenant, key.limit))?;
                Some(SnapshotWrite::new(key, state, quota, now))
            })
            .collect();
        let n = writes.len();
        if n > 0 {
            self.cache.store(Arc::new(writes)).await?;
        }
        Ok(n)
    }

    /// The last write of a stopping node: every dirty bucket. Shards on
    /// dedicated threads are asked to flush; shards hosted by the HTTP
    /// workers (`host`) handed their dirty set over as their workers
    /// stopped. Returns how many buckets were written.
    pub async fn final_flush(
        &self,
        host: Option<Arc<ShardHost>>,
        timeout: Duration,
    ) -> Result<usize, CacheError> {
        let Some(host) = host else {
            return self.flush_all(timeout).await;
        };
        let writes = tokio::task::spawn_blocking(move || host.final_writes(timeout))
            .await
            .unwrap_or_default();
        let n = writes.len();
        if n == 0 {
            return Ok(0);
        }
        tokio::time::timeout(timeout, self.cache.store(Arc::new(writes)))
            .await
            .unwrap_or(Err(CacheError::Timeout))
            .map(|()| n)
    }

    /// Grants `holder` a token lease of at most `ask` units of `(tenant,
    /// limit)` from this node's shard (restoring the bucket first if it is
    /// not in memory); `None` when nothing is granted.
    pub async fn grant_tokens(
        &self,
        tenant: &str,
        limit: Limit,
        holder: &str,
        ask: u64,
        (ttl_ns, margin_ns): (u64, u64),
    ) -> Result<Option<(BucketQuota, Grant)>, CheckError> {
        let Some(quota) = BucketQuota::of(self.policy(tenant, limit)) else {
            return Ok(None);
        };
        if matches!(quota, BucketQuota::Leases { .. }) {
            return Ok(None);
        }
        // A peek brings the bucket into memory (or says where it went).
        let peek = self.check_validated(
            tenant.to_string(),
            limit,
            Op::Peek,
            1,
            Some(quota),
            Serve::Owner,
        );
        peek.await?;
        let i = shard_of(tenant, limit, self.shards.len());
        let msg = GrantTokens {
            key: BucketKey::new(tenant, limit),
            quota,
            holder: holder.into(),
            ask,
            ttl_ns,
            margin_ns,
        };
        let grant = self.shards.get(i).await.send(msg).await;
        Ok(grant
            .map_err(|e| CheckError::Unavailable(e.to_string()))?
            .map(|g| (quota, g)))
    }

    /// `holder` gives back `unspent` units of token lease `id`; answers the
    /// units accepted (0: dropped).
    pub async fn return_tokens(
        &self,
        tenant: &str,
        limit: Limit,
        (holder, id): (&str, u64),
        unspent: u64,
    ) -> u64 {
        let Some(quota) = BucketQuota::of(self.policy(tenant, limit)) else {
            return 0;
        };
        let i = shard_of(tenant, limit, self.shards.len());
        let msg = ReturnTokens {
            key: BucketKey::new(tenant, limit),
            quota,
            holder: holder.into(),
            id,
            unspent,
        };
        self.shards.get(i).await.send(msg).await.unwrap_or(0)
    }

    /// Drops full buckets on every shard now; returns how many.
    pub async fn sweep_all(&self) -> usize {
        let shards = self.shards.all();
        let all = join_all(shards.iter().map(|s| s.send(SweepNow))).await;
        all.into_iter().map(|r| r.unwrap_or(0)).sum()
    }
}
