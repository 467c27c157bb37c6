//! Tests of the node's settings: defaults, precedence, keys named in errors.

use super::*;
use crate::flags::given;

fn file(text: &str) -> NodeSettings {
    NodeSettings::parse(text).expect("valid toml")
}

/// The file `text` with `flags` laid over it, resolved.
fn resolve(text: &str, flags: &[&str]) -> Result<NodeConfig, ConfigError> {
    NodeConfig::resolve(given(file(text), flags))
}

#[test]
fn defaults() {
    let c = NodeConfig::resolve(NodeSettings::default()).unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(c.snapshot_interval_ms, DEFAULT_SNAPSHOT_INTERVAL_MS);
    assert!(c.redis.is_none());
    assert!(c.shards >= 1);
    assert_eq!(c.rate_limit, RateLimitConfig::default());
    assert_eq!(uuid::Uuid::parse_str(&c.node_id).map(|_| ()), Ok(()));
    assert!(!c.cluster.enabled);
    assert_eq!(c.shutdown_grace_ms, DEFAULT_SHUTDOWN_GRACE_MS);
}

#[test]
fn shutdown_grace_from_every_source_and_in_range() {
    assert_eq!(
        resolve("shutdown_grace_ms = 250", &[])
            .unwrap()
            .shutdown_grace_ms,
        250
    );
    let c = resolve("shutdown_grace_ms = 250", &["--shutdown-grace-ms", "0"]).unwrap();
    assert_eq!(c.shutdown_grace_ms, 0, "flag beats file; 0 disables");
    let err = resolve("", &["--shutdown-grace-ms", "60001"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("shutdown_grace_ms"), "{err}");
}

#[test]
fn body_timeout_and_max_connections_from_every_source_and_in_range() {
    let c = resolve("", &[]).unwrap();
    assert_eq!(c.body_timeout_ms, DEFAULT_BODY_TIMEOUT_MS);
    assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(
        c.proxy.body_idle_timeout_ms,
        crate::proxy::DEFAULT_BODY_IDLE_TIMEOUT_MS
    );
    let text = "body_timeout_ms = 700\nmax_connections = 50\n[proxy]\nbody_idle_timeout_ms = 900";
    let c = resolve(text, &[]).unwrap();
    assert_eq!(
        (
            c.body_timeout_ms,
            c.max_connections,
            c.proxy.body_idle_timeout_ms
        ),
        (700, 50, 900)
    );
    let c = resolve(text, &["--body-timeout-ms", "1", "--max-connections", "2"]).unwrap();
    assert_eq!(
        (c.body_timeout_ms, c.max_connections),
        (1, 2),
        "flags beat file"
    );
    for (flag, key) in [
        ("--body-timeout-ms", "body_timeout_ms"),
        ("--max-connections", "max_connections"),
        ("--proxy-body-idle-timeout-ms", "proxy.body_idle_timeout_ms"),
    ] {
        let err = resolve("", &[flag, "0"]).unwrap_err().to_string();
        assert!(err.contains(key), "{flag} 0: {err}");
    }
}

#[test]
fn overrides_beat_file_beat_defaults() {
    let c = resolve(
        "listen = \"127.0.0.1:1\"\nsnapshot_interval_ms = 7\n\
         [rate_limit]\nrequests_per_second = 3\nburst_size = 9\n",
        &["--snapshot-interval-ms", "8", "--burst-size", "4"],
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:1");
    assert_eq!(c.snapshot_interval_ms, 8);
    assert_eq!(c.rate_limit.requests_per_second, 3);
    assert_eq!(c.rate_limit.burst_size, 4);
}

#[test]
fn seed_block_with_overrides_parses() {
    let c = resolve(
        "[rate_limit]\nenabled = true\nrequests_per_second = 100\nburst_size = 200\n\
         window_seconds = 60\n\
         [rate_limit.tenant_overrides.\"acme\"]\nrequests_per_second = 500\nburst_size = 1000\n",
        &["--burst-size", "300"],
    )
    .unwrap();
    assert_eq!(c.rate_limit.tenant_overrides["acme"].burst_size, 1000);
    assert_eq!(c.rate_limit.burst_size, 300);
    assert_eq!(c.rate_limit.warnings().len(), 1);
}

#[test]
fn token_limit_block_and_precedence() {
    let c = resolve(
        "[token_limit]\ntokens_per_minute = 600\nburst_size = 50\n\
         [token_limit.tenant_overrides.\"acme\"]\ntokens_per_minute = 6\nburst_size = 7\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\n",
        &["--token-burst-size", "40"],
    )
    .unwrap();
    assert_eq!(c.rate_limit.tokens.tokens_per_minute, 600);
    assert_eq!(c.rate_limit.tokens.burst_size, 40);
    assert_eq!(c.rate_limit.tokens.tenant_overrides["acme"].burst_size, 7);
    assert!(c.proxy.listen.is_some());
    let err = resolve(
        "[token_limit]\ntokens_per_minute = 1\nburst_size = 0\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("token_limit.burst_size"), "{err}");
    let err = NodeSettings::parse("[token_limit]\ntokens_per_second = 1").unwrap_err();
    assert!(err.contains("tokens_per_second"), "{err}");
}

#[test]
fn invalid_values_name_their_key() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("listen = \"nope\"", &[], "listen"),
        ("", &["--listen", "nope"], "listen"),
        ("admin_listen = \"1.2.3.4\"", &[], "admin_listen"),
        ("snapshot_interval_ms = 0", &[], "snapshot_interval_ms"),
        ("redis_url = \"http://x\"", &[], "redis_url"),
        ("node_id = \"a b\"", &[], "node_id"),
        ("snapshot_mode = \"write-through\"", &[], "snapshot_mode"),
        ("admin_listen = \"0.0.0.0:9090\"", &[], "admin_token"),
        ("admin_token = \"has space\"", &[], "admin_token"),
        ("", &["--shards", "0"], "shards"),
        ("", &["--burst-size", "0"], "rate_limit.burst_size"),
        ("", &["--cluster-listen", "nope"], "cluster.listen"),
        ("", &["--proxy-listen", "nope"], "proxy.listen"),
    ];
    for (text, flags, key) in cases {
        let err = resolve(text, flags).unwrap_err().to_string();
        assert!(err.contains(key), "{err} should name {key}");
    }
}

#[test]
fn snapshot_mode_defaults_to_write_behind_and_parses_from_every_source() {
    let c = resolve("", &[]).unwrap();
    assert_eq!(c.snapshot_mode, SnapshotMode::WriteBehind);
    let through = "redis_url = \"redis://127.0.0.1:1\"\nsnapshot_mode = \"write-through\"";
    let c = resolve(through, &[]).unwrap();
    assert_eq!(c.snapshot_mode, SnapshotMode::WriteThrough);
    let c = resolve(through, &["--snapshot-mode", "write-behind"]).unwrap();
    assert_eq!(
        c.snapshot_mode,
        SnapshotMode::WriteBehind,
        "flag beats file"
    );
}

#[test]
fn admin_token_precedence_and_loopback_rule() {
    let f = "admin_token = \"from-file\"\nadmin_listen = \"0.0.0.0:9090\"";
    let c = resolve(f, &[]).unwrap();
    assert_eq!(c.admin_token.as_deref(), Some("from-file"));
    let c = resolve(f, &["--admin-token", "from-flag"]).unwrap();
    assert_eq!(c.admin_token.as_deref(), Some("from-flag"));
    // Loopback (v4 and v6) needs no token.
    for addr in ["127.0.0.1:9090", "[::1]:9090"] {
        assert!(
            resolve(&format!("admin_listen = \"{addr}\""), &[]).is_ok(),
            "{addr}"
        );
    }
    let err = resolve("admin_listen = \"[::]:9090\"", &[]).unwrap_err();
    assert!(err.to_string().contains("admin_token"), "{err}");
}

#[test]
fn unknown_and_mistyped_keys_are_refused_by_name() {
    for (text, key) in [
        ("bogus = 1", "bogus"),
        ("[rate_limit]\nburst_size = -1", "burst_size"),
        ("[rate_limit]\nburts_size = 1", "burts_size"),
        ("[cluster]\nlisten_addr = \"x\"", "listen_addr"),
        ("[proxy]\nupstream_url = \"x\"", "upstream_url"),
        ("log_format = \"xml\"", "log_format"),
    ] {
        let err = NodeSettings::parse(text).unwrap_err();
        assert!(err.contains(key), "{err}");
    }
}
