//! Errors of the proxy listener, in OpenAI's error shape:
//! `{"error": {"message", "type", "param": null, "code"}}`, so OpenAI
//! clients raise their usual exceptions (`AuthenticationError`,
//! `RateLimitError`, `APIStatusError`).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::json;

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

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.code,
        }})
    }

    /// A response builder with the status set, to add headers to.
    pub fn builder(&self) -> actix_web::HttpResponseBuilder {
        HttpResponse::build(self.status)
    }

    pub fn response(&self) -> HttpResponse {
        self.builder().json(self.body())
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
            e.body(),
            json!({"error": {"message": "slow down", "type": "rate_limit_exceeded",
                             "param": null, "code": "rate_limit_exceeded"}})
        );
        assert_eq!(ProxyError::timeout(5).status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ProxyError::no_tenant().status, StatusCode::UNAUTHORIZED);
    }
}
