//! What every benchmark shares: the settings, the binaries to measure (built first, found
//! next to this one), wrk and redis-server (installed with apt-get when missing), the
//! node flags every run uses, the wrk loads of the Lua scripts, and the kept logs.

use crate::cleanup::Guarded;
use crate::settings::Settings;
use crate::wrk::Wrk;
use llmtrace_integration::{find_program, Node, NodeBuilder, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The context every benchmark runs in.
pub struct Bench {
    pub s: Settings,
    /// `target/<profile>`: this binary's directory, where cargo puts the node too.
    bin_dir: PathBuf,
    /// `scripts/bench` of the repository (the wrk Lua scripts).
    scripts: PathBuf,
    /// Where outputs are kept with BENCH_KEEP_LOGS=1 (kept on exit).
    logs: Option<PathBuf>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Bench {
    /// Builds the node's binaries (unless BENCH_SKIP_BUILD=1) with this binary's
    /// profile and checks they are there.
    pub fn prepare(s: Settings) -> Bench {
        let exe = std::env::current_exe().expect("current_exe");
        let bin_dir = exe.parent().expect("binary has a directory").to_path_buf();
        let release = bin_dir.file_name().is_some_and(|n| n != "debug");
        if !release {
            eprintln!(
                "!! this is a debug build: run `cargo run --release ...` for meaningful figures"
            );
        }
        if s.skip_build {
            eprintln!("BENCH_SKIP_BUILD=1: using existing binaries");
        } else {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(repo_root())
                .args(["build", "-p", "llmtrace-node", "--bins"]);
            // `cargo run` hands this process its package's CARGO_PKG_* / CARGO_MANIFEST_*;
            // build scripts that rerun when those change (ring's) would then rebuild the
            // node on every run, and again on the next plain `cargo build`.
            for (key, _) in std::env::vars_os() {
                let k = key.to_string_lossy();
                if k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_MANIFEST_")
                    || matches!(
                        k.as_ref(),
                        "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
                    )
                {
                    cmd.env_remove(&key);
                }
            }
            if release {
                cmd.arg("--release");
            }
            let profile = if release { " --release" } else { "" };
            eprintln!("building the node's binaries: cargo build -p llmtrace-node --bins{profile}");
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build failed: {status}");
        }
        let bench = Bench {
            s,
            bin_dir,
            scripts: repo_root().join("scripts/bench"),
            logs: None,
        };
        for b in [bench.node_bin(), bench.plain_bin()] {
            assert!(b.is_file(), "missing binary {}", b.display());
        }
        bench
    }

    /// Keeps outputs in a temp dir from now on (BENCH_KEEP_LOGS=1).
    pub fn keep_logs(&mut self) {
        let dir = TempDir::new("bench");
        let path = dir.path().to_path_buf();
        std::mem::forget(dir);
        eprintln!("logs kept in {}", path.display());
        self.logs = Some(path);
    }

    /// Writes `text` to `name` in the kept-logs dir, if logs are kept.
    pub fn keep(&self, name: &str, text: &str) {
        if let Some(dir) = &self.logs {
            let _ = std::fs::write(dir.join(name), text);
        }
    }

    pub fn node_bin(&self) -> PathBuf {
        self.bin_dir.join("llmtrace-node")
    }

    pub fn plain_bin(&self) -> PathBuf {
        self.bin_dir.join("llmtrace-plain-bench")
    }

    /// The release node on ephemeral loopback listeners, with BENCH_SHARDS,
    /// BENCH_WORKERS and BENCH_NODE_ARGS.
    pub fn node(&self) -> NodeBuilder {
        let mut b = Node::builder().binary(self.node_bin());
        for listener in ["listen", "admin-listen", "cluster-listen"] {
            b = b.flag(listener, "127.0.0.1:0");
        }
        if let Some(shards) = &self.s.shards {
            b = b.flag("shards", shards);
        }
        if let Some(workers) = &self.s.workers {
            b = b.flag("http-workers", workers);
        }
        self.s.node_args.iter().fold(b, |b, a| b.arg(a.as_str()))
    }

    /// Prints the node's command line, starts it and tracks its pid.
    pub fn start_node(&self, name: &str, builder: NodeBuilder) -> Guarded<Node> {
        println!("-- llmtrace-node {}", builder.args().join(" "));
        let node = builder.start();
        eprintln!(
            "{name} pid={}: public={} admin={}",
            node.pid(),
            node.public_url(),
            node.admin_url()
        );
        let pid = node.pid();
        Guarded::new(node, vec![pid])
    }

    /// `scripts/bench/check.lua` against `url`: random tenants out of `tenant_space`,
    /// cost BENCH_COST, each connection pausing `delay_ms` before a request.
    pub fn check_load(
        &self,
        url: &str,
        threads: u32,
        connections: u32,
        tenant_space: u64,
        delay_ms: u64,
    ) -> Wrk {
        let status = if self.s.count_status { "1" } else { "0" };
        Wrk {
            script: self.scripts.join("check.lua"),
            threads,
            connections,
            env: vec![
                ("BENCH_TENANT_SPACE".into(), tenant_space.to_string()),
                ("BENCH_COST".into(), self.s.cost.to_string()),
                ("BENCH_STATUS".into(), status.into()),
                ("BENCH_DELAY_MS".into(), delay_ms.to_string()),
            ],
            url: url.to_string(),
        }
    }

    /// `scripts/bench/proxy.lua` against `url`, as the proxy benchmark runs it.
    pub fn proxy_load(&self, url: &str) -> Wrk {
        Wrk {
            script: self.scripts.join("proxy.lua"),
            threads: 1,
            connections: self.s.proxy_connections,
            env: vec![
                ("BENCH_TENANT_SPACE".into(), self.s.tenant_space.to_string()),
                ("BENCH_DELAY_MS".into(), self.s.proxy_delay_ms.to_string()),
            ],
            url: url.to_string(),
        }
    }
}

/// Installs `package` with apt-get when `program` is not on PATH (root only); exits
/// with a message otherwise.
pub fn ensure_tool(program: &str, package: &str) {
    if find_program(program, &["/usr/sbin"]).is_some() {
        return;
    }
    // SAFETY: geteuid(2) only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{program} is not installed and this is not root: install it (apt-get install {package})");
        std::process::exit(1);
    }
    eprintln!("installing {package} with apt-get");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("run apt-get: {e}"))
    };
    let install = ["install", "-y", "-q", package];
    if !apt(&install).status.success() {
        let _ = apt(&["update", "-q"]);
        let out = apt(&install);
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            std::process::exit(1);
        }
    }
}
