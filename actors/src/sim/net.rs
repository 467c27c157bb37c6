//! The simulated node-to-node network: every RPC a simulated node makes
//! (forwarded batches, token leases, handoff pulls and pushes) goes through
//! the real wire encoding to the target node's real handler in process,
//! after a simulated round-trip latency, and is counted ([`Traffic`]: calls
//! and bytes both ways). A node missing from the [`Registry`] (crashed) is
//! unreachable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::{join_all, FutureExt, LocalBoxFuture};
use llmtrace_cluster_config::Limit;

use crate::cluster::forwarder::PeerClient;
use crate::cluster::handoff_client::{first_held, held_elsewhere, holders};
use crate::cluster::router::Router;
use crate::cluster::rpc::client::CallError;
use crate::cluster::rpc::token_lease_wire::{decode_token_lease, TokenLeaseRequest};
use crate::cluster::rpc::wire::{self, HandoffRequest, HandoffResponse};
use crate::cluster::token_leases::{self, LeaseCall};
use crate::cluster::view::{Member, ViewHandle};
use crate::core::fence::Fence;
use crate::core::held::Held;
use crate::core::key::BucketKey;
use crate::shard::HandoffSource;

/// The live simulated nodes' routers, by node id.
pub type Registry = Arc<RwLock<HashMap<String, Router>>>;

/// Calls and bytes (request plus answer) of one kind of RPC.
#[derive(Debug, Default)]
pub struct Calls {
    pub calls: AtomicU64,
    pub bytes: AtomicU64,
}

impl Calls {
    pub fn count(&self, bytes: usize) {
        self.calls.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    fn add_bytes(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub fn get(&self) -> (u64, u64) {
        (self.calls.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// Everything simulated nodes sent each other.
#[derive(Debug, Default)]
pub struct Traffic {
    pub batches: Calls,
    pub leases: Calls,
    pub pulls: Calls,
    pub pushes: Calls,
}

/// The simulated network: who is up, what crossed it, and its latency.
#[derive(Clone)]
pub struct SimNet {
    pub registry: Registry,
    pub traffic: Arc<Traffic>,
    pub latency: Duration,
}

impl SimNet {
    pub fn new(latency: Duration) -> Self {
        SimNet {
            registry: Arc::default(),
            traffic: Arc::default(),
            latency,
        }
    }

    pub fn router(&self, id: &str) -> Option<Router> {
        let routers = self.registry.read().unwrap_or_else(|p| p.into_inner());
        routers.get(id).cloned()
    }

    /// The round trip of one call.
    async fn wait(latency: Duration) {
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Token lease requests, to the owner's real handler.
    pub fn lease_call(&self) -> LeaseCall {
        let net = self.clone();
        Arc::new(move |m: &Member, req: TokenLeaseRequest| {
            let router = net.router(&m.node_id);
            let body = wire::encode(&req);
            let (traffic, latency) = (Arc::clone(&net.traffic), net.latency);
            traffic.leases.count(body.len());
            async move {
                Self::wait(latency).await;
                let router = router.ok_or_else(|| CallError::Unreachable("down".into()))?;
                let limits = router.local().limits().clone();
                let (req, limit) = decode_token_lease(&body, &limits)
                    .map_err(|e| CallError::Rejected(e.to_string()))?;
                let resp = token_leases::serve(&router, req, limit).await;
                traffic.leases.add_bytes(wire::encode(&resp).len());
                Ok(resp)
            }
            .boxed_local()
        })
    }
}

/// Forwarded batches to one peer, served by its real batch handler.
pub struct SimPeer {
    pub target: String,
    pub net: SimNet,
}

impl PeerClient for SimPeer {
    fn call(&self, body: Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, CallError>> {
        let router = self.net.router(&self.target);
        let (traffic, latency) = (Arc::clone(&self.net.traffic), self.net.latency);
        traffic.batches.count(body.len());
        async move {
            SimNet::wait(latency).await;
            let router = router.ok_or_else(|| CallError::Unreachable("down".into()))?;
            let req =
                wire::decode_request(&body).map_err(|e| CallError::Rejected(e.to_string()))?;
            let answer = wire::encode(&router.serve_batch(req).await);
            traffic.batches.add_bytes(answer.len());
            Ok(answer)
        }
        .boxed_local()
    }
}

/// A new owner's pull of a moved bucket from whoever may hold it (the same
/// candidates as `PeerHandoff`, [`holders`]), each asked at once, as over
/// the cluster RPC.
pub struct SimHandoff {
    pub view: ViewHandle,
    pub fence: Arc<Fence>,
    pub net: SimNet,
}

impl SimHandoff {
    /// Asks `owner` for the bucket of `req`, counted as one pull.
    async fn ask(
        net: SimNet,
        owner: String,
        req: Arc<HandoffRequest>,
        limit: Limit,
    ) -> Result<Option<Held>, String> {
        net.traffic.pulls.count(wire::encode(&*req).len());
        SimNet::wait(net.latency).await;
        let Some(router) = net.router(&owner) else {
            return Err(format!("{owner} is down"));
        };
        let state = router
            .local()
            .take(&req.tenant, limit, req.origin.as_str().into())
            .await
            .map_err(|e| e.to_string())?;
        let answer = HandoffResponse { state };
        net.traffic.pulls.add_bytes(wire::encode(&answer).len());
        Ok(answer.state)
    }
}

impl HandoffSource for SimHandoff {
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
        let owners: Vec<String> = holders(&view, &self.fence, key, hint, reclaim)?
            .into_iter()
            .map(str::to_string)
            .collect();
        if owners.is_empty() {
            return None;
        }
        let req = Arc::new(HandoffRequest {
            origin: view.self_id.to_string(),
            tenant: key.tenant.to_string(),
            limit: key.limit.as_str().to_string(),
        });
        let (net, limit) = (self.net.clone(), key.limit);
        Some(
            async move {
                let asks = owners
                    .into_iter()
                    .map(|o| Self::ask(net.clone(), o, Arc::clone(&req), limit));
                first_held(join_all(asks).await)
            }
            .boxed_local(),
        )
    }
}
