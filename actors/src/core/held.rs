//! What a bucket holds, whatever its kind: a level ([`BucketState`], token
//! buckets and quotas) or leases ([`LeaseSet`], concurrency limits). This
//! is what shards keep in memory, what snapshots store and what handoff
//! moves between nodes.

use bincode::{Decode, Encode};

use crate::core::bucket::{BucketQuota, BucketState, Decision, Op};
use crate::core::lease::LeaseSet;

/// The state of one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Held {
    Level(BucketState),
    /// Boxed: most buckets hold a level, and a slot stays small.
    Leases(Box<LeaseSet>),
}

impl From<BucketState> for Held {
    fn from(s: BucketState) -> Self {
        Held::Level(s)
    }
}

impl Held {
    /// A new key's bucket: full (no lease held).
    pub fn full(quota: BucketQuota, now_ns: u64) -> Self {
        match quota {
            BucketQuota::Leases { .. } => Held::Leases(Box::default()),
            _ => Held::Level(BucketState::full(quota, now_ns)),
        }
    }

    /// The state matches `quota`'s kind; a state of another kind (the limit
    /// changed kind in config) is replaced by a full one.
    fn fit(&mut self, quota: BucketQuota, now_ns: u64) {
        let fits = matches!(
            (&*self, quota),
            (Held::Leases(_), BucketQuota::Leases { .. })
        ) || matches!(
            (&*self, quota),
            (
                Held::Level(_),
                BucketQuota::Refill { .. } | BucketQuota::Window { .. }
            )
        );
        if !fits {
            *self = Held::full(quota, now_ns);
        }
    }

    /// True when the bucket carries no information at `now_ns` (full, or no
    /// lease held): it may be dropped from memory and from the cache layer.
    pub fn is_full_at(&self, quota: BucketQuota, now_ns: u64) -> bool {
        match self {
            Held::Level(s) => s.is_full_at(quota, now_ns),
            Held::Leases(l) => l.is_empty_at(now_ns),
        }
    }

    /// Time from `now_ns` until the bucket is full again.
    pub fn time_to_full_ns(&self, quota: BucketQuota, now_ns: u64) -> u64 {
        match self {
            Held::Level(s) => {
                let mut s = *s;
                s.advance(quota, now_ns);
                s.time_to_full_ns(quota)
            }
            Held::Leases(l) => l.time_to_empty_ns(now_ns),
        }
    }

    /// Applies `op` with `cost` (a lease id for the lease operations) at
    /// `now_ns`; answers the decision and the change in leases held.
    pub fn apply(&mut self, quota: BucketQuota, now_ns: u64, op: Op, cost: u64) -> (Decision, i64) {
        self.fit(quota, now_ns);
        match (self, quota) {
            (Held::Leases(l), BucketQuota::Leases { max, ttl_s }) => match op {
                Op::Release => l.release(max, cost, now_ns),
                _ => l.acquire(
                    max,
                    ttl_s.saturating_mul(crate::core::bucket::NANOS),
                    cost,
                    now_ns,
                ),
            },
            (Held::Level(s), _) => match op {
                Op::Take => (s.try_consume(quota, now_ns, cost), 0),
                _ => (s.apply(quota, now_ns, op, cost), 0),
            },
            (Held::Leases(_), _) => unreachable!("fit matched the state to the quota"),
        }
    }

    /// Units free at `now_ns`, in nano-units (whole units: `/ 10^9`); 0 in
    /// debt.
    pub fn free_nanos(&self, quota: BucketQuota, now_ns: u64) -> u64 {
        match self {
            Held::Level(s) => {
                let level = s.level_at(quota, now_ns).max(0) as u128;
                (level * u128::from(crate::core::bucket::NANOS) / u128::from(quota.unit())) as u64
            }
            Held::Leases(l) => quota
                .capacity_units()
                .saturating_sub(l.count_at(now_ns) as u64)
                .saturating_mul(crate::core::bucket::NANOS),
        }
    }

    /// Leases held at `now_ns` (0 for a level).
    pub fn leases(&self, now_ns: u64) -> usize {
        match self {
            Held::Level(_) => 0,
            Held::Leases(l) => l.count_at(now_ns),
        }
    }

    /// Merges another copy of the same bucket (a handoff met a resident
    /// state): units consumed on either side stay consumed, leases held on
    /// either side stay held.
    pub fn merge(&mut self, theirs: Held, quota: BucketQuota, now_ns: u64) {
        self.fit(quota, now_ns);
        match (self, theirs) {
            (Held::Level(ours), Held::Level(mut theirs)) => {
                // Compare at the same instant: the older state refills first.
                theirs.advance(quota, now_ns);
                ours.advance(quota, now_ns);
                ours.level = ours.level.min(theirs.level);
            }
            (Held::Leases(ours), Held::Leases(theirs)) => ours.merge(&theirs),
            // Theirs is of a kind the limit no longer has: nothing to keep.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn leases_and_levels_apply_and_merge() {
        let q = BucketQuota::Leases { max: 2, ttl_s: 10 };
        let mut h = Held::full(q, 0);
        assert!(h.is_full_at(q, 0));
        assert_eq!(h.apply(q, 0, Op::Acquire, 11).1, 1);
        assert_eq!(h.free_nanos(q, 0), SEC);
        assert!(!h.is_full_at(q, 0));
        assert_eq!(h.time_to_full_ns(q, SEC), 9 * SEC);
        let mut other = Held::full(q, 0);
        other.apply(q, 0, Op::Acquire, 12);
        h.merge(other, q, SEC);
        assert_eq!(h.leases(SEC), 2);
        assert!(!h.apply(q, SEC, Op::Acquire, 13).0.is_allowed());
        assert!(h.is_full_at(q, 10 * SEC));

        let level = BucketQuota::per_second(1, 5);
        let mut h = Held::full(level, 0);
        h.apply(level, 0, Op::Take, 3);
        let mut theirs = Held::full(level, 0);
        theirs.apply(level, 0, Op::Take, 4);
        h.merge(theirs, level, 0);
        assert_eq!(h.free_nanos(level, 0), SEC, "the lower level wins");
    }

    #[test]
    fn a_kind_change_starts_full() {
        let level = BucketQuota::per_second(1, 5);
        let leases = BucketQuota::Leases { max: 1, ttl_s: 10 };
        let mut h = Held::full(level, 0);
        h.apply(level, 0, Op::Take, 5);
        assert!(h.apply(leases, 0, Op::Acquire, 1).0.is_allowed());
    }
}
