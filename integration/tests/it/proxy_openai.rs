//! The proxy driven by the official `openai` Python client (installed into
//! a venv by `scripts/test.sh`, found through `LLMTRACE_PYTHON`): calls
//! succeed unchanged, a tenant over its limit gets `openai.RateLimitError`
//! with the headers, and a token limit holds exactly across 3 nodes.

use std::time::Duration;

use llmtrace_integration::{Cluster, Node, Stub};
use serde_json::{json, Value};

/// Runs `integration/py/openai_client.py` and parses its JSON line.
fn client(args: &[&str]) -> Value {
    llmtrace_integration::run_python("openai_client.py", args)
}

const WAIT: Duration = Duration::from_secs(30);

fn proxy_node(stub: &Stub, token_burst: u64, rps: u64, burst: u64) -> Node {
    Node::builder()
        .rate(rps, burst)
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", stub.url())
        .flag("tokens-per-minute", 1)
        .flag("token-burst-size", token_burst)
        .start()
}

#[test]
fn openai_client_calls_succeed_unchanged() {
    let stub = Stub::start();
    let node = proxy_node(&stub, 100_000, 100, 100);
    let out = client(&["basic", &node.proxy_url(), "sk-python"]);
    assert_eq!(out["content"], "Hello from stub");
    assert_eq!(out["usage_total"], 100);
    assert_eq!(out["stream_content"], "tok0 tok1 tok2 ");
    // The client did not ask for usage: the proxy's usage chunk is hidden.
    assert_eq!(out["stream_usage_chunks"], 0);
    // It asked: it gets exactly the upstream's.
    assert_eq!(out["asked_usage"], json!([100]));
    assert_eq!(out["embedding"], json!([0.25, 0.5]));
    assert_eq!(out["headers"]["x-ratelimit-limit-tokens"], "100000");
    assert_eq!(out["headers"]["x-ratelimit-limit-requests"], "100");
    // Three chats of 100 tokens and an embedding of 10 settle exactly at
    // 310 tokens, whatever was reserved.
    node.wait_metric("llmtrace_proxy_requests_total{status=\"200\"}", WAIT, |v| {
        v == 4.0
    });
    llmtrace_integration::wait_until(WAIT, "reconcile to 310 tokens", || {
        let m = |op: &str| {
            node.metric(&format!("llmtrace_proxy_tokens_total{{op=\"{op}\"}}"))
                .unwrap_or(0.0)
        };
        m("reserved") - m("refunded") + m("charged") == 310.0
    });
}

#[test]
fn over_the_limit_is_a_rate_limit_error_with_headers() {
    let stub = Stub::start();
    // Requests: burst 3 at 1 per second; tokens plenty.
    let node = proxy_node(&stub, 100_000, 1, 3);
    let out = client(&["until-limited", &node.proxy_url(), "sk-limited", "10"]);
    assert_eq!(out["status"], 429, "{out}");
    assert!(out["allowed"].as_u64().unwrap() >= 3, "{out}");
    assert_eq!(out["error"]["code"], "rate_limit_exceeded");
    let h = &out["headers"];
    assert_eq!(h["x-ratelimit-limit-requests"], "3");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert!(h["retry-after"].as_str().is_some(), "{h}");
    assert!(h["retry-after-ms"].as_str().is_some(), "{h}");
    assert!(h["x-ratelimit-reset-requests"].as_str().is_some(), "{h}");
    // Tokens: burst 500 admits 4 calls of 109 (settled at 100 each).
    let node = proxy_node(&stub, 500, 100, 100);
    let out = client(&["until-limited", &node.proxy_url(), "sk-tokens", "20"]);
    assert_eq!(out["status"], 429, "{out}");
    assert_eq!(out["allowed"], 4, "{out}");
    let h = &out["headers"];
    assert_eq!(h["x-ratelimit-limit-tokens"], "500");
    assert!(
        h["x-ratelimit-remaining-tokens"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            < 109
    );
}

#[test]
fn token_limit_is_exact_across_three_nodes() {
    let stub = Stub::start();
    // 1 token per minute: no refill worth counting during the test. Each
    // call reserves 9 + 100 and settles at 100, so a burst of 1000 admits
    // exactly 9 calls (1000 - 8 * 100 = 200 >= 109; 1000 - 900 = 100 < 109),
    // whichever node they reach, streaming or not.
    let cluster = Cluster::builder()
        .nodes(3)
        .rate(1000, 1000)
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", stub.url())
        .flag("tokens-per-minute", 1)
        .flag("token-burst-size", 1000)
        .start();
    let urls: Vec<String> = (0..3).map(|i| cluster.node(i).proxy_url()).collect();
    let urls = urls.join(",");
    for (key, stream) in [("sk-exact-a", "0"), ("sk-exact-b", "1")] {
        let out = client(&["round-robin", &urls, key, "15", stream]);
        assert_eq!(out["allowed"], 9, "stream={stream}: {out}");
        assert_eq!(out["refused"], 6, "stream={stream}: {out}");
    }
}
