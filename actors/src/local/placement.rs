//! Where shard actors run. Two placements:
//!
//! - *dedicated*: each shard's actor on an arbiter (thread) of its own; a
//!   check it decides crosses from the HTTP worker to that thread and back.
//! - *on workers*: each shard's actor on one of the HTTP worker threads,
//!   started by the worker itself ([`ShardHost::host_here`]); no extra
//!   threads compete with the workers for the cores.
//!
//! Either way a check of a bucket in memory is decided on the thread that
//! asks, under the shard's lock ([`ShardSlots::decide_now`]); the actor runs
//! the shard's timers, restores and writes, and the checks that wait on
//! them. [`ShardSlots`] is the table the limiter routes through; a slot is
//! empty until its shard started.
//! Shards on workers stop with their worker; on stopping, each sends its
//! last dirty buckets to [`ShardHost::final_writes`] so a graceful stop still
//! snapshots everything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwapOption;
use llmtrace_cluster_config::RateLimitConfig;
use tokio::sync::watch;

use crate::cache::{CacheLayer, SnapshotWrite};
use crate::core::bucket::Decision;
use crate::core::clock::Clock;
use crate::metrics::Metrics;
use crate::shard::{Check, Ownership, ShardActor, ShardState, ShardTiming};

/// A started shard: its actor, and its state for checks decided on the
/// caller's thread.
struct Started {
    addr: Addr<ShardActor>,
    state: Arc<Mutex<ShardState>>,
}

/// The node's shards, by index.
pub struct ShardSlots {
    slots: Vec<ArcSwapOption<Started>>,
    started: watch::Sender<usize>,
}

impl ShardSlots {
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(ShardSlots {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            started: watch::channel(0).0,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Starts `state` on the current arbiter as shard `i`.
    fn start(&self, i: usize, state: ShardState) {
        let state = Arc::new(Mutex::new(state));
        let addr = ShardActor::new(Arc::clone(&state)).start();
        self.slots[i].store(Some(Arc::new(Started { addr, state })));
        self.started.send_modify(|n| *n += 1);
    }

    /// Runs `f` on the shard at `i` if it started.
    pub fn with<R>(&self, i: usize, f: impl FnOnce(&Addr<ShardActor>) -> R) -> Option<R> {
        self.slots[i].load().as_ref().map(|s| f(&s.addr))
    }

    /// Decides `check` on shard `i` here, on the caller's thread, when the
    /// shard allows it ([`ShardState::decide_now`]) and no other thread is
    /// deciding on it this instant; `None`: send it to the shard's actor.
    #[inline]
    pub fn decide_now(&self, i: usize, check: &Check) -> Option<Decision> {
        let slot = self.slots[i].load();
        let mut state = crate::shard::try_lock(&slot.as_ref()?.state)?;
        state.decide_now(check)
    }

    /// The shard at `i`, once started (waits for it during start-up).
    pub async fn get(&self, i: usize) -> Addr<ShardActor> {
        loop {
            if let Some(s) = self.slots[i].load().as_ref() {
                return Addr::clone(&s.addr);
            }
            let mut rx = self.started.subscribe();
            if self.slots[i].load().is_some() {
                continue;
            }
            let _ = rx.changed().await;
        }
    }

    /// Every started shard.
    pub fn all(&self) -> Vec<Addr<ShardActor>> {
        self.slots
            .iter()
            .filter_map(|s| s.load().as_ref().map(|s| Addr::clone(&s.addr)))
            .collect()
    }

    /// Waits until every slot holds a shard; false on timeout.
    pub async fn wait_all(&self, timeout: Duration) -> bool {
        let mut rx = self.started.subscribe();
        let n = self.slots.len();
        tokio::time::timeout(timeout, rx.wait_for(|started| *started >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// What a shard is built from.
#[derive(Clone)]
pub struct ShardParts {
    pub limits: Arc<RateLimitConfig>,
    pub cache: Arc<dyn CacheLayer>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub timing: ShardTiming,
    pub ownership: Ownership,
}

impl ShardParts {
    fn build(&self, id: usize, on_stop: Option<mpsc::Sender<Vec<SnapshotWrite>>>) -> ShardState {
        ShardState::new(
            id,
            Arc::clone(&self.limits),
            Arc::clone(&self.cache),
            Arc::clone(&self.clock),
            Arc::clone(&self.metrics),
            self.timing,
        )
        .on_stop(on_stop)
        .handoff(self.ownership.handoff.clone())
        .fence(Arc::clone(&self.ownership.fence))
    }
}

/// Starts every shard on an arbiter of its own.
pub fn start_dedicated(parts: &ShardParts, slots: &Arc<ShardSlots>) {
    for id in 0..slots.len() {
        let arbiter = Arbiter::new();
        let (parts, slots) = (parts.clone(), Arc::clone(slots));
        let started = std::sync::mpsc::sync_channel(1);
        let spawned = arbiter.spawn_fn(move || {
            slots.start(id, parts.build(id, None));
            let _ = started.0.send(());
        });
        // Started in order, as before: the slot is set when this returns.
        assert!(spawned, "the arbiter of shard {id} stopped");
        started.1.recv().expect("shard failed to start");
    }
}

static HOST_IDS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// Ids of the hosts this thread already took its shards from.
    static HOSTING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lets HTTP worker threads host the shards.
pub struct ShardHost {
    /// Distinguishes hosts (tests run several nodes in one process).
    id: usize,
    parts: ShardParts,
    slots: Arc<ShardSlots>,
    /// Threads that will host shards (the HTTP workers).
    hosts: usize,
    next_host: AtomicUsize,
    final_tx: Mutex<mpsc::Sender<Vec<SnapshotWrite>>>,
    final_rx: Mutex<mpsc::Receiver<Vec<SnapshotWrite>>>,
}

impl ShardHost {
    pub fn new(parts: ShardParts, slots: Arc<ShardSlots>, hosts: usize) -> Arc<Self> {
        let (tx, rx) = mpsc::channel();
        Arc::new(ShardHost {
            id: HOST_IDS.fetch_add(1, Ordering::Relaxed),
            parts,
            slots,
            hosts: hosts.max(1),
            next_host: AtomicUsize::new(0),
            final_tx: Mutex::new(tx),
            final_rx: Mutex::new(rx),
        })
    }

    /// Called once on each hosting thread (inside its arbiter): starts this
    /// thread's share of the shards (host `h` runs shards `h, h + hosts,
    /// ...`). A host that restarts after a crash takes over the shards whose
    /// actors are gone.
    /// Idempotent per thread: the app factory runs once per listener.
    pub fn host_here(&self) {
        let first = HOSTING.with(|h| {
            let mut hosts = h.borrow_mut();
            !hosts.contains(&self.id) && {
                hosts.push(self.id);
                true
            }
        });
        if !first {
            return;
        }
        let h = self.next_host.fetch_add(1, Ordering::SeqCst);
        let tx = self
            .final_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for id in 0..self.slots.len() {
            let mine = if h < self.hosts {
                id % self.hosts == h
            } else {
                self.slots.slots[id]
                    .load()
                    .as_ref()
                    .is_none_or(|s| !s.addr.connected())
            };
            if mine {
                self.slots.start(id, self.parts.build(id, Some(tx.clone())));
            }
        }
    }

    /// After the hosting threads stopped: the dirty buckets each shard handed
    /// over as it stopped. Waits for every shard, at most `timeout`.
    pub fn final_writes(&self, timeout: Duration) -> Vec<SnapshotWrite> {
        let rx = self.final_rx.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        for _ in 0..self.slots.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(writes) => all.extend(writes),
                Err(_) => break,
            }
        }
        all
    }
}
