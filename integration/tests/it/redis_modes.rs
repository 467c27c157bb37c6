//! Redis as operators run it: snapshots restore after a node is killed with -9 and
//! restarted, on a server reached over TLS with a client certificate and an ACL user
//! (whose password never shows in the node's output), on a 3-master Redis Cluster
//! (keys spread over masters; runtime overrides persist there too), and on a master
//! found through Sentinel that is killed mid-load (checks keep being answered,
//! snapshots resume on the promoted replica, a drained tenant stays drained across a
//! node restart after the failover).

use std::time::Duration;

use llmtrace_integration::redis_deploy::{RedisCluster, SentinelRedis, TlsRedis, SENTINEL_MASTER};
use llmtrace_integration::{wait_until, Load, Node, NodeBuilder};
use serde_json::json;

use crate::redis_snapshots::{assert_still_drained, drain, key, BURST, KEY_TIMEOUT};

const PASSWORD: &str = "s3cret-Redis-pw";
/// Sentinel notices the dead master after 1 s, then elects and promotes.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

fn builder(url: &str) -> NodeBuilder {
    Node::builder().rate(1, BURST).flag("redis-url", url)
}

#[test]
fn tls_with_client_certificate_and_acl_user_restores_after_kill_9() {
    let redis = TlsRedis::start();
    redis.add_user("app", PASSWORD);
    let url = format!("rediss://app:{PASSWORD}@127.0.0.1:{}", redis.tls_port);
    let file = |n: &str| redis.files.path(n).to_string_lossy().into_owned();
    let tls = || {
        builder(&url)
            .flag("redis-ca-file", file("ca.pem"))
            .flag("redis-client-cert", file("client.pem"))
            .flag("redis-client-key", file("client.key"))
    };
    let mut node = tls().start();
    drain(&node, "acme", BURST);
    redis.server.wait_for_key(&key("acme"), KEY_TIMEOUT);
    node.kill();
    for out in [node.stdout(), node.stderr()] {
        assert!(!out.contains(PASSWORD), "the password was logged: {out}");
    }

    let node = tls().start();
    assert_still_drained(&node, "acme");

    // Without the CA the server's certificate is not trusted: nothing is written.
    let untrusted = builder(&url)
        .flag("redis-client-cert", file("client.pem"))
        .flag("redis-client-key", file("client.key"))
        .start();
    drain(&untrusted, "other", BURST);
    untrusted.wait_metric(
        "llmtrace_snapshot_errors_total",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert!(!redis.server.conn().exists(&key("other")).expect("EXISTS"));
    for out in [untrusted.stdout(), untrusted.stderr()] {
        assert!(!out.contains(PASSWORD), "the password was logged: {out}");
    }
}

#[test]
fn cluster_spreads_snapshots_over_masters_and_restores_after_kill_9() {
    let redis = RedisCluster::start(3);
    let cluster = |url: &str| builder(url).flag("redis-mode", "cluster");
    let mut node = cluster(&redis.urls()).start();
    let tenants: Vec<String> = (0..12).map(|i| format!("tenant-{i}")).collect();
    for t in &tenants {
        drain(&node, t, BURST);
    }
    let mut masters = std::collections::BTreeSet::new();
    for t in &tenants {
        masters.insert(redis.wait_for_key(&key(t), KEY_TIMEOUT));
    }
    assert!(masters.len() >= 2, "12 keys all on one master: {masters:?}");
    let r = node.admin().put_json(
        "/admin/tenants/ovr/limits",
        &json!({"requests_per_second": 1, "burst_size": 3}),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["persisted"], true, "{r}");
    node.kill();

    // One seed is enough to find the whole cluster.
    let node = cluster(&redis.masters[2].url()).start();
    for t in &tenants {
        assert_still_drained(&node, t);
    }
    let r = node.admin().get("/admin/limits");
    assert_eq!(r.json["overrides"][0]["tenant_id"], "ovr", "{r}");
    assert_eq!(r.json["overrides"][0]["burst_size"], 3, "{r}");
}

#[test]
fn sentinel_failover_mid_load_keeps_answering_and_snapshots_move_to_the_new_master() {
    let mut redis = SentinelRedis::start();
    let url = redis.url();
    let sentinel = || {
        builder(&url)
            .flag("redis-mode", "sentinel")
            .flag("redis-sentinel-master", SENTINEL_MASTER)
    };
    let mut node = sentinel().start();
    drain(&node, "before", BURST);
    redis.master.wait_for_key(&key("before"), KEY_TIMEOUT);

    let tenants = (0..20).map(|i| format!("load-{i}")).collect();
    let load = Load::start(vec![node.public().clone()], tenants);
    wait_until(Duration::from_secs(10), "load under way", || {
        load.sent() >= 50
    });
    let old = redis.master.port();
    redis.master.stop();
    let promoted = redis.replica.port();
    wait_until(
        FAILOVER_TIMEOUT,
        "the sentinel to promote the replica",
        || redis.master_port() == Some(promoted),
    );
    let sent = load.sent();
    wait_until(Duration::from_secs(10), "checks after the failover", || {
        load.sent() >= sent + 50
    });
    let report = load.stop();
    report.assert_no_failures();
    assert_ne!(old, promoted);

    // Snapshots resume on the new master: a tenant drained after the failover, and the
    // one drained before it (rewritten there once the node saw the master change).
    drain(&node, "after", BURST);
    redis.replica.wait_for_key(&key("after"), KEY_TIMEOUT);
    redis.replica.wait_for_key(&key("before"), KEY_TIMEOUT);

    node.kill();
    let node = sentinel().start();
    assert_still_drained(&node, "before");
    assert_still_drained(&node, "after");
}
