//! A simulated cluster of routers: each node has real shards (hosted on the
//! simulation's thread, deciding by one manual clock that stands still, so a
//! bucket's budget is exactly its burst), a real router, token leases when
//! on, and a view this module sets (every node agrees at once: how long
//! agreeing takes is [`super::convergence`]'s part). All nodes snapshot to
//! one shared in-memory cache layer, the simulation's Redis. Membership
//! changes move buckets as a node does: a joiner pulls, a leaver pushes, a
//! crashed node's buckets come back from the cache layer.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use llmtrace_cluster_config::{OwnerUnreachable, RateLimitConfig};

use crate::cache::{CacheLayer, InMemoryCacheLayer};
use crate::cluster::forwarder::{BatchSettings, PeerClient};
use crate::cluster::handoff_client::HANDOFF_WINDOW;
use crate::cluster::router::{ClientFactory, Router, RouterSettings};
use crate::cluster::rpc::wire::{self, InstallRequest, MAX_INSTALL_ITEMS};
use crate::cluster::token_leases::{TokenLeaseSettings, TokenLeases};
use crate::cluster::view::{ClusterView, Member, MemberState, ViewHandle};
use crate::core::clock::ManualClock;
use crate::core::fence::Fence;
use crate::core::key::BucketKey;
use crate::local::limiter::Limiter;
use crate::shard::{OwnerOf, Ownership, ShardTiming};
use crate::sim::net::{SimHandoff, SimNet, SimPeer};

/// How each simulated node is set up.
#[derive(Debug, Clone, Copy)]
pub struct NodeSetup {
    pub shards: usize,
    pub vnodes: u32,
    pub batch: BatchSettings,
    /// Token leases on, with these settings.
    pub leases: Option<TokenLeaseSettings>,
    pub snapshot_interval: Duration,
}

/// One simulated node.
pub struct SimNode {
    pub id: String,
    pub router: Router,
    pub view: ViewHandle,
}

/// The simulated cluster.
pub struct SimCluster {
    pub net: SimNet,
    pub nodes: Vec<SimNode>,
    setup: NodeSetup,
    limits: Arc<RateLimitConfig>,
    clock: Arc<ManualClock>,
    cache: Arc<dyn CacheLayer>,
}

fn member(id: &str) -> Member {
    let n: u16 = id
        .bytes()
        .fold(0u16, |h, b| h.wrapping_mul(31).wrapping_add(u16::from(b)));
    Member {
        node_id: id.to_string(),
        generation: 1,
        state: MemberState::Ready,
        public_addr: None,
        cluster_addr: ([10, 0, (n >> 8) as u8, n as u8], 7946).into(),
        admin_addr: None,
        fingerprint: None,
    }
}

impl SimCluster {
    /// Starts `ids` as one agreed cluster. Call inside an actix system.
    pub fn start(
        ids: &[String],
        setup: NodeSetup,
        limits: RateLimitConfig,
        net: SimNet,
    ) -> SimCluster {
        let clock = ManualClock::new(1_700_000_000_000_000_000);
        let mut cluster = SimCluster {
            net,
            nodes: Vec::new(),
            setup,
            limits: Arc::new(limits),
            cache: Arc::new(InMemoryCacheLayer::new(clock.clone())),
            clock,
        };
        for id in ids {
            let node = cluster.start_node(id);
            cluster.nodes.push(node);
        }
        cluster.set_members(ids, &[]);
        // A cluster up for long: its nodes joined before the handoff window
        // (a node that just joined asks every member for each moved key).
        let long_ago = std::time::Instant::now().checked_sub(HANDOFF_WINDOW * 2);
        for node in &cluster.nodes {
            let mut view = ClusterView::clone(&node.view.load());
            view.joined_at = long_ago;
            node.view.store(view);
        }
        cluster
    }

    fn start_node(&self, id: &str) -> SimNode {
        let view = ViewHandle::new(ClusterView::alone(id, self.setup.vnodes));
        let fence = Fence::open();
        let handoff = SimHandoff {
            view: view.clone(),
            fence: Arc::clone(&fence),
            net: self.net.clone(),
        };
        let timing = ShardTiming {
            write_behind: true,
            snapshot_interval: self.setup.snapshot_interval,
            token_lease_horizon: self.setup.leases.map_or(Duration::ZERO, |l| l.horizon()),
            ..ShardTiming::default()
        };
        let ownership = Ownership {
            handoff: Some(Arc::new(handoff)),
            fence,
        };
        let (limiter, host) = Limiter::hosted(
            self.setup.shards,
            1,
            Arc::clone(&self.limits),
            Arc::clone(&self.cache),
            self.clock.clone(),
            timing,
            ownership,
        );
        host.host_here();
        let net = self.net.clone();
        let factory: ClientFactory = Arc::new(move |m: &Member| {
            Box::new(SimPeer {
                target: m.node_id.clone(),
                net: net.clone(),
            }) as Box<dyn PeerClient>
        });
        let settings = RouterSettings {
            batch: self.setup.batch,
            forward_timeout: Duration::from_millis(500),
            on_owner_unreachable: OwnerUnreachable::Local,
        };
        let mut router = Router::new(limiter, view.clone(), settings, Arc::default(), factory);
        if let Some(lease) = self.setup.leases {
            let leases = TokenLeases::new(lease, self.net.lease_call());
            router = router.with_token_leases(Arc::clone(&leases));
            actix::spawn(leases.run_sweeper(router.clone()));
        }
        let mut registry = self.net.registry.write().unwrap_or_else(|p| p.into_inner());
        registry.insert(id.to_string(), router.clone());
        SimNode {
            id: id.to_string(),
            router,
            view,
        }
    }

    /// Every node's view: `ready` own keys, `leaving` are members that no
    /// longer do (the rings replaced are kept, for handoff).
    fn set_members(&self, ready: &[String], leaving: &[String]) {
        let mut members: Vec<Member> = ready.iter().map(|id| member(id)).collect();
        members.extend(leaving.iter().map(|id| Member {
            state: MemberState::Leaving,
            ..member(id)
        }));
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        for node in &self.nodes {
            let next = ClusterView::from_members(&node.id, members.clone(), self.setup.vnodes)
                .succeeding(&node.view.load());
            node.view.store(next);
        }
    }

    fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// A new node joins; it pulls the buckets it now owns on their first
    /// check.
    pub fn join(&mut self, id: &str) {
        let node = self.start_node(id);
        self.nodes.push(node);
        self.set_members(&self.ids(), &[]);
    }

    /// Node `i` leaves: it announces it, then pushes every bucket it holds
    /// to its new owner (one install call per owner and chunk).
    pub async fn leave(&mut self, i: usize) {
        let id = self.nodes[i].id.clone();
        let ready: Vec<String> = self.ids().into_iter().filter(|n| *n != id).collect();
        self.set_members(&ready, std::slice::from_ref(&id));
        let leaver = self.nodes.remove(i);
        let view = leaver.view.clone();
        let owner_of: OwnerOf = Arc::new(move |key: &BucketKey| {
            let v = view.load();
            v.owner(&key.tenant, key.limit)
                .filter(|o| !v.is_self(o))
                .map(Arc::from)
        });
        let buckets = leaver.router.local().take_all(owner_of).await;
        let view = leaver.view.load_full();
        let mut by_owner: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for (key, state) in buckets {
            if let Some(owner) = view.owner(&key.tenant, key.limit) {
                by_owner
                    .entry(owner.to_string())
                    .or_default()
                    .push((key, state));
            }
        }
        for (owner, items) in by_owner {
            let Some(target) = self.net.router(&owner) else {
                continue;
            };
            for chunk in items.chunks(MAX_INSTALL_ITEMS) {
                let push = InstallRequest {
                    origin: id.clone(),
                    buckets: chunk
                        .iter()
                        .map(|(k, s)| (k.tenant.to_string(), k.limit.as_str().into(), s.clone()))
                        .collect(),
                };
                self.net.traffic.pushes.count(wire::encode(&push).len());
                for (key, state) in chunk {
                    let _ = target.local().install(key.clone(), state.clone()).await;
                }
            }
        }
        self.drop_node(&id);
        self.set_members(&ready, &[]);
    }

    /// Node `i` crashes: gone without a word; the others drop it from their
    /// rings and restore its buckets from the cache layer.
    pub fn crash(&mut self, i: usize) {
        let id = self.nodes.remove(i).id;
        self.drop_node(&id);
        self.set_members(&self.ids(), &[]);
    }

    fn drop_node(&self, id: &str) {
        let mut registry = self.net.registry.write().unwrap_or_else(|p| p.into_inner());
        registry.remove(id);
    }

    /// Buckets held in memory, over every node.
    pub fn resident(&self) -> i64 {
        self.nodes
            .iter()
            .flat_map(|n| n.router.local().metrics().shards.iter())
            .map(|s| s.resident.load(Relaxed))
            .sum()
    }
}
