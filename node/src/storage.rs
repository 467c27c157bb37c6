//! Where a node keeps what must outlive it: the Redis connections the
//! configuration asks for, the cache layer of bucket snapshots, and the
//! runtime overrides loaded from Redis at start-up.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use llmtrace_actors::cache::RedisClient;
use llmtrace_actors::cluster::overrides::RedisOverrideStore;
use llmtrace_actors::metrics::{self, Registry};
use llmtrace_actors::{
    CacheLayer, ClusterControl, InMemoryCacheLayer, RedisCacheLayer, SystemClock,
};
use llmtrace_cluster_config::NodeConfig;
use tracing::{info, warn};

/// The Redis connections the configuration asks for (none without
/// `redis_url`), shared by the snapshots and the runtime overrides.
pub fn redis_client(config: &NodeConfig) -> anyhow::Result<Option<RedisClient>> {
    config
        .redis
        .as_ref()
        .map(|r| RedisClient::open(r).with_context(|| "invalid value for `redis_url`".to_string()))
        .transpose()
}

/// Builds the cache layer the configuration asks for (Redis: with its
/// round-trip histograms, registered in `registry`).
pub fn cache_layer(
    config: &NodeConfig,
    redis: Option<RedisClient>,
    registry: &mut Registry,
) -> Arc<dyn CacheLayer> {
    match redis {
        None => Arc::new(InMemoryCacheLayer::new(Arc::new(SystemClock))),
        Some(client) => Arc::new(RedisCacheLayer::new(
            client,
            &config.node_id,
            metrics::cache::register_redis(registry),
        )),
    }
}

/// Runtime overrides: those stored in Redis first (a restarted cluster keeps
/// them), then whatever peers gossip. Returns where new ones persist.
pub async fn load_overrides(
    redis: Option<RedisClient>,
    control: &ClusterControl,
) -> Option<RedisOverrideStore> {
    let client = redis?;
    let timeout = client.timeout().max(Duration::from_secs(1));
    let store = RedisOverrideStore::new(client, timeout);
    match store.load().await {
        Ok(table) => {
            let n = table.values().filter(|e| e.value.is_some()).count();
            control.seed_overrides(table).await;
            info!(overrides = n, "runtime limit overrides loaded from Redis");
        }
        Err(e) => warn!(
            "could not load runtime limit overrides from Redis (peers may still gossip them): {e}"
        ),
    }
    Some(store)
}
