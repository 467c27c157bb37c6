//! `proxy`: the latency the proxy mode adds. The stub OpenAI-compatible upstream of the
//! integration tests (in this process, a thread per connection, nothing recorded) and a
//! node proxying to it with every call admitted; wrk (`proxy.lua`) against the stub
//! directly, then through the proxy; the difference of their p50 / p99.

use crate::procfs::load_note;
use crate::setup::Bench;
use crate::summary::{self, ms, node_health};
use crate::wrk::{measure, Measured};
use llmtrace_integration::Stub;

fn run_wrk(bench: &Bench, tag: &str, url: &str) -> Measured {
    let m = measure(bench, tag, &[bench.proxy_load(url)], &[], || {});
    m.print();
    m
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
    let mut node = bench.start_node("node-proxy", builder);
    println!("-- direct: {}", stub.url());
    let direct = run_wrk(bench, "direct", &stub.url());
    let proxy_url = node.proxy_url();
    println!("-- proxied: {proxy_url}");
    let proxied = run_wrk(bench, "proxied", &proxy_url);
    summary::metrics_of(
        &node,
        &[
            "llmtrace_proxy_requests_total",
            "llmtrace_proxy_tokens_total",
        ],
        "",
    );
    node_health(bench, "node-proxy", &mut node);
    drop(node);
    drop(stub);

    println!();
    println!("proxy results:");
    let (d, p) = (direct.only(), proxied.only());
    println!(
        "  direct   p50 {}  p99 {}  {:.1} req/s",
        ms(d.p50_us),
        ms(d.p99_us),
        d.rps
    );
    println!(
        "  proxied  p50 {}  p99 {}  {:.1} req/s  (non-2xx: {})",
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
