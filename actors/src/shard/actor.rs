//! The shard's actor in front of its state, and the decision of a check:
//! in place on the caller's thread ([`ShardState::decide_now`]) or by the
//! actor ([`ShardState::check`]), which also restores a key not in memory.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{
    snapshots, BucketReport, Check, FlushNow, Grant, GrantTokens, Inspect, Install, Moved, Reset,
    ReturnTokens, Serve, ShardState, SweepNow, TakeAll, TakeBucket, Unserved, Waiter,
};
use crate::cache::CacheError;
use crate::core::bucket::Decision;
use crate::core::held::Held;
use crate::core::key::BucketKey;

/// Messages queued before senders wait (backpressure, not loss).
const MAILBOX_CAPACITY: usize = 1 << 16;

/// The actor in front of a shard's state: it runs the shard's timers,
/// restores and writes, and decides every check the caller could not
/// decide itself (see [`ShardState::decide_now`]).
pub struct ShardActor {
    state: Arc<Mutex<ShardState>>,
}

impl ShardActor {
    pub fn new(state: Arc<Mutex<ShardState>>) -> Self {
        ShardActor { state }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ShardState> {
        lock(&self.state)
    }
}

/// The shard's state, whatever a panic left it in (a panic in a shard is a
/// bug; its buckets are kept and served on, by the actor and in place
/// alike, rather than lost).
pub fn lock(state: &Mutex<ShardState>) -> MutexGuard<'_, ShardState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`lock`] without waiting: `None` while another thread holds it.
pub fn try_lock(state: &Mutex<ShardState>) -> Option<MutexGuard<'_, ShardState>> {
    match state.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        let mut state = self.lock();
        state.stopped = true;
        // The state outlives the actor (the shard table holds it): checks
        // waiting on a restore or a write the actor will not finish are
        // answered now (refused, not persisted), not left waiting.
        state.pending.clear();
        snapshots::answer_durable(std::mem::take(&mut state.durable_waiting), false);
        if let Some(tx) = state.on_stop.take() {
            let now = state.clock.now_ns();
            let _ = tx.send(state.take_dirty(now));
        }
    }

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let timing = self.lock().timing;
        ctx.run_interval(timing.snapshot_interval, |act, ctx| act.lock().flush(ctx));
        ctx.run_interval(timing.sweep_interval, |act, _| {
            act.lock().sweep();
        });
    }
}

/// Each message is handled by the [`ShardState`] method of the same name,
/// under the shard's lock.
macro_rules! handled_by_state {
    ($($msg:ty => $method:ident -> $result:ty;)*) => {$(
        impl Handler<$msg> for ShardActor {
            type Result = $result;

            fn handle(&mut self, msg: $msg, ctx: &mut Self::Context) -> $result {
                self.lock().$method(msg, ctx)
            }
        }
    )*};
}

handled_by_state! {
    Check => check -> Response<Result<Decision, Unserved>>;
    SweepNow => sweep_now -> usize;
    Inspect => inspect -> ResponseActFuture<ShardActor, Result<BucketReport, CacheError>>;
    Reset => reset -> ResponseActFuture<ShardActor, Result<(), CacheError>>;
    Install => install_pushed -> ();
    TakeAll => take_all -> Vec<(BucketKey, Held)>;
    TakeBucket => take_bucket -> Option<Held>;
    FlushNow => flush_now -> ResponseActFuture<ShardActor, Result<usize, CacheError>>;
    GrantTokens => grant_tokens -> ResponseFuture<Option<Grant>>;
    ReturnTokens => return_tokens -> u64;
}

impl ShardState {
    /// Decides `msg` on the caller's thread, without a message to the
    /// actor, when nothing but the bucket is needed: the shard runs, its
    /// fence admits, the bucket is resident and no write has to be waited
    /// for. `None`: send the check to the actor.
    pub fn decide_now(&mut self, msg: &Check) -> Option<Decision> {
        // May set every bucket aside (a lapse since the last decision).
        if self.stopped || self.timing.write_through || !self.may_decide() {
            return None;
        }
        let now = self.clock.now_ns();
        if !self.buckets.contains_key(&msg.key) {
            if !self.starts_full(&msg.key, msg.serve) {
                return None;
            }
            // What a restore that found nothing does, without the restore.
            self.stats().restore_misses.fetch_add(1, Relaxed);
            self.insert_resident(msg.key.clone(), Held::full(msg.quota, now), now);
        }
        Some(self.decide(&msg.key, msg.quota, msg.op, msg.cost, now))
    }

    /// A key not in memory would start full, for sure and at once: no
    /// snapshot can exist (nothing is written to the cache layer), no other
    /// node may hold it, and this shard has nothing of it (no restore under
    /// way, no copy set aside, no tombstone).
    fn starts_full(&self, key: &BucketKey, serve: Serve) -> bool {
        !self.timing.write_behind
            && self.handed_over.is_none()
            && !self.pending.contains_key(key)
            && !self.aside.contains_key(key)
            && !self.tombstones.contains_key(key)
            && self
                .handoff
                .as_ref()
                .is_none_or(|h| !h.would_pull(key, serve.reclaims()))
    }

    fn check(
        &mut self,
        msg: Check,
        ctx: &mut Context<ShardActor>,
    ) -> Response<Result<Decision, Unserved>> {
        if !self.may_decide() && msg.serve != Serve::Degraded {
            return Response::reply(Err(Unserved::Fenced(msg.key.tenant)));
        }
        if self.buckets.contains_key(&msg.key) {
            let now = self.clock.now_ns();
            if !self.timing.write_through {
                return Response::reply(
                    Ok(self.decide(&msg.key, msg.quota, msg.op, msg.cost, now)),
                );
            }
            if let Some(refusal) = self.unpersistable(&msg.key, msg.quota, msg.op, msg.cost, now) {
                return Response::reply(refusal);
            }
            let decision = self.decide(&msg.key, msg.quota, msg.op, msg.cost, now);
            if !decision.is_allowed() {
                return Response::reply(Ok(decision));
            }
            let (tx, rx) = oneshot::channel();
            self.answer(decision, msg.op, tx);
            self.flush_through(ctx);
            return Response::fut(async move { rx.await.unwrap_or(Err(Unserved::NotPersisted)) });
        }
        // Where this shard handed the key last: the first node to ask for it.
        let hint = self.tombstones.get(&msg.key).map(|(to, _)| Arc::clone(to));
        if msg.serve.reclaims() {
            self.tombstones.remove(&msg.key);
        } else if let Some(to) = self.moved_to(&msg.key) {
            return Response::reply(Err(Unserved::Moved(Moved {
                to,
                tenant: msg.key.tenant,
            })));
        }
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            quota: msg.quota,
            op: msg.op,
            cost: msg.cost,
            reply: tx,
            epoch: self.fence_epoch,
        };
        if let Some(waiters) = self.pending.get_mut(&msg.key) {
            waiters.push(waiter);
        } else {
            self.pending.insert(msg.key.clone(), vec![waiter]);
            let key = msg.key;
            let fut = self.restore(key.clone(), hint, msg.serve.reclaims());
            ctx.spawn(fut::wrap_future::<_, ShardActor>(fut).map(
                move |(res, from_peer), act, ctx| act.lock().restored(key, res, from_peer, ctx),
            ));
        }
        // The sender lives in `pending` until the restore finishes; if the
        // actor stops first it is dropped, and the check is refused.
        Response::fut(async move {
            rx.await.unwrap_or(Ok(Decision::Refused {
                remaining: 0,
                retry_after_ns: 1_000_000_000,
                reset_after_ns: 0,
            }))
        })
    }

    fn sweep_now(&mut self, _: SweepNow, _: &mut Context<ShardActor>) -> usize {
        self.sweep()
    }
}
