//! In-process snapshots: a map behind a mutex, with TTLs. The single-node
//! default. It is touched only by restores of unknown keys and by the
//! write-behind flush, never on the hot path of a resident bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::{self, BoxFuture, FutureExt};

use super::{CacheError, CacheLayer, SnapshotWrite};
use crate::core::clock::Clock;
use crate::core::held::Held;
use crate::core::key::BucketKey;

/// How often expired entries are purged on a write (nanoseconds).
const PURGE_EVERY_NS: u64 = 1_000_000_000;

#[derive(Default)]
struct Inner {
    entries: HashMap<BucketKey, (Held, u64)>,
    last_purge_ns: u64,
}

/// Snapshots kept in this process.
pub struct InMemoryCacheLayer {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
}

impl InMemoryCacheLayer {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        InMemoryCacheLayer {
            inner: Mutex::new(Inner::default()),
            clock,
        }
    }

    /// Number of unexpired snapshots.
    pub fn len(&self) -> usize {
        let now = self.clock.now_ns();
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.entries.values().filter(|(_, exp)| *exp > now).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CacheLayer for InMemoryCacheLayer {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn restore(&self, key: BucketKey) -> BoxFuture<'static, Result<Option<Held>, CacheError>> {
        let now = self.clock.now_ns();
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let found = inner
            .entries
            .get(&key)
            .filter(|(_, exp)| *exp > now)
            .map(|(s, _)| s.clone());
        future::ready(Ok(found)).boxed()
    }

    fn store(&self, writes: Arc<Vec<SnapshotWrite>>) -> BoxFuture<'static, Result<(), CacheError>> {
        let now = self.clock.now_ns();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(inner.last_purge_ns) >= PURGE_EVERY_NS {
            inner.entries.retain(|_, (_, exp)| *exp > now);
            inner.last_purge_ns = now;
        }
        for w in writes.iter() {
            let expires = now.saturating_add(w.ttl_ms.saturating_mul(1_000_000));
            inner
                .entries
                .insert(w.key.clone(), (w.state.clone(), expires));
        }
        future::ready(Ok(())).boxed()
    }
}
