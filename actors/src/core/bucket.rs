//! Bucket math: a pure function of (state, now, quota, cost), for the two
//! kinds of limit that hold a level — token buckets and quotas.
//!
//! Token buckets: exact integer arithmetic, no floats. The level is kept in
//! *sub-units* and time in nanoseconds. For a rate given per `per_s`
//! seconds, 1 unit = `per_s`·10^9 sub-units (per second: nano-units; per
//! minute: 60·10^9), so a bucket refilling at `rate` units per period gains
//! exactly `rate` sub-units per nanosecond (60 per minute is exactly 1 per
//! second). No division happens on the way in, so
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
//! Quotas: the level counts whole units left in the current window of the
//! quota's [`Period`]; the first look at the state in a later window finds
//! it full again. A charge may leave the level below zero for the rest of
//! the window; a new window starts full whatever the debt.
//!
//! The clock is a parameter: callers pass `now_ns` (nanoseconds since the Unix
//! epoch, so a snapshot taken on one node can be restored on another). A clock
//! that steps backwards never refills and never un-refills.

use bincode::{Decode, Encode};
use llmtrace_cluster_config::{Period, Policy};

/// Nano-units per unit of a per-second rate, and nanoseconds per second.
pub const NANOS: u64 = 1_000_000_000;

/// Lowest level a forced charge can leave (debt is bounded, so refill
/// arithmetic never overflows and a huge reported usage cannot lock a tenant
/// out for longer than this takes to refill).
pub const MIN_LEVEL: i64 = -(1 << 62);

/// The numbers a bucket is held to. Both kinds keep their state in a
/// [`BucketState`] (a level at an instant), so snapshots, handoff and
/// write-through treat them alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum BucketQuota {
    /// A token bucket: capacity `burst` units, refilled continuously at
    /// `rate` units per `per_s` seconds. Rate and burst are at least 1 (an
    /// unlimited policy never reaches a bucket); `burst` ×
    /// [`BucketQuota::unit`] fits in 63 bits (config checks it).
    Refill { rate: u32, burst: u32, per_s: u32 },
    /// A quota: `amount` units per window of `period`, full again at each
    /// window boundary. The level counts whole units.
    Window { amount: u64, period: Period },
    /// A concurrency limit: at most `max` leases held, each returning by
    /// itself after `ttl_s` seconds. Its state is a
    /// [`crate::core::lease::LeaseSet`], never a level.
    Leases { max: u32, ttl_s: u64 },
}

impl BucketQuota {
    /// A token bucket of `rate` units per second.
    pub const fn per_second(rate: u32, burst: u32) -> Self {
        BucketQuota::Refill {
            rate,
            burst,
            per_s: 1,
        }
    }

    /// The bucket of a resolved policy; `None` when unlimited.
    #[inline]
    pub fn of(policy: Policy) -> Option<Self> {
        match policy {
            Policy::TokenBucket { rate, burst, per_s } => {
                Some(BucketQuota::Refill { rate, burst, per_s })
            }
            Policy::Quota { amount, period } => Some(BucketQuota::Window { amount, period }),
            Policy::Concurrency { max, lease_ttl_s } => Some(BucketQuota::Leases {
                max,
                ttl_s: lease_ttl_s,
            }),
            Policy::Unlimited => None,
        }
    }

    /// Sub-units per unit: a token bucket gains `rate` sub-units per
    /// nanosecond; a quota counts whole units.
    #[inline]
    pub const fn unit(self) -> u64 {
        match self {
            BucketQuota::Refill { per_s, .. } => NANOS * per_s as u64,
            BucketQuota::Window { .. } => 1,
            BucketQuota::Leases { .. } => NANOS,
        }
    }

    /// Capacity in whole units: the burst or the amount (the largest cost
    /// a take can ask).
    #[inline]
    pub const fn capacity_units(self) -> u64 {
        match self {
            BucketQuota::Refill { burst, .. } => burst as u64,
            BucketQuota::Window { amount, .. } => amount,
            BucketQuota::Leases { max, .. } => max as u64,
        }
    }

    /// Capacity in sub-units.
    #[inline]
    pub fn capacity(self) -> u64 {
        self.capacity_units() * self.unit()
    }

    /// Time a drained bucket takes to be full again from `now_ns`: the whole
    /// refill of a token bucket, the rest of the window of a quota (the
    /// `w` of the RateLimit-Policy header).
    pub fn refill_ns(self, now_ns: u64) -> u64 {
        match self {
            BucketQuota::Refill { rate, .. } => self.capacity().div_ceil(u64::from(rate)),
            BucketQuota::Window { period, .. } => {
                let (_, end) = period.window(now_ns);
                end - now_ns
            }
            BucketQuota::Leases { ttl_s, .. } => ttl_s * NANOS,
        }
    }

    /// The length of one window or refill period, in seconds (for headers).
    pub fn window_secs(self) -> u64 {
        match self {
            BucketQuota::Refill { .. } => self.refill_ns(0).div_ceil(NANOS).max(1),
            BucketQuota::Window { period, .. } => {
                let (start, end) = period.window(0);
                (end - start) / NANOS
            }
            BucketQuota::Leases { ttl_s, .. } => ttl_s,
        }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
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
    /// Concurrency: take the lease whose id is the check's `cost`
    /// ([`crate::core::lease::LeaseSet::acquire`]).
    Acquire,
    /// Concurrency: return the lease whose id is the check's `cost`;
    /// answered `Allowed` when it was held, `Refused` when not.
    Release,
    /// The decision a take of `cost` units would get, without taking them
    /// (a check-only call): the bucket is not changed.
    Peek,
}

impl Op {
    /// Every operation; the index is the wire byte.
    pub const ALL: [Op; 6] = [
        Op::Take,
        Op::Refund,
        Op::Charge,
        Op::Acquire,
        Op::Release,
        Op::Peek,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Take => "take",
            Op::Refund => "refund",
            Op::Charge => "charge",
            Op::Acquire => "acquire",
            Op::Release => "release",
            Op::Peek => "peek",
        }
    }

    /// The operation works on leases (a concurrency limit), not a level.
    pub fn is_lease(self) -> bool {
        matches!(self, Op::Acquire | Op::Release)
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
    #[inline]
    pub fn level_at(&self, quota: BucketQuota, now_ns: u64) -> i64 {
        match quota {
            BucketQuota::Refill { rate, .. } => {
                let elapsed = i128::from(now_ns.saturating_sub(self.updated_ns));
                let refilled = i128::from(self.level) + elapsed * i128::from(rate);
                clamp_level(refilled, quota)
            }
            BucketQuota::Window { period, .. } => {
                if period.window_start(now_ns) > period.window_start(self.updated_ns) {
                    quota.capacity() as i64
                } else {
                    clamp_level(i128::from(self.level), quota)
                }
            }
            BucketQuota::Leases { .. } => clamp_level(i128::from(self.level), quota),
        }
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

    /// Time from `updated_ns` until the bucket is full: the refill of the
    /// deficit, or the rest of a quota's window.
    pub fn time_to_full_ns(&self, quota: BucketQuota) -> u64 {
        let deficit = (i128::from(quota.capacity()) - i128::from(self.level)).max(0) as u128;
        if deficit == 0 {
            return 0;
        }
        match quota {
            BucketQuota::Refill { rate, .. } => {
                ceil_div(deficit, u128::from(rate)).min(u128::from(u64::MAX)) as u64
            }
            BucketQuota::Window { period, .. } => {
                period.window(self.updated_ns).1 - self.updated_ns
            }
            BucketQuota::Leases { .. } => 0,
        }
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
            Op::Take | Op::Acquire | Op::Release => self.try_consume(quota, now_ns, cost),
            Op::Refund => self.refund(quota, now_ns, cost),
            Op::Charge => self.charge(quota, now_ns, cost),
            Op::Peek => self.peek(quota, now_ns, cost),
        }
    }

    /// The decision a take of `cost` would get at `now_ns`, without taking:
    /// admitted, it reports the units held now.
    pub fn peek(&self, quota: BucketQuota, now_ns: u64, cost: u64) -> Decision {
        let mut probe = *self;
        probe.advance(quota, now_ns);
        let now = probe.allowed(quota);
        match probe.try_consume(quota, now_ns, cost) {
            Decision::Allowed { .. } => now,
            refused => refused,
        }
    }

    fn allowed(&self, quota: BucketQuota) -> Decision {
        Decision::Allowed {
            remaining: self.whole_units(quota),
            reset_after_ns: self.time_to_full_ns(quota),
        }
    }

    /// Takes `cost` units at `now_ns` if available. `cost` must be between 1
    /// and the capacity (callers refuse other costs as invalid input: a cost
    /// above the burst can never succeed). A refused quota check waits for
    /// the next window.
    pub fn try_consume(&mut self, quota: BucketQuota, now_ns: u64, cost: u64) -> Decision {
        debug_assert!(cost >= 1 && cost <= quota.capacity_units());
        self.advance(quota, now_ns);
        let need = i128::from(cost) * i128::from(quota.unit());
        if i128::from(self.level) >= need {
            self.level -= need as i64;
            Decision::Allowed {
                remaining: self.whole_units(quota),
                reset_after_ns: self.time_to_full_ns(quota),
            }
        } else {
            let retry = match quota {
                BucketQuota::Refill { rate, .. } => {
                    let deficit = (need - i128::from(self.level)) as u128;
                    ceil_div(deficit, u128::from(rate)).max(1)
                }
                BucketQuota::Window { period, .. } => {
                    u128::from(period.window(self.updated_ns).1 - self.updated_ns)
                }
                BucketQuota::Leases { .. } => 1,
            };
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
