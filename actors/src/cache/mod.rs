//! Where bucket snapshots go: the [`CacheLayer`] trait and its two
//! implementations, [`InMemoryCacheLayer`] (the embedded single-node default)
//! and [`RedisCacheLayer`] (survives restarts and failover; its connections
//! in [`redis_client`], its data-loss detection in [`redis_loss`]).
//!
//! Shards call it off their hot path: `restore` on the first check of a key
//! that is not in memory, `store` with one batch of dirty buckets per
//! snapshot interval.

mod memory;
mod redis;
pub mod redis_client;
pub mod redis_loss;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use thiserror::Error;

use crate::core::bucket::BucketQuota;
use crate::core::held::Held;
use crate::core::key::BucketKey;
use crate::core::snapshot;

pub use self::memory::InMemoryCacheLayer;
pub use self::redis::{RedisCacheLayer, RedisLatency};
pub use self::redis_client::RedisClient;

/// One snapshot to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotWrite {
    pub key: BucketKey,
    pub state: Held,
    /// Time to live: until the bucket would be full again, plus a margin.
    pub ttl_ms: u64,
}

impl SnapshotWrite {
    /// The write of `state` under `quota` at `now_ns`: kept until the
    /// bucket would be full again (a full bucket carries no information).
    pub fn new(key: BucketKey, state: Held, quota: BucketQuota, now_ns: u64) -> Self {
        SnapshotWrite {
            ttl_ms: snapshot::ttl_ms(&state, quota, now_ns),
            key,
            state,
        }
    }
}

/// A failed cache operation. Never fatal: a failed restore starts the bucket
/// full, a failed store is retried.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CacheError {
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    #[error("cache operation timed out")]
    Timeout,
    #[error("stored snapshot unusable: {0}")]
    Corrupt(String),
}

/// Storage of bucket snapshots.
pub trait CacheLayer: Send + Sync + 'static {
    /// Short name for logs and metrics (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// The last snapshot of `key`, if any and not expired.
    fn restore(&self, key: BucketKey) -> BoxFuture<'static, Result<Option<Held>, CacheError>>;

    /// Writes a batch of snapshots (Redis: one pipeline).
    fn store(&self, writes: Arc<Vec<SnapshotWrite>>) -> BoxFuture<'static, Result<(), CacheError>>;

    /// Goes up each time the store may have lost snapshots it acknowledged
    /// (Redis flushed, restarted empty, or failed over to a lagging
    /// replica): shards then rewrite every resident bucket that is not
    /// full. Constant for a store that cannot lose data behind the node's
    /// back.
    fn loss_epoch(&self) -> u64 {
        0
    }
}
