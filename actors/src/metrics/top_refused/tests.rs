use std::collections::HashMap;

use super::*;

/// A skewed stream of `n` refusals over `keys` keys of two limits: key `i`
/// comes about `1/(i+1)` as often as key 0 (a xorshift picks it).
fn stream(seed: u64, n: usize, keys: u64) -> Vec<(Limit, String)> {
    let mut x = seed | 1;
    let harmonic: f64 = (0..keys).map(|i| 1.0 / (i + 1) as f64).sum();
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut u = (x >> 11) as f64 / (1u64 << 53) as f64 * harmonic;
            let mut i = 0;
            while i + 1 < keys && u >= 1.0 / (i + 1) as f64 {
                u -= 1.0 / (i + 1) as f64;
                i += 1;
            }
            let limit = if i % 2 == 0 {
                Limit::REQUESTS
            } else {
                Limit::TOKENS
            };
            (limit, format!("key-{i}"))
        })
        .collect()
}

fn exact(items: &[(Limit, String)]) -> HashMap<(Limit, String), u64> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item.clone()).or_default() += 1;
    }
    counts
}

fn sketch(items: &[(Limit, String)], k: usize) -> Summary {
    let mut s = SpaceSaving::new(k);
    for (limit, key) in items {
        s.observe(*limit, key, 1);
    }
    s.summary()
}

/// Every listed count brackets the truth within `max_error`, every key not
/// listed is at most the floor, and the listing is sorted.
fn check_bounds(summary: &Summary, truth: &HashMap<(Limit, String), u64>, max_error: u64) {
    let listed: HashMap<(Limit, String), &Counted> = summary
        .entries
        .iter()
        .map(|e| ((e.limit, e.key.to_string()), e))
        .collect();
    assert_eq!(listed.len(), summary.entries.len(), "a key listed twice");
    for (item, &n) in truth {
        match listed.get(item) {
            Some(e) => {
                assert!(e.count >= n, "{item:?}: count {} < true {n}", e.count);
                assert!(e.count - e.error <= n, "{item:?}: lower bound above {n}");
                assert!(e.error <= max_error, "{item:?}: error {}", e.error);
            }
            None => assert!(n <= summary.floor, "{item:?}: {n} above the floor"),
        }
    }
    assert!(summary.entries.windows(2).all(|w| w[0].count >= w[1].count));
}

#[test]
fn space_saving_lists_every_key_above_n_over_k_with_bounded_error() {
    for (seed, keys) in [(1, 40), (7, 500), (99, 5000)] {
        let k = 16;
        let items = stream(seed, 20_000, keys);
        let truth = exact(&items);
        let n = items.len() as u64;
        let summary = sketch(&items, k);
        assert_eq!(summary.total, n);
        assert!(summary.entries.len() <= k);
        check_bounds(&summary, &truth, n / k as u64);
        assert!(summary.floor <= n / k as u64, "floor {}", summary.floor);
        for (item, &c) in &truth {
            if c > n / k as u64 {
                assert!(
                    summary
                        .entries
                        .iter()
                        .any(|e| (e.limit, e.key.to_string()) == *item),
                    "{item:?} refused {c} times (> N/K = {}) is not listed",
                    n / k as u64
                );
            }
        }
        // The most refused key of a skewed stream comes first.
        let top = truth.iter().max_by_key(|(_, c)| **c).unwrap().0;
        assert_eq!(
            (summary.entries[0].limit, summary.entries[0].key.to_string()),
            *top
        );
    }
}

#[test]
fn exact_while_under_capacity() {
    let items = stream(3, 1000, 8);
    let summary = sketch(&items, K);
    assert_eq!(summary.floor, 0);
    for e in &summary.entries {
        assert_eq!(e.error, 0);
        assert_eq!(e.count, exact(&items)[&(e.limit, e.key.to_string())]);
    }
}

#[test]
fn merge_keeps_upper_bounds_and_the_heavy_keys() {
    let k = 16;
    let items = stream(11, 30_000, 800);
    let truth = exact(&items);
    let n = items.len() as u64;
    // Three parts of unequal size with overlapping keys.
    let parts: Vec<Summary> = [&items[..4_000], &items[4_000..19_000], &items[19_000..]]
        .iter()
        .map(|part| sketch(part, k))
        .collect();
    let floors: u64 = parts.iter().map(|p| p.floor).sum();
    assert!(floors <= n / k as u64);
    let merged = merge(&parts, k);
    assert_eq!(merged.total, n);
    assert!(merged.entries.len() <= k);
    // Errors stay within the parts' floors (N/K in all).
    check_bounds(&merged, &truth, floors);
    for (item, &c) in &truth {
        let listed = merged
            .entries
            .iter()
            .any(|e| (e.limit, e.key.to_string()) == *item);
        if c > 2 * n / k as u64 {
            assert!(listed, "{item:?} refused {c} times is not listed");
        }
        if !listed {
            assert!(c <= merged.floor, "{item:?}: {c} above {}", merged.floor);
        }
    }
}

#[test]
fn merge_of_disjoint_parts_adds_counts() {
    let mut a = SpaceSaving::new(4);
    let mut b = SpaceSaving::new(4);
    for _ in 0..5 {
        a.observe(Limit::REQUESTS, "x", 1);
    }
    b.observe(Limit::REQUESTS, "x", 2);
    b.observe(Limit::TOKENS, "x", 9);
    let merged = merge(&[a.summary(), b.summary()], 4);
    let got: Vec<(&str, &str, u64, u64)> = merged
        .entries
        .iter()
        .map(|e| (e.limit.as_str(), &*e.key, e.count, e.error))
        .collect();
    assert_eq!(got, [("tokens", "x", 9, 0), ("requests", "x", 7, 0)]);
    assert_eq!((merged.floor, merged.total), (0, 16));
    // Truncated to one key: the dropped count becomes the floor.
    let one = merge(&[a.summary(), b.summary()], 1);
    assert_eq!(one.entries.len(), 1);
    assert_eq!(one.floor, 7);
}

#[test]
fn windows_cover_the_last_thirty_to_sixty_seconds() {
    let top = TopRefused::default();
    let t0 = 1_000 * WINDOW_NS;
    top.record(Limit::REQUESTS, "old", t0);
    top.record(Limit::REQUESTS, "new", t0 + WINDOW_NS);
    let keys = |now: u64| -> Vec<String> {
        let parts = top.summaries(now);
        let merged = merge(&parts, K);
        merged.entries.iter().map(|e| e.key.to_string()).collect()
    };
    assert_eq!(keys(t0 + WINDOW_NS), ["new", "old"]);
    assert_eq!(keys(t0 + 2 * WINDOW_NS), ["new"]);
    assert!(keys(t0 + 3 * WINDOW_NS).is_empty());
    // A refusal after a quiet minute starts both windows afresh.
    top.record(Limit::TOKENS, "later", t0 + 5 * WINDOW_NS);
    assert_eq!(keys(t0 + 5 * WINDOW_NS), ["later"]);
}
