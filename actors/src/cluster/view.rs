//! The cluster as one node sees it: [`ClusterView`], an immutable value
//! holding the live members, their addresses and state, and the hash ring of
//! the *ready* ones (with the rings it replaced, for handoff). Every change
//! builds a new view; [`ViewHandle`] swaps it in and the hot path reads it
//! without locking.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use llmtrace_cluster_config::{Fingerprint, Limit, Ring};

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

    pub(crate) fn parse(s: &str) -> Option<Self> {
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

    /// After a peer was seen: this node's ring of the ready members is the
    /// ring every one of them publishes (their states reach a joining node
    /// over several gossip rounds; a node that announced itself ready on a
    /// partial view would own, by its own ring, keys that another member
    /// holds).
    pub fn caught_up(&self) -> bool {
        let peers_ready = self
            .members
            .iter()
            .any(|m| m.state == MemberState::Ready && !self.is_self(&m.node_id));
        peers_ready && self.agreed()
    }

    /// This node is a ready member of its own ring.
    pub fn self_ready(&self) -> bool {
        self.ring.contains(&self.self_id)
    }

    /// After this node announced `leaving`: its own ring no longer holds it
    /// and every ready member published that same ring, i.e. peers stopped
    /// routing to this node.
    pub fn left(&self) -> bool {
        !self.ring.contains(&self.self_id) && self.agreed()
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
        assert_eq!(v.owner("t", Limit::REQUESTS), Some("a"));
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
            let owners = v4.previous_owners(&t, Limit::REQUESTS, Duration::from_secs(10));
            let mut expected: Vec<&str> = Vec::new();
            for (ring, _) in &v4.history {
                let o = ring.owner(&t, Limit::REQUESTS).unwrap();
                if !expected.contains(&o) {
                    expected.push(o);
                }
            }
            assert_eq!(owners, expected);
            assert!(v4
                .previous_owners(&t, Limit::REQUESTS, Duration::ZERO)
                .is_empty());
        }
    }

    #[test]
    fn alone_view_owns_nothing() {
        assert_eq!(
            ClusterView::alone("a", 16).owner("t", Limit::REQUESTS),
            None
        );
    }
}
