//! The hash ring: which node owns a `(tenant, limit)` bucket.
//!
//! Consistent hashing with virtual nodes, keyed by node id (never by address,
//! so a node that moves keeps its keys). The hash is specified, not
//! `std`'s: xxh3-64 over the UTF-8 bytes of the node id, seeded with
//! `POINT_SEED ^ (vnode_index * PHI)`, for ring points, and over the tenant
//! id then the limit name for keys. Every node, build and platform therefore places every
//! key identically; the golden test below pins it.
//!
//! A ring is immutable: membership changes build a new one and swap it in.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::limit::Limit;

/// Default number of virtual nodes per member.
pub const DEFAULT_VNODES: u32 = 256;
/// Seed of ring-point hashes.
const POINT_SEED: u64 = 0x7269_6e67_706f_696e; // "ringpoin"
/// Seed of key hashes (distinct from the shard hash's seed).
const KEY_SEED: u64 = 0x7269_6e67_6b65_7973; // "ringkeys"

/// Hash of a bucket key on the ring.
pub fn key_hash(tenant: &str, limit: Limit) -> u64 {
    let h = xxh3_64_with_seed(tenant.as_bytes(), KEY_SEED);
    xxh3_64_with_seed(limit.as_str().as_bytes(), h)
}

/// Hash of the `index`-th virtual node of `node_id`: the node id hashed with
/// the vnode index mixed into the seed (no formatting, no allocation).
fn point_hash(node_id: &str, index: u32) -> u64 {
    xxh3_64_with_seed(
        node_id.as_bytes(),
        POINT_SEED ^ u64::from(index).wrapping_mul(PHI),
    )
}

/// 2^64 / golden ratio: spreads consecutive vnode indexes over the seed space.
const PHI: u64 = 0x9e37_79b9_7f4a_7c15;

/// Identifies a membership view: a hash of the sorted member ids and the
/// vnode count. Two nodes with the same fingerprint place every key alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An immutable consistent-hash ring.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Member ids, sorted and unique; points refer to them by index.
    members: Vec<String>,
    /// `(point hash, member index)`, sorted by hash.
    points: Vec<(u64, u32)>,
    vnodes: u32,
    fingerprint: Fingerprint,
}

impl Ring {
    /// Builds the ring of `members` (order and duplicates do not matter).
    pub fn new<I, S>(members: I, vnodes: u32) -> Ring
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut members: Vec<String> = members.into_iter().map(Into::into).collect();
        members.sort();
        members.dedup();
        let vnodes = vnodes.max(1);
        let mut points = Vec::with_capacity(members.len() * vnodes as usize);
        for (i, id) in members.iter().enumerate() {
            for v in 0..vnodes {
                points.push((point_hash(id, v), i as u32));
            }
        }
        // Ties (astronomically rare) resolve by member order, deterministically.
        points.sort_unstable();
        let mut fp = xxh3_64_with_seed(&vnodes.to_le_bytes(), POINT_SEED);
        for id in &members {
            fp = xxh3_64_with_seed(id.as_bytes(), fp);
        }
        Ring {
            members,
            points,
            vnodes,
            fingerprint: Fingerprint(fp),
        }
    }

    /// The members, sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn contains(&self, node_id: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(node_id))
            .is_ok()
    }

    /// The owner of a key hash: the first point at or after it, wrapping.
    pub fn owner_of_hash(&self, hash: u64) -> Option<&str> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|(h, _)| *h < hash);
        let (_, member) = self.points[if i == self.points.len() { 0 } else { i }];
        Some(&self.members[member as usize])
    }

    /// The node that owns `(tenant, limit)`. A member alone owns every
    /// key: no hash to compute.
    pub fn owner(&self, tenant: &str, limit: Limit) -> Option<&str> {
        if let [alone] = self.members.as_slice() {
            return Some(alone);
        }
        self.owner_of_hash(key_hash(tenant, limit))
    }

    /// Share of the hash space each member owns, in member order (sums to 1).
    pub fn shares(&self) -> Vec<(String, f64)> {
        let mut owned = vec![0u128; self.members.len()];
        let n = self.points.len();
        for (i, (h, m)) in self.points.iter().enumerate() {
            let prev = if i == 0 {
                self.points[n - 1].0
            } else {
                self.points[i - 1].0
            };
            // Arc (prev, h], wrapping around u64.
            owned[*m as usize] += u128::from(h.wrapping_sub(prev));
            if n == 1 {
                owned[*m as usize] = 1u128 << 64;
            }
        }
        let total = 2f64.powi(64);
        self.members
            .iter()
            .zip(owned)
            .map(|(id, o)| (id.clone(), o as f64 / total))
            .collect()
    }
}

#[cfg(test)]
mod tests;
