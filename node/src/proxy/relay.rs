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

use super::settle::{Leases, Reservation};
use super::tokens::{Counter, Kind, Plan};
use super::usage::{Streamed, Usage};

/// Reads an answer as it passes: SSE events are released whole (the
/// usage-only chunk the proxy asked for is dropped), a JSON body is copied
/// for its `usage`. Independent of the transport, so it is tested alone.
pub struct Scanner {
    /// The API answering; `None`: nothing to read.
    kind: Option<Kind>,
    /// Server-sent events: inspected event by event.
    sse: bool,
    /// Drop the usage-only chunk the proxy asked for.
    strip_usage: bool,
    /// Bytes of an SSE event not yet complete.
    pending: BytesMut,
    /// Copy of a JSON body, for its usage.
    copy: Option<BytesMut>,
    /// The usage seen in the body.
    pub usage: Streamed,
    /// Streamed completion text, for a count when no usage arrives.
    pub deltas: String,
}

/// Most streamed text kept for the fallback count.
const MAX_DELTA_BYTES: usize = 4 << 20;

impl Scanner {
    pub fn new(kind: Option<Kind>, sse: bool, strip_usage: bool, copy_json: bool) -> Self {
        Scanner {
            kind,
            sse,
            strip_usage,
            pending: BytesMut::new(),
            copy: (copy_json && !sse && kind.is_some()).then(BytesMut::new),
            usage: Streamed::default(),
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
        if let (Some(copy), Some(kind)) = (self.copy.take(), self.kind) {
            // Only `usage` is kept; the rest of the answer is skipped.
            if let Ok(b) = serde_json::from_slice::<UsageOnly>(&copy) {
                if let Some(u) = b.usage.as_ref().and_then(|u| Usage::parse(kind, u)) {
                    self.usage.settle(u);
                }
            }
        }
        self.pending.split().freeze()
    }

    /// Reads one SSE event; false when it must not reach the client.
    fn inspect(&mut self, event: &[u8]) -> bool {
        let Some(kind) = self.kind else {
            return true;
        };
        let mut keep = true;
        for line in event.split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.trim_ascii();
            if data == b"[DONE]" {
                continue;
            }
            let seen = self.usage.event(kind, data);
            if seen.usage_only && self.strip_usage {
                keep = false;
            }
            if let Some(t) = seen.text {
                if self.deltas.len() + t.len() <= MAX_DELTA_BYTES {
                    self.deltas.push_str(&t);
                }
            }
        }
        keep
    }

    /// The usage to settle at: the final usage; a partial one (the stream
    /// was cut after Anthropic's `message_start`) with the streamed text
    /// counted as output; for a stream without usage, `prompt` as input and
    /// the streamed text as output; otherwise nothing known.
    pub fn usage(&self, prompt: u64, counter: &Counter) -> Option<Usage> {
        let streamed = || counter.count(&self.deltas);
        match self.usage.usage {
            Some(u) if self.usage.complete => Some(u),
            Some(u) => Some(Usage {
                output: u.output.max(streamed()),
                ..u
            }),
            None if self.sse => Some(Usage {
                input: prompt,
                output: streamed(),
                ..Usage::default()
            }),
            None => None,
        }
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
    counter: Counter,
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
        let scanner = Scanner::new(plan.kind, sse, plan.injected_usage, reservation.is_some());
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
        let leases = self.leases.take();
        let rest = self.scanner.end();
        let usage = match &self.reservation {
            Some(_) => self.scanner.usage(self.prompt, &self.counter),
            None => None,
        };
        // Without a usage the reservation stands; the leases go either way.
        match (self.reservation.take(), usage) {
            (Some(r), Some(usage)) => r.settle(&usage, leases),
            _ => drop(leases),
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
    use crate::proxy::tokens::estimate;
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

    /// An Anthropic Messages stream; `end`: with its `message_delta`.
    fn anthropic_body(end: bool) -> String {
        let mut b = String::new();
        b.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\n\n");
        b.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
        for t in ["Hel", "lo", " wor", "ld"] {
            b.push_str(&format!(
                "event: content_block_delta\r\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{t}\"}}}}\r\n\r\n"
            ));
        }
        if end {
            b.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n");
            b.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        }
        b
    }

    fn scan_as(kind: Kind, body: &str, cuts: &[usize], strip: bool) -> (String, Scanner) {
        let mut s = Scanner::new(Some(kind), true, strip, true);
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

    fn scan(body: &str, cuts: &[usize], strip: bool) -> (String, Scanner) {
        scan_as(Kind::Chat, body, cuts, strip)
    }

    fn actual(s: &Scanner, prompt: u64, counter: &Counter) -> Option<u64> {
        s.usage(prompt, counter).map(|u| u.total())
    }

    fn total(s: &Scanner) -> Option<u64> {
        s.usage
            .usage
            .filter(|_| s.usage.complete)
            .map(|u| u.total())
    }

    #[test]
    fn usage_chunk_is_dropped_only_when_the_proxy_asked() {
        let body = sse_body(true);
        let (out, s) = scan(&body, &[], true);
        assert_eq!(total(&s), Some(11));
        assert!(!out.contains("usage") && out.contains("[DONE]"), "{out}");
        let (out, _) = scan(&body, &[], false);
        assert_eq!(out, body);
        let (_, s) = scan(&sse_body(false), &[], true);
        assert_eq!((s.usage.usage, s.deltas.as_str()), (None, "Hello world"));
        // Settled at the prompt plus the streamed text.
        let counter = Counter::for_model("unknown");
        assert_eq!(actual(&s, 5, &counter), Some(5 + estimate("Hello world")));
    }

    #[test]
    fn json_usage_is_read_at_the_end() {
        let mut s = Scanner::new(Some(Kind::Chat), false, false, true);
        let (x, y): (&[u8], &[u8]) = (
            b"{\"id\":1,\"usage\":{\"prompt_",
            b"tokens\":3,\"completion_tokens\":4}}",
        );
        // Passed through as they come, unchanged.
        assert_eq!(s.feed(Bytes::from_static(x)), x);
        assert_eq!(s.feed(Bytes::from_static(y)), y);
        assert!(s.end().is_empty());
        assert_eq!(total(&s), Some(7));
        // An Anthropic answer, cut anywhere.
        let body = br#"{"type":"message","usage":{"input_tokens":5,"output_tokens":6,"cache_read_input_tokens":7}}"#;
        let mut s = Scanner::new(Some(Kind::Messages), false, false, true);
        for part in body.chunks(10) {
            assert_eq!(s.feed(Bytes::copy_from_slice(part)), part);
        }
        s.end();
        assert_eq!(total(&s), Some(18));
        // No usage in a JSON answer: nothing known, the reservation stands.
        let mut s = Scanner::new(Some(Kind::Messages), false, false, true);
        s.feed(Bytes::from_static(b"{\"usage\": \"x\"}"));
        s.end();
        assert_eq!(actual(&s, 5, &Counter::for_model("m")), None);
    }

    #[test]
    fn anthropic_stream_is_relayed_unchanged_and_settled() {
        let counter = Counter::for_model("claude-x");
        let body = anthropic_body(true);
        let (out, s) = scan_as(Kind::Messages, &body, &[], true);
        // Nothing is dropped from an Anthropic stream.
        assert_eq!(out, body);
        assert_eq!(actual(&s, 0, &counter), Some(20 + 100 + 3 + 9));
        // Cut before `message_delta`: input from `message_start`, output
        // counted from the text.
        let (_, s) = scan_as(Kind::Messages, &anthropic_body(false), &[], true);
        assert_eq!(s.deltas, "Hello world");
        assert_eq!(actual(&s, 0, &counter), Some(123 + estimate("Hello world")));
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
        fn anthropic_chunk_boundaries_do_not_matter(cuts in prop::collection::vec(any::<usize>(), 0..12), end: bool) {
            let body = anthropic_body(end);
            let (whole, a) = scan_as(Kind::Messages, &body, &[], false);
            let (split, b) = scan_as(Kind::Messages, &body, &cuts, false);
            prop_assert_eq!(&whole, &body);
            prop_assert_eq!(whole, split);
            prop_assert_eq!(a.usage, b.usage);
            prop_assert_eq!(a.deltas, b.deltas);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), sse: bool) {
            for kind in [Kind::Chat, Kind::Responses, Kind::Messages] {
                let mut s = Scanner::new(Some(kind), sse, true, true);
                let _ = s.feed(Bytes::from(bytes.clone()));
                let _ = s.end();
                let _ = actual(&s, u64::MAX, &Counter::for_model("m"));
            }
        }
    }

    #[test]
    fn sse_event_boundaries() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: 1\n"), None);
    }
}
