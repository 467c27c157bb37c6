//! The owner's side of token leases, in the shard that owns the bucket
//! (the math is [`crate::core::token_lease`]): grants ([`GrantTokens`]),
//! returns ([`ReturnTokens`]), the refill ceiling every check of a leased
//! bucket decides under, a reset's revocation, and the arrival of a bucket
//! whose previous owner may have leases out.
//!
//! A grant is answered once the snapshot holding it is stored, when a
//! cache layer is configured (write-through for grants, whatever the
//! snapshot mode): an owner that dies cannot come back at a level from
//! before the grant. Records live in memory only: after a restart, a
//! handoff or a fence lapse the returns of earlier leases are dropped.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{ShardActor, ShardState};
use crate::core::bucket::{BucketQuota, Decision, Op};
use crate::core::held::Held;
use crate::core::key::BucketKey;
pub use crate::core::token_lease::Grant;
use crate::core::token_lease::OwnerLeases;

/// Grant `holder` a token lease of at most `ask` units of the resident
/// bucket `key` for `ttl_ns`; `None` when nothing is granted (not
/// resident, nothing to spare, fence closed, not persisted).
#[derive(Debug, Message)]
#[rtype(result = "Option<Grant>")]
pub struct GrantTokens {
    pub key: BucketKey,
    pub quota: BucketQuota,
    pub holder: Box<str>,
    pub ask: u64,
    pub ttl_ns: u64,
    /// How much longer than the holder the owner keeps the record.
    pub margin_ns: u64,
}

/// `holder` gives back `unspent` units of lease `id`; answers the units
/// accepted (0: dropped).
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct ReturnTokens {
    pub key: BucketKey,
    pub quota: BucketQuota,
    pub holder: Box<str>,
    pub id: u64,
    pub unspent: u64,
}

impl ShardState {
    /// Decides a check of a bucket that has token leases (or may have
    /// some of a previous owner out) under its ceiling; `None` for every
    /// other bucket (one emptiness test when no lease is out).
    #[inline]
    pub(super) fn leased_decision(
        &mut self,
        key: &BucketKey,
        quota: BucketQuota,
        op: Op,
        cost: u64,
        now: u64,
    ) -> Option<Decision> {
        if self.token_leases.is_empty() {
            return None;
        }
        let leases = self.token_leases.get_mut(key)?;
        let slot = self.buckets.get_mut(key)?;
        slot.with_held(|h| match h {
            Held::Level(s) => Some(leases.apply(s, quota, now, op, cost)),
            Held::Leases(_) => None,
        })
    }

    /// A bucket came from elsewhere (restore, handoff): while leases its
    /// previous owner granted may be spent, it refills no higher than the
    /// level it came with.
    pub(super) fn arrived(&mut self, key: &BucketKey, state: &Held, quota: BucketQuota) {
        let horizon = self.timing.token_lease_horizon.as_nanos() as u64;
        let Held::Level(s) = state else { return };
        if horizon == 0 || s.updated_ns.saturating_add(horizon) <= self.clock.now_ns() {
            return;
        }
        if !s.is_full_at(quota, s.updated_ns) {
            let arrived = OwnerLeases::arrived(quota, s, horizon);
            self.token_leases.insert(key.clone(), arrived);
        }
    }

    /// The state a reset leaves when leases may be out: full up to the
    /// ceiling, every lease revoked; `None` when none may be out.
    pub(super) fn reset_leased(&mut self, key: &BucketKey, quota: BucketQuota) -> Option<Held> {
        let now = self.clock.now_ns();
        let Some(Held::Level(state)) = self.buckets.get(key).map(|s| s.held()) else {
            return None;
        };
        let leases = self.token_leases.get_mut(key)?;
        Some(Held::Level(leases.reset(&state, quota, now)))
    }

    /// Brings every leased bucket under its ceiling and forgets the records
    /// with nothing left to remember (before the sweep drops full buckets).
    pub(super) fn settle_token_leases(&mut self, now: u64) {
        let buckets = &mut self.buckets;
        self.token_leases.retain(|key, leases| {
            let quota = leases.quota;
            if let Some(slot) = buckets.get_mut(key) {
                slot.with_held(|h| {
                    if let Held::Level(s) = h {
                        leases.settle(s, quota, now);
                    }
                });
            }
            !leases.is_idle_at(now) && buckets.contains_key(key)
        });
        super::shrink_sparse(&mut self.token_leases);
    }
}

impl ShardState {
    pub(super) fn grant_tokens(
        &mut self,
        msg: GrantTokens,
        ctx: &mut Context<ShardActor>,
    ) -> ResponseFuture<Option<Grant>> {
        let none = || -> ResponseFuture<Option<Grant>> { Box::pin(async { None }) };
        if !self.may_decide() || !self.buckets.contains_key(&msg.key) {
            return none();
        }
        let now = self.clock.now_ns();
        let id = self.next_lease_id;
        self.next_lease_id += 1;
        let leases = self
            .token_leases
            .entry(msg.key.clone())
            .or_insert_with(|| OwnerLeases::new(msg.quota));
        let slot = self.buckets.get_mut(&msg.key).expect("resident");
        let grant = slot.with_held(|h| match h {
            Held::Level(s) => leases.grant(
                s,
                msg.quota,
                now,
                &msg.holder,
                id,
                msg.ask,
                (msg.ttl_ns, msg.margin_ns),
            ),
            Held::Leases(_) => None,
        });
        let Some(grant) = grant else {
            return none();
        };
        self.mark_dirty(&msg.key, now);
        if !self.timing.write_behind {
            return Box::pin(async move { Some(grant) });
        }
        let (tx, rx) = oneshot::channel();
        let placeholder = Decision::Allowed {
            remaining: grant.units,
            reset_after_ns: 0,
        };
        self.durable_waiting.push((placeholder, tx));
        self.flush(ctx);
        Box::pin(async move { matches!(rx.await, Ok(Ok(_))).then_some(grant) })
    }
}

impl ShardState {
    pub(super) fn return_tokens(&mut self, msg: ReturnTokens, _: &mut Context<ShardActor>) -> u64 {
        let now = self.clock.now_ns();
        let (Some(leases), Some(slot)) = (
            self.token_leases.get_mut(&msg.key),
            self.buckets.get_mut(&msg.key),
        ) else {
            return 0;
        };
        let who = (&*msg.holder, msg.id);
        let back = slot.with_held(|h| match h {
            Held::Level(s) => leases.give_back(s, msg.quota, now, who, msg.unspent),
            Held::Leases(_) => 0,
        });
        if back > 0 {
            self.mark_dirty(&msg.key, now);
        }
        back
    }
}

#[cfg(test)]
mod tests;
