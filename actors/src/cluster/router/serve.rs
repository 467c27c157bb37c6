//! Serving a batch received from another node (`POST /cluster/v1/checks`):
//! retries are answered from the [`Dedup`](crate::cluster::dedup::Dedup)
//! cache, the rest are started in order of the batch (a check that finds its
//! shard busy and waits for it may be decided after a later one), and the
//! answers come back in the batch's order.
//!
//! What a batch may cost is bounded whoever sends it: at most
//! [`SERVE_PER_BATCH`] checks of one batch are under way at once (the rest
//! wait their turn as plain data, not as started work), and node-wide at most
//! [`SERVE_IN_FLIGHT`] checks of each hop class: the checks forwarded 0, 1,
//! 2 ([`MAX_FORWARDS`]) and more times. A check waits for a place
//! (backpressure, nothing is dropped). A check served here only ever waits
//! on checks of a higher class on other nodes (each forward counts one hop
//! more, and one forwarded more than `MAX_FORWARDS` times is never sent on),
//! so the classes' places can never all wait on each other.

use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tokio::sync::Semaphore;

use super::{wire_error, Route, Router};
use crate::cluster::dedup::Claim;
use crate::cluster::rpc::wire::{
    policy_byte, validate_check, BatchRequest, BatchResponse, WireAnswer, WireCheck, WireResult,
    MAX_FORWARDS,
};

/// Checks of one hop class being decided at once, node-wide.
pub const SERVE_IN_FLIGHT: usize = 1024;
/// Checks of one batch being decided at once.
pub const SERVE_PER_BATCH: usize = 256;
/// Hop classes: forwarded 0 ..= `MAX_FORWARDS` times, and more.
const CLASSES: usize = MAX_FORWARDS as usize + 2;

/// The node-wide places of each hop class.
pub(super) struct Serving {
    classes: [Semaphore; CLASSES],
}

impl Serving {
    pub(super) fn new() -> Self {
        Serving {
            classes: std::array::from_fn(|_| Semaphore::new(SERVE_IN_FLIGHT)),
        }
    }

    fn class(&self, check: &WireCheck) -> &Semaphore {
        &self.classes[usize::from(check.hops).min(CLASSES - 1)]
    }
}

impl Router {
    /// Answers a batch received from another node, in order. Retries are
    /// answered from the dedup cache when already decided.
    pub async fn serve_batch(&self, req: BatchRequest) -> BatchResponse {
        self.metrics.rpc_batches.inc();
        self.metrics.rpc_checks.inc_by(req.checks.len() as u64);
        let origin: Arc<str> = req.origin.as_str().into();
        let claims = self.dedup.claim(&origin, &req.checks);
        let answers: Vec<(u64, WireAnswer, bool)> =
            stream::iter(req.checks.into_iter().zip(claims))
                .map(|(c, claim)| self.serve_one(c, claim))
                .buffered(SERVE_PER_BATCH)
                .collect()
                .await;
        self.dedup.complete(
            &origin,
            answers
                .iter()
                .filter(|(_, _, new)| *new)
                .map(|(id, r, _)| (*id, *r)),
        );
        self.dedup.forget_later();
        BatchResponse {
            node: self.view.load().self_id.to_string(),
            results: answers.into_iter().map(|(_, r, _)| r).collect(),
        }
    }

    /// One check of a received batch: its id, its answer, and whether it was
    /// decided now (rather than answered from the dedup cache).
    async fn serve_one(&self, c: WireCheck, claim: Claim) -> (u64, WireAnswer, bool) {
        if let Claim::Answered(r) = claim {
            self.metrics.dedup_hits.inc();
            return (c.id, r, false);
        }
        let result = match validate_check(&c, self.local.limits()) {
            Err(code) => WireAnswer::plain(WireResult::Invalid(code)),
            Ok((limit, op)) => {
                let _place = self
                    .serving
                    .class(&c)
                    .acquire()
                    .await
                    .expect("the semaphores are never closed");
                match self.route(c.tenant, limit, op, c.cost, c.hops).await {
                    Ok(routed) => WireAnswer {
                        result: WireResult::from(routed.verdict),
                        degraded: match routed.route {
                            Route::Degraded(p) => Some(policy_byte(p)),
                            _ => None,
                        },
                    },
                    Err(e) => WireAnswer::plain(wire_error(&e)),
                }
            }
        };
        (c.id, result, true)
    }
}
