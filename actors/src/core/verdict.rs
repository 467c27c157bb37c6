//! The decision types every module speaks: [`Verdict`] (a check decided),
//! [`CheckError`] (a check that could not be decided) and [`ErrorCode`]
//! (the compact reason carried between nodes).

use bincode::{Decode, Encode};
use thiserror::Error;

use crate::core::bucket::{BucketQuota, Decision};

/// The answer to a check that was well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No bucket applies (limiting disabled, or rate 0).
    Unlimited,
    /// The bucket's decision, with the quota it was made under.
    Limited {
        quota: BucketQuota,
        decision: Decision,
    },
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        match self {
            Verdict::Unlimited => true,
            Verdict::Limited { decision, .. } => decision.is_allowed(),
        }
    }
}

/// A check that could not be decided.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// `cost` must be at least 1.
    #[error("cost must be at least 1")]
    ZeroCost,
    /// A cost above the burst can never be admitted.
    #[error(
        "cost {cost} exceeds the bucket capacity ({burst}: the burst or amount) and can never be \
         admitted"
    )]
    CostAboveBurst { cost: u64, burst: u64 },
    /// The bucket was just handed to this node: ask it.
    #[error("bucket of {tenant} moved to node {to}")]
    Moved { to: String, tenant: String },
    /// Write-through: the new state could not be written to Redis, so the
    /// check was not admitted.
    #[error("bucket state could not be persisted (snapshot_mode write-through); not admitted")]
    NotPersisted,
    /// This node's view of the cluster is stale (it was paused or cut off):
    /// it decides nothing from its buckets until it caught up.
    #[error(
        "this node's view of the cluster is stale; not deciding for {tenant} until it caught up"
    )]
    Fenced { tenant: String },
    /// The owner refused a forwarded check as invalid by its own quota
    /// (for a moment after a runtime limit change, nodes' quotas differ).
    #[error("the owner refused the check as invalid: {0:?}")]
    OwnerRefused(ErrorCode),
    /// The operation does not apply to the limit's kind (leases are
    /// acquired and released on concurrency limits only).
    #[error("`{0}` does not apply to this limit's kind")]
    WrongOp(&'static str),
    /// The shard is gone (node shutting down).
    #[error("limiter unavailable: {0}")]
    Unavailable(String),
}

/// Why one check got no decision: the reason an owner answers for a
/// forwarded check it could not decide (and the wire byte of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ErrorCode {
    BadTenant,
    UnknownLimit,
    ZeroCost,
    CostAboveBurst,
    ShuttingDown,
    DuplicateInFlight,
    /// Write-through owner could not persist the new state.
    NotPersisted,
    UnknownOp,
}
