//! Named limits on real nodes: a check of several descriptors is all or
//! nothing across owners, a quota stays spent across a restart with Redis,
//! adjustments settle usage after the fact, and the admin API reports any
//! limit's bucket from any node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use llmtrace_integration::{wait_for, wait_until, Cluster, Node, RedisServer};
use serde_json::{json, Value};

/// Refill of `key_rpm` is one unit an hour: nothing refills while a test
/// runs, so every count is exact.
const LIMITS: &str = r#"
[limits.key_rpm]
rate = 1
per = "1h"
burst = 30

[limits.org_daily]
kind = "quota"
amount = 20
period = "1d"
"#;

fn descriptors(key: &str, org: &str) -> Value {
    json!({"descriptors": [
        {"limit": "key_rpm", "key": key},
        {"limit": "org_daily", "key": org, "cost": 1},
    ]})
}

fn remaining(node: &Node, limit: &str, key: &str) -> u64 {
    let report = node.admin_get_json(&format!("/admin/limits/{limit}/keys/{key}"));
    report["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("{report}"))
}

#[test]
fn descriptors_are_all_or_nothing_across_three_nodes() {
    let cluster = Cluster::builder()
        .nodes(3)
        .template(Node::builder().config_toml(LIMITS))
        .start();
    const THREADS: usize = 6;
    const CHECKS: usize = 10;
    let admitted = AtomicU64::new(0);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (cluster, admitted) = (&cluster, &admitted);
            s.spawn(move || {
                for i in 0..CHECKS {
                    let node = cluster.node((t + i) % 3);
                    let reply = node.check_json(&descriptors("acme/gpt-4o", "org-7"));
                    match reply.status {
                        200 => {
                            assert_eq!(reply.json["allowed"], true, "{reply}");
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {
                            assert_eq!(reply.json["allowed"], false, "{reply}");
                            assert!(reply.header("retry-after").is_some(), "{reply}");
                            let items = reply.json["descriptors"].as_array().unwrap();
                            assert_eq!(items[0]["limit"], "key_rpm");
                            assert_eq!(items[1]["limit"], "org_daily");
                            assert_eq!(items[1]["allowed"], false, "the quota refuses: {reply}");
                        }
                        _ => panic!("{reply}"),
                    }
                }
            });
        }
    });
    // The org's quota binds: exactly its amount was admitted, and the key's
    // bucket was charged for those checks only (the refused ones were
    // refunded), whichever node owns each bucket.
    assert_eq!(admitted.into_inner(), 20);
    for i in 0..3 {
        let node = cluster.node(i);
        assert_eq!(remaining(node, "org_daily", "org-7"), 0);
        assert_eq!(remaining(node, "key_rpm", "acme%2Fgpt-4o"), 10);
    }
    // Another org still admits, and the key's bucket pays for it.
    let reply = cluster
        .node(1)
        .check_json(&descriptors("acme/gpt-4o", "org-8"));
    assert_eq!(reply.status, 200, "{reply}");
    let policy = reply
        .header("ratelimit-policy")
        .unwrap_or_default()
        .to_string();
    assert!(
        policy.contains("\"key_rpm\";q=30") && policy.contains("\"org_daily\";q=20;w=86400"),
        "{policy}"
    );
    assert_eq!(remaining(cluster.node(0), "key_rpm", "acme%2Fgpt-4o"), 9);
}

#[test]
fn a_spent_daily_quota_stays_spent_across_a_restart() {
    let redis = RedisServer::start();
    let start = || {
        Node::builder()
            .redis(&redis)
            .config_toml(LIMITS)
            .flag("snapshot-mode", "write-through")
            .start()
    };
    let node = start();
    let check = |node: &Node| {
        node.check_json(
            &json!({"descriptors": [{"limit": "org_daily", "key": "org-1", "cost": 5}]}),
        )
    };
    for _ in 0..4 {
        assert_eq!(check(&node).status, 200);
    }
    let refused = check(&node);
    assert_eq!(refused.status, 429, "{refused}");
    let wait = refused.json["descriptors"][0]["retry_after_ms"]
        .as_u64()
        .unwrap();
    assert!(
        wait > 0 && wait <= 86_400_000,
        "waits for midnight UTC: {refused}"
    );
    drop(node);
    let node = start();
    assert_eq!(check(&node).status, 429, "the quota is still spent");
    assert_eq!(remaining(&node, "org_daily", "org-1"), 0);
}

#[test]
fn adjust_charges_and_refunds() {
    let node = Node::builder().config_toml(LIMITS).start();
    let adjust = |delta: i64| {
        node.public().post_json(
            "/v1/adjust",
            &json!({"limit": "org_daily", "key": "o", "delta": delta}),
        )
    };
    let r = adjust(25);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["remaining"], 0, "a charge never refuses: {r}");
    let d = node.check_json(&json!({"descriptors": [{"limit": "org_daily", "key": "o"}]}));
    assert_eq!(d.status, 429, "in debt: {d}");
    let r = adjust(-7);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["remaining"], 2, "20 - 25 + 7: {r}");
    let r = adjust(-100);
    assert_eq!(r.json["remaining"], 20, "never above the amount: {r}");
    adjust(0).assert_error(400, "delta");
    node.public()
        .post_json(
            "/v1/adjust",
            &json!({"limit": "nope", "key": "o", "delta": 1}),
        )
        .assert_error(400, "limit");
}

#[test]
fn bad_descriptors_name_the_field_and_charge_nothing() {
    let node = Node::builder().config_toml(LIMITS).start();
    node.check_json(
        &json!({"descriptors": [{"limit": "key_rpm", "key": "a"}, {"limit": "nope", "key": "a"}]}),
    )
    .assert_error(400, "descriptors[1].limit");
    node.check_json(&json!({"descriptors": [{"limit": "key_rpm", "key": "a", "cost": 31}]}))
        .assert_error(400, "descriptors[0].cost");
    // A cost above the quota's amount is refused before anything is kept.
    node.check_json(&json!({"descriptors": [
        {"limit": "key_rpm", "key": "a"},
        {"limit": "org_daily", "key": "a", "cost": 21},
    ]}))
    .assert_error(400, "descriptors[1].cost");
    assert_eq!(
        remaining(&node, "key_rpm", "a"),
        30,
        "nothing stays charged"
    );
    let limits = node.admin_get_json("/admin/limits");
    let names: Vec<&str> = limits["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["key_rpm", "org_daily", "requests", "tokens"]);
}

#[test]
fn a_spent_quota_stays_spent_through_kill_9_and_a_join() {
    let redis = RedisServer::start();
    let mut cluster = Cluster::builder()
        .nodes(3)
        .template(
            Node::builder()
                .config_toml(LIMITS)
                .flag("redis-url", redis.url())
                .flag("snapshot-mode", "write-through"),
        )
        .start();
    let spend = |node: &Node| {
        node.check_json(
            &json!({"descriptors": [{"limit": "org_daily", "key": "org-k", "cost": 4}]}),
        )
    };
    for i in 0..5 {
        assert_eq!(spend(cluster.node(i % 3)).status, 200);
    }
    assert_eq!(spend(cluster.node(0)).status, 429, "20 of 20 spent");
    let owner = cluster
        .node(0)
        .admin_get_json("/admin/limits/org_daily/keys/org-k")["owner"]
        .as_str()
        .unwrap()
        .to_string();
    let i = (0..3).find(|i| cluster.node(*i).node_id == owner).unwrap();
    cluster.kill(i);
    cluster.wait_converged(Duration::from_secs(20));
    let survivor = cluster.running()[0];
    let after_crash = wait_for(
        Duration::from_secs(20),
        "a decision after the crash",
        || {
            let r = spend(survivor);
            (r.status == 200 || r.status == 429).then_some(r)
        },
    );
    assert_eq!(
        after_crash.status, 429,
        "still spent after kill -9: {after_crash}"
    );
    let joined = cluster.add_node();
    cluster.wait_converged(Duration::from_secs(20));
    assert_eq!(
        spend(cluster.node(joined)).status,
        429,
        "still spent after a join"
    );
    assert_eq!(remaining(cluster.node(joined), "org_daily", "org-k"), 0);
}

#[test]
fn runtime_overrides_of_every_kind_apply_on_every_node() {
    let cluster = Cluster::builder()
        .nodes(3)
        .template(Node::builder().config_toml(LIMITS))
        .start();
    let admin = cluster.node(0).admin();
    let r = admin.put_json(
        "/admin/limits/org_daily/keys/vip/override",
        &json!({"amount": 2}),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["amount"], 2, "{r}");
    admin
        .put_json(
            "/admin/limits/org_daily/keys/vip/override",
            &json!({"rate": 2, "burst": 2}),
        )
        .assert_error(400, "burst");
    let r = admin.put_json(
        "/admin/limits/key_rpm/keys/vip/override",
        &json!({"rate": 1, "burst": 1}),
    );
    assert_eq!(r.status, 200, "{r}");
    for i in 0..3 {
        let node = cluster.node(i);
        wait_until(
            Duration::from_secs(10),
            "the overrides to reach every node",
            || {
                let q = node.admin_get_json("/admin/limits/org_daily/keys/vip");
                let b = node.admin_get_json("/admin/limits/key_rpm/keys/vip");
                q["amount"] == 2 && q["source"] == "runtime" && b["burst"] == 1
            },
        );
    }
    let one = |node: &Node, limit: &str| {
        node.check_json(&json!({"descriptors": [{"limit": limit, "key": "vip"}]}))
            .status
    };
    assert_eq!(one(cluster.node(1), "org_daily"), 200);
    assert_eq!(one(cluster.node(2), "org_daily"), 200);
    assert_eq!(
        one(cluster.node(0), "org_daily"),
        429,
        "the override's amount binds"
    );
    assert_eq!(one(cluster.node(2), "key_rpm"), 200);
    assert_eq!(
        one(cluster.node(1), "key_rpm"),
        429,
        "the override's burst binds"
    );
    let gone = admin.delete("/admin/limits/org_daily/keys/vip/override");
    assert_eq!(gone.json["deleted"], true, "{gone}");
}

#[test]
fn an_invalid_limit_block_stops_start_up_naming_the_key() {
    for (block, key) in [
        (
            "[limits.daily]\nkind = \"quota\"\namount = 5\nperiod = \"2w\"\n",
            "limits.daily.period",
        ),
        (
            "[limits.rpm]\nrate = 5\nper = \"1d\"\nburst = 1000000\n",
            "limits.rpm.burst",
        ),
        (
            "[limits.inflight]\nkind = \"concurrency\"\nmax = 0\n",
            "limits.inflight.max",
        ),
        ("[limits.Bad]\nrate = 1\n", "limits.Bad.name"),
    ] {
        let stderr = Node::builder().config_toml(block).start_refused();
        assert!(stderr.contains(key), "{block:?}: {stderr}");
    }
}
