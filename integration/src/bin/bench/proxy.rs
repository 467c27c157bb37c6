//! `proxy`: the latency the proxy mode adds. The stub OpenAI-compatible upstream of the
//! integration tests (in this process, a thread per connection, nothing recorded) and a
//! node proxying to it with every call admitted; wrk (`proxy.lua`) against the stub
//! directly, then through the proxy (the default `requests` + `tokens` charge), then
//! through a node with five gateway rules per call ([`five_rules`]); the difference of
//! their p50 / p99.

use crate::procfs::load_note;
use crate::setup::Bench;
use crate::summary::{self, ms, node_health};
use crate::wrk::{measure, Measured};
use llmtrace_integration::gateway::gateway_toml;
use llmtrace_integration::Stub;

fn run_wrk(bench: &Bench, tag: &str, url: &str) -> Measured {
    let m = measure(bench, tag, &[bench.proxy_load(url)], &[], || {});
    m.print();
    m
}

/// Five rules per call, every call admitted: a key's requests, its tokens per model, a
/// team's and an org's shared buckets (one key for every call: the contended case), the
/// org's spend priced in micro-dollars, and a lease held for the whole call.
pub fn five_rules() -> String {
    gateway_toml(
        &[
            ("rpm", &[("rate", "1000000"), ("burst", "1000000000")]),
            (
                "tpm_model",
                &[
                    ("rate", "100000000"),
                    ("per", "\"1m\""),
                    ("burst", "100000000"),
                ],
            ),
            (
                "team_daily",
                &[
                    ("kind", "\"quota\""),
                    ("amount", "1000000000000"),
                    ("period", "\"1d\""),
                ],
            ),
            (
                "org_spend",
                &[
                    ("kind", "\"quota\""),
                    ("amount", "1000000000000000"),
                    ("period", "\"30d\""),
                ],
            ),
            ("inflight", &[("kind", "\"concurrency\""), ("max", "10000")]),
        ],
        &[
            ("rpm", "{key}", None),
            ("tpm_model", "{key}/{model}", Some("tokens")),
            ("team_daily", "team-{model}", Some("tokens")),
            ("org_spend", "org-{model}", Some("usd_micros")),
            ("inflight", "{key}", None),
        ],
    )
}

/// Runs wrk through a node started from `builder`.
fn proxied(bench: &Bench, tag: &str, builder: llmtrace_integration::NodeBuilder) -> Measured {
    let mut node = bench.start_node(tag, builder);
    let proxy_url = node.proxy_url();
    println!("-- {tag}: {proxy_url}");
    let m = run_wrk(bench, tag, &proxy_url);
    summary::metrics_of(
        &node,
        &[
            "llmtrace_proxy_requests_total",
            "llmtrace_proxy_tokens_total",
        ],
        "",
    );
    node_health(bench, tag, &mut node);
    m
}

fn print_added(name: &str, d: &crate::wrk::WrkResult, p: &crate::wrk::WrkResult) {
    println!(
        "  {name:<8} p50 {}  p99 {}  {:.1} req/s  (non-2xx: {})",
        ms(p.p50_us),
        ms(p.p99_us),
        p.rps,
        p.non2xx
    );
    let added99 = p.p99_us - d.p99_us;
    println!(
        "  added    p50 {:.2} ms  p99 {:.2} ms  (target <= 1 ms added p99: {})",
        (p.p50_us - d.p50_us) / 1000.0,
        added99 / 1000.0,
        if added99 <= 1000.0 { "met" } else { "NOT met" }
    );
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    println!();
    println!(
        "== proxy: POST /v1/chat/completions, wrk -t1 -c{} -d{}, {} bearer keys, keep-alive, \
         direct to the stub vs through the proxy ==",
        s.proxy_connections, s.duration, s.tenant_space
    );
    load_note();
    let stub = Stub::start_unrecorded();
    // Request and token limits on, every call admitted: huge bursts, reconcile refunding.
    let builder = bench
        .node()
        .rate(1_000_000, 1_000_000_000)
        .flag("tokens-per-minute", 4_000_000_000u64)
        .flag("token-burst-size", 100_000_000)
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", stub.url());
    println!("-- direct: {}", stub.url());
    let direct = run_wrk(bench, "direct", &stub.url());
    let two = proxied(bench, "node-proxy", builder);
    let rules = bench
        .node()
        .config_toml(&five_rules())
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", stub.url());
    let five = proxied(bench, "node-proxy-rules", rules);
    drop(stub);

    println!();
    println!("proxy results:");
    let d = direct.only();
    println!(
        "  direct   p50 {}  p99 {}  {:.1} req/s",
        ms(d.p50_us),
        ms(d.p99_us),
        d.rps
    );
    print_added("proxied", d, two.only());
    print_added("5 rules", d, five.only());
}
