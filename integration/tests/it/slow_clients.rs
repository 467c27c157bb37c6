//! Slow clients cannot hold a node: a request body that stops short of its
//! `Content-Length`, or trickles in, is answered 408 within the body bound on the
//! public, admin and cluster listeners, and the connection closes; on the proxy
//! listener only a silence longer than the idle bound is cut (a slow upload that keeps
//! sending reaches the upstream). With more such connections than the node has file
//! descriptors, a legitimate check is still answered.

use llmtrace_integration::raw_http::{post_json, request_head, RawConn, RawReply};
use llmtrace_integration::{wait_for, Node, Stub};
use std::io::Write;
use std::time::{Duration, Instant};

/// The body bound the nodes here get (`--body-timeout-ms`, proxy idle bound alike).
const BOUND: Duration = Duration::from_millis(1_000);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(2_500);
/// How long a client waits for an answer before calling the connection held.
const HELD: Duration = Duration::from_secs(12);

/// How a client sends its body.
#[derive(Clone, Copy, Debug)]
enum Slowness {
    /// 10 bytes of the 100 announced, then nothing.
    StopsShort,
    /// One byte every 300 ms (gaps well inside the bound).
    Trickles,
}

/// Sends the head of `method path` (with `headers`) and a body as `how`
/// says; answers the reply (or the error: the connection was held) and when it came.
fn slow_request(
    addr: &str,
    (method, path): (&str, &str),
    headers: &[(&str, &str)],
    how: Slowness,
) -> (std::io::Result<RawReply>, Duration) {
    let mut conn = RawConn::connect(addr, HELD).expect("connect");
    conn.send(&request_head(method, path, 100, headers))
        .expect("send head");
    let start = Instant::now();
    let trickle = match how {
        Slowness::StopsShort => {
            conn.send(b"{\"tenant_i").expect("send part of the body");
            None
        }
        Slowness::Trickles => {
            let mut writer = conn.writer().expect("clone the socket");
            Some(std::thread::spawn(move || {
                for _ in 0..100 {
                    if writer.write_all(b" ").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            }))
        }
    };
    let reply = conn.read_reply();
    let elapsed = start.elapsed();
    if reply.is_ok() {
        assert!(
            conn.wait_closed().is_ok(),
            "{addr} {method} {path} {how:?}: the connection stayed open after the answer"
        );
    }
    drop(conn);
    if let Some(t) = trickle {
        let _ = t.join();
    }
    (reply, elapsed)
}

fn assert_cut(what: &str, (reply, elapsed): (std::io::Result<RawReply>, Duration)) {
    let reply = reply
        .unwrap_or_else(|e| panic!("{what}: no answer within {HELD:?} ({e}): the body held it"));
    assert_eq!(reply.status, 408, "{what}: {reply:?}");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("request_timeout"), "{what}: {body}");
    assert!(
        elapsed + Duration::from_millis(50) >= BOUND && elapsed <= BOUND + SLACK,
        "{what}: cut after {elapsed:?}, bound {BOUND:?}"
    );
}

#[test]
fn slow_bodies_are_cut_with_408_on_every_listener() {
    let stub = Stub::start();
    let node = Node::builder()
        .env("LLMTRACE_BODY_TIMEOUT_MS", BOUND.as_millis())
        .env("LLMTRACE_PROXY_BODY_IDLE_TIMEOUT_MS", BOUND.as_millis())
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", stub.url())
        .start();
    let host = |url: &str| url.trim_start_matches("http://").to_string();
    const PROXY_AUTH: &[(&str, &str)] = &[("Authorization", "Bearer sk-slow")];
    let cases = [
        ("public", host(node.public_url()), ("POST", "/v1/check")),
        (
            "admin",
            host(node.admin_url()),
            ("PUT", "/admin/tenants/a/limits"),
        ),
        (
            "cluster",
            node.cluster_addr().to_string(),
            ("POST", "/cluster/v1/checks"),
        ),
    ];
    let mut runs = Vec::new();
    for (name, addr, route) in cases {
        for how in [Slowness::StopsShort, Slowness::Trickles] {
            let (addr, what) = (addr.clone(), format!("{name} {route:?} {how:?}"));
            runs.push((
                what,
                std::thread::spawn(move || slow_request(&addr, route, &[], how)),
            ));
        }
    }
    // The proxy streams uploads: a silence is cut, a slow but steady body is not.
    let proxy = host(&node.proxy_url());
    let stalled = {
        let proxy = proxy.clone();
        std::thread::spawn(move || {
            let route = ("POST", "/v1/files");
            slow_request(&proxy, route, PROXY_AUTH, Slowness::StopsShort)
        })
    };
    for (what, run) in runs {
        assert_cut(&what, run.join().expect("client thread"));
    }
    assert_cut("proxy /v1/files stalled", stalled.join().unwrap());
    let mut conn = RawConn::connect(&proxy, HELD).unwrap();
    let body = b"{\"purpose\": \"fine-tune\"}";
    conn.send(&request_head("POST", "/v1/files", body.len(), PROXY_AUTH))
        .unwrap();
    let start = Instant::now();
    for b in body {
        conn.send(&[*b]).unwrap();
        std::thread::sleep(BOUND / 4);
    }
    let reply = conn.read_reply().expect("the upstream's answer");
    assert!(start.elapsed() > 2 * BOUND, "the upload was not slow");
    assert_eq!(
        reply.status, 404,
        "a steady slow upload must reach the stub (its 404 for /v1/files): {reply:?}"
    );
}

/// The open-file limit the node gets in the descriptor test.
const OPEN_FILES: u64 = 256;
/// Slow connections opened: more than the node has descriptors.
const SLOW_CONNECTIONS: usize = 300;
/// The body bound of the descriptor test: long enough that every slow connection
/// is open before the first is cut, so the check waits behind a full cap.
const LONG_BOUND: Duration = Duration::from_millis(3_000);

#[test]
fn more_slow_connections_than_open_files_leave_checks_answered() {
    let node = Node::builder()
        .env("LLMTRACE_BODY_TIMEOUT_MS", LONG_BOUND.as_millis())
        .open_file_limit(OPEN_FILES)
        .start();
    let addr = node.public_url().trim_start_matches("http://").to_string();
    // From here, the node's accept queue fills (connects then wait for room in it).
    let start = Instant::now();
    let slow: Vec<RawConn> = (0..SLOW_CONNECTIONS)
        .map(|i| {
            let mut c = RawConn::connect(&addr, HELD * 3)
                .unwrap_or_else(|e| panic!("slow connection {i}: {e}"));
            let mut req = request_head("POST", "/v1/check", 100, &[]);
            req.extend_from_slice(b"{\"tenant_i");
            c.send(&req).expect("send");
            c
        })
        .collect();
    let opened = start.elapsed();
    // Every slow connection is held now (accepted, or waiting in the backlog).
    let mut check = RawConn::connect(&addr, HELD * 3).expect("connect");
    check
        .send(&post_json("/v1/check", r#"{"tenant_id":"legit","cost":1}"#))
        .unwrap();
    let reply = check
        .read_reply()
        .unwrap_or_else(|e| panic!("a legitimate check got no answer ({e})"));
    let answered = start.elapsed();
    assert_eq!(reply.status, 200, "{reply:?}");
    // The node fitted its connection cap under the limit, and says so.
    let cap: usize = wait_for(Duration::from_secs(5), "the lowered-cap log line", || {
        let err = node.stderr();
        let line = err
            .lines()
            .find(|l| l.contains("max_connections lowered to fit the open-file limit"))?;
        let accepted = line.split("accepted=").nth(1)?;
        accepted.split_whitespace().next()?.parse().ok()
    });
    assert!(cap < OPEN_FILES as usize, "cap {cap}");
    // Waiting its turn: at most one body bound per cap's worth of slow connections
    // (counted from the first slow connection).
    let rounds = SLOW_CONNECTIONS.div_ceil(cap) as u32 + 1;
    assert!(
        answered <= LONG_BOUND * rounds + SLACK,
        "the check took {answered:?} ({SLOW_CONNECTIONS} slow connections, cap {cap})"
    );
    // And every slow one was answered 408 and closed, in its turn.
    for (i, mut c) in slow.into_iter().enumerate() {
        let r = c
            .read_reply()
            .unwrap_or_else(|e| panic!("slow connection {i}: no answer ({e})"));
        assert_eq!(r.status, 408, "slow connection {i}: {r:?}");
    }
    assert!(
        start.elapsed() <= LONG_BOUND * rounds + SLACK * 2,
        "the slow connections took {:?} to be cut",
        start.elapsed()
    );
    eprintln!(
        "{SLOW_CONNECTIONS} slow connections (opened within {opened:?}), open-file limit \
         {OPEN_FILES}, cap {cap}: a check answered after {answered:?}, every slow one cut \
         within {:?}",
        start.elapsed()
    );
}
