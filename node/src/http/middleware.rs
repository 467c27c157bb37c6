//! Middleware of the HTTP listeners: a request id on every public and admin
//! request, and bearer-token authentication of the admin routes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
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
static PREFIX: std::sync::OnceLock<[u8; 12]> = std::sync::OnceLock::new();

/// A new id: a random per-process prefix and a counter in hex (unique
/// without a random draw per request), as a header value.
pub fn new_request_id() -> HeaderValue {
    let prefix = PREFIX.get_or_init(|| {
        let mut p = [0u8; 12];
        p.copy_from_slice(&uuid::Uuid::new_v4().simple().to_string().as_bytes()[..12]);
        p
    });
    let mut buf = [0u8; 12 + 1 + 16];
    buf[..12].copy_from_slice(prefix);
    buf[12] = b'-';
    let n = NEXT_ID.fetch_add(1, Relaxed);
    let digits = if n == 0 {
        1
    } else {
        (64 - n.leading_zeros() as usize).div_ceil(4)
    };
    for i in 0..digits {
        let d = ((n >> (4 * (digits - 1 - i))) & 0xf) as u8;
        buf[13 + i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
    }
    HeaderValue::from_bytes(&buf[..13 + digits]).expect("ASCII hex")
}

/// Takes the request id from `X-Request-Id` when sane, else makes one, and
/// returns it in the response. A span per request costs more than the rest
/// of a check's way through the node, so the request runs inside a span
/// carrying the id only when debug logs are on; otherwise the id reaches
/// the log with the failure of a request. Node-to-node routes (`/cluster/`)
/// carry no id. (`wrap_fn`, not `from_fn`: no boxed future per request.)
pub fn request_id<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: 'static,
{
    let id = if req.path().starts_with("/cluster/") {
        None
    } else {
        Some(
            req.headers()
                .get(&REQUEST_ID)
                .filter(|v| v.to_str().is_ok_and(sane_request_id))
                .cloned()
                .unwrap_or_else(new_request_id),
        )
    };
    let span = match &id {
        Some(id) if tracing::enabled!(tracing::Level::DEBUG) => Some(tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or_default(),
            method = %req.method(),
            path = %req.path()
        )),
        _ => None,
    };
    let fut = match &span {
        Some(span) => span.in_scope(|| srv.call(req)),
        None => srv.call(req),
    };
    async move {
        let Some(id) = id else {
            return fut.await;
        };
        let mut res = match span {
            Some(span) => {
                let res = fut.instrument(span.clone()).await?;
                span.in_scope(|| tracing::debug!(status = res.status().as_u16(), "answered"));
                res
            }
            None => fut.await?,
        };
        if res.status().is_server_error() {
            let failure = res.response().extensions().get::<Failure>().cloned();
            let (code, message) = failure.map_or(("", String::new()), |f| (f.code, f.message));
            let req = res.request();
            tracing::error!(
                request_id = id.to_str().unwrap_or_default(),
                method = %req.method(),
                path = %req.path(),
                status = res.status().as_u16(),
                code,
                %message,
                "request failed"
            );
        }
        res.headers_mut().insert(REQUEST_ID, id);
        Ok(res)
    }
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
        for v in [a, b] {
            assert!(sane_request_id(v.to_str().unwrap()), "{v:?}");
        }
        // Hex counter digits, no padding.
        let before = NEXT_ID.load(Relaxed);
        let id = new_request_id();
        let hex = id.to_str().unwrap().rsplit('-').next().unwrap().to_string();
        assert!(u64::from_str_radix(&hex, 16).unwrap() >= before, "{hex}");
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
