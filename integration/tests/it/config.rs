//! Configuration: invalid values stop start-up with a message naming the key; precedence
//! is flag > environment (LLMTRACE_*) > TOML file > defaults.
//!
//! Effective limits are read from the `burst` / `requests_per_second` fields of a check's
//! answer (deterministic), then cross-checked by draining a fresh tenant at 1 rps.

use llmtrace_integration::{Node, NodeBuilder};
use std::time::Instant;

/// Starts `builder`, expecting it to fail; asserts a non-zero exit and that stderr names
/// one of `keys`.
fn assert_rejected(builder: NodeBuilder, keys: &[&str]) {
    let failure = match builder.try_start() {
        Ok(node) => panic!(
            "node started although its config is invalid (public {}); expected a message naming {keys:?}",
            node.public_url()
        ),
        Err(f) => f,
    };
    let status = failure.status.unwrap_or_else(|| {
        panic!(
            "node neither started nor exited; stderr:\n{}",
            failure.stderr
        )
    });
    assert!(
        !status.success(),
        "exit status {status} should be non-zero; stderr:\n{}",
        failure.stderr
    );
    assert!(
        keys.iter().any(|k| failure.stderr.contains(k)),
        "stderr should name {keys:?}:\n{}",
        failure.stderr
    );
}

/// Asserts the effective burst (and rps 1) for a fresh tenant, and that draining it
/// allows about that many checks.
fn assert_burst(node: &Node, tenant: &str, burst: u64) {
    let start = Instant::now();
    let first = node.check(tenant, 1);
    assert_eq!(first.status, 200, "{first}");
    assert_eq!(
        first.u64_field("burst"),
        burst,
        "effective burst_size: {first}"
    );
    assert_eq!(
        first.u64_field("requests_per_second"),
        1,
        "effective requests_per_second: {first}"
    );
    let drained = node.check_until_refused(tenant, burst + 10);
    let most = burst - 1 + start.elapsed().as_secs();
    assert!(
        drained.allowed + 1 >= burst && drained.allowed <= most,
        "{} more allowed after the first, burst {burst}",
        drained.allowed
    );
}

const SNAPSHOT_KEYS: &[&str] = &["snapshot_interval_ms", "snapshot-interval-ms"];

#[test]
fn zero_snapshot_interval_is_rejected() {
    assert_rejected(
        Node::builder().flag("snapshot-interval-ms", 0),
        SNAPSHOT_KEYS,
    );
    assert_rejected(
        Node::builder().env("LLMTRACE_SNAPSHOT_INTERVAL_MS", 0),
        SNAPSHOT_KEYS,
    );
    assert_rejected(
        Node::builder().config_toml("snapshot_interval_ms = 0\n"),
        SNAPSHOT_KEYS,
    );
}

#[test]
fn bad_toml_values_are_rejected() {
    assert_rejected(
        Node::builder().config_toml("[rate_limit]\nburst_size = -1\n"),
        &["burst_size"],
    );
    assert_rejected(
        Node::builder().config_toml("[rate_limit]\nrequests_per_second = \"fast\"\n"),
        &["requests_per_second"],
    );
    assert_rejected(
        Node::builder().config_toml(
            "[rate_limit.tenant_overrides.\"vip\"]\nrequests_per_second = 1\nburst_size = -5\n",
        ),
        &["burst_size"],
    );
    assert_rejected(
        Node::builder().config_toml("[rate_limit]\nenabled = \"maybe\"\n"),
        &["enabled"],
    );
}

#[test]
fn unknown_toml_keys_are_rejected() {
    assert_rejected(
        Node::builder().config_toml("bogus_key = 1\n"),
        &["bogus_key"],
    );
    assert_rejected(
        Node::builder().config_toml("[rate_limit]\nburst_sise = 5\n"),
        &["burst_sise"],
    );
}

#[test]
fn unparsable_toml_and_missing_file_are_rejected() {
    assert_rejected(
        Node::builder().config_toml("[rate_limit\nburst_size = 5\n"),
        &["rate_limit", "TOML", "toml", "line"],
    );
    assert_rejected(
        Node::builder().flag("config", "/nonexistent/llmtrace-node.toml"),
        &["/nonexistent/llmtrace-node.toml"],
    );
}

#[test]
fn bad_flags_and_env_are_rejected() {
    assert_rejected(
        Node::builder().flag("listen", "not-an-address"),
        &["listen"],
    );
    assert_rejected(
        Node::builder().flag("admin-listen", "127.0.0.1:99999"),
        &["admin-listen", "admin_listen"],
    );
    assert_rejected(
        Node::builder().flag("burst-size", "many"),
        &["burst-size", "burst_size"],
    );
    assert_rejected(
        Node::builder().env("LLMTRACE_BURST_SIZE", "many"),
        &["LLMTRACE_BURST_SIZE", "burst-size", "burst_size"],
    );
    assert_rejected(
        Node::builder().flag("rate-limit-enabled", "perhaps"),
        &["rate-limit-enabled", "rate_limit_enabled", "enabled"],
    );
}

#[test]
fn flag_beats_env_beats_file() {
    let file = "[rate_limit]\nrequests_per_second = 1\nburst_size = 5\n";
    let node = Node::builder()
        .config_toml(file)
        .env("LLMTRACE_BURST_SIZE", 3)
        .flag("burst-size", 2)
        .start();
    assert_burst(&node, "precedence-flag", 2);
}

#[test]
fn env_beats_file() {
    let file = "[rate_limit]\nrequests_per_second = 1\nburst_size = 5\n";
    let node = Node::builder()
        .config_toml(file)
        .env("LLMTRACE_BURST_SIZE", 3)
        .start();
    assert_burst(&node, "precedence-env", 3);
}

#[test]
fn file_beats_defaults() {
    let file = "node_id = \"from-file\"\n[rate_limit]\nrequests_per_second = 1\nburst_size = 5\n";
    let node = Node::builder().config_toml(file).start();
    assert_eq!(node.node_id, "from-file", "node_id from the TOML file");
    assert_burst(&node, "precedence-file", 5);
}

#[test]
fn node_id_precedence() {
    let file = "node_id = \"from-file\"\n";
    let node = Node::builder()
        .config_toml(file)
        .env("LLMTRACE_NODE_ID", "from-env")
        .start();
    assert_eq!(node.node_id, "from-env");
    drop(node);
    let node = Node::builder()
        .config_toml(file)
        .env("LLMTRACE_NODE_ID", "from-env")
        .flag("node-id", "from-flag")
        .start();
    assert_eq!(node.node_id, "from-flag");
}

#[test]
fn env_rps_and_enabled() {
    // rps from the environment: 1 (the file says 50).
    let file = "[rate_limit]\nrequests_per_second = 50\nburst_size = 4\n";
    let node = Node::builder()
        .config_toml(file)
        .env("LLMTRACE_REQUESTS_PER_SECOND", 1)
        .start();
    assert_burst(&node, "env-rps", 4);
    drop(node);

    // Disabled from the environment although the file enables limiting.
    let file = "[rate_limit]\nenabled = true\nrequests_per_second = 1\nburst_size = 1\n";
    let node = Node::builder()
        .config_toml(file)
        .env("LLMTRACE_RATE_LIMIT_ENABLED", "false")
        .start();
    for _ in 0..5 {
        let reply = node.check("env-disabled", 1);
        assert_eq!(reply.status, 200, "{reply}");
        assert_eq!(reply.json["unlimited"], true, "{reply}");
    }
}

#[test]
fn listeners_from_file_are_overridden_by_flags() {
    // The file names a port that is never bound; the flags (harness defaults, port 0) win.
    let file = "listen = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:1\"\n";
    let node = Node::builder().config_toml(file).start();
    assert!(!node.public_url().ends_with(":1"), "{}", node.public_url());
    assert!(!node.admin_url().ends_with(":1"), "{}", node.admin_url());
    assert_eq!(node.public().get("/healthz").status, 200);
}

#[test]
fn token_limit_and_proxy_settings_are_validated_from_every_source() {
    let check_exit_2 = |builder: NodeBuilder, key: &str| {
        let failure = match builder.try_start() {
            Ok(node) => panic!(
                "node started (public {}) despite bad {key}",
                node.public_url()
            ),
            Err(f) => f,
        };
        assert_eq!(
            failure.status.and_then(|s| s.code()),
            Some(2),
            "exit code 2 expected; stderr:\n{}",
            failure.stderr
        );
        assert!(
            failure.stderr.contains(key),
            "stderr should name {key}:\n{}",
            failure.stderr
        );
    };
    check_exit_2(
        Node::builder()
            .flag("tokens-per-minute", 5)
            .flag("token-burst-size", 0),
        "token_limit.burst_size",
    );
    check_exit_2(
        Node::builder().env("LLMTRACE_TOKEN_BURST_SIZE", 100_000_001),
        "token_limit.burst_size",
    );
    check_exit_2(
        Node::builder().config_toml(
            "[token_limit.tenant_overrides.\"vip\"]\ntokens_per_minute = 1\nburst_size = 0\n",
        ),
        "token_limit.tenant_overrides.\"vip\".burst_size",
    );
    check_exit_2(
        Node::builder().flag("proxy-listen", "127.0.0.1:0"),
        "proxy.upstream",
    );
    check_exit_2(
        Node::builder()
            .env("LLMTRACE_PROXY_UPSTREAM", "ftp://x")
            .flag("proxy-listen", "127.0.0.1:0"),
        "proxy.upstream",
    );
    check_exit_2(
        Node::builder().config_toml("[proxy]\nupstream_timeout_ms = 0\n"),
        "proxy.upstream_timeout_ms",
    );
    check_exit_2(
        Node::builder().flag("proxy-ca-file", "/nonexistent/ca.pem"),
        "proxy.ca_file",
    );
    // Flag beats environment beats file: the flag's valid burst wins over a
    // file and an environment that are invalid.
    let node = Node::builder()
        .config_toml("[token_limit]\ntokens_per_minute = 60\nburst_size = 0\n")
        .env("LLMTRACE_TOKEN_BURST_SIZE", 0)
        .flag("token-burst-size", 7)
        .start();
    let r = node.check_json(&serde_json::json!({"tenant_id": "t", "limit": "tokens", "cost": 7}));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json["burst"], 7, "{r}");
    assert_eq!(r.json["tokens_per_minute"], 60, "{r}");
}
