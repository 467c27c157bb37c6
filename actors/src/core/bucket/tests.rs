//! Bucket math with a fake clock: time is a number we choose; nothing sleeps.

use super::*;
use proptest::prelude::*;

const SEC: u64 = NANOS;
/// 2026-11-27T12:00:59.500Z, half a second before a wall-clock minute boundary.
const BEFORE_MINUTE: u64 = 1_795_780_859_500_000_000;

fn q(rate: u32, burst: u32) -> BucketQuota {
    BucketQuota::per_second(rate, burst)
}

fn per_minute(rate: u32, burst: u32) -> BucketQuota {
    BucketQuota::Refill {
        rate,
        burst,
        per_s: 60,
    }
}

#[test]
fn new_bucket_is_full_and_burst_is_honoured() {
    let quota = q(1, 3);
    let mut b = BucketState::full(quota, 0);
    for left in [2, 1, 0] {
        assert_eq!(
            b.try_consume(quota, 0, 1),
            Decision::Allowed {
                remaining: left,
                reset_after_ns: (3 - left) * SEC
            }
        );
    }
    assert!(!b.try_consume(quota, 0, 1).is_allowed());
}

#[test]
fn a_peek_decides_like_a_take_and_changes_nothing() {
    let quota = q(1, 2);
    let mut b = BucketState::full(quota, 0);
    let before = b;
    let full = Decision::Allowed {
        remaining: 2,
        reset_after_ns: 0,
    };
    assert_eq!(b.apply(quota, 0, Op::Peek, 1), full);
    assert_eq!(b.apply(quota, 0, Op::Peek, 2), full);
    assert_eq!(b, before);
    b.apply(quota, 0, Op::Take, 1);
    assert!(!b.apply(quota, 0, Op::Peek, 2).is_allowed());
    b.apply(quota, 0, Op::Take, 1);
    let drained = b;
    assert!(!b.apply(quota, 0, Op::Peek, 1).is_allowed());
    assert_eq!(b, drained);
}

#[test]
fn refill_is_continuous_and_capped() {
    let quota = q(4, 2);
    let mut b = BucketState::full(quota, 0);
    assert!(b.try_consume(quota, 0, 2).is_allowed());
    // 249,999,999 ns is one nanosecond short of a whole unit at 4/s.
    assert!(!b.try_consume(quota, SEC / 4 - 1, 1).is_allowed());
    assert!(b.try_consume(quota, SEC / 4, 1).is_allowed());
    // A long idle period refills to capacity and no further.
    assert_eq!(b.level_at(quota, 1_000 * SEC), quota.capacity() as i64);
    assert!(b.is_full_at(quota, 1_000 * SEC));
}

#[test]
fn retry_after_matches_llmtrace_formula() {
    // Seed: retry_after_secs = max(1, ceil(deficit / rps)).
    let quota = q(1, 1);
    let mut b = BucketState::full(quota, 0);
    assert!(b.try_consume(quota, 0, 1).is_allowed());
    match b.try_consume(quota, 0, 1) {
        Decision::Refused {
            retry_after_ns,
            remaining,
            ..
        } => {
            assert_eq!(remaining, 0);
            assert_eq!(retry_after_ns, SEC);
            assert_eq!(retry_after_secs(retry_after_ns), 1);
        }
        d => panic!("expected refusal, got {d:?}"),
    }
    let quota = q(2, 10);
    let mut b = BucketState::full(quota, 0);
    assert!(b.try_consume(quota, 0, 10).is_allowed());
    match b.try_consume(quota, 0, 7) {
        Decision::Refused { retry_after_ns, .. } => {
            assert_eq!(retry_after_secs(retry_after_ns), 4) // ceil(7 / 2)
        }
        d => panic!("expected refusal, got {d:?}"),
    }
    // A wait shorter than a second still reports at least one second.
    assert_eq!(retry_after_secs(1), 1);
}

/// Regression: llmtrace 0.2.0 keyed buckets by the current minute, so every
/// bucket came back full at each minute boundary.
#[test]
fn drained_bucket_stays_drained_across_a_minute_boundary() {
    let quota = q(1, 100);
    let mut b = BucketState::full(quota, BEFORE_MINUTE);
    assert!(b.try_consume(quota, BEFORE_MINUTE, 100).is_allowed());
    let after_minute = BEFORE_MINUTE + SEC; // 12:01:00.500
                                            // One second passed: exactly one unit came back, not a hundred.
    assert!(b.try_consume(quota, after_minute, 1).is_allowed());
    assert!(!b.try_consume(quota, after_minute, 1).is_allowed());
}

#[test]
fn a_clock_stepping_back_neither_refills_nor_rewinds() {
    let quota = q(10, 10);
    let mut b = BucketState::full(quota, 10 * SEC);
    assert!(b.try_consume(quota, 10 * SEC, 10).is_allowed());
    assert!(!b.try_consume(quota, 5 * SEC, 1).is_allowed());
    assert_eq!(b.updated_ns, 10 * SEC);
    assert!(b.try_consume(quota, 10 * SEC + SEC / 10, 1).is_allowed());
}

#[test]
fn lowered_quota_caps_the_level() {
    let mut b = BucketState::full(q(1, 100), 0);
    let small = q(1, 5);
    assert_eq!(b.level_at(small, 0), small.capacity() as i64);
    assert_eq!(
        b.try_consume(small, 0, 5),
        Decision::Allowed {
            remaining: 0,
            reset_after_ns: 5 * SEC
        }
    );
}

#[test]
fn extreme_values_do_not_overflow() {
    let quota = q(u32::MAX, u32::MAX);
    let mut b = BucketState::full(quota, 0);
    assert!(b
        .try_consume(quota, u64::MAX, u64::from(u32::MAX))
        .is_allowed());
    assert!(b.try_consume(quota, u64::MAX, 1).is_allowed() || b.level == 0);
    let quota = q(1, u32::MAX);
    let mut b = BucketState {
        level: 0,
        updated_ns: 0,
    };
    assert!(!b.try_consume(quota, 0, u64::from(u32::MAX)).is_allowed());
}

/// Reference model: classic GCRA ("virtual scheduling") in scaled time, where
/// one real nanosecond is `rate` scaled units and one token costs 10^9.
struct Gcra {
    tat: u128,
}

impl Gcra {
    fn check(&mut self, quota: BucketQuota, now_ns: u64, cost: u64) -> bool {
        let BucketQuota::Refill { rate, burst, .. } = quota else {
            unreachable!("the model is a token bucket")
        };
        let now = u128::from(now_ns) * u128::from(rate);
        let new_tat = self.tat.max(now) + u128::from(cost) * u128::from(NANOS);
        if new_tat - now <= u128::from(burst) * u128::from(NANOS) {
            self.tat = new_tat;
            true
        } else {
            false
        }
    }
}

fn events() -> impl Strategy<Value = (u32, u32, Vec<(u64, u64)>)> {
    (1u32..2_000, 1u32..60).prop_flat_map(|(rate, burst)| {
        let step = prop_oneof![Just(0u64), 0u64..2 * SEC, 0u64..1_000];
        (
            Just(rate),
            Just(burst),
            prop::collection::vec((step, 1u64..=u64::from(burst)), 1..150),
        )
    })
}

proptest! {
    /// Our bucket decides exactly as an independent GCRA implementation.
    #[test]
    fn agrees_with_reference_gcra((rate, burst, steps) in events()) {
        let quota = q(rate, burst);
        let mut now = 1_700_000_000 * SEC;
        let mut bucket = BucketState::full(quota, now);
        let mut gcra = Gcra { tat: u128::from(now) * u128::from(rate) };
        for (dt, cost) in steps {
            now += dt;
            let ours = bucket.try_consume(quota, now, cost).is_allowed();
            prop_assert_eq!(ours, gcra.check(quota, now, cost));
        }
    }

    /// Over every interval [t_i, t_j], admitted units <= burst + floor(rate * t).
    #[test]
    fn never_admits_more_than_burst_plus_refill((rate, burst, steps) in events()) {
        let quota = q(rate, burst);
        let mut now = 0u64;
        let mut bucket = BucketState::full(quota, now);
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (dt, cost) in steps {
            now += dt;
            if bucket.try_consume(quota, now, cost).is_allowed() {
                admitted.push((now, cost));
            }
        }
        for i in 0..admitted.len() {
            let mut sum = 0u128;
            for j in i..admitted.len() {
                sum += u128::from(admitted[j].1);
                let t = u128::from(admitted[j].0 - admitted[i].0);
                let bound = u128::from(burst) + u128::from(rate) * t / u128::from(NANOS);
                prop_assert!(sum <= bound, "admitted {} > bound {} over {} ns", sum, bound, t);
            }
        }
    }

    /// A client that always asks again exactly when told to is admitted
    /// exactly burst + floor(rate * t) units by time t: never fewer.
    #[test]
    fn greedy_client_gets_exactly_burst_plus_refill(rate in 1u32..5_000, burst in 1u32..50, n in 1usize..300) {
        let quota = q(rate, burst);
        let mut now = 0u64;
        let mut bucket = BucketState::full(quota, now);
        let mut admitted = 0u64;
        let mut refused_once = false;
        for _ in 0..n {
            match bucket.try_consume(quota, now, 1) {
                Decision::Allowed { .. } => admitted += 1,
                Decision::Refused { retry_after_ns, .. } => {
                    refused_once = true;
                    now += retry_after_ns;
                }
            }
            let bound = u64::from(burst) + (u128::from(rate) * u128::from(now) / u128::from(NANOS)) as u64;
            prop_assert!(admitted <= bound);
            if refused_once {
                // Once the burst is spent, at most the one unit that just
                // became due is unclaimed: nothing is lost to rounding.
                prop_assert!(admitted + 1 >= bound);
            }
        }
        // Drain whatever is available now, then the count is exact.
        while bucket.try_consume(quota, now, 1).is_allowed() {
            admitted += 1;
        }
        let bound = u64::from(burst) + (u128::from(rate) * u128::from(now) / u128::from(NANOS)) as u64;
        prop_assert_eq!(admitted, bound);
    }
}

const MIN: u64 = 60 * SEC;

#[test]
fn tokens_per_minute_refill_exactly_without_drift() {
    // 7 tokens per minute is not an integer per second (or per nanosecond):
    // the level is counted in 1/(60·10^9) token units, so every instant's
    // level is exact.
    let quota = per_minute(7, 7);
    let mut b = BucketState::full(quota, 0);
    assert!(b.try_consume(quota, 0, 7).is_allowed());
    // After one minute exactly 7 tokens are back, not 6.999...
    assert_eq!(b.level_at(quota, MIN), quota.capacity() as i64);
    // After 8 4/7 s: exactly one token.
    let one = MIN.div_ceil(7);
    assert!(copy(b).try_consume(quota, one, 1).is_allowed());
    assert!(!copy(b).try_consume(quota, one - 1, 1).is_allowed());
    match b.try_consume(quota, 0, 1) {
        Decision::Refused { retry_after_ns, .. } => assert_eq!(retry_after_ns, one),
        d => panic!("{d:?}"),
    }
    // Over ten hours, 4200 tokens refill: no accumulated rounding.
    let mut b = BucketState {
        level: 0,
        updated_ns: 0,
    };
    let mut taken = 0u64;
    let mut now = 0;
    while now <= 600 * MIN {
        if b.try_consume(quota, now, 1).is_allowed() {
            taken += 1;
        }
        now += SEC;
    }
    assert_eq!(taken, 7 * 600);
}

#[test]
fn refund_gives_back_and_caps_at_full() {
    let quota = per_minute(60, 100);
    let mut b = BucketState::full(quota, 0);
    assert!(b.try_consume(quota, 0, 80).is_allowed());
    assert_eq!(
        b.refund(quota, 0, 30),
        Decision::Allowed {
            remaining: 50,
            reset_after_ns: 50 * SEC
        }
    );
    // Capped: a refund never lifts a bucket above its capacity.
    b.refund(quota, 0, 1_000_000);
    assert!(b.is_full_at(quota, 0));
    assert_eq!(b.level, quota.capacity() as i64);
    // Huge amounts do not overflow.
    b.refund(quota, 0, u64::MAX);
    assert_eq!(b.level, quota.capacity() as i64);
}

#[test]
fn charge_pushes_into_debt_and_later_checks_wait() {
    let quota = q(10, 10);
    let mut b = BucketState::full(quota, 0);
    // 25 units charged from a full bucket of 10: 15 in debt.
    assert_eq!(
        b.charge(quota, 0, 25),
        Decision::Allowed {
            remaining: 0,
            reset_after_ns: 25 * SEC / 10
        }
    );
    assert_eq!(b.level, -15 * SEC as i64);
    // One unit is available once 16 units have refilled: 1.6 s.
    match copy(b).try_consume(quota, 0, 1) {
        Decision::Refused {
            retry_after_ns,
            remaining,
            ..
        } => {
            assert_eq!(retry_after_ns, 16 * SEC / 10);
            assert_eq!(remaining, 0);
        }
        d => panic!("{d:?}"),
    }
    assert!(!copy(b)
        .try_consume(quota, 16 * SEC / 10 - 1, 1)
        .is_allowed());
    assert!(copy(b).try_consume(quota, 16 * SEC / 10, 1).is_allowed());
    // A refund during debt pays part of it back.
    b.refund(quota, SEC / 10, 5);
    assert_eq!(b.level, -9 * SEC as i64);
    // Debt is bounded: a gigantic charge stops at MIN_LEVEL.
    b.charge(quota, SEC / 10, u64::MAX);
    assert_eq!(b.level, MIN_LEVEL);
    assert!(b.time_to_full_ns(quota) > 0);
}

#[derive(Debug, Clone, Copy)]
enum TestOp {
    Take(u64),
    Refund(u64),
    Charge(u64),
}

fn ops() -> impl Strategy<Value = (u32, u32, bool, Vec<(u64, TestOp)>)> {
    (1u32..2_000, 1u32..200, any::<bool>()).prop_flat_map(|(rate, burst, minute)| {
        let b = u64::from(burst);
        let op = prop_oneof![
            3 => (1..=b).prop_map(TestOp::Take),
            1 => (1..=2 * b).prop_map(TestOp::Refund),
            1 => (1..=2 * b).prop_map(TestOp::Charge),
        ];
        (
            Just(rate),
            Just(burst),
            Just(minute),
            prop::collection::vec((0u64..3 * SEC, op), 1..200),
        )
    })
}

fn quota_of(rate: u32, burst: u32, minute: bool) -> BucketQuota {
    if minute {
        per_minute(rate, burst)
    } else {
        q(rate, burst)
    }
}

proptest! {
    /// Net consumption (taken + charged - refunded) at any admitted take
    /// never exceeds burst + refill, whatever mix of operations came first.
    #[test]
    fn net_consumption_never_exceeds_burst_plus_refill((rate, burst, minute, steps) in ops()) {
        let quota = quota_of(rate, burst, minute);
        let mut b = BucketState::full(quota, 0);
        let mut now = 0u64;
        let mut net: i128 = 0;
        for (gap, op) in steps {
            now += gap;
            let mut took = false;
            match op {
                TestOp::Take(c) => if b.try_consume(quota, now, c).is_allowed() { net += i128::from(c); took = true },
                TestOp::Refund(c) => { b.refund(quota, now, c); net -= i128::from(c) },
                TestOp::Charge(c) => { b.charge(quota, now, c); net += i128::from(c) },
            }
            // A take succeeds only from a non-negative level, so after it
            // the net never exceeds what the bucket held plus its refill.
            let refill = i128::from(rate) * i128::from(now) / i128::from(quota.unit());
            if took {
                prop_assert!(net <= i128::from(burst) + refill, "net {} > {} + {}", net, burst, refill);
            }
            // The level itself is exact: capacity - net + refill, or capped.
            prop_assert!(i128::from(b.level_at(quota, now)) <= i128::from(quota.capacity()));
        }
    }

    /// A refund of what was just taken (or charged) restores the state.
    #[test]
    fn refund_undoes_take_and_charge((rate, burst, minute, steps) in ops(), k in 1u64..500) {
        let quota = quota_of(rate, burst, minute);
        let mut b = BucketState::full(quota, 0);
        let mut now = 0u64;
        for (gap, op) in steps {
            now += gap;
            match op {
                TestOp::Take(c) => { b.try_consume(quota, now, c); }
                TestOp::Refund(c) => { b.refund(quota, now, c); }
                TestOp::Charge(c) => { b.charge(quota, now, c); }
            }
        }
        b.advance(quota, now);
        let before = b;
        b.charge(quota, now, k);
        b.refund(quota, now, k);
        prop_assert_eq!(b, before);
        if copy(b).try_consume(quota, now, 1).is_allowed() {
            let mut c = before;
            c.try_consume(quota, now, 1);
            c.refund(quota, now, 1);
            prop_assert_eq!(c, before);
        }
    }

    /// The retry-after of a refused take (after debt or not) is exactly the
    /// first instant the take succeeds.
    #[test]
    fn retry_after_is_exact_after_debt(rate in 1u32..100_000, burst in 1u32..1000, minute: bool, debt in 0u64..5_000, cost in 1u64..1000) {
        let quota = quota_of(rate, burst, minute);
        let cost = cost.min(u64::from(burst));
        let mut b = BucketState::full(quota, 0);
        b.charge(quota, 0, u64::from(burst) + debt);
        match copy(b).try_consume(quota, 0, cost) {
            Decision::Refused { retry_after_ns, .. } => {
                prop_assert!(!copy(b).try_consume(quota, retry_after_ns - 1, cost).is_allowed());
                prop_assert!(copy(b).try_consume(quota, retry_after_ns, cost).is_allowed());
            }
            d => prop_assert!(false, "{:?}", d),
        }
    }

    /// A greedy client of a per-minute bucket gets exactly
    /// burst + floor(rate · t / 60 s).
    #[test]
    fn per_minute_greedy_client_gets_exactly_burst_plus_refill(rate in 1u32..1_000_000, burst in 1u32..50, n in 1usize..300) {
        let quota = per_minute(rate, burst);
        let mut b = BucketState::full(quota, 0);
        let mut now = 0u64;
        let mut admitted = 0u64;
        for _ in 0..n {
            match b.try_consume(quota, now, 1) {
                Decision::Allowed { .. } => admitted += 1,
                Decision::Refused { retry_after_ns, .. } => now += retry_after_ns,
            }
        }
        while b.try_consume(quota, now, 1).is_allowed() {
            admitted += 1;
        }
        let bound = u64::from(burst) + (u128::from(rate) * u128::from(now) / u128::from(MIN)) as u64;
        prop_assert_eq!(admitted, bound);
    }
}

/// A copy to try a check on without changing `b`.
fn copy(b: BucketState) -> BucketState {
    b
}

/// Quotas: whole units per UTC-aligned window, full again at each boundary.
mod window {
    use super::*;
    use llmtrace_cluster_config::Period;

    const DAY: u64 = 86_400 * SEC;
    /// 2024-02-29T00:00:00Z.
    const LEAP_DAY: u64 = 1_709_164_800 * SEC;

    fn daily(amount: u64) -> BucketQuota {
        BucketQuota::Window {
            amount,
            period: Period::Fixed(86_400),
        }
    }

    #[test]
    fn a_spent_quota_waits_for_the_next_window() {
        let quota = daily(3);
        let noon = LEAP_DAY + DAY / 2;
        let mut b = BucketState::full(quota, noon);
        assert!(b.try_consume(quota, noon, 2).is_allowed());
        assert_eq!(
            b.try_consume(quota, noon, 1),
            Decision::Allowed {
                remaining: 0,
                reset_after_ns: DAY / 2
            }
        );
        assert_eq!(
            b.try_consume(quota, noon + SEC, 1),
            Decision::Refused {
                remaining: 0,
                retry_after_ns: DAY / 2 - SEC,
                reset_after_ns: DAY / 2 - SEC,
            }
        );
        // One nanosecond before midnight: still spent; at midnight: full.
        assert!(!b.try_consume(quota, LEAP_DAY + DAY - 1, 1).is_allowed());
        assert!(b.try_consume(quota, LEAP_DAY + DAY, 3).is_allowed());
        assert!(!b.try_consume(quota, LEAP_DAY + DAY, 1).is_allowed());
    }

    #[test]
    fn months_reset_on_the_first() {
        let quota = BucketQuota::Window {
            amount: 10,
            period: Period::Month,
        };
        let mut b = BucketState::full(quota, LEAP_DAY);
        assert!(b.try_consume(quota, LEAP_DAY, 10).is_allowed());
        let refused = b.try_consume(quota, LEAP_DAY + DAY / 2, 1);
        let Decision::Refused { retry_after_ns, .. } = refused else {
            panic!("{refused:?}")
        };
        // 2024-03-01T00:00:00Z is half a day after noon of Feb 29.
        assert_eq!(retry_after_ns, DAY / 2);
        assert!(b.try_consume(quota, LEAP_DAY + DAY, 10).is_allowed());
    }

    #[test]
    fn charges_and_refunds_stay_in_the_window() {
        let quota = daily(5);
        let mut b = BucketState::full(quota, LEAP_DAY);
        b.charge(quota, LEAP_DAY, 8);
        assert_eq!(b.level, -3);
        assert!(!b.try_consume(quota, LEAP_DAY + 1, 1).is_allowed());
        b.refund(quota, LEAP_DAY + 2, 100);
        assert_eq!(b.level, 5, "a refund never goes above the amount");
        b.charge(quota, LEAP_DAY + 3, 8);
        // The next window starts full, whatever the debt.
        assert_eq!(b.level_at(quota, LEAP_DAY + DAY), 5);
        assert!(b.is_full_at(quota, LEAP_DAY + DAY));
        assert!(!b.is_full_at(quota, LEAP_DAY + DAY - 1));
    }

    #[test]
    fn a_clock_stepping_back_never_resets() {
        let quota = daily(2);
        let mut b = BucketState::full(quota, LEAP_DAY + DAY);
        assert!(b.try_consume(quota, LEAP_DAY + DAY, 2).is_allowed());
        assert!(!b.try_consume(quota, LEAP_DAY + 5, 1).is_allowed());
        assert_eq!(b.updated_ns, LEAP_DAY + DAY);
    }

    proptest! {
        /// Within any window, takes admitted never exceed the amount; and in
        /// each window the bucket admits exactly the amount when asked for
        /// more all along.
        #[test]
        fn admitted_per_window_equals_the_amount(
            amount in 1u64..50,
            period in prop_oneof![Just(Period::Fixed(60)), Just(Period::Fixed(86_400)),
                                  Just(Period::Week), Just(Period::Month)],
            start in LEAP_DAY - 40 * DAY..LEAP_DAY + 40 * DAY,
            steps in prop::collection::vec(0u64..6 * 3_600 * SEC, 1..200),
        ) {
            let quota = BucketQuota::Window { amount, period };
            let mut b = BucketState::full(quota, start);
            let mut now = start;
            let mut admitted: std::collections::BTreeMap<u64, u64> = Default::default();
            for step in steps {
                now += step;
                let allowed = b.try_consume(quota, now, 1).is_allowed();
                let w = period.window_start(now);
                let n = admitted.entry(w).or_default();
                if allowed {
                    *n += 1;
                } else {
                    // Refused only when this window's amount is spent.
                    prop_assert_eq!(*n, amount);
                }
                prop_assert!(*n <= amount);
            }
        }
    }
}
