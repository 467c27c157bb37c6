//! `GET /cluster/v1/stream`: the serving end of the forwarding stream (the
//! frame format and the sending end are in
//! `llmtrace_actors::cluster::rpc::stream`). The upgrade is authorized like
//! every node-to-node request (cluster listener only, cluster secret in
//! constant time); after it, each binary frame is one batch, decoded with the
//! same bounds as `POST /cluster/v1/checks` and answered in a frame with its
//! id as soon as it is decided. Input stays hostile after the upgrade: a
//! frame over [`MAX_FRAME_BYTES`] is refused from its header (before its
//! payload is buffered, see [`announced_len`]), an unmasked, text, fragmented or undecodable frame
//! closes the stream with a close frame naming why (counted in
//! `llmtrace_rpc_rejected_body`), and at most [`BATCHES_IN_FLIGHT`] batches of
//! one stream are decided or waiting to be written at once: past that the
//! stream is not read (TCP backpressure), so a stream holds at most that many
//! decoded batches and answers, also when its peer stops reading.

use std::convert::Infallible;
use std::sync::Arc;

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{hash_key, verify_handshake, CloseCode, CloseReason, Codec, Frame, Message};
use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_ACCEPT};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use llmtrace_actors::cluster::rpc::stream::{frame, split_frame, MAX_FRAME_BYTES};
use llmtrace_actors::cluster::rpc::wire as rpc;
use tokio::sync::{mpsc, Semaphore};

use super::cluster::{refusal, reject};
use super::NodeContext;

/// Batches of one stream decided, or answered and not yet written, at once.
pub const BATCHES_IN_FLIGHT: usize = 16;

/// `GET /cluster/v1/stream`: upgrades to the forwarding stream.
pub async fn stream(
    req: HttpRequest,
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> HttpResponse {
    if let Some(refused) = refusal(&req, &ctx) {
        return refused;
    }
    if let Err(e) = verify_handshake(req.head()) {
        return reject(&ctx, StatusCode::BAD_REQUEST, "bad_upgrade", e.to_string());
    }
    let key = req
        .headers()
        .get(actix_web::http::header::SEC_WEBSOCKET_KEY)
        .map(|k| hash_key(k.as_bytes()))
        .expect("verify_handshake checked the key");
    let (out, mut frames) = mpsc::channel::<Bytes>(BATCHES_IN_FLIGHT + 1);
    actix_web::rt::spawn(serve(ctx.into_inner(), payload, out));
    HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS)
        .upgrade("websocket")
        .insert_header((
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_bytes(&key).expect("an accept key is base64"),
        ))
        .streaming(futures_util::stream::poll_fn(move |cx| {
            frames.poll_recv(cx).map(|f| f.map(Ok::<_, Infallible>))
        }))
}

/// Encodes one message as a server frame.
fn encode(codec: &mut Codec, message: Message) -> Bytes {
    let mut buf = BytesMut::new();
    codec
        .encode(message, &mut buf)
        .expect("encoding a frame into memory cannot fail");
    buf.freeze()
}

/// The payload length the frame at the start of `buf` announces, once its
/// header is in (RFC 6455 section 5.2). The codec checks its size limit only
/// when the whole frame has arrived, so without this a frame announcing a
/// terabyte would be buffered as it trickles in.
fn announced_len(buf: &[u8]) -> Option<u64> {
    match *buf.get(1)? & 0x7f {
        126 => Some(u64::from(u16::from_be_bytes(
            buf.get(2..4)?.try_into().ok()?,
        ))),
        127 => Some(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => Some(u64::from(n)),
    }
}

/// Reads the stream's frames, decides each batch, writes the answers;
/// returns when the peer closes, the connection fails or a frame is refused.
async fn serve(ctx: Arc<NodeContext>, mut payload: web::Payload, out: mpsc::Sender<Bytes>) {
    let mut codec = Codec::new().max_size(MAX_FRAME_BYTES);
    let mut read = BytesMut::new();
    let places = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let refused = loop {
        if announced_len(&read).is_some_and(|n| n > MAX_FRAME_BYTES as u64) {
            break (
                CloseCode::Protocol,
                format!("frame larger than {MAX_FRAME_BYTES} bytes"),
            );
        }
        let frame_in = match codec.decode(&mut read) {
            Ok(Some(f)) => f,
            Ok(None) => match payload.next().await {
                Some(Ok(chunk)) => {
                    read.extend_from_slice(&chunk);
                    continue;
                }
                // The peer went away.
                _ => return,
            },
            Err(e) => break (CloseCode::Protocol, e.to_string()),
        };
        let bytes = match frame_in {
            Frame::Binary(bytes) => bytes,
            Frame::Ping(p) => {
                let _ = out.send(encode(&mut codec, Message::Pong(p))).await;
                continue;
            }
            Frame::Pong(_) => continue,
            Frame::Close(_) => {
                let _ = out.send(encode(&mut codec, Message::Close(None))).await;
                return;
            }
            Frame::Text(_) | Frame::Continuation(_) => {
                break (
                    CloseCode::Unsupported,
                    "only whole binary frames are served".into(),
                )
            }
        };
        let Some((id, message)) = split_frame(&bytes) else {
            break (CloseCode::Invalid, "frame shorter than its id".into());
        };
        let batch = match rpc::decode_request(message) {
            Ok(b) => b,
            Err(e) => break (CloseCode::Invalid, e.to_string()),
        };
        let place = Arc::clone(&places)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (ctx, out, mut codec) = (Arc::clone(&ctx), out.clone(), codec.clone());
        actix_web::rt::spawn(async move {
            let answer = ctx.router.serve_batch(batch).await;
            let framed = frame(id, &rpc::encode(&answer));
            let _ = out.send(encode(&mut codec, Message::Binary(framed))).await;
            drop(place);
        });
    };
    ctx.router.metrics().rpc_rejected_body.inc();
    let (code, description) = refused;
    let reason = CloseReason {
        code,
        description: Some(description),
    };
    let _ = out
        .send(encode(&mut codec, Message::Close(Some(reason))))
        .await;
}

#[cfg(test)]
mod tests {
    use super::announced_len;
    use actix_web::{web, App, HttpResponse, HttpServer};
    use llmtrace_actors::cluster::rpc::wire::{
        self as rpc, BatchRequest, BatchResponse, WireAnswer, WireCheck, WireResult,
    };
    use llmtrace_actors::{ClusterClient, ClusterMetrics, PeerClient, Rpc, StreamPeer};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A node of an earlier version: `POST /cluster/v1/checks` and no stream.
    async fn old_peer(body: web::Bytes) -> HttpResponse {
        let req = rpc::decode_request(&body).expect("a batch");
        HttpResponse::Ok().body(rpc::encode(&BatchResponse {
            node: "old".into(),
            results: req
                .checks
                .iter()
                .map(|_| WireAnswer::plain(WireResult::Unlimited))
                .collect(),
        }))
    }

    #[actix_rt::test]
    async fn a_peer_without_streams_is_called_over_http() {
        let server =
            HttpServer::new(|| App::new().route(BatchRequest::PATH, web::post().to(old_peer)))
                .workers(1)
                .bind(("127.0.0.1", 0))
                .expect("bind loopback");
        let addr = server.addrs()[0];
        let running = server.run();
        let handle = running.handle();
        actix_rt::spawn(running);

        let metrics = Arc::new(ClusterMetrics::default());
        let client = ClusterClient::new(None, Duration::from_secs(5));
        let peer = StreamPeer::new(client, addr, Arc::clone(&metrics));
        let batch = rpc::encode(&BatchRequest {
            origin: "new".into(),
            checks: vec![WireCheck {
                id: 1,
                tenant: "t".into(),
                limit: "requests".into(),
                op: 0,
                cost: 1,
                retry: false,
                hops: 1,
            }],
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut calls = 0;
        while peer.state() != "unsupported" {
            assert!(
                Instant::now() < deadline,
                "the 404 to the upgrade was not seen"
            );
            let answer: BatchResponse =
                rpc::decode(&peer.call(batch.clone()).await.expect("answered over HTTP"))
                    .expect("a batch answer");
            assert_eq!(answer.node, "old");
            calls += 1;
        }
        // Once refused, every batch goes over HTTP without asking again.
        for _ in 0..3 {
            peer.call(batch.clone()).await.expect("answered over HTTP");
        }
        assert!(calls >= 1);
        assert_eq!(peer.state(), "unsupported");
        assert_eq!(metrics.stream_opens.get(), 0);
        assert_eq!(metrics.stream_batches.get(), 0);
        handle.stop(false).await;
    }

    #[test]
    fn the_announced_length_is_read_from_the_header_alone() {
        assert_eq!(announced_len(&[]), None);
        assert_eq!(announced_len(&[0x82]), None);
        assert_eq!(announced_len(&[0x82, 0x85]), Some(5));
        assert_eq!(announced_len(&[0x82, 0xfe, 0x01]), None);
        assert_eq!(announced_len(&[0x82, 0xfe, 0x01, 0x00]), Some(256));
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(announced_len(&huge[..9]), None);
        assert_eq!(announced_len(&huge), Some(1 << 40));
    }
}
