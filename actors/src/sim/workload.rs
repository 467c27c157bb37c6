//! The simulated load: checks of tenants drawn from a Zipf distribution,
//! each sent to a node picked at random (a load balancer), at a fixed rate
//! for a fixed time (wall time: token leases measure demand by the node's
//! monotonic clock). What it measures comes from the nodes' own counters
//! (routes, shard decisions, snapshot writes) and the simulated network's.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use llmtrace_cluster_config::Limit;

use crate::cluster::router::Route;
use crate::sim::cluster::SimCluster;
use crate::sim::zipf::{tenant, SimRng, Zipf};

/// How much load, for how long.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Checks per second offered, over the whole cluster.
    pub rate: f64,
    pub duration: Duration,
    /// Tenants `1..=hot` are the hot ones whose forwarded share is reported.
    pub hot: usize,
}

/// Counters of a cluster at one instant, summed over its nodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub local: u64,
    pub forwarded: u64,
    pub leased: u64,
    pub degraded: u64,
    /// Shard decisions plus leased spends, per node.
    pub decisions: Vec<u64>,
    pub snapshot_writes: u64,
    pub batches: (u64, u64),
    pub leases: (u64, u64),
    pub pulls: (u64, u64),
    pub pushes: (u64, u64),
}

impl Counters {
    pub fn of(cluster: &SimCluster) -> Counters {
        let mut c = Counters::default();
        for node in &cluster.nodes {
            let m = node.router.metrics();
            c.local += m.routed_local.get();
            c.forwarded += m.routed_forwarded.get();
            c.leased += m.routed_leased.get();
            c.degraded += m.routed_degraded.get();
            let shards = &node.router.local().metrics().shards;
            let decided: u64 = shards
                .iter()
                .flat_map(|s| s.decisions.iter())
                .flat_map(|d| d.iter())
                .map(|n| n.load(Relaxed))
                .sum();
            c.decisions.push(decided + m.routed_leased.get());
            c.snapshot_writes += shards
                .iter()
                .map(|s| s.snapshot_writes.load(Relaxed))
                .sum::<u64>();
        }
        let t = &cluster.net.traffic;
        c.batches = t.batches.get();
        c.leases = t.leases.get();
        c.pulls = t.pulls.get();
        c.pushes = t.pushes.get();
        c
    }
}

/// What one run of the load did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadFigures {
    pub checks: u64,
    /// Checks decided per wall second.
    pub achieved_rate: f64,
    pub allowed: u64,
    /// Checks answered with an error, and the first error.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Of all checks: decided where they arrived / by the owner / from a
    /// lease / degraded.
    pub local: u64,
    pub forwarded: u64,
    pub leased: u64,
    pub degraded: u64,
    /// Checks of the hot tenants, and how many of them were forwarded.
    pub hot_checks: u64,
    pub hot_forwarded: u64,
    /// Admitted checks of tenant 0 (the limited tenant in the tests).
    pub first_allowed: u64,
    /// Node-to-node calls and bytes: forwarded batches and token leases.
    pub batches: (u64, u64),
    pub leases: (u64, u64),
    /// Handoff: pulls by new owners, pushes by leavers.
    pub pulls: (u64, u64),
    pub pushes: (u64, u64),
    /// The busiest node's decisions over all decisions.
    pub busiest_share: f64,
    /// Buckets written to the cache layer per wall second.
    pub snapshot_writes_per_s: f64,
}

impl LoadFigures {
    fn diff(before: &Counters, after: &Counters) -> LoadFigures {
        let d = |a: (u64, u64), b: (u64, u64)| (a.0 - b.0, a.1 - b.1);
        let per_node: Vec<u64> = after
            .decisions
            .iter()
            .zip(before.decisions.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a - b)
            .collect();
        let all: u64 = per_node.iter().sum();
        LoadFigures {
            local: after.local - before.local,
            forwarded: after.forwarded - before.forwarded,
            leased: after.leased - before.leased,
            degraded: after.degraded - before.degraded,
            batches: d(after.batches, before.batches),
            leases: d(after.leases, before.leases),
            pulls: d(after.pulls, before.pulls),
            pushes: d(after.pushes, before.pushes),
            busiest_share: per_node.iter().copied().max().unwrap_or(0) as f64 / all.max(1) as f64,
            ..LoadFigures::default()
        }
    }

    /// Node-to-node round trips per check (forwarded batches and lease
    /// calls).
    pub fn calls_per_check(&self) -> f64 {
        (self.batches.0 + self.leases.0) as f64 / self.checks.max(1) as f64
    }

    /// Node-to-node bytes (both ways) per check.
    pub fn bytes_per_check(&self) -> f64 {
        (self.batches.1 + self.leases.1) as f64 / self.checks.max(1) as f64
    }

    pub fn share(&self, n: u64) -> f64 {
        n as f64 / self.checks.max(1) as f64
    }

    pub fn hot_forwarded_share(&self) -> f64 {
        self.hot_forwarded as f64 / self.hot_checks.max(1) as f64
    }
}

/// Ticks the offered load is spread over.
const TICK: Duration = Duration::from_millis(10);
/// Checks under way at most (clients waiting for an answer).
const MAX_IN_FLIGHT: usize = 512;

/// Runs `load` on `cluster`: each tick starts its share of checks and
/// collects the answers that are in.
pub async fn drive(cluster: &SimCluster, zipf: &Zipf, load: Load, rng: &mut SimRng) -> LoadFigures {
    let before = Counters::of(cluster);
    let started = Instant::now();
    let ticks = (load.duration.as_secs_f64() / TICK.as_secs_f64()).ceil() as u64;
    let per_tick = load.rate * TICK.as_secs_f64();
    let mut owed = 0.0;
    let mut in_flight = FuturesUnordered::new();
    let mut figures = LoadFigures::default();
    let record = |figures: &mut LoadFigures,
                  (k, r): (usize, Result<crate::Routed, crate::CheckError>)| {
        figures.checks += 1;
        let routed = match r {
            Ok(routed) => routed,
            Err(e) => {
                figures.errors += 1;
                figures.first_error.get_or_insert_with(|| e.to_string());
                return;
            }
        };
        let allowed = routed.verdict.is_allowed();
        figures.allowed += u64::from(allowed);
        if k == 0 {
            figures.first_allowed += u64::from(allowed);
        }
        if (1..=load.hot).contains(&k) {
            figures.hot_checks += 1;
            figures.hot_forwarded += u64::from(routed.route == Route::Forwarded);
        }
    };
    for tick in 1..=ticks {
        // Checks the machine could not start in time are dropped, not
        // piled up: a backlog would only time forwards out.
        owed = (owed + per_tick).min(per_tick * 2.0);
        while owed >= 1.0 && in_flight.len() < MAX_IN_FLIGHT {
            owed -= 1.0;
            let k = zipf.sample(rng);
            let router = cluster.nodes[rng.below(cluster.nodes.len())].router.clone();
            in_flight.push(async move { (k, router.check(&tenant(k), Limit::REQUESTS, 1).await) });
        }
        let next = tokio::time::Instant::from_std(started + TICK * tick as u32);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                Some(done) = in_flight.next() => record(&mut figures, done),
            }
        }
    }
    while let Some(done) = in_flight.next().await {
        record(&mut figures, done);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = Counters::of(cluster);
    let counted = LoadFigures::diff(&before, &after);
    LoadFigures {
        checks: figures.checks,
        achieved_rate: figures.checks as f64 / elapsed,
        allowed: figures.allowed,
        errors: figures.errors,
        first_error: figures.first_error,
        hot_checks: figures.hot_checks,
        hot_forwarded: figures.hot_forwarded,
        first_allowed: figures.first_allowed,
        snapshot_writes_per_s: (after.snapshot_writes - before.snapshot_writes) as f64 / elapsed,
        ..counted
    }
}
