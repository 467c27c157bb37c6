//! A graceful stop under heavy load loses nothing: every check a client was answered
//! "admitted" is in the bucket the restarted node restores from Redis.
//!
//! One node on Redis, one tenant whose burst is far above what the load takes, refilling
//! 1 unit a second: the refill since the first check is at most the seconds elapsed, so
//! "units consumed" is read exactly from the restarted node's admin API (burst minus
//! remaining, plus at most that refill). A flood of pipelined checks over many keep-alive
//! connections runs while the node gets SIGTERM; this repeats over several stops.

use llmtrace_integration::flood::Flood;
use llmtrace_integration::raw_http::post_json;
use llmtrace_integration::{wait_until, Node, NodeBuilder, RedisServer};
use std::time::{Duration, Instant};

const BURST: u64 = 1_000_000_000;
const RPS: u64 = 1;
const TENANT: &str = "heavy";
const STOPS: usize = 4;
const CONNECTIONS: usize = 32;
const DEPTH: usize = 4;
/// Answers the flood gets before SIGTERM (it is in full swing by then).
const WARM_ANSWERS: u64 = 20_000;

fn builder(redis: &RedisServer) -> NodeBuilder {
    Node::builder().rate(RPS, BURST).redis(redis)
}

/// `host:port` of the node's public listener.
fn public_addr(node: &Node) -> String {
    node.public_url().trim_start_matches("http://").to_string()
}

/// Units the node says remain in the tenant's bucket.
fn remaining(node: &Node) -> u64 {
    let r = node.admin().get(&format!("/admin/tenants/{TENANT}"));
    assert_eq!(r.status, 200, "{r}");
    r.json["limits"][0]["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("no remaining in {r}"))
}

#[test]
fn sigterm_under_load_keeps_every_admitted_check() {
    let redis = RedisServer::start();
    let request = post_json(
        "/v1/check",
        &format!(r#"{{"tenant_id":"{TENANT}","cost":1}}"#),
    );
    let first_check = Instant::now();
    let (mut admitted, mut sent) = (0u64, 0u64);
    let mut node = builder(&redis).start();
    for stop in 1..=STOPS {
        let flood = Flood::start(&public_addr(&node), request.clone(), CONNECTIONS, DEPTH);
        wait_until(Duration::from_secs(30), "the flood to get going", || {
            flood.answered() >= WARM_ANSWERS || !flood.is_running()
        });
        let status = node.terminate();
        let report = flood.stop();
        assert!(status.success(), "stop {stop}: exit status {status}");
        assert!(
            report.count(200) >= WARM_ANSWERS && report.errors.is_empty(),
            "stop {stop}: the flood did not run as meant: {report:?}"
        );
        admitted += report.count(200);
        sent += report.sent;

        node = builder(&redis).start();
        // The refill since the first check: at most RPS a second, rounded up.
        let refill = RPS * (first_check.elapsed().as_secs() + 1);
        let consumed = BURST - remaining(&node);
        assert!(
            consumed + refill >= admitted,
            "stop {stop}: {admitted} checks were answered admitted, the restored bucket \
             holds {consumed} consumed (+ at most {refill} refilled): {} lost; {report:?}",
            admitted - consumed - refill
        );
        assert!(
            consumed <= sent,
            "stop {stop}: {consumed} consumed, but only {sent} checks were sent"
        );
        eprintln!(
            "stop {stop}: {} answered admitted this round ({:?}), {} statuses {:?}; \
             restored consumption {consumed} for {admitted} admitted in all",
            report.count(200),
            report.elapsed,
            report.sent,
            report.by_status
        );
    }
}
