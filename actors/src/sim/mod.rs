//! An in-process simulation of a cluster of N nodes (the `testing`
//! feature): the real ring ([`ring_moves`]), real membership over chitchat
//! on a simulated network with delay and loss ([`gossip_net`],
//! [`convergence`]), and real routers, shards and token leases wired through
//! in-process peers that count messages and bytes ([`net`], [`cluster`])
//! under a Zipf tenant workload ([`zipf`], [`workload`]). [`run`] measures
//! one cluster size ([`SimFigures`]); [`report`] prints the figures.

pub mod cluster;
pub mod convergence;
pub mod gossip_net;
pub mod net;
pub mod report;
pub mod ring_moves;
pub mod workload;
pub mod zipf;

use std::time::Duration;

use llmtrace_cluster_config::{Limit, RateLimitConfig, TenantOverride};

use crate::cluster::forwarder::BatchSettings;
use crate::cluster::token_leases::TokenLeaseSettings;
use crate::sim::cluster::{NodeSetup, SimCluster};
use crate::sim::convergence::{GossipFigures, GossipSettings};
use crate::sim::gossip_net::GossipFaults;
use crate::sim::net::SimNet;
use crate::sim::ring_moves::{busiest_key_share, moved, node_ids, Moved};
use crate::sim::workload::{drive, Load, LoadFigures};
use crate::sim::zipf::{tenant, SimRng, Zipf};

/// The lowest lease threshold simulated: demand is counted in 100 ms
/// windows, so below 20 forwards per second a single forward in a window
/// would make a bucket hot.
pub const MIN_THRESHOLD: u32 = 20;

/// Everything one simulated cluster size runs with.
#[derive(Debug, Clone, Copy)]
pub struct SimSettings {
    pub nodes: usize,
    pub seed: u64,
    pub tenants: usize,
    pub zipf_exponent: f64,
    /// The load of each run (leases off, leases on); the membership changes
    /// run a quarter of its duration each.
    pub load: Load,
    /// Token leases of the "on" run (a threshold scaled to `load.rate`).
    pub leases: TokenLeaseSettings,
    /// Round trip of a node-to-node call.
    pub latency: Duration,
    pub batch: BatchSettings,
    pub shards: usize,
    pub vnodes: u32,
    /// Burst of tenant 0, the hottest (a limited tenant; the others never
    /// run out).
    pub limited_burst: u32,
    pub snapshot_interval: Duration,
    pub gossip: GossipSettings,
    /// Keys sampled for the ring figures.
    pub ring_keys: usize,
}

/// What a membership change moved, on the real ring and in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub ring: Moved,
    /// Buckets resident just before the change, over the cluster.
    pub resident: i64,
    /// The load run right after the change (its pulls and pushes).
    pub after: LoadFigures,
}

/// Tenant 0's bucket after the leases-on run: what was admitted, and what
/// the owner's bucket holds once every lease went back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exactness {
    pub burst: u64,
    pub admitted: u64,
    pub level_after_returns: u64,
}

impl Exactness {
    /// No unit was admitted twice or lost: admitted plus what is left is
    /// the burst.
    pub fn holds(&self) -> bool {
        self.admitted + self.level_after_returns == self.burst
    }
}

/// The figures of one cluster size.
#[derive(Debug, Clone)]
pub struct SimFigures {
    pub settings: SimSettings,
    pub busiest_key_share: f64,
    pub gossip: GossipFigures,
    pub off: LoadFigures,
    pub on: LoadFigures,
    pub exactness: Exactness,
    pub join: Change,
    pub leave: Change,
    pub crash: Change,
}

fn limits(s: &SimSettings) -> RateLimitConfig {
    // The clock stands still: a bucket never refills, so the others get a
    // burst they cannot spend.
    let mut limits = RateLimitConfig::with_requests(1_000, 1_000_000_000);
    limits.tenant_overrides.insert(
        tenant(0),
        TenantOverride {
            requests_per_second: 1,
            burst_size: s.limited_burst,
        },
    );
    limits
}

fn setup(s: &SimSettings, leases: bool) -> NodeSetup {
    NodeSetup {
        shards: s.shards,
        vnodes: s.vnodes,
        batch: s.batch,
        leases: leases.then_some(s.leases),
        snapshot_interval: s.snapshot_interval,
    }
}

/// Leases on: the load, then every lease returned and tenant 0's bucket
/// read at its owner.
async fn leases_on(s: &SimSettings, zipf: &Zipf) -> (LoadFigures, Exactness) {
    let ids = node_ids(s.nodes);
    let cluster = SimCluster::start(&ids, setup(s, true), limits(s), SimNet::new(s.latency));
    let mut rng = SimRng::new(s.seed);
    let on = drive(&cluster, zipf, s.load, &mut rng).await;
    for node in &cluster.nodes {
        if let Some(leases) = node.router.token_leases() {
            leases.sweep(&node.router.view(), true);
        }
    }
    let t0 = tenant(0);
    let owner = cluster.nodes[0]
        .router
        .view()
        .owner(&t0, Limit::REQUESTS)
        .map(str::to_string);
    let owner = owner.and_then(|o| cluster.net.router(&o));
    let want = u64::from(s.limited_burst).saturating_sub(on.first_allowed);
    let mut level = u64::MAX;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Some(router) = &owner {
        let report = router.local().inspect(&t0, Limit::REQUESTS).await;
        level = report
            .ok()
            .flatten()
            .map_or(u64::MAX, |(_, r)| r.level / crate::NANOS);
        if level == want || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exactness = Exactness {
        burst: u64::from(s.limited_burst),
        admitted: on.first_allowed,
        level_after_returns: level,
    };
    (on, exactness)
}

/// Leases off: the load, then a join, a leave and a crash, each followed by
/// a short load.
async fn leases_off(s: &SimSettings, zipf: &Zipf) -> (LoadFigures, [Change; 3]) {
    let ids = node_ids(s.nodes);
    let mut cluster = SimCluster::start(&ids, setup(s, false), limits(s), SimNet::new(s.latency));
    let mut rng = SimRng::new(s.seed);
    let off = drive(&cluster, zipf, s.load, &mut rng).await;
    let short = Load {
        duration: s.load.duration / 4,
        ..s.load
    };
    let keys = s.ring_keys;
    let joiner = "node-new".to_string();
    let ring = moved(&cluster_ids(&cluster), &joiner, true, s.vnodes, keys);
    let resident = cluster.resident();
    cluster.join(&joiner);
    let join = Change {
        ring,
        resident,
        after: drive(&cluster, zipf, short, &mut rng).await,
    };
    let leaver = cluster.nodes[0].id.clone();
    let ring = moved(&cluster_ids(&cluster), &leaver, false, s.vnodes, keys);
    let resident = cluster.resident();
    let before = workload::Counters::of(&cluster);
    cluster.leave(0).await;
    let mut after = drive(&cluster, zipf, short, &mut rng).await;
    let now = workload::Counters::of(&cluster);
    after.pushes = (
        now.pushes.0 - before.pushes.0,
        now.pushes.1 - before.pushes.1,
    );
    let leave = Change {
        ring,
        resident,
        after,
    };
    let crashed = cluster.nodes[0].id.clone();
    let ring = moved(&cluster_ids(&cluster), &crashed, false, s.vnodes, keys);
    let resident = cluster.resident();
    cluster.crash(0);
    let crash = Change {
        ring,
        resident,
        after: drive(&cluster, zipf, short, &mut rng).await,
    };
    (off, [join, leave, crash])
}

fn cluster_ids(c: &SimCluster) -> Vec<String> {
    c.nodes.iter().map(|n| n.id.clone()).collect()
}

/// Runs one cluster size: the ring, gossip on a paused clock, then the
/// load with token leases off and on (each in an actix system of its own).
pub fn run(s: SimSettings) -> anyhow::Result<SimFigures> {
    let ids = node_ids(s.nodes);
    let busiest_key_share = busiest_key_share(&ids, s.vnodes, s.ring_keys);
    let gossip = convergence::run(GossipSettings {
        nodes: s.nodes,
        ..s.gossip
    })?;
    let zipf = Zipf::new(s.tenants, s.zipf_exponent);
    let (off, [join, leave, crash]) = actix::System::new().block_on(leases_off(&s, &zipf));
    // The threshold was scaled to the offered rate; a machine that managed
    // less scales it to what it managed.
    let mut s = s;
    let managed = off.achieved_rate.min(s.load.rate) / s.load.rate;
    s.leases.threshold =
        ((f64::from(s.leases.threshold) * managed).round() as u32).max(MIN_THRESHOLD);
    let (on, exactness) = actix::System::new().block_on(leases_on(&s, &zipf));
    Ok(SimFigures {
        settings: s,
        busiest_key_share,
        gossip,
        off,
        on,
        exactness,
        join,
        leave,
        crash,
    })
}

impl SimSettings {
    /// The defaults of a node (gossip interval, phi threshold, vnodes, batch
    /// size and wait, snapshot interval, lease lifetime) at `nodes` nodes,
    /// a load of `rate` checks per second for `duration`, and a lease
    /// threshold scaled from the node's default (500 forwards per second of
    /// one bucket at `deployment_rate` checks per second) to `rate`: a
    /// bucket is then leased above the same share of a node's checks. The
    /// threshold is at least [`MIN_THRESHOLD`].
    pub fn defaults(nodes: usize, rate: f64, duration: Duration, deployment_rate: f64) -> Self {
        use llmtrace_cluster_config::cluster as c;
        let threshold = (f64::from(c::DEFAULT_TOKEN_LEASE_THRESHOLD) * rate / deployment_rate)
            .round()
            .max(f64::from(MIN_THRESHOLD)) as u32;
        let interval = Duration::from_millis(c::DEFAULT_GOSSIP_INTERVAL_MS);
        SimSettings {
            nodes,
            seed: 14,
            tenants: 100_000,
            zipf_exponent: 1.1,
            load: Load {
                rate,
                duration,
                hot: 10,
            },
            leases: TokenLeaseSettings {
                threshold,
                ttl: Duration::from_millis(c::DEFAULT_TOKEN_LEASE_MS),
            },
            latency: Duration::from_millis(1),
            batch: BatchSettings {
                max_items: c::DEFAULT_FORWARD_BATCH_MAX,
                max_wait: Duration::from_micros(c::DEFAULT_FORWARD_BATCH_WAIT_US),
            },
            shards: 1,
            vnodes: llmtrace_cluster_config::ring::DEFAULT_VNODES,
            limited_burst: 500,
            snapshot_interval: Duration::from_millis(
                llmtrace_cluster_config::node::DEFAULT_SNAPSHOT_INTERVAL_MS,
            ),
            gossip: GossipSettings {
                nodes,
                interval,
                phi_threshold: c::DEFAULT_PHI_THRESHOLD,
                vnodes: llmtrace_cluster_config::ring::DEFAULT_VNODES,
                faults: GossipFaults {
                    delay: Duration::from_millis(1),
                    loss: 0.01,
                    seed: 14,
                },
                max_wait: Duration::from_secs(120),
                rest: Duration::from_secs(10),
            },
            ring_keys: 100_000,
        }
    }
}

#[cfg(test)]
mod tests;
