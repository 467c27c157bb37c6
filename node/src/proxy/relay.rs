//! The upstream's answer on its way back: relayed chunk by chunk as it
//! arrives (no buffering beyond one SSE event), with the `usage` it carries
//! picked up on the side, the reservations reconciled and the leases
//! released when the body ends, fails, stalls or the client goes away.
//!
//! Dropping a [`Relay`] (the client disconnected: actix drops the body)
//! drops the upstream response, which closes its connection: the upstream
//! call is cancelled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::Value;
use tracing::warn;

use super::settle::{Leases, Reservation, Used};
use super::tokens::{usage_total, Plan};

/// Reads an answer as it passes: SSE events are released whole (the
/// usage-only chunk the proxy asked for is dropped), a JSON body is copied
/// for its `usage`. Independent of the transport, so it is tested alone.
pub struct Scanner {
    /// Server-sent events: inspected event by event.
    sse: bool,
    /// Drop the usage-only chunk the proxy asked for.
    strip_usage: bool,
    /// Bytes of an SSE event not yet complete.
    pending: BytesMut,
    /// Copy of a JSON body, for its usage.
    copy: Option<BytesMut>,
    /// `usage` total seen in the body.
    pub usage: Option<u64>,
    /// The same usage by price class (cached prompt tokens apart).
    pub used: Option<Used>,
    /// Streamed completion text, for a count when no usage arrives.
    pub deltas: String,
}

/// Most streamed text kept for the fallback count.
const MAX_DELTA_BYTES: usize = 4 << 20;

impl Scanner {
    pub fn new(sse: bool, strip_usage: bool, copy_json: bool) -> Self {
        Scanner {
            sse,
            strip_usage,
            pending: BytesMut::new(),
            copy: (copy_json && !sse).then(BytesMut::new),
            usage: None,
            used: None,
            deltas: String::new(),
        }
    }

    /// Passes a chunk through; SSE events are released once complete.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if let Some(copy) = &mut self.copy {
            copy.extend_from_slice(&chunk);
        }
        if !self.sse {
            return chunk;
        }
        self.pending.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            if self.inspect(&event) {
                out.extend_from_slice(&event);
            }
        }
        out.freeze()
    }

    /// The body ended: what is left of an unterminated event, and the usage
    /// of a JSON body.
    pub fn end(&mut self) -> Bytes {
        if let Some(copy) = self.copy.take() {
            // Only `usage` is kept; the rest of the answer is skipped.
            if let Ok(b) = serde_json::from_slice::<UsageOnly>(&copy) {
                self.usage = b.usage.as_ref().and_then(usage_total);
                self.used = b.usage.as_ref().and_then(Used::of_openai);
            }
        }
        self.pending.split().freeze()
    }

    /// Reads one SSE event; false when it must not reach the client.
    fn inspect(&mut self, event: &[u8]) -> bool {
        let mut keep = true;
        for line in event.split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.trim_ascii();
            if data == b"[DONE]" {
                continue;
            }
            let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
                continue;
            };
            if let Some(u) = chunk.usage.as_ref().and_then(usage_total) {
                self.usage = Some(u);
                self.used = chunk.usage.as_ref().and_then(Used::of_openai);
                if self.strip_usage && chunk.choices.is_empty() {
                    keep = false;
                }
            }
            for c in chunk.choices {
                let text = c.delta.and_then(|d| d.content).or(c.text);
                if let Some(t) = text {
                    if self.deltas.len() + t.len() <= MAX_DELTA_BYTES {
                        self.deltas.push_str(&t);
                    }
                }
            }
        }
        keep
    }
}

/// The body stream handed to actix.
pub struct Relay {
    upstream: awc::ClientResponse,
    /// Longest silence between two chunks.
    idle: Duration,
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    scanner: Scanner,
    total: usize,
    max: usize,
    /// The reservation to reconcile when the body ends or is dropped.
    reservation: Option<Reservation>,
    /// The leases held for the call, released when the body ends or is
    /// dropped.
    leases: Option<Leases>,
    /// Prompt tokens counted before forwarding (for the fallback count).
    prompt: u64,
    counter: super::tokens::Counter,
    done: bool,
}

impl Relay {
    pub fn new(
        upstream: awc::ClientResponse,
        plan: &Plan,
        reservation: Option<Reservation>,
        leases: Option<Leases>,
        idle: Duration,
        max: usize,
    ) -> Self {
        let sse = upstream
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let scanner = Scanner::new(sse, plan.injected_usage, reservation.is_some());
        Relay {
            upstream,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            scanner,
            total: 0,
            max,
            reservation,
            leases,
            prompt: plan.prompt,
            counter: plan.counter(),
            done: false,
        }
    }

    /// Settles the reservation: the upstream's usage when it gave one; for
    /// a stream, the prompt plus the counted deltas; otherwise the
    /// reservation stands. Returns what is left of the body.
    fn finish(&mut self) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        self.done = true;
        drop(self.leases.take());
        let rest = self.scanner.end();
        if let Some(r) = self.reservation.take() {
            let reported = (self.scanner.used)
                .or_else(|| self.scanner.usage.map(|total| Used::counted(total, 0)));
            let actual = match reported {
                Some(u) => Some(u),
                None if self.scanner.sse => Some(Used::counted(
                    self.prompt,
                    self.counter.count(&self.scanner.deltas),
                )),
                None => None,
            };
            if let Some(actual) = actual {
                r.reconcile(actual);
            }
        }
        rest
    }
}

/// The end (exclusive) of the first complete SSE event: after a blank line
/// (`\n\n` or `\r\n\r\n`).
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

fn io_error(what: String) -> std::io::Error {
    std::io::Error::other(what)
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.upstream).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.idle_timer.as_mut().reset(deadline);
                    this.total += chunk.len();
                    if this.total > this.max {
                        let _ = this.finish();
                        let e = format!("upstream response exceeds {} bytes", this.max);
                        warn!("{e}; cut");
                        return Poll::Ready(Some(Err(io_error(e))));
                    }
                    let out = this.scanner.feed(chunk);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let _ = this.finish();
                    return Poll::Ready(Some(Err(io_error(format!("upstream body: {e}")))));
                }
                Poll::Ready(None) => {
                    let rest = this.finish();
                    return Poll::Ready((!rest.is_empty()).then_some(Ok(rest)));
                }
                Poll::Pending => {
                    if this.idle_timer.as_mut().poll(cx).is_ready() {
                        let _ = this.finish();
                        let e = format!("upstream silent for {:?}", this.idle);
                        warn!("{e}; stream cut");
                        return Poll::Ready(Some(Err(io_error(e))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Relay {
    /// The client went away (or the body ended): reconcile with what is known.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sse_body(usage: bool) -> String {
        let mut b = String::new();
        b.push_str("data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n");
        for t in ["Hel", "lo", " wor", "ld"] {
            b.push_str(&format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n"
            ));
        }
        b.push_str(": comment\r\n\r\n");
        if usage {
            b.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":4,\"total_tokens\":11}}\n\n");
        }
        b.push_str("data: [DONE]\n\n");
        b
    }

    fn scan(body: &str, cuts: &[usize], strip: bool) -> (String, Scanner) {
        let mut s = Scanner::new(true, strip, true);
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain([body.len()]) {
            out.extend_from_slice(&s.feed(Bytes::copy_from_slice(&body.as_bytes()[at..c])));
            at = c;
        }
        out.extend_from_slice(&s.end());
        (String::from_utf8(out).unwrap(), s)
    }

    #[test]
    fn usage_chunk_is_dropped_only_when_the_proxy_asked() {
        let body = sse_body(true);
        let (out, s) = scan(&body, &[], true);
        assert_eq!(s.usage, Some(11));
        assert!(!out.contains("usage") && out.contains("[DONE]"), "{out}");
        let (out, _) = scan(&body, &[], false);
        assert_eq!(out, body);
        let (_, s) = scan(&sse_body(false), &[], true);
        assert_eq!((s.usage, s.deltas.as_str()), (None, "Hello world"));
    }

    #[test]
    fn json_usage_is_read_at_the_end() {
        let mut s = Scanner::new(false, false, true);
        let (x, y): (&[u8], &[u8]) = (
            b"{\"id\":1,\"usage\":{\"prompt_",
            b"tokens\":3,\"completion_tokens\":4}}",
        );
        // Passed through as they come, unchanged.
        assert_eq!(s.feed(Bytes::from_static(x)), x);
        assert_eq!(s.feed(Bytes::from_static(y)), y);
        assert!(s.end().is_empty());
        assert_eq!(s.usage, Some(7));
    }

    proptest! {
        /// Wherever the upstream's chunks are cut, the client gets the same
        /// bytes (events released whole) and the same usage is seen.
        #[test]
        fn chunk_boundaries_do_not_matter(cuts in prop::collection::vec(any::<usize>(), 0..12), usage: bool, strip: bool) {
            let body = sse_body(usage);
            let (whole, a) = scan(&body, &[], strip);
            let (split, b) = scan(&body, &cuts, strip);
            prop_assert_eq!(whole, split);
            prop_assert_eq!(a.usage, b.usage);
            prop_assert_eq!(a.deltas, b.deltas);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), sse: bool) {
            let mut s = Scanner::new(sse, true, true);
            let _ = s.feed(Bytes::from(bytes));
            let _ = s.end();
        }
    }

    #[test]
    fn sse_event_boundaries() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: 1\n"), None);
    }
}
