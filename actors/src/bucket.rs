//! Token-bucket math: a pure function of (state, now, quota, cost).
//!
//! Exact integer arithmetic, no floats. The level is kept in *nano-units*
//! (1 unit = 10^9 nano-units) and time in nanoseconds, so a bucket refilling at
//! `rate` units per second gains exactly `rate` nano-units per nanosecond. No
//! division happens on the way in, so nothing is rounded and nothing drifts:
//! over any interval of length `t` a bucket admits at most
//! `burst + floor(rate * t)` units, and exactly that many when it is asked for
//! more all along. (This is GCRA with the theoretical arrival time expressed as
//! a level; the two are the same algorithm.)
//!
//! The clock is a parameter: callers pass `now_ns` (nanoseconds since the Unix
//! epoch, so a snapshot taken on one node can be restored on another). A clock
//! that steps backwards never refills and never un-refills.

use bincode::{Decode, Encode};

/// Nano-units per unit, and nanoseconds per second.
pub const NANOS: u64 = 1_000_000_000;

/// The quota of a bucket: capacity `burst` units, refilled at `rate` units per
/// second. Both are at least 1 (an unlimited quota never reaches a bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketQuota {
    pub rate: u32,
    pub burst: u32,
}

impl BucketQuota {
    /// Capacity in nano-units.
    pub fn capacity(self) -> u64 {
        u64::from(self.burst) * NANOS
    }
}

/// The whole state of a bucket: its level at the instant `updated_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct BucketState {
    /// Tokens available at `updated_ns`, in nano-units.
    pub level: u64,
    /// When `level` was computed, in nanoseconds since the Unix epoch.
    pub updated_ns: u64,
}

/// The outcome of one check. Being refused is a value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `cost` units were taken.
    Allowed {
        /// Whole units left after this check.
        remaining: u64,
        /// Time until the bucket is full again.
        reset_after_ns: u64,
    },
    /// Not enough units; nothing was taken.
    Refused {
        /// Whole units available now (less than the cost asked).
        remaining: u64,
        /// Time until `cost` units are available (at least 1 ns).
        retry_after_ns: u64,
        /// Time until the bucket is full again.
        reset_after_ns: u64,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

fn ceil_div(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

impl BucketState {
    /// A new tenant's bucket: full.
    pub fn full(quota: BucketQuota, now_ns: u64) -> Self {
        BucketState {
            level: quota.capacity(),
            updated_ns: now_ns,
        }
    }

    /// The level at `now_ns` (refill since `updated_ns`, capped at capacity).
    /// A level above capacity (the quota was lowered) is capped too.
    pub fn level_at(&self, quota: BucketQuota, now_ns: u64) -> u64 {
        let elapsed = u128::from(now_ns.saturating_sub(self.updated_ns));
        let refilled = u128::from(self.level) + elapsed * u128::from(quota.rate);
        refilled.min(u128::from(quota.capacity())) as u64
    }

    /// Brings the state forward to `now_ns`. Time never moves backwards.
    pub fn advance(&mut self, quota: BucketQuota, now_ns: u64) {
        self.level = self.level_at(quota, now_ns);
        self.updated_ns = self.updated_ns.max(now_ns);
    }

    /// True when the bucket is full at `now_ns`: it then carries no
    /// information and may be dropped from memory and from the cache layer.
    pub fn is_full_at(&self, quota: BucketQuota, now_ns: u64) -> bool {
        self.level_at(quota, now_ns) >= quota.capacity()
    }

    /// Time from `updated_ns` until the bucket is full.
    pub fn time_to_full_ns(&self, quota: BucketQuota) -> u64 {
        let deficit = u128::from(quota.capacity().saturating_sub(self.level));
        ceil_div(deficit, u128::from(quota.rate)).min(u128::from(u64::MAX)) as u64
    }

    /// Takes `cost` units at `now_ns` if available. `cost` must be between 1
    /// and `quota.burst` (callers refuse other costs as invalid input: a cost
    /// above the burst can never succeed).
    pub fn try_consume(&mut self, quota: BucketQuota, now_ns: u64, cost: u64) -> Decision {
        debug_assert!(cost >= 1 && cost <= u64::from(quota.burst));
        self.advance(quota, now_ns);
        let need = u128::from(cost) * u128::from(NANOS);
        if u128::from(self.level) >= need {
            self.level -= need as u64;
            Decision::Allowed {
                remaining: self.level / NANOS,
                reset_after_ns: self.time_to_full_ns(quota),
            }
        } else {
            let deficit = need - u128::from(self.level);
            let retry = ceil_div(deficit, u128::from(quota.rate)).max(1);
            Decision::Refused {
                remaining: self.level / NANOS,
                retry_after_ns: retry.min(u128::from(u64::MAX)) as u64,
                reset_after_ns: self.time_to_full_ns(quota),
            }
        }
    }
}

/// Whole seconds to wait, as llmtrace reports them: `max(1, ceil(ns / 1e9))`.
pub fn retry_after_secs(retry_after_ns: u64) -> u64 {
    retry_after_ns.div_ceil(NANOS).max(1)
}

#[cfg(test)]
#[path = "bucket_tests.rs"]
mod tests;
