//! Ownership handoff, network side: [`PeerHandoff`] asks a moved bucket's
//! previous owner for it over the cluster RPC (`POST /cluster/v1/handoff`).
//! The previous owner is the owner by the ring in force before the last
//! change, consulted for [`HANDOFF_WINDOW`] after it; later, or when that
//! node is gone, the cache layer (Redis) has the bucket's last snapshot.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{FutureExt, LocalBoxFuture};

use crate::bucket::BucketState;
use crate::key::BucketKey;
use crate::membership::ViewHandle;
use crate::rpc::{self, HandoffRequest, HandoffResponse};
use crate::shard::HandoffSource;

/// How long after a ring change a new owner asks previous owners first
/// (one round trip on the first check of each moved key; a leaving node
/// pushes its buckets anyway). Later, buckets not yet touched come from the
/// cache layer.
pub const HANDOFF_WINDOW: Duration = Duration::from_secs(10);

thread_local! {
    /// One HTTP client per thread (awc is not `Send`), by timeout in ms.
    static CLIENTS: RefCell<HashMap<u64, awc::Client>> = RefCell::new(HashMap::new());
}

/// Pulls moved buckets from their previous owner.
pub struct PeerHandoff {
    view: ViewHandle,
    secret: Option<String>,
    timeout: Duration,
}

impl PeerHandoff {
    pub fn new(view: ViewHandle, secret: Option<String>, timeout: Duration) -> Arc<Self> {
        Arc::new(PeerHandoff {
            view,
            secret,
            timeout,
        })
    }

    fn client(&self) -> awc::Client {
        let ms = self.timeout.as_millis() as u64;
        CLIENTS.with(|c| {
            c.borrow_mut()
                .entry(ms)
                .or_insert_with(|| {
                    awc::Client::builder()
                        .timeout(self.timeout)
                        .disable_redirects()
                        .connector(awc::Connector::new().timeout(self.timeout))
                        .finish()
                })
                .clone()
        })
    }
}

impl PeerHandoff {
    /// Asks one node for the bucket of `key`.
    fn ask(
        &self,
        cluster_addr: std::net::SocketAddr,
        origin: &str,
        key: &BucketKey,
    ) -> LocalBoxFuture<'static, Result<Option<BucketState>, String>> {
        let url = format!("http://{cluster_addr}{}", rpc::HANDOFF_PATH);
        let body = rpc::encode(&HandoffRequest {
            origin: origin.to_string(),
            tenant: key.tenant.to_string(),
            limit: key.limit as u8,
        });
        let mut req = self
            .client()
            .post(url)
            .insert_header(("content-type", "application/octet-stream"));
        if let Some(s) = &self.secret {
            req = req.insert_header((rpc::SECRET_HEADER, s.as_str()));
        }
        async move {
            let answer: HandoffResponse = rpc::send(req, body).await?;
            Ok(answer.state)
        }
        .boxed_local()
    }
}

/// Attempts per previous owner when a pull fails (timeout, refused
/// connection): a bucket restored from the cache layer while its previous
/// owner still holds it would be served twice.
const PULL_ATTEMPTS: usize = 2;

impl HandoffSource for PeerHandoff {
    fn pull(
        &self,
        key: &BucketKey,
        hint: Option<&str>,
        reclaim: bool,
    ) -> Option<LocalBoxFuture<'static, Result<Option<BucketState>, String>>> {
        let view = self.view.load();
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
        // window; for a node that joined within it, every member. (A joining
        // node's first rings may lack members whose state has not reached it
        // yet, so no ring of its own names the holder for sure; only the
        // holder has the bucket to give.)
        for o in view.previous_owners(&key.tenant, key.limit, HANDOFF_WINDOW) {
            if !owners.contains(&o) {
                owners.push(o);
            }
        }
        if view.joined_within(HANDOFF_WINDOW) {
            for m in &view.members {
                if !owners.contains(&m.node_id.as_str()) {
                    owners.push(&m.node_id);
                }
            }
        }
        let mut candidates: Vec<std::net::SocketAddr> = Vec::new();
        for owner in owners {
            if view.is_self(owner) {
                continue;
            }
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
        // are sent when polled: a second attempt only after a failure.
        let asks = candidates.into_iter().map(|addr| {
            let attempts: Vec<_> = (0..PULL_ATTEMPTS)
                .map(|_| self.ask(addr, &view.self_id, key))
                .collect();
            async move {
                let mut last = Ok(None);
                for ask in attempts {
                    last = ask.await;
                    if last.is_ok() {
                        break;
                    }
                }
                last
            }
        });
        let all = futures_util::future::join_all(asks);
        Some(
            async move {
                let mut failed = None;
                for answer in all.await {
                    tracing::debug!(?answer, "handoff answer");
                    match answer {
                        Ok(Some(state)) => return Ok(Some(state)),
                        Ok(None) => {}
                        Err(e) => failed = Some(e),
                    }
                }
                failed.map_or(Ok(None), Err)
            }
            .boxed_local(),
        )
    }
}

/// A leaving node pushes every bucket it still holds to the key's owner by
/// its current ring (which no longer holds it). Buckets that cannot be
/// delivered are returned, for the caller to write to the cache layer.
pub async fn push_all(
    limiter: &crate::Limiter,
    views: &ViewHandle,
    secret: Option<&str>,
    timeout: Duration,
) -> (usize, Vec<(BucketKey, BucketState)>) {
    let live = views.clone();
    let owner_of: crate::shard::OwnerOf = Arc::new(move |key: &BucketKey| {
        let view = live.load();
        view.owner(&key.tenant, key.limit)
            .filter(|o| !view.is_self(o))
            .map(Arc::from)
    });
    let buckets = limiter.take_all(owner_of).await;
    let view = views.load_full();
    let mut by_owner: HashMap<String, Vec<(BucketKey, BucketState)>> = HashMap::new();
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
    let client = awc::Client::builder()
        .timeout(timeout)
        .disable_redirects()
        .finish();
    let mut delivered = 0;
    for (owner, items) in by_owner {
        let Some(member) = view.member(&owner) else {
            undelivered.extend(items);
            continue;
        };
        for chunk in items.chunks(rpc::MAX_INSTALL_ITEMS) {
            let body = rpc::encode(&rpc::InstallRequest {
                origin: view.self_id.to_string(),
                buckets: chunk
                    .iter()
                    .map(|(k, s)| (k.tenant.to_string(), k.limit as u8, *s))
                    .collect(),
            });
            let mut req = client
                .post(format!(
                    "http://{}{}",
                    member.cluster_addr,
                    rpc::INSTALL_PATH
                ))
                .insert_header(("content-type", "application/octet-stream"));
            if let Some(s) = secret {
                req = req.insert_header((rpc::SECRET_HEADER, s));
            }
            match req.send_body(body).await {
                Ok(resp) if resp.status().is_success() => delivered += chunk.len(),
                Ok(resp) => {
                    tracing::warn!(%owner, status = %resp.status(), "bucket push refused");
                    undelivered.extend_from_slice(chunk);
                }
                Err(e) => {
                    tracing::warn!(%owner, error = %e, "bucket push failed");
                    undelivered.extend_from_slice(chunk);
                }
            }
        }
    }
    (delivered, undelivered)
}
