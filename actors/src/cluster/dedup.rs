//! Makes a forward retry safe: the owner remembers, for a short window, the
//! ids of the checks it received from each origin and their answers. A retry
//! of a check already decided gets the same answer without touching the
//! bucket again; a retry of a check still being decided is answered
//! `DuplicateInFlight` (the origin then applies its unreachable policy)
//! rather than counted twice.
//!
//! Two generations of maps rotate every window, so memory is bounded by the
//! checks received in two windows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::rpc::wire::{WireAnswer, WireCheck, WireResult};
use crate::core::verdict::ErrorCode;

#[derive(Clone, Copy)]
enum Slot {
    InFlight,
    Done(WireAnswer),
}

type Key = (Arc<str>, u64);

struct Inner {
    current: HashMap<Key, Slot>,
    previous: HashMap<Key, Slot>,
    rotated_at: Instant,
}

/// What to do with one received check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Decide it.
    New,
    /// Already answered (or still being answered): reply this.
    Answered(WireAnswer),
}

pub struct Dedup {
    inner: Mutex<Inner>,
    window: Duration,
}

impl Dedup {
    /// Remembers checks for between `window` and twice that.
    pub fn new(window: Duration) -> Self {
        Dedup {
            inner: Mutex::new(Inner {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated_at: Instant::now(),
            }),
            window,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.rotated_at.elapsed() >= self.window {
            inner.previous = std::mem::take(&mut inner.current);
            inner.rotated_at = Instant::now();
        }
        inner
    }

    /// Claims every check of a batch from `origin`.
    pub fn claim(&self, origin: &Arc<str>, checks: &[WireCheck]) -> Vec<Claim> {
        let mut inner = self.lock();
        checks
            .iter()
            .map(|c| {
                let key = (Arc::clone(origin), c.id);
                if c.retry {
                    let seen = inner
                        .current
                        .get(&key)
                        .or_else(|| inner.previous.get(&key))
                        .copied();
                    match seen {
                        Some(Slot::Done(r)) => return Claim::Answered(r),
                        Some(Slot::InFlight) => {
                            return Claim::Answered(WireAnswer::plain(WireResult::Unavailable(
                                ErrorCode::DuplicateInFlight,
                            )))
                        }
                        None => {}
                    }
                }
                inner.current.insert(key, Slot::InFlight);
                Claim::New
            })
            .collect()
    }

    /// Records the answers of checks claimed as [`Claim::New`].
    pub fn complete(
        &self,
        origin: &Arc<str>,
        answers: impl IntoIterator<Item = (u64, WireAnswer)>,
    ) {
        let mut inner = self.lock();
        for (id, result) in answers {
            inner
                .current
                .insert((Arc::clone(origin), id), Slot::Done(result));
        }
    }

    /// Entries remembered (both generations).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.current.len() + inner.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: u64, retry: bool) -> WireCheck {
        WireCheck {
            op: 0,
            id,
            tenant: "t".into(),
            limit: "requests".into(),
            cost: 1,
            retry,
            hops: 1,
        }
    }

    #[test]
    fn a_retry_is_answered_once_decided_and_never_decided_twice() {
        let d = Dedup::new(Duration::from_secs(60));
        let origin: Arc<str> = "a".into();
        assert_eq!(d.claim(&origin, &[check(1, false)]), vec![Claim::New]);
        // Retry while the first send is still being decided.
        assert_eq!(
            d.claim(&origin, &[check(1, true)]),
            vec![Claim::Answered(WireAnswer::plain(WireResult::Unavailable(
                ErrorCode::DuplicateInFlight
            )))]
        );
        d.complete(&origin, [(1, WireAnswer::plain(WireResult::Unlimited))]);
        assert_eq!(
            d.claim(&origin, &[check(1, true)]),
            vec![Claim::Answered(WireAnswer::plain(WireResult::Unlimited))]
        );
        // Same id from another origin is another check.
        let other: Arc<str> = "b".into();
        assert_eq!(d.claim(&other, &[check(1, true)]), vec![Claim::New]);
        // A retry of something never received is decided normally.
        assert_eq!(d.claim(&origin, &[check(2, true)]), vec![Claim::New]);
    }

    #[test]
    fn memory_is_bounded_by_two_windows() {
        let d = Dedup::new(Duration::ZERO);
        let origin: Arc<str> = "a".into();
        for i in 0..100 {
            d.claim(&origin, &[check(i, false)]);
        }
        assert!(d.len() <= 2, "{}", d.len());
    }
}
