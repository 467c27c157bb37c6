//! The integration tests: one test binary (linked once) with a module per area. Each
//! test starts real `llmtrace-node` processes (and redis-server, nginx, Chromium where
//! it says so) on loopback through the harness in `integration/src`; run one area with
//! `cargo test -p llmtrace-integration --test it admin::`.

mod admin;
mod bad_input;
mod cluster;
mod cluster_membership;
mod cluster_script;
mod concurrency;
mod config;
mod dashboard;
mod deploy_files;
mod docs;
mod failover;
mod forward_stream;
mod frozen_owner;
mod graceful_stop;
mod harness;
mod leases;
mod named_limits;
mod network_security;
mod nginx;
mod openapi;
mod proxy;
mod proxy_anthropic;
mod proxy_openai;
mod proxy_rules;
mod redis_data_loss;
mod redis_modes;
mod redis_outage;
mod redis_snapshots;
mod rls;
mod rls_cluster;
mod rls_python;
mod rpc_memory;
mod single_node;
mod slow_clients;
mod token_leases;
mod write_through;
