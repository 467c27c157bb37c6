//! HTTP tests: the real routes and the real limiter (shards on arbiters),
//! driven through `actix_web::test`.

use std::sync::Arc;

use actix_web::{test, App};
use llmtrace_actors::testing::RouterFixture;
use llmtrace_actors::ClusterView;
use llmtrace_cluster_config::RateLimitConfig;
use serde_json::Value;

use super::*;

/// A ready node of one (no ring: every check is decided locally) whose
/// cluster listener is `cluster_listener` (the test service's own listener
/// is 127.0.0.1:8080).
fn node(rate: u32, burst: u32, secret: Option<&str>, cluster_listener: &str) -> Arc<NodeContext> {
    node_with(
        RateLimitConfig::with_requests(rate, burst),
        secret,
        cluster_listener,
    )
}

/// A ready node of one with `config`.
fn node_with(
    config: RateLimitConfig,
    secret: Option<&str>,
    cluster_listener: &str,
) -> Arc<NodeContext> {
    let router = RouterFixture::new(config).shards(2).start();
    let ctx = NodeContext::new(
        router,
        secret.map(str::to_string),
        cluster_listener.parse().unwrap(),
    );
    ctx.set_ready(true);
    ctx
}

/// A public-facing node of one.
fn limiter(rate: u32, burst: u32) -> Arc<NodeContext> {
    node(rate, burst, None, "127.0.0.1:7946")
}

macro_rules! app {
    ($limiter:expr) => {
        test::init_service(
            App::new()
                .app_data(web::Data::from($limiter))
                .configure(public_routes),
        )
        .await
    };
}

fn hv(h: &actix_web::http::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_string()
}

fn post(path: &str, body: &str) -> actix_web::test::TestRequest {
    test::TestRequest::post()
        .uri(path)
        .insert_header(("content-type", "application/json"))
        .set_payload(body.to_string())
}

#[actix_rt::test]
async fn the_tokens_limit_is_checked_per_minute() {
    let mut config = RateLimitConfig::default();
    config.tokens.tokens_per_minute = 600;
    config.tokens.burst_size = 1000;
    let app = app!(node_with(config, None, "127.0.0.1:7946"));
    let check = r#"{"tenant_id":"a","limit":"tokens","cost":400}"#;
    let resp = test::call_service(&app, post("/v1/check", check).to_request()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(hv(resp.headers(), "x-ratelimit-limit-tokens"), "1000");
    assert_eq!(hv(resp.headers(), "x-ratelimit-remaining-tokens"), "600");
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["limit"], "tokens");
    assert_eq!(body["tokens_per_minute"], 600);
    assert_eq!(body["requests_per_second"], Value::Null);
    // 800 more: 200 missing at 10 per second, so 20 s to wait.
    let resp = test::call_service(
        &app,
        post(
            "/v1/check",
            r#"{"tenant_id":"a","limit":"tokens","cost":800}"#,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 429);
    let body: Value = test::read_body_json(resp).await;
    let ms = body["retry_after_ms"].as_u64().unwrap();
    assert!((19_900..=20_000).contains(&ms), "{ms}");
}

#[actix_rt::test]
async fn allowed_then_refused_with_headers() {
    let app = app!(limiter(1, 2));
    for remaining in ["1", "0"] {
        let resp =
            test::call_service(&app, post("/v1/check", r#"{"tenant_id":"a"}"#).to_request()).await;
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(hv(h, "x-ratelimit-remaining-requests"), remaining);
        assert_eq!(hv(h, "x-ratelimit-limit-requests"), "2");
        assert_eq!(hv(h, "RateLimit-Policy"), "\"requests\";q=2;w=2");
        assert!(h.contains_key("x-ratelimit-reset-requests"));
        let body: Value = test::read_body_json(resp).await;
        assert_eq!(body["allowed"], true);
        assert_eq!(body["burst"], 2);
    }
    let resp =
        test::call_service(&app, post("/v1/check", r#"{"tenant_id":"a"}"#).to_request()).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(hv(resp.headers(), "Retry-After"), "1");
    assert!(hv(resp.headers(), "RateLimit").starts_with("\"requests\";r=0;"));
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["allowed"], false);
    assert_eq!(body["tenant_id"], "a");
    assert_eq!(body["requests_per_second"], 1);
    assert!(body["retry_after_secs"].as_u64().unwrap() >= 1);
}

#[actix_rt::test]
async fn bad_input_is_a_json_error_naming_the_field() {
    let app = app!(limiter(1, 5));
    let cases = [
        ("{", 400, None),
        (r#"{"cost":1}"#, 400, Some("tenant_id")),
        (r#"{"tenant_id":"a","cost":0}"#, 400, Some("cost")),
        (r#"{"tenant_id":"a","cost":6}"#, 400, Some("cost")),
        (r#"{"tenant_id":"a","limit":"nope"}"#, 400, Some("limit")),
    ];
    for (body, status, field) in cases {
        let resp = test::call_service(&app, post("/v1/check", body).to_request()).await;
        assert_eq!(resp.status(), status, "{body}");
        let v: Value = test::read_body_json(resp).await;
        assert!(v["error"]["code"].is_string(), "{v}");
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{body}");
        }
    }
    let big = format!(r#"{{"tenant_id":"{}"}}"#, "a".repeat(70_000));
    let resp = test::call_service(&app, post("/v1/check", &big).to_request()).await;
    assert_eq!(resp.status(), 413);
    let resp =
        test::call_service(&app, test::TestRequest::get().uri("/v1/check").to_request()).await;
    assert_eq!(resp.status(), 405);
    let resp = test::call_service(&app, test::TestRequest::get().uri("/nope").to_request()).await;
    assert_eq!(resp.status(), 404);
    let v: Value = test::read_body_json(resp).await;
    assert_eq!(v["error"]["code"], "not_found");
}

#[actix_rt::test]
async fn batch_answers_in_order_with_per_item_errors() {
    let app = app!(limiter(1, 1));
    let body = r#"{"checks":[{"tenant_id":"a"},{"tenant_id":""},{"tenant_id":"a"},{"tenant_id":"b","cost":1}]}"#;
    let resp = test::call_service(&app, post("/v1/check/batch", body).to_request()).await;
    assert_eq!(resp.status(), 200);
    let v: Value = test::read_body_json(resp).await;
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r[0]["allowed"], true);
    assert_eq!(r[1]["error"]["field"], "tenant_id");
    assert_eq!(r[2]["allowed"], false);
    assert_eq!(r[3]["allowed"], true);
}

#[actix_rt::test]
async fn health_and_metrics() {
    let l = limiter(1, 1);
    let app = app!(l.clone());
    for path in ["/healthz", "/readyz"] {
        let resp = test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
        assert_eq!(resp.status(), 200);
    }
    test::call_service(&app, post("/v1/check", r#"{"tenant_id":"m"}"#).to_request()).await;
    let admin = test::init_service(
        App::new()
            .app_data(web::Data::from(l))
            .configure(admin_routes),
    )
    .await;
    let resp = test::call_service(
        &admin,
        test::TestRequest::get().uri("/metrics").to_request(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/plain; version=0.0.4",
        "Prometheus text format 0.0.4"
    );
    let text = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "llmtrace_checks_total{limit=\"requests\",decision=\"allowed\"} 1",
        "llmtrace_routed_checks_total{route=\"local\"} 1",
        "llmtrace_buckets_resident 1",
        "llmtrace_node_ready 1",
        "llmtrace_node_draining 0",
        "llmtrace_runtime_overrides 0",
        "llmtrace_cache_info{layer=\"memory\"} 1",
        "# TYPE llmtrace_proxy_requests_total counter",
    ] {
        assert!(lines.contains(&want), "{want}\n{text}");
    }
    assert!(!text.contains("# EOF"), "{text}");
}

#[actix_rt::test]
async fn readyz_follows_the_ready_flag() {
    let ctx = limiter(1, 1);
    ctx.set_ready(false);
    let app = app!(ctx.clone());
    let resp = test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
    assert_eq!(resp.status(), 503);
    ctx.set_ready(true);
    let resp = test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
    assert_eq!(resp.status(), 200);
}

#[actix_rt::test]
async fn cluster_endpoint_refuses_hostile_input() {
    use llmtrace_actors::cluster::rpc::wire as rpc;
    use llmtrace_actors::Rpc;
    // Served as if on the cluster listener.
    let ctx = node(100, 200, Some("s3cret-value"), "127.0.0.1:8080");
    let app = test::init_service(
        App::new()
            .app_data(web::Data::from(ctx))
            .configure(cluster_routes),
    )
    .await;
    let good = rpc::encode(&rpc::BatchRequest {
        origin: "peer".into(),
        checks: vec![rpc::WireCheck {
            op: 0,
            id: 1,
            tenant: "t".into(),
            limit: "requests".into(),
            cost: 1,
            retry: false,
            hops: 1,
        }],
    });
    let call = |secret: Option<&str>, body: Vec<u8>| {
        let mut r = test::TestRequest::post()
            .uri(rpc::BatchRequest::PATH)
            .set_payload(body);
        if let Some(s) = secret {
            r = r.insert_header((rpc::SECRET_HEADER, s.to_string()));
        }
        r.to_request()
    };
    assert_eq!(
        test::call_service(&app, call(None, good.clone()))
            .await
            .status(),
        401
    );
    assert_eq!(
        test::call_service(&app, call(Some("wrong-secret"), good.clone()))
            .await
            .status(),
        401
    );
    for garbage in [
        vec![],
        vec![9, 1, 2],
        vec![rpc::WIRE_VERSION, 0xff, 0xff],
        vec![0u8; 2 << 20],
    ] {
        let status = test::call_service(&app, call(Some("s3cret-value"), garbage))
            .await
            .status();
        assert!(status == 400 || status == 413, "{status}");
    }
    let resp = test::call_service(&app, call(Some("s3cret-value"), good)).await;
    assert_eq!(resp.status(), 200);
    let body = test::read_body(resp).await;
    let answer: rpc::BatchResponse = rpc::decode(&body).unwrap();
    assert!(matches!(
        answer.results[0].result,
        rpc::WireResult::Limited {
            decision: llmtrace_actors::Decision::Allowed { .. },
            ..
        }
    ));
}

#[actix_rt::test]
async fn node_to_node_route_is_not_served_on_the_public_listener() {
    // The test service's listener is 127.0.0.1:8080; the cluster listener is elsewhere.
    let app = test::init_service(
        App::new()
            .app_data(web::Data::from(limiter(1, 1)))
            .configure(node_routes),
    )
    .await;
    let req = test::TestRequest::post()
        .uri(<llmtrace_actors::cluster::rpc::wire::BatchRequest as llmtrace_actors::Rpc>::PATH)
        .set_payload(vec![1u8, 2, 3])
        .to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 404);
    // The public API is there.
    let resp =
        test::call_service(&app, post("/v1/check", r#"{"tenant_id":"a"}"#).to_request()).await;
    assert_eq!(resp.status(), 200);
}

/// `(listener, METHOD, path)` of every operation in `docs/openapi.json`.
fn documented_routes() -> std::collections::BTreeSet<(String, String, String)> {
    let doc: Value = serde_json::from_str(include_str!("../../../docs/openapi.json"))
        .expect("docs/openapi.json is JSON");
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let mut out = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let listeners = item["x-listeners"].as_array().expect("x-listeners");
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_none() {
                continue;
            }
            for l in listeners {
                out.insert((
                    l.as_str().unwrap().to_string(),
                    method.to_uppercase(),
                    path.clone(),
                ));
            }
        }
    }
    out
}

#[actix_rt::test]
async fn openapi_documents_exactly_the_served_routes() {
    let served: std::collections::BTreeSet<(String, String, String)> = public_route_list()
        .into_iter()
        .map(|(m, p)| ("public", m, p))
        .chain(admin_route_list().into_iter().map(|(m, p)| ("admin", m, p)))
        .map(|(l, m, p)| (l.to_string(), m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented_routes(), served);
}

#[actix_rt::test]
async fn every_listed_route_is_served_and_other_methods_are_refused() {
    let ctx = limiter(5, 10);
    let admin = test::init_service(
        App::new()
            .app_data(web::Data::from(ctx.clone()))
            .configure(admin_routes),
    )
    .await;
    let public = test::init_service(
        App::new()
            .app_data(web::Data::from(ctx))
            .configure(public_routes),
    )
    .await;
    let body = |path: &str| match path {
        "/v1/check" => r#"{"tenant_id":"t"}"#,
        "/v1/check/batch" => r#"{"checks":[{"tenant_id":"t"}]}"#,
        "/admin/tenants/{tenant}/limits" => r#"{"requests_per_second":1,"burst_size":2}"#,
        _ => "",
    };
    let call = |method: &str, path: &str| {
        let m = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
        test::TestRequest::default()
            .method(m)
            .uri(&path.replace("{tenant}", "t"))
            .insert_header(("content-type", "application/json"))
            .set_payload(body(path))
            .to_request()
    };
    for (listener, routes) in [
        ("public", public_route_list()),
        ("admin", admin_route_list()),
    ] {
        for (method, path) in &routes {
            if *path == "/admin/drain" {
                continue; // needs a running server loop; the integration test drains
            }
            let req = call(method, path);
            let resp = if listener == "admin" {
                test::call_service(&admin, req).await
            } else {
                test::call_service(&public, req).await
            };
            let s = resp.status().as_u16();
            assert!(s != 404 && s != 405, "{listener} {method} {path}: {s}");
            for other in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
                if routes.iter().any(|(m, p)| m == &other && p == path) {
                    continue;
                }
                let req = call(other, path);
                let resp = if listener == "admin" {
                    test::call_service(&admin, req).await
                } else {
                    test::call_service(&public, req).await
                };
                assert_eq!(resp.status().as_u16(), 405, "{listener} {other} {path}");
            }
        }
    }
}

/// A node whose ring also holds `ghost`, a member nobody answers for
/// (127.0.0.1:1): its tenants' owner is unreachable.
fn node_with_ghost() -> Arc<NodeContext> {
    use llmtrace_actors::{Member, MemberState};
    let member = |id: &str, port: u16| Member {
        node_id: id.into(),
        generation: 1,
        state: MemberState::Ready,
        public_addr: None,
        cluster_addr: format!("127.0.0.1:{port}").parse().unwrap(),
        admin_addr: None,
        fingerprint: None,
    };
    let view = ClusterView::from_members(
        "test-node",
        vec![member("ghost", 1), member("test-node", 7946)],
        16,
    );
    let router = RouterFixture::new(RateLimitConfig::with_requests(1, 10))
        .view(view)
        .start();
    NodeContext::new(router, None, "127.0.0.1:7946".parse().unwrap())
}

#[actix_rt::test]
async fn unreachable_owner_reports_degraded_and_refuses_a_reset() {
    let ctx = node_with_ghost();
    let view = ctx.router.view();
    let ghostly = (0..1000)
        .map(|k| format!("g-{k}"))
        .find(|t| view.owner(t, llmtrace_cluster_config::Limit::REQUESTS) == Some("ghost"))
        .expect("a tenant owned by the ghost");
    let mine = (0..1000)
        .map(|k| format!("m-{k}"))
        .find(|t| view.owner(t, llmtrace_cluster_config::Limit::REQUESTS) == Some("test-node"))
        .expect("a tenant owned here");
    let app = test::init_service(
        App::new()
            .app_data(web::Data::from(ctx))
            .configure(admin_routes),
    )
    .await;
    let get = |t: &str| {
        test::TestRequest::get()
            .uri(&format!("/admin/tenants/{t}"))
            .to_request()
    };
    let body: Value = test::call_and_read_body_json(&app, get(&ghostly)).await;
    let l = &body["limits"][0];
    assert_eq!(l["degraded"], true, "{body}");
    assert_eq!(l["owner"], "ghost", "{body}");
    assert_eq!(l["remaining"], 10, "{body}");
    let body: Value = test::call_and_read_body_json(&app, get(&mine)).await;
    assert_eq!(body["limits"][0]["degraded"], false, "{body}");
    assert_eq!(body["limits"][0]["snapshot_age_ms"], Value::Null, "{body}");
    let resp = test::call_service(
        &app,
        test::TestRequest::post()
            .uri(&format!("/admin/tenants/{ghostly}/reset"))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 503);
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
}

#[actix_rt::test]
async fn only_client_errors_count_as_invalid_requests() {
    let ctx = limiter(1, 1);
    let invalid = || ctx.metrics().invalid_requests.get();
    let _ = check::invalid(&ctx, error::ApiError::unavailable("owner unreachable"));
    let _ = check::invalid(&ctx, error::ApiError::not_persisted("redis down"));
    assert_eq!(
        invalid(),
        0,
        "a check the node could not decide is not invalid"
    );
    let _ = check::invalid(&ctx, error::ApiError::field("cost", "must be at least 1"));
    let _ = check::invalid(&ctx, error::ApiError::too_large(10));
    assert_eq!(invalid(), 2);
}
