//! Ring convergence on real membership: N nodes run [`Membership`] (real
//! chitchat, the real view logic) over the simulated [`GossipNet`], on a
//! paused tokio clock (time only passes while every node waits, so the
//! figures are in simulated time and a run is quick). Measured: how long
//! after a bootstrap, a join, a leave and a crash every node's ring is the
//! expected one and agreed by all, and the gossip each node sends per second
//! at rest.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use llmtrace_cluster_config::RuntimeLimits;
use tokio::time::Instant;

use crate::cluster::gossip::{Membership, MembershipSettings};
use crate::cluster::view::{ClusterView, MemberState};
use crate::sim::gossip_net::{GossipFaults, GossipNet};
use crate::sim::ring_moves::node_ids;

/// How the gossip part of a simulation runs.
#[derive(Debug, Clone, Copy)]
pub struct GossipSettings {
    pub nodes: usize,
    pub interval: Duration,
    pub phi_threshold: f64,
    pub vnodes: u32,
    pub faults: GossipFaults,
    /// Longest simulated wait for one convergence.
    pub max_wait: Duration,
    /// Simulated time over which gossip bytes at rest are measured.
    pub rest: Duration,
}

/// Simulated time until every node agreed on the expected ring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Converged {
    pub ms: f64,
    /// `ms` in gossip intervals.
    pub rounds: f64,
    /// False when `max_wait` passed first.
    pub done: bool,
}

/// The gossip figures of one cluster size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GossipFigures {
    pub bootstrap: Converged,
    pub join: Converged,
    pub leave: Converged,
    pub crash: Converged,
    /// At rest, per node: bytes and datagrams sent per second.
    pub bytes_per_node_s: f64,
    pub messages_per_node_s: f64,
    /// The busiest node's bytes per second at rest.
    pub max_bytes_per_node_s: f64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))
}

struct Node {
    id: String,
    membership: Membership,
}

async fn start(net: &GossipNet, s: &GossipSettings, i: usize, id: &str) -> anyhow::Result<Node> {
    let settings = MembershipSettings {
        node_id: id.to_string(),
        generation: 1,
        listen: addr(i),
        advertise: addr(i),
        public_addr: addr(i),
        admin_addr: addr(i),
        seeds: if i == 0 {
            Vec::new()
        } else {
            vec![addr(0).to_string()]
        },
        secret: None,
        vnodes: s.vnodes,
        gossip_interval: s.interval,
        phi_threshold: s.phi_threshold,
        fence: Duration::ZERO,
        runtime: RuntimeLimits::new(),
    };
    let membership = Membership::start_on(settings, Arc::default(), net).await?;
    Ok(Node {
        id: id.to_string(),
        membership,
    })
}

/// Every node's ring holds exactly `expected` and is agreed by its members.
fn converged(nodes: &[Node], expected: &BTreeSet<String>) -> bool {
    nodes.iter().all(|n| {
        let view: Arc<ClusterView> = n.membership.view().load_full();
        view.agreed()
            && view.ring.members().len() == expected.len()
            && view.ring.members().iter().all(|m| expected.contains(m))
    })
}

/// Waits (in simulated time) until [`converged`]; checked every 5 ms.
async fn wait_converged(
    nodes: &[Node],
    expected: &BTreeSet<String>,
    s: &GossipSettings,
) -> Converged {
    let started = Instant::now();
    let done = loop {
        if converged(nodes, expected) {
            break true;
        }
        if started.elapsed() > s.max_wait {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let ms = started.elapsed().as_secs_f64() * 1e3;
    Converged {
        ms,
        rounds: ms / (s.interval.as_secs_f64() * 1e3),
        done,
    }
}

fn ids_of(nodes: &[Node]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.id.clone()).collect()
}

/// Runs the gossip part at `s.nodes` nodes: bootstrap, rest, join, leave,
/// crash. Needs a tokio runtime with a paused clock (see [`run`]).
async fn scenario(s: GossipSettings) -> anyhow::Result<GossipFigures> {
    let net = GossipNet::new(s.faults);
    let ids = node_ids(s.nodes + 1);
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().take(s.nodes).enumerate() {
        let node = start(&net, &s, i, id).await?;
        node.membership.set_state(MemberState::Ready).await;
        nodes.push(node);
    }
    let bootstrap = wait_converged(&nodes, &ids_of(&nodes), &s).await;

    // At rest: what each node sends per second.
    let before = net.sent();
    tokio::time::sleep(s.rest).await;
    let after = net.sent();
    let secs = s.rest.as_secs_f64();
    let per_node: Vec<(f64, f64)> = after
        .iter()
        .map(|(a, sent)| {
            let b = before.get(a).copied().unwrap_or_default();
            (
                (sent.bytes - b.bytes) as f64 / secs,
                (sent.messages - b.messages) as f64 / secs,
            )
        })
        .collect();
    let n = per_node.len().max(1) as f64;
    let bytes_per_node_s = per_node.iter().map(|p| p.0).sum::<f64>() / n;
    let messages_per_node_s = per_node.iter().map(|p| p.1).sum::<f64>() / n;
    let max_bytes_per_node_s = per_node.iter().map(|p| p.0).fold(0.0, f64::max);

    // A join, as a node joins: caught up first, then ready.
    let started = Instant::now();
    let joiner = start(&net, &s, s.nodes, &ids[s.nodes]).await?;
    joiner
        .membership
        .wait_until(s.max_wait, ClusterView::caught_up)
        .await;
    joiner.membership.set_state(MemberState::Ready).await;
    nodes.push(joiner);
    let mut join = wait_converged(&nodes, &ids_of(&nodes), &s).await;
    join.ms = started.elapsed().as_secs_f64() * 1e3;
    join.rounds = join.ms / (s.interval.as_secs_f64() * 1e3);

    // A leave: the node announces it, the others drop it from their rings.
    let leaver = nodes.remove(1);
    leaver.membership.set_state(MemberState::Leaving).await;
    let leave = wait_converged(&nodes, &ids_of(&nodes), &s).await;
    leaver.membership.shutdown().await;

    // A crash: gossip stops without a word; failure detection removes it.
    let crashed = nodes.remove(2);
    crashed.membership.shutdown().await;
    let crash = wait_converged(&nodes, &ids_of(&nodes), &s).await;

    for node in nodes {
        node.membership.shutdown().await;
    }
    Ok(GossipFigures {
        bootstrap,
        join,
        leave,
        crash,
        bytes_per_node_s,
        messages_per_node_s,
        max_bytes_per_node_s,
    })
}

/// Runs the gossip part on a runtime of its own whose clock is paused.
pub fn run(s: GossipSettings) -> anyhow::Result<GossipFigures> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    rt.block_on(scenario(s))
}
