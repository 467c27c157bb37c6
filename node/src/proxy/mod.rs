//! Transparent LLM proxy mode: a listener (`--proxy-listen`) that forwards
//! every request (method, path, query, headers, body) to an OpenAI- or
//! Anthropic-compatible upstream (`--proxy-upstream`) and streams the answer
//! back, holding each call to the limits its rules name (by default the
//! tenant's `requests`, one per call, and `tokens`, a reservation before
//! the call reconciled with the real usage after it), all or nothing.
//!
//! Layout:
//! - [`tenant`]: who a call belongs to (trusted header or API key).
//! - [`keys`]: the team and org of a key (key table or trusted headers).
//! - [`tokens`]: what a call will cost, counted before forwarding.
//! - [`messages`]: Anthropic Messages bodies checked and planned.
//! - [`rules`]: the `[[proxy.rules]]` rendered into check descriptors.
//! - [`admit`]: the all-or-nothing check of a call, shadow mode, the 429.
//! - [`settle`]: reservations reconciled and leases released afterwards.
//! - [`relay`]: the answer streamed back, usage picked up, settled.
//! - [`usage`]: the usage of each API's answers, in one shape.
//! - [`headers`]: hop-by-hop headers (RFC 9110 7.6.1), rate-limit headers.
//! - [`errors`]: 400/401/413/429/502/504 in the API's error shape.
//! - [`metrics`]: Prometheus counters of the proxy.

pub mod admit;
pub mod errors;
pub mod headers;
pub mod keys;
pub mod messages;
pub mod metrics;
pub mod relay;
pub mod rules;
pub mod settle;
pub mod tenant;
pub mod tokens;
pub mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{BodyStream, SizedStream};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use llmtrace_actors::Router;
use llmtrace_cluster_config::ProxyConfig;

use self::errors::{Dialect, ProxyError};
use self::metrics::ProxyMetrics;
use self::relay::Relay;
use self::tokens::{Plan, Route};

/// What every proxy handler shares.
pub struct ProxyContext {
    /// Routes the limit checks to the owners of the buckets.
    pub router: Router,
    pub config: ProxyConfig,
    /// TLS settings of an `https://` upstream (built once, shared by the
    /// workers' clients).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Upstream base URL (validated, no trailing slash).
    pub upstream: String,
    pub metrics: Arc<ProxyMetrics>,
}

impl ProxyContext {
    /// Fails when the `proxy.ca_file` certificates cannot be loaded.
    pub fn new(
        router: Router,
        config: ProxyConfig,
        metrics: Arc<ProxyMetrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let upstream = config.upstream.clone().unwrap_or_default();
        if config.listen.is_some() {
            tokens::warm_up();
        }
        let tls = if upstream.starts_with("https://") {
            Some(Arc::new(tls_config(config.ca_file.as_deref())?))
        } else {
            None
        };
        Ok(Arc::new(ProxyContext {
            router,
            config,
            tls,
            upstream,
            metrics,
        }))
    }
}

/// TLS client settings: the Web PKI roots (compiled in: webpki-roots), plus
/// the certificates of `ca_file`; HTTP/1.1 only (ALPN).
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let what = || format!("proxy.ca_file {}", path.display());
        let pem = std::fs::read(path).with_context(what)?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.with_context(what)?).with_context(what)?;
        }
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The HTTP client of one worker thread (awc is not `Send`).
pub fn client(ctx: &ProxyContext) -> awc::Client {
    let config = &ctx.config;
    let mut connector = awc::Connector::new()
        .connector(llmtrace_actors::nodelay::connector())
        .timeout(Duration::from_millis(config.connect_timeout_ms));
    if let Some(tls) = &ctx.tls {
        connector = connector.rustls_0_23(Arc::clone(tls));
    }
    awc::Client::builder()
        .disable_redirects()
        // Time to the response head; the body has its own idle timeout.
        .timeout(Duration::from_millis(config.upstream_timeout_ms))
        .connector(connector)
        .finish()
}

/// Routes of a server that serves only the proxy: everything goes upstream.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::to(forward));
}

/// Middleware of the node's shared server: a request that arrived on the
/// proxy listener (`proxy_addr`) goes upstream, whatever its path; any
/// other goes to the node's own routes (`srv`). The app must hold a
/// [`ProxyContext`] and an `awc::Client` as app data.
pub fn dispatch<S, B>(
    proxy_addr: Option<std::net::SocketAddr>,
    mut req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<
    Output = Result<
        actix_web::dev::ServiceResponse<actix_web::body::EitherBody<B>>,
        actix_web::Error,
    >,
>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    S::Future: 'static,
    B: 'static,
{
    use futures_util::future::{Either, TryFutureExt};
    if proxy_addr.is_none() || proxy_addr != Some(req.app_config().local_addr()) {
        return Either::Left(srv.call(req).map_ok(|r| r.map_into_left_body()));
    }
    // Boxed: the proxy's future is kilobytes (a whole upstream call); kept
    // inline it would make every check's future that large, and the HTTP
    // dispatcher moves it on every request.
    Either::Right(Box::pin(async move {
        let payload = req.extract::<web::Payload>().await?;
        let ctx = req
            .app_data::<web::Data<ProxyContext>>()
            .cloned()
            .expect("the app holds the proxy context");
        let client = req
            .app_data::<web::Data<awc::Client>>()
            .cloned()
            .expect("the app holds the proxy client");
        let http = req.request().clone();
        let resp = forward(http, payload, ctx, client).await;
        Ok(req.into_response(resp).map_into_right_body())
    }))
}

/// Any request on the proxy listener.
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    ctx: web::Data<ProxyContext>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let resp = match proxy(&req, payload, &ctx, &client).await {
        Ok(resp) => resp,
        Err(e) => e.response(Dialect::of_path(req.path())),
    };
    ctx.metrics.count_status(resp.status().as_u16());
    resp
}

/// The `Content-Length` of a message, when given and valid.
fn declared_length(h: &actix_web::http::header::HeaderMap) -> Option<u64> {
    h.get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A client's body as it arrives, cut with an error past `max` bytes.
fn bounded(
    payload: web::Payload,
    max: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    let mut seen = 0usize;
    payload.map(move |chunk| {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
        seen += chunk.len();
        if seen > max {
            return Err(std::io::Error::other(format!(
                "request body exceeds {max} bytes"
            )));
        }
        Ok(chunk)
    })
}

/// Reads the request body, refusing more than `max` bytes.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<Bytes, ProxyError> {
    if declared_length(req.headers()).is_some_and(|n| n > max as u64) {
        return Err(ProxyError::too_large(max));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ProxyError::bad_body(e.to_string()))?;
        if body.len() + chunk.len() > max {
            return Err(ProxyError::too_large(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Prompts above this size are tokenized on the blocking pool, not on the
/// worker that serves other connections.
const INLINE_TOKENIZE_BYTES: usize = 32 * 1024;

async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    ctx: &ProxyContext,
    client: &awc::Client,
) -> Result<HttpResponse, ProxyError> {
    let cfg = &ctx.config;
    let tenant = tenant::resolve(req.headers(), cfg.trust_tenant_header).map_err(|e| match e {
        tenant::TenantError::Missing => ProxyError::no_tenant(),
        tenant::TenantError::BadHeader(why) => ProxyError::bad_tenant(&why),
    })?;
    let route = tokens::route(req.method(), req.path());
    let dialect = Dialect::of_path(req.path());
    let kind = match route {
        Route::Tokens(kind) => Some(kind),
        Route::Request | Route::Free => None,
    };
    // Token-accounted calls are read whole (their prompt is counted before
    // forwarding); every other body streams to the upstream as it arrives.
    let (body, payload) = match kind {
        Some(_) => (read_body(req, payload, cfg.max_request_bytes).await?, None),
        None => {
            if declared_length(req.headers()).is_some_and(|n| n > cfg.max_request_bytes as u64) {
                return Err(ProxyError::too_large(cfg.max_request_bytes));
            }
            (Bytes::new(), Some(payload))
        }
    };
    let plan = match kind {
        None => None,
        Some(kind) => {
            let max = cfg.default_max_tokens;
            let planned = if body.len() <= INLINE_TOKENIZE_BYTES {
                tokens::plan(kind, &body, max)
            } else {
                let b = body.clone();
                web::block(move || tokens::plan(kind, &b, max))
                    .await
                    .unwrap_or_else(|_| Ok(Plan::default()))
            };
            Some(planned.map_err(ProxyError::invalid_request)?)
        }
    };
    let mut admitted = match route {
        // Not charged: no limit is asked.
        Route::Free => admit::Admitted::default(),
        _ => match admit::admit(ctx, &tenant, req.headers(), plan.as_ref(), dialect).await? {
            Ok(a) => a,
            Err(refusal) => return Ok(refusal),
        },
    };
    let plan = plan.unwrap_or_default();

    let url = format!(
        "{}{}",
        ctx.upstream,
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut up = client.request(req.method().clone(), url);
    headers::copy_request(
        req.headers(),
        up.headers_mut(),
        admitted.reservation.is_some(),
    );
    let started = Instant::now();
    let sent = match payload {
        None => up.send_body(plan.body.clone().unwrap_or(body)).await,
        Some(payload) => {
            let chunked = req.headers().contains_key("transfer-encoding");
            let stream = bounded(payload, cfg.max_request_bytes);
            match declared_length(req.headers()) {
                Some(n) => up.send_body(SizedStream::new(n, stream)).await,
                None if chunked => up.send_body(BodyStream::new(stream)).await,
                None => up.send().await,
            }
        }
    };
    ctx.metrics
        .upstream_latency
        .observe(started.elapsed().as_secs_f64());
    let upstream = match sent {
        Ok(r) => r,
        Err(e) => {
            if let Some(r) = admitted.reservation.take() {
                r.refund_all();
            }
            return Err(upstream_error(e, cfg.upstream_timeout_ms));
        }
    };
    let status = upstream.status();
    let declared = declared_length(upstream.headers());
    let mut reservation = admitted.reservation.take();
    if declared.is_some_and(|n| n > cfg.max_response_bytes as u64) {
        if let Some(r) = reservation {
            r.refund_all();
        }
        return Err(ProxyError::bad_gateway(format!(
            "upstream response exceeds {} bytes",
            cfg.max_response_bytes
        )));
    }
    if !status.is_success() {
        // The call failed upstream: its tokens are given back.
        if let Some(r) = reservation.take() {
            r.refund_all();
        }
    }
    let mut builder = HttpResponse::build(status);
    headers::copy_response(upstream.headers(), &mut builder);
    admitted.insert_headers(dialect, &mut builder);
    let relay = Relay::new(
        upstream,
        &plan,
        reservation,
        admitted.leases.take(),
        Duration::from_millis(cfg.upstream_timeout_ms),
        cfg.max_response_bytes,
    );
    Ok(builder.streaming(relay))
}

fn upstream_error(e: awc::error::SendRequestError, timeout_ms: u64) -> ProxyError {
    use awc::error::{ConnectError, SendRequestError};
    match e {
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
            ProxyError::timeout(timeout_ms)
        }
        other => ProxyError::bad_gateway(format!("upstream unreachable: {other}")),
    }
}

#[cfg(test)]
use actix_web::http::StatusCode;

#[cfg(test)]
mod tests;
