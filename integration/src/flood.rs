//! A heavy load of one request on one listener: `connections` threads, each a keep-alive
//! connection sending the request `depth` at a time (pipelined) and counting the answers
//! by status. An answer counts once it arrived whole. A connection the server closes is
//! opened again until a connect fails (the node stopped); the load ends when told, at
//! its bounds, or when every connection ended.

use crate::raw_http::RawConn;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Hard bounds of one flood, whatever the test asks for.
pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_DEPTH: usize = 16;
pub const MAX_DURATION: Duration = Duration::from_secs(60);
/// How long a connection waits for an answer before it gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// What a flood saw.
#[derive(Debug, Default, Clone)]
pub struct FloodReport {
    /// Requests written (answered or not).
    pub sent: u64,
    /// Whole answers, by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Connections the server closed (or reset) while answers were awaited.
    pub closed: u64,
    /// The first few errors other than a close.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    fn merge(&mut self, other: FloodReport) {
        self.sent += other.sent;
        for (s, n) in other.by_status {
            *self.by_status.entry(s).or_default() += n;
        }
        self.closed += other.closed;
        self.errors.extend(other.errors);
        self.errors.truncate(10);
    }
}

/// A running flood; stopped (and joined) on drop.
pub struct Flood {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    started: Instant,
    threads: Vec<JoinHandle<FloodReport>>,
}

impl Flood {
    /// Starts `connections` threads sending `request` (whole bytes of one request) to
    /// `addr` (`host:port`), `depth` in flight on each.
    pub fn start(addr: &str, request: Vec<u8>, connections: usize, depth: usize) -> Flood {
        assert!((1..=MAX_CONNECTIONS).contains(&connections));
        assert!((1..=MAX_DEPTH).contains(&depth));
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let batch: Arc<Vec<u8>> = Arc::new(request.repeat(depth));
        let threads = (0..connections)
            .map(|_| {
                let (addr, batch) = (addr.to_string(), Arc::clone(&batch));
                let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
                std::thread::spawn(move || {
                    connection(&addr, &batch, depth, &stop, &answered, started)
                })
            })
            .collect();
        Flood {
            stop,
            answered,
            started,
            threads,
        }
    }

    /// Whole answers so far (any status).
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// True while a connection still runs.
    pub fn is_running(&self) -> bool {
        self.threads.iter().any(|t| !t.is_finished())
    }

    /// Tells every connection to stop, waits for them and sums what they saw.
    pub fn stop(mut self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = FloodReport::default();
        for t in self.threads.drain(..) {
            report.merge(t.join().expect("flood thread panicked"));
        }
        report.elapsed = self.started.elapsed();
        report
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One connection's loop (reopened after the server closes it).
fn connection(
    addr: &str,
    batch: &[u8],
    depth: usize,
    stop: &AtomicBool,
    answered: &AtomicU64,
    started: Instant,
) -> FloodReport {
    let mut report = FloodReport::default();
    let running = || !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_DURATION;
    'connect: while running() {
        let Ok(mut conn) = RawConn::connect(addr, READ_TIMEOUT) else {
            break;
        };
        while running() {
            if conn.send(batch).is_err() {
                report.closed += 1;
                continue 'connect;
            }
            report.sent += depth as u64;
            for _ in 0..depth {
                match conn.read_reply() {
                    Ok(reply) => {
                        *report.by_status.entry(reply.status).or_default() += 1;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        use std::io::ErrorKind::*;
                        let closed =
                            matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe);
                        if !closed && report.errors.len() < 10 {
                            report.errors.push(e.to_string());
                        }
                        report.closed += 1;
                        continue 'connect;
                    }
                }
            }
        }
    }
    report
}
