//! The operator dashboard (`GET /admin/ui`) in a real headless Chromium, driven
//! through ChromeDriver. Against a node without an admin token it opens at once.
//! Against a real 3-node cluster with a token, under load: the page asks
//! for the admin token, then shows the three members, their states and shares,
//! the ring agreement, live check rates computed from `/metrics`, and a tenant
//! lookup whose (hostile) tenant id is rendered as text, never as HTML.
//!
//! With named limits: the limits table, a chart of allowed and refused
//! checks per second for each limit, and the most refused keys merged over
//! the cluster's nodes.
//!
//! Skips with a printed reason when Chromium / ChromeDriver are not installed,
//! unless `LLMTRACE_REQUIRE_TOOLS` is set (scripts/test.sh installs them and sets it).

use llmtrace_integration::browser::{self, Browser};
use llmtrace_integration::scenario::{load_on, tenants_owned_by};
use llmtrace_integration::{node_help, tool_available, Cluster, Node};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "dashboard-test-token-0123456789";

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `data-*` attribute of every element matching `css`, parsed as f64.
fn numbers(page: &Browser, css: &str, attribute: &str) -> Vec<f64> {
    page.find_all(css)
        .iter()
        .filter_map(|e| page.attribute(e, attribute))
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// Polls until the `data-rate` of `#rate-<name>` is above zero; returns it.
fn wait_rate(page: &Browser, name: &str) -> f64 {
    let css = format!("#rate-{name}");
    let what = format!("a non-zero {name} rate on the dashboard");
    llmtrace_integration::wait_for(WAIT, &what, || {
        numbers(page, &css, "data-rate")
            .first()
            .copied()
            .filter(|r| *r > 0.0)
    })
}

/// Chromium and ChromeDriver are installed (else `test` is skipped, saying why).
fn chromium_available(test: &str) -> bool {
    tool_available(browser::find().map(|_| ()), test)
}

#[test]
fn dashboard_shows_the_cluster_in_chromium() {
    if !chromium_available("dashboard_shows_the_cluster_in_chromium") {
        return;
    }
    // The admin token exists once the admin API requires it; the page sends it
    // either way, and a wrong one is only refused when the node checks it.
    let token_checked = node_help().contains("--admin-token");
    let mut cluster = Cluster::builder().nodes(3).rate(20, 40);
    if token_checked {
        cluster = cluster.admin_token(TOKEN);
    }
    let cluster = cluster.start();
    let fingerprint = cluster.wait_converged(WAIT);
    let node0 = cluster.node(0);
    let ids = cluster.running_ids();

    // The page: HTML, a strict policy, no caching.
    let served = node0.admin().get("/admin/ui");
    assert_eq!(served.status, 200, "{served}");
    assert_eq!(
        served.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = served.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'sha256-")
            && csp.contains("connect-src 'self'")
            && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(served.header("x-content-type-options"), Some("nosniff"));

    // Load: a tenant owned by node 0 and one owned by node 1, sent to every node,
    // so node 0 decides checks, forwards some and receives some from its peers.
    let mut tenants = tenants_owned_by(node0, &ids[0], "dash-own", 1);
    tenants.extend(tenants_owned_by(node0, &ids[1], "dash-fwd", 1));
    let load = load_on(&cluster, &[0, 1, 2], &tenants);

    let page = Browser::start();
    page.set_size(1280, 1000);
    page.goto(&format!("{}/admin/ui", node0.admin_url()));
    page.wait_displayed("#token", WAIT);
    assert!(
        !page.is_displayed("#app"),
        "the dashboard shows before a token"
    );

    if token_checked {
        page.type_into("#token", "not-the-token");
        page.click("#login-submit");
        page.wait_text("#login-msg", WAIT, |t| t.contains("401"));
        page.wait_displayed("#token", WAIT);
    }
    page.type_into("#token", TOKEN);
    page.click("#login-submit");
    page.wait_displayed("#app", WAIT);

    // Members, states, shares, agreement.
    llmtrace_integration::wait_until(WAIT, "three member rows", || {
        page.find_all("tr.member").len() == 3
    });
    let mut shown: Vec<String> = page
        .texts(".member-id")
        .iter()
        .map(|t| t.trim_end_matches(" (this node)").to_string())
        .collect();
    shown.sort();
    assert_eq!(shown, ids, "member ids on the page");
    assert_eq!(
        page.texts(".member-state"),
        vec!["ready"; 3],
        "member states"
    );
    let shares = numbers(&page, ".share-value", "data-share");
    assert_eq!(shares.len(), 3, "{shares:?}");
    let sum: f64 = shares.iter().sum();
    assert!((sum - 1.0).abs() < 0.01, "shares {shares:?} sum to {sum}");
    assert!(shares.iter().all(|s| *s > 0.2), "unbalanced: {shares:?}");
    let shown_sum: f64 = page
        .text("#share-sum")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0.0);
    assert!(
        (shown_sum - 1.0).abs() < 0.01,
        "share sum shown: {shown_sum}"
    );
    assert_eq!(page.text("#agreement").as_deref(), Some("agreed"));
    assert_eq!(page.text("#fingerprint"), Some(fingerprint));
    assert_eq!(page.text("#self-node").as_deref(), Some(ids[0].as_str()));

    // Live rates from /metrics counter deltas.
    let decided = wait_rate(&page, "decided");
    let refused = wait_rate(&page, "refused");
    let forwarded = wait_rate(&page, "forwarded");
    let received = wait_rate(&page, "received");
    eprintln!(
        "dashboard rates on {}: decided {decided:.1}/s, refused {refused:.1}/s, \
         forwarded {forwarded:.1}/s, received {received:.1}/s",
        ids[0]
    );

    // Tenant lookup with a hostile id: shown as text, no element created from it.
    let hostile = "<i>x&amp;\"'y</i>";
    let owner = node0.admin_get_json(&format!("/admin/tenants/{}", encode(hostile)))["owner"]
        .as_str()
        .expect("owner")
        .to_string();
    page.type_into("#tenant", hostile);
    page.click("#lookup-submit");
    page.wait_text("#tenant-id", WAIT, |t| t == hostile);
    assert_eq!(page.text("#tenant-owner"), Some(owner.clone()));
    assert!(ids.contains(&owner), "owner {owner} is not a member");
    assert!(
        page.find("#tenant-result i").is_none(),
        "tenant id became HTML"
    );
    assert_eq!(
        page.execute("return document.querySelectorAll('i').length;"),
        0,
        "an <i> element was created from the tenant id"
    );
    let limits = page.texts("tr.tenant-limit td:first-child");
    assert!(limits.contains(&"requests".to_string()), "{limits:?}");

    // An invalid tenant id (inner space): the API's error is shown in place of
    // a result.
    page.type_into("#tenant", "not valid");
    page.click("#lookup-submit");
    let message = page.wait_text("#lookup-msg", WAIT, |t| t.contains("400"));
    assert!(message.contains("tenant_id"), "{message}");
    assert!(
        !page.is_displayed("#tenant-result"),
        "a stale result is shown"
    );

    // A tenant of the load, for the screenshot.
    page.type_into("#tenant", &tenants[0]);
    page.click("#lookup-submit");
    page.wait_text("#tenant-id", WAIT, |t| t == tenants[0]);

    // The token lives in this tab's session storage only.
    let storage = page.execute(
        "return [sessionStorage.getItem('llmtrace-admin-token'), localStorage.length, document.cookie];",
    );
    assert_eq!(storage, serde_json::json!([TOKEN, 0, ""]));

    let png = page.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "not a PNG"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target").join("dashboard.png");
    std::fs::write(&out, &png).expect("write target/dashboard.png");
    if std::env::var_os("LLMTRACE_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(root.join("docs").join("dashboard.png"), &png)
            .expect("write docs/dashboard.png");
    }

    // Forgetting the token returns to the prompt and clears it.
    page.click("#logout");
    page.wait_displayed("#token", WAIT);
    assert_eq!(
        page.execute("return sessionStorage.getItem('llmtrace-admin-token');"),
        serde_json::Value::Null
    );

    load.stop().assert_no_failures();
}

/// A node without an admin token (the loopback default, as after `cargo run`):
/// the dashboard opens at once, asking for no token and keeping none.
#[test]
fn dashboard_opens_without_a_token_when_the_node_has_none() {
    if !chromium_available("dashboard_opens_without_a_token_when_the_node_has_none") {
        return;
    }
    let node = Node::builder().start();
    node.wait_ready();
    let page = Browser::start();
    page.goto(&format!("{}/admin/ui", node.admin_url()));
    page.wait_displayed("#app", WAIT);
    assert!(
        !page.is_displayed("#login"),
        "the token prompt shows for a node without a token"
    );
    assert!(
        !page.is_displayed("#logout"),
        "a token to forget is offered"
    );
    page.wait_text("#self-node", WAIT, |t| t == node.node_id);
    llmtrace_integration::wait_until(WAIT, "one member row", || {
        page.find_all("tr.member").len() == 1
    });
    assert_eq!(page.texts(".member-state"), vec!["ready"], "member state");
    let storage =
        page.execute("return [sessionStorage.length, localStorage.length, document.cookie];");
    assert_eq!(storage, serde_json::json!([0, 0, ""]));
}

/// A token bucket refilling one unit an hour: past its burst of 2, every
/// check of a key is refused, so the counts are exact.
const LIMITS: &str = r#"
[limits.per_key]
rate = 1
per = "1h"
burst = 2

[limits.rollout]
rate = 1
per = "1h"
burst = 1
shadow = true
"#;

/// The first key `{prefix}-{i}` of `per_key` whose owner `is_wanted`.
fn key_owned(node: &Node, prefix: &str, is_wanted: impl Fn(&str) -> bool) -> String {
    (0..200)
        .map(|i| format!("{prefix}-{i}"))
        .find(|key| {
            let report =
                node.admin_get_json(&format!("/admin/limits/per_key/keys/{}", encode(key)));
            is_wanted(report["owner"].as_str().expect("owner"))
        })
        .expect("200 keys, none owned where wanted")
}

/// The `data-*` attribute of the chart row of `limit`, as f64.
fn chart_value(page: &Browser, limit: &str, attribute: &str) -> Option<f64> {
    numbers(
        page,
        &format!(".limit-chart[data-limit='{limit}']"),
        attribute,
    )
    .first()
    .copied()
}

#[test]
fn dashboard_shows_limits_and_the_most_refused_keys() {
    if !chromium_available("dashboard_shows_limits_and_the_most_refused_keys") {
        return;
    }
    let cluster = Cluster::builder()
        .nodes(3)
        .template(Node::builder().config_toml(LIMITS))
        .start();
    cluster.wait_converged(WAIT);
    let node0 = cluster.node(0);
    // Two keys refused on different owners: `hot` on the node serving the
    // page (its chart shows the refusals), `warm` (HTML, shown as text) on
    // a peer (its refusals reach the page through the merge).
    let hot = key_owned(node0, "hot", |o| o == node0.node_id);
    let warm = key_owned(node0, "<b>warm</b>", |o| o != node0.node_id);

    let page = Browser::start();
    page.set_size(1280, 1400);
    page.goto(&format!("{}/admin/ui", node0.admin_url()));
    page.wait_displayed("#app", WAIT);
    page.wait_text("tr.limit .limit-numbers", WAIT, |t| !t.is_empty());
    let names = page.texts("tr.limit .limit-name");
    assert!(
        names.contains(&"per_key".to_string()) && names.contains(&"requests".to_string()),
        "{names:?}"
    );
    let row = names.iter().position(|n| n == "per_key").unwrap();
    assert_eq!(page.texts("tr.limit .limit-kind")[row], "token_bucket");
    let rollout = names.iter().position(|n| n == "rollout").unwrap();
    assert_eq!(
        page.texts("tr.limit .limit-kind")[rollout],
        "token_bucket (shadow)"
    );
    assert_eq!(
        page.texts("tr.limit .limit-numbers")[row],
        "1 per 1h, burst 2"
    );

    // Five rounds, each sent through another node and seen by one poll of
    // the page: `hot` twice, `warm` once, and five fresh keys (allowed).
    let check = |node: usize, key: &str| {
        let body = json!({"descriptors": [{"limit": "per_key", "key": key}]});
        cluster.node(node).check_json(&body).status
    };
    let mut statuses = Vec::new();
    for round in 0..5 {
        let points = chart_value(&page, "per_key", "data-points").unwrap_or(0.0);
        for key in [hot.as_str(), hot.as_str(), warm.as_str()] {
            statuses.push((key.to_string(), check(round % 3, key)));
        }
        for i in 0..5 {
            assert_eq!(check((round + i) % 3, &format!("fresh-{round}-{i}")), 200);
        }
        llmtrace_integration::wait_until(WAIT, "a new point on the per_key chart", || {
            chart_value(&page, "per_key", "data-points").unwrap_or(0.0) > points
        });
    }
    let refused = |key: &str| {
        statuses
            .iter()
            .filter(|(k, s)| k == key && *s == 429)
            .count()
    };
    assert_eq!((refused(&hot), refused(&warm)), (8, 3), "{statuses:?}");

    // The chart of this node's decisions shows refusals of per_key.
    let peak = chart_value(&page, "per_key", "data-peak-refused").unwrap_or(0.0);
    assert!(peak > 0.0, "no refusals on the per_key chart");
    let line = page
        .find(".limit-chart[data-limit='per_key'] polyline.refused")
        .and_then(|e| page.attribute(&e, "points"))
        .unwrap_or_default();
    assert!(line.split(' ').count() >= 5, "refused line: {line:?}");

    // The most refused keys, merged over the owners, in order, as text.
    llmtrace_integration::wait_until(WAIT, "both refused keys listed", || {
        page.texts("tr.top-refused .top-key") == [hot.clone(), warm.clone()]
    });
    assert_eq!(page.texts("tr.top-refused .top-count"), ["8", "3"]);
    assert_eq!(
        page.texts("tr.top-refused .top-limit"),
        ["per_key", "per_key"]
    );
    assert!(!page.is_displayed("#top-partial"), "marked partial");
    assert_eq!(
        page.execute("return document.querySelectorAll('b').length;"),
        0,
        "an element was created from a key"
    );
    // The same answer from another node.
    let top = cluster.node(2).admin_get_json("/admin/limits/top-refused");
    assert_eq!(top["partial"], false, "{top}");
    assert_eq!(
        top["keys"],
        json!([
            {"limit": "per_key", "key": hot, "count": 8, "error": 0},
            {"limit": "per_key", "key": warm, "count": 3, "error": 0},
        ])
    );

    // A limit in shadow mode: its refusals are charted as not enforced.
    let shadow = json!({"descriptors": [{"limit": "rollout", "key": "r"}]});
    for _ in 0..2 {
        assert_eq!(node0.check_json(&shadow).status, 200);
    }
    page.wait_text(
        ".limit-chart[data-limit='rollout'] .chart-refused",
        WAIT,
        |t| t.starts_with("shadow-refused (not enforced)"),
    );

    let png = page.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::write(root.join("target").join("dashboard-limits.png"), &png)
        .expect("write target/dashboard-limits.png");
    if std::env::var_os("LLMTRACE_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(root.join("docs").join("dashboard-limits.png"), &png)
            .expect("write docs/dashboard-limits.png");
    }
}
