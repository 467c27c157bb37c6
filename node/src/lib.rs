//! The llmtrace cluster node: configuration loading, HTTP surfaces, wiring.
//! The state and the decisions live in `llmtrace-actors`; this crate only
//! translates between HTTP and the limiter.
//!
//! # Layout
//!
//! - [`cli`]: flags and environment variables, merged with the TOML file.
//! - [`logging`]: tracing set-up (text or JSON lines on stderr).
//! - [`server`]: builds the cache layer and shards, binds the listeners, runs
//!   until SIGTERM/SIGINT, then flushes snapshots.
//! - [`http`]: routes of the public and admin listeners, the one error type
//!   mapped to HTTP, rate-limit headers.
//! - [`proxy`]: the optional LLM proxy listener (`--proxy-listen`).

pub mod cli;
pub mod http;
pub mod logging;
pub mod proxy;
pub mod server;
