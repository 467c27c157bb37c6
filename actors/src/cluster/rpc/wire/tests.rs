//! The wire format: round trips, hostile bodies, item validation.

use super::*;
use proptest::prelude::*;

fn req(n: usize) -> BatchRequest {
    BatchRequest {
        origin: "node-a".into(),
        checks: (0..n)
            .map(|i| WireCheck {
                id: i as u64,
                tenant: format!("t{i}"),
                limit: "requests".into(),
                op: 0,
                cost: 1,
                retry: false,
                hops: 1,
            })
            .collect(),
    }
}

#[test]
fn round_trip() {
    let r = req(3);
    assert_eq!(decode_request(&encode(&r)), Ok(r));
    let resp = BatchResponse {
        node: "b".into(),
        results: vec![
            WireAnswer::plain(WireResult::Unlimited),
            WireAnswer {
                result: WireResult::Invalid(ErrorCode::ZeroCost),
                degraded: Some(2),
            },
        ],
    };
    assert_eq!(decode::<BatchResponse>(&encode(&resp)), Ok(resp));
    // A per-minute quota survives the trip.
    let quota = BucketQuota::Refill {
        rate: 7,
        burst: 9,
        per_s: 60,
    };
    let v = Verdict::Limited {
        quota,
        decision: Decision::Allowed {
            remaining: 3,
            reset_after_ns: 5,
        },
    };
    assert_eq!(WireResult::from(v).verdict(), Some(v));
}

#[test]
fn refuses_hostile_bodies() {
    assert_eq!(decode_request(&[]), Err(WireError::Empty));
    let mut b = encode(&req(1));
    b[0] = 9;
    assert_eq!(decode_request(&b), Err(WireError::Version(9)));
    let mut b = encode(&req(1));
    b.push(0);
    assert!(matches!(decode_request(&b), Err(WireError::Decode(_))));
    assert_eq!(
        decode_request(&encode(&req(MAX_BATCH_ITEMS + 1))),
        Err(WireError::TooManyItems(MAX_BATCH_ITEMS + 1))
    );
    // A length prefix claiming 2^60 checks must not allocate.
    let mut b = vec![WIRE_VERSION, 1, b'a', 0xfd];
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(decode_request(&b), Err(WireError::Decode(_))));
    let mut bad = req(1);
    bad.origin = "has space".into();
    assert_eq!(decode_request(&encode(&bad)), Err(WireError::BadOrigin));
}

#[test]
fn item_validation() {
    let ok = WireCheck {
        id: 1,
        tenant: "t".into(),
        limit: "requests".into(),
        op: 0,
        cost: 1,
        retry: false,
        hops: 1,
    };
    assert_eq!(
        validate_check(&ok, &RateLimitConfig::default()),
        Ok((Limit::REQUESTS, Op::Take))
    );
    assert_eq!(
        validate_check(
            &WireCheck {
                limit: "tokens".into(),
                op: 2,
                ..ok.clone()
            },
            &RateLimitConfig::default()
        ),
        Ok((Limit::TOKENS, Op::Charge))
    );
    assert_eq!(
        validate_check(
            &WireCheck {
                op: 5,
                ..ok.clone()
            },
            &RateLimitConfig::default()
        ),
        Ok((Limit::REQUESTS, Op::Peek))
    );
    assert_eq!(
        validate_check(
            &WireCheck {
                op: 6,
                ..ok.clone()
            },
            &RateLimitConfig::default()
        ),
        Err(ErrorCode::UnknownOp)
    );
    assert_eq!(
        validate_check(
            &WireCheck {
                limit: "nope".into(),
                ..ok.clone()
            },
            &RateLimitConfig::default()
        ),
        Err(ErrorCode::UnknownLimit)
    );
    assert_eq!(
        validate_check(
            &WireCheck {
                cost: 0,
                ..ok.clone()
            },
            &RateLimitConfig::default()
        ),
        Err(ErrorCode::ZeroCost)
    );
    assert_eq!(
        validate_check(
            &WireCheck {
                tenant: "".into(),
                ..ok
            },
            &RateLimitConfig::default()
        ),
        Err(ErrorCode::BadTenant)
    );
}

#[test]
fn tenant_request_validation() {
    let ok = TenantRequest {
        origin: "a".into(),
        tenant: "t".into(),
        limit: "requests".into(),
        op: TenantOp::Reset,
    };
    assert_eq!(
        decode_tenant(&encode(&ok), &RateLimitConfig::default()),
        Ok((ok.clone(), Limit::REQUESTS))
    );
    let bad_limit = TenantRequest {
        limit: "nope".into(),
        ..ok.clone()
    };
    assert!(matches!(
        decode_tenant(&encode(&bad_limit), &RateLimitConfig::default()),
        Err(WireError::Decode(_))
    ));
    let bad_tenant = TenantRequest {
        tenant: String::new(),
        ..ok.clone()
    };
    assert!(decode_tenant(&encode(&bad_tenant), &RateLimitConfig::default()).is_err());
    let bad_origin = TenantRequest {
        origin: "a b".into(),
        ..ok
    };
    assert_eq!(
        decode_tenant(&encode(&bad_origin), &RateLimitConfig::default()),
        Err(WireError::BadOrigin)
    );
    // An op byte out of range is a decode error, not a panic.
    let mut b = encode(&TenantRequest {
        origin: "a".into(),
        tenant: "t".into(),
        limit: "requests".into(),
        op: TenantOp::Inspect,
    });
    *b.last_mut().unwrap() = 9;
    assert!(matches!(
        decode_tenant(&b, &RateLimitConfig::default()),
        Err(WireError::Decode(_))
    ));
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_tenant(&bytes, &RateLimitConfig::default());
        let _ = decode::<TenantResponse>(&bytes);
        let _ = decode_request(&bytes);
        let _ = decode::<BatchResponse>(&bytes);
    }
}

#[test]
fn top_refused_answers_are_validated() {
    use crate::metrics::top_refused::{SpaceSaving, K};
    let limits = RateLimitConfig::default();
    let mut sketch = SpaceSaving::default();
    sketch.observe(Limit::TOKENS, "b", 2);
    sketch.observe(Limit::REQUESTS, "a", 5);
    let summary = sketch.summary();
    let answer = TopRefusedResponse::new("n1", &summary);
    let decoded: TopRefusedResponse = decode(&encode(&answer)).unwrap();
    assert_eq!(decoded.clone().summary(&limits), Ok(summary.clone()));

    // A listing in any order comes back sorted; unknown limits are left out.
    let mut shuffled = decoded.clone();
    shuffled.entries.reverse();
    shuffled.entries[0].limit = "nope".into();
    let got = shuffled.summary(&limits).unwrap();
    assert_eq!(got.entries.len(), 1);
    assert_eq!(&*got.entries[0].key, "a");

    let hostile = |change: &dyn Fn(&mut TopRefusedResponse)| {
        let mut a = decoded.clone();
        change(&mut a);
        a.summary(&limits)
    };
    assert!(hostile(&|a| a.entries[0].key = String::new()).is_err());
    assert!(hostile(&|a| a.entries[0].error = a.entries[0].count + 1).is_err());
    assert!(hostile(&|a| a.entries[0].count = a.total + 1).is_err());
    assert!(hostile(&|a| {
        let e = a.entries[0].clone();
        a.entries = vec![e; K + 1];
    })
    .is_err());
    assert_eq!(
        decode_top_refused(&encode(&TopRefusedRequest {
            origin: "a b".into()
        })),
        Err(WireError::BadOrigin)
    );
}
