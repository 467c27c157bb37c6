//! The `[proxy]` block: the transparent LLM proxy listener, its upstream,
//! timeouts and size limits. Off unless `listen` is given. The table as one
//! source gives it ([`ProxySettings`], also the flags under the heading
//! Proxy) and its resolved form ([`ProxyConfig`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args};
use serde::Deserialize;

use crate::error::{in_range as range, parse_addr, ConfigError};
use crate::flags::shown;
use crate::limits::RateLimitConfig;
use crate::proxy_prices::{PriceBlock, Prices};
use crate::proxy_rules::{default_rules, resolve_keys, resolve_rules, KeyInfo, Rule, RuleBlock};

/// Default time to the upstream's response head, and longest silence
/// between two body chunks.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 60_000;
/// Default longest silence between two pieces of a client's request body.
pub const DEFAULT_BODY_IDLE_TIMEOUT_MS: u64 = 5_000;
/// Default bound on connecting to the upstream.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default largest request body forwarded.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;
/// Default largest response body relayed.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Default completion tokens reserved when a request sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// By default the tenant is derived from the bearer key, not taken from a
/// header.
pub const DEFAULT_TRUST_TENANT_HEADER: bool = false;
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
    /// Longest silence between two pieces of a client's request body (408
    /// after): uploads stream to the upstream, so their whole time is not
    /// bounded, only their gaps.
    pub body_idle_timeout_ms: u64,
    /// Largest request body accepted (413 above).
    pub max_request_bytes: usize,
    /// Largest response body relayed (the stream is cut above).
    pub max_response_bytes: usize,
    /// Completion tokens reserved when a request sets no `max_tokens`.
    pub default_max_tokens: u32,
    /// What a call is charged (`[[proxy.rules]]`); without rules,
    /// `requests` and `tokens` of the tenant.
    pub rules: Vec<Rule>,
    /// The key table from the file: a key id's team and org.
    pub keys: BTreeMap<String, KeyInfo>,
    /// Model prices of `usd_micros` rules.
    pub prices: Prices,
}

/// The `[proxy]` table, or the proxy flags, as one source gives them;
/// `None`: not given. Each field's doc is its `--help` text.
#[derive(Debug, Clone, Default, Deserialize, Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Proxy")]
pub struct ProxySettings {
    /// proxy.listen: open the LLM proxy listener here; every request is
    /// forwarded to --proxy-upstream. [default: none: proxy mode off]
    #[arg(
        id = "proxy_listen",
        long = "proxy-listen",
        env = "LLMTRACE_PROXY_LISTEN",
        value_name = "ADDR"
    )]
    pub listen: Option<String>,

    /// proxy.upstream: base URL of the OpenAI-compatible upstream
    /// (http://host:port[/prefix] or https://...); the request path and
    /// query are appended. Required with --proxy-listen. [default: none]
    #[arg(
        long = "proxy-upstream",
        env = "LLMTRACE_PROXY_UPSTREAM",
        value_name = "URL"
    )]
    pub upstream: Option<String>,

    /// proxy.ca_file: PEM certificates trusted for an https:// upstream on
    /// top of the built-in Web PKI roots (private CA, self-signed server).
    /// [default: none]
    #[arg(
        long = "proxy-ca-file",
        env = "LLMTRACE_PROXY_CA_FILE",
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,

    /// proxy.trust_tenant_header: take the tenant from X-LLMTrace-Tenant-ID
    /// (only behind a gateway that sets it); otherwise the tenant is the
    /// UUID v5 of the bearer key.
    #[arg(
        long = "proxy-trust-tenant-header",
        env = "LLMTRACE_PROXY_TRUST_TENANT_HEADER",
        value_name = "BOOL",
        action = ArgAction::Set,
        default_value = shown!(DEFAULT_TRUST_TENANT_HEADER)
    )]
    pub trust_tenant_header: Option<bool>,

    /// proxy.upstream_timeout_ms: time to the upstream's response head
    /// (504 after), and longest silence between two chunks of its body.
    #[arg(
        long = "proxy-upstream-timeout-ms",
        env = "LLMTRACE_PROXY_UPSTREAM_TIMEOUT_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_UPSTREAM_TIMEOUT_MS)
    )]
    pub upstream_timeout_ms: Option<u64>,

    /// proxy.connect_timeout_ms: bound on connecting to the upstream.
    #[arg(
        long = "proxy-connect-timeout-ms",
        env = "LLMTRACE_PROXY_CONNECT_TIMEOUT_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_CONNECT_TIMEOUT_MS)
    )]
    pub connect_timeout_ms: Option<u64>,

    /// proxy.body_idle_timeout_ms: longest silence between two pieces of a
    /// client's request body (408 after; the body streams to the upstream,
    /// so only its gaps are bounded).
    #[arg(
        long = "proxy-body-idle-timeout-ms",
        env = "LLMTRACE_PROXY_BODY_IDLE_TIMEOUT_MS",
        value_name = "MS",
        default_value = shown!(DEFAULT_BODY_IDLE_TIMEOUT_MS)
    )]
    pub body_idle_timeout_ms: Option<u64>,

    /// proxy.max_request_bytes: largest request body (413 above).
    #[arg(
        long = "proxy-max-request-bytes",
        env = "LLMTRACE_PROXY_MAX_REQUEST_BYTES",
        value_name = "BYTES",
        default_value = shown!(DEFAULT_MAX_REQUEST_BYTES)
    )]
    pub max_request_bytes: Option<usize>,

    /// proxy.max_response_bytes: largest upstream answer relayed (502 when
    /// declared larger, the stream is cut when it grows larger).
    #[arg(
        long = "proxy-max-response-bytes",
        env = "LLMTRACE_PROXY_MAX_RESPONSE_BYTES",
        value_name = "BYTES",
        default_value = shown!(DEFAULT_MAX_RESPONSE_BYTES)
    )]
    pub max_response_bytes: Option<usize>,

    /// proxy.default_max_tokens: completion tokens reserved for a call that
    /// sets neither max_tokens nor max_completion_tokens.
    #[arg(
        long = "proxy-default-max-tokens",
        env = "LLMTRACE_PROXY_DEFAULT_MAX_TOKENS",
        value_name = "N",
        default_value = shown!(DEFAULT_MAX_TOKENS)
    )]
    pub default_max_tokens: Option<u32>,

    /// `[[proxy.rules]]` (file only): what a call is charged.
    #[arg(skip)]
    #[serde(default)]
    pub rules: Vec<RuleBlock>,

    /// `[proxy.keys."<key id>"]` (file only): team and org of a key.
    #[arg(skip)]
    #[serde(default)]
    pub keys: BTreeMap<String, KeyInfo>,

    /// `[proxy.prices."<model>"]` (file only): dollars per million tokens.
    #[arg(skip)]
    #[serde(default)]
    pub prices: BTreeMap<String, PriceBlock>,

    /// proxy.refuse_unpriced (file only): refuse a call of a model without
    /// a price under a usd_micros rule, even when a `default` price exists.
    #[arg(skip)]
    pub refuse_unpriced: Option<bool>,
}

impl ProxyConfig {
    /// Applies the defaults to the settings given and validates; rules are
    /// checked against the configured `limits`.
    pub fn resolve(s: ProxySettings, limits: &RateLimitConfig) -> Result<Self, ConfigError> {
        let listen = match s.listen.as_deref() {
            Some(a) => Some(parse_addr("proxy.listen", a)?),
            None => None,
        };
        let upstream = match s.upstream {
            Some(u) => Some(validate_upstream(&u)?),
            None => None,
        };
        if listen.is_some() && upstream.is_none() {
            return Err(ConfigError::invalid(
                "proxy.upstream",
                "required when proxy.listen is set",
            ));
        }
        if let Some(path) = &s.ca_file {
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
            ca_file: s.ca_file,
            trust_tenant_header: s.trust_tenant_header.unwrap_or(DEFAULT_TRUST_TENANT_HEADER),
            upstream_timeout_ms: range(
                "proxy.upstream_timeout_ms",
                s.upstream_timeout_ms.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS),
                1,
                MAX_PROXY_TIMEOUT_MS,
            )?,
            connect_timeout_ms: range(
                "proxy.connect_timeout_ms",
                s.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
                1,
                MAX_PROXY_TIMEOUT_MS,
            )?,
            body_idle_timeout_ms: range(
                "proxy.body_idle_timeout_ms",
                s.body_idle_timeout_ms
                    .unwrap_or(DEFAULT_BODY_IDLE_TIMEOUT_MS),
                1,
                MAX_PROXY_TIMEOUT_MS,
            )?,
            max_request_bytes: range(
                "proxy.max_request_bytes",
                s.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
                1,
                MAX_PROXY_BYTES,
            )?,
            max_response_bytes: range(
                "proxy.max_response_bytes",
                s.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
                1,
                MAX_PROXY_BYTES,
            )?,
            default_max_tokens: range(
                "proxy.default_max_tokens",
                s.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                0,
                crate::limits::MAX_TOKEN_BURST,
            )?,
            rules: if s.rules.is_empty() {
                default_rules()
            } else {
                resolve_rules(&s.rules, limits)?
            },
            keys: resolve_keys(&s.keys)?,
            prices: Prices::resolve(&s.prices, s.refuse_unpriced.unwrap_or(false))?,
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
    use crate::flags::given;

    fn file(listen: Option<&str>, upstream: Option<&str>) -> ProxySettings {
        ProxySettings {
            listen: listen.map(str::to_string),
            upstream: upstream.map(str::to_string),
            ..ProxySettings::default()
        }
    }

    #[test]
    fn off_by_default() {
        let c =
            ProxyConfig::resolve(ProxySettings::default(), &RateLimitConfig::default()).unwrap();
        assert_eq!(c.listen, None);
        assert!(!c.trust_tenant_header);
        assert_eq!(c.upstream_timeout_ms, DEFAULT_UPSTREAM_TIMEOUT_MS);
    }

    #[test]
    fn flags_beat_file_and_upstream_is_normalised() {
        let mut f = file(Some("127.0.0.1:0"), Some("https://api.openai.com"));
        f.upstream_timeout_ms = Some(9);
        let flags = [
            "--proxy-upstream",
            "http://127.0.0.1:9/v1base/",
            "--proxy-upstream-timeout-ms",
            "7",
        ];
        let c = ProxyConfig::resolve(given(f, &flags), &RateLimitConfig::default()).unwrap();
        assert_eq!(
            c.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:0")
        );
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
                ProxySettings {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..ProxySettings::default()
                },
                "proxy.ca_file",
            ),
            (file(None, Some("http://")), "proxy.upstream"),
            (file(None, Some("http://x/?a=1")), "proxy.upstream"),
            (
                ProxySettings {
                    upstream_timeout_ms: Some(0),
                    ..ProxySettings::default()
                },
                "proxy.upstream_timeout_ms",
            ),
            (
                ProxySettings {
                    max_request_bytes: Some(0),
                    ..ProxySettings::default()
                },
                "proxy.max_request_bytes",
            ),
        ];
        for (f, key) in cases {
            let err = ProxyConfig::resolve(f, &RateLimitConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
