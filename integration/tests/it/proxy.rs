//! Proxy mode against the stub upstream, over real HTTP: pass-through,
//! headers both ways, limits and their headers, reconcile, errors (401,
//! 429, 500 passed through, 502, 504), unbuffered streaming and
//! cancellation of the upstream call when the client goes away.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use llmtrace_integration::http::Client;
use llmtrace_integration::{wait_until, Node, Stub};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A node proxying to `upstream`, token limit 60/min with `token_burst`.
fn proxy_node(upstream: &str, token_burst: u64, extra: &[(&str, &str)]) -> Node {
    let mut b = Node::builder()
        .rate(100, 100)
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", upstream)
        .flag("tokens-per-minute", 60)
        .flag("token-burst-size", token_burst);
    for (k, v) in extra {
        b = b.flag(k, v);
    }
    b.start()
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "gpt-4o", "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "hello world"}]})
}

fn post(
    node: &Node,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> llmtrace_integration::Reply {
    Client::new(node.proxy_url()).post_with_headers(path, headers, body.to_string().as_bytes())
}

fn tokens_metric(node: &Node, op: &str) -> f64 {
    node.metric(&format!("llmtrace_proxy_tokens_total{{op=\"{op}\"}}"))
        .unwrap_or(0.0)
}

/// gpt-4o counts 9 prompt tokens for the one-message "hello world" chat.
const PROMPT: u64 = 9;

#[test]
fn calls_pass_through_with_limit_headers_and_reconcile() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 10_000, &[]);
    let auth = ("authorization", "Bearer sk-pass");
    let r = post(
        &node,
        "/v1/chat/completions",
        &[
            auth,
            ("x-stub-usage", "40,60"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("x-llmtrace-tenant-id", "acme"),
        ],
        &chat(100),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.json["choices"][0]["message"]["content"],
        "Hello from stub"
    );
    assert_eq!(r.json["usage"]["total_tokens"], 100);
    // Reserved 9 + 100 of 10000; one request of 100.
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("10000"));
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("9891"));
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("99"));
    assert!(r.header("x-ratelimit-reset-tokens").is_some());
    // The upstream's hop-by-hop fields stop here; its own headers pass.
    assert_eq!(r.header("x-stub-upstream"), Some("1"));
    assert_eq!(r.header("x-stub-hop"), None, "{r}");
    let seen = stub.requests();
    let req = seen.last().unwrap();
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.headers.get("authorization").map(String::as_str),
        Some("Bearer sk-pass")
    );
    assert!(!req.headers.contains_key("x-drop-me"), "{:?}", req.headers);
    assert!(
        !req.headers.contains_key("x-llmtrace-tenant-id"),
        "{:?}",
        req.headers
    );
    assert_eq!(
        req.headers.get("accept-encoding").map(String::as_str),
        Some("identity")
    );
    assert_eq!(
        req.body,
        chat(100),
        "non-streaming bodies are forwarded unchanged"
    );
    // The 9 reserved and not used come back.
    node.wait_metric("llmtrace_proxy_tokens_total{op=\"refunded\"}", WAIT, |v| {
        v == 9.0
    });
    assert_eq!(tokens_metric(&node, "reserved"), (PROMPT + 100) as f64);
    assert_eq!(tokens_metric(&node, "charged"), 0.0);
    // Usage above the reservation is charged: 9 + 10 reserved, 200 used.
    let r = post(
        &node,
        "/v1/chat/completions",
        &[auth, ("x-stub-usage", "150,50")],
        &chat(10),
    );
    assert_eq!(r.status, 200, "{r}");
    node.wait_metric("llmtrace_proxy_tokens_total{op=\"charged\"}", WAIT, |v| {
        v == 181.0
    });
    // 10000 - 100 - 200 left: the next call sees exactly that minus its own
    // reservation (refill at 1/s adds at most a few).
    let r = post(&node, "/v1/chat/completions", &[auth], &chat(1));
    let left: u64 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    let expect = 10_000 - 100 - 200 - (PROMPT + 1);
    assert!((expect..expect + 30).contains(&left), "{left} vs {expect}");
    // Query strings and other routes pass; embeddings reserve the input.
    let r = Client::new(node.proxy_url()).get("/v1/models?limit=5");
    assert_eq!(r.status, 401, "no key: {r}");
    let r = post(
        &node,
        "/v1/embeddings",
        &[auth],
        &json!({"model": "text-embedding-3-small", "input": "hello"}),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["data"][0]["embedding"], json!([0.25, 0.5]));
    node.wait_metric("llmtrace_proxy_requests_total{status=\"200\"}", WAIT, |v| {
        v == 4.0
    });
    assert_eq!(
        node.metric("llmtrace_proxy_requests_total{status=\"401\"}"),
        Some(1.0)
    );
}

/// A raw HTTP/1.1 exchange, read incrementally.
struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn post(proxy_url: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> Raw {
        let addr = proxy_url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let body = body.to_string();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).unwrap();
        Raw {
            reader: BufReader::new(s),
        }
    }

    /// Status and lower-cased header lines.
    fn head(&mut self) -> (u16, Vec<String>) {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                return (status, headers);
            }
            headers.push(h.trim().to_ascii_lowercase());
        }
    }

    /// The next chunk of a chunked body; None at the end.
    fn chunk(&mut self) -> Option<String> {
        let mut size = String::new();
        self.reader.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return None;
        }
        let mut buf = vec![0; n + 2];
        self.reader.read_exact(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    }

    fn rest(&mut self) -> String {
        let mut all = String::new();
        while let Some(c) = self.chunk() {
            all.push_str(&c);
        }
        all
    }
}

#[test]
fn streams_are_relayed_unbuffered_with_usage_reconciled() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 10_000, &[]);
    let mut stream = chat(100);
    stream["stream"] = json!(true);
    let mut raw = Raw::post(
        &node.proxy_url(),
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-stream"),
            ("x-stub-usage", "40,60"),
            ("x-stub-gate", "first"),
        ],
        &stream,
    );
    let (status, headers) = raw.head();
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("content-type: text/event-stream")),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("x-ratelimit-remaining-tokens:")),
        "{headers:?}"
    );
    // The first content chunk arrives while the stub still holds the rest.
    let mut seen = String::new();
    while !seen.contains("tok0") {
        seen.push_str(
            &raw.chunk()
                .expect("stream ended before the first content chunk"),
        );
    }
    assert!(
        stub.last_sent("first").is_none(),
        "the stub already sent its last chunk"
    );
    let got_first = Instant::now();
    stub.release("first");
    seen.push_str(&raw.rest());
    let last = stub
        .last_sent("first")
        .expect("the stub finished the stream");
    assert!(last > got_first);
    assert!(
        seen.contains("tok2") && seen.contains("data: [DONE]"),
        "{seen}"
    );
    // The proxy asked for usage; the client did not, so it never sees it.
    assert!(!seen.contains("\"usage\""), "{seen}");
    let sent = stub.requests().last().unwrap().body.clone();
    assert_eq!(sent["stream_options"]["include_usage"], json!(true));
    node.wait_metric("llmtrace_proxy_tokens_total{op=\"refunded\"}", WAIT, |v| {
        v == 9.0
    });

    // An upstream that ignores include_usage: the streamed text is counted.
    let mut raw = Raw::post(
        &node.proxy_url(),
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-stream"),
            ("x-stub-no-usage", "1"),
        ],
        &stream,
    );
    assert_eq!(raw.head().0, 200);
    let body = raw.rest();
    assert!(body.contains("tok2"), "{body}");
    // Refunded 109 - (9 + the tokens of "tok0 tok1 tok2 "): a few tokens used.
    let refunded = node.wait_metric("llmtrace_proxy_tokens_total{op=\"refunded\"}", WAIT, |v| {
        v > 9.0
    });
    let used = (PROMPT + 100) as f64 - (refunded - 9.0) - PROMPT as f64;
    assert!(
        (3.0..=15.0).contains(&used),
        "counted {used} completion tokens"
    );
}

#[test]
fn a_client_that_goes_away_cancels_the_upstream_call() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 10_000, &[]);
    let mut stream = chat(100);
    stream["stream"] = json!(true);
    let mut raw = Raw::post(
        &node.proxy_url(),
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-gone"), ("x-stub-gate", "gone")],
        &stream,
    );
    assert_eq!(raw.head().0, 200);
    let mut seen = String::new();
    while !seen.contains("tok0") {
        seen.push_str(&raw.chunk().expect("first chunk"));
    }
    drop(raw);
    // Once the proxy noticed, the stub's writes fail: the call was cut.
    stub.release("gone");
    wait_until(WAIT, "the stub to see its reader go away", || {
        stub.cancelled() >= 1
    });
    assert!(stub.last_sent("gone").is_none());
    // The reservation was settled with what was streamed (prompt + tok0).
    node.wait_metric("llmtrace_proxy_tokens_total{op=\"refunded\"}", WAIT, |v| {
        v > 90.0
    });
}

#[test]
fn a_client_that_leaves_before_the_answer_cancels_the_upstream_call() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 10_000, &[]);
    let mut body = chat(5);
    body["model"] = json!("slow-1500");
    let raw = Raw::post(
        &node.proxy_url(),
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-early")],
        &body,
    );
    // Wait until the stub holds the call, then leave.
    wait_until(WAIT, "the call to reach the stub", || {
        !stub.requests().is_empty()
    });
    drop(raw);
    // The proxy closed its upstream connection: the stub's late answer
    // finds nobody to write to.
    wait_until(WAIT, "the stub's answer to fail", || stub.cancelled() >= 1);
}

#[test]
fn errors_are_openai_shaped_and_refund_the_reservation() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 1_000, &[("proxy-upstream-timeout-ms", "500")]);
    let auth = ("authorization", "Bearer sk-err");
    // No key.
    let r = post(&node, "/v1/chat/completions", &[], &chat(5));
    assert_eq!(r.status, 401);
    assert_eq!(r.json["error"]["code"], "invalid_api_key");
    assert_eq!(r.json["error"]["param"], Value::Null);
    // The upstream's own error passes through; the tokens come back.
    let mut body = chat(100);
    body["model"] = json!("error-500");
    let r = post(&node, "/v1/chat/completions", &[auth], &body);
    assert_eq!(r.status, 500, "{r}");
    assert_eq!(r.json["error"]["code"], "stub_error");
    // "error-500" is no known model: its prompt is estimated.
    let reserved = node.wait_metric("llmtrace_proxy_tokens_total{op=\"reserved\"}", WAIT, |v| {
        v > 100.0
    });
    node.wait_metric("llmtrace_proxy_tokens_total{op=\"refunded\"}", WAIT, |v| {
        v == reserved
    });
    // Slow upstream: 504.
    body["model"] = json!("slow-3000");
    let started = Instant::now();
    let r = post(&node, "/v1/chat/completions", &[auth], &body);
    assert_eq!(r.status, 504, "{r}");
    assert_eq!(r.json["error"]["code"], "upstream_timeout");
    assert_eq!(r.json["error"]["type"], "api_error");
    assert!(started.elapsed() < Duration::from_millis(2_900));
    let reserved = node.wait_metric("llmtrace_proxy_tokens_total{op=\"reserved\"}", WAIT, |v| {
        v > reserved
    });
    node.wait_metric("llmtrace_proxy_tokens_total{op=\"refunded\"}", WAIT, |v| {
        v == reserved
    });
    // Over the token limit (burst 1000, each call reserves 109): 429 with
    // OpenAI's headers, and the upstream is not called.
    let before = stub.requests().len();
    let mut refused = None;
    for _ in 0..20 {
        let r = post(
            &node,
            "/v1/chat/completions",
            &[auth, ("x-stub-usage", "9,100")],
            &chat(100),
        );
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{r}");
    }
    let r = refused.expect("the token limit refused a call");
    assert_eq!(r.json["error"]["type"], "rate_limit_exceeded");
    assert_eq!(r.json["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("1000"));
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    let ms: u64 = r.header("retry-after-ms").unwrap().parse().unwrap();
    assert!(secs >= 1 && ms.div_ceil(1000) == secs, "{r}");
    let calls = stub.requests().len() - before;
    assert_eq!(calls, 9, "1000 tokens admit 9 calls of 109 settling at 109");
    // Unreachable upstream: 502.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let lonely = proxy_node(&url, 1_000, &[]);
    let r = post(&lonely, "/v1/chat/completions", &[auth], &chat(5));
    assert_eq!(r.status, 502, "{r}");
    assert_eq!(r.json["error"]["code"], "upstream_unreachable");
    lonely.wait_metric("llmtrace_proxy_tokens_total{op=\"refunded\"}", WAIT, |v| {
        v == (PROMPT + 5) as f64
    });
}

#[test]
fn trusted_tenant_header_shares_a_budget_across_keys() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 1_000, &[("proxy-trust-tenant-header", "true")]);
    let call = |key: &str| {
        post(
            &node,
            "/v1/chat/completions",
            &[
                ("authorization", key),
                ("x-llmtrace-tenant-id", "team-a"),
                ("x-stub-usage", "9,100"),
            ],
            &chat(100),
        )
    };
    let mut allowed = 0;
    for i in 0..20 {
        let r = call(&format!("Bearer key-{i}"));
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 200, "{r}");
        allowed += 1;
    }
    assert_eq!(allowed, 9, "one budget for the tenant, whatever the key");
    let r = post(
        &node,
        "/v1/chat/completions",
        &[("x-llmtrace-tenant-id", "bad id")],
        &chat(1),
    );
    assert_eq!(r.status, 401, "{r}");
}

#[test]
fn other_routes_stream_their_body_and_take_only_a_request() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 1_000, &[("proxy-max-request-bytes", "4096")]);
    let auth = ("authorization", "Bearer sk-other");
    let body = json!({"purpose": "batch", "note": "x".repeat(1000)});
    let r = post(&node, "/v1/files?x=1", &[auth], &body);
    // The stub has no such route: its 404 passes through.
    assert_eq!(r.status, 404, "{r}");
    assert_eq!(r.json["error"]["code"], "not_found");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("99"));
    assert_eq!(r.header("x-ratelimit-limit-tokens"), None);
    let seen = stub.requests();
    let req = seen.last().unwrap();
    assert_eq!(req.path, "/v1/files?x=1");
    assert_eq!(req.body, body);
    assert_eq!(tokens_metric(&node, "reserved"), 0.0);
    // Over the size limit: refused before anything is sent.
    let big = json!({"note": "x".repeat(5000)});
    let r = post(&node, "/v1/files", &[auth], &big);
    assert_eq!(r.status, 413, "{r}");
    assert_eq!(r.json["error"]["code"], "request_too_large");
    assert_eq!(stub.requests().len(), 1);
}

#[test]
fn hostile_requests_never_break_the_proxy() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 100_000, &[("proxy-max-request-bytes", "2048")]);
    let c = Client::new(node.proxy_url());
    let auth = ("authorization", "Bearer sk-fuzz");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let shapes: [&[u8]; 8] = [
        b"",
        b"null",
        b"[]",
        b"{\"model\": 5, \"messages\": \"x\", \"max_tokens\": -1}",
        b"{\"model\": \"gpt-4o\", \"messages\": [{\"content\": [{\"type\": \"image_url\"}, 7]}], \"n\": 1e99}",
        b"{\"stream\": true, \"stream_options\": 3, \"messages\": []}",
        b"{\"model\": \"gpt-4o\", \"max_tokens\": 18446744073709551615, \"messages\": []}",
        b"\xff\xfe{not json",
    ];
    for i in 0..60 {
        let body: Vec<u8> = if i < shapes.len() {
            shapes[i].to_vec()
        } else {
            (0..next() % 3000).map(|_| (next() % 256) as u8).collect()
        };
        let path = [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/x",
        ][i % 4];
        let r = c.post_with_headers(path, &[auth], &body);
        // An answer from the stub, or the proxy's own 413 / 429: never a
        // crash, never a 5xx of the proxy's making.
        assert!(
            [200, 404, 413, 429].contains(&r.status),
            "body #{i} on {path}: {r}"
        );
    }
    // Still alive and exact: a plain call passes.
    let r = post(&node, "/v1/chat/completions", &[auth], &chat(5));
    assert_eq!(r.status, 200, "{r}");
}

#[test]
fn an_https_upstream_is_reached_over_tls() {
    let stub = Stub::start_tls();
    let dir = std::env::temp_dir().join(format!("llmtrace-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("stub-ca.pem");
    std::fs::write(&ca, stub.cert_pem()).unwrap();
    assert!(stub.url().starts_with("https://127.0.0.1:"));
    let node = proxy_node(
        &stub.url(),
        10_000,
        &[("proxy-ca-file", ca.to_str().unwrap())],
    );
    let auth = ("authorization", "Bearer sk-tls");
    let r = post(
        &node,
        "/v1/chat/completions",
        &[auth, ("x-stub-usage", "9,100")],
        &chat(100),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.json["choices"][0]["message"]["content"],
        "Hello from stub"
    );
    // Streams too.
    let mut stream = chat(100);
    stream["stream"] = json!(true);
    let r = post(&node, "/v1/chat/completions", &[auth], &stream);
    assert_eq!(r.status, 200, "{r}");
    assert!(r.text.contains("tok2") && r.text.contains("[DONE]"), "{r}");
    // Without the stub's certificate the upstream is not trusted: 502.
    let untrusted = proxy_node(&stub.url(), 10_000, &[]);
    let r = post(&untrusted, "/v1/chat/completions", &[auth], &chat(5));
    assert_eq!(r.status, 502, "{r}");
    assert_eq!(r.json["error"]["code"], "upstream_unreachable");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn runtime_overrides_of_the_token_limit_apply_to_proxied_calls() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 10_000, &[]);
    let key = "sk-override";
    // The tenant of a key is its UUID v5, computed here by Python's uuid
    // module (an independent implementation) to address the admin API.
    let tenant_id = uuid_v5_of(key);
    let r = node.admin().put_json(
        &format!("/admin/tenants/{tenant_id}/limits"),
        &json!({"limit": "tokens", "requests_per_second": 60, "burst_size": 500}),
    );
    assert_eq!(r.status, 200, "{r}");
    let auth = format!("Bearer {key}");
    llmtrace_integration::wait_until(WAIT, "the override to apply", || {
        let r = post(
            &node,
            "/v1/chat/completions",
            &[("authorization", &auth), ("x-stub-usage", "9,100")],
            &chat(100),
        );
        assert!(r.status == 200 || r.status == 429, "{r}");
        r.header("x-ratelimit-limit-tokens") == Some("500")
    });
}

/// UUID v5 (OID namespace) of `key`, computed here independently of the
/// node (RFC 9562: SHA-1 of namespace + name, version and variant bits).
fn uuid_v5_of(key: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, uuid; print(uuid.uuid5(uuid.NAMESPACE_OID, sys.argv[1]))",
            key,
        ])
        .output()
        .expect("python3");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
