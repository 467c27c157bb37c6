//! The token lease protocol against the single-bucket bound: random
//! interleavings of owner checks, grants, spends, returns, expiries, holder
//! and owner crashes and resets never admit more than `burst + rate·t`
//! over any interval (after the last reset, an operator's refill).

use proptest::prelude::*;

use super::*;
use crate::core::bucket::NANOS;

const MS: u64 = 1_000_000;
const TTL: u64 = 200 * MS;
const MARGIN: u64 = 50 * MS;

#[test]
fn a_grant_takes_a_fair_share_and_a_return_refunds_it_once() {
    let q = BucketQuota::per_second(10, 100);
    let mut s = BucketState::full(q, 0);
    let mut l = OwnerLeases::new(q);
    let g = l.grant(&mut s, q, 0, "b", 1, 80, (TTL, MARGIN)).unwrap();
    assert_eq!(g.units, 50, "half: one holder and the owner");
    assert_eq!(s.level_at(q, 0), 50 * NANOS as i64);
    let g2 = l.grant(&mut s, q, 0, "c", 2, 80, (TTL, MARGIN)).unwrap();
    assert_eq!(g2.units, 16, "a third of what is left");
    assert_eq!(l.outstanding_units(), 66);
    assert_eq!(l.give_back(&mut s, q, 0, ("b", 1), 30), 30);
    assert_eq!(l.give_back(&mut s, q, 0, ("b", 1), 30), 0, "accepted once");
    assert_eq!(
        l.give_back(&mut s, q, 0, ("b", 2), 5),
        0,
        "another holder's lease"
    );
    assert_eq!(
        l.give_back(&mut s, q, 0, ("c", 2), 99),
        16,
        "at most its units"
    );
    assert_eq!(s.level_at(q, 0), 80 * NANOS as i64, "b spent 20");
}

#[test]
fn a_reset_counts_leases_as_spent_even_those_of_a_previous_owner() {
    let q = BucketQuota::per_second(1, 10);
    let mut s = BucketState::full(q, 0);
    let mut old = OwnerLeases::new(q);
    old.grant(&mut s, q, 0, "b", 1, 4, (TTL, MARGIN)).unwrap();
    // The owner dies; the new one restores the level after the grant.
    let mut new = OwnerLeases::arrived(q, &s, TTL + MARGIN);
    assert!(!new.is_idle_at(0));
    new.grant(&mut s, q, 0, "c", 2, 9, (TTL, MARGIN)).unwrap();
    let reset = new.reset(&s, q, 0);
    assert_eq!(
        reset.level_at(q, 0),
        3 * NANOS as i64,
        "10 - 4 unknown - 3 known"
    );
    assert_eq!(new.give_back(&mut s, q, 0, ("c", 2), 3), 0, "revoked");
    let mut later = OwnerLeases::arrived(q, &s, TTL + MARGIN);
    let t = TTL + MARGIN;
    assert_eq!(later.reset(&s, q, t).level_at(q, t), 10 * NANOS as i64);
    assert!(later.is_idle_at(t));
}

#[test]
fn the_level_refills_only_to_the_ceiling_while_leases_are_out() {
    let q = BucketQuota::per_second(10, 4);
    let mut s = BucketState::full(q, 0);
    let mut l = OwnerLeases::new(q);
    assert_eq!(
        l.grant(&mut s, q, 0, "b", 1, 2, (TTL, MARGIN))
            .unwrap()
            .units,
        2
    );
    // A second later a plain bucket would be full again: this one holds
    // 4 - 2 leased.
    let d = l.apply(&mut s, q, NANOS / 10, Op::Take, 2);
    assert!(d.is_allowed());
    assert!(!l.apply(&mut s, q, NANOS / 10, Op::Take, 1).is_allowed());
    // The lease expired unspent at 250 ms: from then on refill goes on to
    // full; the stretch before stays under the ceiling.
    assert!(!l.apply(&mut s, q, TTL + MARGIN, Op::Peek, 2).is_allowed());
    assert!(l.apply(&mut s, q, NANOS, Op::Take, 4).is_allowed());
}

#[test]
fn nothing_is_granted_from_an_empty_bucket_or_across_a_window() {
    let q = BucketQuota::per_second(1, 10);
    let mut s = BucketState::full(q, 0);
    s.try_consume(q, 0, 10);
    let mut l = OwnerLeases::new(q);
    assert_eq!(l.grant(&mut s, q, 0, "b", 1, 5, (TTL, MARGIN)), None);
    let w = BucketQuota::Window {
        amount: 100,
        period: llmtrace_cluster_config::Period::Fixed(10),
    };
    let end = 10 * NANOS;
    let mut s = BucketState::full(w, 0);
    let mut l = OwnerLeases::new(w);
    let g = l
        .grant(&mut s, w, end - 100 * MS, "b", 1, 5, (TTL, MARGIN))
        .unwrap();
    assert_eq!(g.ttl_ns, 50 * MS, "ends a margin before the window does");
    assert_eq!(
        l.grant(&mut s, w, end - MARGIN, "c", 2, 5, (TTL, MARGIN)),
        None
    );
}

#[derive(Debug, Clone)]
enum Step {
    /// Time passes (ms).
    Advance(u64),
    /// The owner decides a check of its own.
    OwnerTake(u64),
    /// Holder `h` asks for `ask` units.
    Grant(usize, u64),
    /// Holder `h` spends `cost` from its newest lease.
    Spend(usize, u64),
    /// Holder `h` gives its oldest lease back.
    Return(usize),
    /// Holder `h` dies: its leases' unspent units are lost.
    HolderCrash(usize),
    /// The owner dies; the new owner restores the snapshot (written
    /// through for grants) and knows no lease.
    OwnerCrash,
    /// An operator refills the bucket.
    Reset,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u64..300).prop_map(Step::Advance),
        2 => (1u64..5).prop_map(Step::OwnerTake),
        3 => (0usize..3, 1u64..60).prop_map(|(h, a)| Step::Grant(h, a)),
        6 => (0usize..3, 1u64..5).prop_map(|(h, c)| Step::Spend(h, c)),
        2 => (0usize..3).prop_map(Step::Return),
        1 => (0usize..3).prop_map(Step::HolderCrash),
        1 => Just(Step::OwnerCrash),
        1 => Just(Step::Reset),
    ]
}

/// A holder's lease as the holder sees it.
struct Held {
    id: u64,
    remaining: u64,
    /// The holder's own expiry.
    until: u64,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_over_admits(
        rate in 1u32..50,
        burst in 1u32..60,
        steps in proptest::collection::vec(step(), 1..200),
    ) {
        let q = BucketQuota::per_second(rate, burst);
        let mut now = 1_000 * NANOS;
        let mut state = BucketState::full(q, now);
        let mut leases = OwnerLeases::new(q);
        let mut holders: Vec<Vec<Held>> = (0..3).map(|_| Vec::new()).collect();
        let mut next_id = 1u64;
        // Every admitted unit, with its instant; bounds hold from here.
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        let mut since = now;
        for s in steps {
            match s {
                Step::Advance(ms) => now += ms * MS,
                Step::OwnerTake(c) => {
                    if c <= u64::from(burst) && leases.apply(&mut state, q, now, Op::Take, c).is_allowed() {
                        admitted.push((now, c));
                    }
                }
                Step::Grant(h, ask) => {
                    let id = next_id;
                    next_id += 1;
                    let name = format!("n{h}");
                    if let Some(g) = leases.grant(&mut state, q, now, &name, id, ask, (TTL, MARGIN)) {
                        holders[h].push(Held { id, remaining: g.units, until: now + g.ttl_ns });
                    }
                }
                Step::Spend(h, c) => {
                    if let Some(l) = holders[h].iter_mut().rev().find(|l| now < l.until) {
                        if l.remaining >= c {
                            l.remaining -= c;
                            admitted.push((now, c));
                        }
                    }
                }
                Step::Return(h) => {
                    if !holders[h].is_empty() {
                        let l = holders[h].remove(0);
                        leases.give_back(&mut state, q, now, (&format!("n{h}"), l.id), l.remaining);
                    }
                }
                Step::HolderCrash(h) => holders[h].clear(),
                // Write-through: the snapshot is the state; the records
                // live in memory only.
                Step::OwnerCrash => {
                    leases = OwnerLeases::arrived(q, &state, TTL + MARGIN)
                }
                Step::Reset => {
                    state = leases.reset(&state, q, now);
                    admitted.clear();
                    since = now;
                }
            }
            // Over every interval [a, now] from an admitted instant (and
            // from the last reset): at most burst + rate·t.
            let mut starts: Vec<u64> = admitted.iter().map(|(t, _)| *t).collect();
            starts.push(since);
            for a in starts {
                let sum: u64 = admitted.iter().filter(|(t, _)| *t >= a).map(|(_, c)| c).sum();
                let bound = u64::from(burst) + u64::from(rate) * (now - a) / NANOS;
                prop_assert!(sum <= bound, "admitted {sum} > {bound} over [{a}, {now}]");
            }
        }
    }
}
