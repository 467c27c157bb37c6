//! Failover with Redis snapshots: a tenant drained on its owner stays drained when that
//! owner dies (kill -9) or leaves (SIGTERM), and across a rolling restart of every node;
//! once the survivors agree on a ring without the old owner, its tenants are decided
//! normally again (not degraded, budget neither lost nor restored).  (The Redis outage
//! tests are in `redis_outage.rs`.)
//!
//! rps is 1, so a drained bucket regains one token per second: a check costing far more
//! than the seconds a test runs is refused by any bucket that did not come back full.
//! Every figure (failover time, degraded answers, latencies) is printed with
//! `eprintln!`; run with `--nocapture` to see them.

use llmtrace_integration::cluster::converged_view;
use llmtrace_integration::http::Client;
use llmtrace_integration::scenario::{
    let_load_run, load_on, owner_of, redis_cluster, snapshot_key, sum_metric, tenants_owned_by,
};
use llmtrace_integration::{wait_for, wait_until, Cluster, LoadReport, RedisServer, Reply};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const RPS: u64 = 1;
const KEY_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------
// The owner of a drained tenant dies or leaves.
// ---------------------------------------------------------------------------------

const FAILOVER_BURST: u64 = 100;
/// Refused by a drained bucket for ~50 s; allowed by one that came back full.
const PROBE_COST: u64 = 50;

/// One check of the drained tenant sent while the survivors had not yet converged.
struct Probe {
    at: Duration,
    node: String,
    latency: Duration,
    /// The status, or the transport error.
    answer: Result<u16, String>,
    degraded: bool,
    /// `retry_after_secs` of a refusal.
    retry_after: Option<u64>,
    /// Seconds since the tenant was drained when the probe was sent.
    since_drain: f64,
    text: String,
}

impl Probe {
    /// A refusal whose `retry_after_secs` is far shorter than the drained bucket needs to
    /// refill [`PROBE_COST`]: the check was refused without that bucket (e.g. by the
    /// unreachable-owner path), not by it.
    fn refused_without_bucket(&self) -> bool {
        self.retry_after
            .is_some_and(|r| (r as f64) + self.since_drain + 2.0 < PROBE_COST as f64)
    }
}

/// What the survivors answered from the stop of the owner until they agreed on a ring
/// without it.
struct Failover {
    /// From the stop signal to both survivors agreeing on a ring of exactly themselves.
    converged: Duration,
    probes: Vec<Probe>,
}

impl Failover {
    fn degraded(&self) -> usize {
        self.probes.iter().filter(|p| p.degraded).count()
    }

    fn refused_without_bucket(&self) -> usize {
        self.probes
            .iter()
            .filter(|p| p.refused_without_bucket())
            .count()
    }

    fn slowest(&self) -> Duration {
        self.probes
            .iter()
            .map(|p| p.latency)
            .max()
            .unwrap_or_default()
    }

    fn summary(&self) -> String {
        let lines: Vec<String> = self
            .probes
            .iter()
            .map(|p| {
                let answer = match &p.answer {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("transport error {e}"),
                };
                format!(
                    "  +{:?} {} -> {answer}{} in {:?}: {}",
                    p.at,
                    p.node,
                    if p.degraded { " degraded" } else { "" },
                    p.latency,
                    p.text
                )
            })
            .collect();
        format!(
            "converged after {:?}; {} probes, {} degraded, {} refused with a retry-after too \
             short for the drained bucket, slowest {:?}:\n{}",
            self.converged,
            self.probes.len(),
            self.degraded(),
            self.refused_without_bucket(),
            self.slowest(),
            lines.join("\n")
        )
    }
}

/// Sets a flag when dropped, also when the thread holding it panics.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// True when every admin client's `/admin/cluster` view is ready, agreed, has exactly
/// `ids` in its ring, and all show the same fingerprint.
fn views_agree(admins: &[Client], ids: &[String]) -> bool {
    let mut fingerprints = Vec::new();
    for admin in admins {
        match admin.try_get("/admin/cluster") {
            Ok(r) if r.status == 200 && converged_view(&r.json, ids) => {
                fingerprints.push(r.json["fingerprint"].to_string())
            }
            _ => return false,
        }
    }
    fingerprints.windows(2).all(|w| w[0] == w[1])
}

/// Stops node 2 with `stop` while nodes 0 and 1 are sent checks of [`PROBE_COST`] for
/// `tenant` until they agree on a ring of exactly themselves.
fn probe_failover(
    cluster: &mut Cluster,
    tenant: &str,
    drained_at: Instant,
    stop: impl FnOnce(&mut Cluster),
) -> Failover {
    let survivors = [0, 1];
    let publics: Vec<(String, Client)> = survivors
        .iter()
        .map(|i| {
            (
                cluster.node(*i).node_id.clone(),
                cluster.node(*i).public().clone(),
            )
        })
        .collect();
    let admins: Vec<Client> = survivors
        .iter()
        .map(|i| cluster.node(*i).admin().clone())
        .collect();
    let mut ids: Vec<String> = publics.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();

    let done = AtomicBool::new(false);
    let probes = Mutex::new(Vec::new());
    let started = Instant::now();
    let converged = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let _done = SetOnDrop(&done);
            let what = format!("{ids:?} to agree on a ring of exactly themselves");
            wait_until(Duration::from_secs(20), &what, || {
                views_agree(&admins, &ids)
            });
            started.elapsed()
        });
        let prober = s.spawn(|| {
            let body = serde_json::json!({"tenant_id": tenant, "cost": PROBE_COST});
            let what = "the survivors to converge while probing";
            wait_until(Duration::from_secs(25), what, || {
                for (node, public) in &publics {
                    let sent = Instant::now();
                    let result = public.try_post_json("/v1/check", &body);
                    let latency = sent.elapsed();
                    let probe = match result {
                        Ok(r) => Probe {
                            at: sent - started,
                            node: node.clone(),
                            latency,
                            answer: Ok(r.status),
                            degraded: r.json["degraded"] == true,
                            retry_after: r.json["retry_after_secs"].as_u64(),
                            since_drain: (sent - drained_at).as_secs_f64(),
                            text: r.text.chars().take(300).collect(),
                        },
                        Err(e) => Probe {
                            at: sent - started,
                            node: node.clone(),
                            latency,
                            answer: Err(e.to_string()),
                            degraded: false,
                            retry_after: None,
                            since_drain: (sent - drained_at).as_secs_f64(),
                            text: String::new(),
                        },
                    };
                    probes.lock().unwrap().push(probe);
                }
                done.load(Ordering::SeqCst)
            });
        });
        stop(cluster);
        let converged = watcher.join();
        let probed = prober.join();
        let converged = converged.unwrap_or_else(|e| std::panic::resume_unwind(e));
        probed.unwrap_or_else(|e| std::panic::resume_unwind(e));
        converged
    });
    Failover {
        converged,
        probes: probes.into_inner().unwrap(),
    }
}

/// What the owner held before it went away.
struct Owned {
    /// Drained (cost = burst) through node-0.
    drained: String,
    drained_at: Instant,
    /// [`LIGHT_USED`] of its burst used through node-0: it has budget left.
    light: String,
    light_at: Instant,
}

/// Used of the light tenant's burst before the owner goes away.
const LIGHT_USED: u64 = 10;

/// Three nodes with Redis; two tenants owned by node-2, one drained and one lightly
/// used through node-0, their snapshots written.
fn owned_by_node_2(redis: &RedisServer, prefix: &str) -> (Cluster, Owned) {
    let cluster = redis_cluster(redis, 3, RPS, FAILOVER_BURST);
    assert_eq!(cluster.node(2).node_id, "node-2");
    let tenants = tenants_owned_by(cluster.node(0), "node-2", prefix, 2);
    for i in [1, 2] {
        for t in &tenants {
            assert_eq!(owner_of(cluster.node(i), t), "node-2", "node-{i}'s ring");
        }
    }
    let (drained, light) = (tenants[0].clone(), tenants[1].clone());
    let drained_at = Instant::now();
    let reply = cluster.node(0).check(&drained, FAILOVER_BURST);
    assert_eq!(reply.status, 200, "cost = burst on a fresh bucket: {reply}");
    assert_eq!(reply.u64_field("remaining"), 0, "{reply}");
    let reply = cluster.node(0).check(&drained, 1);
    assert_eq!(reply.status, 429, "drained: {reply}");
    let light_at = Instant::now();
    let reply = cluster.node(0).check(&light, LIGHT_USED);
    assert_eq!(reply.status, 200, "{reply}");
    for t in [&drained, &light] {
        redis.wait_for_key(&snapshot_key(t), KEY_TIMEOUT);
    }
    cluster
        .node(2)
        .wait_metric("llmtrace_snapshot_writes_total", KEY_TIMEOUT, |v| v >= 1.0);
    let owned = Owned {
        drained,
        drained_at,
        light,
        light_at,
    };
    (cluster, owned)
}

/// Sends `check` until `ok` holds for its reply (bounded by `timeout`); panics naming
/// `what` and quoting the last reply otherwise.
fn check_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Reply,
    ok: impl Fn(&Reply) -> bool,
) -> Reply {
    let mut last = None;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(timeout, what, || {
            let reply = check();
            let done = ok(&reply);
            last = Some(reply.clone());
            done.then_some(reply)
        })
    }));
    found.unwrap_or_else(|_| panic!("{what}: not within {timeout:?}; last reply {last:?}"))
}

/// After the survivors converged: the drained tenant is refused [`PROBE_COST`] on both
/// survivors by its bucket (not degraded), and that bucket holds what it refilled since
/// the drain: a cost-1 check is allowed (once a token came back) with at most
/// `floor(elapsed) + 1` remaining. The light tenant is allowed on both survivors, not
/// degraded, without its used budget coming back. A fresh tenant is allowed.
fn assert_after_failover(cluster: &Cluster, owned: &Owned) {
    cluster.wait_converged(Duration::from_secs(10));
    let (tenant, drained_at) = (owned.drained.as_str(), owned.drained_at);
    let new_owner = owner_of(cluster.node(0), tenant);
    assert_eq!(owner_of(cluster.node(1), tenant), new_owner);
    for i in [0, 1] {
        let reply = cluster.node(i).check(tenant, PROBE_COST);
        let since = drained_at.elapsed();
        assert_eq!(
            reply.status, 429,
            "node-{i}: tenant {tenant:?} (now owned by {new_owner}) allowed {PROBE_COST} \
             {since:?} after it was drained: {reply}"
        );
        assert_ne!(
            reply.json["degraded"], true,
            "node-{i}: degraded after convergence (owner {new_owner}): {reply}"
        );
        let retry = reply.u64_field("retry_after_secs") as f64;
        assert!(
            retry + since.as_secs_f64() + 2.0 >= PROBE_COST as f64,
            "node-{i}: refused {since:?} after the drain with retry_after_secs {retry}: not \
             by the drained bucket (which needs ~{:.0} s more): {reply}",
            PROBE_COST as f64 - since.as_secs_f64()
        );
        let fresh = cluster.node(i).check(&format!("{tenant}-fresh-{i}"), 1);
        assert_eq!(fresh.status, 200, "{fresh}");
    }
    let what = format!("a cost-1 check of drained {tenant:?} to be allowed via node-0");
    let allowed = check_until(
        Duration::from_secs(5),
        &what,
        || cluster.node(0).check(tenant, 1),
        |r| r.status == 200,
    );
    let since = drained_at.elapsed();
    let remaining = allowed.u64_field("remaining");
    assert!(
        remaining <= since.as_secs() + 1,
        "{tenant:?} has {remaining} tokens left {since:?} after it was drained at 1/s: \
         {allowed}"
    );
    eprintln!(
        "{tenant} is now owned by {new_owner}: refused {PROBE_COST}, allowed 1 with \
         {remaining} remaining {since:?} after the drain"
    );
    for i in [0, 1] {
        let light = &owned.light;
        let reply = cluster.node(i).check(light, 1);
        let since = owned.light_at.elapsed();
        assert_eq!(
            reply.status, 200,
            "node-{i}: {light:?} (owned by {new_owner}, {LIGHT_USED} of {FAILOVER_BURST} used \
             {since:?} ago) refused after the failover: {reply}"
        );
        assert_ne!(reply.json["degraded"], true, "node-{i}: {reply}");
        let remaining = reply.u64_field("remaining");
        let most = (FAILOVER_BURST - LIGHT_USED + since.as_secs()).min(FAILOVER_BURST);
        assert!(
            remaining < most,
            "node-{i}: {light:?} has {remaining} left {since:?} after {LIGHT_USED} were used \
             (at most {most} minus this check): its budget came back: {reply}"
        );
    }
}

/// Every probe was answered 429.
fn assert_probes_refused(failover: &Failover, tenant: &str) {
    let bad: Vec<&Probe> = failover
        .probes
        .iter()
        .filter(|p| p.answer != Ok(429))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} checks of cost {PROBE_COST} for drained {tenant:?} were not refused \
         (first at +{:?} on {}); all probes: {}",
        bad.len(),
        failover.probes.len(),
        bad[0].at,
        bad[0].node,
        failover.summary()
    );
    assert!(!failover.probes.is_empty(), "no probe was sent");
}

#[test]
fn crash_of_the_owner_keeps_a_drained_tenant_drained() {
    let redis = RedisServer::start();
    let (mut cluster, owned) = owned_by_node_2(&redis, "crash");
    let (tenant, drained_at) = (owned.drained.clone(), owned.drained_at);

    let failover = probe_failover(&mut cluster, &tenant, drained_at, |c| c.kill(2));
    let unreachable = sum_metric(&cluster, "llmtrace_owner_unreachable_total");
    eprintln!(
        "kill -9 of node-2 (owner of {tenant}): failover time (both survivors on a \
         2-member ring) {:?}; degraded answers {} of {}; owner-unreachable decisions on \
         the survivors {unreachable}; {}",
        failover.converged,
        failover.degraded(),
        failover.probes.len(),
        failover.summary()
    );
    assert_probes_refused(&failover, &tenant);
    assert_after_failover(&cluster, &owned);
}

#[test]
fn sigterm_of_the_owner_keeps_a_drained_tenant_drained() {
    let redis = RedisServer::start();
    let (mut cluster, owned) = owned_by_node_2(&redis, "leave");
    let (tenant, drained_at) = (owned.drained.clone(), owned.drained_at);

    let mut status = None;
    let mut exited = Duration::ZERO;
    let started = Instant::now();
    let failover = probe_failover(&mut cluster, &tenant, drained_at, |c| {
        status = Some(c.terminate(2));
        exited = started.elapsed();
    });
    let status = status.expect("terminate ran");
    eprintln!(
        "SIGTERM of node-2 (owner of {tenant}): exited {status} after {exited:?}; both \
         survivors on a 2-member ring after {:?}; degraded answers {} of {}; {}",
        failover.converged,
        failover.degraded(),
        failover.probes.len(),
        failover.summary()
    );
    assert!(
        status.success(),
        "node-2 exit status after SIGTERM: {status}\n{}",
        cluster.node(2).stderr()
    );
    assert_probes_refused(&failover, &tenant);
    assert_after_failover(&cluster, &owned);
}

// ---------------------------------------------------------------------------------
// Rolling restart.
// ---------------------------------------------------------------------------------

const ROLL_BURST: u64 = 200;
/// Load tenants are left this many tokens before the load starts, so a bucket that came
/// back full would show as ~`ROLL_BURST` checks allowed too many.
const LOAD_LEFT: u64 = 10;

/// Every running node refuses a check of `cost` for every drained tenant.
fn assert_drained_everywhere(cluster: &Cluster, drained: &[String], cost: u64, when: &str) {
    for node in cluster.running() {
        for t in drained {
            let reply = node.check(t, cost);
            assert_eq!(
                reply.status,
                429,
                "{when}: {} allowed drained tenant {t:?} (owner {}) a cost of {cost}: {reply}",
                node.node_id,
                owner_of(node, t)
            );
        }
    }
}

/// Sums the per-tenant tallies of several loads: `(allowed, last answer)`.
fn combined_tallies(reports: &[LoadReport]) -> BTreeMap<String, (u64, Instant)> {
    let mut spans: BTreeMap<String, (u64, Instant, Instant)> = BTreeMap::new();
    for report in reports {
        for (t, tally) in &report.tenants {
            let e = spans
                .entry(t.clone())
                .or_insert((0, tally.first_sent, tally.last_answered));
            e.0 += tally.allowed;
            e.1 = e.1.min(tally.first_sent);
            e.2 = e.2.max(tally.last_answered);
        }
    }
    spans
        .into_iter()
        .map(|(t, (allowed, _, last))| (t, (allowed, last)))
        .collect()
}

#[test]
fn rolling_restart_keeps_budgets() {
    let redis = RedisServer::start();
    let mut cluster = redis_cluster(&redis, 3, RPS, ROLL_BURST);
    let drained: Vec<String> = (0..10).map(|k| format!("roll-drained-{k}")).collect();
    let load_tenants: Vec<String> = (0..20).map(|k| format!("roll-load-{k}")).collect();

    let drained_at = Instant::now();
    for (k, t) in drained.iter().enumerate() {
        let reply = cluster.node(k % 3).check(t, ROLL_BURST);
        assert_eq!(reply.status, 200, "{t}: {reply}");
        assert_eq!(reply.u64_field("remaining"), 0, "{reply}");
    }
    // Each load tenant holds LOAD_LEFT tokens from here on, plus its refill.
    let left_at = Instant::now();
    for (k, t) in load_tenants.iter().enumerate() {
        let reply = cluster.node(k % 3).check(t, ROLL_BURST - LOAD_LEFT);
        assert_eq!(reply.status, 200, "{t}: {reply}");
    }
    let owners: Vec<String> = drained
        .iter()
        .map(|t| owner_of(cluster.node(0), t))
        .collect();
    eprintln!("owners of the drained tenants: {owners:?}");
    for t in drained.iter().chain(&load_tenants) {
        redis.wait_for_key(&snapshot_key(t), KEY_TIMEOUT);
    }

    // Node i restarts while the load runs on the two others; the next step's load starts
    // before this one stops, so some load runs throughout.
    let others = |i: usize| -> Vec<usize> { (0..3).filter(|j| *j != i).collect() };
    let mut reports = Vec::new();
    let mut load = load_on(&cluster, &others(0), &load_tenants);
    let_load_run(&load, 200, "warm up");
    for i in 0..3 {
        let step = Instant::now();
        let status = cluster.terminate(i);
        let stopped = step.elapsed();
        assert!(
            status.success(),
            "node-{i} exit status after SIGTERM: {status}\n{}",
            cluster.node(i).stderr()
        );
        cluster.restart_node(i);
        cluster.wait_converged(Duration::from_secs(20));
        eprintln!(
            "restart of node-{i}: exited {:?} after SIGTERM, the new node-{i} converged with \
             the others {:?} after SIGTERM",
            stopped,
            step.elapsed()
        );
        assert_drained_everywhere(
            &cluster,
            &drained,
            ROLL_BURST / 2,
            &format!("after the restart of node-{i}"),
        );
        let_load_run(&load, 200, &format!("after the restart of node-{i}"));
        if i < 2 {
            let next = load_on(&cluster, &others(i + 1), &load_tenants);
            reports.push(std::mem::replace(&mut load, next).stop());
            let_load_run(&load, 50, "the next step's load");
        }
    }
    reports.push(load.stop());

    for (k, report) in reports.iter().enumerate() {
        eprintln!("load while node-{k} restarted: {}", report.summary());
    }
    for report in &reports {
        report.assert_no_failures();
    }

    let elapsed = drained_at.elapsed();
    assert!(
        elapsed < Duration::from_secs(90),
        "the rolling restart took {elapsed:?}: a drained bucket may have refilled 100 tokens"
    );
    assert_drained_everywhere(&cluster, &drained, 100, "after the rolling restart");

    // The load tenants started with LOAD_LEFT tokens: one more allowed than LOAD_LEFT
    // plus the refill means a budget was (partly) restored or served twice: every
    // restart is graceful (SIGTERM), so every bucket is handed over.
    let mut worst = i64::MIN;
    for (t, (allowed, last)) in combined_tallies(&reports) {
        let span = last - left_at;
        let most = LOAD_LEFT + (RPS as f64 * span.as_secs_f64()).floor() as u64;
        let over = allowed as i64 - most as i64;
        worst = worst.max(over);
        eprintln!("{t}: allowed {allowed} in {span:?} (at most {most} expected): {over:+}");
        assert!(
            over <= 0,
            "{t}: {allowed} checks allowed in {span:?}, {over} more than a bucket left with \
             {LOAD_LEFT} tokens could allow: its budget came back during the rolling restart"
        );
    }
    eprintln!("rolling restart done {elapsed:?} after draining; worst over-admission {worst:+}");
}

// ---------------------------------------------------------------------------------
// How much a crash over-admits (write-behind).
// ---------------------------------------------------------------------------------

/// Over-admission caused by a kill -9 of the owner, measured under load: what the
/// owner admitted after its last snapshot is lost, and nothing else. Each tenant owned
/// by node-2 is hammered through node-0 and node-1 (every answer timestamped) and
/// drained to the end after the failover; its over-admission (allowed beyond
/// `burst + floor(rps * t)`) must not exceed what was admitted for it in the last two
/// snapshot intervals before the kill (one interval, plus the time the write itself
/// takes and the timer's jitter on a loaded machine). `on_owner_unreachable = deny`
/// keeps the policy's own decisions out of the figure. Prints the figures.
#[test]
fn crash_over_admission_is_bounded_by_the_last_snapshot_interval() {
    const BURST: u64 = 400;
    const INTERVAL_MS: u64 = 100;
    let redis = RedisServer::start();
    let mut cluster = llmtrace_integration::Cluster::builder()
        .nodes(3)
        .rate(RPS, BURST)
        .flag("redis-url", redis.url())
        .flag("snapshot-interval-ms", INTERVAL_MS)
        .flag("on-owner-unreachable", "deny")
        .start();
    let tenants = tenants_owned_by(cluster.node(0), "node-2", "crashload", 4);
    let publics = [
        cluster.node(0).public().clone(),
        cluster.node(1).public().clone(),
    ];
    let stop = AtomicBool::new(false);
    let killed_at: Mutex<Option<Instant>> = Mutex::new(None);
    let started = Instant::now();
    // Per tenant: (sent, answered, allowed) of every check.
    let answers: Vec<Mutex<Vec<(Instant, Instant, bool)>>> =
        tenants.iter().map(|_| Mutex::new(Vec::new())).collect();
    std::thread::scope(|s| {
        for (k, tenant) in tenants.iter().enumerate() {
            let (publics, stop, answers) = (&publics, &stop, &answers);
            s.spawn(move || {
                let body = serde_json::json!({"tenant_id": tenant, "cost": 1});
                let mut n = 0usize;
                // Bounded: stops on the flag or after 60 s.
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                    let sent = Instant::now();
                    let reply = publics[n % 2].try_post_json("/v1/check", &body);
                    n += 1;
                    if let Ok(r) = reply {
                        if r.status == 200 || r.status == 429 {
                            answers[k].lock().unwrap().push((
                                sent,
                                Instant::now(),
                                r.status == 200,
                            ));
                        }
                    }
                }
            });
        }
        // Let every tenant spend about a quarter of its burst, then kill the owner.
        wait_until(
            Duration::from_secs(30),
            "a quarter of each burst spent",
            || {
                answers
                    .iter()
                    .all(|a| a.lock().unwrap().iter().filter(|x| x.2).count() as u64 >= BURST / 4)
            },
        );
        *killed_at.lock().unwrap() = Some(Instant::now());
        cluster.kill(2);
        cluster.wait_converged(Duration::from_secs(20));
        // Then until every bucket is drained again (refused on both survivors).
        wait_until(
            Duration::from_secs(40),
            "every bucket drained after the failover",
            || {
                answers.iter().all(|a| {
                    let a = a.lock().unwrap();
                    a.len() >= 4 && a[a.len() - 4..].iter().all(|x| !x.2)
                })
            },
        );
        stop.store(true, Ordering::SeqCst);
    });
    let killed = killed_at.into_inner().unwrap().unwrap();
    for (tenant, answers) in tenants.iter().zip(answers) {
        let answers = answers.into_inner().unwrap();
        let allowed = answers.iter().filter(|a| a.2).count() as u64;
        let first = answers.first().unwrap().0;
        let last = answers.last().unwrap().1;
        let most = BURST + (RPS as f64 * (last - first).as_secs_f64()).floor() as u64;
        let over = allowed as i64 - most as i64;
        let window = |ms: u64| {
            answers
                .iter()
                .filter(|a| a.2 && a.1 <= killed && killed - a.1 <= Duration::from_millis(ms))
                .count()
        };
        let (last_one, last_two) = (window(INTERVAL_MS), window(2 * INTERVAL_MS));
        eprintln!(
            "crash of the owner of {tenant}: allowed {allowed}, one bucket's bound {most}, \
             over-admission {over:+}; admitted in the last {INTERVAL_MS} ms before the kill: \
             {last_one}, in the last {} ms: {last_two}",
            2 * INTERVAL_MS
        );
        assert!(
            over <= last_two as i64,
            "{tenant}: over-admitted {over} after the crash, more than the {last_two} admitted \
             in the last two snapshot intervals"
        );
    }
}
