//! Membership over chitchat gossip (UDP, on the cluster port): [`Membership`]
//! publishes this node's state and keeps the [`ViewHandle`] current as the
//! live set changes.
//!
//! Each node publishes under its chitchat id (node id, generation = start
//! time in ms, gossip address) the keys `state`, `public_addr`,
//! `cluster_addr`, `admin_addr` and `fingerprint` (of its current ring), so
//! any node can tell whether all members agree on the ring.
//!
//! Every datagram is sealed with a key derived from the cluster secret
//! ([`SealedUdpTransport`]): a node with another secret, or none, is never
//! heard, and chitchat's cluster id is a constant.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};
use llmtrace_cluster_config::{Fingerprint, RuntimeLimits};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::control::ClusterControl;
use crate::cluster::gossip_transport::SealedUdpTransport;
use crate::cluster::view::{ClusterView, Member, MemberState, ViewHandle};
use crate::core::fence::Fence;
use crate::metrics::ClusterMetrics;

/// How a node takes part in gossip.
#[derive(Debug, Clone)]
pub struct MembershipSettings {
    pub node_id: String,
    /// Start time in ms since the epoch: a restarted node is a new generation.
    pub generation: u64,
    /// UDP address to bind for gossip.
    pub listen: SocketAddr,
    /// Address peers gossip to and send RPCs to.
    pub advertise: SocketAddr,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub seeds: Vec<String>,
    /// The cluster secret: gossip is sealed with a key derived from it.
    pub secret: Option<String>,
    pub vnodes: u32,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// How long after last hearing from a majority of its ring this node
    /// keeps deciding (see [`crate::cluster::freshness`]); zero: never
    /// fenced.
    pub fence: Duration,
    /// Where the merged runtime limit overrides are installed.
    pub runtime: RuntimeLimits,
}

/// chitchat's cluster id; clusters are kept apart by their secrets.
const CLUSTER_ID: &str = "llmtrace";

const KEY_STATE: &str = "state";
const KEY_PUBLIC: &str = "public_addr";
const KEY_CLUSTER: &str = "cluster_addr";
const KEY_ADMIN: &str = "admin_addr";
const KEY_FINGERPRINT: &str = "fingerprint";

/// A running membership: gossip plus the task that keeps the view current.
pub struct Membership {
    handle: ChitchatHandle,
    view: ViewHandle,
    changes: watch::Receiver<Fingerprint>,
    settings: MembershipSettings,
    control: ClusterControl,
    fence: Arc<Fence>,
    /// Stops the fence's ticker.
    stop_fence: Arc<AtomicBool>,
}

fn member_of(id: &ChitchatId, state: &NodeState) -> Option<Member> {
    let cluster_addr = state
        .get(KEY_CLUSTER)
        .and_then(|s| s.parse().ok())
        .unwrap_or(id.gossip_advertise_addr);
    Some(Member {
        node_id: id.node_id.to_string(),
        generation: id.generation_id,
        state: MemberState::parse(state.get(KEY_STATE)?)?,
        public_addr: state.get(KEY_PUBLIC).and_then(|s| s.parse().ok()),
        cluster_addr,
        admin_addr: state.get(KEY_ADMIN).and_then(|s| s.parse().ok()),
        fingerprint: state.get(KEY_FINGERPRINT).map(str::to_string),
    })
}

/// Members from chitchat's live set: newest generation per node id.
fn members_of(live: &BTreeMap<ChitchatId, NodeState>) -> Vec<Member> {
    let mut by_id: BTreeMap<String, Member> = BTreeMap::new();
    for (id, state) in live {
        let Some(m) = member_of(id, state) else {
            continue;
        };
        match by_id.get(&m.node_id) {
            Some(old) if old.generation >= m.generation => {}
            _ => {
                by_id.insert(m.node_id.clone(), m);
            }
        }
    }
    by_id.into_values().collect()
}

impl Membership {
    /// Starts gossip (state `joining`) and the view-maintenance task. Must be
    /// called inside the Tokio runtime that lives as long as the node.
    pub async fn start(
        settings: MembershipSettings,
        metrics: Arc<ClusterMetrics>,
    ) -> anyhow::Result<Membership> {
        let transport = SealedUdpTransport::new(settings.secret.as_deref(), Arc::clone(&metrics));
        Self::start_on(settings, metrics, &transport).await
    }

    /// [`Membership::start`] over another gossip transport (the simulation
    /// runs many nodes over an in-memory one).
    pub async fn start_on(
        settings: MembershipSettings,
        metrics: Arc<ClusterMetrics>,
        transport: &dyn chitchat::transport::Transport,
    ) -> anyhow::Result<Membership> {
        let interval = settings.gossip_interval;
        let failure_detector_config = FailureDetectorConfig {
            phi_threshold: settings.phi_threshold,
            sampling_window_size: 1_000,
            max_interval: Duration::from_secs(10),
            // Before a peer's heartbeat intervals are known, assume a few
            // gossip rounds, so a node that dies right after joining is still
            // detected within seconds.
            initial_interval: (interval * 5).max(Duration::from_millis(500)),
            dead_node_grace_period: Duration::from_secs(3600),
        };
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                settings.node_id.clone(),
                settings.generation,
                settings.advertise,
            ),
            cluster_id: CLUSTER_ID.to_string(),
            gossip_interval: interval,
            listen_addr: settings.listen,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial = vec![
            (
                KEY_STATE.to_string(),
                MemberState::Joining.as_str().to_string(),
            ),
            (KEY_PUBLIC.to_string(), settings.public_addr.to_string()),
            (KEY_CLUSTER.to_string(), settings.advertise.to_string()),
            (KEY_ADMIN.to_string(), settings.admin_addr.to_string()),
        ];
        let handle = spawn_chitchat(config, initial, transport).await?;
        let view = ViewHandle::new(ClusterView::alone(&settings.node_id, settings.vnodes));
        let (tx, changes) = watch::channel(Fingerprint::default());
        let chitchat = handle.chitchat();
        let mut live = chitchat.lock().await.live_nodes_watcher();
        let control =
            ClusterControl::start(Arc::clone(&chitchat), settings.runtime.clone(), interval);
        let stop_fence = Arc::new(AtomicBool::new(false));
        let fence = if settings.fence.is_zero() {
            Fence::open()
        } else {
            let fence = Fence::leased(settings.fence);
            crate::cluster::freshness::spawn(
                Arc::clone(&chitchat),
                view.clone(),
                Arc::clone(&fence),
                settings.fence,
                Arc::clone(&metrics),
                Arc::clone(&stop_fence),
            )?;
            fence
        };
        let task_control = control.clone();
        let task_view = view.clone();
        let (self_id, vnodes) = (settings.node_id.clone(), settings.vnodes);
        tokio::spawn(async move {
            let mut published = String::new();
            loop {
                let (members, table) = {
                    let live_now = live.borrow_and_update();
                    (members_of(&live_now), ClusterControl::published(&live_now))
                };
                task_control.adopt_overrides(table).await;
                let next = ClusterView::from_members(&self_id, members, vnodes)
                    .succeeding(&task_view.load());
                let fp = next.fingerprint();
                let changed = task_view.load().fingerprint() != fp;
                metrics.ring_members.set(next.ring.members().len() as i64);
                metrics.live_members.set(next.members.len() as i64);
                if changed {
                    metrics.ring_changes.inc();
                    info!(
                        fingerprint = %fp,
                        members = ?next.ring.members(),
                        "ring rebuilt"
                    );
                }
                task_view.store(next);
                let fp_text = fp.to_string();
                if fp_text != published {
                    chitchat
                        .lock()
                        .await
                        .self_node_state()
                        .set(KEY_FINGERPRINT, &fp_text);
                    published = fp_text;
                }
                let _ = tx.send(fp);
                if live.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Membership {
            handle,
            view,
            changes,
            settings,
            control,
            fence,
            stop_fence,
        })
    }

    /// The gate of this node's decisions, kept open while its view is fresh.
    pub fn fence(&self) -> Arc<Fence> {
        Arc::clone(&self.fence)
    }

    pub fn view(&self) -> ViewHandle {
        self.view.clone()
    }

    /// Overrides and liveness for the admin API.
    pub fn control(&self) -> ClusterControl {
        self.control.clone()
    }

    pub fn settings(&self) -> &MembershipSettings {
        &self.settings
    }

    /// Publishes this node's state.
    pub async fn set_state(&self, state: MemberState) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(KEY_STATE, state.as_str()))
            .await;
    }

    /// Waits until another live member is seen or `timeout` passes; true when
    /// a peer was seen. A node without seeds returns at once.
    pub async fn wait_for_peers(&self, timeout: Duration) -> bool {
        if self.settings.seeds.is_empty() {
            return false;
        }
        let chitchat = self.handle.chitchat();
        let mut live = chitchat.lock().await.live_nodes_watcher();
        let seen = tokio::time::timeout(timeout, async {
            loop {
                if live.borrow_and_update().len() > 1 {
                    return;
                }
                if live.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok();
        if !seen {
            warn!(seeds = ?self.settings.seeds, "no peer answered within {timeout:?}; starting as a cluster of one");
        }
        seen
    }

    /// Resolves once `cond` holds for this node's view (checked now and at
    /// every view change); false when `timeout` passed first. The
    /// conditions a node waits for are [`ClusterView::caught_up`],
    /// [`ClusterView::self_ready`] and [`ClusterView::left`].
    pub async fn wait_until(&self, timeout: Duration, cond: fn(&ClusterView) -> bool) -> bool {
        let mut changes = self.changes.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if cond(&self.view.load()) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Stops gossiping (peers then detect the node as gone).
    pub async fn shutdown(self) {
        self.stop_fence.store(true, Ordering::Relaxed);
        if let Err(e) = self.handle.shutdown().await {
            warn!("gossip shutdown: {e}");
        }
    }
}
