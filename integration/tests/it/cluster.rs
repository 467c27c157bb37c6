//! A stable cluster of real nodes: limits stay exact whichever node a check reaches,
//! every node names the same owner for a tenant, checks for tenants owned elsewhere are
//! forwarded, and the node-to-node endpoint is guarded by the cluster secret.
//!
//! rps is 1 everywhere, so refill during a test is small and bounded by the measured
//! time: a tenant may be allowed at most `burst + floor(rps * elapsed)` checks.

use llmtrace_integration::{holds_for, wait_until, Cluster, Node, Reply, Rng};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Most checks a bucket of `burst` at `rps` can allow within `elapsed`.
fn bound(burst: u64, rps: u64, elapsed: Duration) -> u64 {
    burst + (rps as f64 * elapsed.as_secs_f64()).floor() as u64
}

/// True for an allowed check; panics on anything but a normal, non-degraded 200 / 429.
fn decided(reply: &Reply, what: &str) -> bool {
    assert!(
        reply.status == 200 || reply.status == 429,
        "{what}: unexpected reply {reply}"
    );
    assert_ne!(
        reply.json["degraded"], true,
        "{what}: degraded in a stable cluster: {reply}"
    );
    assert_eq!(
        reply.allowed(),
        Some(reply.status == 200),
        "{what}: {reply}"
    );
    reply.status == 200
}

fn metric(node: &Node, selector: &str) -> u64 {
    node.metric(selector).unwrap_or(0.0) as u64
}

const ALLOWED: &str = "llmtrace_checks_total{limit=\"requests\",decision=\"allowed\"}";

/// Waits until the owners' allowed counters, summed over the cluster, reach `expected`
/// (each check is counted once, on the node that decided it).
fn wait_allowed_sum(cluster: &Cluster, expected: u64) {
    let mut last = 0;
    let what = format!("the allowed counters of all nodes to sum to {expected}");
    wait_until(Duration::from_secs(10), &what, || {
        last = cluster.running().iter().map(|n| metric(n, ALLOWED)).sum();
        last == expected
    });
}

#[test]
fn one_tenant_is_exact_across_nodes() {
    const RPS: u64 = 1;
    const BURST: u64 = 300;
    const CHECKS: u64 = 1200;
    // Forwarding alone, exact to the unit: no token leases (a lease's
    // units not yet spent when the checks stop are admitted by nobody;
    // their bounds are tested in token_leases.rs).
    let cluster = Cluster::builder()
        .nodes(3)
        .rate(RPS, BURST)
        .flag("token-lease-threshold", 0)
        .start();

    // Sequential, round-robin over the three nodes.
    let mut allowed = 0;
    let start = Instant::now();
    for i in 0..CHECKS {
        let reply = cluster.node(i as usize % 3).check("rr-hot", 1);
        allowed += u64::from(decided(&reply, &format!("check {i}")));
    }
    let elapsed = start.elapsed();
    let most = bound(BURST, RPS, elapsed);
    eprintln!("round robin: {allowed} of {CHECKS} allowed in {elapsed:?} (bound {BURST}..={most})");
    assert!(
        (BURST..=most).contains(&allowed),
        "round robin: {allowed} allowed in {elapsed:?}; expected {BURST}..={most}"
    );
    wait_allowed_sum(&cluster, allowed);

    // Six threads at once, each round-robin from its own starting node.
    const THREADS: u64 = 6;
    let start = Instant::now();
    let concurrent: u64 = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let cluster = &cluster;
                s.spawn(move || {
                    (0..CHECKS / THREADS)
                        .map(|j| {
                            let node = cluster.node(((t + j) % 3) as usize);
                            u64::from(decided(&node.check("rr-concurrent", 1), "concurrent"))
                        })
                        .sum::<u64>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let elapsed = start.elapsed();
    let most = bound(BURST, RPS, elapsed);
    eprintln!("{THREADS} threads: {concurrent} of {CHECKS} allowed in {elapsed:?} (bound {BURST}..={most})");
    assert!(
        (BURST..=most).contains(&concurrent),
        "{THREADS} threads: {concurrent} allowed in {elapsed:?}; expected {BURST}..={most}"
    );
    wait_allowed_sum(&cluster, allowed + concurrent);
}

#[test]
fn many_tenants_are_exact_across_nodes() {
    const RPS: u64 = 1;
    const BURST: u64 = 20;
    const TENANTS: usize = 50;
    const PER_TENANT: usize = 40;
    const THREADS: usize = 4;
    let cluster = Cluster::start(3, RPS, BURST);
    let tenant = |k: usize| format!("many-{}", k % TENANTS);

    let counts: Mutex<HashMap<String, (u64, u64)>> = Mutex::new(HashMap::new());
    let start = Instant::now();
    thread::scope(|s| {
        for t in 0..THREADS {
            let (cluster, counts) = (&cluster, &counts);
            s.spawn(move || {
                // Item k: tenant k % 50 on node (k / 50) % 3, so every tenant meets
                // every node; thread t takes the items k ≡ t (mod 4).
                for k in (t..TENANTS * PER_TENANT).step_by(THREADS) {
                    let node = cluster.node((k / TENANTS) % 3);
                    let ok = decided(&node.check(&tenant(k), 1), &tenant(k));
                    let mut c = counts.lock().unwrap();
                    let e = c.entry(tenant(k)).or_default();
                    if ok {
                        e.0 += 1
                    } else {
                        e.1 += 1
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let most = bound(BURST, RPS, elapsed);
    let counts = counts.into_inner().unwrap();
    assert_eq!(counts.len(), TENANTS);
    let allowed: BTreeMap<&String, u64> = counts.iter().map(|(t, c)| (t, c.0)).collect();
    eprintln!("{TENANTS} tenants in {elapsed:?} (bound {BURST}..={most}): allowed {allowed:?}");
    for (t, (ok, refused)) in &counts {
        assert_eq!(ok + refused, PER_TENANT as u64, "{t}");
        assert!(
            (BURST..=most).contains(ok),
            "tenant {t}: {ok} allowed in {elapsed:?}; expected {BURST}..={most}"
        );
    }
    wait_allowed_sum(&cluster, allowed.values().sum());
    let forwarded: u64 = (0..3)
        .map(|i| metric(cluster.node(i), "llmtrace_forwarded_checks_total"))
        .sum();
    assert!(forwarded > 0, "no check was forwarded");
}

/// `GET /admin/tenants/{t}` on `node`: (owner, fingerprint).
fn owner_of(node: &Node, tenant: &str) -> (String, String) {
    let v = node.admin_get_json(&format!("/admin/tenants/{tenant}"));
    let owner = v["owner"]
        .as_str()
        .unwrap_or_else(|| panic!("owner in {v}"));
    assert!(
        v["limits"].as_array().is_some_and(|l| l
            .iter()
            .any(|l| l["limit"] == "requests" && l["owner"] == owner)),
        "limits must list the requests owner: {v}"
    );
    let fp = v["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("fingerprint in {v}"));
    (owner.to_string(), fp.to_string())
}

#[test]
fn nodes_agree_on_owners_and_forward_the_rest() {
    let cluster = Cluster::start(3, 1, 100);
    let fingerprint = cluster.wait_converged(Duration::from_secs(5));

    let mut owners: BTreeMap<String, u64> = BTreeMap::new();
    let mut owner_by_tenant = HashMap::new();
    for k in 0..1000 {
        let tenant = format!("agree-{k}");
        let views: Vec<_> = (0..3).map(|i| owner_of(cluster.node(i), &tenant)).collect();
        for (i, (owner, fp)) in views.iter().enumerate() {
            assert_eq!(fp, &fingerprint, "node-{i} fingerprint for {tenant}");
            assert_eq!(
                owner, &views[0].0,
                "node-{i} disagrees on the owner of {tenant}"
            );
        }
        *owners.entry(views[0].0.clone()).or_default() += 1;
        owner_by_tenant.insert(tenant, views[0].0.clone());
    }
    eprintln!("owners of 1000 tenants: {owners:?}");
    assert_eq!(
        owners.keys().cloned().collect::<Vec<_>>(),
        cluster.running_ids(),
        "owners must cover every node"
    );
    for (node, n) in &owners {
        assert!(
            (150..=550).contains(n),
            "{node} owns {n} of 1000 tenants: {owners:?}"
        );
    }

    // Checks sent to node 0 for 300 random new tenants: those node 0 does not own are
    // forwarded, exactly once each, and the owners count them as received.
    let node0 = cluster.node(0);
    let before = metric(node0, "llmtrace_forwarded_checks_total");
    let received_before: u64 = (1..3)
        .map(|i| metric(cluster.node(i), "llmtrace_rpc_checks_total"))
        .sum();
    let mut rng = Rng::new(0x5eed_0ff0);
    let mut elsewhere = 0;
    for k in 0..300 {
        let tenant = format!("fwd-{k}-{:x}", rng.next_u64());
        let (owner, _) = owner_of(node0, &tenant);
        elsewhere += u64::from(owner != node0.node_id);
        let reply = node0.check(&tenant, 1);
        assert!(
            decided(&reply, &tenant),
            "a new tenant's first check: {reply}"
        );
    }
    let forwarded = metric(node0, "llmtrace_forwarded_checks_total") - before;
    let share = forwarded as f64 / 300.0;
    eprintln!(
        "forwarded by node-0: {forwarded} of 300 ({:.1}%); owned elsewhere by the ring: {elsewhere}",
        share * 100.0
    );
    assert!((0.4..=0.9).contains(&share), "forwarded share {share:.3}");
    assert_eq!(
        forwarded, elsewhere,
        "every check for a tenant owned elsewhere is forwarded once"
    );
    let received: u64 = (1..3)
        .map(|i| metric(cluster.node(i), "llmtrace_rpc_checks_total"))
        .sum::<u64>()
        - received_before;
    assert_eq!(
        received, forwarded,
        "the owners received what node-0 forwarded"
    );
    assert_eq!(metric(node0, "llmtrace_forward_errors_total"), 0);
    assert_eq!(metric(node0, "llmtrace_forward_retries_total"), 0);
}

/// The ring gauges of `/metrics` describe the ring `/admin/cluster` shows.
#[test]
fn ring_metrics_match_the_ring() {
    let cluster = Cluster::start(3, 1, 100);
    let mut wrong = Vec::new();
    for node in cluster.running() {
        let fp = node.cluster_view()["fingerprint"]
            .as_str()
            .unwrap()
            .to_string();
        let info = format!("llmtrace_ring_info{{fingerprint=\"{fp}\"}}");
        // (series, least, most)
        for (selector, least, most) in [
            ("llmtrace_ring_members", 3.0, 3.0),
            ("llmtrace_live_members", 3.0, 3.0),
            ("llmtrace_ring_changes_total", 1.0, f64::MAX),
            (info.as_str(), 1.0, 1.0),
        ] {
            let value = node.metric(selector);
            if !value.is_some_and(|v| (least..=most).contains(&v)) {
                wrong.push(format!("{}: {selector} = {value:?}", node.node_id));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "metrics disagree with a 3-member ring: {wrong:#?}"
    );
}

const SECRET: &str = "s3cret-123";
const RPC: &str = "/cluster/v1/checks";

fn rpc(node: &Node, secret: Option<&str>, body: &[u8]) -> Reply {
    let mut headers = vec![("content-type", "application/octet-stream")];
    if let Some(s) = secret {
        headers.push(("x-llmtrace-cluster-secret", s));
    }
    node.cluster().post_with_headers(RPC, &headers, body)
}

#[test]
fn cluster_secret_guards_the_node_to_node_endpoint() {
    let cluster = Cluster::builder()
        .nodes(2)
        .rate(1, 100)
        .flag("cluster-secret", SECRET)
        .start();
    let (node0, node1) = (cluster.node(0), cluster.node(1));

    // The secret cluster forwards normally.
    for k in 0..40 {
        decided(&node0.check(&format!("secret-{k}"), 1), "check via node-0");
    }
    let forwarded = metric(node0, "llmtrace_forwarded_checks_total");
    assert!(forwarded > 0, "node-0 forwarded nothing for 40 tenants");
    assert_eq!(metric(node1, "llmtrace_rpc_checks_total"), forwarded);
    assert_eq!(metric(node0, "llmtrace_forward_errors_total"), 0);

    // Hostile requests to node-1's cluster listener.
    let mut rng = Rng::new(7);
    let garbage = rng.bytes(64);
    for (secret, body) in [
        (None, &garbage[..]),
        (Some("wrong-secret"), &garbage[..]),
        (Some(""), &b""[..]),
    ] {
        let reply = rpc(node1, secret, body);
        assert_eq!(reply.status, 401, "secret {secret:?}: {reply}");
        reply.error();
    }
    for body in [&garbage[..], &b""[..], &[0xff; 16][..]] {
        let reply = rpc(node1, Some(SECRET), body);
        assert_eq!(reply.status, 400, "garbage with the secret: {reply}");
        reply.error();
    }
    let huge = vec![0u8; 2 << 20];
    let reply = rpc(node1, Some(SECRET), &huge);
    assert_eq!(reply.status, 413, "2 MiB body: {reply}");
    reply.error();
    assert!(metric(node1, "llmtrace_rpc_rejected_auth_total") >= 3);
    assert!(metric(node1, "llmtrace_rpc_rejected_body_total") >= 4);

    // Still healthy, still in the cluster, still answering forwards.
    assert_eq!(node1.public().get("/healthz").status, 200);
    cluster.wait_converged(Duration::from_secs(5));
    let before = metric(node1, "llmtrace_rpc_checks_total");
    for k in 40..80 {
        decided(
            &node0.check(&format!("secret-{k}"), 1),
            "check after garbage",
        );
    }
    assert!(metric(node1, "llmtrace_rpc_checks_total") > before);

    // A node with another secret, seeded from node-0, stays out of their ring.
    let intruder = Node::builder()
        .rate(1, 100)
        .flag("node-id", "intruder")
        .flag("cluster-secret", "other-secret-456")
        .flag("seeds", node0.cluster_addr())
        .start();
    intruder.wait_ready();
    assert_eq!(intruder.ring_members(), Some(vec!["intruder".to_string()]));
    let ids = cluster.running_ids();
    holds_for(
        Duration::from_secs(3),
        "a 2-member ring without the intruder",
        || {
            cluster.running().iter().all(|n| {
                let view = n.cluster_view();
                n.ring_members().as_ref() == Some(&ids)
                    && !view["members"].to_string().contains("intruder")
            })
        },
    );
}
