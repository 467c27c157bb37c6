//! Where the node keeps snapshots and runtime overrides: the resolved Redis
//! settings ([`RedisConfig`]) from the top-level `redis_*` keys, and their
//! validation. The URLs may hold a password: [`RedisConfig`]'s `Debug` and
//! [`redact`] never show it.

use std::path::PathBuf;

use clap::ValueEnum;
use serde::Deserialize;

use crate::error::{in_range, ConfigError};
use crate::flags::value_names;
use crate::node::{NodeSettings, DEFAULT_REDIS_TIMEOUT_MS, MAX_INTERVAL_MS};

/// How the node reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RedisMode {
    /// One server (`redis_url` is its URL).
    #[default]
    Standalone,
    /// A Redis Cluster (`redis_url` lists seed nodes, comma-separated).
    Cluster,
    /// A master found through Sentinel (`redis_url` lists the sentinels,
    /// comma-separated; `redis_sentinel_master` names the master).
    Sentinel,
}

value_names!(RedisMode);

/// URL schemes a Redis URL may have.
const SCHEMES: [&str; 4] = ["redis://", "rediss://", "unix://", "redis+unix://"];

/// The resolved Redis settings (present when `redis_url` is set).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Standalone: one URL; cluster: the seed nodes; sentinel: the sentinels
    /// (their user, password and database apply to the master).
    pub urls: Vec<String>,
    pub mode: RedisMode,
    /// Sentinel mode: the name the sentinels monitor the master under.
    pub sentinel_master: Option<String>,
    /// PEM CA certificate(s) that sign the servers' certificates
    /// (`rediss://`); without it the system's roots are trusted.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that ask for one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Bound on every Redis call.
    pub timeout_ms: u64,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u, &self.urls)).collect();
        f.debug_struct("RedisConfig")
            .field("urls", &urls)
            .field("mode", &self.mode)
            .field("sentinel_master", &self.sentinel_master)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl RedisConfig {
    /// The Redis settings of `s`; `None` without `redis_url` (then every
    /// other Redis setting must be absent too, so a typo does not silently
    /// keep snapshots in memory; the default mode may be named).
    pub(crate) fn resolve(s: &NodeSettings) -> Result<Option<RedisConfig>, ConfigError> {
        let timeout_ms = in_range(
            "redis_timeout_ms",
            s.redis_timeout_ms.unwrap_or(DEFAULT_REDIS_TIMEOUT_MS),
            1,
            MAX_INTERVAL_MS,
        )?;
        let Some(url) = &s.redis_url else {
            let stray = [
                (
                    "redis_mode",
                    s.redis_mode.is_some_and(|m| m != RedisMode::Standalone),
                ),
                ("redis_sentinel_master", s.redis_sentinel_master.is_some()),
                ("redis_ca_file", s.redis_ca_file.is_some()),
                ("redis_client_cert", s.redis_client_cert.is_some()),
                ("redis_client_key", s.redis_client_key.is_some()),
            ];
            if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(ConfigError::invalid(*key, "needs redis_url"));
            }
            return Ok(None);
        };
        let mode = s.redis_mode.unwrap_or_default();
        let urls: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        if urls.is_empty() {
            return Err(ConfigError::invalid("redis_url", "is empty"));
        }
        if !urls
            .iter()
            .all(|u| SCHEMES.iter().any(|p| u.starts_with(p)))
        {
            return Err(ConfigError::invalid(
                "redis_url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        if mode == RedisMode::Standalone && urls.len() > 1 {
            return Err(ConfigError::invalid(
                "redis_url",
                "lists several servers: set redis_mode to cluster or sentinel",
            ));
        }
        if mode != RedisMode::Standalone && urls.iter().any(|u| !u.starts_with("redis")) {
            return Err(ConfigError::invalid(
                "redis_url",
                format!("{mode} mode needs redis:// or rediss:// URLs"),
            ));
        }
        let sentinel_master = s.redis_sentinel_master.clone();
        match (mode, &sentinel_master) {
            (RedisMode::Sentinel, None) => {
                return Err(ConfigError::invalid(
                    "redis_sentinel_master",
                    "is required in sentinel mode (the name the sentinels monitor)",
                ))
            }
            (RedisMode::Sentinel, Some(name)) if name.trim().is_empty() => {
                return Err(ConfigError::invalid("redis_sentinel_master", "is empty"))
            }
            (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => {
                return Err(ConfigError::invalid(
                    "redis_sentinel_master",
                    "needs redis_mode = sentinel",
                ))
            }
            _ => {}
        }
        if s.redis_client_cert.is_some() != s.redis_client_key.is_some() {
            let missing = if s.redis_client_cert.is_some() {
                "redis_client_key"
            } else {
                "redis_client_cert"
            };
            return Err(ConfigError::invalid(
                missing,
                "redis_client_cert and redis_client_key go together",
            ));
        }
        for (key, path) in [
            ("redis_ca_file", &s.redis_ca_file),
            ("redis_client_cert", &s.redis_client_cert),
            ("redis_client_key", &s.redis_client_key),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        }
        Ok(Some(RedisConfig {
            urls,
            mode,
            sentinel_master,
            ca_file: s.redis_ca_file.clone(),
            client_cert: s.redis_client_cert.clone(),
            client_key: s.redis_client_key.clone(),
            timeout_ms,
        }))
    }
}

/// The password in `url`'s user part, if any.
pub fn password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let (userinfo, _) = rest.rsplit_once('@')?;
    let (_, pw) = userinfo.split_once(':')?;
    (!pw.is_empty()).then_some(pw)
}

/// `text` (a URL, or a message that may quote one) with the password of
/// each of `urls` replaced by `***`, for logs.
pub fn redact(text: &str, urls: &[String]) -> String {
    urls.iter()
        .filter_map(|u| password(u))
        .fold(text.to_string(), |t, pw| t.replace(pw, "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: Option<&str>) -> NodeSettings {
        NodeSettings {
            redis_url: url.map(String::from),
            ..NodeSettings::default()
        }
    }

    fn key_of(r: Result<Option<RedisConfig>, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn modes_and_their_requirements() {
        let one = RedisConfig::resolve(&settings(Some("redis://a:1/2")))
            .unwrap()
            .unwrap();
        assert_eq!((one.urls.len(), one.mode), (1, RedisMode::Standalone));

        let mut s = settings(Some("redis://a:1, redis://b:2,"));
        assert_eq!(key_of(RedisConfig::resolve(&s)), "redis_url");
        s.redis_mode = Some(RedisMode::Cluster);
        let c = RedisConfig::resolve(&s).unwrap().unwrap();
        assert_eq!(c.urls, ["redis://a:1", "redis://b:2"]);

        s.redis_mode = Some(RedisMode::Sentinel);
        assert_eq!(key_of(RedisConfig::resolve(&s)), "redis_sentinel_master");
        s.redis_sentinel_master = Some("mymaster".into());
        let c = RedisConfig::resolve(&s).unwrap().unwrap();
        assert_eq!(c.sentinel_master.as_deref(), Some("mymaster"));
        s.redis_mode = Some(RedisMode::Cluster);
        assert_eq!(key_of(RedisConfig::resolve(&s)), "redis_sentinel_master");

        let mut s = settings(Some("unix:///tmp/r.sock"));
        s.redis_mode = Some(RedisMode::Cluster);
        assert_eq!(key_of(RedisConfig::resolve(&s)), "redis_url");
    }

    #[test]
    fn tls_files_go_together_and_must_exist() {
        let mut s = settings(Some("rediss://a:1"));
        s.redis_client_cert = Some("Cargo.toml".into());
        assert_eq!(key_of(RedisConfig::resolve(&s)), "redis_client_key");
        s.redis_client_key = Some("Cargo.toml".into());
        assert!(RedisConfig::resolve(&s).unwrap().is_some());
        s.redis_ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(key_of(RedisConfig::resolve(&s)), "redis_ca_file");
    }

    #[test]
    fn redis_settings_without_a_url_are_refused() {
        let mut s = settings(None);
        assert_eq!(RedisConfig::resolve(&s), Ok(None));
        s.redis_mode = Some(RedisMode::Cluster);
        assert_eq!(key_of(RedisConfig::resolve(&s)), "redis_mode");
    }

    #[test]
    fn passwords_are_redacted() {
        let urls = ["redis://app:s3cr:et@h:6379/0".to_string()];
        assert_eq!(redact(&urls[0], &urls), "redis://app:***@h:6379/0");
        assert_eq!(
            redact("failed: s3cr:et", &urls),
            "failed: ***",
            "in any text"
        );
        assert_eq!(password("rediss://:pw@h:1"), Some("pw"));
        assert_eq!(password("redis://user@h:1"), None);
        assert_eq!(password("redis://h:1"), None);
        let c = RedisConfig {
            urls: vec!["redis://u:hunter2@h:1".into()],
            mode: RedisMode::Standalone,
            sentinel_master: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            timeout_ms: 1,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
