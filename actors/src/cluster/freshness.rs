//! Keeps this node's [`Fence`] open while its view of the cluster is fresh.
//!
//! A thread of its own (not a task: a busy runtime must not delay it) ticks
//! a few times per fence. Each tick it notes which peers' gossip heartbeats
//! moved since the last tick (heard from) and opens the gate until `fence`
//! after the instant by which a majority of the ring (this node counted) had
//! been heard. A node that hears from no majority lets the gate close by
//! itself; so does one that was frozen, since the gate's deadline passes on
//! the monotonic clock while the process is stopped.
//!
//! When a tick finds the gate closed, it records a lapse (every bucket held
//! from before is suspect) and the node *catches up*: the gate stays closed
//! until a majority of the ring it had before the lapse (or of its current
//! one, whichever is larger) was heard *after* the lapse, or, failing that,
//! [`CATCH_UP_ROUNDS`] fences have passed (the others are gone, not
//! silent: the failure detector has dropped them by then). A node alone in
//! its ring is never fenced (nobody else can serve its keys), and its
//! decisions then read no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat::Chitchat;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::cluster::view::ViewHandle;
use crate::core::fence::Fence;
use crate::metrics::ClusterMetrics;

/// Ticks per fence.
const TICKS_PER_FENCE: u32 = 10;
/// A catch-up that hears no majority ends after this many fences.
pub const CATCH_UP_ROUNDS: u32 = 4;

/// Until when the gate may stay open: `fence` after the instant by which a
/// majority of `ring` (this node included) had been heard. `heard` maps each
/// peer to when it was last heard (ns); this node is `self_id`.
pub fn open_until(
    ring: &BTreeSet<String>,
    self_id: &str,
    heard: &HashMap<String, u64>,
    fence_ns: u64,
    now: u64,
) -> u64 {
    let size = ring.len().max(1) + usize::from(!ring.contains(self_id));
    // Members needed besides this node for a strict majority.
    let needed = size / 2;
    if needed == 0 {
        return now.saturating_add(fence_ns);
    }
    let mut times: Vec<u64> = ring
        .iter()
        .filter(|m| *m != self_id)
        .map(|m| heard.get(m).copied().unwrap_or(0))
        .collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    match times.get(needed - 1) {
        Some(&t) if t > 0 => t.saturating_add(fence_ns),
        _ => 0,
    }
}

/// The ticker's state between ticks.
struct Ticker {
    self_id: String,
    fence: Arc<Fence>,
    fence_ns: u64,
    /// Each peer's last heartbeat seen (by generation), and when it moved.
    beats: HashMap<String, ((u64, u64), u64)>,
    /// A catch-up under way: when it started, and the ring before it.
    catching_up: Option<(u64, BTreeSet<String>)>,
    /// The ring of the last tick (a node that was paused may find its
    /// view already shrunk to itself by its failure detector when it looks
    /// again: the ring it had before counts).
    last_ring: BTreeSet<String>,
}

impl Ticker {
    fn tick(
        &mut self,
        live: BTreeMap<String, (u64, u64)>,
        ring: BTreeSet<String>,
        metrics: &ClusterMetrics,
    ) {
        let fence = &self.fence;
        let now = fence.now_ns();
        for (id, beat) in live {
            match self.beats.get_mut(&id) {
                Some((seen, _)) if *seen == beat => {}
                // Moved, or first seen (gossip that reached this node since
                // the last tick): heard.
                Some(entry) => *entry = (beat, now),
                None => {
                    self.beats.insert(id, (beat, now));
                }
            }
        }
        let alone = ring.iter().all(|m| *m == self.self_id);
        let last_ring = std::mem::replace(&mut self.last_ring, ring.clone());
        // A gate that was open for good (the node was alone) never lapses;
        // any other found closed did, alone now or not.
        if self.catching_up.is_none() && now >= fence.fresh_until() {
            let epoch = fence.lapse();
            metrics.fence_lapses.inc();
            let stale_ms = now.saturating_sub(fence.fresh_until()) / 1_000_000;
            warn!(
                epoch,
                stale_ms, "view of the cluster went stale (paused or cut off): catching up before deciding again"
            );
            let before = last_ring.union(&ring).cloned().collect();
            self.catching_up = Some((now, before));
            return;
        }
        let heard: HashMap<String, u64> = self
            .beats
            .iter()
            .map(|(id, (_, at))| (id.clone(), *at))
            .collect();
        if let Some((since, before)) = &self.catching_up {
            // Only what was heard after the lapse counts.
            let after: HashMap<String, u64> = heard
                .iter()
                .filter(|(_, at)| **at > *since)
                .map(|(id, at)| (id.clone(), *at))
                .collect();
            let wider = if before.len() > ring.len() {
                before
            } else {
                &ring
            };
            let caught_up = open_until(wider, &self.self_id, &after, self.fence_ns, now) > now;
            let gave_up = now.saturating_sub(*since)
                >= self.fence_ns.saturating_mul(u64::from(CATCH_UP_ROUNDS));
            if !caught_up && !gave_up {
                return;
            }
            info!(
                caught_up,
                waited_ms = now.saturating_sub(*since) / 1_000_000,
                "view of the cluster fresh again"
            );
            self.catching_up = None;
        }
        if alone {
            fence.open_for_good();
        } else {
            fence.renew(open_until(&ring, &self.self_id, &heard, self.fence_ns, now));
        }
    }
}

/// Starts the ticker thread; it stops when `stop` is set.
pub fn spawn(
    chitchat: Arc<Mutex<Chitchat>>,
    view: ViewHandle,
    fence: Arc<Fence>,
    fence_len: Duration,
    metrics: Arc<ClusterMetrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let self_id = view.load().self_id.to_string();
    let every = fence_len / TICKS_PER_FENCE;
    let mut ticker = Ticker {
        self_id,
        fence,
        fence_ns: fence_len.as_nanos() as u64,
        beats: HashMap::new(),
        catching_up: None,
        last_ring: BTreeSet::new(),
    };
    std::thread::Builder::new()
        .name("fence".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let live: BTreeMap<String, (u64, u64)> = {
                    let c = chitchat.blocking_lock();
                    let me = c.self_chitchat_id().node_id.clone();
                    c.node_states()
                        .iter()
                        .filter(|(id, _)| id.node_id != me)
                        .map(|(id, s)| {
                            (
                                id.node_id.to_string(),
                                (id.generation_id, u64::from(s.heartbeat())),
                            )
                        })
                        .collect()
                };
                let ring: BTreeSet<String> = view.load().ring.members().iter().cloned().collect();
                ticker.tick(live, ring, &metrics);
                std::thread::sleep(every);
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ring(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn heard(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_majority_of_the_ring_keeps_the_gate_open() {
        let r3 = ring(&["a", "b", "c"]);
        // One peer of two heard makes a majority of three.
        assert_eq!(
            open_until(&r3, "a", &heard(&[("b", 100 * MS)]), 500 * MS, 120 * MS),
            600 * MS
        );
        // The most recent of the peers needed counts.
        assert_eq!(
            open_until(
                &r3,
                "a",
                &heard(&[("b", 100 * MS), ("c", 300 * MS)]),
                500 * MS,
                0
            ),
            800 * MS
        );
        // None heard: closed.
        assert_eq!(open_until(&r3, "a", &heard(&[]), 500 * MS, 120 * MS), 0);
        // Four members need two peers; the older of the best two bounds it.
        let r4 = ring(&["a", "b", "c", "d"]);
        assert_eq!(
            open_until(
                &r4,
                "a",
                &heard(&[("b", 100 * MS), ("c", 300 * MS), ("d", 200 * MS)]),
                500 * MS,
                0
            ),
            700 * MS
        );
        // Two members: the one peer is needed.
        assert_eq!(
            open_until(&ring(&["a", "b"]), "a", &heard(&[]), 500 * MS, 0),
            0
        );
        // Alone (or a ring without this node that holds one member) opens.
        assert_eq!(
            open_until(&ring(&["a"]), "a", &heard(&[]), 500 * MS, 7),
            500 * MS + 7
        );
    }

    fn ticker(fence: Arc<Fence>) -> Ticker {
        Ticker {
            self_id: "a".into(),
            fence,
            fence_ns: 500 * MS,
            beats: HashMap::new(),
            catching_up: None,
            last_ring: BTreeSet::new(),
        }
    }

    fn beats(b: u64, c: u64) -> BTreeMap<String, (u64, u64)> {
        [("b".to_string(), (1, b)), ("c".to_string(), (1, c))]
            .into_iter()
            .collect()
    }

    #[test]
    fn a_closed_gate_lapses_once_and_opens_after_hearing_a_majority_again() {
        let metrics = ClusterMetrics::default();
        let fence = Fence::leased(Duration::ZERO);
        let mut t = ticker(Arc::clone(&fence));
        let r = ring(&["a", "b", "c"]);
        // Found closed: a lapse, and no renewal in the same tick.
        t.tick(beats(1, 1), r.clone(), &metrics);
        assert_eq!(fence.admits(), None);
        assert_eq!(metrics.fence_lapses.get(), 1);
        // Beats that did not move since the lapse do not open it.
        t.tick(beats(1, 1), r.clone(), &metrics);
        assert_eq!(fence.admits(), None);
        assert_eq!(metrics.fence_lapses.get(), 1, "one lapse per catch-up");
        // One peer heard after the lapse: a majority of three.
        t.tick(beats(2, 1), r.clone(), &metrics);
        assert_eq!(fence.admits(), Some(1), "open at the new epoch");
    }

    #[test]
    fn a_catch_up_counts_the_ring_from_before_the_lapse() {
        let metrics = ClusterMetrics::default();
        let fence = Fence::leased(Duration::ZERO);
        let mut t = ticker(Arc::clone(&fence));
        let big = ring(&["a", "b", "c", "d", "e"]);
        t.tick(beats(1, 1), big, &metrics);
        assert_eq!(fence.admits(), None);
        // The view shrank to three meanwhile, and one peer was heard: a
        // majority of three, not of the five of before.
        t.tick(beats(2, 1), ring(&["a", "b", "c"]), &metrics);
        assert_eq!(fence.admits(), None, "needs 3 of the 5 of before");
        t.tick(beats(2, 2), ring(&["a", "b", "c"]), &metrics);
        assert!(fence.admits().is_some());
    }

    #[test]
    fn a_node_alone_is_never_fenced() {
        let metrics = ClusterMetrics::default();
        let fence = Fence::leased(Duration::from_secs(3600));
        let mut t = ticker(Arc::clone(&fence));
        t.tick(BTreeMap::new(), ring(&["a"]), &metrics);
        assert!(fence.admits().is_some());
        assert_eq!(fence.fresh_until(), u64::MAX, "no deadline to read");
        assert_eq!(metrics.fence_lapses.get(), 0);
    }

    #[test]
    fn a_node_whose_view_shrank_to_itself_while_paused_still_lapses() {
        let metrics = ClusterMetrics::default();
        let fence = Fence::leased(Duration::from_secs(3600));
        let mut t = ticker(Arc::clone(&fence));
        let r = ring(&["a", "b", "c"]);
        // Before the pause: b and c heard, the gate open until a deadline.
        t.tick(beats(1, 1), r.clone(), &metrics);
        t.tick(beats(2, 2), r.clone(), &metrics);
        assert!(fence.admits().is_some());
        assert!(fence.fresh_until() < u64::MAX);
        // Paused past the deadline; its failure detector dropped b and c
        // before the first tick after the pause.
        fence.renew(fence.now_ns());
        t.tick(beats(2, 2), ring(&["a"]), &metrics);
        assert_eq!(metrics.fence_lapses.get(), 1, "a lapse, although alone now");
        assert_eq!(fence.admits(), None);
        // Caught up once b (of the three from before) is heard again.
        t.tick(beats(3, 2), ring(&["a"]), &metrics);
        assert_eq!(fence.admits(), Some(1));
    }
}
