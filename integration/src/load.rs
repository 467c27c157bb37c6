//! A background load of single checks for cluster tests: one thread sends cost-1 checks
//! round-robin over a set of public listeners and a set of tenants (every tenant visits
//! every target), tallies every answer, and stops when told to, after `max_checks`, or
//! after `max_duration` — whichever comes first.

use crate::http::Client;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Hard bounds of one load, whatever the test does.
pub const MAX_CHECKS: u64 = 200_000;
pub const MAX_DURATION: Duration = Duration::from_secs(60);

/// What one tenant saw.
#[derive(Debug, Clone)]
pub struct TenantTally {
    pub allowed: u64,
    pub refused: u64,
    /// When its first check was sent.
    pub first_sent: Instant,
    /// When the answer to its last check arrived.
    pub last_answered: Instant,
}

impl TenantTally {
    /// Time from its first check to its last answer (bounds any refill).
    pub fn elapsed(&self) -> Duration {
        self.last_answered - self.first_sent
    }

    /// `allowed - (burst + floor(rps * elapsed))`: how many checks were allowed beyond
    /// what one bucket could have allowed (negative: fewer).
    pub fn over_admission(&self, burst: u64, rps: u64) -> i64 {
        let most = burst + (rps as f64 * self.elapsed().as_secs_f64()).floor() as u64;
        self.allowed as i64 - most as i64
    }
}

/// Everything a load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// Answers marked `"degraded": true`.
    pub degraded: u64,
    /// The slowest answer.
    pub max_latency: Duration,
    pub tenants: BTreeMap<String, TenantTally>,
    /// The first few failures (status other than 200 / 429, or a transport error).
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Checks that did not get a 200 or a 429.
    pub fn failed(&self) -> u64 {
        self.transport_errors
            + self
                .by_status
                .iter()
                .filter(|(s, _)| **s != 200 && **s != 429)
                .map(|(_, n)| n)
                .sum::<u64>()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} checks in {:?}: statuses {:?}, transport errors {}, degraded {}, slowest {:?}; \
             first failures: {:?}",
            self.sent,
            self.elapsed,
            self.by_status,
            self.transport_errors,
            self.degraded,
            self.max_latency,
            self.failures
        )
    }

    /// Panics unless every check got a 200 or a 429.
    pub fn assert_no_failures(&self) {
        assert_eq!(self.failed(), 0, "checks failed: {}", self.summary());
    }
}

/// A running background load; stop it with [`Load::stop`] (also stopped on drop).
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<LoadReport>>,
}

impl Load {
    /// Starts the load thread. Check `i` goes to `targets[i % targets.len()]` for
    /// tenant `tenants[(i / targets.len()) % tenants.len()]`.
    pub fn start(targets: Vec<Client>, tenants: Vec<String>) -> Load {
        assert!(!targets.is_empty() && !tenants.is_empty());
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let handle = std::thread::spawn(move || run(&targets, &tenants, &stop2, &sent2));
        Load {
            stop,
            sent,
            handle: Some(handle),
        }
    }

    /// Checks answered (or failed) so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// True while the thread runs (it ends early only at its hard bounds).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops the thread and returns its report.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("load handle");
        handle.join().expect("load thread panicked")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(targets: &[Client], tenants: &[String], stop: &AtomicBool, sent: &AtomicU64) -> LoadReport {
    let start = Instant::now();
    let mut report = LoadReport::default();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) && i < MAX_CHECKS && start.elapsed() < MAX_DURATION {
        let n = targets.len() as u64;
        let target = &targets[(i % n) as usize];
        let tenant = &tenants[((i / n) % tenants.len() as u64) as usize];
        let sent_at = Instant::now();
        let result = target.try_post_json("/v1/check", &json!({"tenant_id": tenant, "cost": 1}));
        let answered = Instant::now();
        report.max_latency = report.max_latency.max(answered - sent_at);
        match result {
            Ok(reply) => {
                *report.by_status.entry(reply.status).or_default() += 1;
                if reply.json["degraded"] == true {
                    report.degraded += 1;
                }
                let tally = report.tenants.entry(tenant.clone()).or_insert(TenantTally {
                    allowed: 0,
                    refused: 0,
                    first_sent: sent_at,
                    last_answered: answered,
                });
                tally.last_answered = answered;
                match reply.status {
                    200 => tally.allowed += 1,
                    429 => tally.refused += 1,
                    _ if report.failures.len() < 10 => report
                        .failures
                        .push(format!("{} {tenant}: {reply}", target.base())),
                    _ => {}
                }
            }
            Err(e) => {
                report.transport_errors += 1;
                if report.failures.len() < 10 {
                    report
                        .failures
                        .push(format!("{} {tenant}: transport error {e}", target.base()));
                }
            }
        }
        i += 1;
        sent.store(i, Ordering::Relaxed);
    }
    report.sent = i;
    report.elapsed = start.elapsed();
    report
}
