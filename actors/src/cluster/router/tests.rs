//! Routing across several in-process "nodes": each has its own limiter,
//! router and view; peers talk through [`PeerClient`]s that run the real
//! encode → serve_batch → decode path in process (no network).

use std::sync::Mutex;

use futures_util::future::{join_all, FutureExt, LocalBoxFuture};
use llmtrace_cluster_config::RateLimitConfig;

use super::*;
use crate::cache::InMemoryCacheLayer;
use crate::cluster::rpc::wire::{self as rpc, BatchRequest};
use crate::cluster::view::MemberState;
use crate::core::clock::ManualClock;
use crate::metrics::Counter;
use crate::shard::ShardTiming;

type Registry = Arc<Mutex<HashMap<String, Router>>>;

fn limits(rate: u32, burst: u32) -> Arc<RateLimitConfig> {
    Arc::new(RateLimitConfig::with_requests(rate, burst))
}

fn member(id: &str, i: u16) -> Member {
    Member {
        node_id: id.into(),
        generation: 1,
        state: MemberState::Ready,
        public_addr: None,
        cluster_addr: ([127, 0, 0, 1], 10_000 + i).into(),
        admin_addr: None,
        fingerprint: None,
    }
}

fn view(self_id: &str, ring: &[&str]) -> ViewHandle {
    let members = ring
        .iter()
        .enumerate()
        .map(|(i, id)| member(id, i as u16))
        .collect();
    ViewHandle::new(ClusterView::from_members(self_id, members, 64))
}

/// How the in-process transport misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Every call fails.
    Down,
    /// The first call is delivered and decided, but its answer is lost.
    LoseFirstAnswer,
}

struct InProcess {
    target: String,
    registry: Registry,
    fault: Fault,
    calls: Arc<AtomicU64>,
}

impl PeerClient for InProcess {
    fn call(&self, body: Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, CallError>> {
        let n = self.calls.fetch_add(1, Relaxed);
        let router = self.registry.lock().unwrap().get(&self.target).cloned();
        let fault = self.fault;
        async move {
            if fault == Fault::Down {
                return Err(CallError::Unreachable("connection refused".into()));
            }
            let router = router.ok_or_else(|| CallError::Unreachable("no such node".into()))?;
            let req = rpc::decode_request(&body).map_err(|e| CallError::Rejected(e.to_string()))?;
            let resp = router.serve_batch(req).await;
            if fault == Fault::LoseFirstAnswer && n == 0 {
                return Err(CallError::Timeout);
            }
            Ok(rpc::encode(&resp))
        }
        .boxed_local()
    }
}

struct Cluster {
    routers: Vec<Router>,
    calls: Arc<AtomicU64>,
}

fn cluster(
    views: Vec<ViewHandle>,
    fault: Fault,
    policy: OwnerUnreachable,
    config: Arc<RateLimitConfig>,
) -> Cluster {
    let registry: Registry = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let mut routers = Vec::new();
    for v in views {
        let (reg, calls) = (Arc::clone(&registry), Arc::clone(&calls));
        let factory: ClientFactory = Arc::new(move |m: &Member| {
            Box::new(InProcess {
                target: m.node_id.clone(),
                registry: Arc::clone(&reg),
                fault,
                calls: Arc::clone(&calls),
            }) as Box<dyn PeerClient>
        });
        let limiter = Limiter::start(
            2,
            Arc::clone(&config),
            Arc::new(InMemoryCacheLayer::new(clock.clone())),
            clock.clone(),
            ShardTiming::default(),
        );
        let settings = RouterSettings {
            batch: BatchSettings {
                max_items: 64,
                max_wait: Duration::from_micros(200),
            },
            forward_timeout: Duration::from_millis(500),
            on_owner_unreachable: policy,
        };
        let id = v.load().self_id.to_string();
        let router = Router::new(limiter, v, settings, Arc::default(), factory);
        registry.lock().unwrap().insert(id, router.clone());
        routers.push(router);
    }
    Cluster { routers, calls }
}

const NODES: [&str; 3] = ["a", "b", "c"];

fn agreed_views() -> Vec<ViewHandle> {
    NODES.iter().map(|id| view(id, &NODES)).collect()
}

#[actix_rt::test]
async fn checks_from_every_node_share_one_exact_bucket() {
    let c = cluster(
        agreed_views(),
        Fault::None,
        OwnerUnreachable::Local,
        limits(1, 100),
    );
    let checks = (0..900).map(|i| c.routers[i % 3].check("hot", Limit::REQUESTS, 1));
    let results = join_all(checks).await;
    let admitted = results
        .iter()
        .filter(|r| r.as_ref().unwrap().verdict.is_allowed())
        .count();
    assert_eq!(admitted, 100, "burst of 100 across three nodes, never 300");
    let owner = c.routers[0]
        .view()
        .owner("hot", Limit::REQUESTS)
        .unwrap()
        .to_string();
    for (i, r) in results.iter().enumerate() {
        let r = r.as_ref().unwrap();
        let expected = if NODES[i % 3] == owner {
            Route::Local
        } else {
            Route::Forwarded
        };
        assert_eq!(r.route, expected);
        assert_eq!(r.owner.as_deref(), Some(owner.as_str()));
    }
    // Forwards were batched: far fewer calls than forwarded checks.
    let forwarded: u64 = c.routers.iter().map(|r| r.metrics().forwarded.get()).sum();
    assert_eq!(forwarded, 600);
    // Each client check counted once, on the node it came to, by route.
    let routed = |route: fn(&ClusterMetrics) -> &Counter| -> u64 {
        c.routers.iter().map(|r| route(r.metrics()).get()).sum()
    };
    assert_eq!(routed(|m| &m.routed_local), 300);
    assert_eq!(routed(|m| &m.routed_forwarded), 600);
    assert_eq!(routed(|m| &m.routed_degraded), 0);
    assert!(
        c.calls.load(Relaxed) < 100,
        "{} calls",
        c.calls.load(Relaxed)
    );
}

#[actix_rt::test]
async fn many_tenants_each_exact() {
    let c = cluster(
        agreed_views(),
        Fault::None,
        OwnerUnreachable::Local,
        limits(1, 5),
    );
    let c = &c;
    let checks = (0..600).map(|i| async move {
        let tenant = format!("t{}", i % 20);
        c.routers[i % 3].check(&tenant, Limit::REQUESTS, 1).await
    });
    let results = join_all(checks).await;
    let mut admitted: HashMap<String, usize> = HashMap::new();
    for (i, r) in results.iter().enumerate() {
        if r.as_ref().unwrap().verdict.is_allowed() {
            *admitted.entry(format!("t{}", i % 20)).or_default() += 1;
        }
    }
    assert_eq!(admitted.len(), 20);
    assert!(admitted.values().all(|n| *n == 5), "{admitted:?}");
}

async fn first_forwarded(c: &Cluster) -> (usize, String) {
    for i in 0..100 {
        let t = format!("t{i}");
        let v = c.routers[0].view();
        if v.owner(&t, Limit::REQUESTS) != Some("a") {
            return (0, t);
        }
    }
    unreachable!("some tenant is owned elsewhere")
}

#[actix_rt::test]
async fn unreachable_owner_applies_each_policy() {
    for (policy, allowed) in [
        (OwnerUnreachable::Local, true),
        (OwnerUnreachable::Allow, true),
        (OwnerUnreachable::Deny, false),
    ] {
        let c = cluster(agreed_views(), Fault::Down, policy, limits(1, 1));
        let (node, tenant) = first_forwarded(&c).await;
        let r = c.routers[node]
            .check(&tenant, Limit::REQUESTS, 1)
            .await
            .unwrap();
        assert_eq!(r.route, Route::Degraded(policy));
        assert_eq!(r.verdict.is_allowed(), allowed, "{policy:?}");
        let m = c.routers[node].metrics();
        assert_eq!(m.retries.get(), 1, "retried once");
        assert_eq!(m.routed_degraded.get(), 1);
        assert_eq!(m.routed_forwarded.get() + m.routed_local.get(), 0);
        assert_eq!(m.degraded_tenants(), 1);
        assert_eq!(c.calls.load(Relaxed), 2);
        if policy == OwnerUnreachable::Local {
            // Decided on the local shard: its bucket (burst 1) is now empty.
            let again = c.routers[node]
                .check(&tenant, Limit::REQUESTS, 1)
                .await
                .unwrap();
            assert!(!again.verdict.is_allowed());
        }
    }
}

#[actix_rt::test]
async fn a_retry_after_a_lost_answer_is_not_counted_twice() {
    let c = cluster(
        agreed_views(),
        Fault::LoseFirstAnswer,
        OwnerUnreachable::Deny,
        limits(1, 2),
    );
    let (node, tenant) = first_forwarded(&c).await;
    let r = c.routers[node]
        .check(&tenant, Limit::REQUESTS, 1)
        .await
        .unwrap();
    assert_eq!(
        r.route,
        Route::Forwarded,
        "the retry got the owner's answer"
    );
    assert!(r.verdict.is_allowed());
    let owner = c.routers[node]
        .view()
        .owner(&tenant, Limit::REQUESTS)
        .unwrap()
        .to_string();
    let owner_router = c.routers.iter().find(|r| r.view().is_self(&owner)).unwrap();
    assert_eq!(owner_router.metrics().dedup_hits.get(), 1);
    // Burst 2, one check consumed once: exactly one more is admitted.
    let r = owner_router
        .check(&tenant, Limit::REQUESTS, 1)
        .await
        .unwrap();
    assert!(r.verdict.is_allowed());
    let r = owner_router
        .check(&tenant, Limit::REQUESTS, 1)
        .await
        .unwrap();
    assert!(!r.verdict.is_allowed());
}

#[actix_rt::test]
async fn disagreeing_views_forward_at_most_twice() {
    // Each node believes the next one is the only member: a → b → c → a.
    let views = vec![view("a", &["b"]), view("b", &["c"]), view("c", &["a"])];
    let c = cluster(views, Fault::None, OwnerUnreachable::Deny, limits(1, 1));
    let r = c.routers[0].check("t", Limit::REQUESTS, 1).await.unwrap();
    assert_eq!(r.route, Route::Forwarded);
    assert!(r.verdict.is_allowed());
    // a forwarded to b, b re-forwarded to c, c decided locally.
    assert_eq!(c.routers[1].metrics().reforwarded.get(), 1);
    assert_eq!(c.routers[2].metrics().rpc_checks.get(), 1);
    assert_eq!(c.routers[2].metrics().forwarded.get(), 0);
    // Only the client's check is routed: a, by forwarding.
    assert_eq!(c.routers[0].metrics().routed_forwarded.get(), 1);
    for r in &c.routers[1..] {
        let m = r.metrics();
        let routed = m.routed_local.get() + m.routed_forwarded.get() + m.routed_degraded.get();
        assert_eq!(routed, 0);
    }
    assert_eq!(c.calls.load(Relaxed), 2);
}

#[actix_rt::test]
async fn invalid_items_in_a_batch_get_their_own_error() {
    let c = cluster(
        agreed_views(),
        Fault::None,
        OwnerUnreachable::Local,
        limits(1, 3),
    );
    let check = |id, tenant: &str, cost| WireCheck {
        op: 0,
        id,
        tenant: tenant.into(),
        limit: "requests".into(),
        cost,
        retry: false,
        hops: 1,
    };
    let resp = c.routers[0]
        .serve_batch(BatchRequest {
            origin: "x".into(),
            checks: vec![
                check(1, "ok", 1),
                check(2, "bad tenant", 1),
                check(3, "ok", 0),
                check(4, "ok", 9),
            ],
        })
        .await;
    assert!(matches!(
        resp.results[0].result,
        WireResult::Limited {
            decision: Decision::Allowed { .. },
            ..
        }
    ));
    assert_eq!(
        resp.results[1].result,
        WireResult::Invalid(ErrorCode::BadTenant)
    );
    assert_eq!(
        resp.results[2].result,
        WireResult::Invalid(ErrorCode::ZeroCost)
    );
    assert_eq!(
        resp.results[3].result,
        WireResult::Invalid(ErrorCode::CostAboveBurst)
    );
}

fn token_limits(per_minute: u32, burst: u32) -> Arc<RateLimitConfig> {
    let mut c = (*limits(1, 1)).clone();
    c.tokens.tokens_per_minute = per_minute;
    c.tokens.burst_size = burst;
    Arc::new(c)
}

/// A tenant whose token bucket node "a" does not own.
fn token_tenant_elsewhere(c: &Cluster) -> String {
    let v = c.routers[0].view();
    (0..100)
        .map(|i| format!("tok{i}"))
        .find(|t| v.owner(t, Limit::TOKENS) != Some("a"))
        .expect("some tenant is owned elsewhere")
}

fn remaining(r: &Routed) -> u64 {
    match r.verdict {
        Verdict::Limited { decision, .. } => match decision {
            Decision::Allowed { remaining, .. } | Decision::Refused { remaining, .. } => remaining,
        },
        Verdict::Unlimited => panic!("expected a bucket"),
    }
}

#[actix_rt::test]
async fn refund_and_charge_run_on_the_owner_from_any_node() {
    // 60 tokens per minute: one per second; the clock does not move.
    let c = cluster(
        agreed_views(),
        Fault::None,
        OwnerUnreachable::Deny,
        token_limits(60, 100),
    );
    let tenant = token_tenant_elsewhere(&c);
    let a = &c.routers[0];
    let r = a
        .perform(tenant.clone(), Limit::TOKENS, Op::Take, 100)
        .await
        .unwrap();
    assert_eq!(r.route, Route::Forwarded);
    assert_eq!(remaining(&r), 0);
    // A refund sent from another node lands on the owner's bucket.
    let r = c.routers[1]
        .perform(tenant.clone(), Limit::TOKENS, Op::Refund, 30)
        .await
        .unwrap();
    assert_eq!(remaining(&r), 30);
    // A charge of 50 leaves 20 in debt: a take of 1 waits 21 s.
    let r = c.routers[2]
        .perform(tenant.clone(), Limit::TOKENS, Op::Charge, 50)
        .await
        .unwrap();
    assert_eq!(remaining(&r), 0);
    let r = a
        .perform(tenant.clone(), Limit::TOKENS, Op::Take, 1)
        .await
        .unwrap();
    match r.verdict {
        Verdict::Limited {
            quota,
            decision: Decision::Refused { retry_after_ns, .. },
        } => {
            assert_eq!(retry_after_ns, 21 * crate::NANOS);
            assert!(matches!(quota, BucketQuota::Refill { per_s: 60, .. }));
        }
        v => panic!("{v:?}"),
    }
    // Refunds and charges may exceed the burst; zero is refused as invalid.
    assert!(a
        .perform(tenant.clone(), Limit::TOKENS, Op::Refund, 1_000)
        .await
        .is_ok());
    assert_eq!(
        a.perform(tenant, Limit::TOKENS, Op::Charge, 0).await,
        Err(CheckError::ZeroCost)
    );
}

#[actix_rt::test]
async fn a_retried_charge_is_not_counted_twice() {
    let c = cluster(
        agreed_views(),
        Fault::LoseFirstAnswer,
        OwnerUnreachable::Deny,
        token_limits(60, 100),
    );
    let tenant = token_tenant_elsewhere(&c);
    let r = c.routers[0]
        .perform(tenant.clone(), Limit::TOKENS, Op::Charge, 10)
        .await
        .unwrap();
    assert_eq!(
        r.route,
        Route::Forwarded,
        "the retry got the owner's answer"
    );
    assert_eq!(remaining(&r), 90);
    let owner = c.routers[0]
        .view()
        .owner(&tenant, Limit::TOKENS)
        .unwrap()
        .to_string();
    let owner_router = c.routers.iter().find(|r| r.view().is_self(&owner)).unwrap();
    assert_eq!(owner_router.metrics().dedup_hits.get(), 1);
    // Charged once: exactly 90 tokens are left.
    let take = |n| owner_router.perform(tenant.clone(), Limit::TOKENS, Op::Take, n);
    assert!(take(90).await.unwrap().verdict.is_allowed());
    assert!(!take(1).await.unwrap().verdict.is_allowed());
}

#[actix_rt::test]
async fn unreachable_owner_drops_refunds_under_deny() {
    let c = cluster(
        agreed_views(),
        Fault::Down,
        OwnerUnreachable::Deny,
        token_limits(60, 100),
    );
    let tenant = token_tenant_elsewhere(&c);
    let r = c.routers[0]
        .perform(tenant, Limit::TOKENS, Op::Refund, 10)
        .await
        .unwrap();
    assert_eq!(r.route, Route::Degraded(OwnerUnreachable::Deny));
    assert_eq!(r.verdict, Verdict::Unlimited);
}
