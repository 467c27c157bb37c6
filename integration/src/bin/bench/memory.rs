//! `memory`: bytes of resident memory per tenant. A node in memory gets one warm-up
//! batch, its VmRSS is read (idle baseline), BENCH_TENANTS distinct tenants are drained
//! through `/v1/check/batch` (one check of cost 1000 each, 1000 a request, so every
//! bucket ends empty and stays resident), and VmRSS is read again.

use crate::procfs::{load_note, vm_kb};
use crate::setup::Bench;
use crate::summary::{self, node_health};
use llmtrace_integration::http::Client;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Checks per `/v1/check/batch` request (the node's maximum).
const BATCH: u64 = 1000;
/// The cost of every drained check: the whole burst of 1000.
const COST: u64 = 1000;

/// What a drain did.
#[derive(Debug, Default)]
struct Drained {
    requests: u64,
    allowed: u64,
    denied: u64,
    other: u64,
    seconds: f64,
}

impl Drained {
    fn checks(&self) -> u64 {
        self.allowed + self.denied + self.other
    }

    fn checks_per_s(&self) -> f64 {
        self.checks() as f64 / self.seconds.max(1e-9)
    }
}

/// One check of [`COST`] for tenants `{prefix}0 .. {prefix}{tenants-1}`, [`BATCH`] a
/// request, over `threads` keep-alive connections; stops at the first failed request
/// or at `deadline`.
fn drain(
    public: &Client,
    prefix: &str,
    tenants: u64,
    threads: usize,
    deadline: Duration,
) -> Result<Drained, String> {
    let start = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let totals = Mutex::new(Drained::default());
    let fail = |msg: String| {
        stop.store(true, Ordering::SeqCst);
        failure.lock().unwrap().get_or_insert(msg);
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let client = public.clone();
                let mut mine = Drained::default();
                while !stop.load(Ordering::SeqCst) {
                    if start.elapsed() > deadline {
                        return fail(format!("deadline of {deadline:?} exceeded"));
                    }
                    let from = next.fetch_add(BATCH, Ordering::SeqCst);
                    if from >= tenants {
                        break;
                    }
                    let to = (from + BATCH).min(tenants);
                    let items: Vec<String> = (from..to)
                        .map(|i| format!(r#"{{"tenant_id":"{prefix}{i}","cost":{COST}}}"#))
                        .collect();
                    let body = format!(r#"{{"checks":[{}]}}"#, items.join(","));
                    let headers = [("content-type", "application/json")];
                    let reply = match client.try_post("/v1/check/batch", &headers, body.as_bytes())
                    {
                        Ok(r) if r.status == 200 => r,
                        Ok(r) => return fail(format!("tenants {from}..{to}: {r}")),
                        Err(e) => return fail(format!("tenants {from}..{to}: {e}")),
                    };
                    let Some(results) = reply.json["results"].as_array() else {
                        return fail(format!("bad batch response: {reply}"));
                    };
                    if results.len() as u64 != to - from {
                        return fail(format!(
                            "{} results for {} checks",
                            results.len(),
                            to - from
                        ));
                    }
                    for r in results {
                        match r["allowed"].as_bool() {
                            Some(true) => mine.allowed += 1,
                            Some(false) => mine.denied += 1,
                            None => mine.other += 1,
                        }
                    }
                    mine.requests += 1;
                }
                let mut t = totals.lock().unwrap();
                t.requests += mine.requests;
                t.allowed += mine.allowed;
                t.denied += mine.denied;
                t.other += mine.other;
            });
        }
    });
    if let Some(msg) = failure.into_inner().unwrap() {
        return Err(msg);
    }
    let mut drained = totals.into_inner().unwrap();
    drained.seconds = start.elapsed().as_secs_f64();
    Ok(drained)
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    println!();
    println!(
        "== memory: {} distinct tenants drained via /v1/check/batch (1000 per request) ==",
        s.tenants
    );
    load_note();
    let mut node = bench.start_node("node-memory", bench.node().rate(1, 1000));
    let pid = node.pid();

    // Warm-up: one batch of other tenants, so buffers, thread stacks and allocator
    // arenas are in the baseline.
    drain(node.public(), "warm-", 1000, 1, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("warm-up batch failed: {e}\n{}", node.stderr()));
    // Let the allocator settle before reading the baseline.
    std::thread::sleep(Duration::from_secs(1));
    let idle = vm_kb(pid, "VmRSS");
    println!("  idle VmRSS after warm-up batch: {idle} kB");

    let deadline = Duration::from_secs(s.drain_deadline_s);
    let d = drain(node.public(), "t", s.tenants, s.drain_threads, deadline)
        .unwrap_or_else(|e| panic!("drain failed: {e}\n{}", node.stderr()));
    std::thread::sleep(Duration::from_secs(1));
    let after = vm_kb(pid, "VmRSS");
    let hwm = vm_kb(pid, "VmHWM");
    println!(
        "  | DRAIN_RESULT tenants={} requests={} seconds={:.2} checks_per_s={:.0} allowed={} \
         denied={} other={}",
        d.checks(),
        d.requests,
        d.seconds,
        d.checks_per_s(),
        d.allowed,
        d.denied,
        d.other
    );
    println!("  VmRSS after drain: {after} kB (VmHWM {hwm} kB)");
    let note = format!(
        "   (expected >= {}: drained + warm-up tenants)",
        s.tenants + 1000
    );
    summary::metrics_of(&node, &["llmtrace_buckets_resident"], &note);
    node_health(bench, "node-memory", &mut node);
    drop(node);

    println!();
    println!("memory results:");
    let per_tenant = (after as f64 - idle as f64) * 1024.0 / s.tenants.max(1) as f64;
    println!(
        "  drained                {:12} tenants at {:.0} checks/s (allowed {}, denied {})",
        s.tenants,
        d.checks_per_s(),
        d.allowed,
        d.denied
    );
    println!(
        "  RSS idle -> after      {:9.1} MiB -> {:.1} MiB",
        idle as f64 / 1024.0,
        after as f64 / 1024.0
    );
    println!(
        "  bytes per tenant       {per_tenant:12.1}            (target <= 150: {})",
        if per_tenant <= 150.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
