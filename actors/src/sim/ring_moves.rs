//! Keys moved by a membership change, on the real ring: the share of keys
//! whose owner changes when a node joins or leaves (ideal: the newcomer's
//! share, `1 / N` after the change, or the leaver's, `1 / N` before it), and
//! how evenly the ring spreads keys (the busiest node's share of keys).

use llmtrace_cluster_config::{Limit, Ring};

use crate::sim::zipf::tenant;

/// Node ids of a simulated cluster of `n`.
pub fn node_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i:03}")).collect()
}

/// What one ring change moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moved {
    /// Share of the keys whose owner changed.
    pub share: f64,
    /// The share a perfect ring would move.
    pub ideal: f64,
    /// Moved keys whose new owner is the joiner (join) or whose old owner
    /// was the leaver (leave); 1 on a consistent-hash ring.
    pub to_or_from_changed: f64,
}

/// Keys moved when `changed` joins the ring of `before` (`join`), or
/// leaves it (otherwise; `changed` must then be in `before`).
pub fn moved(before: &[String], changed: &str, join: bool, vnodes: u32, keys: usize) -> Moved {
    let after: Vec<&String> = if join {
        before.iter().collect()
    } else {
        before.iter().filter(|m| *m != changed).collect()
    };
    let old = Ring::new(before.iter(), vnodes);
    let mut new_members: Vec<String> = after.into_iter().cloned().collect();
    if join {
        new_members.push(changed.to_string());
    }
    let new = Ring::new(new_members.iter(), vnodes);
    let (mut moved, mut involving) = (0usize, 0usize);
    for k in 0..keys {
        let t = tenant(k);
        let (a, b) = (
            old.owner(&t, Limit::REQUESTS),
            new.owner(&t, Limit::REQUESTS),
        );
        if a != b {
            moved += 1;
            let side = if join { b } else { a };
            involving += usize::from(side == Some(changed));
        }
    }
    let ideal = 1.0
        / if join {
            new_members.len()
        } else {
            before.len()
        } as f64;
    Moved {
        share: moved as f64 / keys as f64,
        ideal,
        to_or_from_changed: if moved == 0 {
            1.0
        } else {
            involving as f64 / moved as f64
        },
    }
}

/// The busiest member's share of `keys` keys on the ring of `members`.
pub fn busiest_key_share(members: &[String], vnodes: u32, keys: usize) -> f64 {
    let ring = Ring::new(members.iter(), vnodes);
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for k in 0..keys {
        if let Some(o) = ring.owner(&tenant(k), Limit::REQUESTS) {
            *counts.entry(o).or_default() += 1;
        }
    }
    counts.values().copied().max().unwrap_or(0) as f64 / keys as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmtrace_cluster_config::ring::DEFAULT_VNODES;

    #[test]
    fn a_join_moves_about_one_nth_and_only_to_the_joiner() {
        let ids = node_ids(10);
        let m = moved(&ids, "node-new", true, DEFAULT_VNODES, 20_000);
        assert_eq!(m.to_or_from_changed, 1.0);
        assert!((m.share - m.ideal).abs() < m.ideal * 0.5, "{m:?}");
        let m = moved(&ids, "node-003", false, DEFAULT_VNODES, 20_000);
        assert_eq!(m.to_or_from_changed, 1.0);
        assert!((m.share - m.ideal).abs() < m.ideal * 0.5, "{m:?}");
    }
}
