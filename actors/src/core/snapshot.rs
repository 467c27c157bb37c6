//! The snapshot wire format: one version byte, then the bucket state in
//! bincode 2 (standard configuration, varint integers): a level (version 2,
//! at most 64 bytes) or the leases of a concurrency limit (version 3).
//! A snapshot is only ever read back by a node of this project; an unknown
//! version or trailing garbage is refused, never guessed at.

use bincode::config;
use thiserror::Error;

use crate::core::bucket::{BucketQuota, BucketState};
use crate::core::held::Held;
use crate::core::lease::{LeaseSet, MAX_LEASES};

/// Format version of a level: 2 stores a signed level (a bucket may be in
/// debt). Version 1 (unsigned level) is still read.
pub const SNAPSHOT_VERSION: u8 = 2;
const V1: u8 = 1;
/// Format version of a concurrency limit's leases.
pub const LEASES_VERSION: u8 = 3;
/// Longest encoded lease set: [`MAX_LEASES`] leases of two varints each.
const MAX_LEASES_LEN: usize = 16 + MAX_LEASES * 20;

/// The version 1 layout.
#[derive(bincode::Decode)]
struct StateV1 {
    level: u64,
    updated_ns: u64,
}
/// Longest encoded snapshot we accept.
const MAX_LEN: usize = 64;
/// Extra time a snapshot lives after the bucket would be full again.
pub const TTL_MARGIN_MS: u64 = 1_000;

/// Why a stored snapshot was not used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("empty snapshot")]
    Empty,
    #[error("unknown snapshot version {0}")]
    Version(u8),
    #[error("snapshot too long ({0} bytes)")]
    TooLong(usize),
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
}

fn cfg() -> impl config::Config {
    config::standard().with_limit::<MAX_LEN>()
}

/// Encodes a state with the leading version byte.
pub fn encode(held: &Held) -> Vec<u8> {
    match held {
        Held::Level(state) => {
            let mut out = Vec::with_capacity(24);
            out.push(SNAPSHOT_VERSION);
            bincode::encode_into_std_write(state, &mut out, cfg())
                .expect("writing to a Vec cannot fail");
            out
        }
        Held::Leases(leases) => {
            let mut out = Vec::with_capacity(8 + 12 * leases.held.len());
            out.push(LEASES_VERSION);
            bincode::encode_into_std_write(&**leases, &mut out, leases_cfg())
                .expect("writing to a Vec cannot fail");
            out
        }
    }
}

fn leases_cfg() -> impl config::Config {
    config::standard().with_limit::<MAX_LEASES_LEN>()
}

/// Decodes bytes written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Held, SnapshotError> {
    let (&version, body) = bytes.split_first().ok_or(SnapshotError::Empty)?;
    if version == LEASES_VERSION {
        if bytes.len() > MAX_LEASES_LEN {
            return Err(SnapshotError::TooLong(bytes.len()));
        }
        let (leases, used): (LeaseSet, usize) = bincode::decode_from_slice(body, leases_cfg())
            .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        if used != body.len() {
            return Err(SnapshotError::Corrupt(format!(
                "{} trailing bytes",
                body.len() - used
            )));
        }
        if leases.held.len() > MAX_LEASES {
            return Err(SnapshotError::Corrupt("too many leases".into()));
        }
        return Ok(Held::Leases(Box::new(leases)));
    }
    decode_level(version, body, bytes.len()).map(Held::Level)
}

fn decode_level(version: u8, body: &[u8], len: usize) -> Result<BucketState, SnapshotError> {
    if version != SNAPSHOT_VERSION && version != V1 {
        return Err(SnapshotError::Version(version));
    }
    let bytes_len = len;
    if bytes_len > MAX_LEN {
        return Err(SnapshotError::TooLong(bytes_len));
    }
    let corrupt = |e: bincode::error::DecodeError| SnapshotError::Corrupt(e.to_string());
    let (state, used): (BucketState, usize) = if version == V1 {
        let (old, used): (StateV1, usize) =
            bincode::decode_from_slice(body, cfg()).map_err(corrupt)?;
        let level = i64::try_from(old.level)
            .map_err(|_| SnapshotError::Corrupt("level out of range".into()))?;
        let state = BucketState {
            level,
            updated_ns: old.updated_ns,
        };
        (state, used)
    } else {
        bincode::decode_from_slice(body, cfg()).map_err(corrupt)?
    };
    if used != body.len() {
        return Err(SnapshotError::Corrupt(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(state)
}

/// How long a snapshot taken at `now_ns` must live: until the bucket is
/// full again (its last lease expired), plus a margin. After that it
/// carries no information and may expire.
pub fn ttl_ms(held: &Held, quota: BucketQuota, now_ns: u64) -> u64 {
    held.time_to_full_ns(quota, now_ns).div_ceil(1_000_000) + TTL_MARGIN_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn versioned_layout() {
        let bytes = encode(&Held::Level(BucketState {
            level: 5,
            updated_ns: 7,
        }));
        // Signed levels are zigzag varints: 5 is 10, -3 is 5.
        assert_eq!(bytes, vec![SNAPSHOT_VERSION, 10, 7]);
        let debt = encode(&Held::Level(BucketState {
            level: -3,
            updated_ns: 7,
        }));
        assert_eq!(debt, vec![SNAPSHOT_VERSION, 5, 7]);
    }

    #[test]
    fn reads_version_1() {
        assert_eq!(
            decode(&[1, 5, 7]),
            Ok(Held::Level(BucketState {
                level: 5,
                updated_ns: 7
            }))
        );
    }

    #[test]
    fn refuses_bad_bytes() {
        assert_eq!(decode(&[]), Err(SnapshotError::Empty));
        assert_eq!(decode(&[9, 0, 0]), Err(SnapshotError::Version(9)));
        assert!(matches!(decode(&[2]), Err(SnapshotError::Corrupt(_))));
        assert!(matches!(
            decode(&[2, 5, 7, 0]),
            Err(SnapshotError::Corrupt(_))
        ));
        assert!(matches!(
            decode(&[1; 100]),
            Err(SnapshotError::TooLong(100))
        ));
    }

    #[test]
    fn ttl_covers_the_refill() {
        let quota = BucketQuota::per_second(2, 10);
        let drained = Held::Level(BucketState {
            level: 0,
            updated_ns: 0,
        });
        assert_eq!(ttl_ms(&drained, quota, 0), 5_000 + TTL_MARGIN_MS);
        let leases = BucketQuota::Leases { max: 2, ttl_s: 10 };
        let mut held = Held::full(leases, 0);
        held.apply(leases, 0, crate::core::bucket::Op::Acquire, 1);
        assert_eq!(ttl_ms(&held, leases, 4_000_000_000), 6_000 + TTL_MARGIN_MS);
    }

    proptest! {
        #[test]
        fn round_trips(level: i64, updated_ns: u64) {
            let s = Held::Level(BucketState { level, updated_ns });
            prop_assert_eq!(decode(&encode(&s)), Ok(s));
        }

        #[test]
        fn leases_round_trip(held in prop::collection::vec((any::<u64>(), any::<u64>()), 0..50)) {
            let set = LeaseSet {
                held: held.into_iter().map(|(id, expires_ns)| crate::core::lease::Lease { id, expires_ns }).collect(),
            };
            let s = Held::Leases(Box::new(set));
            prop_assert_eq!(decode(&encode(&s)), Ok(s));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode(&bytes);
        }
    }
}
