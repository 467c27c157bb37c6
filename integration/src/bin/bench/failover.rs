//! `failover`: redis-server and 3 nodes with default settings; tenants `f-0 ..` get one
//! check each, node-2 is killed with SIGKILL, and the time until every tenant it owned
//! is decided normally (200 / 429, not degraded) by both survivors is measured, with
//! when their rings agreed, the degraded and failed answers meanwhile, and the buckets
//! restored from Redis. Repeated BENCH_FAILOVER_RUNS times.

use crate::cleanup::{self, Guarded};
use crate::cluster::start_cluster;
use crate::setup::Bench;
use llmtrace_integration::scenario::owner_of;
use llmtrace_integration::{Cluster, Node, RedisServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The node that is killed.
const VICTIM: usize = 2;
/// How long every tenant may take to be served normally again.
const DEADLINE: Duration = Duration::from_secs(60);
/// Clean rounds after recovery that must stay clean (relapses are reported).
const CLEAN_ROUNDS: u32 = 20;

fn batch_items(tenants: &[String]) -> Vec<Value> {
    tenants
        .iter()
        .map(|t| json!({"tenant_id": t, "cost": 1}))
        .collect()
}

/// The fingerprint of `node`'s ring when it agrees on one without `victim`.
fn ring_without(node: &Node, victim: &str) -> Option<String> {
    let view = node.try_admin_get_json("/admin/cluster")?;
    let in_ring = view["ring_members"].as_array()?.iter().any(|m| m == victim);
    (view["agreed"] == true && !in_ring).then(|| view["fingerprint"].to_string())
}

/// One measured failover; returns the seconds until every tenant was served again and
/// the fields of its `FAILOVER_RESULT` line.
fn once(bench: &Bench, cluster: &mut Guarded<Cluster>) -> Option<(f64, String)> {
    let n = bench.s.failover_tenants;
    let victim_id = cluster.node(VICTIM).node_id.clone();
    let tenants: Vec<String> = (0..n).map(|i| format!("f-{i}")).collect();
    let owned: Vec<String> = tenants
        .iter()
        .filter(|t| owner_of(cluster.node(0), t) == victim_id)
        .cloned()
        .collect();
    if owned.is_empty() {
        println!("  !! no tenant owned by {victim_id}");
        return None;
    }
    for chunk in tenants.chunks(1000) {
        let r = cluster.node(0).batch(&batch_items(chunk));
        assert_eq!(r.status, 200, "warm-up batch: {r}");
    }
    cluster.node(VICTIM).wait_metric(
        "llmtrace_snapshot_writes_total",
        Duration::from_secs(20),
        |v| v >= owned.len() as f64,
    );
    let survivors = [0, 1];
    let restored = |c: &Cluster| -> f64 {
        survivors
            .iter()
            .map(|i| {
                c.node(*i)
                    .metric("llmtrace_restore_hits_total")
                    .unwrap_or(0.0)
            })
            .sum()
    };
    let hits_before = restored(cluster);
    let body = json!({ "checks": batch_items(&owned) });

    println!(
        "-- kill -9 {victim_id} (pid {})",
        cluster.node(VICTIM).pid()
    );
    let victim_pid = cluster.node(VICTIM).pid();
    let killed = Instant::now();
    cluster.kill(VICTIM);
    cleanup::untrack(victim_pid);
    let (mut served_at, mut converged_at) = (None, None);
    let (mut degraded, mut errors, mut rounds, mut relapses, mut clean) = (0, 0, 0, 0, 0);
    while killed.elapsed() < DEADLINE {
        rounds += 1;
        let mut round_ok = true;
        for i in survivors {
            let reply = cluster
                .node(i)
                .public()
                .try_post_json("/v1/check/batch", &body);
            let results = match reply {
                Ok(r) if r.status == 200 => r.json["results"].as_array().cloned(),
                _ => None,
            };
            let Some(results) = results else {
                errors += owned.len();
                round_ok = false;
                continue;
            };
            for r in &results {
                if r.get("error").is_some() {
                    errors += 1;
                    round_ok = false;
                } else if r["degraded"] == true {
                    degraded += 1;
                    round_ok = false;
                }
            }
        }
        if converged_at.is_none() {
            let views: Vec<Option<String>> = survivors
                .iter()
                .map(|i| ring_without(cluster.node(*i), &victim_id))
                .collect();
            if views.iter().all(Option::is_some) && views.windows(2).all(|w| w[0] == w[1]) {
                converged_at = Some(killed.elapsed().as_secs_f64());
            }
        }
        if round_ok {
            served_at.get_or_insert(killed.elapsed().as_secs_f64());
            clean += 1;
            if clean >= CLEAN_ROUNDS && converged_at.is_some() {
                break;
            }
        } else if served_at.is_some() {
            relapses += 1;
        }
    }
    let Some(served) = served_at else {
        println!("  !! not every tenant was served normally again within {DEADLINE:?}");
        return None;
    };
    let hits = restored(cluster) - hits_before;
    let converged = converged_at.unwrap_or(-1.0);
    println!(
        "  {} of {n} tenants were owned by {victim_id}; every one of them was served normally \
         by both survivors {served:.2} s after the kill (rings agreed after {converged:.2} s); \
         meanwhile {degraded} degraded and {errors} failed answers in {rounds} rounds; {hits:.0} \
         buckets restored from Redis; relapses after recovery: {relapses}",
        owned.len()
    );
    let fields = format!(
        "seconds={served:.3} converged_s={converged:.3} tenants={} degraded={degraded} \
         errors={errors} restore_hits={hits:.0} rounds={rounds} relapses={relapses}",
        owned.len()
    );
    println!("FAILOVER_RESULT {fields}");
    if relapses > 0 {
        println!("  !! {relapses} relapses after recovery");
    }
    Some((served, fields))
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    println!();
    println!(
        "== failover: 3 nodes + Redis, default settings; kill -9 of node-2; time until every \
         tenant it owned is decided normally by both survivors =="
    );
    let mut runs = Vec::new();
    for run in 1..=s.failover_runs {
        let redis = RedisServer::start();
        let pid = redis.pid().expect("redis-server runs");
        let redis = Guarded::new(redis, vec![pid]);
        println!("-- run {run}");
        let mut cluster = start_cluster(bench, 3, bench.node().redis(&redis));
        match once(bench, &mut cluster) {
            Some(result) => runs.push(result),
            None => println!("  !! run {run} failed"),
        }
        drop(cluster);
        drop(redis);
    }
    println!();
    println!("failover results:");
    for (i, (_, fields)) in runs.iter().enumerate() {
        println!("  run {}: {fields}", i + 1);
    }
    if let Some(worst) = runs.iter().map(|(t, _)| *t).reduce(f64::max) {
        println!(
            "  worst of {} runs: {worst:.2} s from kill -9 to every tenant served again (target <= 5 s: {})",
            runs.len(),
            if worst <= 5.0 { "met" } else { "NOT met" }
        );
    }
}
