//! Building blocks shared by the multi-node test files: a load over chosen
//! nodes, waiting for it to make progress, counters summed over a cluster,
//! owners and snapshot keys, a hot tenant over several nodes.

use std::time::Duration;

use crate::{wait_until, Cluster, Load, LoadReport, Node, RedisServer};

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

/// Several loads (one thread each) checking one `tenant` round-robin over the
/// given nodes: a hot tenant with more demand than one client thread makes.
pub fn hot_tenant(cluster: &Cluster, nodes: &[usize], tenant: &str, threads: usize) -> Vec<Load> {
    (0..threads)
        .map(|k| {
            // Each thread starts on another node, so that the nodes see the same demand.
            let order: Vec<usize> = (0..nodes.len())
                .map(|i| nodes[(i + k) % nodes.len()])
                .collect();
            load_on(cluster, &order, &[tenant.to_string()])
        })
        .collect()
}

/// What the loads of one tenant admitted in all: the checks that got a 200,
/// and the time from the first check sent to the last answer.
pub fn admitted(reports: &[LoadReport], tenant: &str) -> (u64, Duration) {
    let tallies: Vec<_> = reports
        .iter()
        .filter_map(|r| r.tenants.get(tenant))
        .collect();
    let allowed = tallies.iter().map(|t| t.allowed).sum();
    let first = tallies.iter().map(|t| t.first_sent).min();
    let last = tallies.iter().map(|t| t.last_answered).max();
    let elapsed = match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    };
    (allowed, elapsed)
}
