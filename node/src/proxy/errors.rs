//! Errors of the proxy listener, in the shape of the API called
//! ([`Dialect`]): OpenAI's `{"error": {"message", "type", "param": null,
//! "code"}}`, or on Anthropic's Messages API `{"type": "error", "error":
//! {"type", "message"}}` (types by status: `invalid_request_error`,
//! `authentication_error`, `request_too_large`, `rate_limit_error`,
//! `timeout_error`, `api_error`), so both official clients raise their
//! usual exceptions (`AuthenticationError`, `RateLimitError`,
//! `APIStatusError`).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::json;

/// Whose API a call speaks, so the proxy's own answers (errors, limit
/// headers) are in the shape its clients read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    /// Anthropic's Messages API: `…/v1/messages`, `…/v1/messages/count_tokens`
    /// and `…/v1/messages/batches…` (OpenAI's `/v1/threads/{id}/messages`
    /// stays OpenAI).
    Anthropic,
}

impl Dialect {
    /// The dialect of a request path (any prefix).
    pub fn of_path(path: &str) -> Dialect {
        let path = path.trim_end_matches('/');
        if path.ends_with("/v1/messages")
            || path.ends_with("/v1/messages/count_tokens")
            || path.contains("/v1/messages/batches")
        {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// An error answered by the proxy itself (never the upstream's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
}

impl ProxyError {
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, m: String) -> Self {
        ProxyError {
            status,
            kind,
            code,
            message: m,
        }
    }

    /// 401: no bearer key and no trusted tenant header.
    pub fn no_tenant() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "no API key: send `Authorization: Bearer <key>`".into(),
        )
    }

    /// 401: a trusted tenant header that is not a valid tenant id.
    pub fn bad_tenant(why: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_tenant",
            format!("invalid X-LLMTrace-Tenant-ID header: {why}"),
        )
    }

    /// 413: the request body is over `proxy.max_request_bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    }

    /// 400: the request body could not be read.
    pub fn bad_body(why: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_body",
            why,
        )
    }

    /// 400: a body the proxy refuses to forward (Anthropic Messages calls
    /// are checked before their tokens are reserved).
    pub fn invalid_request(why: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            why,
        )
    }

    /// 429: a limit refused the call.
    pub fn rate_limited(message: String) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            message,
        )
    }

    /// 502: the upstream could not be reached or answered garbage.
    pub fn bad_gateway(why: String) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_unreachable",
            why,
        )
    }

    /// 504: the upstream did not answer in time.
    pub fn timeout(ms: u64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            "upstream_timeout",
            format!("the upstream did not answer within {ms} ms"),
        )
    }

    /// 503: the limiter could not decide (node shutting down).
    pub fn unavailable(why: String) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "limiter_unavailable",
            why,
        )
    }

    /// The JSON body, in the shape of `dialect`.
    pub fn body(&self, dialect: Dialect) -> serde_json::Value {
        match dialect {
            Dialect::OpenAi => json!({ "error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }}),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": {"type": self.anthropic_type(), "message": self.message},
            }),
        }
    }

    /// Anthropic's error type of this status.
    fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "invalid_request_error",
            401 => "authentication_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            _ => "api_error",
        }
    }

    /// A response builder with the status set, to add headers to.
    pub fn builder(&self) -> actix_web::HttpResponseBuilder {
        HttpResponse::build(self.status)
    }

    pub fn response(&self, dialect: Dialect) -> HttpResponse {
        self.builder().json(self.body(dialect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = ProxyError::rate_limited("slow down".into());
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            e.body(Dialect::OpenAi),
            json!({"error": {"message": "slow down", "type": "rate_limit_exceeded",
                             "param": null, "code": "rate_limit_exceeded"}})
        );
        assert_eq!(ProxyError::timeout(5).status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ProxyError::no_tenant().status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn anthropic_shape() {
        let e = ProxyError::rate_limited("slow down".into());
        assert_eq!(
            e.body(Dialect::Anthropic),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
        for (e, kind) in [
            (
                ProxyError::invalid_request("x".into()),
                "invalid_request_error",
            ),
            (ProxyError::no_tenant(), "authentication_error"),
            (ProxyError::too_large(5), "request_too_large"),
            (ProxyError::bad_gateway("x".into()), "api_error"),
            (ProxyError::unavailable("x".into()), "api_error"),
            (ProxyError::timeout(5), "timeout_error"),
        ] {
            assert_eq!(e.body(Dialect::Anthropic)["error"]["type"], kind, "{e:?}");
        }
    }

    #[test]
    fn dialect_of_path() {
        assert_eq!(Dialect::of_path("/v1/messages"), Dialect::Anthropic);
        assert_eq!(
            Dialect::of_path("/anthropic/v1/messages/"),
            Dialect::Anthropic
        );
        assert_eq!(
            Dialect::of_path("/v1/messages/count_tokens"),
            Dialect::Anthropic
        );
        assert_eq!(Dialect::of_path("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(
            Dialect::of_path("/v1/messages/batches/b1"),
            Dialect::Anthropic
        );
        assert_eq!(Dialect::of_path("/v1/threads/t1/messages"), Dialect::OpenAi);
    }
}
