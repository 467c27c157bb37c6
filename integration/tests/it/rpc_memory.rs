//! Memory under hostile node-to-node traffic: a holder of the cluster secret sends
//! full batches of checks straight to a node's cluster port, each check already
//! forwarded the maximum number of times (so the node must decide it where it lands)
//! and each for a distinct key the node does not own (so each would need its bucket
//! pulled from the owner, which records a tombstone for it). Both nodes' resident
//! memory must stay within a stated bound while they work, and their heap must come
//! back under a stated bound once the work is done, however often the load repeats.

use llmtrace_actors::cluster::rpc::wire::{
    self, BatchRequest, WireCheck, MAX_BATCH_ITEMS, MAX_FORWARDS, SECRET_HEADER,
};
use llmtrace_actors::Rpc;
use llmtrace_cluster_config::ring::{Ring, DEFAULT_VNODES};
use llmtrace_cluster_config::Limit;
use llmtrace_integration::process::vm_kb;
use llmtrace_integration::{Cluster, Node};
use std::thread;
use std::time::{Duration, Instant};

const SECRET: &str = "rpc-memory-secret-77";
/// Concurrent full batches per round.
const BATCHES: usize = 6;
/// Most a round may add to either node's resident memory at its peak.
const PEAK_BOUND_KB: u64 = 64 * 1024;
/// Most heap (anonymous resident memory) above the idle node's the load may leave once
/// its work is done (buckets refilled and dropped, dedup windows passed), after any
/// number of rounds: what the allocator keeps for reuse, not a per-check cost. Code
/// paged in for the first time is not counted: it is the binary's, not the load's.
const RETAINED_BOUND_KB: u64 = 32 * 1024;
/// Rounds of [`BATCHES`] batches.
const ROUNDS: usize = 3;

/// One batch of [`MAX_BATCH_ITEMS`] checks, each for a fresh key `ring` gives to a
/// node other than `receiver`, marked as forwarded [`MAX_FORWARDS`] times.
fn hostile_batch(ring: &Ring, receiver: &str, round: usize, batch: usize) -> Vec<u8> {
    let mut checks = Vec::with_capacity(MAX_BATCH_ITEMS);
    let mut n = 0u64;
    while checks.len() < MAX_BATCH_ITEMS {
        n += 1;
        let tenant = format!("hostile-{round}-{batch}-{n}");
        if ring.owner(&tenant, Limit::REQUESTS) == Some(receiver) {
            continue;
        }
        checks.push(WireCheck {
            id: n,
            tenant,
            limit: Limit::REQUESTS.as_str().to_string(),
            op: 0,
            cost: 1,
            retry: false,
            hops: MAX_FORWARDS,
        });
    }
    wire::encode(&BatchRequest {
        // Distinct origins: no batch's ids collide with another's in the dedup map.
        origin: format!("attacker-{round}-{batch}"),
        checks,
    })
}

/// Sends `BATCHES` hostile batches at once to `node`; every one must be answered 200.
fn round(node: &Node, ring: &Ring, round: usize) {
    let bodies: Vec<Vec<u8>> = (0..BATCHES)
        .map(|b| hostile_batch(ring, &node.node_id, round, b))
        .collect();
    let statuses: Vec<String> = thread::scope(|s| {
        let sends: Vec<_> = bodies
            .iter()
            .map(|body| {
                s.spawn(move || {
                    let headers = [
                        ("content-type", "application/octet-stream"),
                        (SECRET_HEADER, SECRET),
                    ];
                    match node
                        .cluster()
                        .try_post(<BatchRequest as Rpc>::PATH, &headers, body)
                    {
                        Ok(reply) => reply.status.to_string(),
                        Err(e) => e.to_string(),
                    }
                })
            })
            .collect();
        sends.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| s == "200"),
        "round {round}: hostile batches answered {statuses:?}"
    );
}

/// Anonymous resident memory (the heap, not the binary's pages) of the nodes (kB).
fn anon(pids: &[u32]) -> Vec<u64> {
    pids.iter().map(|&p| vm_kb(p, "RssAnon")).collect()
}

#[test]
fn hostile_forwarded_batches_leave_memory_bounded() {
    let cluster = Cluster::builder()
        .nodes(2)
        .rate(1, 100)
        .flag("cluster-secret", SECRET)
        .start();
    let ids = cluster.running_ids();
    let ring = Ring::new(ids.iter().cloned(), DEFAULT_VNODES);
    // Node 1 receives the batches; node 0, the keys' owner, is asked for each bucket.
    let pids = [cluster.node(0).pid(), cluster.node(1).pid()];
    let idle = anon(&pids);
    // Round 0 lands inside node 1's join window (handoff pulls ask every member), the
    // later ones after it; the same load again must not add up.
    for r in 0..ROUNDS {
        // Peak resident memory counts from here (clear_refs 5 resets VmHWM).
        for pid in pids {
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
        }
        let before: Vec<u64> = pids.iter().map(|&p| vm_kb(p, "VmRSS")).collect();
        round(cluster.node(1), &ring, r);
        let peak: Vec<u64> = pids
            .iter()
            .zip(&before)
            .map(|(&p, b)| vm_kb(p, "VmHWM").saturating_sub(*b))
            .collect();
        println!("round {r}: VmRSS before {before:?} kB, peak +{peak:?} kB");
        assert!(
            peak.iter().all(|&p| p <= PEAK_BOUND_KB),
            "round {r}: resident memory rose by {peak:?} kB at its peak (bound {PEAK_BOUND_KB} kB)"
        );
        // Polled until it is back under the bound (or a minute passes).
        let deadline = Instant::now() + Duration::from_secs(60);
        let retained = loop {
            let grown: Vec<u64> = anon(&pids)
                .iter()
                .zip(&idle)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            if grown.iter().all(|&g| g <= RETAINED_BOUND_KB) || Instant::now() >= deadline {
                break grown;
            }
            thread::sleep(Duration::from_millis(200));
        };
        println!("round {r}: heap above idle +{retained:?} kB");
        assert!(
            retained.iter().all(|&g| g <= RETAINED_BOUND_KB),
            "round {r}: heap {retained:?} kB above idle a minute after the work (bound \
             {RETAINED_BOUND_KB} kB)"
        );
    }
}
