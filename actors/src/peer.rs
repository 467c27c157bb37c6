//! Forwarding to one peer: the [`PeerForwarder`] actor batches checks bound
//! for the same owner into one request and hands each answer back to the
//! check that asked. Batching is Nagle-style: a check finding no batch in
//! flight is sent at once; while one is out, checks gather and go when it
//! returns, when `batch_max` is reached or after `batch_wait`, whichever
//! comes first. The wire call sits behind [`PeerClient`]: awc + bincode
//! for real ([`AwcPeerClient`]), an in-process function in unit tests.
//!
//! Forwarders live on the thread that uses them (one per HTTP worker and
//! peer), so a forwarded check crosses no extra thread before the network.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::{FutureExt, LocalBoxFuture};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::cluster_metrics::ClusterMetrics;
use crate::rpc::{self, BatchRequest, BatchResponse, WireAnswer, WireCheck};

/// Why a forward got no answer from the owner.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ForwardError {
    #[error("owner did not answer within the forward timeout")]
    Timeout,
    #[error("owner unreachable: {0}")]
    Unreachable(String),
    #[error("owner refused the batch: {0}")]
    Rejected(String),
    #[error("owner answered garbage: {0}")]
    BadAnswer(String),
}

/// Sends one encoded batch to a peer and returns the encoded answer.
pub trait PeerClient: 'static {
    fn call(&self, body: Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, ForwardError>>;
}

/// The real client: HTTP/1.1 keep-alive POST of the bincode body to the
/// peer's cluster listener, with the cluster secret when configured.
pub struct AwcPeerClient {
    client: awc::Client,
    url: String,
    secret: Option<String>,
}

impl AwcPeerClient {
    /// Must be created on the thread that will use it (awc is not `Send`).
    pub fn new(
        cluster_addr: std::net::SocketAddr,
        secret: Option<String>,
        timeout: Duration,
    ) -> Self {
        let client = awc::Client::builder()
            .timeout(timeout)
            .disable_redirects()
            .connector(awc::Connector::new().timeout(timeout).limit(64))
            .finish();
        AwcPeerClient {
            client,
            url: format!("http://{cluster_addr}{}", rpc::CHECK_PATH),
            secret,
        }
    }
}

impl PeerClient for AwcPeerClient {
    fn call(&self, body: Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, ForwardError>> {
        let mut req = self
            .client
            .post(&self.url)
            .insert_header(("content-type", "application/octet-stream"));
        if let Some(s) = &self.secret {
            req = req.insert_header((rpc::SECRET_HEADER, s.as_str()));
        }
        async move {
            let mut resp = req.send_body(body).await.map_err(|e| match e {
                awc::error::SendRequestError::Timeout => ForwardError::Timeout,
                other => ForwardError::Unreachable(other.to_string()),
            })?;
            let status = resp.status();
            let bytes = resp
                .body()
                .limit(rpc::MAX_BODY_BYTES)
                .await
                .map_err(|e| ForwardError::BadAnswer(e.to_string()))?;
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string();
                return Err(ForwardError::Rejected(format!("{status}: {text}")));
            }
            Ok(bytes.to_vec())
        }
        .boxed_local()
    }
}

/// Forward one check to this forwarder's peer.
#[derive(Debug, Message)]
#[rtype(result = "Result<WireAnswer, ForwardError>")]
pub struct Forward(pub WireCheck);

type Reply = oneshot::Sender<Result<WireAnswer, ForwardError>>;

/// Batching settings of a forwarder.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub max_items: usize,
    pub max_wait: Duration,
}

/// Batches checks for one peer.
pub struct PeerForwarder {
    /// Node id of this node: the scope of the check ids we send.
    origin: String,
    client: Box<dyn PeerClient>,
    settings: BatchSettings,
    metrics: Arc<ClusterMetrics>,
    /// Checks waiting for the next batch, with whom to answer.
    buffer: Vec<(WireCheck, Reply)>,
    /// The timed flush scheduled for the current buffer.
    scheduled: Option<SpawnHandle>,
    /// Batches sent and not yet answered.
    in_flight: usize,
}

impl PeerForwarder {
    pub fn new(
        origin: String,
        client: Box<dyn PeerClient>,
        settings: BatchSettings,
        metrics: Arc<ClusterMetrics>,
    ) -> Self {
        PeerForwarder {
            origin,
            client,
            settings,
            metrics,
            buffer: Vec::new(),
            scheduled: None,
            in_flight: 0,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.scheduled.take() {
            ctx.cancel_future(timer);
        }
        if self.buffer.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.buffer);
        let (checks, replies): (Vec<WireCheck>, Vec<Reply>) = batch.into_iter().unzip();
        self.metrics.observe_batch(checks.len());
        let n = checks.len();
        let body = rpc::encode(&BatchRequest {
            origin: self.origin.clone(),
            checks,
        });
        let call = self.client.call(body);
        self.in_flight += 1;
        let metrics = Arc::clone(&self.metrics);
        let started = Instant::now();
        ctx.spawn(
            async move {
                let answer = call.await.and_then(|bytes| {
                    let resp: BatchResponse =
                        rpc::decode(&bytes).map_err(|e| ForwardError::BadAnswer(e.to_string()))?;
                    if resp.results.len() != n {
                        return Err(ForwardError::BadAnswer(format!(
                            "{} results for {n} checks",
                            resp.results.len()
                        )));
                    }
                    Ok(resp.results)
                });
                metrics
                    .forward_latency
                    .observe_ns(started.elapsed().as_nanos() as u64);
                match answer {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        metrics.forward_errors.fetch_add(1, Relaxed);
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                act.in_flight -= 1;
                // Checks that queued while this batch was out go now.
                if !act.buffer.is_empty() {
                    act.flush(ctx);
                }
            }),
        );
    }
}

/// Messages queued before senders wait (backpressure, not loss).
const MAILBOX_CAPACITY: usize = 1 << 16;

impl Actor for PeerForwarder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Handler<Forward> for PeerForwarder {
    type Result = ResponseFuture<Result<WireAnswer, ForwardError>>;

    fn handle(&mut self, msg: Forward, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.buffer.push((msg.0, tx));
        // Nagle-style: with nothing in flight a check goes at once (no added
        // latency when idle); while a batch is out, checks gather until it
        // returns, the batch is full, or `max_wait` passes.
        if self.in_flight == 0
            || self.buffer.len() >= self.settings.max_items
            || self.settings.max_wait.is_zero()
        {
            self.flush(ctx);
        } else if self.scheduled.is_none() {
            self.scheduled = Some(ctx.run_later(self.settings.max_wait, |act, ctx| {
                act.scheduled = None;
                act.flush(ctx);
            }));
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(ForwardError::Unreachable("forwarder stopped".into())))
        })
    }
}
