//! A stub OpenAI- and Anthropic-compatible upstream: the one mock of the
//! project (no real LLM API can run here). A plain HTTP/1.1 server on a
//! loopback port, a thread per connection, keep-alive, `Content-Length`
//! bodies.
//!
//! Routes: `POST /v1/chat/completions` (JSON, or SSE when `"stream": true`,
//! with a final usage chunk only when `stream_options.include_usage` is
//! set), `POST /v1/embeddings`, `GET /v1/models`, OpenAI's
//! `POST /v1/responses` ([`responses`]) and Anthropic's `POST /v1/messages`
//! and `/v1/messages/count_tokens` ([`anthropic`]). Behaviour is steered
//! per request by the model name and `x-stub-*` headers:
//! - model `error-<status>`: that status with an error body (Anthropic's
//!   shape on `/v1/messages`);
//! - model `slow-<ms>`: waits that long before answering (timeouts);
//! - `x-stub-usage: P,C`: the usage reported (default `10,5`);
//! - `x-stub-cache: R,W`: cached input tokens read (OpenAI's
//!   `cached_tokens`, Anthropic's `cache_read_input_tokens`) and written
//!   (Anthropic's `cache_creation_input_tokens`), on top of `P` (default
//!   `0,0`);
//! - `x-stub-cut: 1`: an Anthropic stream ends after its text, without
//!   its `message_delta` (a connection lost mid-answer);
//! - `x-stub-chunks: N`: content chunks of a stream (default 3);
//! - `x-stub-no-usage: 1`: never report usage (upstreams that ignore
//!   `include_usage`);
//! - `x-stub-gate: NAME`: after the first content chunk, wait until the
//!   test calls [`Stub::release`] (unbuffered-streaming test); the last
//!   chunk's send is recorded ([`Stub::last_sent`]); `POST
//!   /stub/release/NAME` releases it too (for a client script).
//!
//! An answer whose write fails because the reader went away is counted
//! ([`Stub::cancelled`]).
//!
//! Every request is recorded ([`Stub::requests`]).

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod anthropic;
mod responses;

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-cased names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    released: Mutex<HashSet<String>>,
    gate_cv: Condvar,
    last_sent: Mutex<BTreeMap<String, Instant>>,
    cancelled: AtomicU64,
    stop: AtomicBool,
    /// Keep no record of requests (benchmarks).
    unrecorded: bool,
}

/// A running stub; stops accepting when dropped.
pub struct Stub {
    addr: String,
    shared: Arc<Shared>,
    /// PEM of the self-signed certificate when the stub speaks TLS.
    cert_pem: Option<String>,
}

/// Longest a gated stream waits for its release.
const GATE_TIMEOUT: Duration = Duration::from_secs(30);

impl Stub {
    pub fn start() -> Stub {
        Self::start_with(false)
    }

    /// A stub that keeps no record of requests (benchmarks).
    pub fn start_unrecorded() -> Stub {
        Self::start_with(true)
    }

    /// A stub speaking TLS with a self-signed certificate for 127.0.0.1
    /// ([`Stub::cert_pem`]); [`Stub::url`] is then `https://`.
    pub fn start_tls() -> Stub {
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
            .expect("self-signed certificate");
        let cert_der = key.cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.key_pair.serialize_der()),
        );
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .expect("server TLS config");
        let mut stub = Self::start_inner(false, Some(Arc::new(config)));
        stub.cert_pem = Some(key.cert.pem());
        stub
    }

    /// The certificate of a TLS stub, PEM.
    pub fn cert_pem(&self) -> &str {
        self.cert_pem.as_deref().expect("a TLS stub")
    }

    fn start_with(unrecorded: bool) -> Stub {
        Self::start_inner(unrecorded, None)
    }

    fn start_inner(unrecorded: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            unrecorded,
            ..Shared::default()
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_nodelay(true);
                let s = Arc::clone(&s);
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve(conn, &s),
                    Some(config) => {
                        if let Ok(server) = rustls::ServerConnection::new(config) {
                            serve(rustls::StreamOwned::new(server, conn), &s);
                        }
                    }
                });
            }
        });
        Stub {
            addr,
            shared,
            cert_pem: None,
        }
    }

    /// `http://127.0.0.1:port` (`https://` for a TLS stub).
    pub fn url(&self) -> String {
        let scheme = if self.cert_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Lets the stream gated on `name` go on.
    pub fn release(&self, name: &str) {
        release_gate(&self.shared, name);
    }

    /// When the last chunk of the stream gated on `name` was sent.
    pub fn last_sent(&self, name: &str) -> Option<Instant> {
        self.shared.last_sent.lock().unwrap().get(name).copied()
    }

    /// Answers whose reader went away before the end.
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Ordering::Relaxed)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.gate_cv.notify_all();
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request<S: Read>(r: &mut BufReader<S>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().to_string();
        headers
            .entry(k)
            .and_modify(|old| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn serve<S: Read + Write>(conn: S, s: &Shared) {
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        if !s.unrecorded {
            s.requests.lock().unwrap().push(Recorded {
                method: req.method.clone(),
                path: req.path.clone(),
                headers: req.headers.clone(),
                body: body.clone(),
            });
        }
        let keep = answer(reader.get_mut(), &req, &body, s).is_ok();
        if !keep {
            s.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        if !keep || s.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

fn send_json(out: &mut impl Write, status: u16, v: &Value) -> std::io::Result<()> {
    let body = v.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Status",
    };
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-stub-upstream: 1\r\nconnection: keep-alive, x-stub-hop\r\nx-stub-hop: secret\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

/// A header `A,B` of two numbers, else `default`.
fn pair(req: &Request, name: &str, default: (u64, u64)) -> (u64, u64) {
    req.headers
        .get(name)
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .unwrap_or(default)
}

fn usage_of(req: &Request) -> (u64, u64) {
    pair(req, "x-stub-usage", (10, 5))
}

/// `x-stub-chunks`: content chunks of a stream.
fn chunks_of(req: &Request) -> usize {
    req.headers
        .get("x-stub-chunks")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// `x-stub-cache`: cached input tokens read and written.
fn cache_of(req: &Request) -> (u64, u64) {
    pair(req, "x-stub-cache", (0, 0))
}

/// The head of a chunked SSE answer.
fn sse_head(out: &mut impl Write) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         transfer-encoding: chunked\r\n\r\n"
    )
}

/// One chunk of a chunked body, flushed.
fn send_chunk(out: &mut impl Write, data: &str) -> std::io::Result<()> {
    write!(out, "{:x}\r\n{data}\r\n", data.len())?;
    out.flush()
}

/// Named SSE events (`event:` and `data:`), then the end of the body.
fn send_events(out: &mut impl Write, events: &[(&str, Value)]) -> std::io::Result<()> {
    sse_head(out)?;
    for (name, data) in events {
        send_chunk(out, &format!("event: {name}\ndata: {data}\n\n"))?;
    }
    write!(out, "0\r\n\r\n")?;
    out.flush()
}

fn answer(out: &mut impl Write, req: &Request, body: &Value, s: &Shared) -> std::io::Result<()> {
    if let Some(name) = req.path.strip_prefix("/stub/release/") {
        release_gate(s, name);
        return send_json(out, 200, &json!({"released": name}));
    }
    let model = body["model"].as_str().unwrap_or("");
    let anthropic = req.path.starts_with("/v1/messages");
    if let Some(ms) = model
        .strip_prefix("slow-")
        .and_then(|m| m.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(code) = model
        .strip_prefix("error-")
        .and_then(|m| m.parse::<u16>().ok())
    {
        if anthropic {
            return anthropic::error(out, code);
        }
        return send_json(
            out,
            code,
            &json!({"error": {"message": "stub error", "type": "server_error",
                              "param": null, "code": "stub_error"}}),
        );
    }
    let (p, c) = usage_of(req);
    // Cached prompt tokens are part of OpenAI's `prompt_tokens`.
    let (read, _) = cache_of(req);
    let mut usage = json!({"prompt_tokens": p + read, "completion_tokens": c,
                           "total_tokens": p + read + c});
    if read > 0 {
        usage["prompt_tokens_details"] = json!({"cached_tokens": read});
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/models") => send_json(
            out,
            200,
            &json!({"object": "list", "data": [{"id": "gpt-4o", "object": "model",
                                                  "created": 0, "owned_by": "stub"}]}),
        ),
        ("POST", "/v1/embeddings") => send_json(
            out,
            200,
            &json!({"object": "list", "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.25, 0.5]}],
                    "usage": {"prompt_tokens": p, "total_tokens": p}}),
        ),
        ("POST", "/v1/messages") => anthropic::messages(out, req, body),
        ("POST", "/v1/messages/count_tokens") => anthropic::count_tokens(out, req),
        ("POST", "/v1/responses") => responses::create(out, req, body),
        ("POST", "/v1/chat/completions") if body["stream"] == json!(true) => {
            stream_chat(out, req, body, s, usage)
        }
        ("POST", "/v1/chat/completions") => send_json(
            out,
            200,
            &json!({"id": "chatcmpl-stub", "object": "chat.completion", "created": 1,
                    "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Hello from stub"}}],
                    "usage": usage}),
        ),
        _ => send_json(
            out,
            404,
            &json!({"error": {"message": "no such route", "type": "invalid_request_error",
                              "param": null, "code": "not_found"}}),
        ),
    }
}

fn chunk(model: &str, delta: Value, finish: Value) -> Value {
    json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1,
           "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn stream_chat(
    out: &mut impl Write,
    req: &Request,
    body: &Value,
    s: &Shared,
    usage: Value,
) -> std::io::Result<()> {
    let model = body["model"].as_str().unwrap_or("");
    let n = chunks_of(req);
    let gate = req.headers.get("x-stub-gate").cloned();
    let with_usage = body["stream_options"]["include_usage"] == json!(true)
        && !req.headers.contains_key("x-stub-no-usage");
    sse_head(out)?;
    let mut events = vec![chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for i in 0..n {
        events.push(chunk(
            model,
            json!({"content": format!("tok{i} ")}),
            Value::Null,
        ));
    }
    events.push(chunk(model, json!({}), json!("stop")));
    if with_usage {
        events.push(
            json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                           "created": 1, "model": model, "choices": [], "usage": usage}),
        );
    }
    let mut datas: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    datas.push("[DONE]".into());
    let last = datas.len() - 1;
    let result = (|| {
        for (i, d) in datas.iter().enumerate() {
            send_chunk(out, &format!("data: {d}\n\n"))?;
            if i == 1 {
                if let Some(g) = &gate {
                    wait_gate(s, g);
                    // Pace the rest so a reader that left is noticed.
                    for _ in 0..20 {
                        send_chunk(out, ": ping\n\n")?;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            if i == last {
                if let Some(g) = &gate {
                    s.last_sent
                        .lock()
                        .unwrap()
                        .insert(g.clone(), Instant::now());
                }
            }
        }
        write!(out, "0\r\n\r\n")?;
        out.flush()
    })();
    result
}

fn release_gate(s: &Shared, name: &str) {
    s.released.lock().unwrap().insert(name.to_string());
    s.gate_cv.notify_all();
}

fn wait_gate(s: &Shared, name: &str) {
    let deadline = Instant::now() + GATE_TIMEOUT;
    let mut released = s.released.lock().unwrap();
    while !released.contains(name) && !s.stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        released = s.gate_cv.wait_timeout(released, left).unwrap().0;
    }
}
