//! Snapshots in Redis: `GET` on restore, one pipeline of `SET key value PX ttl`
//! per flush. One multiplexed connection (redis `ConnectionManager`, which
//! reconnects by itself), created lazily so a node starts while Redis is down.
//! Every call is bounded by the configured timeout: a hung Redis delays a
//! first check by at most that long, and never blocks a resident bucket.
//!
//! All Redis I/O runs on a runtime of its own thread, so the connection
//! never belongs to a thread that stops earlier (an HTTP worker hosting
//! shards stops before the node's final flush).
//!
//! While Redis fails, restores fail fast instead of each waiting for the
//! timeout (a circuit breaker): after a failed call, restores are refused at
//! once until a snapshot batch succeeds again (the shards keep retrying those
//! with backoff) or [`BREAKER_PROBE`] has passed, when one restore tries.

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::future::{BoxFuture, FutureExt};
use prometheus_client::metrics::histogram::Histogram;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::ErrorKind;

use super::{CacheError, CacheLayer, SnapshotWrite};
use crate::core::held::Held;
use crate::core::key::BucketKey;
use crate::core::snapshot;

/// Redis-backed snapshots.
#[derive(Clone)]
pub struct RedisCacheLayer {
    /// Swapped for a new one when the stream is garbled (the manager itself
    /// only reconnects after I/O errors).
    conn: Arc<ArcSwap<ConnectionManager>>,
    client: redis::Client,
    timeout: Duration,
    /// The runtime (thread `llmtrace-redis`) every Redis call runs on.
    io: tokio::runtime::Handle,
    breaker: Arc<Breaker>,
    latency: RedisLatency,
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

/// Starts the thread that runs Redis I/O for the life of the process.
fn io_runtime() -> Result<tokio::runtime::Handle, CacheError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("llmtrace-redis".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(std::future::pending::<()>());
        })
        .map_err(|e| CacheError::Unavailable(e.to_string()))?;
    rx.recv()
        .map_err(|e| CacheError::Unavailable(e.to_string()))?
        .map_err(CacheError::Unavailable)
}

/// Runs `fut` on the Redis runtime and awaits it from anywhere.
fn on_io<T: Send + 'static>(
    io: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = Result<T, CacheError>> + Send + 'static,
) -> BoxFuture<'static, Result<T, CacheError>> {
    let task = io.spawn(fut);
    async move {
        task.await
            .map_err(|e| CacheError::Unavailable(format!("redis task failed: {e}")))?
    }
    .boxed()
}

impl RedisCacheLayer {
    /// Prepares a connection to `url` without connecting; call round trips
    /// go to `latency`.
    pub fn new(url: &str, timeout: Duration, latency: RedisLatency) -> Result<Self, CacheError> {
        let client =
            redis::Client::open(url).map_err(|e| CacheError::Unavailable(e.to_string()))?;
        let io = io_runtime()?;
        let conn = {
            let _in_io = io.enter();
            connect(&client, timeout)?
        };
        Ok(RedisCacheLayer {
            conn: Arc::new(ArcSwap::from_pointee(conn)),
            client,
            timeout,
            io,
            breaker: Arc::new(Breaker {
                epoch: Instant::now(),
                open_until: AtomicU64::new(0),
            }),
            latency,
        })
    }

    /// Maps an error; a reply that does not parse means the stream is not
    /// (or no longer) Redis: start over on a fresh connection. Runs on the
    /// Redis runtime.
    fn failed(&self, e: redis::RedisError) -> CacheError {
        if matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType) {
            if let Ok(fresh) = connect(&self.client, self.timeout) {
                self.conn.store(Arc::new(fresh));
            }
        }
        map_err(e)
    }
}

/// A lazily connecting manager; must run inside the Redis runtime.
fn connect(client: &redis::Client, timeout: Duration) -> Result<ConnectionManager, CacheError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| CacheError::Unavailable(e.to_string()))
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

    fn restore(&self, key: BucketKey) -> BoxFuture<'static, Result<Option<Held>, CacheError>> {
        if self.breaker.is_open() {
            return futures_util::future::ready(Err(CacheError::Unavailable(
                "redis failed moments ago; not waiting for it".into(),
            )))
            .boxed();
        }
        let mut conn = ConnectionManager::clone(&self.conn.load());
        let this = self.clone();
        let timeout = self.timeout;
        on_io(&self.io, async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key.redis_key());
            let get = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
            let started = std::time::Instant::now();
            let answer = tokio::time::timeout(timeout, get).await;
            this.latency
                .restore
                .observe(started.elapsed().as_secs_f64());
            let bytes = match answer {
                Err(_) => {
                    this.breaker.trip();
                    return Err(CacheError::Timeout);
                }
                Ok(Err(e)) => {
                    this.breaker.trip();
                    return Err(this.failed(e));
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
        let mut conn = ConnectionManager::clone(&self.conn.load());
        let this = self.clone();
        // A large batch takes longer than one round trip; allow for it.
        let timeout = self.timeout * (1 + (writes.len() / 10_000) as u32);
        on_io(&self.io, async move {
            let mut pipe = redis::pipe();
            for w in writes.iter() {
                pipe.cmd("SET")
                    .arg(w.key.redis_key())
                    .arg(snapshot::encode(&w.state))
                    .arg("PX")
                    .arg(w.ttl_ms.max(1))
                    .ignore();
            }
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| CacheError::Timeout)
                .and_then(|r| r.map_err(|e| this.failed(e)));
            this.latency.store.observe(started.elapsed().as_secs_f64());
            match &result {
                Ok(()) => this.breaker.close(),
                Err(_) => this.breaker.trip(),
            }
            result
        })
    }
}
