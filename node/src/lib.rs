//! The llmtrace cluster node: configuration loading, HTTP surfaces, wiring.
//! The state and the decisions live in `llmtrace-actors`; this crate only
//! translates between HTTP and the limiter.
//!
//! # Layout
//!
//! - [`cli`]: flags and environment variables, merged with the TOML file.
//! - [`logging`]: tracing set-up (text or JSON lines on stderr).
//! - [`listeners`]: the sockets a node serves, bound before it is built.
//! - [`node`]: the node's lifecycle ([`node::Node`]: build, join, serve,
//!   leave, shutdown) and [`node::run`], which serves until SIGTERM/SIGINT.
//! - [`http`]: routes of the public, admin and cluster listeners, the one
//!   error type mapped to HTTP, rate-limit headers.
//! - [`multi_check`]: checks of several descriptors, all or nothing (HTTP
//!   descriptors and the RLS service).
//! - [`rls`]: the Envoy rate limit service (gRPC, `--rls-listen`).
//! - [`storage`]: the Redis connections, the snapshot cache layer and the
//!   runtime overrides loaded at start-up.
//! - [`proxy`]: the optional LLM proxy listener (`--proxy-listen`).

#![forbid(unsafe_code)]

pub mod cli;
pub mod http;
pub mod listeners;
pub mod logging;
pub mod multi_check;
pub mod node;
pub mod proxy;
pub mod rls;
pub mod storage;
