//! The `[rls]` block: the Envoy rate limit service listener (gRPC, off
//! unless `listen` is given), its rule files and whether answers carry
//! RateLimit headers for Envoy to add. The table as one source gives it
//! ([`RlsSettings`], also the flags under the heading RLS) and its resolved
//! form ([`RlsConfig`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args};
use serde::Deserialize;

use super::file::load_rules;
use super::rules::RlsRules;
use crate::error::{parse_addr, ConfigError};
use crate::flags::shown;

/// By default answers carry no headers for Envoy to add.
pub const DEFAULT_RESPONSE_HEADERS: bool = false;

/// The resolved `[rls]` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsConfig {
    /// gRPC listener of `envoy.service.ratelimit.v3.RateLimitService`;
    /// `None` (the default): off.
    pub listen: Option<SocketAddr>,
    /// The YAML rule file, or a directory of them.
    pub config: Option<PathBuf>,
    /// Answers carry `RateLimit-Policy` and `RateLimit` in
    /// `response_headers_to_add`.
    pub response_headers: bool,
}

/// The `[rls]` table, or the RLS flags, as one source gives them; `None`:
/// not given. Each field's doc is its `--help` text.
#[derive(Debug, Clone, Default, Deserialize, Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "RLS")]
pub struct RlsSettings {
    /// rls.listen: serve Envoy's rate limit service (gRPC,
    /// envoy.service.ratelimit.v3) here. [default: none: off]
    #[arg(
        id = "rls_listen",
        long = "rls-listen",
        env = "LLMTRACE_RLS_LISTEN",
        value_name = "ADDR"
    )]
    pub listen: Option<String>,

    /// rls.config: envoyproxy/ratelimit YAML rules, a file or a directory
    /// of .yaml/.yml files; reloaded on SIGHUP and when a file changes.
    /// [default: none: every descriptor unlimited]
    #[arg(
        id = "rls_config",
        long = "rls-config",
        env = "LLMTRACE_RLS_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    /// rls.response_headers: answers carry RateLimit-Policy and RateLimit
    /// headers for Envoy to add to the response.
    #[arg(
        id = "rls_response_headers",
        long = "rls-response-headers",
        env = "LLMTRACE_RLS_RESPONSE_HEADERS",
        value_name = "BOOL",
        action = ArgAction::Set,
        default_value = shown!(DEFAULT_RESPONSE_HEADERS)
    )]
    pub response_headers: Option<bool>,
}

impl RlsConfig {
    /// Resolves the block; answers the rules of `config` too (an invalid
    /// file names itself, the line and the key under `rls.config`).
    pub fn resolve(s: RlsSettings) -> Result<(Self, RlsRules), ConfigError> {
        let listen = match s.listen.as_deref() {
            Some(a) => Some(parse_addr("rls.listen", a)?),
            None => None,
        };
        let rules = match &s.config {
            Some(path) => load_rules(path).map_err(|e| {
                ConfigError::invalid("rls.config", format!("{}: {}", e.path, e.reason))
            })?,
            None => RlsRules::default(),
        };
        Ok((
            RlsConfig {
                listen,
                config: s.config,
                response_headers: s.response_headers.unwrap_or(DEFAULT_RESPONSE_HEADERS),
            },
            rules,
        ))
    }
}
