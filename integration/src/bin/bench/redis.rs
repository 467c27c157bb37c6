//! `redis`: the Redis traffic of write-behind snapshots and the cost of write-through.
//! A node snapshotting to its own redis-server, every check allowed over
//! BENCH_HOT_TENANTS hot tenants; for each snapshot interval two offered rates
//! (BENCH_REDIS_CONNS connections pausing BENCH_REDIS_DELAY_MS, then twice as many),
//! with SET / GET per second from `INFO commandstats` around each measured run. Then
//! write-behind against write-through under the `single` load.

use crate::cleanup::Guarded;
use crate::procfs::load_note;
use crate::setup::Bench;
use crate::summary::{self, node_health};
use crate::wrk::{measure, Measured};
use llmtrace_integration::{Node, NodeBuilder, RedisServer};
use std::time::Instant;

/// Redis commands counted during one measured run.
struct RedisRate {
    set_per_s: f64,
    get_per_s: f64,
}

/// Runs `during` and returns it with the SET / GET rates of `redis` while it ran
/// (`before` is called when the measured part starts).
fn counting<T>(redis: &RedisServer, during: impl FnOnce(&mut dyn FnMut()) -> T) -> (T, RedisRate) {
    let calls = |cmd: &str| {
        redis
            .conn()
            .command_calls(cmd)
            .unwrap_or_else(|e| panic!("INFO commandstats: {e}"))
    };
    let mut start = (0, 0, Instant::now());
    let value = during(&mut || start = (calls("set"), calls("get"), Instant::now()));
    let (sets, gets, t0) = start;
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let rate = RedisRate {
        set_per_s: (calls("set") - sets) as f64 / secs,
        get_per_s: (calls("get") - gets) as f64 / secs,
    };
    (value, rate)
}

/// One load level of the write-behind part.
struct Level {
    interval_ms: u64,
    name: &'static str,
    connections: u32,
    checks_per_s: f64,
    redis: RedisRate,
    p99_us: f64,
}

fn redis_node(bench: &Bench, redis: &RedisServer, id: &str) -> NodeBuilder {
    let s = &bench.s;
    bench
        .node()
        .flag("node-id", id)
        .rate(s.rps, s.burst)
        .redis(redis)
}

fn level(
    bench: &Bench,
    redis: &RedisServer,
    node: &Node,
    interval_ms: u64,
    name: &'static str,
    connections: u32,
) -> Level {
    let s = &bench.s;
    let load = bench.check_load(
        node.public_url(),
        2,
        connections,
        s.hot_tenants,
        s.redis_delay_ms,
    );
    let tag = format!("wb-{interval_ms}-{name}");
    let (m, rate) = counting(redis, |before| {
        measure(bench, &tag, &[load], &[node.pid()], before)
    });
    let r = m.only();
    if r.non2xx != 0 {
        println!("  !! {tag}: {} non-2xx responses", r.non2xx);
    }
    Level {
        interval_ms,
        name,
        connections,
        checks_per_s: r.rps,
        redis: rate,
        p99_us: r.p99_us,
    }
}

fn flush(redis: &RedisServer) {
    redis
        .conn()
        .cmd(&["FLUSHALL"])
        .unwrap_or_else(|e| panic!("FLUSHALL: {e}"));
}

pub fn run(bench: &Bench) {
    let s = &bench.s;
    println!();
    println!(
        "== redis: write-behind traffic over {} hot tenants at two load levels; write-through cost ==",
        s.hot_tenants
    );
    let redis = RedisServer::start();
    let pid = redis.pid().expect("redis-server runs");
    let redis = Guarded::new(redis, vec![pid]);
    println!(
        "-- redis-server on 127.0.0.1:{} (pid {pid}, no persistence)",
        redis.port()
    );
    load_note();
    let mut levels = Vec::new();
    for &interval in &s.redis_intervals {
        let builder = redis_node(bench, &redis, &format!("redis-{interval}"))
            .flag("snapshot-interval-ms", interval);
        let name = format!("node-redis-{interval}");
        let mut node = bench.start_node(&name, builder);
        levels.push(level(bench, &redis, &node, interval, "x1", s.redis_conns));
        levels.push(level(
            bench,
            &redis,
            &node,
            interval,
            "x2",
            2 * s.redis_conns,
        ));
        node_health(bench, &name, &mut node);
        drop(node);
        flush(&redis);
    }
    let mut modes: Vec<(&str, Measured, RedisRate)> = Vec::new();
    for mode in ["write-behind", "write-through"] {
        let builder = redis_node(bench, &redis, mode).flag("snapshot-mode", mode);
        let name = format!("node-{mode}");
        let mut node = bench.start_node(&name, builder);
        let load = bench.check_load(
            node.public_url(),
            s.threads,
            s.connections,
            s.hot_tenants,
            0,
        );
        let (m, rate) = counting(&redis, |before| {
            measure(bench, mode, &[load], &[node.pid()], before)
        });
        m.print();
        node_health(bench, &name, &mut node);
        drop(node);
        flush(&redis);
        modes.push((mode, m, rate));
    }

    println!();
    println!(
        "redis results ({} hot tenants, every check allowed and changing its bucket):",
        s.hot_tenants
    );
    for l in &levels {
        let bound = l
            .checks_per_s
            .min((s.hot_tenants * 1000) as f64 / l.interval_ms as f64);
        println!(
            "  interval {:5} ms, {:<3} {:3} conns: {:10.1} checks/s  {:9.1} SET/s  {:7.1} GET/s  p99 {:.2} ms  (bound min(checks/s, {} x 1000/{}) = {bound:.0} SET/s)",
            l.interval_ms, l.name, l.connections, l.checks_per_s, l.redis.set_per_s, l.redis.get_per_s,
            l.p99_us / 1000.0, s.hot_tenants, l.interval_ms
        );
        if l.redis.set_per_s > bound * 1.02 {
            println!(
                "  !! interval {} ms {}: {:.1} SET/s is above the write-behind bound",
                l.interval_ms, l.name, l.redis.set_per_s
            );
        }
    }
    for pair in levels.chunks(2) {
        if let [x1, x2] = pair {
            if x1.checks_per_s > 0.0 && x1.redis.set_per_s > 0.0 {
                println!(
                    "  interval {:5} ms: x2 / x1 checks/s {:.2}, SET/s {:.2}",
                    x1.interval_ms,
                    x2.checks_per_s / x1.checks_per_s,
                    x2.redis.set_per_s / x1.redis.set_per_s
                );
            }
        }
    }
    for (mode, m, rate) in &modes {
        summary::one(mode, m);
        println!("  {mode:<22} {:.1} SET/s", rate.set_per_s);
    }
    if let [(_, behind, _), (_, through, _)] = &modes[..] {
        if behind.only().rps > 0.0 {
            println!(
                "  ratio write-through / write-behind   {:.3} (checks/s)",
                through.only().rps / behind.only().rps
            );
        }
    }
}
