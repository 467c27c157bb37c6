//! The one error type of the HTTP surfaces and its mapping to responses:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.

use std::borrow::Cow;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// An error answered to a client. `field` names the input at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<Cow<'static, str>>,
}

impl ApiError {
    /// 400 for a field that is missing, mistyped or out of range.
    pub fn field(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// 400 for a field given as `null`: no field takes it (an optional one
    /// is left out for its default).
    pub fn null_field(field: &'static str) -> Self {
        Self::field(
            field,
            format!("`{field}` must not be null (leave an optional field out for its default)"),
        )
    }

    /// 400 `invalid_json` for a key given twice in one object (which of the
    /// two would count is the reader's guess, so neither does); `field`
    /// names it when it is one of the route's fields.
    pub fn duplicate_key(key: String, is_field: bool) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_json",
            message: format!("duplicate key `{key}`: a key may appear once per object"),
            field: is_field.then_some(Cow::Owned(key)),
        }
    }

    /// 400 for a field the route does not know.
    pub fn unknown_field(name: &str, expected: &[&str]) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "unknown_field",
            message: format!(
                "unknown field `{name}`; expected {}",
                expected
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            field: Some(Cow::Owned(name.to_string())),
        }
    }

    /// 401: the admin token is missing or wrong.
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "missing or wrong admin token (Authorization: Bearer <token>)".into(),
            field: None,
        }
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_json",
            message: message.into(),
            field: None,
        }
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: format!("request body exceeds {limit} bytes"),
            field: None,
        }
    }

    /// 408: the request's body did not arrive within `bound` (the
    /// connection closes after this answer).
    pub fn body_timeout(bound: std::time::Duration) -> Self {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            message: format!("the request body did not arrive within {bound:?}"),
            field: None,
        }
    }

    pub fn not_found() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: "no such route".into(),
            field: None,
        }
    }

    pub fn method_not_allowed() -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: "method not allowed on this route".into(),
            field: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
            field: None,
        }
    }

    /// Write-through could not persist the new state (Redis down).
    pub fn not_persisted(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_persisted",
            message: message.into(),
            field: None,
        }
    }

    /// The JSON body, also used for per-item errors of a batch.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status).json(self.body());
        if self.status.is_server_error() {
            // Logged with the request id by the request-id middleware.
            resp.extensions_mut().insert(super::middleware::Failure {
                code: self.code,
                message: self.message.clone(),
            });
        }
        resp
    }
}
