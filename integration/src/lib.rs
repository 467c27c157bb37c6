//! Harness for black-box tests that run real `redis-server` and `llmtrace-node` processes.
//!
//! Layout:
//! - [`nginx`]: a real nginx load balancer rendered from `deploy/nginx.conf`.
//! - [`node`]: start an `llmtrace-node` child (builder, ready line, SIGTERM / SIGKILL,
//!   kill on drop) and talk to it over HTTP.
//! - [`certs`]: a CA and node certificates for the cluster's mutual TLS (rcgen).
//! - [`browser`]: headless Chromium through ChromeDriver's WebDriver HTTP protocol.
//! - [`cluster`]: N nodes seeded from the first, waiting until they agree on one ring;
//!   add, stop and kill nodes.
//! - [`load`]: a bounded background load of checks round-robin over nodes and tenants.
//! - [`flood`]: a heavy load of one request over many keep-alive connections, several
//!   requests in flight on each, answers counted by status.
//! - [`raw_http`]: HTTP/1.1 by hand on a socket (pipelining, slow or unfinished bodies).
//! - [`http`]: a thin blocking HTTP client that never treats a status as an error.
//! - [`output`]: drains a child's stdout / stderr in threads and keeps the tail for
//!   failure messages.
//! - [`process`]: spawns a server child and waits for its ready line (nodes, ChromeDriver,
//!   the benchmark's plain baseline server).
//! - [`metrics`]: parses the Prometheus text of the admin `/metrics` endpoint: series
//!   values and histogram quantiles.
//! - [`redis`]: start / stop / restart a private `redis-server` on a free loopback port.
//! - [`redis_deploy`]: Redis as operators deploy it: TLS with client certificates, a
//!   Redis Cluster, a master and replica behind a Sentinel.
//! - [`relay`]: a recording TCP + UDP relay in front of a node's cluster port (what a
//!   network observer captures).
//! - [`resp`]: a tiny RESP client (PING, GET, PTTL, KEYS, ...) over a raw TCP socket.
//! - [`gateway`]: gateway configurations (limits, proxy rules, a price) as TOML.
//! - [`stub`]: a stub OpenAI-compatible upstream for the proxy tests and the proxy
//!   benchmark (the only mock).
//! - [`ws`]: a WebSocket client written by hand, for the forwarding stream's
//!   hostile-input tests.
//! - [`rls`]: a blocking gRPC client of the Envoy rate limit service (tonic, Envoy's
//!   protos from `envoy-types`), and raw messages for hostile-input tests.
//! - [`scenario`]: building blocks shared by the multi-node tests (owners, loads, sums).
//!
//! The benchmarks (`src/bin/bench`, run by `scripts/bench.sh`) drive the same harness.
//!
//! Everything binds loopback port 0 or a freshly probed free port; every child is killed
//! when its guard drops. Synchronisation is by polling a condition ([`wait_until`]), never
//! by a fixed sleep.

pub mod browser;
pub mod certs;
pub mod cluster;
pub mod flood;
pub mod gateway;
pub mod http;
pub mod load;
pub mod metrics;
pub mod nginx;
pub mod node;
pub mod output;
pub mod process;
pub mod raw_http;
pub mod redis;
pub mod redis_deploy;
pub mod relay;
pub mod resp;
pub mod rls;
pub mod scenario;
pub mod stub;
pub mod ws;

pub use cluster::{Cluster, ClusterBuilder};
pub use http::Reply;
pub use load::{Load, LoadReport};
pub use node::{node_help, Node, NodeBuilder};
pub use process::StartFailure;
pub use redis::RedisServer;
pub use stub::Stub;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a node or redis-server may take to come up on a loaded 2-core machine.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The venv's python with the `openai` and `grpcio` clients: `LLMTRACE_PYTHON`
/// (scripts/test.sh sets it), else `target/py-venv` (which scripts/test.sh creates).
pub fn venv_python() -> PathBuf {
    if let Some(p) = std::env::var_os("LLMTRACE_PYTHON") {
        return p.into();
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python");
    assert!(
        local.exists(),
        "no python with the openai, anthropic and grpcio clients: run scripts/test.sh (it creates \
         target/py-venv) or set LLMTRACE_PYTHON"
    );
    local
}

/// Runs `integration/py/<script>` with `args` in the venv; panics unless it succeeds,
/// and parses the JSON line it prints.
pub fn run_python(script: &str, args: &[&str]) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script);
    let out = std::process::Command::new(venv_python())
        .arg(path)
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Polls `cond` every 20-200 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()))
}

/// Polls `probe` until it yields a value; panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Polls `cond` for `duration` and panics naming `what` as soon as it fails. For the
/// rare property that must *keep* holding (something that should not happen), where
/// only a bounded observation window exists.
pub fn holds_for(duration: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        assert!(cond(), "{what} stopped holding after {:?}", start.elapsed());
        if start.elapsed() >= duration {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether an external tool a test needs (Chromium, nginx) is installed. When it is
/// not, the test prints why and skips, unless `LLMTRACE_REQUIRE_TOOLS` is set (as
/// `scripts/test.sh` does after installing them): then a missing tool fails the test.
pub fn tool_available(found: Result<(), String>, test: &str) -> bool {
    match found {
        Ok(()) => true,
        Err(why) if std::env::var_os("LLMTRACE_REQUIRE_TOOLS").is_some() => {
            panic!("{test}: {why} (LLMTRACE_REQUIRE_TOOLS is set)")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// The first `name` found in `$PATH`, then in `extra_dirs` (e.g. `/usr/sbin`).
pub fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A loopback port that was free a moment ago (bind port 0, read it, drop the socket).
/// Another process may take it before we use it: callers retry where that matters.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to probe a free port")
}

/// A directory under the system temp dir, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("llmtrace-it-{prefix}-{}-{n}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        std::fs::write(&file, contents).unwrap_or_else(|e| panic!("write {file:?}: {e}"));
        file
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A deterministic xorshift64* generator for bounded fuzz loops (fixed seed, no deps).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
