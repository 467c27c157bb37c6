//! Concurrency limits on real nodes: at most `max` leases per key across
//! the cluster, release is idempotent, leases expire, they move with a
//! handoff and survive a kill -9 with Redis, and a refused check of several
//! descriptors takes no lease.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use llmtrace_integration::scenario::sum_metric;
use llmtrace_integration::{wait_for, wait_until, Cluster, Node, RedisServer, Reply};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);

fn limits(max: u32, ttl: &str) -> String {
    format!(
        r#"
[limits.inflight]
kind = "concurrency"
max = {max}
lease_ttl = "{ttl}"

[limits.org_daily]
kind = "quota"
amount = 1
period = "1d"
"#
    )
}

fn acquire(node: &Node, key: &str) -> Reply {
    node.check_json(&json!({"descriptors": [{"limit": "inflight", "key": key}]}))
}

fn lease_of(reply: &Reply) -> String {
    reply.json["descriptors"][0]["lease_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no lease_id: {reply}"))
        .to_string()
}

fn release(node: &Node, lease: &str) -> Value {
    let r = node
        .public()
        .post_json("/v1/release", &json!({"lease_id": lease}));
    assert_eq!(r.status, 200, "{r}");
    r.json
}

fn report(node: &Node, key: &str) -> Value {
    node.admin_get_json(&format!("/admin/limits/inflight/keys/{key}"))
}

#[test]
fn leases_are_exact_across_three_nodes() {
    let cluster = Cluster::builder()
        .nodes(3)
        .template(Node::builder().config_toml(&limits(4, "1h")))
        .start();
    let leases = Mutex::new(Vec::new());
    let refused = Mutex::new(0);
    thread::scope(|s| {
        for t in 0..9 {
            let (cluster, leases, refused) = (&cluster, &leases, &refused);
            s.spawn(move || {
                let reply = acquire(cluster.node(t % 3), "acme");
                match reply.status {
                    200 => leases.lock().unwrap().push(lease_of(&reply)),
                    429 => {
                        let wait = reply.json["descriptors"][0]["retry_after_ms"].as_u64();
                        assert!(wait.is_some_and(|w| w > 0), "{reply}");
                        *refused.lock().unwrap() += 1;
                    }
                    _ => panic!("{reply}"),
                }
            });
        }
    });
    let leases = leases.into_inner().unwrap();
    assert_eq!(leases.len(), 4, "exactly max leases: {leases:?}");
    assert_eq!(refused.into_inner().unwrap(), 5);
    let report = report(cluster.node(1), "acme");
    assert_eq!(report["kind"], "concurrency", "{report}");
    assert_eq!(report["remaining"], 0, "{report}");
    wait_until(TIMEOUT, "the leases gauge to show 4 held", || {
        sum_metric(&cluster, "llmtrace_leases_held{limit=\"inflight\"}") == 4.0
    });

    // A release is idempotent, from any node.
    let first = release(cluster.node(2), &leases[0]);
    assert_eq!(first["released"], true, "{first}");
    assert_eq!(first["remaining"], 1, "{first}");
    let again = release(cluster.node(0), &leases[0]);
    assert_eq!(again["released"], false, "{again}");
    assert_eq!(acquire(cluster.node(1), "acme").status, 200);
    assert_eq!(acquire(cluster.node(0), "acme").status, 429);

    // All or nothing: a refused quota leaves no lease taken.
    let both = |node: &Node| {
        node.check_json(&json!({"descriptors": [
            {"limit": "inflight", "key": "beta"},
            {"limit": "org_daily", "key": "org-1"},
        ]}))
    };
    let ok = both(cluster.node(0));
    assert_eq!(ok.status, 200, "{ok}");
    assert!(ok.json["descriptors"][0]["lease_id"].is_string(), "{ok}");
    assert!(ok.json["descriptors"][1].get("lease_id").is_none(), "{ok}");
    let no = both(cluster.node(1));
    assert_eq!(no.status, 429, "{no}");
    assert!(no.json["descriptors"][0].get("lease_id").is_none(), "{no}");
    assert_eq!(
        report_of(&cluster, "beta")["remaining"],
        3,
        "one lease held, not two"
    );

    // Bad lease ids name the field.
    for bad in ["", "inflight:zz:acme", "org_daily:00000000000000ff:acme"] {
        cluster
            .node(0)
            .public()
            .post_json("/v1/release", &json!({"lease_id": bad}))
            .assert_error(400, "lease_id");
    }
}

fn report_of(cluster: &Cluster, key: &str) -> Value {
    report(cluster.node(2), key)
}

#[test]
fn an_unreleased_lease_returns_at_its_expiry() {
    let node = Node::builder().config_toml(&limits(1, "1s")).start();
    let taken = Instant::now();
    assert_eq!(acquire(&node, "k").status, 200);
    let refused = acquire(&node, "k");
    assert_eq!(refused.status, 429, "{refused}");
    let wait = refused.json["descriptors"][0]["retry_after_ms"]
        .as_u64()
        .unwrap();
    assert!(wait <= 1_000, "{refused}");
    wait_until(TIMEOUT, "the lease to expire", || {
        acquire(&node, "k").status == 200
    });
    assert!(
        taken.elapsed() >= Duration::from_millis(900),
        "freed only at its expiry: {:?}",
        taken.elapsed()
    );
}

#[test]
fn leases_move_with_a_handoff_and_survive_kill_9() {
    let redis = RedisServer::start();
    let mut cluster = Cluster::builder()
        .nodes(3)
        .template(
            Node::builder()
                .config_toml(&limits(3, "1h"))
                .flag("redis-url", redis.url())
                .flag("snapshot-mode", "write-through"),
        )
        .start();
    let leases: Vec<String> = (0..3)
        .map(|i| {
            let r = acquire(cluster.node(i), "moving");
            assert_eq!(r.status, 200, "{r}");
            lease_of(&r)
        })
        .collect();
    let owner_index = |cluster: &Cluster| {
        let node = cluster.running()[0];
        let owner = report(node, "moving")["owner"]
            .as_str()
            .unwrap()
            .to_string();
        (0..cluster.len())
            .find(|i| cluster.node(*i).node_id == owner)
            .unwrap()
    };

    // A graceful leave hands the leases to the next owner.
    let first = owner_index(&cluster);
    cluster.terminate(first);
    cluster.wait_converged(TIMEOUT);
    let other = cluster.running()[0];
    assert_eq!(
        acquire(other, "moving").status,
        429,
        "the three leases moved"
    );
    assert_eq!(release(other, &leases[0])["released"], true);
    let fresh = acquire(other, "moving");
    assert_eq!(fresh.status, 200, "{fresh}");

    // A crash of the new owner: the next restores them from Redis.
    let second = owner_index(&cluster);
    cluster.kill(second);
    cluster.restart_node(first);
    cluster.wait_converged(TIMEOUT);
    let node = cluster.running()[0];
    let refused = wait_for(TIMEOUT, "a decision after the crash", || {
        let r = acquire(node, "moving");
        (r.status == 429 || r.status == 200).then_some(r)
    });
    assert_eq!(refused.status, 429, "three leases still held: {refused}");
    assert_eq!(release(node, &leases[1])["released"], true);
    assert_eq!(release(node, &lease_of(&fresh))["released"], true);
    assert_eq!(report(node, "moving")["remaining"], 2);
}
