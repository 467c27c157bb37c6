//! Middleware of the HTTP listeners: a request id on every public and admin
//! request, and bearer-token authentication of the admin routes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, Error, ResponseError};
use tracing::Instrument;

use super::cluster::constant_time_eq;
use super::error::ApiError;
use super::NodeContext;

/// The request id header, read and answered.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id accepted from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Admin paths served without the token.
pub const OPEN_ADMIN_PATHS: [&str; 2] = ["/healthz", "/admin/ui"];

/// A client's id is kept when it is 1 to 128 characters of
/// `[A-Za-z0-9._:-]` (nothing that could forge a log line or a header).
pub fn sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A new id: a random per-process prefix and a counter (unique without a
/// random draw per request).
pub fn new_request_id() -> String {
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
    format!("{prefix}-{:x}", NEXT_ID.fetch_add(1, Relaxed))
}

/// Takes the request id from `X-Request-Id` when sane, else makes one; runs
/// the request inside a span carrying it and returns it in the response.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| sane_request_id(s))
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    // A span per request costs more than the rest of a check's way through
    // the node; it is made only when debug logs are on. Otherwise the
    // request id reaches the log with the failure of a request (below).
    let mut res = if tracing::enabled!(tracing::Level::DEBUG) {
        let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
        let res = next.call(req).instrument(span.clone()).await?;
        span.in_scope(|| tracing::debug!(status = res.status().as_u16(), "answered"));
        res
    } else {
        next.call(req).await?
    };
    if res.status().is_server_error() {
        let failure = res.response().extensions().get::<Failure>().cloned();
        let (code, message) = failure.map_or(("", String::new()), |f| (f.code, f.message));
        let req = res.request();
        tracing::error!(request_id = %id, method = %req.method(), path = %req.path(), status = res.status().as_u16(), code, %message, "request failed");
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    Ok(res)
}

/// What a failed request's log line says; put in the response's extensions
/// by [`ApiError`], logged by [`request_id`] with the request id.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

/// True when `header` is `Bearer <token>` (constant-time comparison).
pub fn bearer_matches(header: Option<&HeaderValue>, token: &str) -> bool {
    let given = header
        .map(|v| v.as_bytes())
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    constant_time_eq(given, token.as_bytes())
}

/// Refuses admin requests without the configured token (401), except the
/// open paths. Without a token (loopback-only admin listener) all pass.
pub async fn admin_auth(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let token = req
        .app_data::<web::Data<NodeContext>>()
        .and_then(|c| c.admin.token.clone());
    let open = OPEN_ADMIN_PATHS.contains(&req.path());
    if let (Some(token), false) = (token, open) {
        if !bearer_matches(req.headers().get("authorization"), &token) {
            let mut resp = ApiError::unauthorized().error_response();
            resp.headers_mut().insert(
                HeaderName::from_static("www-authenticate"),
                HeaderValue::from_static("Bearer"),
            );
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    next.call(req).await.map(|r| r.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(sane_request_id("abc-123_x.y:z"));
        assert!(!sane_request_id(""));
        assert!(!sane_request_id("has space"));
        assert!(!sane_request_id("new\nline"));
        assert!(!sane_request_id(&"a".repeat(129)));
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert!(sane_request_id(&a), "{a}");
    }

    #[test]
    fn bearer() {
        let v = HeaderValue::from_static("Bearer s3cret");
        assert!(bearer_matches(Some(&v), "s3cret"));
        assert!(!bearer_matches(Some(&v), "s3cre"));
        assert!(!bearer_matches(None, "s3cret"));
        let v = HeaderValue::from_static("Basic s3cret");
        assert!(!bearer_matches(Some(&v), "s3cret"));
    }
}
