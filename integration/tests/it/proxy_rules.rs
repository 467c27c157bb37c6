//! Gateway rules on real nodes, driven by the official `openai` Python
//! client (`integration/py/gateway_client.py`), every call round robin over
//! 3 nodes: per-model TPM, a team's daily quota shared by two keys, an org's
//! spend budget priced from usage (cached tokens cheaper), in-flight caps
//! held for whole streams (released at the end and on a client's
//! disconnect), shadow mode, the runtime key table (admin API, spread by
//! gossip), and no lease or reservation leaked over 1,000 calls with
//! disconnects and upstream failures. The official `anthropic` client
//! checks the same rules on Anthropic's Messages API.

use std::time::{Duration, Instant};

use llmtrace_integration::gateway::{gateway_toml, LimitBlock, RuleItem};
use llmtrace_integration::{wait_until, Cluster, Node, RedisServer, Stub};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn gateway(args: &[&str]) -> Value {
    llmtrace_integration::run_python("gateway_client.py", args)
}

/// The key id (tenant) the proxy derives from an API key.
fn key_id(key: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes()).to_string()
}

/// Nothing refills while a test runs (1 unit an hour, or quotas), so every
/// count is exact. Each chat reserves 9 prompt + 100 output tokens and
/// settles at the stub's usage, 40 + 60.
const LIMITS: &[LimitBlock] = &[
    (
        "tpm_model",
        &[("rate", "1"), ("per", "\"1h\""), ("burst", "100000")],
    ),
    (
        "team_daily",
        &[
            ("kind", "\"quota\""),
            ("amount", "1000"),
            ("period", "\"1d\""),
        ],
    ),
    (
        "org_spend",
        &[
            ("kind", "\"quota\""),
            ("amount", "5000"),
            ("period", "\"30d\""),
        ],
    ),
    ("inflight", &[("kind", "\"concurrency\""), ("max", "2")]),
    (
        "new_cap",
        &[
            ("rate", "1"),
            ("per", "\"1h\""),
            ("burst", "2"),
            ("shadow", "true"),
        ],
    ),
];

const RULES: &[RuleItem] = &[
    ("tpm_model", "{key}/{model}", Some("tokens")),
    ("team_daily", "{team}", Some("tokens")),
    ("org_spend", "{org}", Some("usd_micros")),
    ("inflight", "{key}", None),
    ("new_cap", "{header:x-rollout}", None),
];

fn config() -> String {
    let mut c = gateway_toml(LIMITS, RULES);
    c += &format!(
        "\n[limits.tpm_model.overrides.\"{}/gpt-4o\"]\nburst = 500\n",
        key_id("sk-tpm")
    );
    for (key, team, org) in [
        ("sk-team-a", "t1", ""),
        ("sk-team-b", "t1", ""),
        ("sk-org-plain", "", "o-plain"),
        ("sk-org-cached", "", "o-cached"),
    ] {
        c += &format!("\n[proxy.keys.\"{}\"]\n", key_id(key));
        if !team.is_empty() {
            c += &format!("team = \"{team}\"\n");
        }
        if !org.is_empty() {
            c += &format!("org = \"{org}\"\n");
        }
    }
    c
}

fn cluster(stub: &Stub, toml: &str) -> Cluster {
    Cluster::builder()
        .nodes(3)
        .template(Node::builder().config_toml(toml))
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", stub.url())
        .start()
}

fn urls(cluster: &Cluster) -> String {
    let urls: Vec<String> = (0..3).map(|i| cluster.node(i).proxy_url()).collect();
    urls.join(",")
}

fn remaining(node: &Node, limit: &str, key: &str) -> Option<u64> {
    node.try_admin_get_json(&format!("/admin/limits/{limit}/keys/{key}"))?["remaining"].as_u64()
}

fn wait_remaining(node: &Node, limit: &str, key: &str, want: u64) {
    wait_until(WAIT, &format!("{limit}/{key} at {want}"), || {
        remaining(node, limit, key) == Some(want)
    });
}

/// The same rules hold Anthropic Messages calls, driven by the official
/// `anthropic` client: a per-model token limit refuses one Claude model in
/// Anthropic's shape (`RateLimitError`, naming the limit, with
/// `anthropic-ratelimit-tokens-*`) while the same key's other model passes.
#[test]
fn gateway_rules_hold_anthropic_calls() {
    let stub = Stub::start();
    let key = "sk-claude";
    let mut toml = gateway_toml(
        &LIMITS[..1],
        &[("tpm_model", "{key}/{model}", Some("tokens"))],
    );
    toml += &format!(
        "\n[limits.tpm_model.overrides.\"{}/claude-sonnet-4-5\"]\nburst = 500\n",
        key_id(key)
    );
    let cluster = cluster(&stub, &toml);
    let urls = urls(&cluster);
    let anthropic = |args: &[&str]| llmtrace_integration::run_python("anthropic_client.py", args);
    // Each call reserves its prompt + 100 and settles at the stub's 40 + 60:
    // 500 tokens admit 4 calls (100 left, less than a reservation).
    let out = anthropic(&["until-limited", &urls, key, "20", "claude-sonnet-4-5"]);
    assert_eq!(out["allowed"], 4, "{out}");
    assert_eq!(out["status"], 429, "{out}");
    assert_eq!(out["error"]["error"]["type"], "rate_limit_error", "{out}");
    let message = out["error"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("tpm_model (limit 500"), "{message}");
    assert_eq!(
        out["headers"]["anthropic-ratelimit-tokens-limit"], "500",
        "{out}"
    );
    assert!(out["headers"]["retry-after"].as_str().is_some(), "{out}");
    let out = anthropic(&["until-limited", &urls, key, "3", "claude-haiku-4-5"]);
    assert_eq!(out["allowed"], 3, "the other model passes: {out}");
    // The key holds a `/`: escaped in the admin path.
    let bucket = format!("{}%2Fclaude-sonnet-4-5", key_id(key));
    wait_remaining(cluster.node(0), "tpm_model", &bucket, 100);
}

#[test]
fn gateway_rules_are_exact_across_three_nodes() {
    let stub = Stub::start();
    let cluster = cluster(&stub, &config());
    let urls = urls(&cluster);

    // Per-model TPM: 500 tokens of gpt-4o admit 4 calls (400 settled, 100
    // left < 109); the same key's gpt-4o-mini still passes.
    let out = gateway(&["until-limited", &urls, "sk-tpm", "gpt-4o", "20"]);
    assert_eq!(out["allowed"], 4, "{out}");
    assert_eq!(out["status"], 429, "{out}");
    assert_eq!(out["error"]["code"], "tpm_model", "{out}");
    let message = out["error"]["message"].as_str().unwrap();
    assert!(message.contains("tpm_model (limit 500"), "{message}");
    let h = &out["headers"];
    assert_eq!(h["x-ratelimit-limit-tokens"], "500", "{out}");
    assert!(h["retry-after"].as_str().is_some(), "{out}");
    let out = gateway(&["calls", &urls, "sk-tpm", "gpt-4o-mini", "3"]);
    for call in out["calls"].as_array().unwrap() {
        assert_eq!(call["status"], 200, "{out}");
    }

    // A team's daily tokens, shared by two keys: 1000 admit 9 calls.
    let out = gateway(&[
        "until-limited",
        &urls,
        "sk-team-a,sk-team-b",
        "gpt-4o",
        "20",
    ]);
    assert_eq!(out["allowed"], 9, "{out}");
    assert_eq!(out["error"]["code"], "team_daily", "{out}");
    wait_remaining(cluster.node(0), "team_daily", "t1", 100);

    // An org's spend: 5000 µ$; a call reserves 9 × 2.5 + 100 × 10 = 1023
    // and settles at 40 × 2.5 + 60 × 10 = 700, or 40 × 1.25 + 600 = 650
    // when its prompt was cached: 6 calls, or 7.
    let out = gateway(&["until-limited", &urls, "sk-org-plain", "gpt-4o", "20"]);
    assert_eq!(out["allowed"], 6, "{out}");
    assert_eq!(out["error"]["code"], "org_spend", "{out}");
    wait_remaining(cluster.node(1), "org_spend", "o-plain", 5000 - 6 * 700);
    let out = gateway(&[
        "until-limited",
        &urls,
        "sk-org-cached",
        "gpt-4o",
        "20",
        "40",
    ]);
    assert_eq!(out["allowed"], 7, "{out}");
    wait_remaining(cluster.node(2), "org_spend", "o-cached", 5000 - 7 * 650);

    // Shadow mode: `new_cap` holds 2, yet all 4 calls pass; the last two
    // say it would have refused.
    let out = gateway(&["calls", &urls, "sk-shadow", "gpt-4o", "4", "x-rollout=r1"]);
    let calls = out["calls"].as_array().unwrap();
    let shadow: Vec<&Value> = calls.iter().map(|c| &c["shadow"]).collect();
    assert!(calls.iter().all(|c| c["status"] == 200), "{out}");
    assert_eq!(
        shadow,
        [
            &Value::Null,
            &Value::Null,
            &json!("new_cap"),
            &json!("new_cap")
        ]
    );
    // The same on POST /v1/check descriptors.
    let body = json!({"descriptors": [{"limit": "new_cap", "key": "c1"}]});
    for i in 0..3 {
        let reply = cluster.node(i).check_json(&body);
        assert_eq!(reply.status, 200, "{reply}");
        let over = i == 2;
        assert_eq!(
            reply.header("x-llmtrace-shadow-refused"),
            over.then_some("new_cap"),
            "{reply}"
        );
        assert_eq!(reply.json["allowed"], true, "{reply}");
        assert_eq!(
            reply.json["descriptors"][0]["shadow_refused"],
            if over { json!(true) } else { Value::Null },
            "{reply}"
        );
    }
    let counted: f64 = (0..3)
        .map(|i| {
            cluster
                .node(i)
                .metric("llmtrace_shadow_refused_total{limit=\"new_cap\"}")
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(counted, 3.0);
}

#[test]
fn inflight_leases_last_the_whole_stream() {
    let stub = Stub::start();
    let cluster = cluster(&stub, &config());
    let out = gateway(&["inflight", &urls(&cluster), "sk-inflight", &stub.url()]);
    // Two streams held: a third call is refused by the in-flight cap.
    assert_eq!(out["third"]["status"], 429, "{out}");
    assert_eq!(out["third"]["error"]["code"], "inflight", "{out}");
    assert!(
        out["after_end_tries"].is_u64(),
        "no call passed after a stream ended: {out}"
    );
    assert_eq!(out["while_held"]["status"], 429, "{out}");
    assert!(
        out["after_disconnect_tries"].is_u64(),
        "no call passed after a client went away: {out}"
    );
    // Every lease back.
    wait_remaining(cluster.node(0), "inflight", &key_id("sk-inflight"), 2);
}

#[test]
fn the_runtime_key_table_spreads_to_every_node() {
    let stub = Stub::start();
    let cluster = cluster(&stub, &config());
    let urls = urls(&cluster);
    let id = key_id("sk-runtime");
    let path = format!("/admin/proxy/keys/{id}");
    let reply = cluster
        .node(0)
        .admin()
        .put_json(&path, &json!({"team": "t-runtime"}));
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.json["team"], "t-runtime", "{reply}");
    let bad = cluster
        .node(0)
        .admin()
        .put_json(&path, &json!({"team": "a b"}));
    bad.assert_error(400, "team");
    for i in 0..3 {
        wait_until(WAIT, "the entry reaches every node", || {
            let keys = cluster.node(i).admin_get_json("/admin/proxy/keys");
            keys["keys"]
                .as_array()
                .is_some_and(|k| k.iter().any(|e| e["key_id"] == id.as_str()))
        });
    }
    // The key now spends its team's daily tokens, whichever node it calls.
    let out = gateway(&["until-limited", &urls, "sk-runtime", "gpt-4o", "20"]);
    assert_eq!(out["allowed"], 9, "{out}");
    assert_eq!(out["error"]["code"], "team_daily", "{out}");
    // Deleted: no team, the team rule is skipped and calls pass again.
    let reply = cluster.node(1).admin().delete(&path);
    assert_eq!(reply.json["deleted"], true, "{reply}");
    for i in 0..3 {
        wait_until(WAIT, "the deletion reaches every node", || {
            let keys = cluster.node(i).admin_get_json("/admin/proxy/keys");
            keys["keys"].as_array().is_some_and(|k| k.is_empty())
        });
    }
    let out = gateway(&["calls", &urls, "sk-runtime", "gpt-4o", "3"]);
    for call in out["calls"].as_array().unwrap() {
        assert_eq!(call["status"], 200, "{out}");
    }
}

#[test]
fn the_runtime_key_table_survives_a_full_restart_with_redis() {
    let redis = RedisServer::start();
    let stub = Stub::start();
    let toml = config();
    let start = || {
        Cluster::builder()
            .nodes(3)
            .template(Node::builder().config_toml(&toml))
            .flag("redis-url", redis.url())
            .flag("proxy-listen", "127.0.0.1:0")
            .flag("proxy-upstream", stub.url())
            .start()
    };
    let mut cluster = start();
    let id = key_id("sk-persisted");
    let reply = cluster.node(2).admin().put_json(
        &format!("/admin/proxy/keys/{id}"),
        &json!({"org": "o-saved"}),
    );
    assert_eq!(reply.json["persisted"], true, "{reply}");
    for i in 0..3 {
        assert!(cluster.terminate(i).success());
    }
    drop(cluster);
    cluster = start();
    for i in 0..3 {
        let keys = cluster.node(i).admin_get_json("/admin/proxy/keys");
        assert_eq!(
            keys["keys"],
            json!([{"key_id": id, "team": null, "org": "o-saved"}]),
            "node {i}"
        );
    }
    // The org is charged from the restored entry: 5000 µ$ admit 6 calls.
    let out = gateway(&[
        "until-limited",
        &urls(&cluster),
        "sk-persisted",
        "gpt-4o",
        "20",
    ]);
    assert_eq!(out["allowed"], 6, "{out}");
    assert_eq!(out["error"]["code"], "org_spend", "{out}");
}

const LEAK_LIMITS: &[LimitBlock] = &[
    (
        "daily_tokens",
        &[
            ("kind", "\"quota\""),
            ("amount", "1000000"),
            ("period", "\"1d\""),
        ],
    ),
    ("inflight", &[("kind", "\"concurrency\""), ("max", "4")]),
];

#[test]
fn no_lease_or_reservation_leaks_over_a_thousand_calls() {
    let stub = Stub::start_unrecorded();
    let rules = [
        ("daily_tokens", "{key}", Some("tokens")),
        ("inflight", "{key}", None),
    ];
    let cluster = cluster(&stub, &gateway_toml(LEAK_LIMITS, &rules));
    let started = Instant::now();
    let out = gateway(&["leak", &urls(&cluster), "sk-leak", &stub.url(), "1000", "7"]);
    let total: u64 = ["ok", "disconnected", "failed", "refused"]
        .iter()
        .map(|k| out[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1000, "{out}");
    assert!(out["disconnected"].as_u64().unwrap() > 200, "{out}");
    assert!(out["failed"].as_u64().unwrap() > 100, "{out}");
    assert!(started.elapsed() < Duration::from_secs(300), "{out}");
    // Every lease returned; every reservation settled: a failed call is
    // refunded whole and a completed one settles at its usage (100), so the
    // key's quota is spent by exactly 100 per completed call; a cut stream
    // settles at its prompt and what was streamed (at least the prompt).
    let (tenant, cut) = (key_id("sk-leak"), key_id("sk-leak-d"));
    for key in [&tenant, &cut] {
        wait_remaining(cluster.node(0), "inflight", key, 4);
    }
    let ok = out["ok"].as_u64().unwrap();
    wait_remaining(
        cluster.node(1),
        "daily_tokens",
        &tenant,
        1_000_000 - 100 * ok,
    );
    let cut_spent = 1_000_000 - remaining(cluster.node(2), "daily_tokens", &cut).unwrap();
    assert!(
        cut_spent >= 9 * out["disconnected"].as_u64().unwrap(),
        "{cut_spent}: {out}"
    );
    for i in 0..3 {
        let node = cluster.node(i);
        assert_eq!(
            node.metric("llmtrace_proxy_reconcile_errors_total"),
            Some(0.0)
        );
    }
}
