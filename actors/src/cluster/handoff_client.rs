//! Ownership handoff, network side: [`PeerHandoff`] asks a moved bucket's
//! previous owner for it over the cluster RPC (`POST /cluster/v1/handoff`).
//! The previous owner is the owner by the ring in force before the last
//! change, consulted for [`HANDOFF_WINDOW`] after it; later, or when that
//! node is gone, the cache layer (Redis) has the bucket's last snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{FutureExt, LocalBoxFuture};
use tokio::sync::Semaphore;

use crate::cluster::rpc::client::ClusterClient;
use crate::cluster::rpc::wire::{HandoffRequest, InstallRequest, MAX_INSTALL_ITEMS};
use crate::cluster::view::{ClusterView, ViewHandle};
use crate::core::fence::Fence;
use crate::core::held::Held;
use crate::core::key::BucketKey;
use crate::shard::HandoffSource;

/// How long after a ring change a new owner asks previous owners first
/// (one round trip on the first check of each moved key; a leaving node
/// pushes its buckets anyway). Later, buckets not yet touched come from the
/// cache layer.
pub const HANDOFF_WINDOW: Duration = Duration::from_secs(10);

/// Pulls under way at once, node-wide; a pull beyond waits for a place
/// (its requests are built only then). Each asks every candidate node once,
/// [`PULL_ATTEMPTS`] times at most.
pub const PULLS_IN_FLIGHT: usize = 64;

/// Pulls moved buckets from their previous owner.
pub struct PeerHandoff {
    view: ViewHandle,
    /// After a lapse of this fence, every member is asked (any of them may
    /// have served the key while this node was paused or cut off).
    fence: Arc<Fence>,
    client: ClusterClient,
    /// Places of the pulls under way ([`PULLS_IN_FLIGHT`]).
    pulls: Arc<Semaphore>,
}

impl PeerHandoff {
    pub fn new(view: ViewHandle, fence: Arc<Fence>, client: ClusterClient) -> Arc<Self> {
        Arc::new(PeerHandoff {
            view,
            fence,
            client,
            pulls: Arc::new(Semaphore::new(PULLS_IN_FLIGHT)),
        })
    }
}

/// Attempts per previous owner when a pull fails (timeout, refused
/// connection): a bucket restored from the cache layer while its previous
/// owner still holds it would be served twice.
const PULL_ATTEMPTS: usize = 2;

/// Asks the node at `addr` for the bucket of `req`'s key, up to
/// [`PULL_ATTEMPTS`] times while asking fails.
async fn ask(
    client: ClusterClient,
    addr: std::net::SocketAddr,
    req: Arc<HandoffRequest>,
) -> Result<Option<Held>, String> {
    let mut last = Ok(None);
    for _ in 0..PULL_ATTEMPTS {
        last = client
            .call(addr, &*req)
            .await
            .map(|a| a.state)
            .map_err(|e| e.to_string());
        if last.is_ok() {
            break;
        }
    }
    last
}

/// Who may hold the bucket of `key` a new owner is about to serve: the
/// node `hint` names, its owners by every ring replaced within
/// [`HANDOFF_WINDOW`] and, for a node that joined or whose view lapsed
/// within it, every member; live members other than this node, each once.
/// `None` when no one is to be asked: the key is decided here because its
/// owner could not be reached (`reclaim`), or no ring names an owner.
pub fn holders<'a>(
    view: &'a ClusterView,
    fence: &Fence,
    key: &BucketKey,
    hint: Option<&'a str>,
    reclaim: bool,
) -> Option<Vec<&'a str>> {
    let mut owners: Vec<&str> = hint.into_iter().collect();
    match view.owner(&key.tenant, key.limit) {
        Some(o) if view.is_self(o) => {}
        // Decided here because the owner could not be reached: do not
        // wait on it again (the policy's bucket is this node's own).
        _ if reclaim => return None,
        // A check forwarded as often as allowed is decided where it
        // lands, also on a node that is not the owner by its own (stale
        // or early) view: take the bucket from that owner rather than
        // start a second one.
        Some(o) => owners.push(o),
        None => return None,
    }
    // Who else may hold it: its owners by every ring replaced within the
    // window; for a node that joined within it, or whose view lapsed
    // within it, every member. (A joining node's first rings may lack
    // members whose state has not reached it yet, and a node that was
    // paused never saw the rings in force meanwhile, so no ring of its
    // own names the holder for sure; only the holder has the bucket to
    // give.)
    for o in view.previous_owners(&key.tenant, key.limit, HANDOFF_WINDOW) {
        if !owners.contains(&o) {
            owners.push(o);
        }
    }
    if view.joined_within(HANDOFF_WINDOW) || fence.lapsed_within(HANDOFF_WINDOW) {
        for m in &view.members {
            if !owners.contains(&m.node_id.as_str()) {
                owners.push(&m.node_id);
            }
        }
    }
    owners.retain(|o| !view.is_self(o) && view.member(o).is_some());
    Some(owners)
}

/// Whether a node other than this one may hold `key` now ([`holders`]
/// names one).
pub fn held_elsewhere(view: &ClusterView, fence: &Fence, key: &BucketKey, reclaim: bool) -> bool {
    holders(view, fence, key, None, reclaim).is_some_and(|o| !o.is_empty())
}

/// Of the answers of every node asked for a bucket (at most one holds it):
/// the state given up, else the last failure, else none.
pub fn first_held(answers: Vec<Result<Option<Held>, String>>) -> Result<Option<Held>, String> {
    let mut failed = None;
    for answer in answers {
        match answer {
            Ok(Some(state)) => return Ok(Some(state)),
            Ok(None) => {}
            Err(e) => failed = Some(e),
        }
    }
    failed.map_or(Ok(None), Err)
}

impl HandoffSource for PeerHandoff {
    fn would_pull(&self, key: &BucketKey, reclaim: bool) -> bool {
        held_elsewhere(&self.view.load(), &self.fence, key, reclaim)
    }

    fn pull(
        &self,
        key: &BucketKey,
        hint: Option<&str>,
        reclaim: bool,
    ) -> Option<LocalBoxFuture<'static, Result<Option<Held>, String>>> {
        let view = self.view.load();
        let owners = holders(&view, &self.fence, key, hint, reclaim)?;
        let mut candidates: Vec<std::net::SocketAddr> = Vec::new();
        for owner in owners {
            if let Some(m) = view.member(owner) {
                if !candidates.contains(&m.cluster_addr) {
                    candidates.push(m.cluster_addr);
                }
            }
        }
        tracing::debug!(%key, ?candidates, "asking for a bucket");
        if candidates.is_empty() {
            return None;
        }
        // Every candidate at once; at most one holds the bucket. Requests
        // are built once a place is free, sent when polled: a second attempt
        // only after a failure.
        let req = Arc::new(HandoffRequest {
            origin: view.self_id.to_string(),
            tenant: key.tenant.to_string(),
            limit: key.limit.as_str().to_string(),
        });
        let client = self.client.clone();
        let places = Arc::clone(&self.pulls);
        Some(
            async move {
                let _place = places
                    .acquire_owned()
                    .await
                    .map_err(|_| "handoff closed".to_string())?;
                let asks = candidates
                    .into_iter()
                    .map(|addr| ask(client.clone(), addr, Arc::clone(&req)));
                let answers = futures_util::future::join_all(asks).await;
                tracing::debug!(?answers, "handoff answers");
                first_held(answers)
            }
            .boxed_local(),
        )
    }
}

/// A leaving node pushes every bucket it still holds to the key's owner by
/// its current ring (which no longer holds it); buckets that cannot be
/// delivered are snapshotted, for their owner to restore. Answers (pushed,
/// undelivered).
pub async fn hand_over(
    limiter: &crate::Limiter,
    views: &ViewHandle,
    client: &ClusterClient,
) -> (usize, usize) {
    let live = views.clone();
    let owner_of: crate::shard::OwnerOf = Arc::new(move |key: &BucketKey| {
        let view = live.load();
        view.owner(&key.tenant, key.limit)
            .filter(|o| !view.is_self(o))
            .map(Arc::from)
    });
    let buckets = limiter.take_all(owner_of).await;
    let view = views.load_full();
    let mut by_owner: HashMap<String, Vec<(BucketKey, Held)>> = HashMap::new();
    let mut undelivered = Vec::new();
    for (key, state) in buckets {
        match view.owner(&key.tenant, key.limit) {
            Some(owner) if !view.is_self(owner) => by_owner
                .entry(owner.to_string())
                .or_default()
                .push((key, state)),
            _ => undelivered.push((key, state)),
        }
    }
    let mut delivered = 0;
    for (owner, items) in by_owner {
        let Some(member) = view.member(&owner) else {
            undelivered.extend(items);
            continue;
        };
        for chunk in items.chunks(MAX_INSTALL_ITEMS) {
            let push = InstallRequest {
                origin: view.self_id.to_string(),
                buckets: chunk
                    .iter()
                    .map(|(k, s)| {
                        (
                            k.tenant.to_string(),
                            k.limit.as_str().to_string(),
                            s.clone(),
                        )
                    })
                    .collect(),
            };
            match client.call(member.cluster_addr, &push).await {
                Ok(_) => delivered += chunk.len(),
                Err(e) => {
                    tracing::warn!(%owner, error = %e, "bucket push failed");
                    undelivered.extend_from_slice(chunk);
                }
            }
        }
    }
    let n_undelivered = undelivered.len();
    tracing::info!(
        pushed = delivered,
        undelivered = n_undelivered,
        "buckets handed to their new owners"
    );
    if let Err(e) = limiter.persist(undelivered).await {
        tracing::warn!("could not snapshot undelivered buckets: {e}");
    }
    (delivered, n_undelivered)
}
