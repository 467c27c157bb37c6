//! Token-bucket math: a pure function of (state, now, quota, cost).
//!
//! Exact integer arithmetic, no floats. The level is kept in *sub-units* and
//! time in nanoseconds. For a rate given per second, 1 unit = 10^9 sub-units
//! (nano-units); for a rate per minute (tokens), 1 unit = 60·10^9 sub-units.
//! Either way a bucket refilling at `rate` units per period gains exactly
//! `rate` sub-units per nanosecond. No division happens on the way in, so
//! nothing is rounded and nothing drifts:
//! over any interval of length `t` a bucket admits at most
//! `burst + floor(rate * t)` units, and exactly that many when it is asked for
//! more all along. (This is GCRA with the theoretical arrival time expressed as
//! a level; the two are the same algorithm.)
//!
//! Besides taking units ([`BucketState::try_consume`]), the proxy's
//! reconcile step gives back what a reservation did not use
//! ([`BucketState::refund`], capped at full) and charges what an answer used
//! beyond it ([`BucketState::charge`], which may push the level below zero:
//! a bucket in debt refuses until refill has paid the debt back).
//!
//! The clock is a parameter: callers pass `now_ns` (nanoseconds since the Unix
//! epoch, so a snapshot taken on one node can be restored on another). A clock
//! that steps backwards never refills and never un-refills.

use bincode::{Decode, Encode};
use llmtrace_cluster_config::{Per, Quota};

/// Nano-units per unit of a per-second rate, and nanoseconds per second.
pub const NANOS: u64 = 1_000_000_000;

/// Lowest level a forced charge can leave (debt is bounded, so refill
/// arithmetic never overflows and a huge reported usage cannot lock a tenant
/// out for longer than this takes to refill).
pub const MIN_LEVEL: i64 = -(1 << 62);

/// The quota of a bucket: capacity `burst` units, refilled at `rate` units per
/// `per`. Rate and burst are at least 1 (an unlimited quota never reaches a
/// bucket); `burst` × [`BucketQuota::unit`] fits in 63 bits (config limits
/// the token burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketQuota {
    pub rate: u32,
    pub burst: u32,
    pub per: Per,
}

impl BucketQuota {
    /// A quota of `rate` units per second.
    pub const fn per_second(rate: u32, burst: u32) -> Self {
        BucketQuota {
            rate,
            burst,
            per: Per::Second,
        }
    }

    /// The bucket of a resolved quota; `None` when unlimited.
    pub fn of(quota: Quota) -> Option<Self> {
        match quota {
            Quota::Unlimited => None,
            Quota::Bucket { rate, burst, per } => Some(BucketQuota { rate, burst, per }),
        }
    }

    /// Sub-units per unit: the bucket gains `rate` sub-units per nanosecond.
    pub const fn unit(self) -> u64 {
        NANOS * self.per.secs()
    }

    /// Capacity in sub-units.
    pub fn capacity(self) -> u64 {
        u64::from(self.burst) * self.unit()
    }

    /// Time a drained bucket takes to refill completely.
    pub fn refill_ns(self) -> u64 {
        self.capacity().div_ceil(u64::from(self.rate))
    }
}

/// The whole state of a bucket: its level at the instant `updated_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct BucketState {
    /// Units available at `updated_ns`, in sub-units; negative when a
    /// forced charge left the bucket in debt.
    pub level: i64,
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

/// What a check does to its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Op {
    /// Take `cost` units if available ([`BucketState::try_consume`]).
    #[default]
    Take,
    /// Give `cost` units back, capped at full ([`BucketState::refund`]).
    Refund,
    /// Take `cost` units whatever the level ([`BucketState::charge`]).
    Charge,
}

impl Op {
    /// Every operation; the index is the wire byte.
    pub const ALL: [Op; 3] = [Op::Take, Op::Refund, Op::Charge];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Take => "take",
            Op::Refund => "refund",
            Op::Charge => "charge",
        }
    }
}

fn ceil_div(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

fn clamp_level(v: i128, quota: BucketQuota) -> i64 {
    v.clamp(i128::from(MIN_LEVEL), i128::from(quota.capacity())) as i64
}

impl BucketState {
    /// A new tenant's bucket: full.
    pub fn full(quota: BucketQuota, now_ns: u64) -> Self {
        BucketState {
            level: quota.capacity() as i64,
            updated_ns: now_ns,
        }
    }

    /// The level at `now_ns` (refill since `updated_ns`, capped at capacity).
    /// A level above capacity (the quota was lowered) is capped too.
    pub fn level_at(&self, quota: BucketQuota, now_ns: u64) -> i64 {
        let elapsed = i128::from(now_ns.saturating_sub(self.updated_ns));
        let refilled = i128::from(self.level) + elapsed * i128::from(quota.rate);
        clamp_level(refilled, quota)
    }

    /// Whole units available (0 while in debt).
    fn whole_units(&self, quota: BucketQuota) -> u64 {
        self.level.max(0) as u64 / quota.unit()
    }

    /// Brings the state forward to `now_ns`. Time never moves backwards.
    pub fn advance(&mut self, quota: BucketQuota, now_ns: u64) {
        self.level = self.level_at(quota, now_ns);
        self.updated_ns = self.updated_ns.max(now_ns);
    }

    /// True when the bucket is full at `now_ns`: it then carries no
    /// information and may be dropped from memory and from the cache layer.
    pub fn is_full_at(&self, quota: BucketQuota, now_ns: u64) -> bool {
        self.level_at(quota, now_ns) >= quota.capacity() as i64
    }

    /// Time from `updated_ns` until the bucket is full.
    pub fn time_to_full_ns(&self, quota: BucketQuota) -> u64 {
        let deficit = (i128::from(quota.capacity()) - i128::from(self.level)).max(0) as u128;
        ceil_div(deficit, u128::from(quota.rate)).min(u128::from(u64::MAX)) as u64
    }

    /// Gives back `amount` units at `now_ns` (what a reservation did not
    /// use), capped at capacity. Never refused.
    pub fn refund(&mut self, quota: BucketQuota, now_ns: u64, amount: u64) -> Decision {
        self.advance(quota, now_ns);
        let add = i128::from(amount) * i128::from(quota.unit());
        self.level = clamp_level(i128::from(self.level) + add, quota);
        self.allowed(quota)
    }

    /// Takes `amount` units at `now_ns` whatever the level (what an answer
    /// used beyond its reservation). The level may go below zero, down to
    /// [`MIN_LEVEL`]: later checks are refused until refill pays the debt.
    pub fn charge(&mut self, quota: BucketQuota, now_ns: u64, amount: u64) -> Decision {
        self.advance(quota, now_ns);
        let sub = i128::from(amount) * i128::from(quota.unit());
        self.level = clamp_level(i128::from(self.level) - sub, quota);
        self.allowed(quota)
    }

    /// Applies `op` with `cost` units at `now_ns`.
    pub fn apply(&mut self, quota: BucketQuota, now_ns: u64, op: Op, cost: u64) -> Decision {
        match op {
            Op::Take => self.try_consume(quota, now_ns, cost),
            Op::Refund => self.refund(quota, now_ns, cost),
            Op::Charge => self.charge(quota, now_ns, cost),
        }
    }

    fn allowed(&self, quota: BucketQuota) -> Decision {
        Decision::Allowed {
            remaining: self.whole_units(quota),
            reset_after_ns: self.time_to_full_ns(quota),
        }
    }

    /// Takes `cost` units at `now_ns` if available. `cost` must be between 1
    /// and `quota.burst` (callers refuse other costs as invalid input: a cost
    /// above the burst can never succeed).
    pub fn try_consume(&mut self, quota: BucketQuota, now_ns: u64, cost: u64) -> Decision {
        debug_assert!(cost >= 1 && cost <= u64::from(quota.burst));
        self.advance(quota, now_ns);
        let need = i128::from(cost) * i128::from(quota.unit());
        if i128::from(self.level) >= need {
            self.level -= need as i64;
            Decision::Allowed {
                remaining: self.whole_units(quota),
                reset_after_ns: self.time_to_full_ns(quota),
            }
        } else {
            let deficit = (need - i128::from(self.level)) as u128;
            let retry = ceil_div(deficit, u128::from(quota.rate)).max(1);
            Decision::Refused {
                remaining: self.whole_units(quota),
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
mod tests;
