//! `snapshot_mode = "write-through"`: a check is answered only once its new bucket
//! state is in Redis, so a kill -9 loses nothing, however long the write-behind
//! interval. Each test sets `--snapshot-interval-ms 60000`, so nothing reaches Redis
//! but what write-through wrote; the write-behind test beside them shows what the same
//! crash loses without it (and so that these tests can tell the difference).
//!
//! rps is 1: a drained bucket regains one token per second, so "nothing lost" means
//! that after the crash a tenant gets no more than the tokens refilled since it was
//! drained.

use llmtrace_integration::scenario::{owner_of, snapshot_key, tenants_owned_by};
use llmtrace_integration::{Cluster, Node, RedisServer};
use std::time::{Duration, Instant};

const RPS: u64 = 1;
const BURST: u64 = 60;
/// Longer than any test: write-behind alone never writes during one.
const NEVER_MS: u64 = 60_000;

fn node(redis: &RedisServer, mode: &str) -> Node {
    Node::builder()
        .rate(RPS, BURST)
        .redis(redis)
        .flag("snapshot-mode", mode)
        .flag("snapshot-interval-ms", NEVER_MS)
        .start()
}

/// Most cost-1 checks a bucket drained `since` ago may admit: what it refilled,
/// plus one for the token in progress and one second of slack for the time the
/// count itself takes.
fn refilled_since(since: Instant) -> u64 {
    since.elapsed().as_secs() * RPS + 2
}

/// Drains `tenant` through `nodes`, concurrently (cost-1 checks until each node sees a
/// refusal); returns the total admitted.
fn drain_concurrently(nodes: &[&Node], tenant: &str) -> u64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| s.spawn(move || n.check_until_refused(tenant, BURST + 10).allowed))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

#[test]
fn write_through_restart_after_kill_loses_nothing() {
    let redis = RedisServer::start();
    let mut first = node(&redis, "write-through");
    let drained_at = Instant::now();
    let admitted = first.check_until_refused("wt-single", BURST + 5).allowed;
    assert!(
        admitted >= BURST,
        "a fresh bucket admits its burst: {admitted}"
    );
    // No wait for any snapshot: the last answer implies its state is stored.
    first.kill();
    let second = node(&redis, "write-through");
    let max = refilled_since(drained_at);
    let after = second.check_until_refused("wt-single", max).allowed;
    eprintln!("write-through: {admitted} admitted, killed, {after} admitted after restart");
    assert!(after <= max);
}

#[test]
fn write_behind_crash_loses_what_was_not_yet_snapshotted() {
    let redis = RedisServer::start();
    let mut first = node(&redis, "write-behind");
    first.check_until_refused("wb-single", BURST + 5);
    first.kill();
    let second = node(&redis, "write-behind");
    let after = second.check_until_refused("wb-single", BURST + 5).allowed;
    eprintln!("write-behind (interval {NEVER_MS} ms): {after} admitted after the restart");
    assert!(
        after >= BURST - 5,
        "nothing was snapshotted, so the bucket must come back (nearly) full: {after}"
    );
    assert!(redis.all_keys().iter().all(|k| !k.contains("wb-single")));
}

#[test]
fn write_through_kill_of_the_owner_loses_nothing_in_a_cluster() {
    let redis = RedisServer::start();
    let mut cluster = Cluster::builder()
        .nodes(3)
        .rate(RPS, BURST)
        .flag("redis-url", redis.url())
        .flag("snapshot-mode", "write-through")
        .flag("snapshot-interval-ms", NEVER_MS)
        .start();
    let tenant = tenants_owned_by(cluster.node(0), "node-2", "wt-cluster", 1).remove(0);
    let drained_at = Instant::now();
    // Forwarded from two nodes at once: their checks share write-through batches.
    let admitted = drain_concurrently(&[cluster.node(0), cluster.node(1)], &tenant);
    let max_admitted = BURST + refilled_since(drained_at);
    assert!(
        (BURST..=max_admitted).contains(&admitted),
        "admitted {admitted}, expected {BURST}..={max_admitted}"
    );
    assert_eq!(redis.conn().exists(&snapshot_key(&tenant)).ok(), Some(true));
    cluster.kill(2);
    cluster.wait_converged(Duration::from_secs(20));
    let new_owner = owner_of(cluster.node(0), &tenant);
    assert_ne!(new_owner, "node-2");
    let max = refilled_since(drained_at);
    let after = cluster.node(1).check_until_refused(&tenant, max).allowed;
    eprintln!(
        "write-through cluster: {admitted} admitted through node-0 and node-1, owner node-2 \
         killed, {after} admitted on {new_owner} (at most {max} refilled)"
    );
    assert!(after <= max);
}

#[test]
fn write_through_refuses_with_503_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let n = Node::builder()
        .rate(RPS, BURST)
        .redis(&redis)
        .flag("snapshot-mode", "write-through")
        .flag("redis-timeout-ms", 200)
        .start();
    assert_eq!(n.check("wt-down", 1).status, 200);
    redis.stop();
    let reply = n.check("wt-down", 1);
    assert_eq!(reply.status, 503, "{reply}");
    assert_eq!(reply.json["error"]["code"], "not_persisted", "{reply}");
    // A refusal changes nothing and needs no write: still a plain 429.
    let reply = n.check("wt-down", BURST);
    assert_eq!(reply.status, 429, "{reply}");
    redis.restart();
    let ok = llmtrace_integration::wait_for(
        Duration::from_secs(20),
        "admitting checks to be persisted again after Redis came back",
        || {
            let r = n.check("wt-down", 1);
            (r.status == 200).then_some(r)
        },
    );
    assert_eq!(ok.allowed(), Some(true));
    assert!(n.metric("llmtrace_snapshot_errors_total").unwrap_or(0.0) >= 1.0);
}
