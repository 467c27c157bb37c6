//! The admin API on real nodes: the bearer token (and the loopback rule), the
//! cluster view, a tenant's buckets reported identically by every node (fetched from
//! the owner), refills, runtime limit overrides (in force on every node within 2 s,
//! kept in Redis across a restart of the whole cluster), and the drain.
//!
//! rps is 1 wherever counts are asserted, so refill during a test is bounded by the
//! measured time: at most `floor(rps * elapsed)` beyond the burst.

use llmtrace_integration::node::Node;
use llmtrace_integration::scenario::{owner_of, tenants_owned_by};
use llmtrace_integration::{wait_for, wait_until, Cluster, RedisServer, Reply};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-token-for-tests-0123456789";
/// How long a runtime override may take to reach every node.
const PROPAGATION: Duration = Duration::from_secs(2);

fn refill(elapsed: Duration) -> u64 {
    elapsed.as_secs_f64().floor() as u64
}

fn limits_of(reply: &Reply) -> &Value {
    &reply.json["limits"][0]
}

#[test]
fn admin_routes_need_the_token_except_healthz() {
    let node = Node::builder().admin_token(TOKEN).start();
    let open = node.admin().clone().without_bearer();
    for path in [
        "/admin/cluster",
        "/metrics",
        "/admin/limits",
        "/admin/tenants/a",
    ] {
        let r = open.get(path);
        assert_eq!(r.status, 401, "GET {path} without a token: {r}");
        assert_eq!(r.error().0, "unauthorized", "{r}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r}");
        let wrong = open.clone().with_bearer("admin-token-for-tests-012345678X");
        assert_eq!(wrong.get(path).status, 401, "GET {path} with a wrong token");
        assert_eq!(
            node.admin().get(path).status,
            200,
            "GET {path} with the token"
        );
    }
    let r = open.post_json("/admin/drain", &json!({}));
    assert_eq!(r.status, 401, "drain without a token: {r}");
    assert!(node.is_ready(), "a refused drain must not drain");
    assert_eq!(open.get("/healthz").status, 200);
    // The token is an admin matter: the public API does not ask for it.
    assert_eq!(node.check("t", 1).status, 200);
}

#[test]
fn admin_listener_off_loopback_needs_a_token() {
    let stderr = Node::builder()
        .flag("admin-listen", "0.0.0.0:0")
        .start_refused();
    assert!(stderr.contains("admin_token"), "{stderr}");
    // With a token from the environment it starts, and asks for it.
    let node = Node::builder()
        .flag("admin-listen", "0.0.0.0:0")
        .env("LLMTRACE_ADMIN_TOKEN", TOKEN)
        .admin_bearer(TOKEN)
        .start();
    assert_eq!(node.admin().get("/admin/cluster").status, 200);
    let open = node.admin().clone().without_bearer();
    assert_eq!(open.get("/admin/cluster").status, 401);
}

#[test]
fn cluster_view_has_every_member_and_agrees() {
    // With a token on every node: the harness (wait_converged, cluster_view) sends it.
    let cluster = Cluster::builder()
        .nodes(3)
        .rate(1, 10)
        .admin_token(TOKEN)
        .start();
    let ids = cluster.running_ids();
    for node in cluster.running() {
        let view = node.cluster_view();
        assert_eq!(view["node_id"], node.node_id.as_str(), "{view}");
        assert_eq!(view["agreed"], true, "{view}");
        assert_eq!(view["vnodes"], 256, "{view}");
        assert!(view["fingerprint"].as_str().is_some_and(|f| !f.is_empty()));
        let members = view["members"].as_array().expect("members");
        let mut seen: Vec<String> = members
            .iter()
            .map(|m| m["node_id"].as_str().unwrap().to_string())
            .collect();
        seen.sort();
        assert_eq!(seen, ids, "{view}");
        let mut share = 0.0;
        for m in members {
            for key in [
                "generation",
                "public_addr",
                "cluster_addr",
                "admin_addr",
                "share",
            ] {
                assert!(!m[key].is_null(), "member lacks {key}: {m}");
            }
            assert_eq!(m["state"], "ready", "{m}");
            let last_seen = m["last_seen_ms"].as_u64().expect("last_seen_ms");
            if m["node_id"] == node.node_id.as_str() {
                assert_eq!(last_seen, 0, "{m}");
            } else {
                assert!(
                    last_seen < 10_000,
                    "a live member last seen {last_seen} ms ago: {m}"
                );
            }
            share += m["share"].as_f64().unwrap();
        }
        assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}: {view}");
    }
}

/// The stable part of a tenant report (remaining and full_in_ms move with refill).
fn stable(report: &Value) -> Value {
    let mut r = report.clone();
    for l in r["limits"].as_array_mut().unwrap() {
        l.as_object_mut().unwrap().remove("remaining");
        l.as_object_mut().unwrap().remove("full_in_ms");
    }
    r
}

#[test]
fn tenant_report_is_the_same_from_every_node_and_reset_refills() {
    const BURST: u64 = 20;
    let cluster = Cluster::start(3, 1, BURST);
    // An unknown tenant: a full bucket, not an error.
    for node in cluster.running() {
        let r = node.admin().get("/admin/tenants/never-seen");
        assert_eq!(r.status, 200, "{r}");
        let l = limits_of(&r);
        assert_eq!(l["limit"], "requests", "{r}");
        assert_eq!(l["remaining"], BURST, "{r}");
        assert_eq!(l["full_in_ms"], 0, "{r}");
        assert_eq!(l["source"], "default", "{r}");
        assert_eq!(l["degraded"], false, "{r}");
        assert_eq!(l["requests_per_second"], 1, "{r}");
        assert_eq!(l["burst_size"], BURST, "{r}");
        // The tokens limit reports its rate in its own unit (unlimited here).
        let tokens = &r.json["limits"][1];
        assert_eq!(tokens["limit"], "tokens", "{r}");
        assert_eq!(tokens["tokens_per_minute"], 0, "{r}");
        assert!(tokens.get("requests_per_second").is_none(), "{r}");
    }
    // A tenant owned by node 2, drained by 15 through node 0.
    let owner = cluster.node(2).node_id.clone();
    let tenant = tenants_owned_by(cluster.node(0), &owner, "inspect", 1).remove(0);
    let start = Instant::now();
    assert_eq!(cluster.node(0).check(&tenant, 15).status, 200);
    let reports: Vec<Reply> = cluster
        .running()
        .iter()
        .map(|n| n.admin().get(&format!("/admin/tenants/{tenant}")))
        .collect();
    let elapsed = start.elapsed();
    for r in &reports {
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(stable(&r.json), stable(&reports[0].json), "reports differ");
        let l = limits_of(r);
        assert_eq!(l["owner"], owner.as_str(), "{r}");
        let remaining = l["remaining"].as_u64().unwrap();
        assert!(
            (5..=5 + refill(elapsed) + 1).contains(&remaining),
            "remaining {remaining} after taking 15 of {BURST} ({elapsed:?}): {r}"
        );
        assert!(l["full_in_ms"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(l["resident"], true, "{r}");
    }
    // Reset through a node that is not the owner: the owner refills.
    let r = cluster
        .node(1)
        .admin()
        .post_json(&format!("/admin/tenants/{tenant}/reset"), &json!({}));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(limits_of(&r)["remaining"], BURST, "{r}");
    let r = cluster
        .node(0)
        .admin()
        .get(&format!("/admin/tenants/{tenant}"));
    assert_eq!(limits_of(&r)["remaining"], BURST, "{r}");
    let drained = cluster.node(0).check_until_refused(&tenant, BURST + 60);
    let bound = BURST + refill(drained.elapsed);
    assert!(
        (BURST..=bound).contains(&drained.allowed),
        "after a reset {} checks were allowed, expected {BURST}..={bound}",
        drained.allowed
    );
    // Bad tenant ids name the field.
    let long = "x".repeat(129);
    for bad in [long.as_str(), "has%20space"] {
        let r = cluster
            .node(0)
            .admin()
            .get(&format!("/admin/tenants/{bad}"));
        r.assert_error(400, "tenant_id");
        assert_eq!(r.json["error"]["field"], "tenant_id", "{r}");
        let r = cluster
            .node(0)
            .admin()
            .post_json(&format!("/admin/tenants/{bad}/reset"), &json!({}));
        assert_eq!(r.status, 400, "{r}");
    }
}

fn put_override(node: &Node, tenant: &str, body: &Value) -> Reply {
    node.admin()
        .put_json(&format!("/admin/tenants/{tenant}/limits"), body)
}

/// True when `node` decides `tenant` with burst 3: a check of cost 4 is refused as
/// invalid there (cost above the burst), without taking anything.
fn burst_is_3(node: &Node, tenant: &str) -> bool {
    let r = node.check(tenant, 4);
    match r.status {
        400 => {
            assert_eq!(r.json["error"]["field"], "cost", "{r}");
            true
        }
        200 | 429 => false,
        _ => panic!("unexpected reply {r}"),
    }
}

#[test]
fn runtime_overrides_reach_every_node_and_survive_a_full_restart_with_redis() {
    let redis = RedisServer::start();
    let start_cluster = || {
        Cluster::builder()
            .nodes(3)
            .rate(1, 100)
            .flag("redis-url", redis.url())
            .start()
    };
    let mut cluster = start_cluster();
    let tenant = "override-me";
    for node in cluster.running() {
        assert!(
            !burst_is_3(node, tenant),
            "no override yet on {}",
            node.node_id
        );
    }
    // Bad bodies name the field and change nothing.
    let bad = [
        (
            json!({"requests_per_second": -1, "burst_size": 3}),
            "requests_per_second",
        ),
        (
            json!({"requests_per_second": 1, "burst_size": 0}),
            "burst_size",
        ),
        (
            json!({"requests_per_second": 1, "burst_size": 1e15}),
            "burst_size",
        ),
        (
            json!({"requests_per_second": 4_000_000_000u64, "burst_size": 3}),
            "requests_per_second",
        ),
        (json!({"requests_per_second": 1}), "burst_size"),
        (
            json!({"requests_per_second": 1, "burst_size": 3, "burts": 1}),
            "burts",
        ),
        (
            json!({"requests_per_second": 1, "burst_size": 3, "limit": "bogus"}),
            "limit",
        ),
    ];
    for (body, field) in bad {
        let r = put_override(cluster.node(0), tenant, &body);
        r.assert_error(400, field);
        assert_eq!(r.json["error"]["field"], field, "{r}");
    }
    let r = cluster.node(0).admin().post_raw(
        &format!("/admin/tenants/{tenant}/limits"),
        Some("application/json"),
        b"{",
    );
    assert_eq!(
        r.status, 405,
        "POST is not a method of the limits route: {r}"
    );
    let r = cluster.node(0).admin().get("/admin/limits");
    assert_eq!(r.json["overrides"], json!([]), "{r}");

    // Set on node 0; in force on nodes 1 and 2 within 2 s.
    let r = put_override(
        cluster.node(0),
        tenant,
        &json!({"requests_per_second": 1, "burst_size": 3}),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["persisted"], true, "{r}");
    let set_at = Instant::now();
    for i in [1, 2] {
        let node = cluster.node(i);
        wait_until(
            PROPAGATION,
            "the override to be in force on every node",
            || burst_is_3(node, tenant),
        );
        eprintln!(
            "override in force on {} after {:?}",
            node.node_id,
            set_at.elapsed()
        );
    }
    let r = cluster
        .node(2)
        .admin()
        .get(&format!("/admin/tenants/{tenant}"));
    assert_eq!(limits_of(&r)["source"], "runtime", "{r}");
    assert_eq!(limits_of(&r)["burst_size"], 3, "{r}");
    let r = cluster.node(1).admin().get("/admin/limits");
    let listed = &r.json["overrides"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(listed[0]["tenant_id"], tenant, "{r}");
    assert_eq!(listed[0]["burst_size"], 3, "{r}");
    // The bucket holds exactly the new burst across nodes.
    let drained = cluster.node(1).check_until_refused(tenant, 3 + 60);
    let bound = 3 + refill(drained.elapsed);
    assert!(
        (3..=bound).contains(&drained.allowed),
        "{} allowed under burst 3",
        drained.allowed
    );

    // Stop every node: the override comes back from Redis.
    for i in 0..3 {
        assert!(cluster.terminate(i).success());
    }
    drop(cluster);
    cluster = start_cluster();
    for node in cluster.running() {
        assert!(
            burst_is_3(node, tenant),
            "override lost by {} after a full restart",
            node.node_id
        );
    }
    let r = cluster.node(0).admin().get("/admin/limits");
    assert_eq!(r.json["overrides"][0]["tenant_id"], tenant, "{r}");

    // Delete on node 1: back to the configured burst everywhere within 2 s.
    let r = cluster
        .node(1)
        .admin()
        .delete(&format!("/admin/tenants/{tenant}/limits"));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["deleted"], true, "{r}");
    for i in [0, 2] {
        let node = cluster.node(i);
        wait_until(
            PROPAGATION,
            "the deletion to be in force on every node",
            || !burst_is_3(node, tenant),
        );
    }
    let r = cluster
        .node(0)
        .admin()
        .get(&format!("/admin/tenants/{tenant}"));
    assert_eq!(limits_of(&r)["source"], "default", "{r}");
    let r = cluster
        .node(1)
        .admin()
        .delete(&format!("/admin/tenants/{tenant}/limits?limit=bogus"));
    assert_eq!(r.json["error"]["field"], "limit", "{r}");
    let r = cluster
        .node(1)
        .admin()
        .delete(&format!("/admin/tenants/{tenant}/limits?lmit=requests"));
    assert_eq!(r.json["error"]["field"], "lmit", "{r}");
}

#[test]
fn drain_leaves_the_ring_hands_buckets_over_and_keeps_running() {
    const BURST: u64 = 40;
    let mut cluster = Cluster::start(3, 1, BURST);
    let leaver = cluster.node(2).node_id.clone();
    let tenants = tenants_owned_by(cluster.node(0), &leaver, "drain", 3);
    let start = Instant::now();
    for t in &tenants {
        assert_eq!(cluster.node(0).check(t, 25).status, 200, "{t}");
    }
    let r = cluster
        .node(2)
        .admin()
        .post_json("/admin/drain", &json!({}));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["status"], "drained", "{r}");
    assert_eq!(r.json["pushed"].as_u64(), Some(tenants.len() as u64), "{r}");
    assert_eq!(r.json["undelivered"], 0, "{r}");
    // Out of rotation but alive: readyz 503, its peers' rings without it.
    let r = cluster.node(2).public().get("/readyz");
    assert_eq!(r.status, 503, "{r}");
    assert!(cluster.node_mut(2).is_running());
    let remaining: Vec<String> = cluster
        .running_ids()
        .into_iter()
        .filter(|i| *i != leaver)
        .collect();
    for i in [0, 1] {
        let node = cluster.node(i);
        wait_until(
            Duration::from_secs(10),
            "peers to drop the drained node",
            || node.ring_members().is_some_and(|m| m == remaining),
        );
    }
    let view = cluster.node(2).cluster_view();
    let me = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == leaver.as_str())
        .cloned();
    assert_eq!(
        me.map(|m| m["state"].clone()),
        Some(json!("leaving")),
        "{view}"
    );
    // Again: idempotent.
    let r = cluster
        .node(2)
        .admin()
        .post_json("/admin/drain", &json!({}));
    assert_eq!(r.json["status"], "drained", "{r}");
    // Each handed-over bucket kept its level: 15 left (plus refill), exactly.
    for t in &tenants {
        assert_ne!(owner_of(cluster.node(0), t), leaver);
        let drained = cluster.node(1).check_until_refused(t, BURST + 60);
        let bound = 15 + refill(start.elapsed());
        assert!(
            (15..=bound).contains(&drained.allowed),
            "tenant {t}: {} allowed after the drain, expected 15..={bound}",
            drained.allowed
        );
        // The drained node still answers checks, deciding nothing itself.
        let r = cluster.node(2).check(t, 1);
        assert_eq!(
            r.status, 429,
            "the drained node must forward to the new owner: {r}"
        );
    }
    let status = cluster.terminate(2);
    assert!(
        status.success(),
        "a drained node exits 0 on SIGTERM: {status:?}"
    );
}

#[test]
fn request_ids_are_kept_or_made() {
    let node = Node::builder().admin_token(TOKEN).start();
    for client in [node.public(), node.admin()] {
        let r = client.get_with_headers("/healthz", &[("x-request-id", "req-abc.123")]);
        assert_eq!(r.header("x-request-id"), Some("req-abc.123"), "{r}");
        let r = client.get_with_headers("/healthz", &[("x-request-id", "has space")]);
        let made = r.header("x-request-id").expect("a request id").to_string();
        assert_ne!(made, "has space");
        let r2 = client.get("/healthz");
        let other = r2.header("x-request-id").expect("a request id");
        assert!(!made.is_empty() && made != other, "{made} / {other}");
    }
    let open = node.admin().clone().without_bearer();
    let r = open.get_with_headers("/admin/cluster", &[("x-request-id", "refused-1")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-request-id"), Some("refused-1"), "{r}");
}

#[test]
fn secrets_never_reach_logs_or_admin_answers() {
    const PASSWORD: &str = "redis-pass-Zq81vX";
    const SECRET: &str = "cluster-secret-Hw3k9";
    let redis = RedisServer::start();
    let acl = redis.conn().cmd(&[
        "ACL",
        "SETUSER",
        "llmtrace",
        "on",
        &format!(">{PASSWORD}"),
        "~*",
        "&*",
        "+@all",
    ]);
    assert!(acl.is_ok(), "ACL SETUSER: {acl:?}");
    let url = format!("redis://llmtrace:{PASSWORD}@127.0.0.1:{}", redis.port());
    let mut node = Node::builder()
        .flag("redis-url", &url)
        .flag("cluster-secret", SECRET)
        .admin_token(TOKEN)
        .flag("log-format", "json")
        .env("RUST_LOG", "debug")
        .start();
    node.wait_ready();
    let mut answers = String::new();
    let admin = node.admin();
    let r = admin.put_json(
        "/admin/tenants/s/limits",
        &json!({"requests_per_second": 2, "burst_size": 5}),
    );
    assert_eq!(
        r.status, 200,
        "the override needs Redis (with the password): {r}"
    );
    assert_eq!(r.json["persisted"], true, "{r}");
    answers.push_str(&r.text);
    assert_eq!(node.check("s", 1).status, 200);
    for path in [
        "/admin/cluster",
        "/admin/tenants/s",
        "/admin/limits",
        "/metrics",
    ] {
        let r = admin.get_with_headers(path, &[("x-request-id", "secret-test-req")]);
        assert_eq!(r.status, 200, "{path}: {r}");
        answers.push_str(&r.text);
        answers.push_str(&format!("{:?}", r.headers));
    }
    let wrong = admin.clone().with_bearer("wrong-token-value");
    answers.push_str(&wrong.get("/admin/cluster").text);
    // Written to Redis, through the password-protected user.
    let stored = redis
        .conn()
        .cmd(&["HEXISTS", "llmtrace:overrides", "requests/s"]);
    assert!(
        matches!(stored, Ok(llmtrace_integration::resp::Value::Int(1))),
        "override not in Redis: {stored:?}"
    );
    assert!(node.terminate().success());
    // --help shows where secrets come from, never their values.
    let help = std::process::Command::new(llmtrace_integration::node::node_binary())
        .arg("--help")
        .env("LLMTRACE_REDIS_URL", &url)
        .env("LLMTRACE_ADMIN_TOKEN", TOKEN)
        .env("LLMTRACE_CLUSTER_SECRET", SECRET)
        .output()
        .expect("run --help");
    answers.push_str(&String::from_utf8_lossy(&help.stdout));
    assert!(
        answers.contains("LLMTRACE_ADMIN_TOKEN"),
        "--help names the variable"
    );
    let logs = format!("{}\n{}", node.stdout(), node.stderr());
    // Everything was kept (the harness keeps the last 256 KiB of each stream).
    assert!(
        logs.len() < 200 * 1024,
        "{} bytes of logs: raise the filter",
        logs.len()
    );
    assert!(
        logs.contains("llmtrace-node started"),
        "the start-up lines are kept"
    );
    assert!(
        logs.contains("secret-test-req"),
        "the request id is in the log spans"
    );
    for secret in [PASSWORD, TOKEN, SECRET] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the logs:\n{logs}"
        );
        assert!(
            !answers.contains(secret),
            "{secret:?} appears in an admin answer"
        );
    }
}

#[test]
fn metrics_cover_routes_forwarding_members_and_redis() {
    let redis = RedisServer::start();
    let cluster = Cluster::builder()
        .nodes(3)
        .rate(1, 1000)
        .flag("redis-url", redis.url())
        .start();
    let entry = cluster.node(0);
    let me = entry.node_id.clone();
    let mine = tenants_owned_by(entry, &me, "metrics-local", 4);
    let theirs = tenants_owned_by(entry, &cluster.node(1).node_id, "metrics-remote", 3);
    let metric = |node: &Node, sel: &str| node.metric(sel).unwrap_or(-1.0);
    let local_before = metric(entry, "llmtrace_routed_checks_total{route=\"local\"}");
    let fwd_before = metric(entry, "llmtrace_routed_checks_total{route=\"forwarded\"}");
    for t in mine.iter().chain(&theirs) {
        for _ in 0..5 {
            assert_eq!(entry.check(t, 1).status, 200);
        }
    }
    assert_eq!(
        metric(entry, "llmtrace_routed_checks_total{route=\"local\"}") - local_before,
        20.0
    );
    assert_eq!(
        metric(entry, "llmtrace_routed_checks_total{route=\"forwarded\"}") - fwd_before,
        15.0
    );
    assert_eq!(
        metric(entry, "llmtrace_routed_checks_total{route=\"degraded\"}"),
        0.0
    );
    assert_eq!(metric(entry, "llmtrace_degraded_tenants"), 0.0);
    assert_eq!(metric(entry, "llmtrace_ring_members"), 3.0);
    assert_eq!(metric(entry, "llmtrace_live_members"), 3.0);
    assert!(metric(entry, "llmtrace_ring_changes_total") >= 1.0);
    assert!(metric(entry, "llmtrace_forward_batch_size_count") >= 1.0);
    assert!(metric(entry, "llmtrace_forwarded_check_duration_seconds_count") >= 15.0);
    assert_eq!(
        metric(
            cluster.node(1),
            "llmtrace_checks_total{limit=\"requests\",decision=\"allowed\"}"
        ),
        15.0
    );
    assert!(metric(entry, "llmtrace_buckets_resident") >= 4.0);
    // Snapshots of the drained buckets reach Redis; the call latency is observed.
    entry.wait_metric(
        "llmtrace_redis_duration_seconds_count{op=\"store\"}",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    for name in [
        "llmtrace_snapshot_lag_seconds",
        "llmtrace_snapshot_errors_total",
        "llmtrace_handoffs_in_total",
        "llmtrace_handoffs_out_total",
        "llmtrace_forward_duration_seconds_count",
        "llmtrace_runtime_overrides",
        "llmtrace_node_ready",
    ] {
        assert!(entry.metric(name).is_some(), "{name} missing from /metrics");
    }
    assert_eq!(metric(entry, "llmtrace_node_ready"), 1.0);
}

/// The burst `node` itself holds `tenant` to (the tenant report shows the owner's): the
/// largest cost it does not refuse as invalid.
fn local_burst(node: &Node, tenant: &str) -> u64 {
    // Costs are validated against the quota of the node that receives the check; a
    // cost above it is a 400 naming `cost`, without taking anything.
    let mut lo: u64 = 1;
    let mut hi: u64 = 1000;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let r = node.check_json(&json!({"tenant_id": tenant, "cost": mid, "limit": "requests"}));
        if r.status == 400 {
            assert_eq!(r.json["error"]["field"], "cost", "{r}");
            hi = mid - 1;
        } else {
            assert!(r.status == 200 || r.status == 429, "{r}");
            lo = mid;
        }
    }
    lo
}

#[test]
fn overrides_outlive_the_node_that_set_them_and_concurrent_changes_converge() {
    // No Redis: gossip alone carries the table.
    let mut cluster = Cluster::start(3, 1, 100);
    let tenant = "gossip-only";
    let r = put_override(
        cluster.node(0),
        tenant,
        &json!({"requests_per_second": 1, "burst_size": 3}),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["persisted"], false, "{r}");
    for i in [1, 2] {
        let node = cluster.node(i);
        wait_until(PROPAGATION, "the override on every node", || {
            burst_is_3(node, tenant)
        });
    }
    // The node that accepted it leaves; a restarted node learns it from the others.
    assert!(cluster.terminate(0).success());
    assert!(cluster.terminate(2).success());
    cluster.restart_node(2);
    cluster.wait_converged(Duration::from_secs(20));
    let node = cluster.node(2);
    wait_until(
        Duration::from_secs(5),
        "a restarted node to learn the override",
        || burst_is_3(node, tenant),
    );
    // Two nodes change the same tenant at once: every node ends on the same value.
    let (a, b) = (cluster.node(1), cluster.node(2));
    std::thread::scope(|s| {
        s.spawn(|| {
            put_override(
                a,
                tenant,
                &json!({"requests_per_second": 1, "burst_size": 7}),
            )
        });
        s.spawn(|| {
            put_override(
                b,
                tenant,
                &json!({"requests_per_second": 1, "burst_size": 9}),
            )
        });
    });
    // Every node's own table settles on one of the two (the highest version).
    let settled = wait_for(PROPAGATION * 2, "nodes to agree on one override", || {
        let tables: Vec<Value> = [a, b]
            .iter()
            .map(|n| n.admin_get_json("/admin/limits")["overrides"].clone())
            .collect();
        let first = tables[0][0]["burst_size"].as_u64()?;
        tables.windows(2).all(|w| w[0] == w[1]).then_some(first)
    });
    assert!(settled == 7 || settled == 9, "settled on burst {settled}");
    // And both decide by it.
    for n in [a, b] {
        assert_eq!(local_burst(n, tenant), settled, "{}", n.node_id);
    }
}

#[test]
fn tenant_rpc_is_guarded_like_the_other_node_to_node_routes() {
    const SECRET: &str = "tenant-rpc-secret-1";
    let cluster = Cluster::builder()
        .nodes(2)
        .rate(1, 10)
        .flag("cluster-secret", SECRET)
        .start();
    let owner = cluster.node(1).node_id.clone();
    let tenant = tenants_owned_by(cluster.node(0), &owner, "rpc", 1).remove(0);
    // Through the secret: node 0 reports node 1's bucket.
    assert_eq!(cluster.node(1).check(&tenant, 4).status, 200);
    let r = cluster
        .node(0)
        .admin()
        .get(&format!("/admin/tenants/{tenant}"));
    assert_eq!(limits_of(&r)["degraded"], false, "{r}");
    assert!(limits_of(&r)["remaining"].as_u64().unwrap() < 10, "{r}");
    let send = |secret: Option<&str>, body: &[u8]| {
        let mut headers = vec![("content-type", "application/octet-stream")];
        if let Some(s) = secret {
            headers.push(("x-llmtrace-cluster-secret", s));
        }
        cluster
            .node(1)
            .cluster()
            .post_with_headers("/cluster/v1/tenant", &headers, body)
    };
    for secret in [None, Some("wrong"), Some("")] {
        let r = send(secret, b"\x01garbage");
        assert_eq!(r.status, 401, "{secret:?}: {r}");
        r.error();
    }
    // Version byte, then a length prefix claiming 2^60 bytes of origin.
    let mut huge_len = vec![1u8, 0xfd];
    huge_len.extend_from_slice(&(1u64 << 60).to_le_bytes());
    for body in [
        &b""[..],
        &b"\x01garbage"[..],
        &[0xff; 16][..],
        &huge_len[..],
    ] {
        let r = send(Some(SECRET), body);
        assert_eq!(r.status, 400, "{r}");
        r.error();
    }
    let r = send(Some(SECRET), &vec![0u8; 2 << 20]);
    assert_eq!(r.status, 413, "{r}");
    let r = cluster
        .node(1)
        .public()
        .post_raw("/cluster/v1/tenant", None, b"\x01");
    assert_eq!(r.status, 404, "not on the public listener: {r}");
    assert_eq!(cluster.node(1).public().get("/healthz").status, 200);
}
