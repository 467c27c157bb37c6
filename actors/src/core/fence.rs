//! Ownership fencing: a node decides for its buckets only while its view of
//! the cluster is fresh. [`Fence`] is the shared gate: open until an instant
//! (`fresh_until`, on the monotonic clock) that the cluster layer keeps
//! pushing forward while the node hears from its peers (see
//! `cluster::freshness`). Nothing has to run for the gate to close: a node
//! that was frozen (a GC pause, `SIGSTOP`, a VM migration) or cut off finds
//! it closed the moment it looks, before it decides anything.
//!
//! Each time the gate was found closed, the cluster layer records a *lapse*:
//! the epoch goes up, and every bucket a shard held from before is suspect
//! (another node may have served it meanwhile). A shard that sees a new
//! epoch sets its buckets aside and takes each back, on its next check, from
//! whichever node holds it now or from the cache layer, never spending from
//! the copy it kept.
//!
//! A node alone never lapses; the fence of a node without a cluster is open
//! for good ([`Fence::open`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// `fresh_until` of a fence that never closes.
const NEVER: u64 = u64::MAX;

/// The gate every decision from a resident bucket passes.
#[derive(Debug)]
pub struct Fence {
    origin: Instant,
    /// Until when (ns since `origin`) this node may decide.
    fresh_until: AtomicU64,
    /// Lapses so far.
    epoch: AtomicU64,
    /// When the last lapse was recorded (ns since `origin`), 0 for none.
    lapsed_at: AtomicU64,
    /// Wakes the checks waiting for the gate to open.
    opened: Notify,
}

impl Default for Fence {
    fn default() -> Self {
        Fence::with_fresh_until(NEVER)
    }
}

impl Fence {
    /// A fence that never closes (a node without a cluster, tests).
    pub fn open() -> Arc<Self> {
        Arc::new(Fence::default())
    }

    /// A fence open for `lease` from now; the cluster layer renews it.
    pub fn leased(lease: Duration) -> Arc<Self> {
        let fence = Fence::with_fresh_until(0);
        fence.renew(fence.now_ns().saturating_add(lease.as_nanos() as u64));
        Arc::new(fence)
    }

    fn with_fresh_until(until: u64) -> Self {
        Fence {
            origin: Instant::now(),
            fresh_until: AtomicU64::new(until),
            epoch: AtomicU64::new(0),
            lapsed_at: AtomicU64::new(0),
            opened: Notify::new(),
        }
    }

    /// Monotonic time of this fence (ns since it was made); it runs on
    /// while the process is stopped.
    pub fn now_ns(&self) -> u64 {
        (self.origin.elapsed().as_nanos() as u64).max(1)
    }

    /// The current epoch when this node may decide now; `None` while the
    /// gate is closed. A fence that never closes reads no clock.
    #[inline]
    pub fn admits(&self) -> Option<u64> {
        let until = self.fresh_until.load(Ordering::Acquire);
        if until != NEVER && self.now_ns() >= until {
            return None;
        }
        Some(self.epoch.load(Ordering::Acquire))
    }

    /// The gate was open until this instant.
    pub fn fresh_until(&self) -> u64 {
        self.fresh_until.load(Ordering::Acquire)
    }

    /// Opens the gate until `until` (ns since the fence was made), or keeps
    /// it closed when that has passed; wakes the waiting checks.
    pub fn renew(&self, until: u64) {
        self.fresh_until.store(until, Ordering::Release);
        if self.admits().is_some() {
            self.opened.notify_waiters();
        }
    }

    /// Opens the gate for good (a node alone in its ring: nobody else can
    /// serve its keys); decisions then read no clock.
    pub fn open_for_good(&self) {
        self.renew(NEVER);
    }

    /// Records a lapse: buckets held from before are suspect. Answers the
    /// new epoch. Call it before the gate opens again.
    pub fn lapse(&self) -> u64 {
        self.lapsed_at.store(self.now_ns(), Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A lapse was recorded less than `window` ago.
    pub fn lapsed_within(&self, window: Duration) -> bool {
        let at = self.lapsed_at.load(Ordering::Acquire);
        at != 0 && self.now_ns().saturating_sub(at) <= window.as_nanos() as u64
    }

    /// Waits at most `timeout` for the gate to open; true when it is open.
    pub async fn wait_open(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let opened = self.opened.notified();
                tokio::pin!(opened);
                opened.as_mut().enable();
                if self.admits().is_some() {
                    return;
                }
                opened.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_fence_always_admits_at_epoch_zero() {
        let f = Fence::open();
        assert_eq!(f.admits(), Some(0));
        assert!(!f.lapsed_within(Duration::from_secs(3600)));
    }

    #[test]
    fn the_gate_closes_by_itself_when_not_renewed() {
        let f = Fence::leased(Duration::from_secs(3600));
        assert_eq!(f.admits(), Some(0));
        // Renewed until an instant already past: closed at once, with no
        // tick needed.
        f.renew(f.now_ns());
        assert_eq!(f.admits(), None);
        assert_eq!(f.lapse(), 1);
        assert!(f.lapsed_within(Duration::from_secs(1)));
        f.renew(f.now_ns() + 60_000_000_000);
        assert_eq!(f.admits(), Some(1), "open again, at the new epoch");
    }

    #[actix_rt::test]
    async fn waiters_wake_when_the_gate_opens_and_time_out_otherwise() {
        let f = Fence::leased(Duration::ZERO);
        assert_eq!(f.admits(), None);
        assert!(!f.wait_open(Duration::from_millis(20)).await);
        let opener = Arc::clone(&f);
        let waiter = actix_rt::spawn(async move { f.wait_open(Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        opener.renew(opener.now_ns() + 60_000_000_000);
        assert!(waiter.await.unwrap());
    }
}
