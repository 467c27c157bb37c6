//! Token leases between two in-process nodes (the real router, shards,
//! wire encoding and RPC handler; no network): a hot bucket's checks are
//! decided from leases on the node that does not own it, and the bucket
//! stays exact.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::FutureExt;
use llmtrace_cluster_config::{Limit, OwnerUnreachable, RateLimitConfig};

use super::*;
use crate::cache::InMemoryCacheLayer;
use crate::cluster::forwarder::{BatchSettings, PeerClient};
use crate::cluster::router::{ClientFactory, RouterSettings};
use crate::cluster::rpc::token_lease_wire::decode_token_lease;
use crate::cluster::rpc::wire::{self as rpc};
use crate::cluster::view::{MemberState, ViewHandle};
use crate::core::clock::ManualClock;
use crate::local::limiter::Limiter;
use crate::shard::ShardTiming;

type Registry = Arc<Mutex<HashMap<String, Router>>>;

struct Batches(String, Registry);

impl PeerClient for Batches {
    fn call(&self, body: Vec<u8>) -> LocalBoxFuture<'static, Result<Vec<u8>, CallError>> {
        let router = self.1.lock().unwrap().get(&self.0).cloned().unwrap();
        async move {
            let req = rpc::decode_request(&body).map_err(|e| CallError::Rejected(e.to_string()))?;
            Ok(rpc::encode(&router.serve_batch(req).await))
        }
        .boxed_local()
    }
}

fn nodes(config: RateLimitConfig) -> Vec<Router> {
    let ids = ["a", "b"];
    let members: Vec<Member> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Member {
            node_id: id.to_string(),
            generation: 1,
            state: MemberState::Ready,
            public_addr: None,
            cluster_addr: ([127, 0, 0, 1], 20_000 + i as u16).into(),
            admin_addr: None,
            fingerprint: None,
        })
        .collect();
    let registry: Registry = Arc::default();
    let config = Arc::new(config);
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let settings = TokenLeaseSettings {
        threshold: 100,
        ttl: Duration::from_millis(300),
    };
    ids.iter()
        .map(|id| {
            let view = ViewHandle::new(ClusterView::from_members(id, members.clone(), 64));
            let reg = Arc::clone(&registry);
            let factory: ClientFactory = Arc::new(move |m: &Member| {
                Box::new(Batches(m.node_id.clone(), Arc::clone(&reg))) as Box<dyn PeerClient>
            });
            let limiter = Limiter::start(
                1,
                Arc::clone(&config),
                Arc::new(InMemoryCacheLayer::new(clock.clone())),
                clock.clone(),
                ShardTiming {
                    write_behind: false,
                    token_lease_horizon: settings.horizon(),
                    ..ShardTiming::default()
                },
            );
            let reg = Arc::clone(&registry);
            let call: LeaseCall = Arc::new(move |m: &Member, req: TokenLeaseRequest| {
                let router = reg.lock().unwrap().get(&m.node_id).cloned().unwrap();
                let body = rpc::encode(&req);
                async move {
                    let limits = router.local().limits().clone();
                    let (req, limit) = decode_token_lease(&body, &limits)
                        .map_err(|e| CallError::Rejected(e.to_string()))?;
                    Ok(serve(&router, req, limit).await)
                }
                .boxed_local()
            });
            let router = Router::new(
                limiter,
                view,
                RouterSettings {
                    batch: BatchSettings {
                        max_items: 64,
                        max_wait: Duration::from_micros(200),
                    },
                    forward_timeout: Duration::from_millis(500),
                    on_owner_unreachable: OwnerUnreachable::Local,
                },
                Arc::default(),
                factory,
            )
            .with_token_leases(TokenLeases::new(settings, call));
            registry
                .lock()
                .unwrap()
                .insert(id.to_string(), router.clone());
            router
        })
        .collect()
}

/// A key owned by node "a": checks sent to "b" are forwarded or leased.
fn key_of_a(r: &Router) -> String {
    (0..)
        .map(|i| format!("hot{i}"))
        .find(|k| r.view().owner(k, Limit::REQUESTS) == Some("a"))
        .unwrap()
}

#[actix_rt::test]
async fn a_hot_bucket_is_decided_from_leases_and_stays_exact() {
    // A burst of 300 and (manual clock standing still) no refill.
    let routers = nodes(RateLimitConfig::with_requests(1, 300));
    let key = key_of_a(&routers[0]);
    let mut admitted = 0;
    for i in 0..1_000 {
        let r = &routers[usize::from(i % 4 != 0)];
        let routed = r.check(&key, Limit::REQUESTS, 1).await.unwrap();
        admitted += usize::from(routed.verdict.is_allowed());
    }
    assert!(admitted <= 300, "admitted {admitted} of a burst of 300");
    let m = routers[1].metrics();
    let (leased, forwarded) = (m.routed_leased.get(), m.routed_forwarded.get());
    assert!(leased > 0, "leased {leased}, forwarded {forwarded}");
    // Whatever was leased and not spent goes back: the owner's bucket and
    // the leases together still hold exactly what was not admitted.
    routers[1]
        .token_leases()
        .unwrap()
        .sweep(&routers[1].view(), true);
    let level = || async {
        let report = routers[0].local().inspect(&key, Limit::REQUESTS).await;
        report.unwrap().unwrap().1.level / crate::core::bucket::NANOS
    };
    let want = 300 - admitted as u64;
    let returned = async {
        while level().await != want {
            tokio::task::yield_now().await;
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(5), returned).await;
    assert!(waited.is_ok(), "level {} != {want}", level().await);
}

#[actix_rt::test]
async fn when_checks_never_refuse_almost_none_are_forwarded() {
    let routers = nodes(RateLimitConfig::with_requests(100_000, 100_000));
    let key = key_of_a(&routers[0]);
    for _ in 0..3_000 {
        let routed = routers[1].check(&key, Limit::REQUESTS, 1).await.unwrap();
        assert!(routed.verdict.is_allowed());
    }
    let m = routers[1].metrics();
    let (leased, forwarded) = (m.routed_leased.get(), m.routed_forwarded.get());
    assert_eq!(leased + forwarded, 3_000);
    assert!(
        forwarded * 10 <= 3_000,
        "{forwarded} of 3000 forwarded ({leased} leased)"
    );
}
