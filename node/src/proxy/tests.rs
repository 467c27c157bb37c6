//! The proxy's own answers (no upstream needed: 401, 413, 429, 502), driven
//! through `actix_web::test` with the real limiter. Calls that reach an
//! upstream are tested in `integration/tests/proxy.rs` against the stub.

use std::collections::BTreeMap;

use actix_web::{test, App};
use llmtrace_actors::testing::RouterFixture;
use llmtrace_actors::Op;
use llmtrace_cluster_config::{Limit, ProxySettings, RateLimitConfig, TokenLimitConfig};
use serde_json::{json, Value};

use super::*;

fn router(rps: u32, burst: u32, tokens_per_minute: u32, token_burst: u32) -> Router {
    RouterFixture::new(RateLimitConfig {
        tokens: TokenLimitConfig {
            tokens_per_minute,
            burst_size: token_burst,
            tenant_overrides: BTreeMap::new(),
        },
        ..RateLimitConfig::with_requests(rps, burst)
    })
    .start()
}

/// An upstream address where nothing listens.
fn dead_upstream() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn context(router: Router, max_request_bytes: usize) -> Arc<ProxyContext> {
    let config = ProxyConfig::resolve(
        ProxySettings {
            upstream: Some(dead_upstream()),
            max_request_bytes: Some(max_request_bytes),
            ..ProxySettings::default()
        },
        &RateLimitConfig::default(),
    )
    .unwrap();
    ProxyContext::new(router, config, Arc::default()).unwrap()
}

macro_rules! app {
    ($ctx:expr) => {{
        let ctx = $ctx;
        let client = client(&ctx);
        test::init_service(
            App::new()
                .app_data(web::Data::from(ctx))
                .app_data(web::Data::new(client))
                .configure(routes),
        )
        .await
    }};
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "gpt-4o", "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "hello world"}]})
}

async fn error_of(resp: actix_web::dev::ServiceResponse) -> Value {
    let body: Value = test::read_body_json(resp).await;
    body["error"].clone()
}

#[actix_rt::test]
async fn no_key_is_401_in_openai_shape() {
    let app = app!(context(router(10, 10, 0, 1), 1024));
    let req = test::TestRequest::post()
        .uri("/v1/chat/completions")
        .set_json(chat(5))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let e = error_of(resp).await;
    assert_eq!(e["code"], "invalid_api_key");
    assert_eq!(e["param"], Value::Null);
}

#[actix_rt::test]
async fn oversized_body_is_413() {
    let app = app!(context(router(10, 10, 0, 1), 64));
    let req = test::TestRequest::post()
        .uri("/v1/chat/completions")
        .insert_header(("authorization", "Bearer k"))
        .set_payload(vec![b'x'; 65])
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(resp).await["code"], "request_too_large");
}

#[actix_rt::test]
async fn unreachable_upstream_is_502_and_refunds_the_tokens() {
    let ctx = context(router(100, 100, 60, 1000), 1 << 20);
    let metrics = Arc::clone(&ctx.metrics);
    let router = ctx.router.clone();
    let app = app!(ctx);
    let req = test::TestRequest::post()
        .uri("/v1/chat/completions")
        .insert_header(("authorization", "Bearer k"))
        .set_json(chat(100))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_of(resp).await["code"], "upstream_unreachable");
    // gpt-4o "hello world" chat: 9 prompt tokens + 100 completion.
    assert_eq!(metrics.tokens_reserved.get(), 109);
    // Both takes (one request, the tokens) are client checks, decided here.
    assert_eq!(router.metrics().routed_local.get(), 2);
    let tenant = tenant::tenant_of_key("k");
    crate::proxy::tests::wait_refunded(&metrics, 109).await;
    // The whole bucket is available again.
    let v = router
        .perform(tenant, Limit::TOKENS, Op::Take, 1000)
        .await
        .unwrap();
    assert!(v.verdict.is_allowed());
}

pub(crate) async fn wait_refunded(m: &ProxyMetrics, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.tokens_refunded.get() < n {
        assert!(Instant::now() < deadline, "refund of {n} never applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(m.tokens_refunded.get(), n);
}

/// Takes `n` tokens from the bucket of `key`'s tenant.
async fn take_tokens(router: &Router, key: &str, n: u64) {
    let tenant = tenant::tenant_of_key(key);
    let r = router
        .perform(tenant, Limit::TOKENS, Op::Take, n)
        .await
        .unwrap();
    assert!(r.verdict.is_allowed());
}

#[actix_rt::test]
async fn over_the_token_limit_is_429_with_openai_headers() {
    // One token per minute, burst 150: what the test takes does not refill
    // while it runs, however slow the machine.
    let ctx = context(router(100, 100, 1, 150), 1 << 20);
    let router = ctx.router.clone();
    let app = app!(ctx);
    // Leave 50 tokens; the call reserves 109 (9 prompt + 100).
    take_tokens(&router, "tok", 100).await;
    let req = test::TestRequest::post()
        .uri("/v1/chat/completions")
        .insert_header(("authorization", "Bearer tok"))
        .set_json(chat(100))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = resp.headers().clone();
    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(get("x-ratelimit-limit-tokens").as_deref(), Some("150"));
    assert_eq!(get("x-ratelimit-remaining-tokens").as_deref(), Some("50"));
    assert_eq!(get("x-ratelimit-limit-requests").as_deref(), Some("100"));
    // 59 missing tokens at one per minute, less what refilled since the
    // take (the tokenizer's first use takes seconds on a debug build).
    let ms: u64 = get("retry-after-ms").unwrap().parse().unwrap();
    assert!((3_480_000..=3_540_000).contains(&ms), "{ms}");
    let secs: u64 = get("retry-after").unwrap().parse().unwrap();
    assert!(
        secs * 1000 >= ms && secs * 1000 <= ms + 1000,
        "whole seconds, rounded up: {secs} s for {ms} ms"
    );
    assert!(get("x-ratelimit-reset-tokens").unwrap().ends_with('s'));
    let e = error_of(resp).await;
    assert_eq!(e["type"], "rate_limit_exceeded");
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(e["message"].as_str().unwrap().contains("tokens"), "{e}");
}

#[actix_rt::test]
async fn over_the_request_limit_is_429() {
    let app = app!(context(router(1, 2, 0, 1), 1 << 20));
    let call = || {
        test::TestRequest::get()
            .uri("/v1/models")
            .insert_header(("authorization", "Bearer r"))
            .to_request()
    };
    for _ in 0..2 {
        let resp = test::call_service(&app, call()).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    }
    let resp = test::call_service(&app, call()).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        resp.headers()
            .get("x-ratelimit-remaining-requests")
            .unwrap(),
        "0"
    );
    assert!(resp.headers().get("x-ratelimit-limit-tokens").is_none());
}

#[actix_rt::test]
async fn anthropic_calls_are_refused_in_anthropic_shape() {
    // 1 token per minute (no refill shows while the test runs), burst 150.
    let ctx = context(router(100, 100, 1, 150), 1 << 20);
    let router = ctx.router.clone();
    let app = app!(ctx);
    // Leave 50 tokens; the call reserves 1 ("hi") + 200, cut to the burst.
    take_tokens(&router, "ant", 100).await;
    let message = json!({"model": "claude-x", "max_tokens": 200,
                         "messages": [{"role": "user", "content": "hi"}]});
    let req = test::TestRequest::post()
        .uri("/v1/messages")
        .insert_header(("x-api-key", "ant"))
        .set_json(&message)
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = resp.headers().clone();
    assert_eq!(h.get("anthropic-ratelimit-tokens-limit").unwrap(), "150");
    assert_eq!(h.get("anthropic-ratelimit-tokens-remaining").unwrap(), "50");
    assert_eq!(h.get("anthropic-ratelimit-requests-limit").unwrap(), "100");
    assert!(h.get("x-ratelimit-limit-tokens").is_none());
    // 100 missing tokens at one per minute (the clock moves a little).
    let retry: u64 = h
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((5_940..=6_000).contains(&retry), "{retry}");
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // A body the proxy refuses is a 400 that asks no limit at all.
    let checks = router.metrics().routed_local.get();
    let req = test::TestRequest::post()
        .uri("/v1/messages")
        .insert_header(("x-api-key", "ant"))
        .set_json(json!({"model": "claude-x", "max_tokens": "lots", "messages": []}))
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("max_tokens"));
    assert_eq!(router.metrics().routed_local.get(), checks);
}
