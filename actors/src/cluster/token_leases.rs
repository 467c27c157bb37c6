//! Token leases, the holder's side and the owner's RPC handler (the owner's
//! math is [`crate::core::token_lease`], its bookkeeping
//! [`crate::shard::GrantTokens`]).
//!
//! A node that forwards checks of one bucket faster than
//! `threshold` per second asks the owner for a lease: units taken from the
//! bucket, spent here without forwarding until they run out or the lease
//! expires (by this node's monotonic clock, counted from before it asked).
//! Spending is one atomic compare-and-subtract; the table of leased buckets
//! is read without a lock (copy on write: buckets turn hot rarely).
//! Demand is counted in a fixed sketch of atomic counters (bounded memory:
//! only buckets above the threshold get a table entry). Leases are renewed
//! while the bucket stays hot, sized to the demand measured; what is left
//! goes back to the owner on renewal, on expiry, when the owner moved and
//! when the node leaves. A return and a spend never both use a unit (the
//! remainder is swapped to zero before it is returned).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::future::LocalBoxFuture;
use llmtrace_cluster_config::Limit;

use crate::cluster::router::{Route, Routed, Router};
use crate::cluster::rpc::client::CallError;
use crate::cluster::rpc::token_lease_wire::{TokenLeaseRequest, TokenLeaseResponse, WireGrant};
use crate::cluster::view::{ClusterView, Member};
use crate::core::bucket::{BucketQuota, Decision};
use crate::core::key::stable_hash;
use crate::core::verdict::Verdict;

/// Counters of the demand sketch.
const SKETCH: usize = 4096;
/// Length of one demand window.
const WINDOW_MS: u64 = 100;

/// When and how long leases are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLeaseSettings {
    /// Forwards per second of one bucket above which a lease is asked for.
    pub threshold: u32,
    /// How long a lease lasts.
    pub ttl: Duration,
}

impl TokenLeaseSettings {
    /// How much longer the owner keeps a record than its holder spends.
    pub fn margin(&self) -> Duration {
        self.ttl / 4 + Duration::from_millis(50)
    }

    /// How long after a grant its units may still be spent somewhere.
    pub fn horizon(&self) -> Duration {
        self.ttl + self.margin()
    }
}

/// Sends a token lease request to a member.
pub type LeaseCall = Arc<
    dyn Fn(
            &Member,
            TokenLeaseRequest,
        ) -> LocalBoxFuture<'static, Result<TokenLeaseResponse, CallError>>
        + Send
        + Sync,
>;

/// The lease a slot spends from.
#[derive(Debug)]
struct Lease {
    grant: WireGrant,
    /// Node id of the owner that granted it.
    owner: Box<str>,
}

/// One hot bucket on this node.
struct Slot {
    tenant: Box<str>,
    limit: Limit,
    /// Units left to spend (taken from the bucket, not yet spent or
    /// returned).
    remaining: AtomicU64,
    /// Until when (monotonic ns) the lease may be spent.
    until: AtomicU64,
    lease: ArcSwapOption<Lease>,
    /// A request to the owner is under way.
    asking: AtomicBool,
    /// No request before this instant (after a refusal).
    quiet_until: AtomicU64,
    /// Units checked (spent or forwarded) since the last grant, and when
    /// that was.
    used: AtomicU64,
    since: AtomicU64,
    last_used: AtomicU64,
}

/// A node's token leases, as holder.
pub struct TokenLeases {
    settings: TokenLeaseSettings,
    call: LeaseCall,
    origin: Instant,
    table: ArcSwap<HashMap<u64, Arc<Slot>>>,
    sketch: Box<[AtomicU64]>,
}

impl TokenLeases {
    pub fn new(settings: TokenLeaseSettings, call: LeaseCall) -> Arc<Self> {
        Arc::new(TokenLeases {
            settings,
            call,
            origin: Instant::now(),
            table: ArcSwap::default(),
            sketch: (0..SKETCH).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn settings(&self) -> TokenLeaseSettings {
        self.settings
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn slot(&self, tenant: &str, limit: Limit) -> Option<(u64, Arc<Slot>)> {
        let h = stable_hash(tenant, limit);
        let table = self.table.load();
        let slot = table.get(&h)?;
        (slot.limit == limit && &*slot.tenant == tenant).then(|| (h, Arc::clone(slot)))
    }

    /// Decides a take of `cost` from this node's lease of the bucket, if it
    /// holds one granted by `owner` under `quota` that covers it.
    pub fn spend(
        self: &Arc<Self>,
        view: &ClusterView,
        (tenant, limit): (&str, Limit),
        quota: BucketQuota,
        cost: u64,
        owner: &str,
    ) -> Option<Routed> {
        let (_, slot) = self.slot(tenant, limit)?;
        let now = self.now();
        slot.last_used.store(now, Relaxed);
        let lease = slot.lease.load_full()?;
        if &*lease.owner != owner || lease.grant.quota != quota || now >= slot.until.load(Relaxed) {
            // The owner moved, an override changed the quota, or it expired.
            self.retire(view, &slot);
            return None;
        }
        let left = slot
            .remaining
            .fetch_update(Relaxed, Relaxed, |r| r.checked_sub(cost))
            .ok()?
            - cost;
        slot.used.fetch_add(cost, Relaxed);
        let until = slot.until.load(Relaxed);
        if left < lease.grant.units / 3
            || until.saturating_sub(now) < self.settings.ttl.as_nanos() as u64 / 3
        {
            self.ask(view, &slot, owner);
        }
        Some(Routed {
            verdict: Verdict::Limited {
                quota,
                decision: Decision::Allowed {
                    remaining: left,
                    reset_after_ns: quota.refill_ns(0).min(until.saturating_sub(now)),
                },
            },
            route: Route::Leased,
            owner: Some(owner.to_string()),
        })
    }

    /// Counts a check of `cost` forwarded to `owner`; a bucket forwarded
    /// faster than the threshold asks for a lease.
    pub fn note_forward(
        self: &Arc<Self>,
        view: &ClusterView,
        (tenant, limit): (&str, Limit),
        cost: u64,
        owner: &str,
    ) {
        if let Some((_, slot)) = self.slot(tenant, limit) {
            slot.used.fetch_add(cost, Relaxed);
            self.ask(view, &slot, owner);
            return;
        }
        let h = stable_hash(tenant, limit);
        let now = self.now();
        let window = now / (WINDOW_MS * 1_000_000);
        let cell = &self.sketch[(h as usize) % SKETCH];
        let prev = cell
            .fetch_update(Relaxed, Relaxed, |v| {
                Some(if v >> 32 == window & 0xffff_ffff {
                    v + 1
                } else {
                    (window << 32) | 1
                })
            })
            .unwrap_or(0);
        let count = if prev >> 32 == window & 0xffff_ffff {
            (prev & 0xffff_ffff) + 1
        } else {
            1
        };
        let hot = u64::from(self.settings.threshold) * WINDOW_MS / 1000;
        if count != hot.max(1) {
            return;
        }
        let slot = Arc::new(Slot {
            tenant: tenant.into(),
            limit,
            remaining: AtomicU64::new(0),
            until: AtomicU64::new(0),
            lease: ArcSwapOption::empty(),
            asking: AtomicBool::new(false),
            quiet_until: AtomicU64::new(0),
            used: AtomicU64::new(count * cost),
            since: AtomicU64::new(now.saturating_sub(WINDOW_MS * 1_000_000)),
            last_used: AtomicU64::new(now),
        });
        self.table.rcu(|t| {
            let mut t = HashMap::clone(t);
            t.entry(h).or_insert_with(|| Arc::clone(&slot));
            t
        });
        self.ask(view, &slot, owner);
    }

    /// Asks `owner` for a lease sized to the demand measured, unless a
    /// request is under way or the owner refused lately.
    fn ask(self: &Arc<Self>, view: &ClusterView, slot: &Arc<Slot>, owner: &str) {
        let now = self.now();
        if now < slot.quiet_until.load(Relaxed) || slot.asking.swap(true, Relaxed) {
            return;
        }
        let Some(member) = view.member(owner).cloned() else {
            slot.asking.store(false, Relaxed);
            return;
        };
        let ttl = self.settings.ttl.as_nanos() as u64;
        let elapsed = now.saturating_sub(slot.since.load(Relaxed)).max(1_000_000);
        let used = u128::from(slot.used.load(Relaxed));
        let ask = (used * u128::from(ttl) * 2 / u128::from(elapsed)).clamp(1, u128::from(u32::MAX))
            as u64;
        let req = TokenLeaseRequest {
            origin: view.self_id.to_string(),
            tenant: slot.tenant.to_string(),
            limit: slot.limit.as_str().to_string(),
            ask,
            give_back: None,
        };
        let (this, slot, owner) = (Arc::clone(self), Arc::clone(slot), Box::<str>::from(owner));
        let origin = view.self_id.to_string();
        let answer = (self.call)(&member, req);
        actix::spawn(async move {
            let grant = answer.await.ok().and_then(|r| r.grant);
            let sent = now;
            let now = this.now();
            match grant {
                Some(grant) => {
                    let old = slot.remaining.swap(0, Relaxed);
                    let previous = slot.lease.swap(Some(Arc::new(Lease { grant, owner })));
                    slot.until.store(sent + grant.ttl_ns.min(ttl), Relaxed);
                    slot.remaining.store(grant.units, Relaxed);
                    slot.used.store(0, Relaxed);
                    slot.since.store(now, Relaxed);
                    if let (Some(p), true) = (previous, old > 0) {
                        this.give_back(&origin, &member, &slot, &p, old);
                    }
                }
                None => slot.quiet_until.store(now + ttl / 4, Relaxed),
            }
            slot.asking.store(false, Relaxed);
        });
    }

    /// Returns what is left of the slot's lease to its owner.
    fn retire(&self, view: &ClusterView, slot: &Slot) {
        let left = slot.remaining.swap(0, Relaxed);
        let Some(lease) = slot.lease.swap(None) else {
            return;
        };
        if left > 0 {
            if let Some(member) = view.member(&lease.owner).cloned() {
                self.give_back(&view.self_id, &member, slot, &lease, left);
            }
        }
    }

    /// Sends `unspent` units of `lease` back to its owner (best effort: a
    /// return that does not arrive leaves them spent).
    fn give_back(&self, origin: &str, member: &Member, slot: &Slot, lease: &Lease, unspent: u64) {
        let req = TokenLeaseRequest {
            origin: origin.to_string(),
            tenant: slot.tenant.to_string(),
            limit: slot.limit.as_str().to_string(),
            ask: 0,
            give_back: Some((lease.grant.id, unspent)),
        };
        let sent = (self.call)(member, req);
        actix::spawn(async move {
            let _ = sent.await;
        });
    }

    /// Returns expired leases and forgets buckets idle for ten lease
    /// lifetimes; with `all`, returns every lease (the node leaves).
    pub fn sweep(&self, view: &ClusterView, all: bool) {
        let now = self.now();
        let ttl = self.settings.ttl.as_nanos() as u64;
        let table = self.table.load_full();
        let mut idle = Vec::new();
        for (h, slot) in table.iter() {
            if all || now >= slot.until.load(Relaxed) {
                self.retire(view, slot);
            }
            if now.saturating_sub(slot.last_used.load(Relaxed)) > 10 * ttl {
                idle.push(*h);
            }
        }
        if !idle.is_empty() {
            self.table.rcu(|t| {
                let mut t = HashMap::clone(t);
                for h in &idle {
                    t.remove(h);
                }
                t
            });
        }
    }

    /// Sweeps every half lease lifetime, for ever (spawn it on an arbiter).
    pub async fn run_sweeper(self: Arc<Self>, router: Router) {
        loop {
            tokio::time::sleep(self.settings.ttl / 2).await;
            self.sweep(&router.view(), false);
        }
    }

    /// Buckets this node holds a lease of (tests, metrics).
    pub fn held(&self) -> usize {
        let now = self.now();
        self.table
            .load()
            .values()
            .filter(|s| s.lease.load().is_some() && now < s.until.load(Relaxed))
            .count()
    }
}

/// The owner's side of `POST /cluster/v1/token-lease`: accepts a return,
/// then grants, when this node owns the key by its own view.
pub async fn serve(router: &Router, req: TokenLeaseRequest, limit: Limit) -> TokenLeaseResponse {
    let view = router.view();
    let node = view.self_id.to_string();
    let limiter = router.local();
    let metrics = router.metrics();
    if let Some((id, unspent)) = req.give_back {
        let back = limiter
            .return_tokens(&req.tenant, limit, (&req.origin, id), unspent)
            .await;
        metrics.token_lease_returned_units.inc_by(back);
    }
    let owned = view
        .owner(&req.tenant, limit)
        .is_some_and(|o| view.is_self(o));
    let Some(settings) = router.token_leases().map(|t| t.settings()) else {
        return TokenLeaseResponse { node, grant: None };
    };
    if req.ask == 0 || !owned || req.origin == node {
        return TokenLeaseResponse { node, grant: None };
    }
    let lease = (
        settings.ttl.as_nanos() as u64,
        settings.margin().as_nanos() as u64,
    );
    let grant = limiter
        .grant_tokens(&req.tenant, limit, &req.origin, req.ask, lease)
        .await
        .ok()
        .flatten()
        .map(|(quota, g)| {
            metrics.token_lease_grants.inc();
            metrics.token_lease_granted_units.inc_by(g.units);
            WireGrant {
                id: g.id,
                units: g.units,
                ttl_ns: g.ttl_ns,
                quota,
            }
        });
    TokenLeaseResponse { node, grant }
}

#[cfg(test)]
mod tests;
