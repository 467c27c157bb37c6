//! Concurrent checks for one tenant never over-admit: 8 threads, 1000 checks, burst 500
//! at 1 rps → exactly 500 allowed, plus at most what refilled while the test ran.

use llmtrace_integration::Node;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const THREADS: u64 = 8;
const CHECKS: u64 = 1000;
const BURST: u64 = 500;
const RPS: u64 = 1;

#[test]
fn concurrent_checks_never_over_admit() {
    let node = Node::builder().rate(RPS, BURST).start();
    node.wait_ready();
    let allowed = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let start = Instant::now();
    thread::scope(|s| {
        for t in 0..THREADS {
            let (node, allowed, refused) = (&node, &allowed, &refused);
            s.spawn(move || {
                for i in 0..CHECKS / THREADS {
                    let reply = node.check("hot-tenant", 1);
                    match reply.status {
                        200 => allowed.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        _ => panic!("thread {t} check {i}: {reply}"),
                    };
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let (allowed, refused) = (allowed.into_inner(), refused.into_inner());
    assert_eq!(allowed + refused, CHECKS);
    let most = BURST + (RPS as f64 * elapsed.as_secs_f64()).floor() as u64;
    assert!(
        allowed >= BURST && allowed <= most,
        "{allowed} allowed of {CHECKS} in {elapsed:?}; expected {BURST}..={most}"
    );

    // The counters agree with what the clients saw.
    let timeout = Duration::from_secs(10);
    let sel = |d: &str| format!("llmtrace_checks_total{{limit=\"requests\",decision=\"{d}\"}}");
    node.wait_metric(&sel("allowed"), timeout, |v| v == allowed as f64);
    node.wait_metric(&sel("refused"), timeout, |v| v == refused as f64);
}

#[test]
fn concurrent_batches_never_over_admit() {
    let node = Node::builder().rate(RPS, BURST).start();
    let allowed = AtomicU64::new(0);
    let start = Instant::now();
    let items: Vec<_> = (0..25)
        .map(|_| serde_json::json!({"tenant_id": "hot-batch", "cost": 1}))
        .collect();
    thread::scope(|s| {
        for _ in 0..THREADS {
            let (node, allowed, items) = (&node, &allowed, &items);
            s.spawn(move || {
                for _ in 0..CHECKS / THREADS / 25 {
                    let reply = node.batch(items);
                    assert_eq!(reply.status, 200, "{reply}");
                    let results = reply.json["results"].as_array().expect("results");
                    assert_eq!(results.len(), items.len());
                    let n = results.iter().filter(|r| r["allowed"] == true).count();
                    allowed.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let allowed = allowed.into_inner();
    let most = BURST + (RPS as f64 * elapsed.as_secs_f64()).floor() as u64;
    assert!(
        allowed >= BURST && allowed <= most,
        "{allowed} allowed of {CHECKS} in {elapsed:?}; expected {BURST}..={most}"
    );
}
