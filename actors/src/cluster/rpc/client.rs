//! [`ClusterClient`]: the one node-to-node client. Every RPC (forwarded
//! batches, handoff pulls, bucket pushes, tenant reports) goes through it:
//! the URL is built from the request type's [`Rpc::PATH`] (`https://` with
//! the cluster's mutual TLS, see [`super::tls`]), the cluster secret header
//! is set, the answer is read within
//! [`MAX_BODY_BYTES`](super::wire::MAX_BODY_BYTES) and decoded as the
//! request type's [`Rpc::Response`].
//!
//! awc is not `Send`: each thread keeps its own HTTP client (one connection
//! pool per thread and timeout), made on first use. A `ClusterClient` itself
//! is cheap to clone and may be shared across threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bincode::{Decode, Encode};
use thiserror::Error;

use super::wire::{self, MAX_BODY_BYTES, SECRET_HEADER};

/// A node-to-node request: where it is served and what it answers.
pub trait Rpc: Encode {
    /// HTTP path on the cluster listener.
    const PATH: &'static str;
    /// The decoded answer.
    type Response: Decode<()>;
}

/// Why a call got no answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CallError {
    #[error("peer did not answer within the timeout")]
    Timeout,
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("peer refused the request: {0}")]
    Rejected(String),
    #[error("peer answered garbage: {0}")]
    BadAnswer(String),
}

/// Simultaneous connections of one thread's pool, to all peers together.
const POOL_LIMIT: usize = 256;

thread_local! {
    /// This thread's HTTP client per timeout (ms) and TLS configuration
    /// (its address; 0: plain HTTP).
    static CLIENTS: RefCell<HashMap<(u128, usize), awc::Client>> = RefCell::new(HashMap::new());
}

/// Calls other nodes' cluster listeners.
#[derive(Clone)]
pub struct ClusterClient {
    /// Sent in [`SECRET_HEADER`] when the cluster has one.
    secret: Option<Arc<str>>,
    /// Bound on connecting and on the whole answer of one call.
    timeout: Duration,
    /// Mutual TLS to the peers' cluster listeners, when configured.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClusterClient {
    pub fn new(secret: Option<&str>, timeout: Duration) -> Self {
        ClusterClient {
            secret: secret.map(Arc::from),
            timeout,
            tls: None,
        }
    }

    /// Calls peers over TLS with `config` (see [`super::tls::ClusterTls`]).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    fn http(&self) -> awc::Client {
        let timeout = self.timeout;
        let tls_id = self.tls.as_ref().map_or(0, |t| Arc::as_ptr(t) as usize);
        CLIENTS.with(|c| {
            c.borrow_mut()
                .entry((timeout.as_millis(), tls_id))
                .or_insert_with(|| {
                    let mut connector = awc::Connector::new()
                        .connector(crate::nodelay::connector())
                        .timeout(timeout)
                        .limit(POOL_LIMIT);
                    if let Some(tls) = &self.tls {
                        connector = connector.rustls_0_23(Arc::clone(tls));
                    }
                    awc::Client::builder()
                        .timeout(timeout)
                        .disable_redirects()
                        .connector(connector)
                        .finish()
                })
                .clone()
        })
    }

    /// Bound on connecting and on the whole answer of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A WebSocket upgrade request to `path` on the node at `addr`, with
    /// the cluster secret (see [`super::stream`]).
    pub fn ws(&self, addr: SocketAddr, path: &str) -> awc::ws::WebsocketsRequest {
        let mut req = self.http().ws(format!("{}://{addr}{path}", self.scheme()));
        if let Some(s) = &self.secret {
            req = req.header(SECRET_HEADER, &**s);
        }
        req
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Sends `req` to the node at `addr` and decodes its answer.
    pub fn call<R: Rpc>(
        &self,
        addr: SocketAddr,
        req: &R,
    ) -> impl Future<Output = Result<R::Response, CallError>> + 'static {
        let sent = self.send(addr, R::PATH, wire::encode(req));
        async move {
            let bytes = sent.await?;
            wire::decode(&bytes).map_err(|e| CallError::BadAnswer(e.to_string()))
        }
    }

    /// Sends an encoded body to `path` on the node at `addr` and returns the
    /// answer's body (a non-2xx status is [`CallError::Rejected`]). The
    /// request is built now, sent when the future is first polled.
    pub fn send(
        &self,
        addr: SocketAddr,
        path: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, CallError>> + 'static {
        let mut req = self
            .http()
            .post(format!("{}://{addr}{path}", self.scheme()))
            .insert_header(("content-type", "application/octet-stream"));
        if let Some(s) = &self.secret {
            req = req.insert_header((SECRET_HEADER, &**s));
        }
        async move {
            let mut resp = req.send_body(body).await.map_err(|e| match e {
                awc::error::SendRequestError::Timeout => CallError::Timeout,
                other => CallError::Unreachable(other.to_string()),
            })?;
            let status = resp.status();
            let bytes = resp
                .body()
                .limit(MAX_BODY_BYTES)
                .await
                .map_err(|e| CallError::BadAnswer(e.to_string()))?;
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string();
                return Err(CallError::Rejected(format!("{status}: {text}")));
            }
            Ok(bytes.to_vec())
        }
    }
}
