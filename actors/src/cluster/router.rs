//! The front of a clustered node: asks the current ring who owns a
//! `(tenant, limit)` bucket and either decides the check on a local shard or
//! forwards it to the owner's [`PeerForwarder`].
//!
//! Failure handling: a forward that times out or finds its owner unreachable
//! looks the owner up again (the ring may have changed) and is sent once more
//! under the same check id, so the owner's [`Dedup`] never counts it twice.
//! If that fails too, `on_owner_unreachable` decides: `local` (this node's
//! shard decides and the answer is marked degraded), `allow` or `deny`.
//!
//! A node that receives a forwarded check it does not own by its own ring
//! forwards it once more; a check already forwarded [`MAX_FORWARDS`] times is
//! decided where it is, so differing views never make a loop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use llmtrace_cluster_config::{Limit, OwnerUnreachable};
use tracing::warn;

use crate::cluster::dedup::Dedup;
use crate::cluster::forwarder::{BatchSettings, Forward, PeerClient, PeerForwarder};
use crate::cluster::rpc::client::CallError;
use crate::cluster::rpc::wire::{WireAnswer, WireCheck, WireResult, MAX_FORWARDS};
use crate::cluster::token_leases::TokenLeases;
use crate::cluster::view::{ClusterView, Member, ViewHandle};
use crate::core::bucket::{BucketQuota, Decision, Op};
use crate::core::verdict::{CheckError, ErrorCode, Verdict};
use crate::local::limiter::Limiter;
use crate::metrics::ClusterMetrics;
use crate::shard::Serve;

/// Builds the client of one peer, on the thread that will use it.
pub type ClientFactory = Arc<dyn Fn(&Member) -> Box<dyn PeerClient> + Send + Sync>;

/// Forwarding settings.
#[derive(Debug, Clone, Copy)]
pub struct RouterSettings {
    pub batch: BatchSettings,
    pub forward_timeout: Duration,
    pub on_owner_unreachable: OwnerUnreachable,
}

/// Where a check was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// On this node: it owns the key (or no ring exists yet).
    Local,
    /// By the owner, another node.
    Forwarded,
    /// The owner could not be reached; the policy decided.
    Degraded(OwnerUnreachable),
    /// On this node, from a token lease the owner granted it.
    Leased,
}

/// A decided check and how it was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub verdict: Verdict,
    pub route: Route,
    /// The owner by this node's ring, if any.
    pub owner: Option<String>,
}

type ForwarderKey = (u64, String, u64, std::net::SocketAddr);

thread_local! {
    /// Forwarders of this thread, per router and peer generation.
    static FORWARDERS: RefCell<HashMap<ForwarderKey, Addr<PeerForwarder>>> = RefCell::new(HashMap::new());
}

static ROUTER_IDS: AtomicU64 = AtomicU64::new(1);

/// Routes checks to their owner. Cheap to clone; usable from any arbiter.
#[derive(Clone)]
pub struct Router {
    /// Distinguishes routers sharing a thread (tests run several nodes).
    id: u64,
    local: Limiter,
    view: ViewHandle,
    settings: RouterSettings,
    metrics: Arc<ClusterMetrics>,
    clients: ClientFactory,
    next_check_id: Arc<AtomicU64>,
    dedup: Arc<Dedup>,
    /// Bounds the checks of received batches being decided at once.
    serving: Arc<serve::Serving>,
    /// Token leases of hot buckets owned elsewhere (off: `None`).
    token_leases: Option<Arc<TokenLeases>>,
}

fn wire_error(e: &CheckError) -> WireResult {
    match e {
        CheckError::ZeroCost => WireResult::Invalid(ErrorCode::ZeroCost),
        CheckError::CostAboveBurst { .. } => WireResult::Invalid(ErrorCode::CostAboveBurst),
        CheckError::Unavailable(_) | CheckError::Moved { .. } | CheckError::Fenced { .. } => {
            WireResult::Unavailable(ErrorCode::ShuttingDown)
        }
        CheckError::NotPersisted => WireResult::Unavailable(ErrorCode::NotPersisted),
        CheckError::OwnerRefused(code) => WireResult::Invalid(*code),
        CheckError::WrongOp(_) => WireResult::Invalid(ErrorCode::UnknownOp),
    }
}

impl Router {
    pub fn new(
        local: Limiter,
        view: ViewHandle,
        settings: RouterSettings,
        metrics: Arc<ClusterMetrics>,
        clients: ClientFactory,
    ) -> Self {
        Router {
            id: ROUTER_IDS.fetch_add(1, Relaxed),
            local,
            view,
            settings,
            metrics,
            clients,
            // Start from the clock so ids of a restarted node do not collide
            // with its previous generation's within a dedup window.
            next_check_id: Arc::new(AtomicU64::new(crate::core::clock::Clock::now_ns(
                &crate::core::clock::SystemClock,
            ))),
            dedup: Arc::new(Dedup::new(settings.forward_timeout * 4)),
            serving: Arc::new(serve::Serving::new()),
            token_leases: None,
        }
    }

    /// Decides checks of hot buckets owned elsewhere from token leases.
    pub fn with_token_leases(mut self, leases: Arc<TokenLeases>) -> Self {
        self.token_leases = Some(leases);
        self
    }

    pub fn token_leases(&self) -> Option<&Arc<TokenLeases>> {
        self.token_leases.as_ref()
    }

    pub fn local(&self) -> &Limiter {
        &self.local
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.load_full()
    }

    pub fn metrics(&self) -> &Arc<ClusterMetrics> {
        &self.metrics
    }

    fn forwarder(&self, view: &ClusterView, member: &Member) -> Addr<PeerForwarder> {
        let key = (
            self.id,
            member.node_id.clone(),
            member.generation,
            member.cluster_addr,
        );
        FORWARDERS.with(|f| {
            let mut map = f.borrow_mut();
            if let Some(addr) = map.get(&key) {
                if addr.connected() {
                    return addr.clone();
                }
            }
            // Forget forwarders of peers that left or restarted.
            map.retain(|(router, id, generation, _), _| {
                *router != self.id || view.member(id).is_some_and(|m| m.generation == *generation)
            });
            let client = (self.clients)(member);
            let addr = PeerForwarder::new(
                view.self_id.to_string(),
                client,
                self.settings.batch,
                Arc::clone(&self.metrics),
            )
            .start();
            map.insert(key, addr.clone());
            addr
        })
    }

    async fn send(
        &self,
        view: &ClusterView,
        owner: &str,
        check: WireCheck,
    ) -> Result<WireAnswer, CallError> {
        let member = view
            .member(owner)
            .ok_or_else(|| CallError::Unreachable(format!("{owner} has no known address")))?;
        let forwarder = self.forwarder(view, member);
        // The client's own timeout fires first; this one also covers time
        // spent waiting for the batch to fill.
        let deadline = self.settings.forward_timeout
            + self.settings.batch.max_wait
            + Duration::from_millis(50);
        match tokio::time::timeout(deadline, forwarder.send(Forward(check))).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(mailbox)) => Err(CallError::Unreachable(mailbox.to_string())),
            Ok(Ok(result)) => result,
        }
    }

    /// Decides on this node's shard; `Err(Moved)` if the shard handed the
    /// bucket over moments ago. While this node's fence is closed (its view
    /// is stale: it was paused or cut off) it waits, at most the forward
    /// timeout, for the view to catch up; then `on_owner_unreachable`
    /// decides, as for an owner that cannot be reached.
    #[allow(clippy::too_many_arguments)]
    async fn decide_here(
        &self,
        tenant: String,
        (limit, op): (Limit, Op),
        cost: u64,
        quota: Option<BucketQuota>,
        serve: Serve,
        route: Route,
        owner: Option<String>,
    ) -> Result<Routed, CheckError> {
        let local = &self.local;
        let mut tenant = tenant;
        for waited in [false, true] {
            match local
                .check_validated(tenant, limit, op, cost, quota, serve)
                .await
            {
                Err(CheckError::Fenced { tenant: t }) => tenant = t,
                other => {
                    return other.map(|verdict| Routed {
                        verdict,
                        route,
                        owner,
                    })
                }
            }
            if waited {
                break;
            }
            self.metrics.fenced.inc();
            if !local.fence().wait_open(self.settings.forward_timeout).await {
                break;
            }
        }
        let quota = quota.expect("only a bucket is fenced");
        let reason = "this node's view of the cluster is stale (paused or cut off)".to_string();
        let owner = owner.unwrap_or_else(|| self.view.load().self_id.to_string());
        self.unreachable(tenant, (limit, op), cost, quota, owner, reason)
            .await
    }

    /// Decides on this node's shard, or where the shard handed the bucket.
    #[allow(clippy::too_many_arguments)]
    async fn local_check(
        &self,
        tenant: String,
        (limit, op): (Limit, Op),
        cost: u64,
        quota: Option<BucketQuota>,
        route: Route,
        owner: Option<String>,
        hops: u8,
    ) -> Result<Routed, CheckError> {
        match self
            .decide_here(tenant, (limit, op), cost, quota, Serve::Owner, route, owner)
            .await
        {
            // Only a bucket (never an unlimited check) can have moved.
            Err(CheckError::Moved { to, tenant }) => {
                let quota = quota.unwrap_or(BucketQuota::per_second(1, 1));
                self.follow_move(tenant, (limit, op), cost, quota, to, hops)
                    .await
            }
            other => other,
        }
    }

    /// A check to forward to `to`'s node, `hops` forwards made so far.
    fn wire_check(
        &self,
        tenant: String,
        (limit, op): (Limit, Op),
        cost: u64,
        hops: u8,
    ) -> WireCheck {
        self.metrics.forwarded.inc();
        WireCheck {
            id: self.next_check_id.fetch_add(1, Relaxed),
            tenant,
            limit: limit.as_str().to_string(),
            op: op as u8,
            cost,
            retry: false,
            hops: hops + 1,
        }
    }

    /// Sends a check to the node this node's shard handed its bucket to.
    async fn follow_move(
        &self,
        tenant: String,
        (limit, op): (Limit, Op),
        cost: u64,
        quota: BucketQuota,
        to: String,
        hops: u8,
    ) -> Result<Routed, CheckError> {
        let view = self.view.load();
        if !view.ring.contains(&to) && view.owner(&tenant, limit).is_some_and(|o| view.is_self(o)) {
            // The node this shard handed the bucket to has left the ring and
            // the key is ours again: serve it (its bucket comes back by pull,
            // push or the cache layer).
            let owner = Some(view.self_id.to_string());
            return self
                .decide_here(
                    tenant,
                    (limit, op),
                    cost,
                    Some(quota),
                    Serve::Reclaim,
                    Route::Local,
                    owner,
                )
                .await;
        }
        if hops > MAX_FORWARDS {
            let reason = "hop limit reached following a handoff".to_string();
            return self
                .unreachable(tenant, (limit, op), cost, quota, to, reason)
                .await;
        }
        let check = self.wire_check(tenant, (limit, op), cost, hops);
        let answer = self.send(&view, &to, check.clone()).await;
        if let Some(routed) = self.owner_answer(&answer, &to)? {
            return Ok(routed);
        }
        let reason = match &answer {
            Err(e) => e.to_string(),
            Ok(r) => format!("{r:?}"),
        };
        self.unreachable(check.tenant, (limit, op), cost, quota, to, reason)
            .await
    }

    /// Decides a client's check (`POST /v1/check`, a proxied call) and
    /// counts where it was decided (`llmtrace_routed_checks_total`).
    pub async fn check(&self, tenant: &str, limit: Limit, cost: u64) -> Result<Routed, CheckError> {
        self.check_op(tenant, limit, Op::Take, cost).await
    }

    /// [`Router::check`] of any operation that decides (a take, or the
    /// acquire of a lease whose id is `cost`).
    pub async fn check_op(
        &self,
        tenant: &str,
        limit: Limit,
        op: Op,
        cost: u64,
    ) -> Result<Routed, CheckError> {
        let routed = self.route(tenant.to_string(), limit, op, cost, 0).await?;
        let m = &self.metrics;
        match routed.route {
            Route::Local => m.routed_local.inc(),
            Route::Forwarded => m.routed_forwarded.inc(),
            Route::Leased => m.routed_leased.inc(),
            Route::Degraded(_) => {
                m.mark_degraded(tenant);
                m.routed_degraded.inc()
            }
        };
        Ok(routed)
    }

    /// Performs `op` (take, refund or charge) of `cost` units on the owner
    /// of `(tenant, limit)`, with the forwarding, retry and dedup of a check.
    /// Under the `allow` and `deny` unreachable policies a refund or charge
    /// whose owner cannot be reached is dropped (answered unlimited,
    /// degraded); under `local` it is performed on this node's shard.
    pub async fn perform(
        &self,
        tenant: String,
        limit: Limit,
        op: Op,
        cost: u64,
    ) -> Result<Routed, CheckError> {
        self.route(tenant, limit, op, cost, 0).await
    }

    /// [`Router::perform`] for a check already forwarded `hops` times.
    async fn route(
        &self,
        tenant: String,
        limit: Limit,
        op: Op,
        cost: u64,
        hops: u8,
    ) -> Result<Routed, CheckError> {
        let lo = (limit, op);
        let Some(quota) = self.local.validate_op(&tenant, limit, op, cost)? else {
            return self
                .local_check(tenant, lo, cost, None, Route::Local, None, hops)
                .await;
        };
        let q = Some(quota);
        let view = self.view.load();
        let owner = match view.owner(&tenant, limit) {
            None => {
                return self
                    .local_check(tenant, lo, cost, q, Route::Local, None, hops)
                    .await
            }
            Some(o) if view.is_self(o) => {
                let owner = Some(o.to_string());
                return self
                    .local_check(tenant, lo, cost, q, Route::Local, owner, hops)
                    .await;
            }
            Some(o) => o.to_string(),
        };
        if hops >= MAX_FORWARDS {
            return self
                .local_check(tenant, lo, cost, q, Route::Local, Some(owner), hops)
                .await;
        }
        if hops > 0 {
            self.metrics.reforwarded.inc();
        }
        if let (Some(leases), 0, Op::Take) = (&self.token_leases, hops, op) {
            let bucket = (tenant.as_str(), limit);
            if let Some(routed) = leases.spend(&view, bucket, quota, cost, &owner) {
                self.local.metrics().count_leased(limit);
                return Ok(routed);
            }
            leases.note_forward(&view, bucket, cost, &owner);
        }
        let mut check = self.wire_check(tenant, lo, cost, hops);
        let started = std::time::Instant::now();
        let first = self.send(&view, &owner, check.clone()).await;
        self.metrics
            .forwarded_check_latency
            .observe(started.elapsed().as_secs_f64());
        if let Some(routed) = self.owner_answer(&first, &owner)? {
            return Ok(routed);
        }
        // Retry once, with the owner looked up again.
        self.metrics.retries.inc();
        let view = self.view.load();
        let owner2 = match view.owner(&check.tenant, limit) {
            Some(o) if !view.is_self(o) => o.to_string(),
            other => {
                let owner = other.map(str::to_string);
                return self
                    .local_check(check.tenant, lo, cost, q, Route::Local, owner, hops)
                    .await;
            }
        };
        check.retry = true;
        let second = self.send(&view, &owner2, check.clone()).await;
        if let Some(routed) = self.owner_answer(&second, &owner2)? {
            return Ok(routed);
        }
        let reason = match &second {
            Err(e) => e.to_string(),
            Ok(r) => format!("{r:?}"),
        };
        self.unreachable(check.tenant, lo, cost, quota, owner2, reason)
            .await
    }

    /// `Some` when the owner decided, `Err` when it refused the check as
    /// invalid, `None` when it could not decide.
    fn owner_answer(
        &self,
        result: &Result<WireAnswer, CallError>,
        owner: &str,
    ) -> Result<Option<Routed>, CheckError> {
        match result {
            Ok(answer) => match (answer.result.verdict(), &answer.result) {
                (Some(verdict), _) => Ok(Some(Routed {
                    verdict,
                    // A peer that could not reach the owner either says so.
                    route: answer
                        .degraded_policy()
                        .map_or(Route::Forwarded, Route::Degraded),
                    owner: Some(owner.to_string()),
                })),
                (None, WireResult::Invalid(code)) => Err(CheckError::OwnerRefused(*code)),
                // The owner is up but its Redis is not: no other node may
                // decide instead (that would admit without persisting).
                (None, WireResult::Unavailable(ErrorCode::NotPersisted)) => {
                    Err(CheckError::NotPersisted)
                }
                (None, _) => Ok(None),
            },
            Err(_) => Ok(None),
        }
    }

    async fn unreachable(
        &self,
        tenant: String,
        (limit, op): (Limit, Op),
        cost: u64,
        quota: crate::BucketQuota,
        owner: String,
        reason: String,
    ) -> Result<Routed, CheckError> {
        let policy = self.settings.on_owner_unreachable;
        warn!(%tenant, %owner, policy = policy.as_str(), %reason, "owner unreachable");
        let route = Route::Degraded(policy);
        match policy {
            OwnerUnreachable::Local => {
                self.metrics.unreachable_local.inc();
                // Decide on this node's shard, also for a key it handed to the
                // unreachable node (reclaimed: restored from the cache layer).
                let verdict = self
                    .local
                    .check_validated(tenant, limit, op, cost, Some(quota), Serve::Degraded)
                    .await?;
                Ok(Routed {
                    verdict,
                    route,
                    owner: Some(owner),
                })
            }
            OwnerUnreachable::Allow => {
                self.metrics.unreachable_allow.inc();
                Ok(Routed {
                    verdict: Verdict::Unlimited,
                    route,
                    owner: Some(owner),
                })
            }
            OwnerUnreachable::Deny if !matches!(op, Op::Take | Op::Acquire | Op::Peek) => {
                // Nothing to refuse: the refund, charge or release is dropped.
                self.metrics.unreachable_deny.inc();
                Ok(Routed {
                    verdict: Verdict::Unlimited,
                    route,
                    owner: Some(owner),
                })
            }
            OwnerUnreachable::Deny => {
                self.metrics.unreachable_deny.inc();
                let decision = Decision::Refused {
                    remaining: 0,
                    retry_after_ns: 1_000_000_000,
                    // Unknown: report the time a drained bucket takes.
                    reset_after_ns: quota.refill_ns(crate::core::clock::Clock::now_ns(
                        &crate::core::clock::SystemClock,
                    )),
                };
                Ok(Routed {
                    verdict: Verdict::Limited { quota, decision },
                    route,
                    owner: Some(owner),
                })
            }
        }
    }
}

mod serve;
pub use self::serve::SERVE_IN_FLIGHT;

#[cfg(test)]
mod tests;
