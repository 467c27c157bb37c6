//! Building blocks shared by the multi-node test files: a load over chosen
//! nodes, waiting for it to make progress, counters summed over a cluster,
//! owners and snapshot keys.

use std::time::Duration;

use crate::{wait_until, Cluster, Load, Node, RedisServer};

/// The Redis key of `tenant`'s `requests` bucket.
pub fn snapshot_key(tenant: &str) -> String {
    format!("llmtrace:bucket:{tenant}:requests")
}

/// `size` nodes snapshotting to `redis`, converged.
pub fn redis_cluster(redis: &RedisServer, size: usize, rps: u64, burst: u64) -> Cluster {
    Cluster::builder()
        .nodes(size)
        .rate(rps, burst)
        .flag("redis-url", redis.url())
        .start()
}

/// The owner of `tenant` by `node`'s ring.
pub fn owner_of(node: &Node, tenant: &str) -> String {
    let view = node.admin_get_json(&format!("/admin/tenants/{tenant}"));
    view["owner"]
        .as_str()
        .unwrap_or_else(|| panic!("no owner for {tenant:?}: {view}"))
        .to_string()
}

/// Lets `load` send `more` further checks (bounded by 30 s).
pub fn let_load_run(load: &Load, more: u64, what: &str) {
    let target = load.sent() + more;
    let what = format!("the load to send {more} more checks ({what})");
    wait_until(Duration::from_secs(30), &what, || {
        assert!(load.is_running(), "the load stopped early ({what})");
        load.sent() >= target
    });
}

/// A load sending checks for `tenants` round-robin to the given nodes.
pub fn load_on(cluster: &Cluster, nodes: &[usize], tenants: &[String]) -> Load {
    let targets = nodes
        .iter()
        .map(|i| cluster.node(*i).public().clone())
        .collect();
    Load::start(targets, tenants.to_vec())
}

/// A counter summed over the running nodes.
pub fn sum_metric(cluster: &Cluster, selector: &str) -> f64 {
    cluster
        .running()
        .iter()
        .map(|n| n.metric(selector).unwrap_or(0.0))
        .sum()
}

/// The first `n` tenants `{prefix}-{k}` that `owner` owns by `node`'s ring.
pub fn tenants_owned_by(node: &Node, owner: &str, prefix: &str, n: usize) -> Vec<String> {
    let found: Vec<String> = (0..200)
        .map(|k| format!("{prefix}-{k}"))
        .filter(|t| owner_of(node, t) == owner)
        .take(n)
        .collect();
    assert_eq!(
        found.len(),
        n,
        "200 tenants {prefix}-*: too few owned by {owner}"
    );
    found
}
