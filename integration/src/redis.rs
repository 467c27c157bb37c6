//! A private `redis-server` on a free loopback port, without persistence, killed on drop.
//! `stop` and `restart` (same port) simulate Redis outages.

use crate::resp::{Conn, Value};
use crate::{find_program, free_port, TempDir, STARTUP_TIMEOUT};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    /// Arguments added to every start (TLS, cluster, replication).
    extra: Vec<String>,
    child: Option<Child>,
    /// Working directory of the server (redis-server writes nothing with our flags, but it
    /// needs a dir it may write to).
    dir: TempDir,
}

fn find_redis_server() -> std::path::PathBuf {
    find_program("redis-server", &[]).unwrap_or_else(|| {
        panic!("redis-server not found on PATH: install redis-server (scripts/test.sh does)")
    })
}

impl RedisServer {
    /// Starts redis-server on a free port, retrying with another port if the bind races.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts redis-server on a free port with `extra` arguments; `{dir}` in them stands
    /// for the server's working directory.
    pub fn start_with(extra: &[String]) -> RedisServer {
        let mut last_err = String::new();
        for _ in 0..5 {
            let dir = TempDir::new("redis");
            let extra = extra
                .iter()
                .map(|a| a.replace("{dir}", &dir.path().to_string_lossy()))
                .collect();
            let mut server = RedisServer {
                port: free_port(),
                extra,
                child: None,
                dir,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// Starts redis-server on `port` (e.g. one a node was already pointed at).
    pub fn start_on_port(port: u16) -> RedisServer {
        let mut server = RedisServer {
            port,
            extra: Vec::new(),
            child: None,
            dir: TempDir::new("redis"),
        };
        server.spawn_retrying();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A fresh connection; panics when the server does not answer.
    pub fn conn(&self) -> Conn {
        Conn::connect(self.port)
            .unwrap_or_else(|e| panic!("connect to redis on port {}: {e}", self.port))
    }

    /// Kills the server (SIGKILL) and waits for it: an abrupt outage. Data is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty, since nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_retrying();
    }

    /// The port may still be in TIME_WAIT / held briefly after a kill: retry for a while.
    fn spawn_retrying(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("could not start redis-server on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut child = Command::new(find_redis_server())
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            if Conn::connect(self.port).is_ok_and(|mut c| c.ping() && self.is_ours(&mut c)) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the server answering on our port is the one we started (its working dir
    /// is ours), not another test's redis-server that won a race for the same port.
    fn is_ours(&self, conn: &mut Conn) -> bool {
        let ours =
            std::fs::canonicalize(self.dir.path()).unwrap_or_else(|_| self.dir.path().into());
        match conn.cmd(&["CONFIG", "GET", "dir"]) {
            Ok(Value::Array(Some(items))) => {
                items.get(1)
                    == Some(&Value::Bulk(Some(
                        ours.to_string_lossy().into_owned().into_bytes(),
                    )))
            }
            _ => false,
        }
    }

    /// Polls until `key` exists or `timeout` passed; whether it exists.
    pub fn key_appears(&self, key: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if Conn::connect(self.port)
                .and_then(|mut c| c.exists(key))
                .unwrap_or(false)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until `key` exists; returns its PTTL in milliseconds. The panic message
    /// lists the keys that do exist.
    pub fn wait_for_key(&self, key: &str, timeout: Duration) -> i64 {
        if !self.key_appears(key, timeout) {
            panic!(
                "timed out after {timeout:?} waiting for redis key {key:?}; keys present: {:?}",
                self.all_keys()
            );
        }
        self.conn().pttl(key).expect("PTTL")
    }

    /// All keys, for failure messages.
    pub fn all_keys(&self) -> Vec<String> {
        Conn::connect(self.port)
            .and_then(|mut c| c.keys("*"))
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
