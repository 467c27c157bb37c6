//! A Redis outage under load is survived without failed or slow checks, on one node
//! and on a cluster, and snapshot writes resume when Redis is back. Figures are printed
//! with `eprintln!`; run with `--nocapture` to see them.

use llmtrace_integration::scenario::{
    let_load_run, load_on, redis_cluster, snapshot_key, sum_metric,
};
use llmtrace_integration::{wait_until, Load, RedisServer};
use std::time::{Duration, Instant};

const RPS: u64 = 1;
const KEY_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------
// Redis outage under load.
// ---------------------------------------------------------------------------------

const OUTAGE_BURST: u64 = 1000;
/// Longest a phase of the outage test waits for its load to send its checks; a load
/// stuck behind slow checks is then stopped and its latency reported.
const PHASE_CAP: Duration = Duration::from_secs(12);

/// Lets `load` send `more` further checks, or run for `cap`, whichever comes first;
/// true when it sent them.
fn let_load_run_at_most(load: &Load, more: u64, cap: Duration, what: &str) -> bool {
    let target = load.sent() + more;
    let started = Instant::now();
    let what = format!("the load to send {more} more checks or run {cap:?} ({what})");
    wait_until(cap + Duration::from_secs(5), &what, || {
        assert!(load.is_running(), "the load stopped early ({what})");
        load.sent() >= target || started.elapsed() >= cap
    });
    load.sent() >= target
}

fn redis_outage_under_load(size: usize, prefix: &str) {
    let mut redis = RedisServer::start();
    let mut cluster = redis_cluster(&redis, size, RPS, OUTAGE_BURST);
    let all: Vec<usize> = (0..size).collect();
    let resident: Vec<String> = (0..20).map(|k| format!("{prefix}-{k}")).collect();
    // Tenants first seen as the outage starts: their restore from Redis fails.
    let fresh: Vec<String> = (0..40).map(|k| format!("{prefix}-new-{k}")).collect();

    let before = load_on(&cluster, &all, &resident);
    let_load_run(&before, 500, "before the outage");
    redis.wait_for_key(&snapshot_key(&resident[0]), KEY_TIMEOUT);
    let before = before.stop();

    // Two loads during the outage: one on buckets in memory, one on tenants whose first
    // check tries to restore from the dead Redis.
    // Redis dies while the first checks of new tenants restore from it.
    let during = load_on(&cluster, &all, &resident);
    let during_fresh = load_on(&cluster, &all, &fresh);
    redis.stop();
    let outage = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "llmtrace_snapshot_errors_total > 0 while Redis is down",
        || sum_metric(&cluster, "llmtrace_snapshot_errors_total") > 0.0,
    );
    let errors_after = outage.elapsed();
    let drained_in_outage = format!("{prefix}-drained-in-outage");
    let sent = Instant::now();
    let reply = cluster.node(0).check(&drained_in_outage, OUTAGE_BURST);
    let first_check = sent.elapsed();
    assert_eq!(reply.status, 200, "{reply}");
    let reply = cluster
        .node(size - 1)
        .check(&drained_in_outage, OUTAGE_BURST / 2);
    assert_eq!(
        reply.status, 429,
        "drained in memory during the outage: {reply}"
    );
    let resident_done = let_load_run_at_most(&during, 500, PHASE_CAP, "resident, outage");
    let fresh_done = let_load_run_at_most(
        &during_fresh,
        fresh.len() as u64,
        PHASE_CAP.saturating_sub(outage.elapsed()),
        "first seen during the outage",
    );
    for node in cluster.running() {
        let health = node.public().get("/healthz");
        assert_eq!(
            health.status, 200,
            "{} during the outage: {health}",
            node.node_id
        );
    }
    let during = during.stop();
    let during_fresh = during_fresh.stop();
    let outage_len = outage.elapsed();

    let after = load_on(&cluster, &all, &resident);
    redis.restart();
    let restarted = Instant::now();
    let writes_at_restart = sum_metric(&cluster, "llmtrace_snapshot_writes_total");
    wait_until(
        Duration::from_secs(30),
        "llmtrace_snapshot_writes_total to increase after Redis came back",
        || sum_metric(&cluster, "llmtrace_snapshot_writes_total") > writes_at_restart,
    );
    let writes_resumed = restarted.elapsed();
    let drained_after = format!("{prefix}-drained-after");
    let reply = cluster.node(0).check(&drained_after, OUTAGE_BURST);
    assert_eq!(reply.status, 200, "{reply}");
    redis.wait_for_key(&snapshot_key(&drained_after), Duration::from_secs(30));
    let key_after = restarted.elapsed();
    // The write-behind retries what changed during the outage.
    redis.wait_for_key(&snapshot_key(&drained_in_outage), Duration::from_secs(30));
    let_load_run(&after, 500, "after Redis came back");
    let after = after.stop();

    let errors = sum_metric(&cluster, "llmtrace_snapshot_errors_total");
    let restore_errors = sum_metric(&cluster, "llmtrace_restore_errors_total");
    eprintln!(
        "{size} node(s), Redis outage of {outage_len:?}: snapshot errors counted after \
         {errors_after:?}; after the restart writes resumed within {writes_resumed:?} and a \
         new key appeared within {key_after:?}; snapshot errors {errors}, restore errors \
         {restore_errors}; a new tenant's first check during the outage took \
         {first_check:?}; slowest check before {:?}, during (resident tenants) {:?}, during \
         (tenants first seen in the outage) {:?}, after {:?}\n  before: {}\n  during, \
         resident: {}\n  during, first seen: {}\n  after: {}",
        before.max_latency,
        during.max_latency,
        during_fresh.max_latency,
        after.max_latency,
        before.summary(),
        during.summary(),
        during_fresh.summary(),
        after.summary()
    );
    let phases = [
        ("before the outage", &before),
        ("during the outage (resident tenants)", &during),
        ("during the outage (tenants first seen)", &during_fresh),
        ("after the outage", &after),
    ];
    for (phase, report) in phases {
        assert_eq!(report.failed(), 0, "{phase}: {}", report.summary());
        assert!(
            report.max_latency <= Duration::from_secs(1),
            "{phase} a check took {:?}: {}",
            report.max_latency,
            report.summary()
        );
    }
    assert!(
        first_check <= Duration::from_secs(1),
        "a new tenant's first check during the outage took {first_check:?}"
    );
    assert!(
        resident_done && fresh_done,
        "the loads did not get their checks answered within {PHASE_CAP:?} during the outage"
    );
    for i in all {
        let node = cluster.node_mut(i);
        assert!(
            node.is_running(),
            "{} died:\n{}",
            node.node_id,
            node.stderr()
        );
        let health = node.public().get("/healthz");
        assert_eq!(health.status, 200, "{}: {health}", node.node_id);
    }
    cluster.wait_converged(Duration::from_secs(10));
    // Still drained in memory across the outage.
    let reply = cluster.node(0).check(&drained_in_outage, OUTAGE_BURST / 2);
    assert_eq!(reply.status, 429, "{reply}");
}

#[test]
fn redis_outage_under_load_is_survived() {
    redis_outage_under_load(1, "outage1");
}

#[test]
fn redis_outage_under_load_is_survived_by_a_cluster() {
    redis_outage_under_load(3, "outage3");
}
