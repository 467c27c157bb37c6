//! Token leases at the owner's shard, with a manual clock: grants are taken
//! from the bucket, the bucket refills only to its ceiling while leases are
//! out, returns are accepted once, a reset revokes, a restored bucket keeps
//! its previous owner's leases counted.

use std::sync::Arc;
use std::time::Duration;

use llmtrace_cluster_config::{Limit, RateLimitConfig};

use crate::cache::InMemoryCacheLayer;
use crate::core::bucket::NANOS;
use crate::core::clock::ManualClock;
use crate::local::limiter::Limiter;
use crate::shard::ShardTiming;

const MS: u64 = 1_000_000;
const LEASE: (u64, u64) = (200 * MS, 50 * MS);

fn start(write_behind: bool) -> (Limiter, Arc<ManualClock>, Arc<InMemoryCacheLayer>) {
    let clock = ManualClock::new(1_000 * NANOS);
    let cache = Arc::new(InMemoryCacheLayer::new(clock.clone()));
    let limiter = Limiter::start(
        1,
        Arc::new(RateLimitConfig::with_requests(10, 4)),
        cache.clone(),
        clock.clone(),
        ShardTiming {
            write_behind,
            token_lease_horizon: Duration::from_millis(250),
            ..ShardTiming::default()
        },
    );
    (limiter, clock, cache)
}

async fn take(l: &Limiter, n: u64) -> bool {
    l.check("t".into(), Limit::REQUESTS, n)
        .await
        .unwrap()
        .is_allowed()
}

#[actix_rt::test]
async fn a_grant_is_taken_and_the_bucket_refills_only_to_its_ceiling() {
    let (l, clock, _) = start(false);
    let (_, g) = l
        .grant_tokens("t", Limit::REQUESTS, "b", 2, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.units, 2, "min(ask, 4 / 2)");
    assert!(take(&l, 2).await);
    assert!(!take(&l, 1).await, "4 - 2 leased - 2 taken");
    // A plain bucket would refill on: this one holds at most 2 while the
    // lease is out ...
    clock.advance_ns(100 * MS);
    assert!(take(&l, 1).await);
    assert!(!take(&l, 1).await);
    assert_eq!(l.sweep_all().await, 0, "a leased bucket is not dropped");
    // ... and gets the rest back with the lease.
    assert_eq!(
        l.return_tokens("t", Limit::REQUESTS, ("b", g.id), 2).await,
        2
    );
    assert_eq!(
        l.return_tokens("t", Limit::REQUESTS, ("b", g.id), 2).await,
        0,
        "once"
    );
    assert!(take(&l, 2).await && !take(&l, 1).await, "the 2 returned");
}

#[actix_rt::test]
async fn a_reset_revokes_leases_and_counts_them_as_spent() {
    let (l, clock, _) = start(false);
    let (_, g) = l
        .grant_tokens("t", Limit::REQUESTS, "b", 2, LEASE)
        .await
        .unwrap()
        .unwrap();
    l.reset("t", Limit::REQUESTS).await.unwrap();
    assert!(
        take(&l, 2).await && !take(&l, 1).await,
        "full less the lease"
    );
    assert_eq!(
        l.return_tokens("t", Limit::REQUESTS, ("b", g.id), 2).await,
        0
    );
    // Once the lease expired, the bucket fills up again.
    clock.advance_ns(LEASE.0 + LEASE.1 + 400 * MS);
    assert!(take(&l, 4).await);
}

#[actix_rt::test]
async fn a_restored_bucket_keeps_unknown_leases_counted_until_they_expire() {
    let (l, clock, cache) = start(true);
    l.grant_tokens("t", Limit::REQUESTS, "b", 2, LEASE)
        .await
        .unwrap()
        .unwrap();
    // The owner dies: a new one restores the snapshot the grant wrote.
    let l2 = Limiter::start(
        1,
        Arc::new(RateLimitConfig::with_requests(10, 4)),
        cache.clone(),
        clock.clone(),
        ShardTiming {
            token_lease_horizon: Duration::from_millis(250),
            ..ShardTiming::default()
        },
    );
    drop(l);
    clock.advance_ns(100 * MS);
    assert!(take(&l2, 2).await);
    assert!(
        !take(&l2, 1).await,
        "no refill above the level it came with"
    );
    clock.advance_ns(500 * MS);
    assert!(take(&l2, 4).await, "the previous owner's leases expired");
}

#[actix_rt::test]
async fn nothing_is_granted_from_an_empty_bucket() {
    let (l, _, _) = start(false);
    assert!(take(&l, 4).await);
    let grant = l.grant_tokens("t", Limit::REQUESTS, "b", 2, LEASE).await;
    assert_eq!(grant, Ok(None));
}
