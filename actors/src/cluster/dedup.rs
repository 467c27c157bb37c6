//! Makes a forward retry safe: the owner remembers, for a short window, the
//! ids of the checks it received from each origin and their answers. A retry
//! of a check already decided gets the same answer without touching the
//! bucket again; a retry of a check still being decided is answered
//! `DuplicateInFlight` (the origin then applies its unreachable policy)
//! rather than counted twice.
//!
//! Two generations of maps rotate every window; both are dropped once two
//! windows pass without a rotation (a timer started by [`Dedup::forget_later`]
//! makes sure of it when no batch arrives), so memory comes back when the
//! traffic stops. A generation holds at most [`MAX_ENTRIES`] checks: when it
//! is full and at least half a window old it is rotated early (every entry is
//! still remembered for half a window, more than a forward's timeout and its
//! retry); when it is full and younger, a new check is not decided but
//! answered `DuplicateInFlight` (the origin retries, then applies its
//! `on_owner_unreachable` policy): a check is never counted twice, whatever
//! the load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
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

/// Most checks one generation remembers (two generations are kept): what a
/// map of 2^17 slots holds (7/8 of them), about 11.7 MB at 89 bytes a slot.
pub const MAX_ENTRIES: usize = (1 << 17) / 8 * 7;

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
    /// Most entries of a generation ([`MAX_ENTRIES`]; less in tests).
    max_entries: usize,
    /// A [`Dedup::forget_later`] timer is running.
    timer: AtomicBool,
}

impl Dedup {
    /// Remembers checks for between `window` and twice that.
    pub fn new(window: Duration) -> Self {
        Self::with_max_entries(window, MAX_ENTRIES)
    }

    fn with_max_entries(window: Duration, max_entries: usize) -> Self {
        Dedup {
            inner: Mutex::new(Inner {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated_at: Instant::now(),
            }),
            window,
            max_entries,
            timer: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let age = inner.rotated_at.elapsed();
        if age >= self.window {
            // Every entry of `current` was made before it was a window old,
            // so after two windows all of them are at least a window old.
            inner.previous = if age >= 2 * self.window {
                inner.current = HashMap::new();
                HashMap::new()
            } else {
                std::mem::take(&mut inner.current)
            };
            inner.rotated_at = Instant::now();
        }
        inner
    }

    /// Makes sure the entries are dropped once their windows pass, even if
    /// no other batch arrives: a timer on the current (actix) thread, one at
    /// a time, that runs while entries remain.
    pub fn forget_later(self: &Arc<Self>) {
        if self.timer.swap(true, Relaxed) {
            return;
        }
        let dedup = Arc::clone(self);
        actix::spawn(async move {
            loop {
                tokio::time::sleep(dedup.window).await;
                if !dedup.is_empty() {
                    continue;
                }
                dedup.timer.store(false, Relaxed);
                // Entries made since the check above: keep the timer.
                if dedup.is_empty() || dedup.timer.swap(true, Relaxed) {
                    return;
                }
            }
        });
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
                if inner.current.len() >= self.max_entries {
                    if inner.rotated_at.elapsed() < self.window / 2 {
                        // Full and young: not decided, so never counted twice.
                        return Claim::Answered(WireAnswer::plain(WireResult::Unavailable(
                            ErrorCode::DuplicateInFlight,
                        )));
                    }
                    inner.previous = std::mem::take(&mut inner.current);
                    inner.rotated_at = Instant::now();
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
            let key = (Arc::clone(origin), id);
            // Where its claim is (a generation rotated meanwhile); gone when
            // both were dropped: the answer is not remembered then.
            if let Some(slot) = inner.current.get_mut(&key) {
                *slot = Slot::Done(result);
            } else if let Some(slot) = inner.previous.get_mut(&key) {
                *slot = Slot::Done(result);
            }
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

    #[test]
    fn a_full_generation_refuses_new_checks_but_answers_retries() {
        let d = Dedup::with_max_entries(Duration::from_secs(60), 2);
        let origin: Arc<str> = "a".into();
        assert_eq!(
            d.claim(&origin, &[check(1, false), check(2, false)]),
            vec![Claim::New, Claim::New]
        );
        d.complete(&origin, [(1, WireAnswer::plain(WireResult::Unlimited))]);
        let refused = Claim::Answered(WireAnswer::plain(WireResult::Unavailable(
            ErrorCode::DuplicateInFlight,
        )));
        // Not decided (so never decided twice) while the generation is full.
        assert_eq!(
            d.claim(&origin, &[check(3, false), check(3, true)]),
            vec![refused, refused]
        );
        assert_eq!(
            d.claim(&origin, &[check(1, true), check(2, true)]),
            vec![
                Claim::Answered(WireAnswer::plain(WireResult::Unlimited)),
                refused
            ]
        );
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn two_windows_without_a_rotation_drop_everything() {
        let d = Dedup::new(Duration::ZERO);
        let origin: Arc<str> = "a".into();
        d.claim(&origin, &[check(1, false), check(2, false)]);
        assert!(d.is_empty(), "{}", d.len());
    }

    #[test]
    fn an_entry_costs_a_bounded_number_of_bytes() {
        // What docs/operations.md states per slot of the map (one control
        // byte more).
        assert_eq!(std::mem::size_of::<(Key, Slot)>(), 88);
    }
}
