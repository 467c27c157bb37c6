//! Concurrency math: a pure function of (leases held, now, max, ttl).
//!
//! A concurrency bucket holds at most `max` leases at once. Each lease has
//! an id (chosen by the node that asked, so a retried acquire finds its own
//! lease instead of taking a second) and an expiry: a lease not released by
//! then returns by itself. Expiry is exact: a lease counts until its instant
//! and not after, whenever the bucket is next looked at. A clock that steps
//! backwards never frees a lease early.

use bincode::{Decode, Encode};

use crate::core::bucket::Decision;

/// Most leases a concurrency limit may hold per key (config checks it).
pub const MAX_LEASES: usize = llmtrace_cluster_config::named::MAX_CONCURRENCY as usize;

/// One lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Lease {
    pub id: u64,
    /// When the lease returns by itself, in nanoseconds since the epoch.
    pub expires_ns: u64,
}

/// The leases of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct LeaseSet {
    /// Held leases, in no particular order.
    pub held: Vec<Lease>,
}

impl LeaseSet {
    /// Drops the leases expired at `now_ns`; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let before = self.held.len();
        self.held.retain(|l| l.expires_ns > now_ns);
        before - self.held.len()
    }

    /// Leases held at `now_ns`.
    pub fn count_at(&self, now_ns: u64) -> usize {
        self.held.iter().filter(|l| l.expires_ns > now_ns).count()
    }

    /// No lease is held at `now_ns`: the bucket carries no information.
    pub fn is_empty_at(&self, now_ns: u64) -> bool {
        self.count_at(now_ns) == 0
    }

    /// Time from `now_ns` until the last lease expires.
    pub fn time_to_empty_ns(&self, now_ns: u64) -> u64 {
        self.held
            .iter()
            .map(|l| l.expires_ns.saturating_sub(now_ns))
            .max()
            .unwrap_or(0)
    }

    fn free(&self, max: u32) -> u64 {
        u64::from(max).saturating_sub(self.held.len() as u64)
    }

    /// Takes lease `id` for `ttl_ns` if fewer than `max` are held. A lease
    /// already held under `id` (a retried acquire) is answered allowed
    /// again and keeps its expiry. A refusal waits for the first expiry.
    pub fn acquire(&mut self, max: u32, ttl_ns: u64, id: u64, now_ns: u64) -> (Decision, i64) {
        let expired = self.expire(now_ns) as i64;
        if self.held.iter().any(|l| l.id == id) {
            return (self.allowed(max, now_ns), -expired);
        }
        if self.held.len() >= max as usize {
            let first = self
                .held
                .iter()
                .map(|l| l.expires_ns - now_ns)
                .min()
                .unwrap_or(1);
            let decision = Decision::Refused {
                remaining: 0,
                retry_after_ns: first.max(1),
                reset_after_ns: self.time_to_empty_ns(now_ns),
            };
            return (decision, -expired);
        }
        self.held.push(Lease {
            id,
            expires_ns: now_ns.saturating_add(ttl_ns),
        });
        (self.allowed(max, now_ns), 1 - expired)
    }

    /// Returns lease `id`: `Allowed` when it was held, `Refused` when not
    /// (released already, expired, or never taken) — a release is
    /// idempotent. The second value is the change in leases held.
    pub fn release(&mut self, max: u32, id: u64, now_ns: u64) -> (Decision, i64) {
        let expired = self.expire(now_ns) as i64;
        let before = self.held.len();
        self.held.retain(|l| l.id != id);
        let released = before != self.held.len();
        let decision = if released {
            self.allowed(max, now_ns)
        } else {
            Decision::Refused {
                remaining: self.free(max),
                retry_after_ns: 0,
                reset_after_ns: self.time_to_empty_ns(now_ns),
            }
        };
        (decision, -(expired + i64::from(released)))
    }

    fn allowed(&self, max: u32, now_ns: u64) -> Decision {
        Decision::Allowed {
            remaining: self.free(max),
            reset_after_ns: self.time_to_empty_ns(now_ns),
        }
    }

    /// Merges a copy of the same key's leases (a handoff met a resident
    /// set): every lease of either side stays held, with the later expiry.
    pub fn merge(&mut self, other: &LeaseSet) {
        for theirs in &other.held {
            match self.held.iter_mut().find(|l| l.id == theirs.id) {
                Some(ours) => ours.expires_ns = ours.expires_ns.max(theirs.expires_ns),
                None => self.held.push(*theirs),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn at_most_max_and_release_returns_one() {
        let mut s = LeaseSet::default();
        for id in 1..=3 {
            assert!(s.acquire(3, 10 * SEC, id, 0).0.is_allowed());
        }
        let (refused, _) = s.acquire(3, 10 * SEC, 4, SEC);
        assert_eq!(
            refused,
            Decision::Refused {
                remaining: 0,
                retry_after_ns: 9 * SEC,
                reset_after_ns: 9 * SEC
            }
        );
        assert_eq!(s.release(3, 2, SEC).1, -1);
        assert!(
            s.release(3, 2, SEC).0
                == Decision::Refused {
                    remaining: 1,
                    retry_after_ns: 0,
                    reset_after_ns: 9 * SEC
                },
            "a second release finds nothing"
        );
        assert!(s.acquire(3, 10 * SEC, 4, SEC).0.is_allowed());
    }

    #[test]
    fn a_retried_acquire_takes_nothing_more() {
        let mut s = LeaseSet::default();
        assert_eq!(s.acquire(2, SEC, 7, 0).1, 1);
        assert_eq!(s.acquire(2, SEC, 7, 0).1, 0);
        assert_eq!(s.held.len(), 1);
    }

    #[test]
    fn expiry_is_exact() {
        let mut s = LeaseSet::default();
        s.acquire(1, 10 * SEC, 1, 0);
        assert!(!s.acquire(1, 10 * SEC, 2, 10 * SEC - 1).0.is_allowed());
        let (d, delta) = s.acquire(1, 10 * SEC, 2, 10 * SEC);
        assert!(d.is_allowed());
        assert_eq!(delta, 0, "one expired, one taken");
        // A clock stepping back frees nothing early.
        assert!(!s.acquire(1, 10 * SEC, 3, 5 * SEC).0.is_allowed());
    }

    #[test]
    fn merge_keeps_every_lease() {
        let mut a = LeaseSet::default();
        a.acquire(5, 10 * SEC, 1, 0);
        let mut b = a.clone();
        b.acquire(5, 10 * SEC, 2, SEC);
        a.acquire(5, 10 * SEC, 3, 2 * SEC);
        a.merge(&b);
        let mut ids: Vec<u64> = a.held.iter().map(|l| l.id).collect();
        ids.sort();
        assert_eq!(ids, [1, 2, 3]);
    }

    proptest! {
        /// Whatever the interleaving, held leases never exceed max, and a
        /// refusal only happens when max leases are held.
        #[test]
        fn never_more_than_max(
            max in 1u32..6,
            ops in prop::collection::vec((any::<bool>(), 0u64..8, 0u64..3 * SEC), 1..200),
        ) {
            let mut s = LeaseSet::default();
            let mut now = 0;
            let mut held = 0i64;
            for (acquire, id, step) in ops {
                now += step;
                let (d, delta) = if acquire {
                    s.acquire(max, 2 * SEC, id, now)
                } else {
                    s.release(max, id, now)
                };
                held += delta;
                prop_assert_eq!(held, s.held.len() as i64);
                prop_assert!(s.held.len() <= max as usize);
                if acquire && !d.is_allowed() {
                    prop_assert_eq!(s.count_at(now), max as usize);
                }
            }
        }
    }
}
