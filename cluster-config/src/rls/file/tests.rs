use super::*;

/// envoyproxy/ratelimit's README examples 1 to 7, unchanged (the
/// integration tests load the same files into a node).
const README: [&str; 7] = [
    include_str!("../../../../integration/testdata/rls-readme/example1.yaml"),
    include_str!("../../../../integration/testdata/rls-readme/example2.yaml"),
    include_str!("../../../../integration/testdata/rls-readme/example3.yaml"),
    include_str!("../../../../integration/testdata/rls-readme/example4.yaml"),
    include_str!("../../../../integration/testdata/rls-readme/example5.yaml"),
    include_str!("../../../../integration/testdata/rls-readme/example6.yaml"),
    include_str!("../../../../integration/testdata/rls-readme/example7.yaml"),
];

fn rules() -> RlsRules {
    let mut domains = HashMap::new();
    for (i, text) in README.iter().enumerate() {
        let (domain, node) = parse_file(text, &format!("example{}.yaml", i + 1)).unwrap();
        domains.insert(domain, node);
    }
    RlsRules::new(domains)
}

fn find<'a>(rules: &'a RlsRules, domain: &str, entries: &[(&'a str, &'a str)]) -> Option<&'a Rule> {
    rules
        .find(domain, entries.iter().copied())
        .map(|r| r.as_ref())
}

#[test]
fn the_readme_examples_load_and_match_as_envoyproxy_ratelimit_does() {
    let r = rules();
    let users = find(&r, "mongo_cps", &[("database", "users")]).unwrap();
    assert_eq!(
        (users.requests_per_unit, users.unit),
        (500, Some(Unit::Second))
    );
    assert_eq!(users.name, "database_users");
    assert!(find(&r, "mongo_cps", &[("database", "other")]).is_none());
    // Nested, any value: the leaf's rule; a prefix alone matches nothing.
    let marketing = find(
        &r,
        "messaging",
        &[("message_type", "marketing"), ("to_number", "1")],
    );
    assert_eq!(marketing.unwrap().requests_per_unit, 5);
    assert!(find(&r, "messaging", &[("message_type", "marketing")]).is_none());
    assert_eq!(
        find(&r, "messaging", &[("to_number", "2")])
            .unwrap()
            .requests_per_unit,
        100
    );
    // Key and value first, then the key alone.
    assert_eq!(
        find(&r, "edge_proxy_per_ip", &[("remote_address", "50.0.0.5")])
            .unwrap()
            .requests_per_unit,
        0
    );
    assert_eq!(
        find(&r, "edge_proxy_per_ip", &[("remote_address", "50.0.0.1")])
            .unwrap()
            .requests_per_unit,
        10
    );
    // The same number of entries as levels.
    assert!(find(&r, "example4", &[("key", "value")]).is_none());
    assert!(find(&r, "example4", &[("key", "value"), ("subkey", "x")]).is_some());
    let ldap = find(&r, "internal", &[("ldap", "x")]).unwrap();
    assert!(ldap.unlimited && ldap.policy().is_none());
    let shadow = find(&r, "example6", &[("service", "s"), ("user", "user-a")]).unwrap();
    assert!(shadow.shadow_mode);
    let replacing = find(
        &r,
        "example7",
        &[("key_2", "value_2"), ("user", "bkthomps")],
    )
    .unwrap();
    assert_eq!(replacing.replaces, ["specific_limit"]);
    assert!(find(&r, "nope", &[("a", "b")]).is_none());
    assert!(find(&r, "mongo_cps", &[]).is_none());
    // Every rule has its own limit, the same for the same domain and path.
    assert_ne!(
        users.limit,
        find(&r, "mongo_cps", &[("database", "default")])
            .unwrap()
            .limit
    );
    assert_eq!(users.limit, rule_limit("mongo_cps", "database_users"));
    assert_eq!(
        r.rule(users.limit).map(|r| r.name.as_str()),
        Some("database_users")
    );
}

fn error(text: &str) -> String {
    parse_file(text, "rules.yaml").unwrap_err().to_string()
}

#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let e = error("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n");
    assert!(e.contains("rules.yaml"), "{e}");
    assert!(e.contains("descriptors[0]"), "{e}");
    assert!(
        e.contains("rate_limit.unit: invalid rate limit unit `fortnight`"),
        "{e}"
    );
    assert!(e.contains("line 3"), "{e}");
    let e = error("domain: d\ndescriptors:\n  - key: a\n    rate_limt:\n      unit: second\n");
    assert!(
        e.contains("unknown field `rate_limt`") && e.contains("line 4"),
        "{e}"
    );
    let e = error("domain: d\ndescriptors:\n  - key: a\n  - key: a\n");
    assert!(e.contains("duplicate descriptor composite key `a`"), "{e}");
    let e = error("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unlimited: true\n      unit: second\n");
    assert!(
        e.contains("should not specify rate limit unit when unlimited"),
        "{e}"
    );
    let e =
        error("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      requests_per_unit: 5\n");
    assert!(e.contains("rate_limit.unit: required"), "{e}");
    assert!(error("domain: ''\n").contains("empty domain"));
    assert!(error("domain: d\ndescriptors:\n  - key: ''\n").contains("empty key"));
    let e = error("domain: d\ndescriptors:\n  - key: a\n    quota_mode: true\n");
    assert!(e.contains("unknown field `quota_mode`"), "{e}");
    let e = error("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: year\n      requests_per_unit: 1000\n      algorithm: token_bucket\n");
    assert!(e.contains("too large for exact arithmetic"), "{e}");
}

#[test]
fn token_bucket_rules_refill_per_unit() {
    let (_, node) = parse_file(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: minute\n      requests_per_unit: 60\n      algorithm: token_bucket\n",
        "x",
    )
    .unwrap();
    let rule = node.children["a"].rule.clone().unwrap();
    assert_eq!(
        rule.policy(),
        Some(crate::Policy::TokenBucket {
            rate: 60,
            burst: 60,
            per_s: 60
        })
    );
}
