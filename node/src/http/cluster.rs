//! The node-to-node endpoints: `POST /cluster/v1/checks` (a bincode batch in,
//! a bincode batch out), handoff, install, tenant and top-refused. Input is hostile until proven otherwise: the cluster
//! secret is checked in constant time, the body is capped while it streams
//! in, decoding is bounded (see `llmtrace_actors::cluster::rpc::wire`), and every refusal is
//! a JSON error, never a panic.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use llmtrace_actors::cluster::rpc::wire as rpc;

use super::error::ApiError;
use super::NodeContext;

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn reject(
    ctx: &NodeContext,
    status: StatusCode,
    code: &'static str,
    message: String,
) -> HttpResponse {
    let counter = if status == StatusCode::UNAUTHORIZED {
        &ctx.router.metrics().rpc_rejected_auth
    } else {
        &ctx.router.metrics().rpc_rejected_body
    };
    counter.inc();
    ApiError {
        status,
        code,
        message,
        field: None,
    }
    .error_response()
}

/// Checks that a node-to-node request arrived on the cluster listener with
/// the right secret; the answer refusing it when not.
pub(super) fn refusal(req: &HttpRequest, ctx: &NodeContext) -> Option<HttpResponse> {
    if req.app_config().local_addr() != ctx.cluster_listener {
        // The public listener shares this server; node-to-node calls are
        // not part of its API.
        return Some(ApiError::not_found().error_response());
    }
    if let Some(secret) = &ctx.cluster_secret {
        let given = req
            .headers()
            .get(rpc::SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !constant_time_eq(given, secret.as_bytes()) {
            return Some(reject(
                ctx,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong cluster secret".into(),
            ));
        }
    }
    None
}

/// Checks that a node-to-node request may be served ([`refusal`]) and
/// reads its body (capped).
async fn rpc_body(
    req: &HttpRequest,
    ctx: &NodeContext,
    mut payload: web::Payload,
) -> Result<web::BytesMut, HttpResponse> {
    if let Some(refused) = refusal(req, ctx) {
        return Err(refused);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return Err(reject(
                ctx,
                StatusCode::BAD_REQUEST,
                "bad_body",
                "could not read body".into(),
            ));
        };
        if body.len() + chunk.len() > rpc::MAX_BODY_BYTES {
            return Err(reject(
                ctx,
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body exceeds {} bytes", rpc::MAX_BODY_BYTES),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads and decodes a node-to-node request with `decode`; the error is the
/// response to send.
async fn rpc_request<T>(
    req: &HttpRequest,
    ctx: &NodeContext,
    payload: web::Payload,
    decode: impl FnOnce(&[u8]) -> Result<T, rpc::WireError>,
) -> Result<T, HttpResponse> {
    let body = rpc_body(req, ctx, payload).await?;
    decode(&body).map_err(|e| reject(ctx, StatusCode::BAD_REQUEST, "bad_body", e.to_string()))
}

fn binary(body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(body)
}

/// `POST /cluster/v1/checks`: a batch of forwarded checks.
pub async fn checks(
    req: HttpRequest,
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> HttpResponse {
    let batch = match rpc_request(&req, &ctx, payload, rpc::decode_request).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    binary(rpc::encode(&ctx.router.serve_batch(batch).await))
}

/// `POST /cluster/v1/handoff`: the new owner of a key takes its bucket; this
/// node stops serving the key (it sends later checks there).
pub async fn handoff(
    req: HttpRequest,
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> HttpResponse {
    let (handoff, limit) = match rpc_request(&req, &ctx, payload, |b| {
        rpc::decode_handoff(b, ctx.router.local().limits())
    })
    .await
    {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let to: std::sync::Arc<str> = handoff.origin.as_str().into();
    match ctx.router.local().take(&handoff.tenant, limit, to).await {
        Ok(state) => binary(rpc::encode(&rpc::HandoffResponse { state })),
        Err(e) => ApiError::unavailable(e.to_string()).error_response(),
    }
}

/// `POST /cluster/v1/install`: a leaving node hands over the buckets this
/// node now owns.
pub async fn install(
    req: HttpRequest,
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> HttpResponse {
    let buckets = match rpc_request(&req, &ctx, payload, |b| {
        rpc::decode_install(b, ctx.router.local().limits())
    })
    .await
    {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let limiter = ctx.router.local();
    let mut installed = 0;
    for (tenant, limit, state) in buckets {
        let key = llmtrace_actors::BucketKey::new(&tenant, limit);
        if let Err(e) = limiter.install(key, state).await {
            return ApiError::unavailable(e.to_string()).error_response();
        }
        installed += 1;
    }
    binary(rpc::encode(&rpc::InstallResponse { installed }))
}

/// `POST /cluster/v1/tenant`: another node's admin API asks this node, the
/// owner, for a bucket's state (or to refill it).
pub async fn tenant(
    req: HttpRequest,
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> HttpResponse {
    let (request, limit) = match rpc_request(&req, &ctx, payload, |b| {
        rpc::decode_tenant(b, ctx.router.local().limits())
    })
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let limiter = ctx.router.local();
    match llmtrace_actors::cluster::tenant_rpc::serve_tenant(
        limiter,
        &request.tenant,
        limit,
        request.op,
    )
    .await
    {
        Ok(report) => binary(rpc::encode(&rpc::TenantResponse {
            node: ctx.router.view().self_id.to_string(),
            report,
        })),
        Err(e) => ApiError::unavailable(e.to_string()).error_response(),
    }
}

/// `POST /cluster/v1/top-refused`: another node's admin API asks for this
/// node's most refused keys of the last minute.
pub async fn top_refused(
    req: HttpRequest,
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> HttpResponse {
    if let Err(resp) = rpc_request(&req, &ctx, payload, rpc::decode_top_refused).await {
        return resp;
    }
    let now = ctx.router.local().clock().now_ns();
    let summary = ctx.metrics().top_refused(now);
    let node = ctx.router.view().self_id.to_string();
    binary(rpc::encode(&rpc::TopRefusedResponse::new(&node, &summary)))
}

/// `POST /cluster/v1/token-lease`: a node that forwards many checks of a
/// bucket this node owns asks for a token lease, gives one back, or both.
pub async fn token_lease(
    req: HttpRequest,
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> HttpResponse {
    use llmtrace_actors::cluster::{rpc::token_lease_wire, token_leases};
    let (request, limit) = match rpc_request(&req, &ctx, payload, |b| {
        token_lease_wire::decode_token_lease(b, ctx.router.local().limits())
    })
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    binary(rpc::encode(
        &token_leases::serve(&ctx.router, request, limit).await,
    ))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_exactly() {
        assert!(constant_time_eq(b"secret-1", b"secret-1"));
        assert!(!constant_time_eq(b"secret-1", b"secret-2"));
        assert!(!constant_time_eq(b"secret", b"secret-1"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
