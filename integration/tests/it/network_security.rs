//! A cluster on a real network: the cluster port off loopback needs a secret; gossip
//! is sealed with a key derived from it (another secret never joins; a captured
//! datagram replayed or altered is dropped unparsed and counted); node-to-node RPC
//! runs over mutual TLS (a client without a certificate from the cluster CA is
//! refused, plain HTTP too, certificates reload on SIGHUP); and what an observer of
//! the cluster ports captures holds no node id, tenant id or secret in clear.
//!
//! Captures come from [`Relay`]s: each node advertises a relay that forwards its
//! cluster port (TCP and UDP) and records every byte.

use llmtrace_integration::certs::{ClusterCerts, Issued, TestCa};
use llmtrace_integration::relay::Relay;
use llmtrace_integration::{free_port, wait_until, Cluster, Node, NodeBuilder};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "net-security-secret-0123";

fn metric(node: &Node, selector: &str) -> u64 {
    node.metric(selector).unwrap_or(0.0) as u64
}

fn rejected(node: &Node, reason: &str) -> u64 {
    metric(
        node,
        &format!("llmtrace_gossip_rejected_total{{reason=\"{reason}\"}}"),
    )
}

/// A relay in front of a free loopback port, and the flags making a node listen
/// there and advertise the relay. Returns (real cluster address, relay, flags).
fn relayed() -> (SocketAddr, Relay, impl FnOnce(NodeBuilder) -> NodeBuilder) {
    let real = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let relay = Relay::start(real);
    let advertise = relay.addr();
    let flags = move |b: NodeBuilder| {
        b.flag("cluster-listen", real)
            .flag("cluster-advertise", advertise)
    };
    (real, relay, flags)
}

#[test]
fn cluster_port_off_loopback_needs_a_secret() {
    let open = Node::builder()
        .flag("cluster-listen", "0.0.0.0:0")
        .flag("cluster-advertise", "127.0.0.1:7946");
    let stderr = open.clone().start_refused();
    for named in ["cluster.secret", "LLMTRACE_CLUSTER_SECRET"] {
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    // The same node with a secret starts.
    let node = open.flag("cluster-secret", SECRET).start();
    node.wait_ready();
}

#[test]
fn a_node_with_another_secret_never_joins() {
    let cluster = Cluster::builder()
        .nodes(1)
        .flag("cluster-secret", SECRET)
        .start();
    let n0 = cluster.node(0);
    let n1 = Node::builder()
        .flag("node-id", "node-1")
        .flag("seeds", n0.cluster_addr())
        .flag("cluster-secret", "another-secret-4567")
        .start();
    wait_until(
        Duration::from_secs(10),
        "node-0 to drop the stranger's gossip",
        || rejected(n0, "auth") >= 3,
    );
    n1.wait_ready();
    for (node, id) in [(n0, "node-0"), (&n1, "node-1")] {
        assert_eq!(node.ring_members(), Some(vec![id.to_string()]), "{id}");
    }
    assert_eq!(rejected(n0, "replay") + rejected(n0, "stale"), 0);
}

/// Node-0's runtime override of `tenant`, as its `/admin/limits` lists it.
fn override_burst(node: &Node, tenant: &str) -> Option<u64> {
    let table = node.admin_get_json("/admin/limits")["overrides"].clone();
    table
        .as_array()?
        .iter()
        .find(|o| o["tenant_id"] == tenant)?["burst_size"]
        .as_u64()
}

/// Sends every datagram to `to` and waits until node-0 dropped them all (any reason).
fn inject(node: &Node, to: SocketAddr, datagrams: &[Vec<u8>]) {
    let all = |n: &Node| rejected(n, "auth") + rejected(n, "replay") + rejected(n, "stale");
    let before = all(node);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in datagrams {
        socket.send_to(d, to).unwrap();
    }
    let n = datagrams.len() as u64;
    wait_until(
        Duration::from_secs(10),
        "every injected datagram dropped",
        || all(node) - before == n,
    );
}

#[test]
fn replayed_or_altered_gossip_changes_nothing() {
    let (real0, relay0, flags0) = relayed();
    let mut cluster = Cluster::builder()
        .nodes(0)
        .flag("cluster-secret", SECRET)
        .rate(1, 100)
        .spawn();
    cluster.add_node_with(flags0);
    cluster.add_node();
    cluster.add_node();
    cluster.wait_converged(Duration::from_secs(20));
    // An override (burst 3), then a newer one (burst 5), both learnt by node-0.
    let tenant = "replay-victim";
    for burst in [3, 5] {
        let r = cluster.node(1).admin().put_json(
            &format!("/admin/tenants/{tenant}/limits"),
            &json!({"requests_per_second": 0, "burst_size": burst}),
        );
        assert_eq!(r.status, 200, "{r}");
        wait_until(
            Duration::from_secs(10),
            "node-0 to learn the override",
            || override_burst(cluster.node(0), tenant) == Some(burst),
        );
    }
    // node-2 dies and is dropped.
    cluster.kill(2);
    cluster.wait_converged(Duration::from_secs(30));
    let captured = relay0.datagrams_to_node();
    assert!(
        captured.len() > 20,
        "only {} datagrams captured",
        captured.len()
    );
    let node0 = cluster.node(0);
    let auth = rejected(node0, "auth");
    let replays = rejected(node0, "replay");

    // Replayed as captured: every one dropped, none as unauthentic.
    inject(node0, real0, &captured);
    assert_eq!(rejected(node0, "auth"), auth);
    assert!(rejected(node0, "replay") > replays);

    // One byte altered in each (each at another place): dropped as unauthentic.
    let altered: Vec<Vec<u8>> = captured
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut d = d.clone();
            let at = (i * 7) % d.len();
            d[at] ^= 0x20;
            d
        })
        .collect();
    inject(node0, real0, &altered);
    assert_eq!(rejected(node0, "auth") - auth, altered.len() as u64);

    // Nothing changed: node-2 stays gone, the override stays the newest.
    let ring = vec!["node-0".to_string(), "node-1".to_string()];
    assert_eq!(node0.ring_members(), Some(ring));
    assert_eq!(override_burst(node0, tenant), Some(5));
}

/// A TLS client to the cluster port at `addr` with `client` as certificate (or none),
/// trusting `ca`; returns the first bytes answered to a node-to-node request, or the
/// error that ended the connection.
fn tls_call(addr: SocketAddr, ca: &TestCa, client: Option<&Issued>) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().into()).unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(c.key_der.clone().into()),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = "POST /cluster/v1/checks HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\
                   connection: close\r\n\r\nbad";
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) if !answer.is_empty() => Ok(String::from_utf8_lossy(&answer).into_owned()),
        Ok(_) => Err("closed without an answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What a plain HTTP request to `addr` gets back (nothing HTTP from a TLS port).
fn plain_call(addr: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ =
        tcp.write_all(b"POST /cluster/v1/checks HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn with_tls(b: NodeBuilder, certs: &ClusterCerts) -> NodeBuilder {
    certs
        .flags()
        .iter()
        .fold(b, |b, (flag, value)| b.flag(flag, value))
}

#[test]
fn three_nodes_with_mutual_tls_hold_a_tenant_and_show_nothing_in_clear() {
    const BURST: u64 = 60;
    let certs = ClusterCerts::new();
    let template = with_tls(
        Node::builder()
            .rate(1, BURST)
            .flag("cluster-secret", SECRET),
        &certs,
    );
    let mut cluster = Cluster::builder().nodes(0).template(template).spawn();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let (_, relay, flags) = relayed();
        cluster.add_node_with(flags);
        relays.push(relay);
    }
    cluster.wait_converged(Duration::from_secs(30));

    // One tenant, round-robin over the nodes: exactly its burst (refill 1/s).
    let tenant = "tls-tenant-7f3a";
    let start = Instant::now();
    let allowed = (0..2 * BURST)
        .filter(|i| cluster.node(*i as usize % 3).check(tenant, 1).status == 200)
        .count() as u64;
    let most = BURST + start.elapsed().as_secs();
    assert!(
        (BURST..=most).contains(&allowed),
        "{allowed} allowed; expected {BURST}..={most}"
    );
    // Load over many tenants: most of them forwarded.
    let tenants: Vec<String> = (0..60).map(|i| format!("tls-load-tenant-{i:03}")).collect();
    for (i, t) in tenants.iter().enumerate() {
        let r = cluster.node(i % 3).check(t, 1);
        assert_eq!(r.status, 200, "{r}");
        assert_ne!(r.json["degraded"], true, "owner unreachable over TLS: {r}");
    }
    let forwarded: u64 = (0..3)
        .map(|i| metric(cluster.node(i), "llmtrace_forwarded_checks_total"))
        .sum();
    assert!(forwarded > 30, "only {forwarded} checks forwarded");

    // What crossed the cluster ports: gossip and RPC, none of it readable.
    let captured: Vec<u8> = relays.iter().flat_map(Relay::captured).collect();
    assert!(
        captured.len() > 10_000,
        "only {} bytes captured",
        captured.len()
    );
    let mut clear = vec![SECRET.to_string(), tenant.to_string()];
    clear.extend((0..3).map(|i| cluster.node(i).node_id.clone()));
    clear.extend(tenants);
    for text in &clear {
        let found = captured.windows(text.len()).any(|w| w == text.as_bytes());
        assert!(!found, "{text:?} in clear on the cluster ports");
    }
}

#[test]
fn only_clients_with_a_certificate_of_the_cluster_ca_are_served() {
    let certs = ClusterCerts::new();
    let (real, _relay, flags) = relayed();
    let node = with_tls(flags(Node::builder()), &certs).start();
    node.wait_ready();
    let peer = certs.ca.node_cert("peer");
    let answer = tls_call(real, &certs.ca, Some(&peer)).expect("a peer is served");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // No certificate, or one from another CA: no HTTP answer.
    let outsider = TestCa::new("outsider CA").node_cert("outsider");
    for (what, client) in [("no certificate", None), ("another CA", Some(&outsider))] {
        let r = tls_call(real, &certs.ca, client);
        assert!(
            !r.as_ref().is_ok_and(|a| a.contains("HTTP/1.1")),
            "{what}: {r:?}"
        );
    }
    assert!(
        !plain_call(real).contains("HTTP/1.1"),
        "plain HTTP answered"
    );

    // Rotation: the node's files now hold a new CA and a certificate from it;
    // after SIGHUP, only certificates of the new CA are served.
    let next = TestCa::new("next cluster CA");
    let rotated = next.node_cert("node");
    std::fs::write(&certs.cert, &rotated.cert_pem).unwrap();
    std::fs::write(&certs.key, &rotated.key_pem).unwrap();
    std::fs::write(&certs.ca_file, next.pem()).unwrap();
    node.signal(libc::SIGHUP);
    let peer_next = next.node_cert("peer");
    wait_until(
        Duration::from_secs(10),
        "the new CA's certificates served",
        || tls_call(real, &next, Some(&peer_next)).is_ok_and(|a| a.starts_with("HTTP/1.1 400")),
    );
    let old = tls_call(real, &certs.ca, Some(&peer));
    assert!(
        !old.as_ref().is_ok_and(|a| a.contains("HTTP/1.1")),
        "old CA: {old:?}"
    );
    assert!(node.stderr().contains("cluster TLS certificates reloaded"));
}
