//! Logging: tracing to stderr, human-readable or JSON, filtered by `RUST_LOG`
//! (default `info`; an unparsable `RUST_LOG` is reported and ignored). Each
//! HTTP request runs in a `request` span carrying its request id (see
//! `http::middleware`), so every line logged while serving it names it.

use std::io::IsTerminal;

use llmtrace_cluster_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(e) => {
            if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
                eprintln!("llmtrace-node: ignoring RUST_LOG ({e}); logging at info");
            }
            EnvFilter::new("info")
        }
    };
    // Colour only for a person at a terminal: a log file or a collector
    // reading a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
