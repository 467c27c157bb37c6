//! Snapshots in Redis: `GET` on restore, one pipeline of `SET key value PX ttl`
//! per flush (on a Redis Cluster, one pipeline per slot). The connections
//! (any mode, see [`super::redis_client`]) are created lazily so a node
//! starts while Redis is down. Every call is bounded by the configured
//! timeout: a hung Redis delays a first check by at most that long, and
//! never blocks a resident bucket.
//!
//! While Redis fails, restores fail fast instead of each waiting for the
//! timeout (a circuit breaker): after a failed call, restores are refused at
//! once until a snapshot batch succeeds again (the shards keep retrying those
//! with backoff) or [`BREAKER_PROBE`] has passed, when one restore tries.
//!
//! The layer also watches for Redis losing its data ([`super::redis_loss`])
//! and reports it through [`CacheLayer::loss_epoch`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use prometheus_client::metrics::histogram::Histogram;
use redis::cluster_routing::Slot;

use super::redis_client::RedisClient;
use super::redis_loss::LossWatch;
use super::{CacheError, CacheLayer, SnapshotWrite};
use crate::core::held::Held;
use crate::core::key::BucketKey;
use crate::core::snapshot;

/// Redis-backed snapshots.
#[derive(Clone)]
pub struct RedisCacheLayer {
    client: RedisClient,
    breaker: Arc<Breaker>,
    latency: RedisLatency,
    loss: Arc<LossWatch>,
}

/// Round trips of restores (`GET`) and snapshot batches (pipelines),
/// failures included: handles of histograms registered by whoever builds
/// the layer (`metrics::cache::register_redis`).
#[derive(Clone, Debug)]
pub struct RedisLatency {
    pub restore: Histogram,
    pub store: Histogram,
}

/// After a failure, how long restores are refused without trying (unless a
/// snapshot batch succeeds first).
pub const BREAKER_PROBE: Duration = Duration::from_secs(2);

/// Open after a failed call; closed by a successful one.
struct Breaker {
    epoch: Instant,
    /// Nanoseconds since `epoch` until which restores are refused; 0: closed.
    open_until: AtomicU64,
}

impl Breaker {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
    fn is_open(&self) -> bool {
        let until = self.open_until.load(Relaxed);
        until != 0 && self.now() < until
    }
    fn trip(&self) {
        let until = self.now() + BREAKER_PROBE.as_nanos() as u64;
        self.open_until.store(until.max(1), Relaxed);
    }
    fn close(&self) {
        self.open_until.store(0, Relaxed);
    }
}

impl RedisCacheLayer {
    /// Snapshots through `client`; `node_id` names this node's marker keys
    /// (data-loss detection); call round trips go to `latency`.
    pub fn new(client: RedisClient, node_id: &str, latency: RedisLatency) -> Self {
        RedisCacheLayer {
            loss: Arc::new(LossWatch::start(&client, node_id)),
            client,
            breaker: Arc::new(Breaker {
                epoch: Instant::now(),
                open_until: AtomicU64::new(0),
            }),
            latency,
        }
    }
}

/// `writes` as pipelines: one, or one per slot on a Redis Cluster (a
/// cluster pipeline must stay within one slot).
fn pipelines(writes: &[SnapshotWrite], cluster: bool) -> Vec<redis::Pipeline> {
    let mut by_slot: HashMap<Option<Slot>, redis::Pipeline> = HashMap::new();
    for w in writes {
        let key = w.key.redis_key();
        let slot = cluster.then(|| Slot::for_key(&key));
        by_slot
            .entry(slot)
            .or_default()
            .cmd("SET")
            .arg(key)
            .arg(snapshot::encode(&w.state))
            .arg("PX")
            .arg(w.ttl_ms.max(1))
            .ignore();
    }
    by_slot.into_values().collect()
}

impl CacheLayer for RedisCacheLayer {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn restore(&self, key: BucketKey) -> BoxFuture<'static, Result<Option<Held>, CacheError>> {
        if self.breaker.is_open() {
            return futures_util::future::ready(Err(CacheError::Unavailable(
                "redis failed moments ago; not waiting for it".into(),
            )))
            .boxed();
        }
        let this = self.clone();
        let timeout = self.client.timeout();
        self.client.run(async move {
            let started = std::time::Instant::now();
            let answer = tokio::time::timeout(timeout, async {
                let mut conn = this.client.conn().await.map_err(Err)?;
                let mut cmd = redis::cmd("GET");
                cmd.arg(key.redis_key());
                cmd.query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
                    .map_err(Ok)
            })
            .await;
            this.latency
                .restore
                .observe(started.elapsed().as_secs_f64());
            let bytes = match answer {
                Err(_) => {
                    this.breaker.trip();
                    return Err(this.client.timed_out());
                }
                Ok(Err(e)) => {
                    this.breaker.trip();
                    return Err(match e {
                        Ok(e) => this.client.failed(e),
                        Err(e) => e,
                    });
                }
                Ok(Ok(bytes)) => {
                    this.breaker.close();
                    bytes
                }
            };
            match bytes {
                None => Ok(None),
                Some(b) => snapshot::decode(&b)
                    .map(Some)
                    .map_err(|e| CacheError::Corrupt(e.to_string())),
            }
        })
    }

    fn store(&self, writes: Arc<Vec<SnapshotWrite>>) -> BoxFuture<'static, Result<(), CacheError>> {
        let this = self.clone();
        // A large batch takes longer than one round trip; allow for it.
        let timeout = self.client.timeout() * (1 + (writes.len() / 10_000) as u32);
        self.client.run(async move {
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(timeout, async {
                let conn = this.client.conn().await?;
                let sent = pipelines(&writes, this.client.is_cluster())
                    .into_iter()
                    .map(|pipe| {
                        let mut conn = conn.clone();
                        async move { pipe.query_async::<()>(&mut conn).await }
                    });
                for r in futures_util::future::join_all(sent).await {
                    r.map_err(|e| this.client.failed(e))?;
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|_| Err(this.client.timed_out()));
            this.latency.store.observe(started.elapsed().as_secs_f64());
            match &result {
                Ok(()) => this.breaker.close(),
                Err(_) => this.breaker.trip(),
            }
            result
        })
    }

    fn loss_epoch(&self) -> u64 {
        self.loss.epoch() + self.client.switches()
    }
}
