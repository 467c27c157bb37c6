//! Reading and validating request bodies. Bodies are capped at
//! [`MAX_BODY_BYTES`] while they stream in; JSON is parsed into typed structs
//! on the fast path, and only when that fails is it re-read as a generic value
//! to tell the client exactly which field is wrong.

use actix_web::web;
use futures_util::StreamExt;
use llmtrace_cluster_config::{validate_tenant_id, Limit};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most checks in one batch.
pub const MAX_BATCH_ITEMS: usize = 1_000;

/// A validated check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInput {
    pub tenant_id: String,
    pub limit: Limit,
    pub cost: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    tenant_id: String,
    cost: Option<u64>,
    limit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    checks: Vec<Value>,
}

/// Reads the whole body, refusing it with 413 as soon as it exceeds the cap.
pub async fn read_body(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => ApiError::too_large(MAX_BODY_BYTES),
            other => ApiError::invalid_json(format!("could not read body: {other}")),
        })?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::too_large(MAX_BODY_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn finish(
    tenant_id: String,
    cost: Option<u64>,
    limit: Option<&str>,
) -> Result<CheckInput, ApiError> {
    validate_tenant_id(&tenant_id)
        .map_err(|e| ApiError::field("tenant_id", format!("`tenant_id` {e}")))?;
    let cost = cost.unwrap_or(1);
    if cost == 0 {
        return Err(ApiError::field("cost", "`cost` must be at least 1"));
    }
    let limit = match limit {
        None => Limit::Requests,
        Some(name) => name.parse().map_err(|()| {
            let known: Vec<&str> = Limit::ALL.iter().map(|l| l.as_str()).collect();
            ApiError::field(
                "limit",
                format!(
                    "unknown `limit` {name:?}; known limits: {}",
                    known.join(", ")
                ),
            )
        })?,
    };
    Ok(CheckInput {
        tenant_id,
        limit,
        cost,
    })
}

/// Validates one check given as a JSON value (batch items, error path).
pub fn check_from_value(v: &Value) -> Result<CheckInput, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid_json("a check must be a JSON object"))?;
    if let Some(unknown) = obj
        .keys()
        .find(|k| !["tenant_id", "cost", "limit"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid_json(format!(
            "unknown field `{unknown}`; expected `tenant_id`, `cost`, `limit`"
        )));
    }
    let tenant_id = match obj.get("tenant_id") {
        None | Some(Value::Null) => {
            return Err(ApiError::field("tenant_id", "missing field `tenant_id`"))
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::field("tenant_id", "`tenant_id` must be a string")),
    };
    let cost = match obj.get("cost") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::field(
                "cost",
                "`cost` must be an integer between 1 and the burst size",
            )
        })?),
    };
    let limit = match obj.get("limit") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ApiError::field("limit", "`limit` must be a string")),
    };
    finish(tenant_id, cost, limit)
}

fn parse_value(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(format!("malformed JSON: {e}")))
}

/// Parses `POST /v1/check`.
pub fn parse_check(body: &[u8]) -> Result<CheckInput, ApiError> {
    match serde_json::from_slice::<RawCheck>(body) {
        Ok(raw) => finish(raw.tenant_id, raw.cost, raw.limit.as_deref()),
        Err(_) => check_from_value(&parse_value(body)?),
    }
}

/// Parses `POST /v1/check/batch`: the items, each validated on its own.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Result<CheckInput, ApiError>>, ApiError> {
    let raw: RawBatch = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(_) => {
            let v = parse_value(body)?;
            let checks = v
                .get("checks")
                .ok_or_else(|| ApiError::field("checks", "missing field `checks`"))?;
            if !checks.is_array() {
                return Err(ApiError::field("checks", "`checks` must be an array"));
            }
            return Err(ApiError::invalid_json(
                "unknown field; a batch is {\"checks\": [...]}",
            ));
        }
    };
    if raw.checks.is_empty() {
        return Err(ApiError::field("checks", "`checks` must not be empty"));
    }
    if raw.checks.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::field(
            "checks",
            format!(
                "`checks` has {} items; at most {MAX_BATCH_ITEMS} are allowed",
                raw.checks.len()
            ),
        ));
    }
    Ok(raw.checks.iter().map(check_from_value).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field_of(body: &str) -> Option<&'static str> {
        let field = parse_check(body.as_bytes()).unwrap_err().field?;
        // Test-only: a 'static name to compare with literals.
        Some(Box::leak(field.into_owned().into_boxed_str()))
    }

    #[test]
    fn valid_checks() {
        let c = parse_check(br#"{"tenant_id":"acme"}"#).unwrap();
        assert_eq!(
            (c.tenant_id.as_str(), c.cost, c.limit),
            ("acme", 1, Limit::Requests)
        );
        let c = parse_check(br#"{"tenant_id":"a","cost":7,"limit":"requests"}"#).unwrap();
        assert_eq!(c.cost, 7);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"cost":1}"#), Some("tenant_id"));
        assert_eq!(field_of(r#"{"tenant_id":5}"#), Some("tenant_id"));
        assert_eq!(field_of(r#"{"tenant_id":""}"#), Some("tenant_id"));
        assert_eq!(field_of(r#"{"tenant_id":"a b"}"#), Some("tenant_id"));
        assert_eq!(
            field_of(&format!(r#"{{"tenant_id":"{}"}}"#, "x".repeat(129))),
            Some("tenant_id")
        );
        assert_eq!(field_of(r#"{"tenant_id":"a","cost":0}"#), Some("cost"));
        assert_eq!(field_of(r#"{"tenant_id":"a","cost":-1}"#), Some("cost"));
        assert_eq!(field_of(r#"{"tenant_id":"a","cost":1.5}"#), Some("cost"));
        assert_eq!(field_of(r#"{"tenant_id":"a","cost":"1"}"#), Some("cost"));
        assert_eq!(
            field_of(r#"{"tenant_id":"a","limit":"tokenz"}"#),
            Some("limit")
        );
        let e = parse_check(br#"{"tenant_id":"a","extra":1}"#).unwrap_err();
        assert!(e.message.contains("extra"), "{e}");
        assert_eq!(parse_check(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(parse_check(b"[]").unwrap_err().code, "invalid_json");
    }

    #[test]
    fn batches() {
        let items = parse_batch(br#"{"checks":[{"tenant_id":"a"},{"tenant_id":""}]}"#).unwrap();
        assert!(items[0].is_ok());
        assert_eq!(
            items[1].as_ref().unwrap_err().field.as_deref(),
            Some("tenant_id")
        );
        assert_eq!(
            parse_batch(br#"{"checks":[]}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("checks")
        );
        assert_eq!(
            parse_batch(br#"{"checks":1}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("checks")
        );
        assert_eq!(
            parse_batch(br#"{}"#).unwrap_err().field.as_deref(),
            Some("checks")
        );
        let many = format!(
            r#"{{"checks":[{}]}}"#,
            vec![r#"{"tenant_id":"a"}"#; 1001].join(",")
        );
        assert_eq!(
            parse_batch(many.as_bytes()).unwrap_err().field.as_deref(),
            Some("checks")
        );
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_check(&bytes);
            let _ = parse_batch(&bytes);
        }
    }
}
