//! Garbage in, a 4xx with a JSON error naming the field out; never a 5xx, never a crash.
//! Every test ends by checking that the node still serves health and normal checks.

use llmtrace_integration::{Node, Reply, Rng};
use serde_json::{json, Value};

const JSON: Option<&str> = Some("application/json");

/// rps 1, burst 10: cost 11 is more than the bucket can ever hold.
fn node() -> Node {
    Node::builder().rate(1, 10).start()
}

fn post(node: &Node, path: &str, body: &[u8]) -> Reply {
    node.public().post_raw(path, JSON, body)
}

fn assert_still_serving(node: &Node) {
    let health = node.public().get("/healthz");
    assert_eq!(health.status, 200, "healthz after bad input: {health}");
    let reply = node.check("still-serving", 1);
    assert_eq!(reply.status, 200, "a normal check after bad input: {reply}");
    assert_eq!(reply.allowed(), Some(true), "{reply}");
}

#[test]
fn malformed_json_is_400() {
    let node = node();
    let bodies: [&[u8]; 10] = [
        b"{",
        b"not json",
        b"",
        b"{\"tenant_id\": \"a\",}",
        b"{\"tenant_id\": \"a\"} trailing",
        b"null",
        b"[]",
        b"\"acme\"",
        b"42",
        b"{\"tenant_id\": \"\xff\xfe\"}",
    ];
    for body in bodies {
        let reply = post(&node, "/v1/check", body);
        assert_eq!(
            reply.status,
            400,
            "body {:?}: {reply}",
            String::from_utf8_lossy(body)
        );
        reply.error();
    }
    assert_still_serving(&node);
}

#[test]
fn wrong_types_name_the_field() {
    let node = node();
    let cases = [
        (json!({"tenant_id": 42}), "tenant_id"),
        (json!({"tenant_id": ["acme"]}), "tenant_id"),
        (json!({"tenant_id": null}), "tenant_id"),
        (json!({"tenant_id": {"id": "acme"}}), "tenant_id"),
        (json!({"tenant_id": "acme", "cost": "1"}), "cost"),
        (json!({"tenant_id": "acme", "cost": 1.5}), "cost"),
        (json!({"tenant_id": "acme", "cost": true}), "cost"),
        (json!({"tenant_id": "acme", "limit": 5}), "limit"),
        (json!({"tenant_id": "acme", "limit": ["requests"]}), "limit"),
    ];
    for (body, field) in cases {
        let reply = node.check_json(&body);
        assert_eq!(reply.status, 400, "{body}: {reply}");
        reply.assert_error(400, field);
    }
    assert_still_serving(&node);
}

#[test]
fn invalid_tenant_ids_are_400() {
    let node = node();
    let too_long = "t".repeat(129);
    let bad: [Value; 9] = [
        json!({}),
        json!({"cost": 1}),
        json!({"tenant_id": ""}),
        json!({"tenant_id": too_long}),
        json!({"tenant_id": "ténant"}),
        json!({"tenant_id": "a b"}),
        json!({"tenant_id": "a\tb"}),
        json!({"tenant_id": "a\u{1}b"}),
        json!({"tenant_id": "a\u{7f}"}),
    ];
    for body in bad {
        node.check_json(&body).assert_error(400, "tenant_id");
    }
    // Boundaries that are valid: 128 visible ASCII characters, punctuation.
    for tenant in ["t".repeat(128), "!~:{}/\"\\".to_string(), "x".to_string()] {
        let reply = node.check(&tenant, 1);
        assert_eq!(reply.status, 200, "tenant {tenant:?}: {reply}");
        assert_eq!(reply.json["tenant_id"], tenant.as_str(), "{reply}");
    }
    assert_still_serving(&node);
}

#[test]
fn invalid_costs_and_limits_are_400() {
    let node = node();
    let cases = [
        (json!({"tenant_id": "acme", "cost": 0}), "cost"),
        (json!({"tenant_id": "acme", "cost": -1}), "cost"),
        (json!({"tenant_id": "acme", "cost": 11}), "cost"),
        (json!({"tenant_id": "acme", "cost": u64::MAX}), "cost"),
        (json!({"tenant_id": "acme", "cost": 1e30}), "cost"),
        (json!({"tenant_id": "acme", "limit": "bogus"}), "limit"),
        (json!({"tenant_id": "acme", "limit": ""}), "limit"),
    ];
    for (body, field) in cases {
        let reply = node.check_json(&body);
        assert_eq!(reply.status, 400, "{body}: {reply}");
        reply.assert_error(400, field);
    }
    // Nothing above consumed from acme: cost = burst is still allowed in one go.
    let reply = node.check("acme", 10);
    assert_eq!(
        reply.status, 200,
        "cost 10 = burst on an untouched bucket: {reply}"
    );
    assert_still_serving(&node);
}

/// Asserts a 400 `code` whose message names `name` and whose `field` is `field`.
fn assert_refused(reply: &Reply, code: &str, name: &str, field: Option<&str>) {
    assert_eq!(reply.status, 400, "{reply}");
    let (got, message) = reply.error();
    assert_eq!(got, code, "{reply}");
    assert!(
        message.contains(&format!("`{name}`")),
        "the message should name `{name}`: {reply}"
    );
    assert_eq!(reply.json["error"]["field"].as_str(), field, "{reply}");
}

/// Nothing was taken from `tenant` (its whole burst of 10 is allowed in one
/// check), and the node still serves.
fn assert_untouched(node: &Node, tenant: &str) {
    let reply = node.check(tenant, 10);
    assert_eq!(reply.status, 200, "units were taken from {tenant}: {reply}");
    assert_still_serving(node);
}

/// (code, field) of item `i` of a batch answer.
fn item_error(reply: &Reply, i: usize) -> (Option<&str>, Option<&str>) {
    let error = &reply.json["results"][i]["error"];
    (error["code"].as_str(), error["field"].as_str())
}

/// A key given twice is invalid JSON, whichever value would win: refused
/// naming the key (in `field` too when it is a field of the route), on the
/// public and the admin API, and nothing is taken.
#[test]
fn duplicate_keys_are_refused_naming_the_key() {
    let node = node();
    for (body, key) in [
        (r#"{"tenant_id": "dup", "cost": 1, "cost": 2}"#, "cost"),
        (r#"{"tenant_id": "dup", "tenant_id": "dup-2"}"#, "tenant_id"),
        (
            r#"{"tenant_id": "dup", "limit": "requests", "limit": "requests"}"#,
            "limit",
        ),
    ] {
        let reply = post(&node, "/v1/check", body.as_bytes());
        assert_refused(&reply, "invalid_json", key, Some(key));
    }
    let reply = post(
        &node,
        "/v1/check",
        br#"{"tenant_id": "dup", "x": 1, "x": 2}"#,
    );
    assert_refused(&reply, "invalid_json", "x", None);

    // In a batch's envelope the whole batch is refused; in an item, that item.
    let reply = post(
        &node,
        "/v1/check/batch",
        br#"{"checks": [{"tenant_id": "dup"}], "checks": [{"tenant_id": "dup"}]}"#,
    );
    assert_refused(&reply, "invalid_json", "checks", Some("checks"));
    let reply = post(
        &node,
        "/v1/check/batch",
        br#"{"checks": [{"tenant_id": "dup", "cost": 1, "cost": 2}, {"tenant_id": "dup-ok"}]}"#,
    );
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(
        item_error(&reply, 0),
        (Some("invalid_json"), Some("cost")),
        "{reply}"
    );
    assert_eq!(reply.json["results"][1]["allowed"], true, "{reply}");

    let reply = node.admin().put_raw(
        "/admin/tenants/dup/limits",
        br#"{"requests_per_second": 5, "burst_size": 10, "burst_size": 1000}"#,
    );
    assert_refused(&reply, "invalid_json", "burst_size", Some("burst_size"));
    let overrides = node.admin_get_json("/admin/limits");
    assert_eq!(overrides["overrides"], json!([]), "{overrides}");

    assert_untouched(&node, "dup");
}

/// `null` is no default: refused naming the field, nothing taken.
#[test]
fn null_is_refused_naming_the_field() {
    let node = node();
    for (body, field) in [
        (json!({"tenant_id": "nul", "cost": null}), "cost"),
        (json!({"tenant_id": "nul", "limit": null}), "limit"),
        (json!({"tenant_id": null}), "tenant_id"),
    ] {
        let reply = node.check_json(&body);
        assert_refused(&reply, "invalid_field", field, Some(field));
        let reply = node.batch(std::slice::from_ref(&body));
        assert_eq!(reply.status, 200, "{reply}");
        assert_eq!(
            item_error(&reply, 0),
            (Some("invalid_field"), Some(field)),
            "{reply}"
        );
    }
    let reply = node
        .public()
        .post_json("/v1/check/batch", &json!({"checks": null}));
    assert_refused(&reply, "invalid_field", "checks", Some("checks"));
    for (body, field) in [
        (
            json!({"requests_per_second": null, "burst_size": 10}),
            "requests_per_second",
        ),
        (
            json!({"requests_per_second": 1, "burst_size": 10, "limit": null}),
            "limit",
        ),
    ] {
        let reply = node.admin().put_json("/admin/tenants/nul/limits", &body);
        assert_refused(&reply, "invalid_field", field, Some(field));
    }
    assert_untouched(&node, "nul");
}

/// An unknown field is named in `field`, not only in the message.
#[test]
fn unknown_fields_are_named_in_field() {
    let node = node();
    let reply = node.check_json(&json!({"tenant_id": "unk", "costs": 2}));
    assert_refused(&reply, "unknown_field", "costs", Some("costs"));
    let reply = node.batch(&[json!({"tenant_id": "unk", "weight": 1})]);
    assert_eq!(
        item_error(&reply, 0),
        (Some("unknown_field"), Some("weight")),
        "{reply}"
    );
    let reply = node.public().post_json(
        "/v1/check/batch",
        &json!({"checks": [{"tenant_id": "unk"}], "check": 1}),
    );
    assert_refused(&reply, "unknown_field", "check", Some("check"));
    assert_still_serving(&node);
}

#[test]
fn oversized_bodies_are_413() {
    let node = node();
    let huge_tenant = json!({"tenant_id": "t".repeat(65 * 1024), "cost": 1}).to_string();
    let reply = post(&node, "/v1/check", huge_tenant.as_bytes());
    assert_eq!(reply.status, 413, "{reply}");
    reply.error();
    let items: Vec<Value> = (0..2000)
        .map(|i| json!({"tenant_id": format!("tenant-{i:06}"), "cost": 1}))
        .collect();
    let huge_batch = json!({ "checks": items }).to_string();
    assert!(huge_batch.len() > 65 * 1024);
    let reply = post(&node, "/v1/check/batch", huge_batch.as_bytes());
    assert_eq!(reply.status, 413, "{reply}");
    reply.error();
    assert_still_serving(&node);
}

#[test]
fn batch_limits_and_per_item_errors() {
    let node = node();
    let item = |i: usize| json!({"tenant_id": format!("b{}", i % 50), "cost": 1});
    let too_many: Vec<Value> = (0..1001).map(item).collect();
    node.batch(&too_many).assert_error(400, "checks");

    let max: Vec<Value> = (0..1000).map(item).collect();
    let reply = node.batch(&max);
    assert_eq!(
        reply.status, 200,
        "1000 items is the maximum, still allowed: {}",
        reply.status
    );
    let results = reply.json["results"].as_array().expect("results");
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["allowed"].is_boolean()), "{reply}");

    for body in [
        json!({}),
        json!({"checks": "x"}),
        json!({"checks": {"tenant_id": "a"}}),
    ] {
        let reply = node.public().post_json("/v1/check/batch", &body);
        reply.assert_error(400, "checks");
    }

    let mixed = [
        json!({"tenant_id": "good-1", "cost": 1}),
        json!({"tenant_id": "", "cost": 1}),
        json!({"tenant_id": "good-2", "cost": 0}),
        json!({"tenant_id": "good-3"}),
        json!({"tenant_id": "good-4", "cost": 11}),
        json!({"tenant_id": "good-5", "cost": 2, "limit": "bogus"}),
    ];
    let reply = node.batch(&mixed);
    assert_eq!(reply.status, 200, "{reply}");
    let results = reply.json["results"].as_array().expect("results");
    assert_eq!(results.len(), mixed.len(), "{reply}");
    for (i, field) in [(1, "tenant_id"), (2, "cost"), (4, "cost"), (5, "limit")] {
        let message = results[i]["error"]["message"].as_str().unwrap_or("");
        assert!(results[i]["error"]["code"].is_string(), "item {i}: {reply}");
        assert!(
            message.contains(field),
            "item {i} should name {field}: {reply}"
        );
        assert!(results[i].get("allowed").is_none(), "item {i}: {reply}");
    }
    for (i, tenant) in [(0, "good-1"), (3, "good-3")] {
        assert_eq!(results[i]["allowed"], true, "item {i}: {reply}");
        assert_eq!(results[i]["tenant_id"], tenant, "item {i}: {reply}");
    }
    assert_still_serving(&node);
}

/// Items of the wrong JSON type: the contract allows either a per-item error or a 400
/// for the whole batch, never a 5xx.
#[test]
fn batch_items_of_wrong_type() {
    let node = node();
    let body = json!({"checks": [1, "x", null, {"tenant_id": 5}, {"tenant_id": "ok"}]});
    let reply = node.public().post_json("/v1/check/batch", &body);
    match reply.status {
        200 => {
            let results = reply.json["results"].as_array().expect("results");
            assert_eq!(results.len(), 5, "{reply}");
            for r in &results[..4] {
                assert!(r["error"]["code"].is_string(), "{reply}");
            }
            assert_eq!(results[4]["allowed"], true, "{reply}");
        }
        400 => {
            reply.error();
        }
        _ => panic!("expected 200 with per-item errors or 400: {reply}"),
    }
    assert_still_serving(&node);
}

#[test]
fn content_types_and_random_bytes() {
    let node = node();
    let valid = br#"{"tenant_id": "ct", "cost": 1}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let reply = node.public().post_raw("/v1/check", ct, valid);
        match reply.status {
            200 => assert_eq!(reply.allowed(), Some(true), "{reply}"),
            400 | 415 => drop(reply.error()),
            _ => panic!("content type {ct:?}: expected 200, 400 or 415: {reply}"),
        }
    }
    let reply = node.public().post_raw(
        "/v1/check",
        Some("application/x-www-form-urlencoded"),
        b"tenant_id=ct",
    );
    assert!(matches!(reply.status, 400 | 415), "form body: {reply}");
    reply.error();

    let mut rng = Rng::new(7);
    for len in [1, 2, 16, 1000, 60_000] {
        let body = rng.bytes(len);
        let reply = post(&node, "/v1/check", &body);
        assert_eq!(reply.status, 400, "{len} random bytes: {reply}");
        reply.error();
    }
    assert_still_serving(&node);
}

#[test]
fn wrong_methods_and_paths() {
    let node = node();
    for (method, path) in [
        ("GET", "/v1/check"),
        ("PUT", "/v1/check"),
        ("DELETE", "/v1/check"),
        ("GET", "/v1/check/batch"),
        ("POST", "/healthz"),
    ] {
        let reply = node.public().request(method, path);
        assert_eq!(reply.status, 405, "{method} {path}: {reply}");
        reply.error();
    }
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/v1/nope"),
        ("GET", "/v1/check/batch/x"),
    ] {
        let reply = node.public().request(method, path);
        assert_eq!(reply.status, 404, "{method} {path}: {reply}");
        reply.error();
    }
    assert_still_serving(&node);
}

/// A bounded fuzz loop with a fixed seed: random bytes and mutated valid bodies, to both
/// endpoints. Every answer is below 500 and the node keeps serving.
#[test]
fn fuzz_never_5xx() {
    let node = node();
    let mut rng = Rng::new(0x11_7ace);
    let seeds: [&[u8]; 3] = [
        br#"{"tenant_id": "fuzz", "cost": 1, "limit": "requests"}"#,
        br#"{"checks": [{"tenant_id": "fuzz", "cost": 1}, {"tenant_id": "f2"}]}"#,
        br#"{"tenant_id": "fuzz-\u00e9", "cost": 10}"#,
    ];
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..300 {
        let body = if i % 2 == 0 {
            let len = rng.below(300);
            rng.bytes(len)
        } else {
            let mut body = seeds[rng.below(seeds.len())].to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(body.len());
                match rng.below(3) {
                    0 => body[at] = rng.next_u64() as u8,
                    1 => drop(body.remove(at)),
                    _ => body.insert(at, b"{}[]\",:0-e9\\"[rng.below(12)]),
                }
            }
            body
        };
        let path = if rng.below(2) == 0 {
            "/v1/check"
        } else {
            "/v1/check/batch"
        };
        let reply = post(&node, path, &body);
        assert!(
            reply.status < 500,
            "fuzz case {i} to {path}, body {:?}: {reply}",
            String::from_utf8_lossy(&body)
        );
        *statuses.entry(reply.status).or_default() += 1;
    }
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 100,
        "statuses: {statuses:?}"
    );
    assert_still_serving(&node);
}
