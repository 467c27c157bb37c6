//! The `[proxy]` block: the transparent LLM proxy listener, its upstream,
//! timeouts and size limits. Off unless `listen` is given.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{in_range as range, ConfigError};

/// Default time to the upstream's response head, and longest silence
/// between two body chunks.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 60_000;
/// Default bound on connecting to the upstream.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default largest request body forwarded.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;
/// Default largest response body relayed.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Default completion tokens reserved when a request sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Upper bound of the proxy's millisecond settings (one hour).
pub const MAX_PROXY_TIMEOUT_MS: u64 = 3_600_000;
/// Upper bound of the size settings (1 GiB).
pub const MAX_PROXY_BYTES: usize = 1 << 30;

/// The resolved proxy settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy listener; `None` (the default) disables proxy mode.
    pub listen: Option<SocketAddr>,
    /// Base URL of the OpenAI-compatible upstream (`http://` or
    /// `https://`, no trailing slash): the request path and query are
    /// appended.
    pub upstream: Option<String>,
    /// Extra PEM certificates trusted for an `https://` upstream, on top of
    /// the built-in Web PKI roots (a private CA, a self-signed test server).
    pub ca_file: Option<PathBuf>,
    /// Take the tenant from `X-LLMTrace-Tenant-ID` (only behind a gateway
    /// that sets it); otherwise it is derived from the bearer key.
    pub trust_tenant_header: bool,
    /// Time to the upstream's response head (504 after), and longest silence
    /// between two chunks of its body (the stream is then cut).
    pub upstream_timeout_ms: u64,
    /// Bound on connecting to the upstream (502 after).
    pub connect_timeout_ms: u64,
    /// Largest request body accepted (413 above).
    pub max_request_bytes: usize,
    /// Largest response body relayed (the stream is cut above).
    pub max_response_bytes: usize,
    /// Completion tokens reserved when a request sets no `max_tokens`.
    pub default_max_tokens: u32,
}

/// The `[proxy]` table of the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub trust_tenant_header: Option<bool>,
    pub upstream_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub max_request_bytes: Option<usize>,
    pub max_response_bytes: Option<usize>,
    pub default_max_tokens: Option<u32>,
}

/// Proxy values from flags and environment.
#[derive(Debug, Clone, Default)]
pub struct ProxyOverrides {
    pub listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub trust_tenant_header: Option<bool>,
    pub upstream_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub max_request_bytes: Option<usize>,
    pub max_response_bytes: Option<usize>,
    pub default_max_tokens: Option<u32>,
}

impl ProxyConfig {
    /// Merges flags/environment over the file over the defaults.
    pub fn resolve(file: ProxyFile, o: ProxyOverrides) -> Result<Self, ConfigError> {
        let listen = match (o.listen, file.listen) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => Some(s.parse().map_err(|_| {
                ConfigError::invalid("proxy.listen", format!("`{s}` is not an IP:port address"))
            })?),
            (None, None) => None,
        };
        let upstream = o.upstream.or(file.upstream);
        let upstream = match upstream {
            Some(u) => Some(validate_upstream(&u)?),
            None => None,
        };
        if listen.is_some() && upstream.is_none() {
            return Err(ConfigError::invalid(
                "proxy.upstream",
                "required when proxy.listen is set",
            ));
        }
        let ca_file = o.ca_file.or(file.ca_file);
        if let Some(path) = &ca_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid("proxy.ca_file", format!("{}: {e}", path.display()))
            })?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError::invalid(
                    "proxy.ca_file",
                    format!("{}: no PEM certificate in it", path.display()),
                ));
            }
        }
        Ok(ProxyConfig {
            listen,
            upstream,
            ca_file,
            trust_tenant_header: o
                .trust_tenant_header
                .or(file.trust_tenant_header)
                .unwrap_or(false),
            upstream_timeout_ms: range(
                "proxy.upstream_timeout_ms",
                o.upstream_timeout_ms
                    .or(file.upstream_timeout_ms)
                    .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS),
                1,
                MAX_PROXY_TIMEOUT_MS,
            )?,
            connect_timeout_ms: range(
                "proxy.connect_timeout_ms",
                o.connect_timeout_ms
                    .or(file.connect_timeout_ms)
                    .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
                1,
                MAX_PROXY_TIMEOUT_MS,
            )?,
            max_request_bytes: range(
                "proxy.max_request_bytes",
                o.max_request_bytes
                    .or(file.max_request_bytes)
                    .unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
                1,
                MAX_PROXY_BYTES,
            )?,
            max_response_bytes: range(
                "proxy.max_response_bytes",
                o.max_response_bytes
                    .or(file.max_response_bytes)
                    .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
                1,
                MAX_PROXY_BYTES,
            )?,
            default_max_tokens: range(
                "proxy.default_max_tokens",
                o.default_max_tokens
                    .or(file.default_max_tokens)
                    .unwrap_or(DEFAULT_MAX_TOKENS),
                0,
                crate::limits::MAX_TOKEN_BURST,
            )?,
        })
    }
}

/// `http(s)://host[:port][/base]`, without a trailing slash, query or
/// fragment.
fn validate_upstream(u: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::invalid("proxy.upstream", format!("`{u}`: {why}"));
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if u.contains(['?', '#', ' ']) || u.chars().any(|c| c.is_control()) {
        return Err(bad("must not contain a query, fragment or whitespace"));
    }
    Ok(u.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(listen: Option<&str>, upstream: Option<&str>) -> ProxyFile {
        ProxyFile {
            listen: listen.map(str::to_string),
            upstream: upstream.map(str::to_string),
            ..ProxyFile::default()
        }
    }

    #[test]
    fn off_by_default() {
        let c = ProxyConfig::resolve(ProxyFile::default(), ProxyOverrides::default()).unwrap();
        assert_eq!(c.listen, None);
        assert!(!c.trust_tenant_header);
        assert_eq!(c.upstream_timeout_ms, DEFAULT_UPSTREAM_TIMEOUT_MS);
    }

    #[test]
    fn flags_beat_file_and_upstream_is_normalised() {
        let o = ProxyOverrides {
            upstream: Some("http://127.0.0.1:9/v1base/".into()),
            upstream_timeout_ms: Some(7),
            ..ProxyOverrides::default()
        };
        let mut f = file(Some("127.0.0.1:0"), Some("https://api.openai.com"));
        f.upstream_timeout_ms = Some(9);
        let c = ProxyConfig::resolve(f, o).unwrap();
        assert_eq!(c.upstream.as_deref(), Some("http://127.0.0.1:9/v1base"));
        assert_eq!(c.upstream_timeout_ms, 7);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            (file(Some("nope"), Some("http://x")), "proxy.listen"),
            (file(Some("127.0.0.1:1"), None), "proxy.upstream"),
            (file(None, Some("ftp://x")), "proxy.upstream"),
            (
                ProxyFile {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..ProxyFile::default()
                },
                "proxy.ca_file",
            ),
            (file(None, Some("http://")), "proxy.upstream"),
            (file(None, Some("http://x/?a=1")), "proxy.upstream"),
            (
                ProxyFile {
                    upstream_timeout_ms: Some(0),
                    ..ProxyFile::default()
                },
                "proxy.upstream_timeout_ms",
            ),
            (
                ProxyFile {
                    max_request_bytes: Some(0),
                    ..ProxyFile::default()
                },
                "proxy.max_request_bytes",
            ),
        ];
        for (f, key) in cases {
            let err = ProxyConfig::resolve(f, ProxyOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
