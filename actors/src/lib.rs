//! The actors of an llmtrace cluster node and the state they own.
//!
//! # Layout
//!
//! A folder per concept; a module imports only from the folders above it in
//! this list (`core` imports none of them; tests may reach further).
//!
//! - [`core`]: exact token-bucket math (a pure function of state, now and
//!   quota), the injected clock, bucket keys, the snapshot format and the
//!   decision types ([`Verdict`], [`CheckError`]).
//! - [`cache`]: the [`CacheLayer`] trait, in-memory and Redis implementations.
//! - [`metrics`]: the Prometheus registry and what each part registers in
//!   it (shards and checks, cluster, Redis round trips).
//! - [`nodelay`]: awc connections with `TCP_NODELAY` (node to node, proxy).
//! - [`shard`]: a shard's buckets behind its lock (a check of a bucket in
//!   memory is decided there by the caller) and its actor (timers, restores,
//!   writes); its handoff side (give a bucket away, install one) and its
//!   admin side (inspect, reset).
//! - [`local`]: this node's shards as one ([`Limiter`]) and where they run.
//! - [`cluster`]: membership (view, gossip, control, overrides), the router
//!   (local or forward), the per-peer forwarder, dedup of retried forwards,
//!   the handoff client, the tenant RPC of the admin API, and `cluster::rpc`
//!   (the wire format and the one node-to-node client).

#![forbid(unsafe_code)]

pub mod cache;
pub mod cluster;
pub mod core;
pub mod local;
pub mod metrics;
pub mod nodelay;
pub mod shard;
#[cfg(any(test, feature = "testing"))]
pub mod sim;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::core::bucket::{retry_after_secs, BucketQuota, BucketState, Decision, Op, NANOS};
pub use crate::core::clock::{Clock, ManualClock, SystemClock};
pub use crate::core::key::BucketKey;
pub use crate::core::verdict::{CheckError, ErrorCode, Verdict};
pub use cache::{
    CacheError, CacheLayer, InMemoryCacheLayer, RedisCacheLayer, RedisClient, RedisLatency,
    SnapshotWrite,
};
pub use cluster::control::ClusterControl;
pub use cluster::forwarder::{BatchSettings, PeerClient, RemotePeer};
pub use cluster::gossip::{Membership, MembershipSettings};
pub use cluster::handoff_client::PeerHandoff;
pub use cluster::router::{ClientFactory, Route, Routed, Router, RouterSettings};
pub use cluster::rpc::client::{CallError, ClusterClient, Rpc};
pub use cluster::rpc::stream::StreamPeer;
pub use cluster::view::{ClusterView, Member, MemberState, ViewHandle};
pub use local::limiter::Limiter;
pub use local::placement::{ShardHost, ShardSlots};
pub use metrics::{ClusterMetrics, Metrics};
pub use shard::ShardTiming;
pub use shard::{HandoffSource, Ownership, Serve};
