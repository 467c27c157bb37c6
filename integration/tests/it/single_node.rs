//! Seed behaviours of one in-memory node over HTTP: allowed under the limit, burst then
//! 429, per-tenant isolation, tenant overrides from the TOML file, disabled limiting, the
//! shape of allowed / refused answers, batches, health and metrics.
//!
//! rps is 1 everywhere so a bucket cannot refill meaningfully during a test; where a
//! refill could still happen on a very slow machine, bounds use the measured time.

use llmtrace_integration::{metrics, wait_until, Node, Reply};
use serde_json::json;
use std::time::{Duration, Instant};

const RATE_HEADERS: [&str; 5] = [
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
];

fn assert_rate_headers(reply: &Reply) {
    for h in RATE_HEADERS {
        assert!(reply.header(h).is_some(), "header {h} missing: {reply}");
    }
    let remaining = reply.header("x-ratelimit-remaining-requests").unwrap();
    assert_eq!(
        remaining.trim().parse::<u64>().ok(),
        Some(reply.u64_field("remaining")),
        "x-ratelimit-remaining-requests must equal the body's remaining: {reply}"
    );
}

/// Most checks a bucket of `burst` at `rps` can allow within `elapsed`.
fn bound(burst: u64, rps: u64, elapsed: Duration) -> u64 {
    burst + (rps as f64 * elapsed.as_secs_f64()).floor() as u64
}

#[test]
fn allowed_under_the_limit_reports_quota() {
    let node = Node::builder().rate(1, 10).start();
    let start = Instant::now();
    let reply = node.check("acme", 1);
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.allowed(), Some(true), "{reply}");
    assert_eq!(reply.json["tenant_id"], "acme", "{reply}");
    assert_eq!(reply.json["limit"], "requests", "{reply}");
    assert_eq!(reply.u64_field("requests_per_second"), 1, "{reply}");
    assert_eq!(reply.u64_field("burst"), 10, "{reply}");
    // A new tenant starts full: one token spent.
    assert_eq!(reply.u64_field("remaining"), 9, "{reply}");
    assert!(reply.json["reset_after_ms"].is_u64(), "{reply}");
    assert!(
        reply.json.get("unlimited").is_none_or(|u| u == false),
        "{reply}"
    );
    assert_rate_headers(&reply);

    // cost and limit are explicit here; remaining goes down by the cost.
    let reply = node.check_json(&json!({"tenant_id": "acme", "cost": 4, "limit": "requests"}));
    assert_eq!(reply.status, 200, "{reply}");
    let remaining = reply.u64_field("remaining");
    assert!(
        remaining >= 5 && remaining <= bound(5, 1, start.elapsed()),
        "9 - 4 plus refill since the first check: {reply}"
    );
}

#[test]
fn burst_then_refused_with_retry_after() {
    let node = Node::builder().rate(1, 3).start();
    let start = Instant::now();
    let drained = node.check_until_refused("burst-tenant", 10);
    assert!(
        drained.allowed >= 3 && drained.allowed <= bound(3, 1, drained.elapsed),
        "allowed {} checks in {:?} with burst 3 at 1 rps",
        drained.allowed,
        drained.elapsed
    );
    let refused = &drained.refused;
    assert_eq!(refused.allowed(), Some(false), "{refused}");
    assert_eq!(refused.json["tenant_id"], "burst-tenant", "{refused}");
    assert_eq!(refused.json["limit"], "requests", "{refused}");
    assert_eq!(refused.u64_field("remaining"), 0, "{refused}");
    assert_eq!(refused.u64_field("burst"), 3, "{refused}");
    assert_eq!(refused.u64_field("requests_per_second"), 1, "{refused}");
    let retry = refused.u64_field("retry_after_secs");
    assert!(
        (1..=3).contains(&retry),
        "retry_after_secs {retry}: {refused}"
    );
    let header = refused
        .header("retry-after")
        .unwrap_or_else(|| panic!("Retry-After missing: {refused}"));
    let header: u64 = header
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {header:?} not seconds"));
    assert!(header >= 1, "Retry-After {header}: {refused}");
    assert_rate_headers(refused);

    // Still refused right away: after 3 tokens, the next one needs 1 s from the start.
    let again = node.check("burst-tenant", 1);
    let elapsed = start.elapsed();
    if elapsed < Duration::from_millis(900) {
        assert_eq!(again.status, 429, "refilled within {elapsed:?}: {again}");
    }
}

#[test]
fn tenants_are_isolated() {
    let node = Node::start(&["--requests-per-second", "1", "--burst-size", "3"]);
    let a = node.check_until_refused("tenant-a", 10);
    assert!(a.allowed >= 3);
    // tenant-b starts with its own full bucket.
    for i in 0..3 {
        let reply = node.check("tenant-b", 1);
        assert_eq!(
            reply.status, 200,
            "tenant-b check {i} after draining tenant-a: {reply}"
        );
        assert_eq!(reply.json["tenant_id"], "tenant-b");
    }
    // Tenant ids are case-sensitive keys.
    let reply = node.check("TENANT-A", 1);
    assert_eq!(reply.status, 200, "TENANT-A is another tenant: {reply}");
}

#[test]
fn tenant_override_from_config_file() {
    let node = Node::builder()
        .config_toml(
            r#"
[rate_limit]
enabled = true
requests_per_second = 1
burst_size = 2

[rate_limit.tenant_overrides."vip"]
requests_per_second = 1
burst_size = 6
"#,
        )
        .start();
    let start = Instant::now();
    let vip = node.check("vip", 1);
    assert_eq!(vip.status, 200, "{vip}");
    assert_eq!(vip.u64_field("burst"), 6, "override burst: {vip}");
    let plain = node.check("plain", 1);
    assert_eq!(plain.status, 200, "{plain}");
    assert_eq!(plain.u64_field("burst"), 2, "default burst: {plain}");

    // One token of each already spent.
    let vip = node.check_until_refused("vip", 20);
    let most = bound(5, 1, start.elapsed());
    assert!(
        vip.allowed >= 5 && vip.allowed <= most,
        "vip allowed {}",
        vip.allowed
    );
    let plain = node.check_until_refused("plain", 20);
    let most = bound(1, 1, start.elapsed());
    assert!(
        plain.allowed >= 1 && plain.allowed <= most,
        "plain allowed {}",
        plain.allowed
    );
}

#[test]
fn disabled_limiting_allows_everything() {
    let node = Node::builder()
        .rate(1, 1)
        .flag("rate-limit-enabled", "false")
        .start();
    for i in 0..20 {
        let reply = node.check("anyone", 1);
        assert_eq!(reply.status, 200, "check {i}: {reply}");
        assert_eq!(reply.allowed(), Some(true), "{reply}");
        assert_eq!(reply.json["unlimited"], true, "{reply}");
    }
}

#[test]
fn zero_rps_means_unlimited() {
    let node = Node::builder().rate(0, 1).start();
    for i in 0..10 {
        let reply = node.check("free", 1);
        assert_eq!(reply.status, 200, "check {i}: {reply}");
        assert_eq!(reply.json["unlimited"], true, "{reply}");
    }
}

#[test]
fn batch_answers_in_order() {
    let node = Node::builder().rate(1, 2).start();
    let items: Vec<_> = ["b-one", "b-two", "b-one", "b-one", "b-three"]
        .iter()
        .map(|t| json!({"tenant_id": t, "cost": 1}))
        .collect();
    let start = Instant::now();
    let reply = node.batch(&items);
    let most = bound(2, 1, start.elapsed());
    assert_eq!(reply.status, 200, "{reply}");
    let results = reply.json["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {reply}"));
    assert_eq!(results.len(), items.len(), "{reply}");
    for (item, result) in items.iter().zip(results) {
        assert_eq!(result["tenant_id"], item["tenant_id"], "order: {reply}");
        assert!(result["allowed"].is_boolean(), "{reply}");
    }
    // b-one: burst 2, three checks in one batch: the first two allowed, the third refused
    // (unless the batch took over a second and a token refilled).
    assert_eq!(results[0]["allowed"], true, "{reply}");
    assert_eq!(results[2]["allowed"], true, "{reply}");
    if most == 2 {
        assert_eq!(results[3]["allowed"], false, "b-one burst 2: {reply}");
        assert!(
            results[3]["retry_after_secs"].as_u64() >= Some(1),
            "{reply}"
        );
    }
    assert_eq!(results[1]["allowed"], true, "{reply}");
    assert_eq!(results[4]["allowed"], true, "{reply}");
}

#[test]
fn health_ready_and_metrics() {
    let node = Node::builder().rate(1, 2).start();
    assert_eq!(node.public().get("/healthz").status, 200);
    node.wait_ready();
    assert_eq!(node.admin().get("/healthz").status, 200);

    node.check_until_refused("metered", 10);
    let allowed = r#"llmtrace_checks_total{limit="requests",decision="allowed"}"#;
    let refused = r#"llmtrace_checks_total{limit="requests",decision="refused"}"#;
    node.wait_metric(allowed, Duration::from_secs(10), |v| v >= 2.0);
    node.wait_metric(refused, Duration::from_secs(10), |v| v >= 1.0);
    let page = node.metrics();
    for name in [
        "llmtrace_buckets_resident",
        "llmtrace_snapshot_writes_total",
        "llmtrace_snapshot_errors_total",
        "llmtrace_restore_errors_total",
    ] {
        assert!(
            metrics::value(&page, name).is_some(),
            "/metrics lacks {name}:\n{page}"
        );
    }
    let resident = node.metric("llmtrace_buckets_resident").unwrap();
    assert!(
        resident >= 1.0,
        "the drained bucket is resident: {resident}"
    );
}

/// Logs written to a pipe or a file carry no terminal colour codes.
#[test]
fn logs_off_a_terminal_are_plain_text() {
    let node = Node::builder().rate(1, 2).start();
    node.wait_ready();
    node.check_until_refused("plain", 10);
    let log = node.stderr();
    assert!(
        log.contains("llmtrace-node started"),
        "the start line is logged:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "ANSI escape in the log:\n{log}");
}

/// Nodes not asked to cluster (no --cluster-listen, --cluster-advertise or
/// --seeds) take a free loopback cluster port, so two of them run side by
/// side on one machine.
#[test]
fn two_lone_nodes_do_not_collide() {
    let a = Node::builder().alone().rate(1, 2).start();
    let b = Node::builder().alone().rate(1, 2).start();
    for node in [&a, &b] {
        node.wait_ready();
        let addr: std::net::SocketAddr = node.cluster_addr().parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_ne!(addr.port(), 7946, "not the default cluster port");
        assert_eq!(node.check("t", 1).status, 200);
    }
    assert_ne!(a.cluster_addr(), b.cluster_addr());
}

/// SIGTERM: readyz turns 503 at once, while the public and admin listeners keep
/// answering (checks allowed) for the whole shutdown grace; the process exits
/// after it, with status 0.
#[test]
fn sigterm_turns_readyz_503_and_serves_through_the_grace() {
    const GRACE: Duration = Duration::from_millis(2500);
    /// readyz must show 503 well within the grace, so a load balancer can see it.
    const READYZ_WITHIN: Duration = Duration::from_secs(1);
    // Through the environment: a build without the setting starts all the same
    // (and fails below).
    let mut node = Node::builder()
        .rate(1, 1_000_000)
        .env("LLMTRACE_SHUTDOWN_GRACE_MS", GRACE.as_millis())
        .start();
    node.wait_ready();
    let sent = Instant::now();
    node.signal_term();
    wait_until(READYZ_WITHIN, "readyz to answer 503 after SIGTERM", || {
        node.public()
            .try_get("/readyz")
            .is_ok_and(|r| r.status == 503)
    });
    let unready = sent.elapsed();

    // Until the node closes its listeners, every request is answered: readyz
    // 503, checks 200, the admin listener 200. A request may fail only once the
    // grace is over.
    const CLOSE_RACE: Duration = Duration::from_millis(100);
    let mut last_answered = None;
    while node.is_running() {
        let at = sent.elapsed();
        let readyz = node.public().try_get("/readyz");
        // Each request is timed from its own start: the grace may end
        // between two of them.
        let check_at = sent.elapsed();
        let check = node
            .public()
            .try_post_json("/v1/check", &json!({"tenant_id": "graceful", "cost": 1}));
        let admin_at = sent.elapsed();
        let admin = node.admin().try_get("/admin/cluster");
        match (readyz, check, admin) {
            (Ok(readyz), Ok(check), Ok(admin)) => {
                assert_eq!(readyz.status, 503, "{at:?} after SIGTERM: {readyz}");
                assert_eq!(check.status, 200, "{at:?} after SIGTERM: {check}");
                assert_eq!(admin.status, 200, "{at:?} after SIGTERM: {admin}");
                last_answered = Some(at);
            }
            (readyz, check, admin) => {
                let failed_at = if readyz.is_err() {
                    at
                } else if check.is_err() {
                    check_at
                } else {
                    admin_at
                };
                // A request sent in the last moments of the grace may race
                // the close of its listener: allow that much.
                assert!(
                    failed_at + CLOSE_RACE >= GRACE,
                    "a request sent {failed_at:?} after SIGTERM, within the {GRACE:?} grace, \
                     was not answered: readyz {:?}, check {:?}, admin {:?}",
                    readyz.err(),
                    check.err(),
                    admin.err()
                );
                break;
            }
        }
        assert!(at < GRACE * 4, "still answering {at:?} after SIGTERM");
    }
    let status = node
        .wait_exit(llmtrace_integration::process::STOP_TIMEOUT)
        .expect("the node exits after its grace");
    let exited = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        exited >= GRACE,
        "exited {exited:?} after SIGTERM, before the {GRACE:?} grace was over"
    );
    let last_answered = last_answered.expect("answers during the grace");
    eprintln!(
        "after SIGTERM: readyz 503 within {unready:?}, last request answered sent at \
         {last_answered:?}, exit at {exited:?} (grace {GRACE:?})"
    );
    assert!(
        last_answered >= GRACE / 2,
        "the last request answered was sent {last_answered:?} after SIGTERM"
    );
}
