//! `scripts/cluster.sh`: `up 3` starts redis, three nodes and nginx on free loopback
//! ports and prints the load balancer's URL; a check through it is answered; `status`
//! lists the five processes; `down` stops exactly those (and nothing is left running).
//!
//! Skips with a printed reason when nginx or curl is missing, unless
//! `LLMTRACE_REQUIRE_TOOLS` is set (scripts/test.sh installs them and sets it).

use llmtrace_integration::http::Client;
use llmtrace_integration::node::node_binary;
use llmtrace_integration::{nginx, tool_available, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .env("LLMTRACE_CLUSTER_DIR", dir)
        .env("LLMTRACE_NODE_BIN", node_binary())
        .output()
        .expect("run scripts/cluster.sh")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `down` when the test ends, however it ends.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let out = run(self.0, &["down"]);
        if std::thread::panicking() {
            eprintln!("cluster.sh down: {}", text(&out));
        }
    }
}

/// The pids `up` recorded (`<dir>/pids/<name>.pid`: "pid marker").
fn recorded(dir: &Path) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = std::fs::read_dir(dir.join("pids"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().replace(".pid", "");
                    let body = std::fs::read_to_string(e.path()).ok()?;
                    let pid = body.split_whitespace().next()?.parse().ok()?;
                    Some((name, pid))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A live (not zombie) process: its command line is readable and not empty.
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn curl_found() -> Result<(), String> {
    let ok = Command::new("curl").arg("--version").output().is_ok();
    ok.then_some(())
        .ok_or_else(|| "curl is missing (apt-get install -y curl)".into())
}

#[test]
fn cluster_script_up_status_down() {
    let found = nginx::find().map(|_| ()).and_then(|()| curl_found());
    if !tool_available(found, "cluster_script_up_status_down") {
        return;
    }
    let tmp = TempDir::new("cluster-sh");
    let dir = tmp.path().join("cluster");
    let guard = Down(&dir);

    let up = run(&dir, &["up", "3"]);
    let said = text(&up);
    assert!(up.status.success(), "cluster.sh up 3 failed:\n{said}");
    let lb = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("load balancer"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no load balancer URL in:\n{said}"));
    assert!(said.contains("curl -s -X POST"), "no curl line:\n{said}");

    // A second `up` refuses while the first runs.
    let again = run(&dir, &["up", "3"]);
    assert!(
        !again.status.success(),
        "a second up started: {}",
        text(&again)
    );

    let client = Client::new(lb.clone());
    for i in 0..6 {
        let reply = client.post_json(
            "/v1/check",
            &serde_json::json!({"tenant_id": "script", "cost": 1}),
        );
        assert_eq!(reply.status, 200, "check {i} through {lb}: {reply}");
    }

    let status = run(&dir, &["status"]);
    let listed = text(&status);
    assert!(status.status.success(), "status failed:\n{listed}");
    for name in ["nginx", "node-1", "node-2", "node-3", "redis"] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{name} not running in status:\n{listed}"
        );
    }
    assert_eq!(
        listed.matches("readyz ok").count(),
        3,
        "three ready nodes:\n{listed}"
    );

    let pids = recorded(&dir);
    assert_eq!(pids.len(), 5, "{pids:?}");
    assert!(pids.iter().all(|(_, p)| alive(*p)), "{pids:?}");

    drop(guard);
    let gone: Vec<_> = pids.iter().filter(|(_, p)| alive(*p)).collect();
    assert!(gone.is_empty(), "still running after down: {gone:?}");
    let status = run(&dir, &["status"]);
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
    // The nodes left gracefully (they log their stop).
    for i in 1..=3 {
        let log = std::fs::read_to_string(dir.join(format!("logs/node-{i}.log"))).unwrap();
        assert!(
            log.contains("llmtrace-node stopped"),
            "node-{i} log:\n{log}"
        );
    }
}
