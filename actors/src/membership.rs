//! Cluster membership over chitchat gossip (UDP, on the cluster port), and
//! the [`ClusterView`] built from it: the members, their addresses and state,
//! and the hash ring of the *ready* ones. A view is immutable; every change
//! of the live set or of a member's keys builds a new one and swaps it in.
//!
//! Each node publishes under its chitchat id (node id, generation = start
//! time in ms, gossip address) the keys `state`, `public_addr`,
//! `cluster_addr`, `admin_addr` and `fingerprint` (of its current ring), so
//! any node can tell whether all members agree on the ring.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
};
use llmtrace_cluster_config::{Fingerprint, Limit, Ring, RuntimeLimits};
use std::sync::atomic::Ordering::Relaxed;

use crate::cluster_metrics::ClusterMetrics;
use crate::overrides::{self, OverrideEntry, OverrideTable, GOSSIP_PREFIX};
use tokio::sync::watch;
use tracing::{info, warn};

/// Lifecycle of a member. Only `Ready` members own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Joining,
    Ready,
    Leaving,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Ready => "ready",
            MemberState::Leaving => "leaving",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "joining" => Some(MemberState::Joining),
            "ready" => Some(MemberState::Ready),
            "leaving" => Some(MemberState::Leaving),
            _ => None,
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One live member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub node_id: String,
    pub generation: u64,
    pub state: MemberState,
    pub public_addr: Option<SocketAddr>,
    pub cluster_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The ring fingerprint this member last published.
    pub fingerprint: Option<String>,
}

/// An immutable view of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub self_id: Arc<str>,
    /// The ring of ready members.
    pub ring: Ring,
    /// Every live member (any state), sorted by node id.
    pub members: Vec<Member>,
    /// Rings in force before the current one, newest first, each with the
    /// instant it was replaced (kept for [`HISTORY_KEEP`]): a bucket that
    /// moved is fetched from a previous owner (handoff). Several changes can
    /// follow each other within a second (a node joining sees the members
    /// one by one), so one previous ring is not enough.
    pub history: Vec<(Ring, std::time::Instant)>,
    /// When this node first saw itself in its own ring.
    pub joined_at: Option<std::time::Instant>,
}

/// How long replaced rings are remembered.
pub const HISTORY_KEEP: Duration = Duration::from_secs(30);
/// At most this many replaced rings are remembered.
const HISTORY_MAX: usize = 16;

impl ClusterView {
    /// A view with only this node, not yet ready: an empty ring.
    pub fn alone(self_id: &str, vnodes: u32) -> Self {
        ClusterView {
            self_id: self_id.into(),
            ring: Ring::new(Vec::<String>::new(), vnodes),
            members: Vec::new(),
            history: Vec::new(),
            joined_at: None,
        }
    }

    /// Builds a view from members (the ring from the ready ones).
    pub fn from_members(self_id: &str, members: Vec<Member>, vnodes: u32) -> Self {
        let ready = members
            .iter()
            .filter(|m| m.state == MemberState::Ready)
            .map(|m| m.node_id.clone());
        ClusterView {
            self_id: self_id.into(),
            ring: Ring::new(ready, vnodes),
            members,
            history: Vec::new(),
            joined_at: None,
        }
    }

    /// Carries the ring history over from `before`: when the ring changed,
    /// `before`'s ring joins the history.
    pub fn succeeding(mut self, before: &ClusterView) -> Self {
        let now = std::time::Instant::now();
        self.joined_at = before
            .joined_at
            .or_else(|| self.ring.contains(&self.self_id).then_some(now));
        let mut history = before.history.clone();
        if before.fingerprint() != self.fingerprint() && !before.ring.is_empty() {
            history.insert(0, (before.ring.clone(), now));
        }
        history.retain(|(_, at)| at.elapsed() <= HISTORY_KEEP);
        history.truncate(HISTORY_MAX);
        self.history = history;
        self
    }

    /// The owners of `(tenant, limit)` by the rings replaced less than
    /// `window` ago, newest first, each once.
    pub fn previous_owners(&self, tenant: &str, limit: Limit, window: Duration) -> Vec<&str> {
        let mut owners: Vec<&str> = Vec::new();
        for (ring, at) in &self.history {
            if at.elapsed() > window {
                break;
            }
            if let Some(o) = ring.owner(tenant, limit) {
                if !owners.contains(&o) {
                    owners.push(o);
                }
            }
        }
        owners
    }

    /// This node entered its own ring less than `window` ago.
    pub fn joined_within(&self, window: Duration) -> bool {
        self.joined_at.is_some_and(|at| at.elapsed() <= window)
    }

    /// The owner of `(tenant, limit)`, `None` while no member is ready.
    pub fn owner(&self, tenant: &str, limit: Limit) -> Option<&str> {
        self.ring.owner(tenant, limit)
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.ring.fingerprint()
    }

    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }

    pub fn is_self(&self, node_id: &str) -> bool {
        *self.self_id == *node_id
    }

    /// True when every other ready member published this view's
    /// fingerprint (this node's own view is the reference).
    pub fn agreed(&self) -> bool {
        let mine = self.fingerprint().to_string();
        self.members
            .iter()
            .filter(|m| m.state == MemberState::Ready && *m.node_id != *self.self_id)
            .all(|m| m.fingerprint.as_deref() == Some(mine.as_str()))
    }
}

/// Shared, swappable current view. Cheap to clone and to read.
#[derive(Clone)]
pub struct ViewHandle(Arc<ArcSwap<ClusterView>>);

impl ViewHandle {
    pub fn new(view: ClusterView) -> Self {
        ViewHandle(Arc::new(ArcSwap::from_pointee(view)))
    }

    /// The current view, without touching its reference count (the hot
    /// path reads this on every check).
    pub fn load(&self) -> arc_swap::Guard<Arc<ClusterView>> {
        self.0.load()
    }

    /// The current view as an owned `Arc`.
    pub fn load_full(&self) -> Arc<ClusterView> {
        self.0.load_full()
    }

    pub fn store(&self, view: ClusterView) {
        self.0.store(Arc::new(view));
    }
}

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
    /// Nodes only talk to nodes of the same cluster id.
    pub cluster_id: String,
    pub vnodes: u32,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// Where the merged runtime limit overrides are installed.
    pub runtime: RuntimeLimits,
}

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
}

type Chitchat = Arc<tokio::sync::Mutex<chitchat::Chitchat>>;

/// What the admin API needs from membership: the override table (read and
/// publish) and when each member was last heard from. Cheap to clone.
#[derive(Clone)]
pub struct ClusterControl {
    chitchat: Chitchat,
    /// Every override entry known (tombstones included), merged.
    table: Arc<ArcSwap<OverrideTable>>,
    runtime: RuntimeLimits,
    /// Last heartbeat value seen per node id, and when it last changed.
    last_seen: Arc<std::sync::Mutex<HashMap<String, (chitchat::Heartbeat, std::time::Instant)>>>,
}

impl ClusterControl {
    /// The merged override table (tombstones included).
    pub fn overrides(&self) -> Arc<OverrideTable> {
        self.table.load_full()
    }

    /// Publishes an override entry under this node's gossip state and puts
    /// it in force here at once (peers adopt it within a few gossip rounds).
    pub async fn publish_override(&self, tenant: &str, limit: Limit, entry: OverrideEntry) {
        let mut chitchat = self.chitchat.lock().await;
        chitchat
            .self_node_state()
            .set(overrides::gossip_key(tenant, limit), entry.encode());
        let mut table = (**self.table.load()).clone();
        overrides::merge_into(&mut table, (tenant.to_string(), limit), entry);
        overrides::install(&self.runtime, &table);
        self.table.store(Arc::new(table));
    }

    /// Adds entries loaded from Redis at start-up (older ones are ignored).
    pub async fn seed_overrides(&self, loaded: OverrideTable) {
        for ((tenant, limit), entry) in loaded {
            let newer = match self.table.load().get(&(tenant.clone(), limit)) {
                Some(have) => entry.newer_than(have),
                None => true,
            };
            if newer {
                self.publish_override(&tenant, limit, entry).await;
            }
        }
    }

    /// Milliseconds since this node last heard from `node_id` (a new
    /// heartbeat), `None` if never.
    pub fn last_seen_ms(&self, node_id: &str) -> Option<u64> {
        let map = self.last_seen.lock().ok()?;
        map.get(node_id)
            .map(|(_, at)| at.elapsed().as_millis() as u64)
    }
}

/// The override entries published by live members, merged.
fn overrides_of(live: &BTreeMap<ChitchatId, NodeState>) -> OverrideTable {
    let mut table = OverrideTable::new();
    for state in live.values() {
        overrides::merge_fields(
            &mut table,
            state
                .iter_prefix(GOSSIP_PREFIX)
                .map(|(k, v)| (&k[GOSSIP_PREFIX.len()..], v.value.as_str())),
        );
    }
    table
}

/// Merges this node's own published entries into `table`, republishes the
/// entries it lacks or holds older (so they outlive the node that set them),
/// and installs the result.
async fn settle_overrides(control: &ClusterControl, mut table: OverrideTable) {
    let mut chitchat = control.chitchat.lock().await;
    let own = chitchat.self_node_state();
    let mut mine = OverrideTable::new();
    overrides::merge_fields(
        &mut mine,
        own.iter_prefix(GOSSIP_PREFIX)
            .map(|(k, v)| (&k[GOSSIP_PREFIX.len()..], v.value.as_str())),
    );
    for (k, e) in &mine {
        overrides::merge_into(&mut table, k.clone(), e.clone());
    }
    for ((tenant, limit), entry) in &table {
        if mine.get(&(tenant.clone(), *limit)) != Some(entry) {
            own.set(overrides::gossip_key(tenant, *limit), entry.encode());
        }
    }
    drop(chitchat);
    if **control.table.load() != table {
        overrides::install(&control.runtime, &table);
        control.table.store(Arc::new(table));
    }
}

/// Records when each node's heartbeat last changed, every gossip round.
fn track_last_seen(control: &ClusterControl, interval: Duration) {
    let chitchat = Arc::downgrade(&control.chitchat);
    let last_seen = Arc::clone(&control.last_seen);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let Some(chitchat) = chitchat.upgrade() else {
                return;
            };
            let chitchat = chitchat.lock().await;
            let now = std::time::Instant::now();
            let Ok(mut map) = last_seen.lock() else {
                return;
            };
            for (id, state) in chitchat.node_states() {
                let hb = state.heartbeat();
                let e = map.entry(id.node_id.to_string()).or_insert((hb, now));
                if e.0 != hb {
                    *e = (hb, now);
                }
            }
        }
    });
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
            cluster_id: settings.cluster_id.clone(),
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
        let handle = spawn_chitchat(config, initial, &UdpTransport).await?;
        let view = ViewHandle::new(ClusterView::alone(&settings.node_id, settings.vnodes));
        let (tx, changes) = watch::channel(Fingerprint::default());
        let chitchat = handle.chitchat();
        let mut live = chitchat.lock().await.live_nodes_watcher();
        let control = ClusterControl {
            chitchat: Arc::clone(&chitchat),
            table: Arc::new(ArcSwap::from_pointee(OverrideTable::new())),
            runtime: settings.runtime.clone(),
            last_seen: Arc::default(),
        };
        track_last_seen(&control, interval);
        let task_control = control.clone();
        let task_view = view.clone();
        let (self_id, vnodes) = (settings.node_id.clone(), settings.vnodes);
        tokio::spawn(async move {
            let mut published = String::new();
            loop {
                let (members, table) = {
                    let live_now = live.borrow_and_update();
                    (members_of(&live_now), overrides_of(&live_now))
                };
                settle_overrides(&task_control, table).await;
                let next = ClusterView::from_members(&self_id, members, vnodes)
                    .succeeding(&task_view.load());
                let fp = next.fingerprint();
                let changed = task_view.load().fingerprint() != fp;
                metrics
                    .ring_members
                    .store(next.ring.members().len() as i64, Relaxed);
                metrics
                    .live_members
                    .store(next.members.len() as i64, Relaxed);
                if changed {
                    metrics.ring_changes.fetch_add(1, Relaxed);
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
        })
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

    /// After a peer was seen: resolves once this node's ring of the ready
    /// members is the ring every one of them publishes (their states reach a
    /// joining node over several gossip rounds; a node that announced itself
    /// ready on a partial view would own, by its own ring, keys that another
    /// member holds). True when caught up, false on timeout.
    pub async fn wait_until_caught_up(&self, timeout: Duration) -> bool {
        let mut changes = self.changes.clone();
        tokio::time::timeout(timeout, async {
            loop {
                let view = self.view.load();
                let peers_ready = view
                    .members
                    .iter()
                    .any(|m| m.state == MemberState::Ready && !view.is_self(&m.node_id));
                if peers_ready && view.agreed() {
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

    /// Resolves once this node's view contains `node_id` as a ready member.
    pub async fn wait_until_ready_in_view(&self, timeout: Duration) -> bool {
        let mut changes = self.changes.clone();
        let id = self.settings.node_id.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if self.view.load().ring.contains(&id) {
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

    /// After this node announced `leaving`: resolves once its own ring no
    /// longer holds it and every ready member published that same ring, i.e.
    /// peers stopped routing to this node. False on timeout.
    pub async fn wait_until_left(&self, timeout: Duration) -> bool {
        let mut changes = self.changes.clone();
        let id = self.settings.node_id.clone();
        tokio::time::timeout(timeout, async {
            loop {
                {
                    let view = self.view.load();
                    if !view.ring.contains(&id) && view.agreed() {
                        return;
                    }
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
        if let Err(e) = self.handle.shutdown().await {
            warn!("gossip shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, state: MemberState, fp: Option<&str>) -> Member {
        Member {
            node_id: id.into(),
            generation: 1,
            state,
            public_addr: None,
            cluster_addr: "127.0.0.1:1".parse().unwrap(),
            admin_addr: None,
            fingerprint: fp.map(str::to_string),
        }
    }

    #[test]
    fn ring_holds_only_ready_members() {
        let v = ClusterView::from_members(
            "a",
            vec![
                member("a", MemberState::Ready, None),
                member("b", MemberState::Joining, None),
                member("c", MemberState::Leaving, None),
            ],
            16,
        );
        assert_eq!(v.ring.members(), ["a".to_string()]);
        assert_eq!(v.owner("t", Limit::Requests), Some("a"));
    }

    #[test]
    fn agreement_needs_every_ready_member_on_the_same_fingerprint() {
        let ring = Ring::new(["a", "b"], 16);
        let fp = ring.fingerprint().to_string();
        let v = ClusterView::from_members(
            "a",
            vec![
                member("a", MemberState::Ready, Some(&fp)),
                member("b", MemberState::Ready, Some(&fp)),
            ],
            16,
        );
        assert!(v.agreed());
        let v = ClusterView::from_members(
            "a",
            vec![
                member("a", MemberState::Ready, Some(&fp)),
                member("b", MemberState::Ready, Some("0")),
            ],
            16,
        );
        assert!(!v.agreed());
    }

    #[test]
    fn history_keeps_every_ring_of_a_join_and_when_self_joined() {
        let view = |members: &[&str]| {
            ClusterView::from_members(
                "d",
                members
                    .iter()
                    .map(|m| member(m, MemberState::Ready, None))
                    .collect(),
                16,
            )
        };
        // Node d sees the others one by one, then itself.
        let v0 = ClusterView::alone("d", 16);
        let v1 = view(&["a"]).succeeding(&v0);
        let v2 = view(&["a", "b"]).succeeding(&v1);
        let v3 = view(&["a", "b", "d"]).succeeding(&v2);
        let v4 = view(&["a", "b", "c", "d"]).succeeding(&v3);
        assert!(v2.joined_at.is_none());
        assert!(v3.joined_within(Duration::from_secs(1)));
        assert_eq!(v4.joined_at, v3.joined_at, "the first time counts");
        let rings: Vec<Vec<String>> = v4
            .history
            .iter()
            .map(|(r, _)| r.members().to_vec())
            .collect();
        assert_eq!(rings, [vec!["a", "b", "d"], vec!["a", "b"], vec!["a"]]);
        // The same ring again adds nothing.
        let v5 = view(&["a", "b", "c", "d"]).succeeding(&v4);
        assert_eq!(v5.history.len(), 3);
        // Every owner of a key in those rings, newest first, each once.
        for t in 0..50 {
            let t = format!("t-{t}");
            let owners = v4.previous_owners(&t, Limit::Requests, Duration::from_secs(10));
            let mut expected: Vec<&str> = Vec::new();
            for (ring, _) in &v4.history {
                let o = ring.owner(&t, Limit::Requests).unwrap();
                if !expected.contains(&o) {
                    expected.push(o);
                }
            }
            assert_eq!(owners, expected);
            assert!(v4
                .previous_owners(&t, Limit::Requests, Duration::ZERO)
                .is_empty());
        }
    }

    #[test]
    fn alone_view_owns_nothing() {
        assert_eq!(
            ClusterView::alone("a", 16).owner("t", Limit::Requests),
            None
        );
    }
}
