//! The Envoy rate limit service (RLS v3 gRPC) on real nodes, through a
//! tonic client built from Envoy's protos (`envoy-types`): envoyproxy/
//! ratelimit's README configuration loads unchanged; hits_addend,
//! check-only, negative hits and limit overrides; all or nothing; hot
//! reload; hostile input. Three nodes: `rls_cluster`; the Python client:
//! `rls_python`.
//!
//! Exact counts use day windows (nothing resets while a test runs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llmtrace_integration::rls::{
    descriptor, negative, request, with_hits, with_override, Code, RateLimitResponse, RlsClient,
};
use llmtrace_integration::{wait_until, Node, NodeBuilder, TempDir};

/// envoyproxy/ratelimit's README examples 1 to 7, one file each, as written there.
fn readme_examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/rls-readme")
}

/// Our own rules: day windows, small numbers.
pub const RULES: &str = "domain: it
descriptors:
  - key: user
    rate_limit:
      unit: day
      requests_per_unit: 10
  - key: pair_a
    rate_limit:
      unit: day
      requests_per_unit: 2
  - key: pair_b
    rate_limit:
      unit: day
      requests_per_unit: 1
  - key: tb
    rate_limit:
      unit: day
      requests_per_unit: 3
      algorithm: token_bucket
  - key: tokens
    rate_limit:
      unit: day
      requests_per_unit: 100
      charge: always
";

/// A node serving RLS with the rules of `config` (a file or a directory).
pub fn rls_template(config: &Path) -> NodeBuilder {
    Node::builder()
        .flag("rls-listen", "127.0.0.1:0")
        .flag("rls-config", config.display())
}

/// [`RULES`] in a new directory (kept while the guard lives) and its path.
pub fn rules_file() -> (TempDir, PathBuf) {
    let dir = TempDir::new("rls");
    let file = dir.write("rules.yaml", RULES);
    (dir, file)
}

/// A node alone serving [`RULES`].
fn rls_node() -> (TempDir, Node) {
    let (dir, file) = rules_file();
    (dir, rls_template(&file).alone().start())
}

pub fn code(r: &RateLimitResponse) -> Code {
    Code::try_from(r.overall_code).expect("a known code")
}

pub fn ok(client: &mut RlsClient, domain: &str, entries: &[(&str, &str)]) -> RateLimitResponse {
    client
        .call(request(domain, vec![descriptor(entries)]))
        .unwrap_or_else(|e| panic!("{domain} {entries:?}: {e}"))
}

#[test]
fn the_readme_configuration_loads_unchanged_and_decides_as_documented() {
    let node = rls_template(&readme_examples()).alone().start();
    let mut c = RlsClient::connect(&node.rls_url());
    // gRPC health checking, for Envoy's cluster health checks.
    let service = "envoy.service.ratelimit.v3.RateLimitService";
    assert_eq!(c.health(service).unwrap(), 1);
    assert_eq!(c.health("").unwrap(), 1);
    // Nested descriptors: 5 marketing messages a day to one number, and the
    // same call's second descriptor holds that number to 100.
    let marketing = |c: &mut RlsClient, to: &str| {
        c.call(request(
            "messaging",
            vec![
                descriptor(&[("message_type", "marketing"), ("to_number", to)]),
                descriptor(&[("to_number", to)]),
            ],
        ))
        .unwrap()
    };
    for i in 0..5 {
        let r = marketing(&mut c, "2061111111");
        assert_eq!(code(&r), Code::Ok, "call {i}: {r:?}");
        assert_eq!(r.statuses[0].limit_remaining, 4 - i);
        assert_eq!(r.statuses[1].limit_remaining, 99 - i);
    }
    let r = marketing(&mut c, "2061111111");
    assert_eq!(code(&r), Code::OverLimit, "{r:?}");
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[1].code, Code::Ok as i32);
    // All or nothing: the number's daily 100 was not charged by the refusal.
    assert_eq!(r.statuses[1].limit_remaining, 95, "{r:?}");
    let limit = r.statuses[0].current_limit.clone().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (5, 4), "{limit:?}");
    assert!(r.statuses[0].duration_until_reset.unwrap().seconds <= 86_400);
    // Another number has its own bucket.
    assert_eq!(code(&marketing(&mut c, "2062222222")), Code::Ok);
    // Key and value before key: the blacklisted address is refused.
    let r = ok(
        &mut c,
        "edge_proxy_per_ip",
        &[("remote_address", "50.0.0.5")],
    );
    assert_eq!(code(&r), Code::OverLimit, "{r:?}");
    let r = ok(
        &mut c,
        "edge_proxy_per_ip",
        &[("remote_address", "50.0.0.1")],
    );
    assert_eq!(code(&r), Code::Ok, "{r:?}");
    // Unlimited: OK with the largest remaining; unknown: OK without a limit.
    let r = ok(&mut c, "internal", &[("ldap", "cn=x")]);
    assert_eq!(
        (code(&r), r.statuses[0].limit_remaining),
        (Code::Ok, u32::MAX)
    );
    let r = ok(&mut c, "internal", &[("nobody", "x")]);
    assert_eq!(code(&r), Code::Ok);
    assert!(r.statuses[0].current_limit.is_none());
    let r = ok(&mut c, "no_such_domain", &[("a", "b")]);
    assert_eq!(code(&r), Code::Ok);
    // shadow_mode: never refused, the refusals counted. 25 calls inside at
    // most two one-second windows: one of them saw more than 10.
    for _ in 0..25 {
        let r = ok(
            &mut c,
            "example6",
            &[("service", "auth"), ("user", "user-a")],
        );
        assert_eq!(code(&r), Code::Ok, "{r:?}");
    }
    let shadow = r#"llmtrace_rls_decisions_total{domain="example6",rule="service.user_user-a",decision="shadow_refused"}"#;
    assert!(
        node.metric(shadow).unwrap_or(0.0) >= 1.0,
        "{}",
        node.metrics()
    );
    // `name` is answered; `replaces` drops the named rule from a call that
    // matches the replacing one.
    let r = ok(
        &mut c,
        "example7",
        &[("key_1", "value_1"), ("user", "bkthomps")],
    );
    assert_eq!(
        r.statuses[0].current_limit.as_ref().unwrap().name,
        "specific_limit"
    );
    let r = c
        .call(request(
            "example7",
            vec![
                descriptor(&[("key_1", "value_1"), ("user", "bkthomps")]),
                descriptor(&[("key_2", "value_2"), ("user", "bkthomps")]),
            ],
        ))
        .unwrap();
    assert!(r.statuses[0].current_limit.is_none(), "{r:?}");
    assert_eq!(
        r.statuses[1]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        10
    );
}

#[test]
fn hits_check_only_negative_hits_and_overrides() {
    let (_dir, node) = rls_node();
    let mut c = RlsClient::connect(&node.rls_url());
    let user = || descriptor(&[("user", "bob")]);
    let remaining = |r: &RateLimitResponse| r.statuses[0].limit_remaining;
    let mut req = request("it", vec![user()]);
    req.hits_addend = 4;
    let r = c.call(req).unwrap();
    assert_eq!((code(&r), remaining(&r)), (Code::Ok, 6));
    // Check-only, twice: nothing charged.
    for _ in 0..2 {
        let r = c.call(request("it", vec![with_hits(user(), 0)])).unwrap();
        assert_eq!((code(&r), remaining(&r)), (Code::Ok, 6));
    }
    // Negative hits refund.
    let r = c
        .call(request("it", vec![negative(with_hits(user(), 3))]))
        .unwrap();
    assert_eq!((code(&r), remaining(&r)), (Code::Ok, 9));
    // The descriptor's hits_addend beats the request's.
    let mut req = request("it", vec![with_hits(user(), 9)]);
    req.hits_addend = 1;
    let r = c.call(req).unwrap();
    assert_eq!((code(&r), remaining(&r)), (Code::Ok, 0));
    let r = c.call(request("it", vec![with_hits(user(), 0)])).unwrap();
    assert_eq!((code(&r), remaining(&r)), (Code::OverLimit, 0));
    // More hits than the limit holds: refused, nothing charged.
    let r = c
        .call(request(
            "it",
            vec![with_hits(descriptor(&[("user", "carol")]), 11)],
        ))
        .unwrap();
    assert_eq!(code(&r), Code::OverLimit);
    let r = ok(&mut c, "it", &[("user", "carol")]);
    assert_eq!((code(&r), remaining(&r)), (Code::Ok, 9));
    // An override replaces the configured numbers for the call.
    for i in 0..3 {
        let r = c
            .call(request(
                "it",
                vec![with_override(descriptor(&[("user", "dave")]), 3, 4)],
            ))
            .unwrap();
        assert_eq!((code(&r), remaining(&r)), (Code::Ok, 2 - i), "{r:?}");
        assert_eq!(
            r.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            3
        );
    }
    let r = c
        .call(request(
            "it",
            vec![with_override(descriptor(&[("user", "dave")]), 3, 4)],
        ))
        .unwrap();
    assert_eq!(code(&r), Code::OverLimit);
    // A token bucket rule: burst 3.
    for _ in 0..3 {
        assert_eq!(code(&ok(&mut c, "it", &[("tb", "x")])), Code::Ok);
    }
    assert_eq!(code(&ok(&mut c, "it", &[("tb", "x")])), Code::OverLimit);
}

#[test]
fn tokens_are_checked_before_and_charged_after_as_envoy_ai_gateway_does() {
    let (_dir, node) = rls_node();
    let mut c = RlsClient::connect(&node.rls_url());
    let user = || descriptor(&[("tokens", "erin")]);
    let mut call = |hits: u64| {
        let r = c
            .call(request("it", vec![with_hits(user(), hits)]))
            .unwrap();
        (code(&r), r.statuses[0].limit_remaining)
    };
    assert_eq!(call(0), (Code::Ok, 100));
    assert_eq!(call(80), (Code::Ok, 20));
    assert_eq!(call(0), (Code::Ok, 20));
    // Usage past what is left is charged all the same: the user is then
    // refused until the window ends.
    assert_eq!(call(50), (Code::Ok, 0));
    assert_eq!(call(0), (Code::OverLimit, 0));
}

#[test]
fn a_refused_call_charges_nothing() {
    let (_dir, node) = rls_node();
    let mut c = RlsClient::connect(&node.rls_url());
    let both = || {
        request(
            "it",
            vec![
                descriptor(&[("pair_a", "k")]),
                descriptor(&[("pair_b", "k")]),
            ],
        )
    };
    let r = c.call(both()).unwrap();
    assert_eq!(code(&r), Code::Ok);
    let r = c.call(both()).unwrap();
    assert_eq!(code(&r), Code::OverLimit, "{r:?}");
    assert_eq!(r.statuses[0].code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 1, "{r:?}");
    assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    // pair_a still holds the unit the refused call did not keep.
    let r = ok(&mut c, "it", &[("pair_a", "k")]);
    assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 0));
    // Headers are off by default.
    assert!(r.response_headers_to_add.is_empty());
}

fn requests_per_unit(c: &mut RlsClient) -> u32 {
    let r = c
        .call(request(
            "it",
            vec![with_hits(descriptor(&[("user", "x")]), 0)],
        ))
        .unwrap();
    r.statuses[0]
        .current_limit
        .as_ref()
        .map_or(0, |l| l.requests_per_unit)
}

#[test]
fn rules_reload_when_the_file_changes_and_an_invalid_file_changes_nothing() {
    let (_dir, file) = rules_file();
    let node = rls_template(&file)
        .alone()
        .flag("rls-response-headers", "true")
        .start();
    let mut c = RlsClient::connect(&node.rls_url());
    assert_eq!(requests_per_unit(&mut c), 10);
    let r = ok(&mut c, "it", &[("user", "h")]);
    let headers: Vec<_> = r
        .response_headers_to_add
        .iter()
        .map(|h| h.key.as_str())
        .collect();
    assert_eq!(headers, ["RateLimit-Policy", "RateLimit"], "{r:?}");
    assert!(
        r.response_headers_to_add[0]
            .value
            .ends_with(";q=10;w=86400"),
        "{r:?}"
    );
    let changed = Instant::now();
    std::fs::write(
        &file,
        RULES.replacen("requests_per_unit: 10", "requests_per_unit: 42", 1),
    )
    .unwrap();
    wait_until(Duration::from_secs(1), "the changed limit applies", || {
        requests_per_unit(&mut c) == 42
    });
    assert!(changed.elapsed() <= Duration::from_secs(1));
    std::fs::write(
        &file,
        "domain: it\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: fortnight\n",
    )
    .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the invalid file is refused",
        || node.metric(r#"llmtrace_rls_config_reloads_total{result="invalid"}"#) == Some(1.0),
    );
    assert_eq!(requests_per_unit(&mut c), 42);
    assert!(
        node.stderr().contains("rls rules not reloaded"),
        "{}",
        node.stderr()
    );
    // SIGHUP reloads too.
    std::fs::write(&file, RULES).unwrap();
    wait_until(Duration::from_secs(5), "the fixed file applies", || {
        requests_per_unit(&mut c) == 10
    });
    let reloads = node
        .metric(r#"llmtrace_rls_config_reloads_total{result="ok"}"#)
        .unwrap();
    send_hup(node.pid());
    wait_until(Duration::from_secs(5), "SIGHUP reloads", || {
        node.metric(r#"llmtrace_rls_config_reloads_total{result="ok"}"#) == Some(reloads + 1.0)
    });
}

/// SIGHUP to `pid`, by kill(1).
fn send_hup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn an_invalid_file_at_start_exits_2_naming_the_file_line_and_key() {
    let dir = TempDir::new("rls");
    let bad = dir.write(
        "bad.yaml",
        "domain: it\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: fortnight\n",
    );
    let failure = match rls_template(&bad).alone().try_start() {
        Err(f) => f,
        Ok(_) => panic!("a node started on an invalid rule file"),
    };
    assert_eq!(
        failure.status.and_then(|s| s.code()),
        Some(2),
        "{}",
        failure.stderr
    );
    for part in [
        "bad.yaml",
        "line 3",
        "descriptors[0]",
        "rate_limit.unit",
        "fortnight",
    ] {
        assert!(failure.stderr.contains(part), "{part}: {}", failure.stderr);
    }
}

#[test]
fn hostile_input_answers_errors_and_never_crashes() {
    use std::io::Write;
    let (_dir, mut node) = rls_node();
    let url = node.rls_url();
    // Garbage instead of an HTTP/2 preface, then a preface and garbage frames.
    let addr = url.trim_start_matches("http://");
    for junk in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), &[0xff; 64]].concat(),
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&junk);
    }
    let mut c = RlsClient::connect(&url);
    let invalid = |r: Result<RateLimitResponse, tonic::Status>| {
        let e = r.expect_err("an error");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    };
    invalid(c.call(request("", vec![descriptor(&[("user", "a")])])));
    invalid(c.call(request("it", vec![])));
    invalid(c.call(request("it", vec![descriptor(&[])])));
    invalid(c.call(request("it", vec![descriptor(&[("", "a")])])));
    invalid(c.call(request("it", vec![descriptor(&[("user", "a")]); 10_000])));
    invalid(c.call(request(
        "it",
        vec![with_override(descriptor(&[("user", "a")]), 3, 99)],
    )));
    // Invalid UTF-8 in an entry key, and bytes that are no message at all.
    let key = "user";
    let mut body = prost::Message::encode_to_vec(&request("it", vec![descriptor(&[(key, "a")])]));
    let at = body.windows(4).position(|w| w == key.as_bytes()).unwrap();
    body[at..at + 2].copy_from_slice(&[0xc3, 0x28]);
    assert!(c.call_raw(body).is_err());
    assert!(c.call_raw(vec![0xff; 100]).is_err());
    // Long values and odd bytes in values are valid: hashed bucket keys.
    let long = "v".repeat(10_000);
    assert_eq!(
        code(&ok(&mut c, "it", &[("user", long.as_str())])),
        Code::Ok
    );
    assert_eq!(
        code(&ok(&mut c, "it", &[("user", "a b|c=d\u{7f}é")])),
        Code::Ok
    );
    assert!(node.is_running(), "{}", node.stderr());
    assert_eq!(code(&ok(&mut c, "it", &[("user", "still")])), Code::Ok);
}
