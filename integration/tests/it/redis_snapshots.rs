//! Bucket snapshots in a real redis-server: a drained tenant stays drained across a
//! graceful restart and a kill -9; snapshot keys carry a TTL; Redis being down is
//! survived and writes resume when it comes back.
//!
//! A drained bucket (rps 1) regains one token per second, so "still drained after a
//! restart" is checked with a large cost: a cost of 25 out of a burst of 50 is refused
//! for ~25 s after draining, while a bucket that came back full would allow it. The
//! outage tests, which may wait longer, use a burst of 1000 and a cost of 500.

use llmtrace_integration::{Node, NodeBuilder, RedisServer};
use std::time::Duration;

pub(crate) const BURST: u64 = 50;
pub(crate) const KEY_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) fn key(tenant: &str) -> String {
    format!("llmtrace:bucket:{tenant}:requests")
}

pub(crate) fn builder(redis_url: &str) -> NodeBuilder {
    Node::builder().rate(1, BURST).flag("redis-url", redis_url)
}

pub(crate) fn drain(node: &Node, tenant: &str, burst: u64) {
    let reply = node.check(tenant, burst);
    assert_eq!(reply.status, 200, "cost = burst on a fresh bucket: {reply}");
    assert_eq!(reply.u64_field("remaining"), 0, "{reply}");
}

/// The tenant is refused a cost of 25: its bucket did not come back full.
pub(crate) fn assert_still_drained(node: &Node, tenant: &str) {
    let reply = node.check(tenant, 25);
    assert_eq!(
        reply.status, 429,
        "tenant {tenant:?} came back with 25+ tokens after a restart: {reply}"
    );
    let retry = reply.u64_field("retry_after_secs");
    assert!(
        (1..=25).contains(&retry),
        "retry_after_secs {retry}: {reply}"
    );
    // Another tenant is unaffected.
    let other = node.check(&format!("{tenant}-other"), 1);
    assert_eq!(other.status, 200, "{other}");
}

fn assert_ttl(pttl: i64) {
    let most = (BURST * 1000 + 60_000) as i64;
    assert!(
        pttl > 0 && pttl <= most,
        "PTTL {pttl} ms should be in 1..={most}"
    );
}

#[test]
fn drained_tenant_survives_sigterm() {
    let redis = RedisServer::start();
    let mut node = builder(&redis.url()).start();
    drain(&node, "acme", BURST);
    let pttl = redis.wait_for_key(&key("acme"), KEY_TIMEOUT);
    assert_ttl(pttl);
    let snapshot = redis
        .conn()
        .get(&key("acme"))
        .expect("GET")
        .expect("snapshot value");
    assert!(!snapshot.is_empty());
    let writes = node.metric("llmtrace_snapshot_writes_total").unwrap_or(0.0);
    assert!(writes >= 1.0, "llmtrace_snapshot_writes_total {writes}");

    let status = node.terminate();
    assert!(
        status.success(),
        "SIGTERM should exit 0, got {status}\n{}",
        node.stderr()
    );

    let node = builder(&redis.url()).start();
    assert_still_drained(&node, "acme");
}

#[test]
fn drained_tenant_survives_kill_9() {
    let redis = RedisServer::start();
    let mut node = builder(&redis.url()).start();
    drain(&node, "crashy", BURST);
    assert_ttl(redis.wait_for_key(&key("crashy"), KEY_TIMEOUT));
    node.kill();

    let node = builder(&redis.url()).start();
    assert_still_drained(&node, "crashy");
}

#[test]
fn sigterm_flushes_dirty_snapshots() {
    let redis = RedisServer::start();
    // The periodic snapshot would come only after a minute: the flush at exit must write.
    let mut node = builder(&redis.url())
        .flag("snapshot-interval-ms", 60_000)
        .start();
    drain(&node, "flushed", BURST);
    let status = node.terminate();
    assert!(
        status.success(),
        "SIGTERM should exit 0, got {status}\n{}",
        node.stderr()
    );
    let mut conn = redis.conn();
    assert!(
        conn.exists(&key("flushed")).expect("EXISTS"),
        "no snapshot after a graceful stop; keys: {:?}",
        redis.all_keys()
    );
    assert_ttl(conn.pttl(&key("flushed")).expect("PTTL"));

    let node = builder(&redis.url()).start();
    assert_still_drained(&node, "flushed");
}

fn redis_error_count(node: &Node) -> f64 {
    let page = node.metrics();
    [
        "llmtrace_snapshot_errors_total",
        "llmtrace_restore_errors_total",
    ]
    .iter()
    .filter_map(|m| llmtrace_integration::metrics::value(&page, m))
    .sum()
}

#[test]
fn redis_down_at_start_then_up() {
    let port = llmtrace_integration::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut node = Node::builder()
        .rate(1, 1000)
        .flag("redis-url", &url)
        .start();

    // Answered from memory: a full bucket, then drained.
    let reply = node.check("offline", 1000);
    assert_eq!(reply.status, 200, "{reply}");
    let reply = node.check("offline", 500);
    assert_eq!(reply.status, 429, "{reply}");
    assert_eq!(node.check("offline-2", 1).status, 200);

    llmtrace_integration::wait_until(
        Duration::from_secs(30),
        "snapshot or restore errors to be counted while Redis is down",
        || redis_error_count(&node) > 0.0,
    );
    assert!(
        node.is_running(),
        "node died while Redis is down:\n{}",
        node.stderr()
    );
    assert_eq!(node.public().get("/healthz").status, 200);
    assert_eq!(
        node.check("offline", 500).status,
        429,
        "still drained in memory"
    );

    let redis = RedisServer::start_on_port(port);
    // Writes resume (with backoff): the drained bucket reaches Redis.
    let pttl = redis.wait_for_key(&key("offline"), Duration::from_secs(60));
    assert!(pttl > 0 && pttl <= 1_060_000, "PTTL {pttl}");
    assert!(node.is_running());
}

#[test]
fn redis_outage_mid_run() {
    let mut redis = RedisServer::start();
    let mut node = Node::builder().rate(1, 1000).redis(&redis).start();
    drain(&node, "before", 1000);
    redis.wait_for_key(&key("before"), KEY_TIMEOUT);

    redis.stop();
    drain(&node, "during", 1000);
    let reply = node.check("before", 500);
    assert_eq!(
        reply.status, 429,
        "memory still knows 'before' is drained: {reply}"
    );
    llmtrace_integration::wait_until(
        Duration::from_secs(30),
        "snapshot errors while Redis is down",
        || redis_error_count(&node) > 0.0,
    );
    assert!(
        node.is_running(),
        "node died while Redis is down:\n{}",
        node.stderr()
    );
    assert_eq!(node.check("fresh", 1).status, 200);

    // Redis comes back empty (no persistence): the write-behind retries the dirty bucket.
    redis.restart();
    let pttl = redis.wait_for_key(&key("during"), Duration::from_secs(60));
    assert!(pttl > 0 && pttl <= 1_060_000, "PTTL {pttl}");
    assert_eq!(node.check("during", 500).status, 429);
}

/// Redis holds a key per non-full bucket, not per tenant ever seen: snapshots of idle
/// tenants expire by TTL (time to refill + 1 s), while buckets that keep being used keep
/// theirs; once every bucket is full again, Redis holds no snapshot.
#[test]
fn idle_tenants_expire_and_keys_track_non_full_buckets() {
    let redis = RedisServer::start();
    // rps 100, burst 100: a half-drained bucket is full again within 0.5 s, so its
    // snapshot lives at most ~1.5 s.
    let node = Node::builder()
        .rate(100, 100)
        .flag("redis-url", redis.url())
        .start();
    let idle: Vec<String> = (0..150).map(|i| format!("idle-{i}")).collect();
    let hot: Vec<String> = (0..15).map(|i| format!("hot-{i}")).collect();
    for t in idle.iter().chain(&hot) {
        assert_eq!(node.check(t, 50).status, 200);
    }
    let mut conn = redis.conn();
    // Besides the snapshots, Redis holds the node's marker key (data-loss detection).
    let snapshots = |conn: &mut llmtrace_integration::resp::Conn| {
        conn.keys("llmtrace:bucket:*")
            .map(|k| k.len())
            .unwrap_or(usize::MAX)
    };
    let total = idle.len() + hot.len();
    llmtrace_integration::wait_until(KEY_TIMEOUT, "a snapshot of every used bucket", || {
        snapshots(&mut conn) == total
    });
    let pttl = conn.pttl(&key("idle-0")).expect("PTTL");
    assert!(
        pttl > 0 && pttl <= 1_500,
        "time to refill 0.5 s + 1 s: PTTL {pttl}"
    );
    // Keep the hot tenants below full; the idle ones must expire meanwhile.
    let mut hot_keys: Vec<String> = hot.iter().map(|t| key(t)).collect();
    hot_keys.sort();
    let mut last = Vec::new();
    let what = "idle tenants' snapshots to expire while hot tenants keep theirs";
    llmtrace_integration::wait_until(Duration::from_secs(30), what, || {
        for t in &hot {
            let status = node.check(t, 50).status;
            assert!(status == 200 || status == 429, "{t}: {status}");
        }
        let mut keys = conn.keys("llmtrace:bucket:*").unwrap_or_default();
        keys.sort();
        let done = keys == hot_keys;
        last = keys;
        done
    });
    eprintln!(
        "Redis keys with 15 hot and 150 idle tenants: {}",
        last.len()
    );
    // Nothing is used any more: every bucket refills, every key expires.
    llmtrace_integration::wait_until(KEY_TIMEOUT, "no snapshot left in Redis", || {
        snapshots(&mut conn) == 0
    });
}
