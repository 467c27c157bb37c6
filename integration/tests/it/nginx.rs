//! A real nginx, configured from `deploy/nginx.conf`, in front of three real nodes:
//! checks sent through it round-robin stay exact for a tenant, and a node stopped
//! gracefully (SIGTERM) behind it costs no client a failed check, nginx retrying the
//! refused connections on the other nodes.
//!
//! Skips with a printed reason when nginx is not installed, unless
//! `LLMTRACE_REQUIRE_TOOLS` is set (scripts/test.sh installs it and sets it).

use llmtrace_integration::nginx::{self, Access, Nginx};
use llmtrace_integration::scenario::let_load_run;
use llmtrace_integration::{tool_available, Cluster, Load};
use std::collections::BTreeMap;
use std::time::Instant;

/// `host:port` of each running node's public listener.
fn public_addrs(cluster: &Cluster) -> Vec<String> {
    cluster
        .running()
        .iter()
        .map(|n| n.public_url().trim_start_matches("http://").to_string())
        .collect()
}

fn start_nginx(cluster: &Cluster) -> Nginx {
    let addrs = public_addrs(cluster);
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    Nginx::start(&refs)
}

/// Requests per upstream that answered (the last address of each log line).
fn answered_by(log: &[Access]) -> BTreeMap<String, usize> {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for a in log {
        if let Some(last) = a.upstreams.last() {
            *by.entry(last.clone()).or_default() += 1;
        }
    }
    by
}

#[test]
fn checks_through_nginx_are_exact() {
    if !tool_available(nginx::find().map(|_| ()), "checks_through_nginx_are_exact") {
        return;
    }
    const RPS: u64 = 5;
    const BURST: u64 = 300;
    const CHECKS: usize = 900;
    let cluster = Cluster::start(3, RPS, BURST);
    let lb = start_nginx(&cluster);
    let client = lb.client();
    let before = lb.access_log().len();

    // Sequential checks for one tenant through nginx. Each is decided somewhere
    // between its send and its answer, so a bucket of BURST refilling at RPS
    // admits burst + floor(rps * t) with t between (last sent - first answered)
    // and (last answered - first sent).
    let mut allowed = 0u64;
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let first_sent = Instant::now();
    let mut first_answered = None;
    let mut last_sent = first_sent;
    for i in 0..CHECKS {
        last_sent = Instant::now();
        let reply = client.post_json(
            "/v1/check",
            &serde_json::json!({"tenant_id": "lb-exact", "cost": 1}),
        );
        first_answered.get_or_insert_with(Instant::now);
        *statuses.entry(reply.status).or_default() += 1;
        match reply.status {
            200 => allowed += 1,
            429 => assert!(
                reply.header("retry-after").is_some(),
                "check {i}: 429 without Retry-After through nginx: {reply}"
            ),
            _ => panic!("check {i}: {reply}"),
        }
    }
    let last_answered = Instant::now();
    let first_answered = first_answered.expect("one check answered");
    let refill = |secs: f64| (RPS as f64 * secs).floor() as u64;
    let least = BURST
        + refill(
            last_sent
                .saturating_duration_since(first_answered)
                .as_secs_f64(),
        );
    let most = BURST + refill((last_answered - first_sent).as_secs_f64());
    eprintln!(
        "through nginx: {allowed} of {CHECKS} allowed in {:?} (exact range {least}..={most}); \
         statuses {statuses:?}",
        last_answered - first_sent
    );
    assert!(
        (least..=most).contains(&allowed),
        "{allowed} allowed; a single bucket allows {least}..={most}"
    );

    // Every node answered its share: round robin over three public listeners.
    let log = lb.wait_logged(before + CHECKS);
    let by = answered_by(&log[before..]);
    eprintln!("answered by: {by:?}");
    let addrs = public_addrs(&cluster);
    for addr in &addrs {
        let n = by.get(addr).copied().unwrap_or(0);
        assert!(
            n >= CHECKS / 4,
            "{addr} answered {n} of {CHECKS} checks: not round robin ({by:?})"
        );
    }
    assert!(
        log[before..].iter().all(|a| a.upstreams.len() == 1),
        "retries in a stable cluster: {:?}",
        log.iter()
            .filter(|a| a.upstreams.len() > 1)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_node_stopped_behind_nginx_fails_no_check() {
    if !tool_available(
        nginx::find().map(|_| ()),
        "a_node_stopped_behind_nginx_fails_no_check",
    ) {
        return;
    }
    const RPS: u64 = 5;
    const BURST: u64 = 20;
    let mut cluster = Cluster::start(3, RPS, BURST);
    let lb = start_nginx(&cluster);
    let stopped_addr = public_addrs(&cluster)[2].clone();
    let tenants: Vec<String> = (0..12).map(|k| format!("lb-stop-{k}")).collect();
    let load = Load::start(vec![lb.client()], tenants);
    let_load_run(&load, 300, "before the stop");

    let status = cluster.terminate(2);
    assert!(status.success(), "node-2 exited with {status} on SIGTERM");
    let stopped_at = lb.access_log().len();
    // Enough checks after the exit that nginx sends some to the closed listener
    // (round robin, and again once fail_timeout passes).
    let_load_run(&load, 600, "after the stop");
    let report = load.stop();
    eprintln!("load through nginx: {}", report.summary());
    report.assert_no_failures();

    let log = lb.wait_logged(report.sent as usize);
    assert!(
        log.iter().all(|a| a.status == 200 || a.status == 429),
        "nginx answered a client with an error: {:?}",
        log.iter()
            .filter(|a| a.status != 200 && a.status != 429)
            .take(5)
            .collect::<Vec<_>>()
    );
    let retried: Vec<&Access> = log.iter().filter(|a| a.upstreams.len() > 1).collect();
    eprintln!(
        "requests nginx retried on another node: {} (first: {:?})",
        retried.len(),
        retried.first()
    );
    // nginx met the closed listener at least once (round robin sends it checks
    // until the first refusal marks it failed) and retried that check elsewhere.
    assert!(
        !retried.is_empty(),
        "no request was retried: the stop was not exercised"
    );
    assert!(
        retried.iter().all(|a| a.upstreams[0] == stopped_addr),
        "a retry started on a live node: {retried:?}"
    );
    // After the exit, the stopped node answered nothing.
    let late: Vec<&Access> = log[stopped_at..]
        .iter()
        .filter(|a| a.upstreams.last() == Some(&stopped_addr))
        .collect();
    assert!(late.is_empty(), "the stopped node answered: {late:?}");

    // Each tenant stayed within one bucket's bound: a graceful leave hands
    // every bucket over, so not one unit more.
    for (tenant, tally) in &report.tenants {
        let over = tally.over_admission(BURST, RPS);
        assert!(
            over <= 0,
            "{tenant}: {over} allowed beyond one bucket ({tally:?})"
        );
    }
    let worst = report
        .tenants
        .values()
        .map(|t| t.over_admission(BURST, RPS))
        .max()
        .unwrap_or(0);
    eprintln!("largest over-admission of a tenant across the stop: {worst}");
}
