//! The forwarding stream: forwarded batches to one peer over one long-lived
//! connection instead of one HTTP request each. The connection is a
//! WebSocket upgrade of `GET` [`STREAM_PATH`] on the peer's cluster listener
//! (same port, same mutual TLS, the cluster secret checked once, at the
//! upgrade). Each binary message is one [`frame`]: an 8-byte batch id, then
//! the batch exactly as the HTTP route takes it ([`super::wire::encode`],
//! version byte first). Answers come back in frames with the same id, in any
//! order, so several batches may be out at once.
//!
//! [`StreamPeer`] is the forwarder's [`PeerClient`]: it opens the stream on
//! first use and sends over HTTP ([`RemotePeer`]) until it is up. A peer that
//! answers the upgrade with 404 (a node of an earlier version, which has no
//! stream route) is called over HTTP, and asked again every
//! [`UNSUPPORTED_RETRY`]: a mixed-version cluster forwards as before, and
//! moves to streams as its nodes are upgraded. A stream that breaks fails the
//! batches it carried ([`CallError::Unreachable`]: the router retries once,
//! with the same check ids, which the owner deduplicates) and is opened
//! again, no sooner than [`RECONNECT_AFTER`] after the last attempt.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use awc::ws::{CloseCode, CloseReason, Frame, Message};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{FutureExt, LocalBoxFuture};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::client::{CallError, ClusterClient};
use super::wire::MAX_BODY_BYTES;
use crate::cluster::forwarder::{PeerClient, RemotePeer};
use crate::metrics::ClusterMetrics;

/// Path of the stream's upgrade request on the cluster listener.
pub const STREAM_PATH: &str = "/cluster/v1/stream";
/// Bytes of a frame before its message: the batch id.
pub const ID_BYTES: usize = 8;
/// Largest frame either end accepts: one message of the HTTP route's limit
/// and its id.
pub const MAX_FRAME_BYTES: usize = MAX_BODY_BYTES + ID_BYTES;
/// Least time between two attempts to open a broken stream (HTTP meanwhile).
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How long a peer that has no stream route is called over HTTP before it
/// is asked again.
pub const UNSUPPORTED_RETRY: Duration = Duration::from_secs(30);

/// One frame: `id` (little-endian) then `message`.
pub fn frame(id: u64, message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(ID_BYTES + message.len());
    out.put_u64_le(id);
    out.put_slice(message);
    out.freeze()
}

/// A frame's id and message; `None` when it is too short to hold an id.
pub fn split_frame(frame: &[u8]) -> Option<(u64, &[u8])> {
    let (id, message) = frame.split_first_chunk::<ID_BYTES>()?;
    Some((u64::from_le_bytes(*id), message))
}

type Answer = oneshot::Sender<Result<Vec<u8>, CallError>>;

/// Batches sent on one stream and not answered yet.
#[derive(Default)]
struct Pending {
    waiting: RefCell<HashMap<u64, Answer>>,
    /// Set when the stream broke: nothing more will be answered.
    closed: Cell<bool>,
    /// When a frame last arrived (a silent stream whose calls time out is
    /// dropped, see [`StreamPeer::call`]).
    last_heard: Cell<Option<Instant>>,
}

impl Pending {
    /// Fails every waiting batch: the stream is gone.
    fn close(&self, why: &str) {
        self.closed.set(true);
        for (_, answer) in self.waiting.borrow_mut().drain() {
            let _ = answer.send(Err(CallError::Unreachable(why.to_string())));
        }
    }
}

/// An open stream: where frames are written and who waits for answers.
struct Open {
    out: mpsc::UnboundedSender<Message>,
    pending: Rc<Pending>,
    next_id: Cell<u64>,
}

enum Link {
    /// Not open; the next call after `retry_at` tries.
    Down {
        retry_at: Instant,
    },
    Opening,
    Up(Rc<Open>),
    /// The peer serves no streams: HTTP until `retry_at`.
    Unsupported {
        retry_at: Instant,
    },
}

/// Streams batches to one peer; HTTP while the stream is not up.
pub struct StreamPeer {
    http: RemotePeer,
    client: ClusterClient,
    addr: SocketAddr,
    link: Rc<RefCell<Link>>,
    metrics: Arc<ClusterMetrics>,
}

impl StreamPeer {
    pub fn new(client: ClusterClient, addr: SocketAddr, metrics: Arc<ClusterMetrics>) -> Self {
        StreamPeer {
            metrics,
            http: RemotePeer::new(client.clone(), addr),
            client,
            addr,
            link: Rc::new(RefCell::new(Link::Down {
                retry_at: Instant::now(),
            })),
        }
    }

    /// Where the link to the peer stands: `"down"`, `"opening"`, `"up"` or
    /// `"unsupported"` (the peer serves no streams; HTTP).
    pub fn state(&self) -> &'static str {
        match &*self.link.borrow() {
            Link::Up(open) if !open.pending.closed.get() => "up",
            Link::Down { .. } | Link::Up(_) => "down",
            Link::Opening => "opening",
            Link::Unsupported { .. } => "unsupported",
        }
    }

    /// The open stream, if any; starts opening one when it is time.
    fn stream(&self) -> Option<Rc<Open>> {
        let now = Instant::now();
        let mut link = self.link.borrow_mut();
        match &*link {
            Link::Up(open) if !open.pending.closed.get() => return Some(Rc::clone(open)),
            Link::Up(_) => {
                *link = Link::Down {
                    retry_at: now + RECONNECT_AFTER,
                }
            }
            Link::Down { retry_at } | Link::Unsupported { retry_at } if now >= *retry_at => {
                *link = Link::Opening;
                actix::spawn(open(
                    self.client.clone(),
                    self.addr,
                    Rc::downgrade(&self.link),
                    Arc::clone(&self.metrics),
                ));
            }
            _ => {}
        }
        None
    }
}

impl PeerClient for StreamPeer {
    fn call(&self, body: Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, CallError>> {
        let Some(open) = self.stream() else {
            return self.http.call(body);
        };
        let id = open.next_id.get();
        open.next_id.set(id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        open.pending.waiting.borrow_mut().insert(id, tx);
        if open.out.send(Message::Binary(frame(id, &body))).is_err() {
            open.pending.close("stream writer stopped");
            return self.http.call(body);
        }
        self.metrics.stream_batches.inc();
        let timeout = self.client.timeout();
        let sent = Instant::now();
        async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(CallError::Unreachable("stream closed".into())),
                Err(_) => {
                    open.pending.waiting.borrow_mut().remove(&id);
                    // Nothing heard since this batch went out: the peer or
                    // the path is gone; open a new stream rather than queue
                    // more batches on this one.
                    if open.pending.last_heard.get().is_none_or(|t| t < sent) {
                        open.pending.close("no answer on the stream");
                    }
                    Err(CallError::Timeout)
                }
            }
        }
        .boxed_local()
    }
}

/// Opens the stream and runs it until it breaks or its peer is forgotten.
async fn open(
    client: ClusterClient,
    addr: SocketAddr,
    link: std::rc::Weak<RefCell<Link>>,
    metrics: Arc<ClusterMetrics>,
) {
    let connected = client
        .ws(addr, STREAM_PATH)
        .max_frame_size(MAX_FRAME_BYTES)
        .connect()
        .await;
    let Some(shared) = link.upgrade() else {
        return;
    };
    let framed = match connected {
        Ok((_, framed)) => framed,
        Err(awc::error::WsClientError::InvalidResponseStatus(StatusCode::NOT_FOUND)) => {
            debug!(%addr, "peer has no forwarding stream; forwarding over HTTP");
            *shared.borrow_mut() = Link::Unsupported {
                retry_at: Instant::now() + UNSUPPORTED_RETRY,
            };
            return;
        }
        Err(e) => {
            debug!(%addr, error = %e, "could not open the forwarding stream");
            *shared.borrow_mut() = Link::Down {
                retry_at: Instant::now() + RECONNECT_AFTER,
            };
            return;
        }
    };
    metrics.stream_opens.inc();
    let (mut sink, mut frames) = framed.split();
    let (out, mut queued) = mpsc::unbounded_channel::<Message>();
    let pending = Rc::new(Pending::default());
    *shared.borrow_mut() = Link::Up(Rc::new(Open {
        out: out.clone(),
        pending: Rc::clone(&pending),
        next_id: Cell::new(0),
    }));
    drop(shared);
    // The reader keeps no sender alive: the writer ends with the link.
    let out = out.downgrade();

    // The writer: everything queued since the last write goes in one flush.
    // It ends when the peer is forgotten (the link, holding the last other
    // sender, is dropped) or the connection fails.
    let writer_pending = Rc::clone(&pending);
    actix::spawn(async move {
        while let Some(first) = queued.recv().await {
            let mut failed = sink.feed(first).await.is_err();
            while !failed {
                match queued.try_recv() {
                    Ok(next) => failed = sink.feed(next).await.is_err(),
                    Err(_) => break,
                }
            }
            if failed || sink.flush().await.is_err() || writer_pending.closed.get() {
                break;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseReason::from(CloseCode::Normal))))
            .await;
        writer_pending.close("stream closed");
    });

    // The reader: hands each answer to the batch that waits for it.
    let why = loop {
        match frames.next().await {
            Some(Ok(Frame::Binary(bytes))) => {
                pending.last_heard.set(Some(Instant::now()));
                let Some((id, message)) = split_frame(&bytes) else {
                    break "frame without an id".to_string();
                };
                if let Some(answer) = pending.waiting.borrow_mut().remove(&id) {
                    let _ = answer.send(Ok(message.to_vec()));
                }
            }
            Some(Ok(Frame::Ping(p))) => {
                if let Some(out) = out.upgrade() {
                    let _ = out.send(Message::Pong(p));
                }
            }
            Some(Ok(Frame::Pong(_))) => {}
            Some(Ok(Frame::Close(reason))) => break format!("peer closed the stream: {reason:?}"),
            Some(Ok(other)) => break format!("unexpected frame {other:?}"),
            Some(Err(e)) => break format!("stream error: {e}"),
            None => break "stream ended".to_string(),
        }
        if pending.closed.get() {
            break "stream closed".to_string();
        }
    };
    debug!(%addr, %why, "forwarding stream closed");
    pending.close(&why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_id() {
        let f = frame(0x0102_0304_0506_0708, b"\x03abc");
        assert_eq!(f.len(), ID_BYTES + 4);
        assert_eq!(
            split_frame(&f),
            Some((0x0102_0304_0506_0708, &b"\x03abc"[..]))
        );
        assert_eq!(split_frame(&f[..7]), None);
        assert_eq!(
            split_frame(&f[..8]),
            Some((0x0102_0304_0506_0708, &b""[..]))
        );
    }
}
