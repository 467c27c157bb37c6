//! `cluster`: a single-node reference, then 3 nodes on this machine (node-0, then
//! node-1 and node-2 seeded with it, measured once they agree on one ring and the
//! handoff window passed), both loaded by 3 parallel `wrk -t1` splitting
//! BENCH_CONNECTIONS: all on the one node, then one per node. Prints checks/s, client
//! latencies, the ratio cluster/single, server CPU, and the forwarding figures of the
//! nodes' metrics ([`crate::cluster_report`]). Then the same 3 nodes again with
//! mutual TLS on the cluster port (certificates made at run time), to compare
//! the forwarding path with and without TLS in one run.

use crate::cleanup::Guarded;
use crate::cluster_report::{report, Snapshot};
use crate::procfs::load_note;
use crate::setup::Bench;
use crate::summary::{self, node_health, warnings};
use crate::wrk::{measure, Measured, Wrk};
use llmtrace_integration::certs::ClusterCerts;
use llmtrace_integration::{Cluster, NodeBuilder};
use std::time::{Duration, Instant};

/// wrk processes (and nodes) of the cluster run.
pub const NODES: usize = 3;

/// The connections of wrk `i` of `n`: `total` split as evenly as possible (64 over 3:
/// 22 + 21 + 21).
fn connections(total: u32, n: usize, i: usize) -> u32 {
    let n = n as u32;
    total / n + u32::from((i as u32) < total % n)
}

/// Starts `size` nodes from `template` and waits (BENCH_CLUSTER_WAIT) until they agree
/// on one ring of exactly themselves.
pub fn start_cluster(bench: &Bench, size: usize, template: NodeBuilder) -> Guarded<Cluster> {
    let started = Instant::now();
    let cluster = Cluster::builder().nodes(size).template(template).spawn();
    let pids = cluster.running().iter().map(|n| n.pid()).collect();
    let cluster = Guarded::new(cluster, pids);
    let fingerprint = cluster.wait_converged(Duration::from_secs(bench.s.cluster_wait_s));
    println!(
        "  CLUSTER_READY fingerprint={fingerprint} seconds={:.2}",
        started.elapsed().as_secs_f64()
    );
    cluster
}

/// One `check.lua` wrk per URL, one thread each, the connections split over them,
/// random tenants out of `tenant_space`.
pub fn loads(bench: &Bench, urls: &[&str], tenant_space: u64) -> Vec<Wrk> {
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let c = connections(bench.s.connections, urls.len(), i);
            bench.check_load(url, 1, c, tenant_space, 0)
        })
        .collect()
}

/// For 10 s after a ring change a node asks a key's previous owner on the key's
/// first check (ownership handoff): one extra round trip per moved key. A measured
/// run starts after that window unless BENCH_CLUSTER_SETTLE is 0.
pub fn settle(bench: &Bench) {
    let s = &bench.s;
    if s.cluster_settle_s > 0 {
        eprintln!("letting the handoff window pass: {}s", s.cluster_settle_s);
        std::thread::sleep(Duration::from_secs(s.cluster_settle_s));
    }
}

/// The public URLs and pids of the running nodes.
pub fn targets(cluster: &Cluster) -> (Vec<String>, Vec<u32>) {
    let running = cluster.running();
    let urls = running.iter().map(|n| n.public_url().to_string()).collect();
    (urls, running.iter().map(|n| n.pid()).collect())
}

/// Health and warnings of every node, then the cluster is stopped.
pub fn finish(bench: &Bench, mut cluster: Guarded<Cluster>) {
    for i in 0..cluster.len() {
        let name = cluster.node(i).node_id.clone();
        node_health(bench, &name, cluster.node_mut(i));
        warnings(&name, cluster.node(i));
    }
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    if s.connections < NODES as u32 {
        eprintln!("the cluster benchmark needs BENCH_CONNECTIONS >= {NODES}");
        std::process::exit(1);
    }
    let split: Vec<String> = (0..NODES)
        .map(|i| connections(s.connections, NODES, i).to_string())
        .collect();
    println!();
    println!(
        "== cluster: POST /v1/check, {NODES} x wrk -t1 -c{} -d{} in parallel, {} random \
         tenants, keep-alive; 1 node, then {NODES} nodes ==",
        split.join("+"),
        s.duration,
        s.tenant_space
    );
    load_note();

    let template = bench.node().rate(s.rps, s.burst);
    println!(
        "-- reference, all {NODES} wrk against one node: llmtrace-node {} --node-id node-0",
        template.args().join(" ")
    );
    let reference = start_cluster(bench, 1, template.clone());
    let url = reference.node(0).public_url().to_string();
    let pid = reference.node(0).pid();
    let single = measure(
        bench,
        "ref",
        &loads(bench, &[url.as_str(); NODES], s.tenant_space),
        &[pid],
        || {},
    );
    single.print();
    finish(bench, reference);

    let template = s
        .cluster_args
        .iter()
        .fold(template, |b, a| b.arg(a.as_str()));
    println!(
        "-- {NODES} nodes: llmtrace-node {} --node-id node-<i> (node-1, node-2: --seeds <node-0's cluster address>)",
        template.args().join(" ")
    );
    let (measured, before, after) = measure_cluster(bench, "cluster", template.clone());
    let certs = ClusterCerts::new();
    let tls_template = certs
        .flags()
        .iter()
        .fold(template, |b, (flag, value)| b.flag(flag, value));
    println!("-- {NODES} nodes with mutual TLS on the cluster port: the same, plus --cluster-tls-cert, --cluster-tls-key, --cluster-tls-ca");
    let (tls, tls_before, tls_after) = measure_cluster(bench, "cluster-tls", tls_template);

    println!();
    println!("cluster results:");
    let plain = results(&single, &measured);
    report(&before, &after);
    println!();
    println!("cluster results with mutual TLS between nodes:");
    let with_tls = results(&single, &tls);
    report(&tls_before, &tls_after);
    println!();
    ratio("TLS/plain", with_tls.rps, plain.rps, 0.9);
    println!(
        "  CPU per check TLS/plain {:11.3}            ({:.1} vs {:.1} us CPU per check, the {NODES} nodes summed)",
        with_tls.us_per_check / plain.us_per_check.max(f64::MIN_POSITIVE),
        with_tls.us_per_check,
        plain.us_per_check
    );
}

/// Starts `NODES` nodes from `template`, lets the handoff window pass and
/// measures them, one wrk per node; answers the measurement and the nodes'
/// metrics right before and after it.
fn measure_cluster(
    bench: &Bench,
    name: &str,
    template: NodeBuilder,
) -> (Measured, Snapshot, Snapshot) {
    let cluster = start_cluster(bench, NODES, template);
    settle(bench);
    let measured = measure_on(bench, name, &cluster, bench.s.tenant_space);
    finish(bench, cluster);
    measured
}

/// Measures `cluster` loaded by one wrk per node with random tenants out of
/// `tenant_space`; answers the measurement and the nodes' metrics right before
/// and right after it (not the warm-up).
pub fn measure_on(
    bench: &Bench,
    name: &str,
    cluster: &Cluster,
    tenant_space: u64,
) -> (Measured, Snapshot, Snapshot) {
    let (urls, pids) = targets(cluster);
    let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let mut before = None;
    let load = loads(bench, &url_refs, tenant_space);
    let measured = measure(bench, name, &load, &pids, || {
        before = Some(Snapshot::take(cluster))
    });
    let after = Snapshot::take(cluster);
    measured.print();
    (
        measured,
        before.expect("metrics read before the run"),
        after,
    )
}

/// `ratio <what>` of two throughputs, against its target.
pub fn ratio(what: &str, rps: f64, reference: f64, target: f64) {
    let r = if reference > 0.0 {
        rps / reference
    } else {
        0.0
    };
    println!(
        "  ratio {what:<16} {r:12.3}            ({rps:.1} / {reference:.1} checks/s; target >= {target:.2}: {})",
        if r >= target { "met" } else { "NOT met" }
    );
}

fn results(single: &Measured, cluster: &Measured) -> summary::Totals {
    println!("  1 node, {NODES} wrk:");
    let labels = vec!["wrk -> single".to_string(); NODES];
    let one = summary::several("ref", &labels, single);
    println!("  {NODES} nodes, 1 wrk each:");
    let labels: Vec<String> = (0..NODES).map(|i| format!("wrk -> node-{i}")).collect();
    let all = summary::several("cluster", &labels, cluster);
    ratio("cluster/single", all.rps, one.rps, 0.6);
    if all.us_per_check > 0.0 {
        println!(
            "  server CPU single/cluster {:9.3}            ({:.1} vs {:.1} us CPU per check, the {NODES} nodes summed)",
            one.us_per_check / all.us_per_check,
            one.us_per_check,
            all.us_per_check
        );
    }
    println!(
        "  client p99 worst       {:9.2} ms          (single {:.2} ms; mixes local and forwarded checks)",
        all.p99_us / 1000.0,
        one.p99_us / 1000.0
    );
    all
}

#[cfg(test)]
mod tests {
    use super::connections;

    #[test]
    fn connections_are_split_evenly() {
        let split: Vec<u32> = (0..3).map(|i| connections(64, 3, i)).collect();
        assert_eq!(split, vec![22, 21, 21]);
        assert_eq!((0..3).map(|i| connections(3, 3, i)).sum::<u32>(), 3);
    }
}
