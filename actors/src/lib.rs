//! The actors of an llmtrace cluster node and the state they own.
//!
//! # Layout
//!
//! - [`bucket`]: exact token-bucket math, a pure function of (state, now, quota).
//! - [`clock`]: the injected clock (system, or manual for tests).
//! - [`key`]: bucket keys `(tenant, limit)` and their stable shard placement.
//! - [`snapshot`]: the versioned bincode format of a bucket snapshot.
//! - [`cache`]: the [`CacheLayer`] trait, in-memory and Redis implementations.
//! - [`shard`]: the shard actor, sole owner of its buckets.
//! - [`limiter`]: the front that validates checks and routes them to shards.
//! - [`metrics`]: Prometheus counters and histograms of the node.

pub mod bucket;
pub mod cache;
pub mod clock;
pub mod key;
pub mod limiter;
pub mod metrics;
pub mod shard;
pub mod snapshot;

pub use bucket::{retry_after_secs, BucketQuota, BucketState, Decision, NANOS};
pub use cache::{CacheError, CacheLayer, InMemoryCacheLayer, RedisCacheLayer, SnapshotWrite};
pub use clock::{Clock, ManualClock, SystemClock};
pub use key::BucketKey;
pub use limiter::{CheckError, Limiter, Verdict};
pub use metrics::Metrics;
pub use shard::ShardTiming;
