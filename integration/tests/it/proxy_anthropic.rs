//! The proxy on Anthropic's Messages API, driven by the official
//! `anthropic` Python client (installed into the venv by `scripts/test.sh`,
//! found through `LLMTRACE_PYTHON`) and by raw HTTP: calls pass unchanged,
//! `max_tokens` is reserved and settled to the usage the upstream reports
//! (streaming and not, cache tokens included), `count_tokens` is free, a
//! tenant over its limit gets `anthropic.RateLimitError` with Anthropic's
//! headers, hostile bodies are Anthropic-shaped 400s that charge nothing.
//! Also OpenAI's `/v1/responses` and `/v1/embeddings` settled from their
//! usage (the `openai` client).

use std::time::Duration;

use llmtrace_integration::http::Client;
use llmtrace_integration::{wait_until, Node, Stub};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn anthropic(args: &[&str]) -> Value {
    llmtrace_integration::run_python("anthropic_client.py", args)
}

/// A node proxying to `upstream` with requests `rate`/`burst` and a token
/// bucket of `token_burst` refilled at 1 per minute: no refill shows in the
/// whole levels during a test.
fn proxy_node(upstream: &str, rps: u64, burst: u64, token_burst: u64) -> Node {
    Node::builder()
        .rate(rps, burst)
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", upstream)
        .flag("proxy-trust-tenant-header", "true")
        .flag("tokens-per-minute", 1)
        .flag("token-burst-size", token_burst)
        .start()
}

/// Whole tokens left in `tenant`'s bucket, as its owner reports it.
fn tokens_left(node: &Node, tenant: &str) -> u64 {
    let r = node
        .admin()
        .get(&format!("/admin/limits/tokens/keys/{tenant}"));
    assert_eq!(r.status, 200, "{r}");
    r.u64_field("remaining")
}

fn wait_tokens_left(node: &Node, tenant: &str, want: u64) {
    let mut last = 0;
    let what = format!("tokens of {tenant} to settle at {want}");
    wait_until(WAIT, &what, || {
        last = tokens_left(node, tenant);
        last == want
    });
}

/// Requests the limiter allowed on this node.
fn requests_allowed(node: &Node) -> f64 {
    node.metric("llmtrace_checks_total{limit=\"requests\",decision=\"allowed\"}")
        .unwrap_or(0.0)
}

/// The estimate of a Claude prompt (its tokenizer is not public): one token
/// per 4 bytes of text.
fn estimate(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// What the stub reports for `anthropic_client.py` calls: 40 input, 60
/// output, 200 read from the cache, 100 written to it.
const STUB_TOTAL: u64 = 40 + 60 + 200 + 100;

#[test]
fn anthropic_client_calls_are_settled_from_usage_and_count_tokens_is_free() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 100, 100, 100_000);
    let out = anthropic(&["basic", &node.proxy_url(), "sk-ant-basic"]);
    let tenant = out["tenant"].as_str().unwrap();
    let usage = json!({"input": 40, "output": 60, "cache_read": 200, "cache_creation": 100});
    assert_eq!(out["content"], "Hello from stub", "{out}");
    assert_eq!(out["usage"], usage);
    assert_eq!(out["stream_content"], "tok0 tok1 tok2 ");
    // The stream's usage reaches the client untouched.
    assert_eq!(out["stream_usage"], usage);
    assert_eq!(out["count_tokens"], 40);
    // Anthropic's headers: the first call reserved "hello world" + 100.
    let h = &out["headers"];
    let reserved = estimate("hello world") + 100;
    assert_eq!(h["anthropic-ratelimit-tokens-limit"], "100000", "{h}");
    assert_eq!(
        h["anthropic-ratelimit-tokens-remaining"],
        (100_000 - reserved).to_string()
    );
    assert_eq!(h["anthropic-ratelimit-requests-limit"], "100");
    assert_eq!(h["anthropic-ratelimit-requests-remaining"], "99");
    for reset in ["tokens", "requests"] {
        let at = h[format!("anthropic-ratelimit-{reset}-reset")]
            .as_str()
            .unwrap();
        assert!(
            at.len() == 20 && at.ends_with('Z') && at.contains('T'),
            "{at}"
        );
    }
    // Both calls settle at the usage, cache tokens included; count_tokens
    // takes nothing (neither tokens nor a request).
    wait_tokens_left(&node, tenant, 100_000 - 2 * STUB_TOTAL);
    assert_eq!(requests_allowed(&node), 2.0);
    let reqs = stub.requests();
    let counted: Vec<_> = reqs
        .iter()
        .filter(|r| r.path == "/v1/messages/count_tokens")
        .collect();
    assert_eq!(counted.len(), 1, "{reqs:?}");
    // The client's key (a bearer key from this client; `x-api-key` from
    // older ones, tested below) and version reach the upstream.
    let h = &counted[0].headers;
    assert_eq!(
        h.get("authorization").map(String::as_str),
        Some("Bearer sk-ant-basic"),
        "{h:?}"
    );
    assert!(h.contains_key("anthropic-version"), "{h:?}");
}

#[test]
fn over_the_limit_is_an_anthropic_rate_limit_error_with_headers() {
    let stub = Stub::start();
    // Requests: burst 3 at 1 per second; tokens plenty.
    let node = proxy_node(&stub.url(), 1, 3, 100_000);
    let out = anthropic(&["until-limited", &node.proxy_url(), "sk-ant-rpm", "10"]);
    assert_eq!(out["status"], 429, "{out}");
    assert!(out["allowed"].as_u64().unwrap() >= 3, "{out}");
    assert_eq!(out["error"]["type"], "error", "{out}");
    assert_eq!(out["error"]["error"]["type"], "rate_limit_error", "{out}");
    assert!(out["error"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("requests"));
    let h = &out["headers"];
    assert_eq!(h["anthropic-ratelimit-requests-limit"], "3", "{h}");
    assert_eq!(h["anthropic-ratelimit-requests-remaining"], "0");
    assert!(h["anthropic-ratelimit-requests-reset"].as_str().is_some());
    let retry: u64 = h["retry-after"].as_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "{h}");
    // The requests bucket is empty now, yet count_tokens passes: free.
    let out = anthropic(&["count-tokens", &node.proxy_url(), "sk-ant-rpm", "10"]);
    assert_eq!(out["counts"], json!(vec![40; 10]), "{out}");

    // Tokens: each call reserves 103 ("hello world" + 100) and settles at
    // 100, so a burst of 500 admits 4 (500 - 4 * 100 = 100 < 103).
    let node = proxy_node(&stub.url(), 100, 100, 500);
    let out = anthropic(&["until-limited", &node.proxy_url(), "sk-ant-tpm", "20"]);
    assert_eq!(out["status"], 429, "{out}");
    assert_eq!(out["allowed"], 4, "{out}");
    let h = &out["headers"];
    assert_eq!(h["anthropic-ratelimit-tokens-limit"], "500", "{h}");
    let left: u64 = h["anthropic-ratelimit-tokens-remaining"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < estimate("hello world") + 100, "{h}");
    assert!(out["error"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens"));
}

fn post(
    node: &Node,
    tenant: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> llmtrace_integration::Reply {
    let mut headers = vec![("x-llmtrace-tenant-id", tenant)];
    headers.extend_from_slice(extra);
    Client::new(node.proxy_url()).post_with_headers("/v1/messages", &headers, body)
}

/// The smallest valid Messages body.
const MINIMAL: &[u8] = br#"{"model": "claude-x", "max_tokens": 5, "messages": []}"#;

/// One call through the `anthropic` client expected to fail: its status,
/// body, exception class and the key's tenant.
fn failed_call(node: &Node, key: &str, model: &str, max_tokens: u64) -> Value {
    let max_tokens = max_tokens.to_string();
    anthropic(&["status", &node.proxy_url(), key, model, &max_tokens])
}

fn assert_anthropic_error(r: &llmtrace_integration::Reply, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{r}");
    assert_eq!(r.json["type"], "error", "{r}");
    assert_eq!(r.json["error"]["type"], kind, "{r}");
    assert!(
        !r.json["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{r}"
    );
}

#[test]
fn hostile_bodies_are_anthropic_400s_that_charge_nothing() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 100, 100, 10_000);
    let bodies: [&[u8]; 12] = [
        b"{not json",
        b"",
        b"[]",
        b"{\"model\": \"claude-x\", \"messages\": []}",
        b"{\"model\": \"claude-x\", \"max_tokens\": \"100\", \"messages\": []}",
        b"{\"model\": \"claude-x\", \"max_tokens\": -1, \"messages\": []}",
        b"{\"model\": \"claude-x\", \"max_tokens\": 1e30, \"messages\": []}",
        b"{\"model\": \"claude-x\", \"max_tokens\": 18446744073709551615, \"messages\": []}",
        b"{\"model\": \"claude-x\", \"max_tokens\": 100000000, \"messages\": []}",
        b"{\"model\": \"claude-x\", \"max_tokens\": 5, \"messages\": {}}",
        b"{\"model\": 7, \"max_tokens\": 5, \"messages\": []}",
        b"{\"model\": \"claude-x\", \"max_tokens\": 5, \"messages\": [], \"stream\": \"yes\"}",
    ];
    for body in bodies {
        let r = post(&node, "hostile", &[], body);
        assert_anthropic_error(&r, 400, "invalid_request_error");
    }
    // None reached the upstream, none was charged.
    assert!(stub.requests().is_empty());
    assert_eq!(requests_allowed(&node), 0.0);
    assert_eq!(tokens_left(&node, "hostile"), 10_000);
    // The official client raises BadRequestError for it.
    let out = failed_call(&node, "sk-ant-bad", "claude-x", 100_000_000);
    assert_eq!(out["status"], 400, "{out}");
    assert_eq!(out["class"], "BadRequestError", "{out}");
    assert_eq!(out["error"]["error"]["type"], "invalid_request_error");

    // No key: 401 in Anthropic's shape.
    let r = Client::new(node.proxy_url()).post_with_headers("/v1/messages", &[], MINIMAL);
    assert_anthropic_error(&r, 401, "authentication_error");
    // Anthropic's `x-api-key` is a key like a bearer one.
    let r = Client::new(node.proxy_url()).post_with_headers(
        "/v1/messages",
        &[("x-api-key", "sk-ant-header")],
        MINIMAL,
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["content"][0]["text"], "Hello from stub", "{r}");
    // An upstream error passes through and gives the reservation back.
    let out = failed_call(&node, "sk-ant-500", "error-500", 100);
    assert_eq!(out["status"], 500, "{out}");
    assert_eq!(out["class"], "InternalServerError", "{out}");
    assert_eq!(out["error"]["error"]["message"], "stub error");
    wait_tokens_left(&node, out["tenant"].as_str().unwrap(), 10_000);
    // Unreachable upstream: the proxy's 502, in Anthropic's shape.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let node = proxy_node(&dead, 100, 100, 10_000);
    let r = post(&node, "dead", &[], MINIMAL);
    assert_anthropic_error(&r, 502, "api_error");
    wait_tokens_left(&node, "dead", 10_000);
}

#[test]
fn a_stream_cut_before_its_usage_is_settled_from_what_was_seen() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 100, 100, 10_000);
    let body = json!({"model": "claude-x", "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": "hello world"}]});
    let body = body.to_string();
    // A whole stream: settled at its message_start + message_delta usage.
    let usage = [("x-stub-usage", "40,60"), ("x-stub-cache", "200,100")];
    let r = post(&node, "streamed", &usage, body.as_bytes());
    assert_eq!(r.status, 200, "{r}");
    assert!(r.text.contains("event: message_delta"), "{r}");
    wait_tokens_left(&node, "streamed", 10_000 - STUB_TOTAL);
    // Cut after the text: the input of message_start, the text counted.
    let cut = [usage[0], usage[1], ("x-stub-cut", "1")];
    let r = post(&node, "cut", &cut, body.as_bytes());
    assert_eq!(r.status, 200, "{r}");
    assert!(
        !r.text.contains("message_delta") && r.text.contains("tok2"),
        "{r}"
    );
    let seen = 40 + 200 + 100 + estimate("tok0 tok1 tok2 ");
    wait_tokens_left(&node, "cut", 10_000 - seen);
}

#[test]
fn responses_and_embeddings_are_settled_from_usage() {
    let stub = Stub::start();
    let node = proxy_node(&stub.url(), 100, 100, 100_000);
    let out = llmtrace_integration::run_python(
        "openai_client.py",
        &["responses", &node.proxy_url(), "sk-responses"],
    );
    let tenant = out["tenant"].as_str().unwrap();
    assert_eq!(out["text"], "Hello from stub", "{out}");
    // 40 uncached + 30 cached input, 60 output.
    assert_eq!(out["usage"], json!([70, 30, 60]));
    assert_eq!(out["stream_text"], "tok0 tok1 tok2 ");
    assert_eq!(out["stream_total"], 130);
    assert_eq!(out["embedding_tokens"], 7);
    wait_tokens_left(&node, tenant, 100_000 - 130 - 130 - 7);
    // The Responses stream was forwarded as the client sent it.
    let reqs = stub.requests();
    let streamed = reqs
        .iter()
        .find(|r| r.path == "/v1/responses" && r.body["stream"] == json!(true))
        .expect("a streamed Responses call");
    assert!(
        streamed.body.get("stream_options").is_none(),
        "{streamed:?}"
    );
}
