//! The forwarding stream (`GET /cluster/v1/stream`, a WebSocket upgrade on the cluster
//! listener): forwarded batches ride it between real nodes, and what it accepts from a
//! hostile client (no secret, frames before the upgrade, garbage, oversized, unmasked,
//! text and cut-short frames) is refused with a close frame, never a crash, while the
//! node keeps serving.

use llmtrace_actors::cluster::rpc::stream::{frame, split_frame, STREAM_PATH};
use llmtrace_actors::cluster::rpc::wire::{self, BatchRequest, BatchResponse, WireCheck};
use llmtrace_cluster_config::Limit;
use llmtrace_integration::ws::{self, frame_bytes, upgrade_request, WsConn};
use llmtrace_integration::{wait_until, Cluster, Node, Rng};
use std::time::Duration;

const SECRET: &str = "forward-stream-secret-31";
const READ: Duration = Duration::from_secs(10);

fn metric(node: &Node, selector: &str) -> u64 {
    node.metric(selector).unwrap_or(0.0) as u64
}

/// An upgrade with the cluster secret, switched (101).
fn switched(node: &Node) -> WsConn {
    let mut conn = WsConn::open(
        node.cluster_addr(),
        &upgrade_request(STREAM_PATH, &[("x-llmtrace-cluster-secret", SECRET)]),
        READ,
    )
    .expect("connect to the cluster listener");
    let reply = conn.read_head().expect("an answer to the upgrade");
    assert_eq!(reply.status, 101, "upgrade with the secret: {}", reply.head);
    conn
}

/// A valid batch of one check for `tenant`.
fn batch(tenant: &str) -> Vec<u8> {
    wire::encode(&BatchRequest {
        origin: "stream-test".into(),
        checks: vec![WireCheck {
            id: 1,
            tenant: tenant.into(),
            limit: Limit::REQUESTS.as_str().to_string(),
            op: 0,
            cost: 1,
            retry: false,
            // Decided where it lands, whoever owns it.
            hops: wire::MAX_FORWARDS,
        }],
    })
}

#[test]
fn forwarded_batches_ride_the_stream() {
    let cluster = Cluster::builder()
        .nodes(3)
        .rate(1, 1000)
        .flag("cluster-secret", SECRET)
        .start();
    let node0 = cluster.node(0);
    // The first batches to a peer go over HTTP while its stream opens.
    let mut k = 0;
    wait_until(
        Duration::from_secs(20),
        "batches sent over a stream",
        || {
            for _ in 0..20 {
                let reply = node0.check(&format!("stream-{k}"), 1);
                assert_eq!(reply.status, 200, "check {k}: {reply}");
                k += 1;
            }
            metric(node0, "llmtrace_forward_stream_batches_total") > 0
        },
    );
    assert!(metric(node0, "llmtrace_forward_streams_opened_total") >= 1);
    assert_eq!(metric(node0, "llmtrace_forward_errors_total"), 0);
    // Every forwarded check was answered by its owner, over either transport.
    let received: u64 = (1..3)
        .map(|i| metric(cluster.node(i), "llmtrace_rpc_checks_total"))
        .sum();
    assert_eq!(received, metric(node0, "llmtrace_forwarded_checks_total"));
}

#[test]
fn the_stream_refuses_hostile_input() {
    let cluster = Cluster::builder()
        .nodes(2)
        .rate(1, 100)
        .flag("cluster-secret", SECRET)
        .start();
    let (node0, node1) = (cluster.node(0), cluster.node(1));
    let addr = node1.cluster_addr();
    let rejected_before = metric(node1, "llmtrace_rpc_rejected_body_total");

    // No secret, a wrong one: 401, no upgrade. Frames sent right behind the refused
    // upgrade are not served as frames: the connection ends.
    let early = frame_bytes(ws::BINARY, &frame(1, &batch("early")), true, None);
    for secret in [None, Some("wrong-secret")] {
        let headers: Vec<(&str, &str)> = secret
            .map(|s| vec![("x-llmtrace-cluster-secret", s)])
            .unwrap_or_default();
        let mut request = upgrade_request(STREAM_PATH, &headers);
        request.extend_from_slice(&early);
        let mut conn = WsConn::open(addr, &request, READ).unwrap();
        let reply = conn.read_head().unwrap();
        assert_eq!(
            reply.status, 401,
            "upgrade with secret {secret:?}: {}",
            reply.head
        );
        assert!(
            String::from_utf8_lossy(&reply.body).contains("unauthorized"),
            "{}",
            reply.head
        );
        conn.wait_closed()
            .expect("the connection closes after frames sent without the upgrade");
    }
    // The secret but no upgrade: a JSON 400 naming why.
    let reply = node1
        .cluster()
        .get_with_headers(STREAM_PATH, &[("x-llmtrace-cluster-secret", SECRET)]);
    assert_eq!(reply.status, 400, "{reply}");
    assert_eq!(reply.json["error"]["code"], "bad_upgrade", "{reply}");

    // A valid batch is answered in a frame with its id; a ping gets its pong.
    let mut conn = switched(node1);
    conn.send(&frame_bytes(
        ws::BINARY,
        &frame(42, &batch("valid")),
        true,
        None,
    ))
    .unwrap();
    let (opcode, payload) = conn.read_frame().unwrap();
    assert_eq!(opcode, ws::BINARY);
    let (id, message) = split_frame(&payload).expect("an id");
    assert_eq!(id, 42);
    let answer: BatchResponse = wire::decode(message).expect("a batch answer");
    assert_eq!(answer.results.len(), 1);
    assert!(answer.results[0].result.verdict().is_some(), "{answer:?}");
    conn.send(&frame_bytes(ws::PING, b"are you there", true, None))
        .unwrap();
    assert_eq!(
        conn.read_frame().unwrap(),
        (ws::PONG, b"are you there".to_vec())
    );

    // Each hostile frame closes its stream with a close frame naming the reason.
    let mut rng = Rng::new(11);
    let garbage = rng.bytes(64);
    let cases: [(&str, Vec<u8>, u16); 6] = [
        (
            "an undecodable batch",
            frame_bytes(ws::BINARY, &frame(7, &garbage), true, None),
            1007,
        ),
        (
            "a frame shorter than its id",
            frame_bytes(ws::BINARY, b"abc", true, None),
            1007,
        ),
        (
            "a text frame",
            frame_bytes(ws::TEXT, b"{\"checks\":[]}", true, None),
            1003,
        ),
        (
            "an unmasked frame",
            frame_bytes(ws::BINARY, &frame(8, &batch("unmasked")), false, None),
            1002,
        ),
        (
            "a frame announcing 1 TiB",
            frame_bytes(ws::BINARY, b"12345678", true, Some(1 << 40)),
            1002,
        ),
        (
            "a frame announcing 2 MiB (over the limit)",
            frame_bytes(ws::BINARY, b"12345678", true, Some(2 << 20)),
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut conn = switched(node1);
        conn.send(&bytes).unwrap();
        let close = conn
            .read_close()
            .unwrap_or_else(|e| panic!("{what}: no close frame: {e}"));
        assert_eq!(close, code, "{what}");
        conn.wait_closed()
            .unwrap_or_else(|e| panic!("{what}: the stream did not close: {e}"));
    }
    // Bytes that are not frames at all.
    let mut conn = switched(node1);
    conn.send(&garbage).unwrap();
    conn.wait_closed().expect("garbage closes the stream");
    assert!(metric(node1, "llmtrace_rpc_rejected_body_total") >= rejected_before + 6);

    // Still healthy, still in the cluster, still answering forwards.
    assert_eq!(node1.public().get("/healthz").status, 200);
    cluster.wait_converged(Duration::from_secs(10));
    let before = metric(node1, "llmtrace_rpc_checks_total");
    for k in 0..40 {
        let reply = node0.check(&format!("after-{k}"), 1);
        assert_eq!(reply.status, 200, "check after the hostile frames: {reply}");
    }
    assert!(metric(node1, "llmtrace_rpc_checks_total") > before);
}

#[test]
fn streams_over_mutual_tls_answer_every_batch_under_load() {
    use llmtrace_integration::certs::ClusterCerts;
    let certs = ClusterCerts::new();
    let template = certs.flags().iter().fold(
        Node::builder()
            .rate(1, 1000)
            .flag("cluster-secret", SECRET)
            .flag("http-workers", 1),
        |b, (flag, value)| b.flag(flag, value),
    );
    let cluster = Cluster::builder().nodes(3).template(template).start();
    std::thread::scope(|s| {
        for t in 0..24 {
            let node = cluster.node(t % 3);
            s.spawn(move || {
                for k in 0..1500 {
                    let reply = node.check(&format!("tls-load-{t}-{k}"), 1);
                    assert_eq!(reply.status, 200, "{reply}");
                    assert_ne!(reply.json["degraded"], true, "{reply}");
                }
            });
        }
    });
    for i in 0..3 {
        let node = cluster.node(i);
        eprintln!(
            "node-{i}: stream batches {} opened {} errors {} retries {}",
            metric(node, "llmtrace_forward_stream_batches_total"),
            metric(node, "llmtrace_forward_streams_opened_total"),
            metric(node, "llmtrace_forward_errors_total"),
            metric(node, "llmtrace_forward_retries_total"),
        );
        assert_eq!(metric(node, "llmtrace_forward_errors_total"), 0, "node-{i}");
        assert_eq!(
            metric(node, "llmtrace_forward_retries_total"),
            0,
            "node-{i}"
        );
        assert!(
            metric(node, "llmtrace_forward_stream_batches_total") > 0,
            "node-{i}"
        );
    }
}
