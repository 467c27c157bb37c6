//! `proxy`: the latency the proxy mode adds. The stub OpenAI-compatible upstream of the
//! integration tests (in this process, a thread per connection, nothing recorded) and a
//! node proxying to it with every call admitted; wrk (`proxy.lua`) against the stub
//! directly, then through the proxy (the default `requests` + `tokens` charge), then
//! through a node with five gateway rules per call ([`five_rules`]); the difference of
//! their p50 / p99, and the CPU per call of the stub and of the node (from /proc, steadier
//! than a p99 on a shared machine). With BENCH_PROXY_ROUNDS > 1 the three runs are
//! repeated, each round compared within its own minute, and the medians of the rounds'
//! comparisons printed: of all rounds, and of the calm ones (the host took at most
//! [`summary::STEAL_LIMIT`] of the CPU, and no direct p99 was above a proxied one).

use crate::procfs::{load_note, CpuWindow};
use crate::setup::Bench;
use crate::summary::{self, ms, node_health};
use crate::wrk::{measure, Measured};
use llmtrace_integration::gateway::gateway_toml;
use llmtrace_integration::Stub;

/// Runs wrk against `url`; `node`: the pid of the node in between, whose CPU during the
/// measured run is answered apart (the stub's is this process's).
fn run_wrk(bench: &Bench, tag: &str, url: &str, node: Option<u32>) -> (Measured, f64) {
    let stub = std::process::id();
    let servers: Vec<u32> = [Some(stub), node].into_iter().flatten().collect();
    let nodes: Vec<u32> = node.into_iter().collect();
    let mut window = None;
    let m = measure(bench, tag, &[bench.proxy_load(url)], &servers, || {
        window = Some(CpuWindow::start(&nodes));
    });
    let node_s = window.map_or(0.0, |w| w.finish(&nodes).server_s);
    m.print();
    let (requests, d) = (m.only().requests.max(1), m.only().duration_s.max(1e-9));
    let per_call = |s: f64| 1e6 * s / requests as f64;
    let other = (m.cpu.busy_s - m.cpu.server_s - m.cpu.client_s).max(0.0);
    let node_part = match node {
        Some(_) => format!("node {:.1} us, ", per_call(node_s)),
        None => String::new(),
    };
    println!(
        "  CPU per call: {node_part}stub {:.1} us; wrk {:.2} cores, other processes {:.2} cores, \
         host steal {:.1}%",
        per_call(m.cpu.server_s - node_s),
        m.cpu.client_s / d,
        other / d,
        100.0 * m.cpu.steal
    );
    summary::steal_warning(tag, m.cpu.steal);
    (m, per_call(node_s))
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

/// Runs wrk through a node started from `builder`; answers the node's CPU per call too.
fn proxied(
    bench: &Bench,
    tag: &str,
    builder: llmtrace_integration::NodeBuilder,
) -> (Measured, f64) {
    let mut node = bench.start_node(tag, builder);
    let proxy_url = node.proxy_url();
    println!("-- {tag}: {proxy_url}");
    let m = run_wrk(bench, tag, &proxy_url, Some(node.pid()));
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

fn print_added(
    name: &str,
    (d, steal): (&crate::wrk::WrkResult, f64),
    (p, node_us): (&crate::wrk::WrkResult, f64),
) {
    println!(
        "  {name:<8} p50 {}  p99 {}  {:.1} req/s  (non-2xx: {})  node {node_us:.1} us CPU/call",
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
        verdict(added99, steal)
    );
}

/// The target's verdict on an added p99 (microseconds), measured while the hypervisor
/// took `steal` of the CPU. A negative one means the direct calls' tail was the longer:
/// the machine, not the proxy, set the tails of that run; so does a host that took more
/// than [`summary::STEAL_LIMIT`] of the CPU.
fn verdict(added99_us: f64, steal: f64) -> &'static str {
    if added99_us < 0.0 {
        "no verdict: the direct calls' p99 was the higher, the machine was busy"
    } else if steal > summary::STEAL_LIMIT {
        "no verdict: the host took CPU time (steal) during the round"
    } else if added99_us <= 1000.0 {
        "met"
    } else {
        "NOT met"
    }
}

/// The added p50 / p99 (ms) of one round's default charge and five rules, and the
/// node's CPU per call (us) of each.
struct Round {
    added: [(f64, f64); 2],
    node_us: [f64; 2],
    /// The most the host took of the CPU (steal) in any of the round's three runs.
    steal: f64,
}

impl Round {
    /// Neither the host (steal) nor the machine (a direct p99 above a proxied one)
    /// set the round's tails.
    fn calm(&self) -> bool {
        self.steal <= summary::STEAL_LIMIT && self.added.iter().all(|a| a.1 >= 0.0)
    }
}

/// One round in the same minute: the stub directly, through a node with the default
/// charge, through a node with five rules; prints its results.
fn round(bench: &Bench, stub: &Stub) -> Round {
    // Request and token limits on, every call admitted: huge bursts, reconcile refunding.
    let builder = bench
        .node()
        .rate(1_000_000, 1_000_000_000)
        .flag("tokens-per-minute", 4_000_000_000u64)
        .flag("token-burst-size", 100_000_000)
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", stub.url());
    println!("-- direct: {}", stub.url());
    let (direct, _) = run_wrk(bench, "direct", &stub.url(), None);
    let two = proxied(bench, "node-proxy", builder);
    let rules = bench
        .node()
        .config_toml(&five_rules())
        .flag("proxy-listen", "127.0.0.1:0")
        .flag("proxy-upstream", stub.url());
    let five = proxied(bench, "node-proxy-rules", rules);

    println!();
    println!("proxy results:");
    let d = direct.only();
    println!(
        "  direct   p50 {}  p99 {}  {:.1} req/s",
        ms(d.p50_us),
        ms(d.p99_us),
        d.rps
    );
    let steal = [&direct, &two.0, &five.0]
        .iter()
        .map(|m| m.cpu.steal)
        .fold(0.0, f64::max);
    print_added("proxied", (d, steal), (two.0.only(), two.1));
    print_added("5 rules", (d, steal), (five.0.only(), five.1));
    let added = |p: &crate::wrk::WrkResult| {
        (
            (p.p50_us - d.p50_us) / 1000.0,
            (p.p99_us - d.p99_us) / 1000.0,
        )
    };
    Round {
        added: [added(two.0.only()), added(five.0.only())],
        node_us: [two.1, five.1],
        steal,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    println!();
    println!(
        "== proxy: POST /v1/chat/completions, wrk -t1 -c{} -d{}, {} bearer keys, keep-alive, \
         direct to the stub vs through the proxy, {} round(s) ==",
        s.proxy_connections, s.duration, s.tenant_space, s.proxy_rounds
    );
    load_note();
    let stub = Stub::start_unrecorded();
    let rounds: Vec<Round> = (1..=s.proxy_rounds.max(1))
        .map(|i| {
            println!("-- round {i} of {}", s.proxy_rounds.max(1));
            round(bench, &stub)
        })
        .collect();
    drop(stub);
    if rounds.len() < 2 {
        return;
    }
    // Each round compares within its own minute; the medians are of those comparisons.
    let calm: Vec<&Round> = rounds.iter().filter(|r| r.calm()).collect();
    let all: Vec<&Round> = rounds.iter().collect();
    for (title, set) in [
        (format!("proxy medians of {} rounds:", all.len()), &all),
        (
            format!(
                "proxy medians of the {} calm rounds of {} (host steal <= {:.0}%, direct p99 \
                 below the proxied ones):",
                calm.len(),
                all.len(),
                100.0 * summary::STEAL_LIMIT
            ),
            &calm,
        ),
    ] {
        println!();
        println!("{title}");
        if set.is_empty() {
            println!("  none");
            continue;
        }
        for (i, name) in ["proxied", "5 rules"].iter().enumerate() {
            let p50 = median(set.iter().map(|r| r.added[i].0).collect());
            let p99 = median(set.iter().map(|r| r.added[i].1).collect());
            let cpu = median(set.iter().map(|r| r.node_us[i]).collect());
            // Rounds the host disturbed were told apart above, or set aside here.
            println!(
                "  {name:<8} added p50 {p50:.2} ms  p99 {p99:.2} ms  node {cpu:.1} us CPU/call  \
                 (target <= 1 ms added p99: {})",
                verdict(p99 * 1000.0, 0.0)
            );
        }
    }
}
