use super::*;
use llmtrace_cluster_config::named::LimitBlock;
use std::collections::BTreeMap;

fn limits() -> RateLimitConfig {
    let blocks: BTreeMap<String, LimitBlock> = toml::from_str(
        r#"
[d_rpm]
rate = 60
per = "1m"
burst = 10
[d_daily]
kind = "quota"
amount = 1000
period = "1d"
[d_inflight]
kind = "concurrency"
max = 4
"#,
    )
    .unwrap();
    RateLimitConfig {
        named: llmtrace_cluster_config::NamedLimits::resolve(blocks).unwrap(),
        ..RateLimitConfig::default()
    }
}

fn field(body: &str) -> String {
    let e = parse_descriptors(body.as_bytes(), &limits()).unwrap_err();
    e.field.map(|f| f.into_owned()).unwrap_or_default()
}

#[test]
fn descriptors_parse_in_order_with_default_cost() {
    let d = parse_descriptors(
        br#"{"descriptors":[{"limit":"d_rpm","key":"acme","cost":2},{"limit":"d_daily","key":"org/7"}]}"#,
        &limits(),
    )
    .unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].limit.as_str(), d[0].key.as_str(), d[0].amount),
        ("d_rpm", "acme", 2)
    );
    assert_eq!(
        (d[1].limit.as_str(), d[1].key.as_str(), d[1].amount),
        ("d_daily", "org/7", 1)
    );
}

#[test]
fn errors_name_the_item_and_field() {
    assert_eq!(
        field(r#"{"descriptors":[{"limit":"nope","key":"a"}]}"#),
        "descriptors[0].limit"
    );
    assert_eq!(
        field(r#"{"descriptors":[{"limit":"d_rpm","key":"a"},{"limit":"d_rpm","key":"a b"}]}"#),
        "descriptors[1].key"
    );
    assert_eq!(
        field(r#"{"descriptors":[{"limit":"d_rpm","key":"a","cost":0}]}"#),
        "descriptors[0].cost"
    );
    assert_eq!(
        field(r#"{"descriptors":[{"limit":"d_rpm","key":"a","cost":-1}]}"#),
        "descriptors[0].cost"
    );
    assert_eq!(
        field(r#"{"descriptors":[{"limit":"d_rpm","key":"a","cost":null}]}"#),
        "descriptors[0].cost"
    );
    assert_eq!(
        field(r#"{"descriptors":[{"limit":"d_rpm"}]}"#),
        "descriptors[0].key"
    );
    assert_eq!(
        field(r#"{"descriptors":[{"limit":"d_rpm","key":"a","x":1}]}"#),
        "descriptors[0].x"
    );
    assert_eq!(
        field(r#"{"descriptors":[{"limit":"d_inflight","key":"a","cost":2}]}"#),
        "descriptors[0].cost"
    );
    assert_eq!(field(r#"{"descriptors":[]}"#), "descriptors");
    let many = format!(
        r#"{{"descriptors":[{}]}}"#,
        vec![r#"{"limit":"d_rpm","key":"a"}"#; 17].join(",")
    );
    assert_eq!(field(&many), "descriptors");
    assert_eq!(field(r#"{"descriptors":5}"#), "descriptors");
    let e = parse_descriptors(
        br#"{"descriptors":[{"limit":"d_rpm","key":"a","key":"b"}]}"#,
        &limits(),
    )
    .unwrap_err();
    assert_eq!(e.code, "invalid_json");
}

#[test]
fn adjust_parses_and_names_the_field() {
    let a = parse_adjust(br#"{"limit":"d_daily","key":"org","delta":-5}"#, &limits()).unwrap();
    assert_eq!((a.limit.as_str(), a.delta), ("d_daily", -5));
    let f = |b: &str| {
        parse_adjust(b.as_bytes(), &limits())
            .unwrap_err()
            .field
            .map(|f| f.into_owned())
            .unwrap_or_default()
    };
    assert_eq!(f(r#"{"limit":"d_daily","key":"org","delta":0}"#), "delta");
    assert_eq!(f(r#"{"limit":"d_daily","key":"org","delta":1.5}"#), "delta");
    assert_eq!(f(r#"{"limit":"d_daily","key":"org"}"#), "delta");
    assert_eq!(f(r#"{"limit":"zz","key":"org","delta":1}"#), "limit");
    assert_eq!(
        f(r#"{"limit":"d_inflight","key":"org","delta":1}"#),
        "limit"
    );
    assert_eq!(f(r#"{"limit":"d_daily","key":"","delta":1}"#), "key");
    assert_eq!(f(r#"{"limit":"d_daily","key":"o","delta":1,"x":2}"#), "x");
}

#[test]
fn lease_ids_name_their_bucket() {
    let l = limits();
    let d = parse_descriptors(
        br#"{"descriptors":[{"limit":"d_inflight","key":"a:b/c"}]}"#,
        &l,
    )
    .unwrap();
    let id = d[0]
        .lease_id()
        .expect("a concurrency descriptor takes a lease");
    assert_ne!(id, 0);
    let text = lease_id(d[0].limit, id, &d[0].key);
    assert_eq!(
        parse_lease_id(&text, &l),
        Some((d[0].limit, id, "a:b/c".to_string()))
    );
    for bad in [
        "d_inflight:0000000000000000:a",
        "d_inflight:12:a",
        "d_rpm:00000000000000ff:a",
        "nope:00000000000000ff:a",
        "d_inflight:00000000000000ff:",
        "d_inflight:00000000000000ff:a b",
        "garbage",
    ] {
        assert_eq!(parse_lease_id(bad, &l), None, "{bad}");
    }
}
