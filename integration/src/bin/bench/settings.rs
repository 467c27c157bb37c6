//! The benchmark's knobs: every `BENCH_*` environment variable, its default, and the
//! usage text that documents them.

use std::str::FromStr;

pub const USAGE: &str = "\
Benchmarks for the llmtrace cluster node.

  cargo run --release -p llmtrace-integration --bin bench -- [MODE]
  scripts/bench.sh [MODE]                      (the same, through cargo)

MODE is single, memory, cluster, hot, redis, failover, proxy, rls, sim or all
(default: all; sim is not part of all).

single  wrk (scripts/bench/check.lua) posts /v1/check with random tenants out of
        100,000 over keep-alive connections, first against llmtrace-node, then
        against llmtrace-plain-bench (a bare actix-web server that parses the same
        body and answers a constant: the ceiling). Prints checks/s, p50, p99 and
        the ratio node/plain (target >= 0.7), plus each server's CPU time per
        check (steadier than checks/s on a 2-core machine that wrk shares).
        The node runs in memory with --requests-per-second 1
        --burst-size 1000000000 and every check costs 10: each tenant spends
        faster than it refills, so its bucket stays resident (not full, never
        swept) and every check is allowed for ~10^8 s. That measures the hot
        path; a 429 there would be a bug (wrk counts it as non-2xx).
        BENCH_RPS=1000000 BENCH_BURST=1000000 BENCH_COST=1 instead makes every
        bucket full again within microseconds, so the 1 s sweep drops it and
        most checks go through a snapshot restore (the \"cold\" path). The
        node's restore/eviction counters are printed after its run.
memory  starts a node in memory with --requests-per-second 1 --burst-size 1000,
        sends one warm-up batch, reads VmRSS (idle baseline), drains
        1,000,000 distinct tenants (one check of cost 1000 each, so every bucket
        ends empty and must stay resident) through /v1/check/batch, 1000 items a
        request, reads VmRSS again and prints (after - idle) / tenants bytes per
        tenant (target <= 150), plus llmtrace_buckets_resident from /metrics.
cluster first a single-node reference, then 3 nodes on this machine (node-0
        without seeds, node-1 and node-2 seeded with node-0's cluster address;
        the run starts once all three answer /readyz 200 and /admin/cluster
        shows agreed: true with a ring of exactly the three, bounded by
        BENCH_CLUSTER_WAIT). Both runs use the node settings of `single` and the
        same client: 3 wrk processes in parallel, -t1 each, the
        BENCH_CONNECTIONS connections split over them (64 -> 22+21+21), all
        against the one node for the reference and one per node for the
        cluster. With random tenants ~2/3 of the checks are forwarded, batched,
        to the owner. Prints checks/s (sum of the 3 wrk), client p50/p99 per wrk
        (and the worst p99), the ratio cluster/single (target >= 0.6), server
        CPU per check, and from the admin /metrics read before and after the
        measured run: forwarded share, mean forwarded batch, p99 of the forward
        round trip (llmtrace_forward_duration_seconds, per batch, linearly
        interpolated inside its Prometheus bucket) and the forwarded-check p99
        (llmtrace_forwarded_check_duration_seconds; target <= 3 ms), plus any
        forward error/retry/unreachable counts. Each cluster node runs one HTTP
        worker by default (BENCH_CLUSTER_ARGS). Then the same three nodes again
        with mutual TLS on the cluster port (certificates made at run time):
        the same figures, the ratio TLS/plain (target >= 0.9) and the CPU per
        check with TLS over without.
hot     token leases: the 3 nodes of `cluster` (same settings, default lease
        settings, limits that never refuse), started once and measured twice
        with the same wrk load (one per node, as in `cluster`): every check
        for one hot tenant, then random tenants out of 10,000. Prints checks/s
        of each and the ratio hot/spread (target >= 0.9), the share of client
        checks by route (llmtrace_routed_checks_total summed over the nodes,
        read before and after each measured run: local, forwarded, leased,
        degraded; target for the hot tenant: forwarded <= 0.10), server CPU
        per check of each, and the forwarding report of `cluster` for both.
redis   a node snapshotting to its own redis-server (free loopback port, no
        persistence), every check allowed (the `single` quota) over
        BENCH_HOT_TENANTS hot tenants. For each snapshot interval in
        BENCH_REDIS_INTERVALS the node is loaded at two offered rates:
        BENCH_REDIS_CONNS connections, then twice as many, each pausing
        BENCH_REDIS_DELAY_MS before every request. Redis SET/GET per second come
        from `INFO commandstats` read right before and after each measured run;
        write-behind writes each dirty bucket at most once per interval, so
        SET/s <= min(checks/s, tenants * 1000 / interval_ms). Prints checks/s,
        SET/s, the bound and the ratios. Then the cost of write-through:
        --snapshot-mode write-behind and write-through, wrk as in `single`:
        checks/s, p50/p99, SET/s and the ratio write-through / write-behind.
failover redis-server and 3 nodes with default settings; tenants f-0 ..
        f-(BENCH_FAILOVER_TENANTS-1) get one check each, node-2 is killed with
        SIGKILL, and the time until every tenant node-2 owned is decided
        normally (200/429, not degraded) by both survivors is measured (target
        <= 5 s), plus when their rings agreed and the degraded answers
        meanwhile. Repeated BENCH_FAILOVER_RUNS times.
proxy   the latency proxy mode adds: the stub OpenAI-compatible upstream of the
        integration tests (in this process, a thread per connection) and a node
        with --proxy-upstream pointing at it (every call admitted). wrk
        (scripts/bench/proxy.lua: non-streaming chat completions, one of
        BENCH_TENANT_SPACE bearer keys each) runs against the stub directly,
        then through the proxy (requests + tokens per key), then through a node
        with five gateway rules per call (rpm, tpm per model, a team quota, an
        org's spend in micro-dollars, an in-flight lease), BENCH_PROXY_CONNECTIONS
        connections, one wrk thread, each connection pausing BENCH_PROXY_DELAY_MS
        before every request (0: closed loop, full load). Prints p50/p99 of
        each, the added p50/p99 (target <= 1 ms added p99), requests/s, and
        the node's and the stub's CPU per call, and the share of the CPU the
        host took (steal: a round above 2% gets no verdict); BENCH_PROXY_ROUNDS
        rounds, with the medians of all rounds and of the calm ones.
rls     one node with --rls-listen and a rule admitting every call (4e9 a day
        per user): a gRPC load generator (tonic, Envoy's protos) keeps 4 h2
        connections x 16 ShouldRateLimit calls in flight, random users out of
        BENCH_TENANT_SPACE, hits BENCH_COST, BENCH_THREADS client threads; then
        wrk's /v1/check load (as in `single`) on the same node. Prints RLS and
        HTTP checks/s, p50/p99, server CPU per check of each and the ratio
        rls/http (target <= 1.3).

Environment:
sim     the in-process cluster simulation (llmtrace_actors::sim, no processes,
        no network; see docs/simulation.md) at BENCH_SIM_SIZES nodes: real
        ring, real membership (chitchat over an in-memory network, 1 ms delay,
        1 % loss, on a paused clock), real routers, shards and token leases
        wired in process (1 ms round trip), a Zipf (s = 1.1) load over 100,000
        tenants sent to random nodes at BENCH_SIM_RATE checks/s for
        BENCH_SIM_SECONDS, leases off then on (threshold: the node's default
        scaled from BENCH_SIM_NODE_RATE checks/s per node to the simulated
        rate). Prints one Markdown table: keys moved, convergence after a join,
        a leave and a crash, gossip bytes per node, handoff, Redis writes
        (measured and modelled at BENCH_SIM_DEPLOYMENT_RATE), forwarded and
        leased shares, node-to-node calls per check, owner CPU share.

  BENCH_DURATION=10s     wrk measuring time (wrk syntax: 10, 10s, 1m)
  BENCH_WARMUP=2s        wrk warm-up run before each measurement (0 = none)
  BENCH_CONNECTIONS=64   wrk connections
  BENCH_THREADS=2        wrk threads
  BENCH_TENANT_SPACE=100000  distinct tenant ids (single, cluster, proxy)
  BENCH_STATUS=0         1 = count wrk responses per HTTP status (costs client CPU)
  BENCH_RPS=1 BENCH_BURST=1000000000 BENCH_COST=10   node quota and check cost
  BENCH_SHARDS=          passed as --shards to the node when set
  BENCH_WORKERS=         passed as --http-workers to the node and --workers to
                         plain-bench when set (defaults of each binary otherwise)
  BENCH_NODE_ARGS=       extra node arguments (word-split), e.g.
                         \"--redis-url redis://127.0.0.1:6379\"
  BENCH_TENANTS=1000000  tenants drained in the memory benchmark
  BENCH_DRAIN_THREADS=2  drain threads (keep-alive connections)
  BENCH_DRAIN_DEADLINE=900  seconds the drain may take in all
  BENCH_CLUSTER_ARGS=\"--http-workers 1\"  extra arguments for the 3 cluster nodes
                         only (word-split; set but empty: none)
  BENCH_CLUSTER_WAIT=20  seconds the nodes may take to converge on one ring
  BENCH_CLUSTER_SETTLE=11  seconds to wait after convergence, past the 10 s
                         handoff window (0: measure right after it formed)
  BENCH_HOT_TENANTS=1000     hot tenants of the redis benchmark
  BENCH_REDIS_INTERVALS=\"100 1000\"  snapshot intervals (ms) of the redis benchmark
  BENCH_REDIS_CONNS=16 BENCH_REDIS_DELAY_MS=2   first load level of the redis
                         benchmark (second: 2 x BENCH_REDIS_CONNS)
  BENCH_FAILOVER_TENANTS=1000 BENCH_FAILOVER_RUNS=3   failover benchmark
  BENCH_PROXY_CONNECTIONS=8 BENCH_PROXY_DELAY_MS=0   proxy benchmark: wrk
                         connections, and each one's pause before a request
  BENCH_PROXY_ROUNDS=1   proxy benchmark: rounds of direct / default charge /
                         five rules, one after the other (more than one: the
                         medians of the rounds' added p50 / p99 too, of
                         all rounds and of those the host left calm)
  BENCH_SIM_SIZES=\"10 30 100\" BENCH_SIM_RATE=20000 BENCH_SIM_SECONDS=4   sim
  BENCH_SIM_NODE_RATE=10000 BENCH_SIM_DEPLOYMENT_RATE=1000000   sim scaling
  BENCH_SKIP_BUILD=0     1 = use the binaries already built (no cargo build)
  BENCH_KEEP_LOGS=0      1 = keep every server's output and wrk's in a temp dir

The measured binaries are llmtrace-node and llmtrace-plain-bench next to this one
(target/release with --release), built first with
`cargo build --release -p llmtrace-node --bins`. wrk (apt package wrk) and
redis-server are installed with apt-get when missing and running as root.
Only 127.0.0.1 is used: every server binds ephemeral ports there. Every load run
is bounded (wrk by -d and a deadline, the drain by its tenant count and deadline).
Started processes are stopped on exit, also on SIGINT / SIGTERM / SIGHUP.
";

/// Every knob, read once from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: String,
    pub warmup: String,
    pub connections: u32,
    pub threads: u32,
    pub tenant_space: u64,
    pub count_status: bool,
    pub rps: u64,
    pub burst: u64,
    pub cost: u64,
    pub shards: Option<String>,
    pub workers: Option<String>,
    pub node_args: Vec<String>,
    pub tenants: u64,
    pub drain_threads: usize,
    pub drain_deadline_s: u64,
    pub cluster_args: Vec<String>,
    pub cluster_wait_s: u64,
    pub cluster_settle_s: u64,
    pub hot_tenants: u64,
    pub redis_intervals: Vec<u64>,
    pub redis_conns: u32,
    pub redis_delay_ms: u64,
    pub failover_tenants: usize,
    pub failover_runs: u32,
    pub proxy_connections: u32,
    pub proxy_delay_ms: u64,
    pub proxy_rounds: u32,
    pub skip_build: bool,
    pub keep_logs: bool,
}

/// `$name`, unset or empty meaning `default`; exits with a message when it does not parse.
pub(crate) fn num<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("bench: {name}={v:?} is not a valid number");
            std::process::exit(2)
        }),
        _ => default,
    }
}

pub(crate) fn text(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => default.to_string(),
    }
}

fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn words(value: &str) -> Vec<String> {
    value.split_whitespace().map(str::to_string).collect()
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}

impl Settings {
    pub fn from_env() -> Settings {
        let intervals = text("BENCH_REDIS_INTERVALS", "100 1000");
        let redis_intervals = words(&intervals)
            .iter()
            .map(|w| match w.parse::<u64>() {
                Ok(ms) if ms > 0 => ms,
                _ => {
                    eprintln!("bench: BENCH_REDIS_INTERVALS={intervals:?}: {w:?} is not a positive number of ms");
                    std::process::exit(2)
                }
            })
            .collect();
        Settings {
            duration: text("BENCH_DURATION", "10s"),
            warmup: text("BENCH_WARMUP", "2s"),
            connections: num("BENCH_CONNECTIONS", 64),
            threads: num("BENCH_THREADS", 2),
            tenant_space: num("BENCH_TENANT_SPACE", 100_000),
            count_status: flag("BENCH_STATUS"),
            rps: num("BENCH_RPS", 1),
            burst: num("BENCH_BURST", 1_000_000_000),
            cost: num("BENCH_COST", 10),
            shards: optional("BENCH_SHARDS"),
            workers: optional("BENCH_WORKERS"),
            node_args: words(&std::env::var("BENCH_NODE_ARGS").unwrap_or_default()),
            tenants: num("BENCH_TENANTS", 1_000_000),
            drain_threads: num("BENCH_DRAIN_THREADS", 2).max(1),
            drain_deadline_s: num("BENCH_DRAIN_DEADLINE", 900),
            // Set but empty means no extra arguments, unset the default.
            cluster_args: words(
                &std::env::var("BENCH_CLUSTER_ARGS").unwrap_or("--http-workers 1".into()),
            ),
            cluster_wait_s: num("BENCH_CLUSTER_WAIT", 20),
            cluster_settle_s: num("BENCH_CLUSTER_SETTLE", 11),
            hot_tenants: num("BENCH_HOT_TENANTS", 1000),
            redis_intervals,
            redis_conns: num("BENCH_REDIS_CONNS", 16),
            redis_delay_ms: num("BENCH_REDIS_DELAY_MS", 2),
            failover_tenants: num("BENCH_FAILOVER_TENANTS", 1000),
            failover_runs: num("BENCH_FAILOVER_RUNS", 3),
            proxy_connections: num("BENCH_PROXY_CONNECTIONS", 8),
            proxy_delay_ms: num("BENCH_PROXY_DELAY_MS", 0),
            proxy_rounds: num("BENCH_PROXY_ROUNDS", 1),
            skip_build: flag("BENCH_SKIP_BUILD"),
            keep_logs: flag("BENCH_KEEP_LOGS"),
        }
    }
}

/// Seconds of a wrk duration (`10`, `10s`, `2m`, `1h`); None when it does not parse.
pub fn wrk_seconds(duration: &str) -> Option<f64> {
    let d = duration.trim();
    let (number, unit) = match d.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => d.split_at(i),
        None => (d, "s"),
    };
    let n: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(n * scale)
}

#[cfg(test)]
mod tests {
    use super::wrk_seconds;

    #[test]
    fn wrk_durations() {
        assert_eq!(wrk_seconds("10"), Some(10.0));
        assert_eq!(wrk_seconds("3s"), Some(3.0));
        assert_eq!(wrk_seconds("2m"), Some(120.0));
        assert_eq!(wrk_seconds("0"), Some(0.0));
        assert_eq!(wrk_seconds("ten"), None);
        assert_eq!(wrk_seconds("5x"), None);
    }
}
