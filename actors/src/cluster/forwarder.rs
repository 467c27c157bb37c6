//! Forwarding to one peer: the [`PeerForwarder`] actor batches checks bound
//! for the same owner into one request and hands each answer back to the
//! check that asked. Batching is Nagle-style: a check finding no batch in
//! flight is sent at once; while one is out, checks gather and go when it
//! returns, when `batch_max` is reached or after `batch_wait`, whichever
//! comes first. The wire call sits behind [`PeerClient`]: the
//! [`ClusterClient`] for real ([`RemotePeer`]), an in-process function in
//! unit tests.
//!
//! Forwarders live on the thread that uses them (one per HTTP worker and
//! peer), so a forwarded check crosses no extra thread before the network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::{FutureExt, LocalBoxFuture};
use tokio::sync::oneshot;

use crate::cluster::rpc::client::{CallError, ClusterClient, Rpc};
use crate::cluster::rpc::wire::{self, BatchRequest, BatchResponse, WireAnswer, WireCheck};
use crate::metrics::ClusterMetrics;

/// Sends one encoded batch to a peer and returns the encoded answer.
pub trait PeerClient: 'static {
    fn call(&self, body: Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, CallError>>;
}

/// The real peer: the batch RPC through the [`ClusterClient`].
pub struct RemotePeer {
    client: ClusterClient,
    addr: SocketAddr,
}

impl RemotePeer {
    pub fn new(client: ClusterClient, addr: SocketAddr) -> Self {
        RemotePeer { client, addr }
    }
}

impl PeerClient for RemotePeer {
    fn call(&self, body: Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, CallError>> {
        self.client
            .send(self.addr, BatchRequest::PATH, body)
            .boxed_local()
    }
}

/// Forward one check to this forwarder's peer.
#[derive(Debug, Message)]
#[rtype(result = "Result<WireAnswer, CallError>")]
pub struct Forward(pub WireCheck);

type Reply = oneshot::Sender<Result<WireAnswer, CallError>>;

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
        self.metrics.batch_size.observe(checks.len() as f64);
        let n = checks.len();
        let body = wire::encode(&BatchRequest {
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
                        wire::decode(&bytes).map_err(|e| CallError::BadAnswer(e.to_string()))?;
                    if resp.results.len() != n {
                        return Err(CallError::BadAnswer(format!(
                            "{} results for {n} checks",
                            resp.results.len()
                        )));
                    }
                    Ok(resp.results)
                });
                metrics
                    .forward_latency
                    .observe(started.elapsed().as_secs_f64());
                match answer {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(e) => {
                        metrics.forward_errors.inc();
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
    type Result = ResponseFuture<Result<WireAnswer, CallError>>;

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
                .unwrap_or_else(|_| Err(CallError::Unreachable("forwarder stopped".into())))
        })
    }
}
