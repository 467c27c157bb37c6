//! Golden placement, balance and movement of the ring.

use std::collections::HashMap;

use super::*;

fn nodes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn tenant(i: usize) -> String {
    format!("tenant-{i}")
}

#[test]
fn golden_placement() {
    // Changing the hash or the point layout moves buckets between nodes on a
    // rolling upgrade; do it knowingly and update these values.
    let ring = Ring::new(nodes(3), DEFAULT_VNODES);
    let got: Vec<&str> = ["acme", "globex", "initech", "umbrella", "tenant-7", "x"]
        .iter()
        .map(|t| ring.owner(t, Limit::REQUESTS).unwrap())
        .collect();
    assert_eq!(got, GOLDEN_OWNERS);
    assert_eq!(ring.fingerprint().to_string(), GOLDEN_FINGERPRINT);
}

const GOLDEN_OWNERS: [&str; 6] = ["node-0", "node-1", "node-0", "node-2", "node-1", "node-1"];
const GOLDEN_FINGERPRINT: &str = "5126adc26fbf718f";

#[test]
fn membership_order_and_duplicates_do_not_matter() {
    let a = Ring::new(["b", "a", "c"], 64);
    let b = Ring::new(["c", "a", "b", "a"], 64);
    assert_eq!(a.fingerprint(), b.fingerprint());
    for i in 0..1_000 {
        assert_eq!(
            a.owner(&tenant(i), Limit::REQUESTS),
            b.owner(&tenant(i), Limit::REQUESTS)
        );
    }
    assert_ne!(a.fingerprint(), Ring::new(["a", "b"], 64).fingerprint());
    assert_ne!(
        a.fingerprint(),
        Ring::new(["a", "b", "c"], 65).fingerprint()
    );
}

#[test]
fn empty_and_single_member_rings() {
    let empty = Ring::new(Vec::<String>::new(), DEFAULT_VNODES);
    assert_eq!(empty.owner("t", Limit::REQUESTS), None);
    let one = Ring::new(["solo"], DEFAULT_VNODES);
    assert_eq!(one.owner("t", Limit::REQUESTS), Some("solo"));
    assert_eq!(one.shares(), vec![("solo".to_string(), 1.0)]);
}

fn load(ring: &Ring, keys: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..keys {
        *counts
            .entry(ring.owner(&tenant(i), Limit::REQUESTS).unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[test]
fn balanced_within_15_percent() {
    for n in [3, 5, 10] {
        let ring = Ring::new(nodes(n), DEFAULT_VNODES);
        let counts = load(&ring, 100_000);
        assert_eq!(counts.len(), n);
        let mean = 100_000.0 / n as f64;
        let max = *counts.values().max().unwrap() as f64;
        eprintln!("{n} nodes: max/mean = {:.3}", max / mean);
        assert!(
            max / mean <= 1.15,
            "{n} nodes: max/mean = {:.3}",
            max / mean
        );
        let share_sum: f64 = ring.shares().iter().map(|(_, s)| s).sum();
        assert!((share_sum - 1.0).abs() < 1e-9);
    }
}

#[test]
fn adding_a_node_moves_about_one_share_and_only_to_it() {
    for n in [3, 5, 9] {
        let before = Ring::new(nodes(n), DEFAULT_VNODES);
        let after = Ring::new(nodes(n + 1), DEFAULT_VNODES);
        let newcomer = format!("node-{n}");
        let keys = 100_000;
        let mut moved = 0;
        for i in 0..keys {
            let t = tenant(i);
            let (a, b) = (
                before.owner(&t, Limit::REQUESTS),
                after.owner(&t, Limit::REQUESTS),
            );
            if a != b {
                moved += 1;
                assert_eq!(
                    b,
                    Some(newcomer.as_str()),
                    "key moved between nodes that stayed"
                );
            }
        }
        let expected = keys as f64 / (n + 1) as f64;
        let ratio = moved as f64 / expected;
        eprintln!(
            "{n}->{} nodes: moved {moved} of {keys} (expected ~{expected:.0})",
            n + 1
        );
        assert!(
            (0.75..=1.25).contains(&ratio),
            "{n}->{}: moved {moved}, expected ~{expected}",
            n + 1
        );
    }
}

#[test]
fn removing_a_node_moves_only_its_keys() {
    let before = Ring::new(nodes(4), DEFAULT_VNODES);
    let after = Ring::new(nodes(3), DEFAULT_VNODES);
    for i in 0..20_000 {
        let t = tenant(i);
        let a = before.owner(&t, Limit::REQUESTS).unwrap();
        if a != "node-3" {
            assert_eq!(after.owner(&t, Limit::REQUESTS), Some(a));
        }
    }
}
