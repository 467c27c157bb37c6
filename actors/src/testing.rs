//! Fixtures for tests of this crate and of the crates built on it (the
//! `testing` feature): one way to build a single-node router.

use std::sync::Arc;
use std::time::Duration;

use llmtrace_cluster_config::RateLimitConfig;

use crate::cluster::forwarder::{BatchSettings, PeerClient};
use crate::cluster::router::{Router, RouterSettings};
use crate::cluster::view::{ClusterView, Member, ViewHandle};
use crate::core::clock::SystemClock;
use crate::local::limiter::Limiter;
use crate::shard::ShardTiming;
use crate::InMemoryCacheLayer;

/// A router over in-memory shards with the system clock, for a node whose
/// view is given (alone by default: every check is decided locally). It
/// never forwards: a check for a key another member owns panics.
pub struct RouterFixture {
    limits: RateLimitConfig,
    shards: usize,
    view: ClusterView,
}

impl RouterFixture {
    /// One shard, a node named `test-node` alone (no ring).
    pub fn new(limits: RateLimitConfig) -> Self {
        RouterFixture {
            limits,
            shards: 1,
            view: ClusterView::alone("test-node", 16),
        }
    }

    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    pub fn view(mut self, view: ClusterView) -> Self {
        self.view = view;
        self
    }

    /// Starts the shards (inside an actix system) and the router.
    pub fn start(self) -> Router {
        let clock = Arc::new(SystemClock);
        let limiter = Limiter::start(
            self.shards,
            Arc::new(self.limits),
            Arc::new(InMemoryCacheLayer::new(clock.clone())),
            clock,
            ShardTiming::default(),
        );
        Router::new(
            limiter,
            ViewHandle::new(self.view),
            RouterSettings {
                batch: BatchSettings {
                    max_items: 16,
                    max_wait: Duration::ZERO,
                },
                forward_timeout: Duration::from_millis(100),
                on_owner_unreachable: Default::default(),
            },
            Arc::default(),
            Arc::new(|_: &Member| -> Box<dyn PeerClient> {
                unreachable!("a router fixture never forwards")
            }),
        )
    }
}
