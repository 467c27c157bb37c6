//! The most refused (limit, key) pairs of the last minute: a space-saving
//! sketch (Metwally, Agrawal, El Abbadi 2005) of [`K`] counters per shard
//! and window, and the merge of such summaries (shards, windows, nodes).
//!
//! Keys appear here and in the API built on it only, never in a metric
//! label; every structure holds at most [`K`] keys.
//!
//! **Windows.** Each shard counts into the current window of
//! [`WINDOW_NS`] (30 s, aligned to the clock); the window before is kept, so
//! a summary covers the refusals of the last 30 to 60 s.
//!
//! **Guarantees.** A [`Summary`] lists keys with `count` and `error`:
//! the true number of refusals of a listed key is in
//! `[count - error, count]`, and a key not listed was refused at most
//! `floor` times. A shard window's sketch of `N` refusals has
//! `error <= floor <= N / K` and lists every key refused more than `N / K`
//! times. [`merge`] keeps both bounds: a key absent from a part is counted
//! with that part's floor, so the merged error is at most the sum of the
//! parts' floors (`N / K` for sketches of `N` refusals in all), and the
//! merged top `K` lists every key refused more than `2N / K` times.
//!
//! **Cost.** Only a refusal touches this (an allowed check does not): the
//! shard takes its own mutex, which only it and an admin read (one per
//! dashboard poll) ever take, so the lock is uncontended; a refusal of a
//! key already counted scans at most [`K`] entries and allocates nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use llmtrace_cluster_config::Limit;

/// Keys counted per sketch, and listed per summary.
pub const K: usize = 32;
/// Length of one counting window (two are kept).
pub const WINDOW_NS: u64 = 30_000_000_000;

/// One listed key: its refusals are in `[count - error, count]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub limit: Limit,
    pub key: Box<str>,
    pub count: u64,
    pub error: u64,
}

/// The most refused keys of some refusals, most refused first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub entries: Vec<Counted>,
    /// A key not listed was refused at most this many times.
    pub floor: u64,
    /// Refusals counted in all.
    pub total: u64,
}

/// A space-saving sketch of at most `capacity` counters.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    entries: Vec<Counted>,
    total: u64,
}

impl Default for SpaceSaving {
    fn default() -> Self {
        SpaceSaving::new(K)
    }
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> Self {
        SpaceSaving {
            capacity: capacity.max(1),
            entries: Vec::new(),
            total: 0,
        }
    }

    /// Counts `weight` refusals of `key` under `limit`.
    pub fn observe(&mut self, limit: Limit, key: &str, weight: u64) {
        self.total += weight;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.limit == limit && *e.key == *key)
        {
            e.count += weight;
            return;
        }
        if self.entries.len() < self.capacity {
            self.entries.push(Counted {
                limit,
                key: key.into(),
                count: weight,
                error: 0,
            });
            return;
        }
        // Full: the least counted key makes room; the newcomer inherits its
        // count as an overestimate.
        let min = self
            .entries
            .iter_mut()
            .min_by_key(|e| e.count)
            .expect("capacity is at least 1");
        *min = Counted {
            limit,
            key: key.into(),
            count: min.count + weight,
            error: min.count,
        };
    }

    /// The sketch as a summary.
    pub fn summary(&self) -> Summary {
        let floor = if self.entries.len() < self.capacity {
            0
        } else {
            self.entries.iter().map(|e| e.count).min().unwrap_or(0)
        };
        let mut entries = self.entries.clone();
        sort(&mut entries);
        Summary {
            entries,
            floor,
            total: self.total,
        }
    }
}

/// Most counted first; ties by limit name, then key (a stable order).
fn sort(entries: &mut [Counted]) {
    entries.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.limit.as_str().cmp(b.limit.as_str()))
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// Merges summaries of disjoint refusals into one listing at most `k` keys.
/// A key absent from a part counts that part's floor, in its count and its
/// error, so counts stay upper bounds and `count - error` lower bounds.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Summary>, k: usize) -> Summary {
    let parts: Vec<&Summary> = parts.into_iter().collect();
    let floors: u64 = parts.iter().map(|p| p.floor).sum();
    // Per key: (count, error, floors) of the parts listing it.
    let mut seen: HashMap<(Limit, &str), (u64, u64, u64)> = HashMap::new();
    for p in &parts {
        for e in &p.entries {
            let s = seen.entry((e.limit, &e.key)).or_default();
            s.0 += e.count;
            s.1 += e.error;
            s.2 += p.floor;
        }
    }
    let mut entries: Vec<Counted> = seen
        .into_iter()
        .map(|((limit, key), (count, error, listed))| Counted {
            limit,
            key: key.into(),
            count: count + (floors - listed),
            error: error + (floors - listed),
        })
        .collect();
    sort(&mut entries);
    let dropped = entries.get(k).map_or(0, |e| e.count);
    entries.truncate(k);
    Summary {
        entries,
        floor: floors.max(dropped),
        total: parts.iter().map(|p| p.total).sum(),
    }
}

/// The current and the previous window of one shard.
#[derive(Debug, Default)]
struct Windows {
    /// Index of the current window (`now / WINDOW_NS`).
    index: u64,
    current: SpaceSaving,
    previous: SpaceSaving,
}

/// One shard's refusals of the last 30 to 60 s.
#[derive(Debug, Default)]
pub struct TopRefused {
    windows: Mutex<Windows>,
}

impl TopRefused {
    /// Counts one refusal of `key` under `limit` at `now_ns`.
    pub fn record(&self, limit: Limit, key: &str, now_ns: u64) {
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let index = now_ns / WINDOW_NS;
        if index > w.index {
            let current = std::mem::take(&mut w.current);
            w.previous = if index == w.index + 1 {
                current
            } else {
                SpaceSaving::default()
            };
            w.index = index;
        }
        w.current.observe(limit, key, 1);
    }

    /// The windows still within the last minute at `now_ns`, as summaries.
    pub fn summaries(&self, now_ns: u64) -> Vec<Summary> {
        let w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let index = now_ns / WINDOW_NS;
        if index <= w.index {
            vec![w.current.summary(), w.previous.summary()]
        } else if index == w.index + 1 {
            vec![w.current.summary()]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests;
