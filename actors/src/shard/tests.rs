//! The llmtrace seed's six behaviours and the regressions for its defects,
//! through the real front and shard actors, with a manual clock.

use futures_util::future::{self, BoxFuture, FutureExt};
use llmtrace_cluster_config::TenantOverride;

use std::time::Duration;

use crate::cache::{CacheError, CacheLayer, InMemoryCacheLayer, SnapshotWrite};
use crate::core::bucket::Decision;
use crate::core::bucket::{BucketState, NANOS};
use crate::core::clock::ManualClock;
use crate::core::key::BucketKey;
use crate::core::verdict::{CheckError, Verdict};
use crate::local::limiter::Limiter;
use crate::shard::ShardTiming;
use llmtrace_cluster_config::Limit;
use llmtrace_cluster_config::RateLimitConfig;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// 2026-11-27T12:00:59.000Z: one second before a wall-clock minute boundary.
const T0: u64 = 1_795_780_859_000_000_000;

fn limits(rate: u32, burst: u32) -> RateLimitConfig {
    RateLimitConfig::with_requests(rate, burst)
}

struct Fixture {
    limiter: Limiter,
    clock: Arc<ManualClock>,
    cache: Arc<InMemoryCacheLayer>,
}

fn start(config: RateLimitConfig, shards: usize) -> Fixture {
    let clock = ManualClock::new(T0);
    let cache = Arc::new(InMemoryCacheLayer::new(clock.clone()));
    let limiter = Limiter::start(
        shards,
        Arc::new(config),
        cache.clone(),
        clock.clone(),
        ShardTiming::default(),
    );
    Fixture {
        limiter,
        clock,
        cache,
    }
}

async fn allowed(l: &Limiter, tenant: &str) -> bool {
    l.check(tenant.to_string(), Limit::REQUESTS, 1)
        .await
        .expect("valid check")
        .is_allowed()
}

#[actix_rt::test]
async fn allowed_under_limit() {
    let f = start(limits(100, 200), 2);
    assert!(allowed(&f.limiter, "tenant-a").await);
}

#[actix_rt::test]
async fn burst_handling() {
    let f = start(limits(1, 3), 2);
    for _ in 0..3 {
        assert!(allowed(&f.limiter, "t").await);
    }
    assert!(!allowed(&f.limiter, "t").await);
}

#[actix_rt::test]
async fn per_tenant_isolation() {
    let f = start(limits(1, 2), 2);
    assert!(allowed(&f.limiter, "a").await);
    assert!(allowed(&f.limiter, "a").await);
    assert!(!allowed(&f.limiter, "a").await);
    assert!(allowed(&f.limiter, "b").await);
}

#[actix_rt::test]
async fn tenant_overrides() {
    let mut config = limits(1, 2);
    config.tenant_overrides.insert(
        "special".into(),
        TenantOverride {
            requests_per_second: 500,
            burst_size: 1000,
        },
    );
    let f = start(config, 2);
    assert!(allowed(&f.limiter, "default").await);
    assert!(allowed(&f.limiter, "default").await);
    assert!(!allowed(&f.limiter, "default").await);
    for _ in 0..100 {
        assert!(allowed(&f.limiter, "special").await);
    }
}

#[actix_rt::test]
async fn disabled_rate_limiting() {
    let mut config = limits(1, 1);
    config.enabled = false;
    let f = start(config, 1);
    for _ in 0..100 {
        assert_eq!(
            f.limiter.check("t".into(), Limit::REQUESTS, 1).await,
            Ok(Verdict::Unlimited)
        );
    }
    // Rate 0 also means unlimited.
    let f = start(limits(0, 1), 1);
    assert_eq!(
        f.limiter.check("t".into(), Limit::REQUESTS, 1).await,
        Ok(Verdict::Unlimited)
    );
}

#[actix_rt::test]
async fn exceeded_includes_retry_after() {
    let f = start(limits(1, 1), 1);
    assert!(allowed(&f.limiter, "t").await);
    match f
        .limiter
        .check("t".into(), Limit::REQUESTS, 1)
        .await
        .unwrap()
    {
        Verdict::Limited {
            quota,
            decision: Decision::Refused { retry_after_ns, .. },
        } => {
            assert!(crate::retry_after_secs(retry_after_ns) >= 1);
            assert!(
                matches!(quota, crate::BucketQuota::Refill { rate: 1, .. }),
                "limit (requests per second) is reported"
            );
        }
        v => panic!("expected a refusal, got {v:?}"),
    }
}

#[actix_rt::test]
async fn invalid_costs_are_errors_not_decisions() {
    let f = start(limits(1, 5), 1);
    assert_eq!(
        f.limiter.check("t".into(), Limit::REQUESTS, 0).await,
        Err(CheckError::ZeroCost)
    );
    assert_eq!(
        f.limiter.check("t".into(), Limit::REQUESTS, 6).await,
        Err(CheckError::CostAboveBurst { cost: 6, burst: 5 })
    );
    // The invalid checks took nothing.
    assert!(f
        .limiter
        .check("t".into(), Limit::REQUESTS, 5)
        .await
        .unwrap()
        .is_allowed());
}

/// Regression: the seed's minute-keyed cache refilled every bucket at each
/// minute boundary.
#[actix_rt::test]
async fn drained_bucket_stays_drained_across_minute_boundary() {
    let f = start(limits(1, 50), 2);
    let v = f
        .limiter
        .check("t".into(), Limit::REQUESTS, 50)
        .await
        .unwrap();
    assert!(v.is_allowed());
    f.clock.advance_ns(NANOS / 2); // 12:00:59.5
    assert!(!allowed(&f.limiter, "t").await);
    f.clock.advance_ns(NANOS); // 12:01:00.5: one unit refilled, not fifty
    assert!(allowed(&f.limiter, "t").await);
    assert!(!allowed(&f.limiter, "t").await);
}

/// Regression: the seed's GET-modify-SET let concurrent checks over-admit.
#[actix_rt::test]
async fn concurrent_checks_never_over_admit() {
    let f = start(limits(1, 100), 4);
    let checks = (0..1_000).map(|_| f.limiter.check("hot".into(), Limit::REQUESTS, 1));
    let results = future::join_all(checks).await;
    let admitted = results
        .iter()
        .filter(|r| r.as_ref().unwrap().is_allowed())
        .count();
    assert_eq!(admitted, 100);
}

#[actix_rt::test]
async fn restores_a_snapshot_on_first_check() {
    let f = start(limits(1, 10), 2);
    let drained = BucketState {
        level: 0,
        updated_ns: T0,
    };
    let key = BucketKey::new("seen", Limit::REQUESTS);
    f.cache
        .store(Arc::new(vec![SnapshotWrite {
            key,
            state: drained.into(),
            ttl_ms: 60_000,
        }]))
        .await
        .unwrap();
    assert!(!allowed(&f.limiter, "seen").await);
    f.clock.advance_ns(NANOS);
    assert!(allowed(&f.limiter, "seen").await);
    assert_eq!(f.limiter.metrics().total(|s| &s.restore_hits), 1);
}

#[actix_rt::test]
async fn write_behind_stores_dirty_buckets_and_restart_keeps_them() {
    let f = start(limits(1, 10), 2);
    f.limiter
        .check("t".into(), Limit::REQUESTS, 10)
        .await
        .unwrap();
    assert_eq!(f.limiter.flush_all(Duration::from_secs(5)).await, Ok(1));
    assert_eq!(
        f.limiter.flush_all(Duration::from_secs(5)).await,
        Ok(0),
        "written once"
    );
    // A second limiter (a restarted node) on the same cache sees the drain.
    let restarted = Limiter::start(
        3,
        Arc::new(limits(1, 10)),
        f.cache.clone(),
        f.clock.clone(),
        ShardTiming::default(),
    );
    assert!(!allowed(&restarted, "t").await);
}

#[actix_rt::test]
async fn full_buckets_leave_memory() {
    let f = start(limits(10, 10), 2);
    for t in ["a", "b", "c"] {
        assert!(allowed(&f.limiter, t).await);
    }
    assert_eq!(f.limiter.metrics().resident(), 3);
    assert_eq!(f.limiter.sweep_all().await, 0, "not full yet");
    f.clock.advance_ns(NANOS / 10);
    assert_eq!(f.limiter.sweep_all().await, 3);
    assert_eq!(f.limiter.metrics().resident(), 0);
    assert!(allowed(&f.limiter, "a").await, "comes back full");
}

/// A cache layer that always fails: Redis down.
struct DownCache;

impl CacheLayer for DownCache {
    fn name(&self) -> &'static str {
        "down"
    }
    fn restore(
        &self,
        _: BucketKey,
    ) -> BoxFuture<'static, Result<Option<crate::core::held::Held>, CacheError>> {
        future::ready(Err(CacheError::Unavailable("connection refused".into()))).boxed()
    }
    fn store(&self, _: Arc<Vec<SnapshotWrite>>) -> BoxFuture<'static, Result<(), CacheError>> {
        future::ready(Err(CacheError::Unavailable("connection refused".into()))).boxed()
    }
}

#[actix_rt::test]
async fn cache_down_still_answers_and_keeps_dirty_state_bounded() {
    let clock = ManualClock::new(T0);
    let limiter = Limiter::start(
        2,
        Arc::new(limits(1, 2)),
        Arc::new(DownCache),
        clock.clone(),
        ShardTiming::default(),
    );
    assert!(allowed(&limiter, "t").await);
    assert!(allowed(&limiter, "t").await);
    assert!(!allowed(&limiter, "t").await, "answered from memory");
    for _ in 0..3 {
        assert!(limiter.flush_all(Duration::from_secs(5)).await.is_err());
    }
    let m = limiter.metrics();
    assert_eq!(m.total(|s| &s.restore_errors), 1);
    assert_eq!(m.total(|s| &s.snapshot_errors), 3);
    // The failed batches were put back, once: one dirty bucket, not three.
    assert_eq!(m.dirty(), 1);
}

#[actix_rt::test]
async fn without_write_behind_nothing_is_copied_to_the_cache_layer() {
    let clock = ManualClock::new(T0);
    let cache = Arc::new(InMemoryCacheLayer::new(clock.clone()));
    let limiter = Limiter::start(
        2,
        Arc::new(limits(1, 10)),
        cache.clone(),
        clock,
        ShardTiming {
            write_behind: false,
            ..ShardTiming::default()
        },
    );
    assert!(limiter
        .check("t".into(), Limit::REQUESTS, 10)
        .await
        .unwrap()
        .is_allowed());
    assert_eq!(limiter.flush_all(Duration::from_secs(5)).await, Ok(0));
    assert!(cache.is_empty());
    assert!(
        !allowed(&limiter, "t").await,
        "the shard still holds the drained bucket"
    );
}

#[actix_rt::test]
async fn a_handed_over_bucket_redirects_until_reclaimed() {
    let f = start(limits(1, 10), 2);
    assert!(f
        .limiter
        .check("t".into(), Limit::REQUESTS, 10)
        .await
        .unwrap()
        .is_allowed());
    let given = f
        .limiter
        .take("t", Limit::REQUESTS, "node-b".into())
        .await
        .unwrap();
    assert_eq!(
        given,
        Some(crate::core::held::Held::Level(BucketState {
            level: 0,
            updated_ns: T0
        })),
        "the drained state is handed over"
    );
    assert_eq!(f.limiter.metrics().resident(), 0);
    // Checks for the key now name the new owner instead of starting a bucket.
    match f.limiter.check("t".into(), Limit::REQUESTS, 1).await {
        Err(CheckError::Moved { to, tenant }) => {
            assert_eq!((to.as_str(), tenant.as_str()), ("node-b", "t"))
        }
        other => panic!("expected Moved, got {other:?}"),
    }
    // Taking it again answers nothing (the state left already).
    assert_eq!(
        f.limiter.take("t", Limit::REQUESTS, "node-b".into()).await,
        Ok(None)
    );
    // Reclaimed: this node owns the key again and serves it.
    assert!(f
        .limiter
        .check_with("t".into(), Limit::REQUESTS, 1, crate::shard::Serve::Reclaim)
        .await
        .unwrap()
        .is_allowed());
}

#[actix_rt::test]
async fn a_pushed_bucket_merges_to_the_lower_level() {
    let f = start(limits(1, 10), 2);
    // Resident here with 7 left.
    assert!(f
        .limiter
        .check("t".into(), Limit::REQUESTS, 3)
        .await
        .unwrap()
        .is_allowed());
    // The previous owner pushes a state with 2 left: both consumptions count.
    let key = BucketKey::new("t", Limit::REQUESTS);
    f.limiter
        .install(
            key,
            BucketState {
                level: 2 * NANOS as i64,
                updated_ns: T0,
            }
            .into(),
        )
        .await
        .unwrap();
    assert!(f
        .limiter
        .check("t".into(), Limit::REQUESTS, 2)
        .await
        .unwrap()
        .is_allowed());
    assert!(!allowed(&f.limiter, "t").await);
    // "mine", owned by no other node, has 9 of 10 left.
    assert!(allowed(&f.limiter, "mine").await);
    // A leaving node gives up everything another node owns; "mine" stays
    // (restored from the cache layer instead, it would lose the unit taken).
    let all = f
        .limiter
        .take_all(Arc::new(|k: &BucketKey| {
            (&*k.tenant != "mine").then(|| Arc::from("other"))
        }))
        .await;
    assert_eq!(all.len(), 1);
    assert_eq!(f.limiter.metrics().resident(), 1);
    let (_, report) = f
        .limiter
        .inspect("mine", Limit::REQUESTS)
        .await
        .unwrap()
        .unwrap();
    assert!(report.resident && report.level / NANOS == 9, "{report:?}");
    // Afterwards no bucket starts here: every key is sent to its owner.
    for tenant in ["t", "never-seen"] {
        match f.limiter.check(tenant.into(), Limit::REQUESTS, 1).await {
            Err(CheckError::Moved { to, .. }) => assert_eq!(to, "other"),
            other => panic!("{tenant}: expected Moved, got {other:?}"),
        }
    }
    assert_eq!(f.limiter.metrics().resident(), 1);
}

/// A cache layer that can be switched off and on: Redis going away and
/// coming back.
struct SwitchableCache {
    up: std::sync::atomic::AtomicBool,
    inner: InMemoryCacheLayer,
}

impl CacheLayer for SwitchableCache {
    fn name(&self) -> &'static str {
        "switchable"
    }
    fn restore(
        &self,
        key: BucketKey,
    ) -> BoxFuture<'static, Result<Option<crate::core::held::Held>, CacheError>> {
        if self.up.load(Relaxed) {
            self.inner.restore(key)
        } else {
            future::ready(Err(CacheError::Unavailable("connection refused".into()))).boxed()
        }
    }
    fn store(&self, w: Arc<Vec<SnapshotWrite>>) -> BoxFuture<'static, Result<(), CacheError>> {
        if self.up.load(Relaxed) {
            self.inner.store(w)
        } else {
            future::ready(Err(CacheError::Unavailable("connection refused".into()))).boxed()
        }
    }
}

fn write_through() -> ShardTiming {
    ShardTiming {
        write_through: true,
        ..ShardTiming::default()
    }
}

#[actix_rt::test]
async fn write_through_answers_only_what_the_cache_layer_holds() {
    let clock = ManualClock::new(T0);
    let cache = Arc::new(InMemoryCacheLayer::new(clock.clone()));
    let limiter = Limiter::start(
        2,
        Arc::new(limits(1, 10)),
        cache.clone(),
        clock.clone(),
        write_through(),
    );
    // Concurrent checks share batches (group commit); each is answered
    // only once its state is stored.
    let checks = (0..10).map(|_| limiter.check("t".into(), Limit::REQUESTS, 1));
    let verdicts = future::join_all(checks).await;
    assert!(verdicts.iter().all(|v| v.as_ref().unwrap().is_allowed()));
    // No flush: a node started on the same cache right now (a crash of
    // the first) sees every admitted unit.
    let restarted = Limiter::start(
        2,
        Arc::new(limits(1, 10)),
        cache.clone(),
        clock.clone(),
        ShardTiming::default(),
    );
    assert!(!allowed(&restarted, "t").await, "nothing lost");
    assert_eq!(limiter.metrics().total(|s| &s.snapshot_errors), 0);
}

#[actix_rt::test]
async fn write_through_refuses_to_admit_while_the_cache_layer_is_down() {
    let clock = ManualClock::new(T0);
    let cache = Arc::new(SwitchableCache {
        up: true.into(),
        inner: InMemoryCacheLayer::new(clock.clone()),
    });
    let limiter = Limiter::start(
        1,
        Arc::new(limits(1, 10)),
        cache.clone(),
        clock.clone(),
        write_through(),
    );
    let check = |cost| limiter.check("t".into(), Limit::REQUESTS, cost);
    assert!(check(1).await.unwrap().is_allowed(), "resident, persisted");
    cache.up.store(false, Relaxed);
    // The units of a check whose write failed stay taken (fail closed).
    assert_eq!(check(3).await, Err(CheckError::NotPersisted));
    // During the backoff that follows, checks are refused at once and take
    // nothing.
    for _ in 0..5 {
        assert_eq!(check(4).await, Err(CheckError::NotPersisted));
    }
    cache.up.store(true, Relaxed);
    clock.advance_ns(NANOS / 10); // the first backoff: one snapshot interval
                                  // 10 - 1 - 3 + 0.1 refilled: 6 units, not less.
    assert!(check(6).await.unwrap().is_allowed());
    assert!(!check(1).await.unwrap().is_allowed());
}

#[test]
fn a_slot_of_a_level_is_24_bytes() {
    // Memory per key: the state (16 bytes) and the dirty flag share the
    // enum's word with its tag.
    assert_eq!(std::mem::size_of::<super::Slot>(), 24);
}

/// A check of a bucket in memory is decided on the caller's thread; one that
/// needs the actor (a restore, a closed fence, a write to wait for) is not.
#[actix_rt::test]
async fn resident_buckets_are_decided_without_the_actor() {
    use crate::core::bucket::Op;
    use crate::shard::{Check, Serve};
    let f = start(limits(1, 3), 1);
    let quota = f
        .limiter
        .validate("a", Limit::REQUESTS, 1)
        .unwrap()
        .unwrap();
    let check = |tenant: &str| Check {
        key: BucketKey::new(tenant, Limit::REQUESTS),
        quota,
        op: Op::Take,
        cost: 1,
        serve: Serve::Owner,
    };
    let shards = f.limiter.shards();
    assert_eq!(shards.decide_now(0, &check("a")), None, "not in memory yet");
    assert!(allowed(&f.limiter, "a").await, "restored by the actor");
    // Resident now: 2 of the burst of 3 left, then refused, exactly.
    let d = || match shards.decide_now(0, &check("a")) {
        Some(Decision::Allowed { remaining, .. }) => Some((true, remaining)),
        Some(Decision::Refused { remaining, .. }) => Some((false, remaining)),
        None => None,
    };
    assert_eq!(d(), Some((true, 1)));
    assert_eq!(d(), Some((true, 0)));
    assert_eq!(d(), Some((false, 0)));
    assert!(!allowed(&f.limiter, "a").await);
    let decisions = &f.limiter.metrics().shards[0].decisions[Limit::REQUESTS.id()];
    assert_eq!(
        (decisions[0].load(Relaxed), decisions[1].load(Relaxed)),
        (3, 2),
        "counted like the actor's decisions"
    );
    // A closed fence: the actor answers (fenced).
    let fence = crate::core::fence::Fence::leased(Duration::from_secs(3600));
    let clock = ManualClock::new(T0);
    let l = Limiter::start_owning(
        1,
        Arc::new(limits(1, 3)),
        Arc::new(InMemoryCacheLayer::new(clock.clone())),
        clock,
        ShardTiming::default(),
        crate::shard::Ownership {
            handoff: None,
            fence: Arc::clone(&fence),
        },
    );
    assert!(allowed(&l, "a").await);
    assert!(l.shards().decide_now(0, &check("a")).is_some());
    fence.renew(fence.now_ns());
    assert_eq!(l.shards().decide_now(0, &check("a")), None);
    // One shard with burst 3, timed by `timing`.
    let with_timing = |timing| {
        let clock = ManualClock::new(T0);
        let cache = Arc::new(InMemoryCacheLayer::new(clock.clone()));
        Limiter::start(1, Arc::new(limits(1, 3)), cache, clock, timing)
    };
    // Write-through: every admission waits for its write, in the actor.
    let l = with_timing(ShardTiming {
        write_through: true,
        ..ShardTiming::default()
    });
    assert!(allowed(&l, "a").await);
    assert_eq!(l.shards().decide_now(0, &check("a")), None);
    // Nothing written to the cache layer (no write-behind) and no peer to
    // ask: a key not in memory starts full here, as its restore would.
    let l = with_timing(ShardTiming {
        write_behind: false,
        ..ShardTiming::default()
    });
    assert!(allowed(&l, "warm-up").await, "the shard started");
    assert!(matches!(
        l.shards().decide_now(0, &check("a")),
        Some(Decision::Allowed { remaining: 2, .. })
    ));
    let stats = &l.metrics().shards[0];
    assert_eq!(stats.restore_misses.load(Relaxed), 2);
    assert_eq!(stats.resident.load(Relaxed), 2);
}
