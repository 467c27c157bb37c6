//! How the node reaches Redis, whatever its deployment: one server (a redis
//! `ConnectionManager`, which reconnects by itself), a Redis Cluster (redis
//! `cluster-async`, which follows slot moves and failovers by itself) or a
//! master found through Sentinel (redis-rs has no manager for it: the
//! connection is dropped after any error, READONLY included, and the next
//! call asks the sentinels for the master again). TLS (`rediss://`, a CA
//! file, a client certificate) and ACL users (`user:password@`) apply to
//! every mode.
//!
//! All Redis I/O runs on a runtime of its own thread, so the connections
//! never belong to a thread that stops earlier (an HTTP worker hosting
//! shards stops before the node's final flush). Error texts never hold a
//! password.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::future::{BoxFuture, FutureExt};
use llmtrace_cluster_config::redis::redact;
use llmtrace_cluster_config::{RedisConfig, RedisMode};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ErrorKind, IntoConnectionInfo, RedisError, RedisFuture,
    TlsCertificates, TlsMode,
};
use tracing::warn;

use super::CacheError;

/// A handle on Redis (clones share the connections).
#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// The runtime (thread `llmtrace-redis`) every Redis call runs on.
    io: tokio::runtime::Handle,
    timeout: Duration,
    /// The configured URLs, to scrub their passwords from error texts.
    urls: Vec<String>,
    /// Bumped each time calls start going to another server than before
    /// (Sentinel: a new master), whose data may lag the old one's.
    switches: AtomicU64,
}

enum Target {
    Standalone {
        client: redis::Client,
        /// Swapped for a new one when the stream is garbled (the manager
        /// itself only reconnects after I/O errors).
        conn: ArcSwap<ConnectionManager>,
    },
    Cluster(ClusterConnection),
    Sentinel(Sentinel),
}

struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the current master; `None` after an error.
    conn: ArcSwapOption<MultiplexedConnection>,
    /// `host:port` of the master last connected to.
    master: std::sync::Mutex<Option<String>>,
}

/// One connection of any mode; commands and pipelines run on it as on a
/// plain redis connection (a cluster pipeline must stay within one slot).
#[derive(Clone)]
pub enum RedisConn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
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

/// The TLS material the configuration names, read from its files.
fn certificates(c: &RedisConfig) -> Result<Option<TlsCertificates>, CacheError> {
    if c.ca_file.is_none() && c.client_cert.is_none() {
        return Ok(None);
    }
    let read = |p: &Path| {
        std::fs::read(p)
            .map_err(|e| CacheError::Unavailable(format!("cannot read {}: {e}", p.display())))
    };
    let client_tls = match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert: c.ca_file.as_deref().map(read).transpose()?,
    }))
}

impl RedisClient {
    /// Prepares the connections `config` describes, without connecting (a
    /// node starts while Redis is down).
    pub fn open(config: &RedisConfig) -> Result<Self, CacheError> {
        let io = io_runtime()?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let scrub = |e: RedisError| CacheError::Unavailable(redact(&e.to_string(), &config.urls));
        let certs = certificates(config)?;
        let target = {
            let _in_io = io.enter();
            match config.mode {
                RedisMode::Standalone => {
                    let url = config.urls[0].as_str();
                    let client = match certs {
                        Some(certs) => redis::Client::build_with_tls(url, certs),
                        None => redis::Client::open(url),
                    }
                    .map_err(scrub)?;
                    let conn = manager(&client, timeout)?;
                    Target::Standalone {
                        client,
                        conn: ArcSwap::from_pointee(conn),
                    }
                }
                RedisMode::Cluster => {
                    let mut builder =
                        redis::cluster::ClusterClientBuilder::new(config.urls.clone())
                            .connection_timeout(timeout)
                            .response_timeout(timeout);
                    if let Some(certs) = certs {
                        builder = builder.certs(certs);
                    }
                    let client = builder.build().map_err(scrub)?;
                    Target::Cluster(
                        client.get_pending_async_connection_with_config(
                            redis::cluster::ClusterConfig::new()
                                .set_connection_timeout(timeout)
                                .set_response_timeout(timeout),
                        ),
                    )
                }
                RedisMode::Sentinel => Target::Sentinel(sentinel(config, certs).map_err(scrub)?),
            }
        };
        Ok(RedisClient {
            inner: Arc::new(Inner {
                target,
                io,
                timeout,
                urls: config.urls.clone(),
                switches: AtomicU64::new(0),
            }),
        })
    }

    /// Bound on one call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether pipelines must be split by slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster(_))
    }

    /// How many times calls started going to another server (a Sentinel
    /// failover), whose data may lag the previous one's.
    pub fn switches(&self) -> u64 {
        self.inner.switches.load(Relaxed)
    }

    /// Runs `fut` on the Redis runtime and awaits it from anywhere.
    pub fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, CacheError>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, CacheError>> {
        let task = self.inner.io.spawn(fut);
        async move {
            task.await
                .map_err(|e| CacheError::Unavailable(format!("redis task failed: {e}")))?
        }
        .boxed()
    }

    /// Runs `task` on the Redis runtime for the life of the process.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        drop(self.inner.io.spawn(task));
    }

    /// A connection to the server(s) that take writes. Runs on the Redis
    /// runtime (see [`RedisClient::run`]).
    pub async fn conn(&self) -> Result<RedisConn, CacheError> {
        match &self.inner.target {
            Target::Standalone { conn, .. } => Ok(RedisConn::Standalone(ConnectionManager::clone(
                &conn.load(),
            ))),
            Target::Cluster(c) => Ok(RedisConn::Cluster(c.clone())),
            Target::Sentinel(s) => match s.conn.load_full() {
                Some(c) => Ok(RedisConn::Sentinel(MultiplexedConnection::clone(&c))),
                None => self.resolve_master(s).await.map(RedisConn::Sentinel),
            },
        }
    }

    /// Asks the sentinels for the master and connects to it.
    async fn resolve_master(&self, s: &Sentinel) -> Result<MultiplexedConnection, CacheError> {
        let mut client = s.client.lock().await;
        if let Some(c) = s.conn.load_full() {
            // Another call resolved it while this one waited for the lock.
            return Ok(MultiplexedConnection::clone(&c));
        }
        let master = client
            .async_get_client()
            .await
            .map_err(|e| self.failed(e))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(self.inner.timeout));
        let conn = master
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.failed(e))?;
        let addr = master.get_connection_info().addr().to_string();
        let mut last = s.master.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(addr.as_str()) {
            if let Some(old) = last.as_deref() {
                warn!(from = old, to = %addr, "redis master changed (sentinel failover)");
                self.inner.switches.fetch_add(1, Relaxed);
            }
            *last = Some(addr);
        }
        s.conn.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// Maps an error of a call, and prepares the next call to recover from
    /// it. Runs on the Redis runtime.
    pub fn failed(&self, e: RedisError) -> CacheError {
        match &self.inner.target {
            // A reply that does not parse means the stream is not (or no
            // longer) Redis: start over on a fresh connection.
            Target::Standalone { client, conn }
                if matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType) =>
            {
                if let Ok(fresh) = manager(client, self.inner.timeout) {
                    conn.store(Arc::new(fresh));
                }
            }
            // Whatever failed (the master died, was demoted and answers
            // READONLY, timed out), the next call asks the sentinels again.
            Target::Sentinel(s) => s.conn.store(None),
            _ => {}
        }
        if e.is_timeout() {
            CacheError::Timeout
        } else {
            CacheError::Unavailable(redact(&e.to_string(), &self.inner.urls))
        }
    }

    /// After a call timed out: in Sentinel mode the master may be gone
    /// without an error, so the next call asks the sentinels again.
    pub fn timed_out(&self) -> CacheError {
        if let Target::Sentinel(s) = &self.inner.target {
            s.conn.store(None);
        }
        CacheError::Timeout
    }
}

/// A lazily connecting manager; must run inside the Redis runtime.
fn manager(client: &redis::Client, timeout: Duration) -> Result<ConnectionManager, CacheError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| CacheError::Unavailable(e.to_string()))
}

/// A Sentinel client for the configured master: the sentinels' addresses
/// come from the URLs, the user, password and database of the first URL
/// apply to the master, `rediss://` to both.
fn sentinel(config: &RedisConfig, certs: Option<TlsCertificates>) -> redis::RedisResult<Sentinel> {
    let infos = config
        .urls
        .iter()
        .map(|u| u.as_str().into_connection_info())
        .collect::<redis::RedisResult<Vec<_>>>()?;
    let tls = config.urls[0].starts_with("rediss://");
    let first = infos[0].redis_settings().clone();
    let master = config.sentinel_master.as_deref().unwrap_or_default();
    let sentinels = infos.iter().map(|i| i.addr().clone());
    let mut builder = SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
        .set_client_to_redis_db(first.db());
    if let Some(user) = first.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(pw) = first.password() {
        builder = builder.set_client_to_redis_password(pw);
    }
    if tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certs) = certs {
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
    }
    Ok(Sentinel {
        client: tokio::sync::Mutex::new(builder.build()?),
        conn: ArcSwapOption::empty(),
        master: std::sync::Mutex::new(None),
    })
}
