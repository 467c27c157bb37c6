//! Redis as operators deploy it, built from private `redis-server` processes on
//! loopback: a server that speaks TLS and asks for client certificates (with its CA,
//! server and client certificates made by rcgen), a Redis Cluster of masters made with
//! `redis-cli --cluster create`, and a master with a replica watched by a Sentinel.
//! Every process is killed on drop; every wait polls a condition.

use crate::redis::RedisServer;
use crate::resp::{Conn, Value};
use crate::{find_program, free_port, wait_for, wait_until, TempDir, STARTUP_TIMEOUT};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
pub struct TlsFiles {
    dir: TempDir,
}

impl TlsFiles {
    pub fn new() -> TlsFiles {
        let dir = TempDir::new("tls");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf whose subject equals its issuer looks self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "llmtrace test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        dir.write("ca.pem", &ca.pem());
        for name in ["server", "client"] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, format!("llmtrace test {name}"));
            let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
            dir.write(&format!("{name}.pem"), &cert.pem());
            dir.write(&format!("{name}.key"), &key.serialize_pem());
        }
        TlsFiles { dir }
    }

    /// `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self::new()
    }
}

/// A redis-server that also listens with TLS (and requires a client certificate
/// signed by the CA); its plain port stays open for the test's own inspection.
pub struct TlsRedis {
    pub server: RedisServer,
    pub tls_port: u16,
    pub files: TlsFiles,
}

impl TlsRedis {
    pub fn start() -> TlsRedis {
        let files = TlsFiles::new();
        let tls_port = free_port();
        let arg = |s: &str| s.to_string();
        let file = |n: &str| files.path(n).to_string_lossy().into_owned();
        let server = RedisServer::start_with(&[
            arg("--tls-port"),
            tls_port.to_string(),
            arg("--tls-cert-file"),
            file("server.pem"),
            arg("--tls-key-file"),
            file("server.key"),
            arg("--tls-ca-cert-file"),
            file("ca.pem"),
            arg("--tls-auth-clients"),
            arg("yes"),
        ]);
        TlsRedis {
            server,
            tls_port,
            files,
        }
    }

    /// Adds an ACL user with every right (through the plain port).
    pub fn add_user(&self, user: &str, password: &str) {
        let pw = format!(">{password}");
        let r = self
            .server
            .conn()
            .cmd(&["ACL", "SETUSER", user, "on", &pw, "~*", "&*", "+@all"]);
        assert!(matches!(r, Ok(Value::Simple(_))), "ACL SETUSER: {r:?}");
    }
}

/// A Redis Cluster of masters without replicas.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let cli = find_program("redis-cli", &[])
            .unwrap_or_else(|| panic!("redis-cli not found: install redis-tools"));
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "{dir}/nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]
        .map(String::from);
        let masters: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_with(&cluster_args))
            .collect();
        let out = Command::new(cli)
            .args(["--cluster", "create"])
            .args(masters.iter().map(|m| format!("127.0.0.1:{}", m.port())))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for m in &masters {
            wait_until(STARTUP_TIMEOUT, "cluster_state:ok on every master", || {
                info(m.port(), &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
        }
        RedisCluster { masters }
    }

    /// The seed URLs, comma-separated (every master).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.masters.iter().map(RedisServer::url).collect();
        urls.join(",")
    }

    /// Polls until `key` exists on some master; returns that master's index.
    pub fn wait_for_key(&self, key: &str, timeout: Duration) -> usize {
        wait_for(timeout, &format!("redis cluster key {key:?}"), || {
            self.masters.iter().position(|m| {
                // A master that does not own the key's slot answers MOVED: not here.
                matches!(m.conn().cmd(&["EXISTS", key]), Ok(Value::Int(1)))
            })
        })
    }
}

/// A master, its replica and one Sentinel (quorum 1) watching them as `mymaster`.
pub struct SentinelRedis {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinel: Child,
    sentinel_port: u16,
    _dir: TempDir,
}

/// The name the Sentinel monitors the master under.
pub const SENTINEL_MASTER: &str = "mymaster";

impl SentinelRedis {
    pub fn start() -> SentinelRedis {
        let master = RedisServer::start();
        let replica = RedisServer::start_with(&[
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            master.port().to_string(),
        ]);
        wait_until(STARTUP_TIMEOUT, "the replica in sync", || {
            info(replica.port(), &["INFO", "replication"]).contains("master_link_status:up")
        });
        let dir = TempDir::new("sentinel");
        let sentinel_port = free_port();
        let conf = dir.write(
            "sentinel.conf",
            &format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
                dir.path().display(),
                master.port()
            ),
        );
        let server = find_program("redis-server", &[]).expect("redis-server on PATH");
        let sentinel = Command::new(server)
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
        let s = SentinelRedis {
            master,
            replica,
            sentinel,
            sentinel_port,
            _dir: dir,
        };
        let port = s.master.port();
        wait_until(STARTUP_TIMEOUT, "the sentinel to know the master", || {
            s.master_port() == Some(port)
        });
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// The master's port as the Sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        let mut c = Conn::connect(self.sentinel_port).ok()?;
        match c.cmd(&["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER]) {
            Ok(Value::Array(Some(items))) => match items.get(1) {
                Some(Value::Bulk(Some(p))) => String::from_utf8_lossy(p).parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Drop for SentinelRedis {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}

/// The text of an `INFO`-like reply of the server on `port` (empty on error).
fn info(port: u16, cmd: &[&str]) -> String {
    match Conn::connect(port).and_then(|mut c| c.cmd(cmd)) {
        Ok(Value::Bulk(Some(b))) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}
