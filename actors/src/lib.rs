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
//! - [`limiter`]: validates checks and sends them to this node's shards.
//! - [`placement`]: shards on dedicated threads or on the HTTP workers.
//! - [`membership`]: chitchat gossip and the cluster view (ring of ready members).
//! - [`router`]: local-or-forward decision, retries, unreachable-owner policy.
//! - [`peer`]: the per-peer batching forwarder and the awc client.
//! - [`rpc`]: the bincode node-to-node wire format, hostile-input safe.
//! - [`overrides`]: runtime limit overrides: gossip propagation, Redis persistence.
//! - [`dedup`]: makes forward retries safe (no double counting).
//! - [`handoff`]: a new owner pulls a moved bucket from its previous owner.
//! - [`admin_rpc`]: a tenant's bucket reported or refilled by its owner, from any node.
//! - [`metrics`], [`cluster_metrics`]: Prometheus counters and histograms.

pub mod admin_rpc;
pub mod bucket;
pub mod cache;
pub mod clock;
pub mod cluster_metrics;
pub mod dedup;
pub mod handoff;
pub mod key;
pub mod limiter;
pub mod membership;
pub mod metrics;
pub mod overrides;
pub mod peer;
pub mod placement;
pub mod router;
pub mod rpc;
pub mod shard;
pub mod snapshot;

pub use bucket::{retry_after_secs, BucketQuota, BucketState, Decision, Op, NANOS};
pub use cache::{CacheError, CacheLayer, InMemoryCacheLayer, RedisCacheLayer, SnapshotWrite};
pub use clock::{Clock, ManualClock, SystemClock};
pub use cluster_metrics::ClusterMetrics;
pub use handoff::PeerHandoff;
pub use key::BucketKey;
pub use limiter::{CheckError, Limiter, Verdict};
pub use membership::{
    ClusterControl, ClusterView, Member, MemberState, Membership, MembershipSettings, ViewHandle,
};
pub use metrics::Metrics;
pub use peer::{AwcPeerClient, BatchSettings, PeerClient};
pub use placement::{ShardHost, ShardSlots};
pub use router::{ClientFactory, Route, Routed, Router, RouterSettings};
pub use shard::HandoffSource;
pub use shard::ShardTiming;
