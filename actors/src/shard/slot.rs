//! [`Slot`]: how a shard keeps one bucket in memory (its state and its
//! dirty flag in 24 bytes for a level).

use crate::core::bucket::{BucketQuota, BucketState};
use crate::core::held::Held;
use crate::core::lease::LeaseSet;

/// A bucket in memory: its state, and whether it changed since its last
/// snapshot. One enum rather than a [`Held`] and a flag, so that a level's
/// slot stays 24 bytes (the flag shares the tag's word): memory per key is
/// what bounds how many keys a node holds.
pub(super) enum Slot {
    Level { state: BucketState, dirty: bool },
    Leases { set: Box<LeaseSet>, dirty: bool },
}

impl Slot {
    pub(super) fn new(held: Held) -> Self {
        match held {
            Held::Level(state) => Slot::Level {
                state,
                dirty: false,
            },
            Held::Leases(set) => Slot::Leases { set, dirty: false },
        }
    }

    pub(super) fn dirty(&self) -> bool {
        match self {
            Slot::Level { dirty, .. } | Slot::Leases { dirty, .. } => *dirty,
        }
    }

    pub(super) fn set_dirty(&mut self, to: bool) {
        match self {
            Slot::Level { dirty, .. } | Slot::Leases { dirty, .. } => *dirty = to,
        }
    }

    /// A copy of the state (a snapshot, a report).
    pub(super) fn held(&self) -> Held {
        match self {
            Slot::Level { state, .. } => Held::Level(*state),
            Slot::Leases { set, .. } => Held::Leases(set.clone()),
        }
    }

    pub(super) fn into_held(self) -> Held {
        match self {
            Slot::Level { state, .. } => Held::Level(state),
            Slot::Leases { set, .. } => Held::Leases(set),
        }
    }

    /// Runs `f` on the state (moved out and back: no copy of the leases).
    #[inline]
    pub(super) fn with_held<R>(&mut self, f: impl FnOnce(&mut Held) -> R) -> R {
        let dirty = self.dirty();
        let empty = Slot::Level {
            state: BucketState {
                level: 0,
                updated_ns: 0,
            },
            dirty,
        };
        let mut held = std::mem::replace(self, empty).into_held();
        let r = f(&mut held);
        *self = Slot::new(held);
        self.set_dirty(dirty);
        r
    }

    pub(super) fn is_full_at(&self, quota: BucketQuota, now: u64) -> bool {
        match self {
            Slot::Level { state, .. } => state.is_full_at(quota, now),
            Slot::Leases { set, .. } => set.is_empty_at(now),
        }
    }

    pub(super) fn leases(&self, now: u64) -> usize {
        match self {
            Slot::Level { .. } => 0,
            Slot::Leases { set, .. } => set.count_at(now),
        }
    }

    /// Drops expired leases; returns how many.
    pub(super) fn expire_leases(&mut self, now: u64) -> usize {
        match self {
            Slot::Level { .. } => 0,
            Slot::Leases { set, .. } => set.expire(now),
        }
    }
}
