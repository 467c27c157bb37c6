//! The multi-descriptor check, all or nothing, shared by `POST /v1/check`
//! with `descriptors` and the RLS service: every descriptor goes to its
//! bucket's owner in parallel (batched with other forwards, as any check);
//! when one refuses (or cannot be decided), what the others did is undone
//! before the answer (a take refunded, a lease released, a refund charged
//! back), so nothing stays charged. An undo is a forwarded operation with
//! its own check id, so a retried forward is applied once (the owner's
//! dedup), and a refund never lifts a bucket above full.
//!
//! A descriptor of a limit in shadow mode (`shadow = true`) is decided as
//! any other, but its refusal refuses nothing: the check stands on the
//! others, and [`Outcome::shadow_refused`] names it for the caller to report.
//!
//! Also the one place the `RateLimit-Policy` / `RateLimit` items of a
//! decided descriptor are written.

use futures_util::future::join_all;
use llmtrace_actors::{BucketQuota, CheckError, Decision, Op, Routed, Router, Verdict};
use llmtrace_cluster_config::Limit;

/// One descriptor of a check: `op` on the bucket of (`limit`, `key`) with
/// `amount` (units, or the lease id of an acquire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub limit: Limit,
    pub key: String,
    pub op: Op,
    pub amount: u64,
}

impl Descriptor {
    /// Takes `cost` units.
    pub fn take(limit: Limit, key: String, cost: u64) -> Self {
        Descriptor {
            limit,
            key,
            op: Op::Take,
            amount: cost,
        }
    }

    /// Takes a new lease (a concurrency limit).
    pub fn lease(limit: Limit, key: String) -> Self {
        Descriptor {
            limit,
            key,
            op: Op::Acquire,
            amount: new_lease_id(),
        }
    }

    /// The lease this descriptor takes, if it takes one.
    pub fn lease_id(&self) -> Option<u64> {
        (self.op == Op::Acquire).then_some(self.amount)
    }

    /// What gives back what an admitted descriptor did; `None` when it
    /// changed nothing.
    fn undo(&self) -> Option<(Op, u64)> {
        let op = match self.op {
            Op::Take => Op::Refund,
            Op::Acquire => Op::Release,
            Op::Refund => Op::Charge,
            Op::Charge => Op::Refund,
            Op::Release | Op::Peek => return None,
        };
        Some((op, self.amount))
    }
}

/// A new lease id: random, never 0 (ids of one key must not collide across
/// the nodes that take them).
fn new_lease_id() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 | 1
}

/// The answers of a multi-descriptor check, by descriptor.
pub struct Outcome {
    pub results: Vec<Result<Routed, CheckError>>,
    /// When the check was refused or failed: the undo's decision of each
    /// admitted descriptor (the bucket's state after it); empty otherwise.
    pub undone: Vec<Option<Decision>>,
    /// By descriptor: its limit is in shadow mode.
    pub shadow: Vec<bool>,
}

impl Outcome {
    /// The undo's decision of descriptor `i`, if it was undone.
    pub fn undone(&self, i: usize) -> Option<Decision> {
        self.undone.get(i).copied().flatten()
    }

    /// The first descriptor that could not be decided.
    pub fn failed(&self) -> Option<usize> {
        self.results.iter().position(Result::is_err)
    }

    /// Descriptor `i` was refused (shadow or not).
    pub fn refused_at(&self, i: usize) -> bool {
        matches!(&self.results[i], Ok(routed) if !routed.verdict.is_allowed())
    }

    /// Descriptor `i` is of a limit in shadow mode.
    pub fn is_shadow(&self, i: usize) -> bool {
        self.shadow.get(i).copied().unwrap_or(false)
    }

    /// Some descriptor not in shadow mode was refused.
    pub fn refused(&self) -> bool {
        (0..self.results.len()).any(|i| self.refused_at(i) && !self.is_shadow(i))
    }

    /// The descriptors in shadow mode that would have refused.
    pub fn shadow_refused(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.results.len()).filter(|i| self.refused_at(*i) && self.is_shadow(*i))
    }

    /// Every descriptor was decided and admitted: what they did stays.
    pub fn admitted(&self) -> bool {
        self.failed().is_none() && !self.refused()
    }
}

/// The all-or-nothing check: decides every descriptor, and undoes the
/// admitted ones when any refused or failed.
pub async fn check_all(router: &Router, descriptors: &[Descriptor]) -> Outcome {
    let mut outcome = decide_all(router, descriptors).await;
    if !outcome.admitted() {
        outcome.undo(router, descriptors).await;
    }
    outcome
}

/// Decides every descriptor in parallel; nothing is undone yet (the RLS
/// service weighs shadow-mode refusals before it calls [`Outcome::undo`]).
pub async fn decide_all(router: &Router, descriptors: &[Descriptor]) -> Outcome {
    let results = match descriptors {
        // The common case: no join, no second allocation.
        [d] => vec![router.check_op(&d.key, d.limit, d.op, d.amount).await],
        many => {
            join_all(
                many.iter()
                    .map(|d| router.check_op(&d.key, d.limit, d.op, d.amount)),
            )
            .await
        }
    };
    let limits = router.local().limits();
    Outcome {
        undone: Vec::new(),
        results,
        shadow: descriptors
            .iter()
            .map(|d| limits.is_shadow(d.limit))
            .collect(),
    }
}

impl Outcome {
    /// Undoes what the admitted descriptors did (the check is refused).
    pub async fn undo(&mut self, router: &Router, descriptors: &[Descriptor]) {
        self.undone = undo(router, descriptors, &self.results).await;
    }
}

/// Undoes what the admitted descriptors did; answers the undos' decisions
/// by descriptor index.
async fn undo(
    router: &Router,
    descriptors: &[Descriptor],
    results: &[Result<Routed, CheckError>],
) -> Vec<Option<Decision>> {
    let undos = descriptors.iter().zip(results).map(|(d, r)| async move {
        let Ok(Routed {
            verdict: Verdict::Limited { decision, .. },
            ..
        }) = r
        else {
            return None;
        };
        if !decision.is_allowed() {
            return None;
        }
        let (op, amount) = d.undo()?;
        match router.perform(d.key.clone(), d.limit, op, amount).await {
            Ok(Routed {
                verdict: Verdict::Limited { decision, .. },
                ..
            }) => Some(decision),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(limit = %d.limit, key = %d.key, error = %e,
                    "could not undo a descriptor of a refused check");
                None
            }
        }
    });
    join_all(undos).await
}

/// Names the limits in shadow mode that would have refused a check.
pub const SHADOW_HEADER: &str = "x-llmtrace-shadow-refused";

/// The [`SHADOW_HEADER`] value: the limits' names, comma-separated (and
/// deduplicated); `None` when none.
pub fn shadow_header(limits: &[&str]) -> Option<String> {
    let mut names: Vec<&str> = Vec::with_capacity(limits.len());
    for l in limits {
        if !names.contains(l) {
            names.push(l);
        }
    }
    (!names.is_empty()).then(|| names.join(", "))
}

/// The remaining units and the time to full of a decision.
pub fn remaining_and_reset(decision: Decision) -> (u64, u64) {
    match decision {
        Decision::Allowed {
            remaining,
            reset_after_ns,
        }
        | Decision::Refused {
            remaining,
            reset_after_ns,
            ..
        } => (remaining, reset_after_ns),
    }
}

/// The `RateLimit-Policy` and `RateLimit` headers of a check, one item per
/// decided descriptor: `"name";q=1000;w=86400` and `"name";r=12;t=30`.
#[derive(Debug, Default)]
pub struct HeaderItems {
    pub policy: String,
    pub state: String,
}

impl HeaderItems {
    /// Adds the items of one decided descriptor named `name`.
    pub fn push(&mut self, name: &str, quota: BucketQuota, remaining: u64, reset_ns: u64) {
        use std::fmt::Write as _;
        let sep = if self.policy.is_empty() { "" } else { ", " };
        let _ = write!(
            self.policy,
            "{sep}\"{name}\";q={};w={}",
            quota.capacity_units(),
            quota.window_secs()
        );
        let _ = write!(
            self.state,
            "{sep}\"{name}\";r={remaining};t={}",
            reset_ns.div_ceil(1_000_000_000)
        );
    }

    pub fn is_empty(&self) -> bool {
        self.policy.is_empty()
    }
}
