//! The node-to-node endpoint: `POST /cluster/v1/checks`, a bincode batch in,
//! a bincode batch out. Input is hostile until proven otherwise: the cluster
//! secret is checked in constant time, the body is capped while it streams
//! in, decoding is bounded (see `llmtrace_actors::rpc`), and every refusal is
//! a JSON error, never a panic.

use std::sync::atomic::Ordering::Relaxed;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use llmtrace_actors::rpc;

use super::error::ApiError;
use super::NodeContext;

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reject(
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
    counter.fetch_add(1, Relaxed);
    ApiError {
        status,
        code,
        message,
        field: None,
    }
    .error_response()
}

/// `POST /cluster/v1/checks`.
pub async fn checks(
    req: HttpRequest,
    ctx: web::Data<NodeContext>,
    mut payload: web::Payload,
) -> HttpResponse {
    if req.app_config().local_addr() != ctx.cluster_listener {
        // The public listener shares this server; node-to-node calls are
        // not part of its API.
        return ApiError::not_found().error_response();
    }
    if let Some(secret) = &ctx.cluster_secret {
        let given = req
            .headers()
            .get(rpc::SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !constant_time_eq(given, secret.as_bytes()) {
            return reject(
                &ctx,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong cluster secret".into(),
            );
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return reject(
                &ctx,
                StatusCode::BAD_REQUEST,
                "bad_body",
                "could not read body".into(),
            );
        };
        if body.len() + chunk.len() > rpc::MAX_BODY_BYTES {
            return reject(
                &ctx,
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body exceeds {} bytes", rpc::MAX_BODY_BYTES),
            );
        }
        body.extend_from_slice(&chunk);
    }
    let batch = match rpc::decode_request(&body) {
        Ok(b) => b,
        Err(e) => return reject(&ctx, StatusCode::BAD_REQUEST, "bad_body", e.to_string()),
    };
    let answer = ctx.router.serve_batch(batch).await;
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(rpc::encode(&answer))
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
