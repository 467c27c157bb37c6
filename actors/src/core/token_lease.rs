//! Token leases, the owner's side of the protocol as pure math: a slice of
//! a hot bucket its owner hands to another node so that node decides checks
//! locally for a short while. (Not the leases of a concurrency limit: those
//! are [`crate::core::lease`].)
//!
//! A grant is a take: the owner takes `g` units from the bucket now (only
//! what it holds, never below zero) and records the lease (holder, id,
//! units, expiry). Every unit a holder spends was therefore taken through
//! the bucket. While a lease is recorded the owner's level refills only up
//! to the *ceiling*, the capacity less the units of every recorded lease,
//! so at every instant the owner's level plus the units still unspent in
//! leases is at most the capacity: over any interval `t`, at most
//! `burst + rate·t` units are admitted, however the checks spread over
//! nodes. (Without the ceiling, units parked in a lease would miss none of
//! the refill a full bucket loses.)
//!
//! A return of `u` unspent units is a refund of `min(u, units of that
//! lease)`, up to the ceiling, accepted once (the record goes) and only
//! while the lease is still recorded here and not revoked; anything else
//! is dropped (under-admission, never over-admission). A reset or an
//! override revokes every lease of the bucket: their returns are dropped,
//! and their units stay under the ceiling until they expire (a reset fills
//! the bucket to the ceiling: full less what leases may still spend).
//!
//! A bucket that came from elsewhere (restored after its owner died,
//! handed over) may have leases this owner never saw; the last state its
//! previous owner stored was under that owner's ceiling, so until those
//! leases can have expired the bucket refills no higher than the level it
//! came with ([`OwnerLeases::arrived`]).
//!
//! Holders stop spending at their own expiry, measured on their monotonic
//! clock from before they asked; the owner's record lasts
//! [`OwnerLeases::grant`]'s `margin_ns` longer. A quota's lease never
//! outlives its window (a unit of one window spent in the next would be
//! admitted twice).

use crate::core::bucket::{BucketQuota, BucketState, Decision, Op};

/// One lease the owner handed out and has not seen back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outstanding {
    /// Node id of the holder.
    pub holder: Box<str>,
    /// Unique per owner shard; a return names it.
    pub id: u64,
    /// Units taken from the bucket for this lease.
    pub units: u64,
    /// Wall-clock instant (owner's clock) after which the record goes.
    pub expires_ns: u64,
    /// A reset or an override revoked it: its return is dropped.
    pub revoked: bool,
}

/// What a holder is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub id: u64,
    pub units: u64,
    /// How long the holder may spend, from before it asked.
    pub ttl_ns: u64,
}

/// The token leases of one bucket at its owner, and the quota they were
/// granted under (a change of quota, an override, revokes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerLeases {
    pub quota: BucketQuota,
    pub leases: Vec<Outstanding>,
    /// Set when the bucket came from elsewhere while leases this owner
    /// does not know may still be spent: until when, and the level
    /// (sub-units) it came with, its ceiling meanwhile.
    pub arrived: Option<(u64, i64)>,
}

/// The fair share of a holder asking `ask` units of a bucket holding `free`
/// whole units, `holders` other holders having a lease now: at most the
/// free units split between every holder and the owner's own checks.
pub fn fair_share(free: u64, holders: usize, ask: u64) -> u64 {
    ask.min(free / (holders as u64 + 2))
}

/// Brings `state` forward to `to`, refilling at the quota's rate up to
/// `ceiling` sub-units (a level already above it is left as it is).
fn refill_to(state: &mut BucketState, quota: BucketQuota, to: u64, ceiling: i64) {
    if to <= state.updated_ns {
        return;
    }
    let mut full = *state;
    full.advance(quota, to);
    state.level = full.level.min(ceiling.max(state.level));
    state.updated_ns = to;
}

impl OwnerLeases {
    pub fn new(quota: BucketQuota) -> Self {
        OwnerLeases {
            quota,
            leases: Vec::new(),
            arrived: None,
        }
    }

    /// The bucket came to this owner in `state`, its previous owner's last
    /// stored state: leases that owner granted may be spent until
    /// `horizon_ns` after that state was stored.
    pub fn arrived(quota: BucketQuota, state: &BucketState, horizon_ns: u64) -> Self {
        OwnerLeases {
            arrived: Some((state.updated_ns.saturating_add(horizon_ns), state.level)),
            ..OwnerLeases::new(quota)
        }
    }

    /// Nothing to remember at `now`: no lease recorded, no unknown one.
    pub fn is_idle_at(&self, now: u64) -> bool {
        self.leases.iter().all(|l| l.expires_ns <= now)
            && self.arrived.is_none_or(|(until, _)| until <= now)
    }

    /// Units in leases still recorded (revoked ones included).
    pub fn outstanding_units(&self) -> u64 {
        self.leases.iter().map(|l| l.units).sum()
    }

    /// The highest level the bucket may hold now, in sub-units.
    fn ceiling(&self) -> i64 {
        let quota = self.quota;
        let leased = i128::from(self.outstanding_units()) * i128::from(quota.unit());
        let mut c = i128::from(quota.capacity());
        if let Some((_, level)) = self.arrived {
            // Leases granted here came out of the level it arrived with.
            c = c.min(i128::from(level));
        }
        (c - leased).max(0) as i64
    }

    /// Brings `state` forward to `now` under `quota`: refill up to the
    /// ceiling, which rises as leases expire (each stretch refilled under
    /// the ceiling of its time). A new quota (an override) revokes every
    /// lease.
    pub fn settle(&mut self, state: &mut BucketState, quota: BucketQuota, now: u64) {
        if quota != self.quota {
            self.quota = quota;
            self.revoke_all();
        }
        loop {
            let next = self
                .leases
                .iter()
                .map(|l| l.expires_ns)
                .chain(self.arrived.map(|(until, _)| until))
                .filter(|&e| e <= now)
                .min();
            let Some(at) = next else { break };
            refill_to(state, quota, at, self.ceiling());
            self.leases.retain(|l| l.expires_ns > at);
            if self.arrived.is_some_and(|(until, _)| until <= at) {
                self.arrived = None;
            }
        }
        refill_to(state, quota, now, self.ceiling());
    }

    /// Applies an owner's own check (any op of a level) to `state` under
    /// the ceiling: after [`OwnerLeases::settle`] the level is at most the
    /// ceiling, so a take, peek or charge is the plain one; a refund fills
    /// at most to the ceiling.
    pub fn apply(
        &mut self,
        state: &mut BucketState,
        quota: BucketQuota,
        now: u64,
        op: Op,
        cost: u64,
    ) -> Decision {
        self.settle(state, quota, now);
        if op == Op::Refund {
            let refunded = cost.min(self.room(state));
            return state.refund(quota, now, refunded);
        }
        state.apply(quota, now, op, cost)
    }

    /// Whole units a refund may add before the level meets the ceiling.
    fn room(&self, state: &BucketState) -> u64 {
        let room = i128::from(self.ceiling()) - i128::from(state.level);
        (room.max(0) / i128::from(self.quota.unit())) as u64
    }

    /// Grants `holder` a lease of at most `ask` units for `ttl_ns`: takes
    /// its fair share of the whole units `state` holds at `now` (nothing
    /// when that is 0, when the quota is not a level's, or when a quota's
    /// window ends within `margin_ns`). The record lasts `margin_ns` past
    /// the holder's expiry.
    #[allow(clippy::too_many_arguments)]
    pub fn grant(
        &mut self,
        state: &mut BucketState,
        quota: BucketQuota,
        now: u64,
        holder: &str,
        id: u64,
        ask: u64,
        (ttl_ns, margin_ns): (u64, u64),
    ) -> Option<Grant> {
        self.settle(state, quota, now);
        let ttl_ns = match quota {
            BucketQuota::Refill { .. } => ttl_ns,
            BucketQuota::Window { period, .. } => {
                let end = period.window(now).1;
                ttl_ns.min(end.saturating_sub(now).saturating_sub(margin_ns))
            }
            BucketQuota::Leases { .. } => 0,
        };
        if ttl_ns == 0 || ask == 0 {
            return None;
        }
        let free = state.level.max(0) as u64 / quota.unit();
        let others = self.leases.iter().filter(|l| &*l.holder != holder).count();
        let units = fair_share(free, others, ask).min(quota.capacity_units());
        if units == 0 || !state.try_consume(quota, now, units).is_allowed() {
            return None;
        }
        self.leases.push(Outstanding {
            holder: holder.into(),
            id,
            units,
            expires_ns: now.saturating_add(ttl_ns).saturating_add(margin_ns),
            revoked: false,
        });
        Some(Grant { id, units, ttl_ns })
    }

    /// A holder gives back `unspent` units of lease `id`: refunded (at most
    /// the lease's units) when the lease is still recorded and not
    /// revoked; answers the units refunded (0 when the return was dropped).
    pub fn give_back(
        &mut self,
        state: &mut BucketState,
        quota: BucketQuota,
        now: u64,
        (holder, id): (&str, u64),
        unspent: u64,
    ) -> u64 {
        self.settle(state, quota, now);
        let Some(i) = self
            .leases
            .iter()
            .position(|l| l.id == id && &*l.holder == holder && !l.revoked)
        else {
            return 0;
        };
        let lease = self.leases.swap_remove(i);
        let units = unspent.min(lease.units);
        let refunded = units.min(self.room(state));
        if refunded > 0 {
            state.refund(quota, now, refunded);
        }
        units
    }

    fn revoke_all(&mut self) {
        for l in &mut self.leases {
            l.revoked = true;
        }
    }

    /// A reset at `now`: revokes every lease and answers the bucket's new
    /// state: full up to the ceiling (full less what leases, known or not,
    /// may still spend).
    pub fn reset(&mut self, state: &BucketState, quota: BucketQuota, now: u64) -> BucketState {
        let mut s = *state;
        self.settle(&mut s, quota, now);
        self.revoke_all();
        BucketState {
            level: self.ceiling().max(s.level),
            updated_ns: s.updated_ns,
        }
    }
}

#[cfg(test)]
mod tests;
