//! A real nginx load balancer in front of node public listeners, configured from
//! the repository's template (`deploy/nginx.conf`, rendered by
//! `deploy/render-nginx.sh`, as `scripts/cluster.sh` does) on a free loopback port
//! with a temp prefix. nginx runs in the foreground (`daemon off`) as a child
//! process, killed on drop. Started as root, its workers run as `nobody`.

use crate::http::Client;
use crate::output::{spawn_captured, Captured};
use crate::{find_program, free_port, wait_until, TempDir, STARTUP_TIMEOUT};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The repository root (templates live under `deploy/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The nginx binary, or why the nginx tests cannot run.
pub fn find() -> Result<PathBuf, String> {
    find_program("nginx", &["/usr/sbin"])
        .ok_or_else(|| "nginx is missing (apt-get install -y nginx; scripts/test.sh does)".into())
}

/// One access-log line: which upstream(s) answered a request.
#[derive(Debug, Clone)]
pub struct Access {
    /// The status nginx sent to the client.
    pub status: u16,
    /// Every upstream tried, in order (more than one: nginx retried).
    pub upstreams: Vec<String>,
    /// The status of each attempt (`502` for a refused connection).
    pub upstream_statuses: Vec<String>,
}

pub struct Nginx {
    child: Child,
    output: Captured,
    port: u16,
    prefix: TempDir,
}

impl Nginx {
    /// Renders the template for `nodes` (host:port of public listeners), starts
    /// nginx and waits until it answers; retries on another port if the bind races.
    pub fn start(nodes: &[&str]) -> Nginx {
        let binary = find().unwrap_or_else(|e| panic!("{e}"));
        let mut last = String::new();
        for _ in 0..5 {
            let prefix = TempDir::new("nginx");
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            // As root, nginx's workers need a `user` to drop to; otherwise none.
            // SAFETY: geteuid(2) only reads the process's credentials.
            let user = if unsafe { libc::geteuid() } == 0 {
                "nobody nogroup"
            } else {
                "-"
            };
            let root = repo_root();
            let rendered = Command::new("sh")
                .arg(root.join("deploy/render-nginx.sh"))
                .arg(root.join("deploy/nginx.conf"))
                .arg(prefix.path())
                .arg(&listen)
                .arg(user)
                .args(nodes)
                .output()
                .expect("run deploy/render-nginx.sh");
            assert!(
                rendered.status.success(),
                "render-nginx.sh failed: {}",
                String::from_utf8_lossy(&rendered.stderr)
            );
            let conf = prefix.write("nginx.conf", &String::from_utf8_lossy(&rendered.stdout));
            let mut cmd = Command::new(&binary);
            cmd.arg("-p")
                .arg(prefix.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(prefix.path().join("error.log"))
                .args(["-g", "daemon off;"])
                // Its own process group: the workers can be killed with it.
                .process_group(0);
            let (child, output, _) = spawn_captured(&mut cmd, |_| false);
            let mut nginx = Nginx {
                child,
                output,
                port,
                prefix,
            };
            match nginx.wait_up() {
                Ok(()) => return nginx,
                Err(e) => last = e,
            }
        }
        panic!("could not start nginx: {last}");
    }

    fn wait_up(&mut self) -> Result<(), String> {
        let client = self.client();
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.output.wait_closed(Duration::from_secs(2));
                return Err(format!(
                    "nginx exited ({status})\n{}\n--- error.log ---\n{}",
                    self.output.describe(),
                    self.error_log()
                ));
            }
            if client.try_get("/lb/healthz").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("nginx did not answer\n{}", self.error_log()));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> Client {
        Client::new(self.url())
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("error.log")).unwrap_or_default()
    }

    /// Every request logged so far (nginx writes the access log unbuffered).
    pub fn access_log(&self) -> Vec<Access> {
        let text =
            std::fs::read_to_string(self.prefix.path().join("access.log")).unwrap_or_default();
        text.lines().filter_map(parse_access).collect()
    }

    /// Polls until the access log holds `n` lines (a request is logged just after
    /// its answer was sent, so the client may see it first).
    pub fn wait_logged(&self, n: usize) -> Vec<Access> {
        let mut log = Vec::new();
        wait_until(
            STARTUP_TIMEOUT,
            &format!("{n} lines in nginx's access log"),
            || {
                log = self.access_log();
                log.len() >= n
            },
        );
        log
    }
}

/// `$msec $status "$upstream_addr" "$upstream_status" $request_time $request_id`.
fn parse_access(line: &str) -> Option<Access> {
    let mut quoted = line.split('"');
    let head = quoted.next()?;
    let upstreams = quoted.next()?;
    quoted.next()?;
    let statuses = quoted.next()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    // Retries are ", "-separated; a switch to another upstream group " : ".
    let split = |s: &str| -> Vec<String> {
        s.split([',', ':'])
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "-")
            .map(str::to_string)
            .collect()
    };
    Some(Access {
        status,
        upstreams: split_addrs(upstreams),
        upstream_statuses: split(statuses),
    })
}

/// Upstream addresses contain ':' themselves: split on ", " only.
fn split_addrs(s: &str) -> Vec<String> {
    s.split(", ")
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "-")
        .map(str::to_string)
        .collect()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL to the master alone would orphan its workers: kill the
        // whole process group (master and workers), then reap the master.
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group of our own unreaped child.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "=== nginx output ===\n{}\n--- error.log ---\n{}",
                self.output.describe(),
                self.error_log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_parse() {
        let a =
            parse_access("1764300000.123 200 \"127.0.0.1:1, 127.0.0.1:2\" \"502, 200\" 0.003 abc")
                .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.upstreams, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(a.upstream_statuses, vec!["502", "200"]);
        let b = parse_access("1764300000.123 429 \"127.0.0.1:3\" \"429\" 0.001 x").unwrap();
        assert_eq!((b.status, b.upstreams.len()), (429, 1));
    }
}
