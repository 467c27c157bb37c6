//! One `llmtrace-node` child process: a builder for its flags / env / TOML file, the
//! ready line, HTTP helpers for its public and admin listeners, SIGTERM / SIGKILL, and
//! kill on drop (printing the node's output when the test is failing).

use crate::http::{Client, Reply};
use crate::output::Captured;
use crate::process::{self, line_field, wait_exit, StartFailure, STOP_TIMEOUT};
use crate::{metrics, wait_for, wait_until, RedisServer, TempDir, STARTUP_TIMEOUT};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The shutdown grace (`LLMTRACE_SHUTDOWN_GRACE_MS`) of a node whose test gives
/// none: short, so that stopping a node does not make every test wait for the
/// default, and not 0, so that every test stopping a node goes through it.
pub const TEST_SHUTDOWN_GRACE_MS: u64 = 100;

/// The path of the `llmtrace-node` binary: `$LLMTRACE_NODE_BIN`, else the one next to
/// the test executable's directory (`target/debug/llmtrace-node`).
pub fn node_binary() -> PathBuf {
    let path = match std::env::var_os("LLMTRACE_NODE_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let deps = exe.parent().expect("test executable has a directory");
            deps.join("..").join("llmtrace-node")
        }
    };
    assert!(
        path.is_file(),
        "llmtrace-node binary not found at {}: build it with cargo build -p llmtrace-node \
         (or set LLMTRACE_NODE_BIN)",
        path.display()
    );
    path
}

/// `llmtrace-node --help`: tests use it to check that deployment files only use
/// flags the binary accepts, and to see which optional flags it has.
pub fn node_help() -> String {
    let out = Command::new(node_binary())
        .arg("--help")
        .env_clear()
        .output()
        .expect("run llmtrace-node --help");
    assert!(out.status.success(), "llmtrace-node --help failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flags, environment and config file for one node.
#[derive(Default, Clone)]
pub struct NodeBuilder {
    /// The binary to run; [`node_binary`] when unset.
    binary: Option<PathBuf>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    config_toml: Option<String>,
    /// The admin token the node requires; its admin client sends it.
    admin_token: Option<String>,
    /// Start as a node not asked to cluster: no `--cluster-listen`.
    alone: bool,
    /// The child's open-file limit (soft and hard), when the test sets one.
    open_files: Option<u64>,
}

impl NodeBuilder {
    /// Runs `path` instead of [`node_binary`] (e.g. a release build).
    pub fn binary(mut self, path: PathBuf) -> Self {
        self.binary = Some(path);
        self
    }

    /// The arguments given so far (the ephemeral listeners are added at start).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// `--name value`.
    pub fn flag(self, name: &str, value: impl ToString) -> Self {
        self.arg(format!("--{name}")).arg(value.to_string())
    }

    /// `--requests-per-second rps --burst-size burst`.
    pub fn rate(self, rps: u64, burst: u64) -> Self {
        self.flag("requests-per-second", rps)
            .flag("burst-size", burst)
    }

    /// Passes no `--cluster-listen` (the harness otherwise gives port 0):
    /// the node runs as one not asked to cluster.
    pub fn alone(mut self) -> Self {
        self.alone = true;
        self
    }

    /// Starts the node with an open-file limit of `n` (soft and hard).
    pub fn open_file_limit(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    /// `--admin-token token`; the node's admin client then sends it.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_string());
        self.flag("admin-token", token)
    }

    /// The admin client sends `token` without passing it to the node (set it through
    /// the environment or the config file).
    pub fn admin_bearer(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_string());
        self
    }

    pub fn redis(self, redis: &RedisServer) -> Self {
        self.flag("redis-url", redis.url())
    }

    /// An environment variable for the child (all inherited `LLMTRACE_*` are removed).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Writes `toml` to a temp file and passes `--config FILE`.
    pub fn config_toml(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_string());
        self
    }

    /// Starts the node and waits for its ready line; panics with its output otherwise.
    pub fn start(self) -> Node {
        let args = self.args.clone();
        self.try_start().unwrap_or_else(|f| {
            panic!(
                "llmtrace-node {args:?} did not start (exit status {:?})\n--- stdout ---\n{}\n\
                 --- stderr ---\n{}",
                f.status, f.stdout, f.stderr
            )
        })
    }

    /// The test passes `--flag` itself.
    fn gives_flag(&self, flag: &str) -> bool {
        self.args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    }

    /// Starts a node whose configuration must be refused: panics unless it exits with
    /// status 2 before its ready line; returns its stderr (the message naming the key).
    pub fn start_refused(self) -> String {
        let args = self.args.clone();
        match self.try_start() {
            Ok(_) => panic!("llmtrace-node {args:?} started; its configuration should be refused"),
            Err(f) => {
                assert_eq!(
                    f.status.and_then(|s| s.code()),
                    Some(2),
                    "{args:?}: {}",
                    f.stderr
                );
                f.stderr
            }
        }
    }

    /// Starts the node; `Err` when it exits (or stays silent) before its ready line.
    pub fn try_start(self) -> Result<Node, StartFailure> {
        let dir = TempDir::new("node");
        let mut cmd = Command::new(self.binary.clone().unwrap_or_else(node_binary));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LLMTRACE_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(toml) = &self.config_toml {
            cmd.arg("--config").arg(dir.write("node.toml", toml));
        }
        // Ephemeral ports unless the test sets the listeners itself.
        for flag in ["--listen", "--admin-listen", "--cluster-listen"] {
            let skip = self.gives_flag(flag) || (self.alone && flag == "--cluster-listen");
            if !skip {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        // A short shutdown grace unless the test gives one (flag, environment or
        // file); through the environment, which a node without the setting ignores.
        let env = "LLMTRACE_SHUTDOWN_GRACE_MS";
        let toml = self.config_toml.as_deref().unwrap_or_default();
        if !(self.gives_flag("--shutdown-grace-ms")
            || self.envs.iter().any(|(k, _)| k == env)
            || toml.contains("shutdown_grace_ms"))
        {
            cmd.env(env, TEST_SHUTDOWN_GRACE_MS.to_string());
        }
        cmd.args(&self.args);
        if let Some(n) = self.open_files {
            process::limit_open_files(&mut cmd, n);
        }
        let started = process::start(&mut cmd, |l| l.starts_with("llmtrace-node listening "))?;
        let line = started.line;
        let field = |key: &str| {
            line_field(&line, key).unwrap_or_else(|| panic!("ready line {line:?} lacks {key}="))
        };
        let public = field("public");
        let admin = field("admin");
        let cluster_addr = field("cluster");
        let mut admin_client = Client::new(format!("http://{admin}"));
        if let Some(token) = &self.admin_token {
            admin_client = admin_client.with_bearer(token);
        }
        let node = Node {
            node_id: field("node_id"),
            public: Client::new(format!("http://{public}")),
            admin: admin_client,
            cluster: Client::new(format!("http://{cluster_addr}")),
            cluster_addr,
            proxy_addr: line_field(&line, "proxy"),
            rls_addr: line_field(&line, "rls"),
            child: started.child,
            output: started.output,
            _dir: dir,
        };
        Ok(node)
    }
}

/// The outcome of [`Node::check_until_refused`].
pub struct Drained {
    /// How many checks were allowed before the first refusal.
    pub allowed: u64,
    /// The first 429 reply.
    pub refused: Reply,
    /// Time from sending the first check to receiving the refusal.
    pub elapsed: Duration,
}

/// A running node; killed (SIGKILL) when dropped.
pub struct Node {
    pub node_id: String,
    public: Client,
    admin: Client,
    /// The node-to-node listener (`POST /cluster/v1/checks`).
    cluster: Client,
    /// `host:port` of the cluster listener, as peers pass it to `--seeds`.
    cluster_addr: String,
    /// `host:port` of the proxy listener, when proxy mode is on.
    proxy_addr: Option<String>,
    /// `host:port` of the RLS (gRPC) listener, when it is on.
    rls_addr: Option<String>,
    child: Child,
    output: Captured,
    /// Holds the config file for the node's lifetime.
    _dir: TempDir,
}

impl Node {
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// Starts a node with extra command-line arguments (ephemeral listeners added).
    pub fn start(args: &[&str]) -> Node {
        args.iter().fold(Node::builder(), |b, a| b.arg(*a)).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT` of the public listener.
    pub fn public_url(&self) -> &str {
        self.public.base()
    }

    /// `http://host:port` of the proxy listener; panics when proxy mode is off.
    pub fn proxy_url(&self) -> String {
        format!(
            "http://{}",
            self.proxy_addr
                .as_deref()
                .expect("node started without --proxy-listen")
        )
    }

    /// `http://host:port` of the RLS listener; panics when it is off.
    pub fn rls_url(&self) -> String {
        format!(
            "http://{}",
            self.rls_addr
                .as_deref()
                .expect("node started without --rls-listen")
        )
    }

    pub fn admin_url(&self) -> &str {
        self.admin.base()
    }

    pub fn public(&self) -> &Client {
        &self.public
    }

    pub fn admin(&self) -> &Client {
        &self.admin
    }

    /// The client of the node-to-node listener.
    pub fn cluster(&self) -> &Client {
        &self.cluster
    }

    /// `host:port` of the cluster listener (TCP RPC and UDP gossip), for `--seeds`.
    pub fn cluster_addr(&self) -> &str {
        &self.cluster_addr
    }

    /// `GET path` on the admin listener; panics unless it answers 200 with JSON.
    pub fn admin_get_json(&self, path: &str) -> Value {
        let reply = self.admin.get(path);
        assert_eq!(reply.status, 200, "GET {}{path}: {reply}", self.admin_url());
        assert!(!reply.json.is_null(), "GET {path}: not JSON: {reply}");
        reply.json
    }

    /// `GET path` on the admin listener: the JSON body of a 200, None otherwise (also
    /// when the node does not answer, e.g. while it stops).
    pub fn try_admin_get_json(&self, path: &str) -> Option<Value> {
        let reply = self.admin.try_get(path).ok()?;
        (reply.status == 200 && !reply.json.is_null()).then_some(reply.json)
    }

    /// This node's view of the cluster, `GET /admin/cluster`.
    pub fn cluster_view(&self) -> Value {
        self.admin_get_json("/admin/cluster")
    }

    /// The ids in this node's ring, sorted (None when the admin listener is down).
    pub fn ring_members(&self) -> Option<Vec<String>> {
        let view = self.try_admin_get_json("/admin/cluster")?;
        let mut ids: Vec<String> = view["ring_members"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        ids.sort();
        Some(ids)
    }

    /// True when `GET /readyz` answers 200 right now.
    pub fn is_ready(&self) -> bool {
        self.public
            .try_get("/readyz")
            .is_ok_and(|r| r.status == 200)
    }

    /// Everything the node wrote to stdout so far (tail).
    pub fn stdout(&self) -> String {
        self.output.stdout()
    }

    /// Everything the node wrote to stderr so far (tail).
    pub fn stderr(&self) -> String {
        self.output.stderr()
    }

    /// `POST /v1/check {"tenant_id", "cost"}`.
    pub fn check(&self, tenant: &str, cost: u64) -> Reply {
        self.check_json(&json!({"tenant_id": tenant, "cost": cost}))
    }

    pub fn check_json(&self, body: &Value) -> Reply {
        self.public.post_json("/v1/check", body)
    }

    /// `POST /v1/check/batch {"checks": items}`.
    pub fn batch(&self, items: &[Value]) -> Reply {
        self.public
            .post_json("/v1/check/batch", &json!({ "checks": items }))
    }

    /// Sends cost-1 checks for `tenant` until one is refused; panics on any status other
    /// than 200 / 429, or when more than `max_allowed` are allowed.
    pub fn check_until_refused(&self, tenant: &str, max_allowed: u64) -> Drained {
        let start = Instant::now();
        let mut allowed = 0;
        loop {
            let reply = self.check(tenant, 1);
            match reply.status {
                200 => {
                    assert_eq!(reply.allowed(), Some(true), "200 must say allowed: {reply}");
                    allowed += 1;
                    assert!(
                        allowed <= max_allowed,
                        "tenant {tenant:?}: {allowed} checks allowed, at most {max_allowed} \
                         expected; last {reply}"
                    );
                }
                429 => {
                    return Drained {
                        allowed,
                        refused: reply,
                        elapsed: start.elapsed(),
                    }
                }
                _ => panic!("unexpected reply to a check for {tenant:?}: {reply}"),
            }
        }
    }

    /// The admin `/metrics` page.
    pub fn metrics(&self) -> String {
        let reply = self.admin.get("/metrics");
        assert_eq!(reply.status, 200, "GET /metrics: {reply}");
        reply.text
    }

    /// A series' value (label order free; summed over unlisted labels), None if absent.
    pub fn metric(&self, selector: &str) -> Option<f64> {
        metrics::value(&self.metrics(), selector)
    }

    /// Polls `/metrics` until `selector` satisfies `pred`; returns its value.
    pub fn wait_metric(
        &self,
        selector: &str,
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let what = format!("metric {selector} to reach the expected value");
        wait_for(timeout, &what, || {
            self.metric(selector).filter(|v| pred(*v))
        })
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self) {
        wait_until(STARTUP_TIMEOUT, "GET /readyz to answer 200", || {
            self.is_ready()
        });
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for the process to exit: its exit status, None
    /// when it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// Sends SIGTERM and returns at once (the node starts leaving).
    pub fn signal_term(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` (e.g. SIGHUP: reload the cluster TLS files) and returns at once.
    pub fn signal(&self, signal: libc::c_int) {
        process::signal(&self.child, signal);
    }

    /// SIGTERM, then waits (at most [`STOP_TIMEOUT`]) for the exit status. Panics (after a
    /// SIGKILL) when the node does not stop in time.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_term();
        match wait_exit(&mut self.child, STOP_TIMEOUT) {
            Some(status) => {
                self.output.wait_closed(Duration::from_secs(5));
                status
            }
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "node did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                    self.output.describe()
                );
            }
        }
    }

    /// SIGKILL (a crash: nothing is flushed) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let running = self.is_running();
        if running {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "=== llmtrace-node {} ({}) output ===\n{}",
                self.node_id,
                self.public.base(),
                self.output.describe()
            );
        }
    }
}
