//! `llmtrace-plain-bench`: the ceiling for `scripts/bench.sh single`.
//!
//! A plain actix-web server with the same `POST /v1/check` route and body as
//! `llmtrace-node`, but no rate limiting behind it: it parses the JSON body into
//! a small struct (so the HTTP and serde work is comparable) and answers a
//! constant `{"allowed":true}`. The benchmark divides the node's checks/s by
//! this server's to get the overhead ratio (target ≥ 0.7).
//!
//! After binding it prints one stdout line:
//! `llmtrace-plain-bench listening public=127.0.0.1:PORT`.

use std::io::Write;
use std::net::SocketAddr;

use actix_web::{web, App, HttpResponse, HttpServer};
use clap::Parser;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "llmtrace-plain-bench",
    about = "Plain actix-web /v1/check baseline for benchmarks"
)]
struct Args {
    /// Address to listen on (port 0 = ephemeral).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// HTTP worker threads (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Deserialize)]
struct CheckRequest {
    tenant_id: String,
    #[serde(default = "default_cost")]
    cost: u64,
}

fn default_cost() -> u64 {
    1
}

const ALLOWED: &str = r#"{"allowed":true}"#;

async fn check(body: web::Json<CheckRequest>) -> HttpResponse {
    // Touch the fields so the parse is not optimised away.
    let req = body.into_inner();
    std::hint::black_box((&req.tenant_id, req.cost));
    HttpResponse::Ok()
        .content_type("application/json")
        .body(ALLOWED)
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    actix_rt::System::new().block_on(async move {
        let mut server = HttpServer::new(|| App::new().route("/v1/check", web::post().to(check)));
        if let Some(w) = args.workers {
            server = server.workers(w.max(1));
        }
        let server = server.bind(args.listen)?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| std::io::Error::other("no bound address"))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "llmtrace-plain-bench listening public={addr}")?;
            out.flush()?;
        }
        // actix-web's server handles SIGTERM/SIGINT itself (graceful stop).
        server.run().await
    })
}
