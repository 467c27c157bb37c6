//! The gRPC load generator of the `rls` mode: `connections` h2 connections to one
//! node's RLS listener, each keeping `inflight` `ShouldRateLimit` calls in flight
//! (closed loop) for a fixed time, random users out of a tenant space; answers
//! counted by code, latency percentiles from every call.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use llmtrace_integration::rls::{descriptor, request, Code};
use llmtrace_integration::Rng;
use tonic::transport::Channel;

/// What one load run got.
#[derive(Debug, Default)]
pub struct RlsLoad {
    pub ok: u64,
    pub over: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl RlsLoad {
    pub fn requests(&self) -> u64 {
        self.ok + self.over + self.errors
    }

    pub fn rps(&self) -> f64 {
        self.requests() as f64 / self.elapsed_s.max(1e-9)
    }
}

/// One closed-loop caller: calls until `deadline`; answers its counts and latencies.
async fn caller(
    mut client: RateLimitServiceClient<Channel>,
    seed: u64,
    tenant_space: u64,
    hits: u32,
    deadline: Instant,
) -> (RlsLoad, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut load = RlsLoad::default();
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let user = format!("u{}", rng.next_u64() % tenant_space.max(1));
        let mut req = request("bench", vec![descriptor(&[("user", user.as_str())])]);
        req.hits_addend = hits;
        let sent = Instant::now();
        let answer = client.should_rate_limit(req).await;
        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        match answer {
            Ok(r) if r.get_ref().overall_code == Code::Ok as i32 => load.ok += 1,
            Ok(_) => load.over += 1,
            Err(_) => load.errors += 1,
        }
    }
    (load, latencies)
}

/// Runs the load for `duration` with `threads` client threads.
pub fn run(
    url: &str,
    threads: usize,
    connections: usize,
    inflight: usize,
    tenant_space: u64,
    hits: u32,
    duration: Duration,
) -> RlsLoad {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            let channel = Channel::from_shared(url.to_string())
                .expect("a valid URL")
                .connect()
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
            channels.push(channel);
        }
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for (c, channel) in channels.iter().enumerate() {
            for i in 0..inflight {
                let client = RateLimitServiceClient::new(channel.clone());
                let seed = (c * inflight + i) as u64 + 1;
                tasks.push(tokio::spawn(caller(
                    client,
                    seed,
                    tenant_space,
                    hits,
                    deadline,
                )));
            }
        }
        let mut total = RlsLoad::default();
        let mut all = Vec::new();
        for t in tasks {
            let (load, latencies) = t.await.expect("a caller");
            total.ok += load.ok;
            total.over += load.over;
            total.errors += load.errors;
            all.extend(latencies);
        }
        total.elapsed_s = started.elapsed().as_secs_f64();
        all.sort_unstable();
        let at = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
                .map_or(0.0, |v| f64::from(*v))
        };
        total.p50_us = at(0.5);
        total.p99_us = at(0.99);
        total
    })
}
