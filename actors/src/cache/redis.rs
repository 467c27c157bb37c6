//! Snapshots in Redis: `GET` on restore, one pipeline of `SET key value PX ttl`
//! per flush. One multiplexed connection (redis `ConnectionManager`, which
//! reconnects by itself), created lazily so a node starts while Redis is down.
//! Every call is bounded by the configured timeout: a hung Redis delays a
//! first check by at most that long, and never blocks a resident bucket.

use std::time::Duration;

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{CacheError, CacheLayer, SnapshotWrite};
use crate::bucket::BucketState;
use crate::key::BucketKey;
use crate::snapshot;

/// Redis-backed snapshots.
#[derive(Clone)]
pub struct RedisCacheLayer {
    conn: ConnectionManager,
    timeout: Duration,
}

impl RedisCacheLayer {
    /// Prepares a connection to `url` without connecting; must be called
    /// inside a Tokio runtime (the connection's driver task lives there).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, CacheError> {
        let client =
            redis::Client::open(url).map_err(|e| CacheError::Unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CacheError::Unavailable(e.to_string()))?;
        Ok(RedisCacheLayer { conn, timeout })
    }
}

fn map_err(e: redis::RedisError) -> CacheError {
    if e.is_timeout() {
        CacheError::Timeout
    } else {
        CacheError::Unavailable(e.to_string())
    }
}

impl CacheLayer for RedisCacheLayer {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn restore(
        &self,
        key: BucketKey,
    ) -> BoxFuture<'static, Result<Option<BucketState>, CacheError>> {
        let mut conn = self.conn.clone();
        let timeout = self.timeout;
        async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key.redis_key());
            let get = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
            let bytes = tokio::time::timeout(timeout, get)
                .await
                .map_err(|_| CacheError::Timeout)?
                .map_err(map_err)?;
            match bytes {
                None => Ok(None),
                Some(b) => snapshot::decode(&b)
                    .map(Some)
                    .map_err(|e| CacheError::Corrupt(e.to_string())),
            }
        }
        .boxed()
    }

    fn store(&self, writes: Arc<Vec<SnapshotWrite>>) -> BoxFuture<'static, Result<(), CacheError>> {
        let mut conn = self.conn.clone();
        // A large batch takes longer than one round trip; allow for it.
        let timeout = self.timeout * (1 + (writes.len() / 10_000) as u32);
        async move {
            let mut pipe = redis::pipe();
            for w in writes.iter() {
                pipe.cmd("SET")
                    .arg(w.key.redis_key())
                    .arg(snapshot::encode(&w.state))
                    .arg("PX")
                    .arg(w.ttl_ms.max(1))
                    .ignore();
            }
            tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| CacheError::Timeout)?
                .map_err(map_err)
        }
        .boxed()
    }
}
