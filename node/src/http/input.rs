//! Reading and validating request bodies. Bodies are capped at
//! [`MAX_BODY_BYTES`] while they stream in; JSON is parsed into typed structs
//! on the fast path, and only when that fails is it re-read as a generic value
//! to tell the client exactly which field is wrong.
//!
//! What a check body may hold: each key once ([`strict_json`]), only the
//! fields of a check, and no `null` (an optional field is left out for its
//! default).

use actix_web::web;
use futures_util::StreamExt;
use llmtrace_cluster_config::{validate_tenant_id, Limit, RateLimitConfig};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::descriptors::{from_raw, parse_descriptors, RawDescriptor};
use super::error::ApiError;
use super::strict_json::{self, Strict};
use crate::multi_check::Descriptor;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most checks in one batch.
pub const MAX_BATCH_ITEMS: usize = 1_000;

/// The fields of a check.
const CHECK_FIELDS: [&str; 3] = ["tenant_id", "cost", "limit"];
/// The fields of a batch.
const BATCH_FIELDS: [&str; 1] = ["checks"];

/// A validated check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInput {
    pub tenant_id: String,
    pub limit: Limit,
    pub cost: u64,
}

/// A parsed `POST /v1/check` body, in either of its forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckBody {
    /// `{"tenant_id", "cost", "limit"}`.
    One(CheckInput),
    /// `{"descriptors": [...]}`, all or nothing.
    Descriptors(Vec<Descriptor>),
}

/// The fast path of both forms in one pass: the derived `Deserialize`
/// refuses unknown and repeated fields; [`given`] refuses `null`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(default, deserialize_with = "given")]
    tenant_id: Option<String>,
    #[serde(default, deserialize_with = "given")]
    cost: Option<u64>,
    #[serde(default, deserialize_with = "given")]
    limit: Option<String>,
    #[serde(default, deserialize_with = "given")]
    descriptors: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    checks: Vec<Strict>,
}

/// An optional field: absent is `None` (through `#[serde(default)]`), but
/// `null` is an error, where serde's `Option` would take it for absent.
pub(super) fn given<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
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

/// A limit's name, or a 400 naming `field` and listing the known ones.
pub fn parse_limit(name: &str, limits: &RateLimitConfig, field: &str) -> Result<Limit, ApiError> {
    limits.limit(name).ok_or_else(|| {
        let known: Vec<&str> = limits.limits().iter().map(|l| l.as_str()).collect();
        ApiError::field(
            field.to_string(),
            format!(
                "unknown `{field}` {name:?}; known limits: {}",
                known.join(", ")
            ),
        )
    })
}

fn finish(
    tenant_id: String,
    cost: Option<u64>,
    limit: Option<&str>,
    limits: &RateLimitConfig,
) -> Result<CheckInput, ApiError> {
    validate_tenant_id(&tenant_id)
        .map_err(|e| ApiError::field("tenant_id", format!("`tenant_id` {e}")))?;
    let cost = cost.unwrap_or(1);
    if cost == 0 {
        return Err(ApiError::field("cost", "`cost` must be at least 1"));
    }
    let limit = limit.map_or(Ok(Limit::REQUESTS), |name| {
        parse_limit(name, limits, "limit")
    })?;
    Ok(CheckInput {
        tenant_id,
        limit,
        cost,
    })
}

/// Validates one check given as a JSON value (batch items, error path).
pub fn check_from_value(v: &Value, limits: &RateLimitConfig) -> Result<CheckInput, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid_json("a check must be a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !CHECK_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::unknown_field(unknown, &CHECK_FIELDS));
    }
    let tenant_id = match obj.get("tenant_id") {
        None => return Err(ApiError::field("tenant_id", "missing field `tenant_id`")),
        Some(Value::Null) => return Err(ApiError::null_field("tenant_id")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::field("tenant_id", "`tenant_id` must be a string")),
    };
    let cost = match obj.get("cost") {
        None => None,
        Some(Value::Null) => return Err(ApiError::null_field("cost")),
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::field(
                "cost",
                "`cost` must be an integer between 1 and the burst size",
            )
        })?),
    };
    let limit = match obj.get("limit") {
        None => None,
        Some(Value::Null) => return Err(ApiError::null_field("limit")),
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ApiError::field("limit", "`limit` must be a string")),
    };
    finish(tenant_id, cost, limit, limits)
}

/// Parses `POST /v1/check`, in its first form (`tenant_id`, `cost`,
/// `limit`) or with `descriptors` ([`super::descriptors`]).
pub fn parse_check(body: &[u8], limits: &RateLimitConfig) -> Result<CheckBody, ApiError> {
    if let Ok(raw) = serde_json::from_slice::<RawCheck>(body) {
        match (raw.tenant_id, raw.descriptors) {
            (Some(tenant_id), None) => {
                return finish(tenant_id, raw.cost, raw.limit.as_deref(), limits)
                    .map(CheckBody::One)
            }
            (None, Some(items)) if raw.cost.is_none() && raw.limit.is_none() => {
                return from_raw(items, limits).map(CheckBody::Descriptors)
            }
            // Neither form, or both mixed: the error path names the field.
            _ => {}
        }
    }
    let v = strict_json::parse(body, &CHECK_FIELDS)?;
    if v.get("descriptors").is_some() {
        return parse_descriptors(body, limits).map(CheckBody::Descriptors);
    }
    check_from_value(&v, limits).map(CheckBody::One)
}

/// Parses `POST /v1/check/batch`: the items, each validated on its own (an
/// item with a duplicated key gets its own error).
pub fn parse_batch(
    body: &[u8],
    limits: &RateLimitConfig,
) -> Result<Vec<Result<CheckInput, ApiError>>, ApiError> {
    let raw: RawBatch = serde_json::from_slice(body).map_err(|_| not_a_batch(body))?;
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
    Ok(raw
        .checks
        .into_iter()
        .map(|item| check_from_value(&item.into_value(&CHECK_FIELDS)?, limits))
        .collect())
}

/// Why `body`, refused by the fast path, is not a batch.
fn not_a_batch(body: &[u8]) -> ApiError {
    let v = match strict_json::parse(body, &BATCH_FIELDS) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let Some(obj) = v.as_object() else {
        return ApiError::invalid_json("a batch must be a JSON object {\"checks\": [...]}");
    };
    match obj.get("checks") {
        None => return ApiError::field("checks", "missing field `checks`"),
        Some(Value::Null) => return ApiError::null_field("checks"),
        Some(Value::Array(_)) => {}
        Some(_) => return ApiError::field("checks", "`checks` must be an array"),
    }
    match obj.keys().find(|k| !BATCH_FIELDS.contains(&k.as_str())) {
        Some(unknown) => ApiError::unknown_field(unknown, &BATCH_FIELDS),
        None => ApiError::invalid_json("a batch is {\"checks\": [...]}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(body: &[u8]) -> Result<CheckInput, ApiError> {
        match parse_check(body, &RateLimitConfig::default())? {
            CheckBody::One(c) => Ok(c),
            other => panic!("not the first form: {other:?}"),
        }
    }

    fn field_of(body: &str) -> Option<&'static str> {
        let field = check(body.as_bytes()).unwrap_err().field?;
        // Test-only: a 'static name to compare with literals.
        Some(Box::leak(field.into_owned().into_boxed_str()))
    }

    #[test]
    fn valid_checks() {
        let c = check(br#"{"tenant_id":"acme"}"#).unwrap();
        assert_eq!(
            (c.tenant_id.as_str(), c.cost, c.limit),
            ("acme", 1, Limit::REQUESTS)
        );
        let c = check(br#"{"tenant_id":"a","cost":7,"limit":"requests"}"#).unwrap();
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
        let e = check(br#"{"tenant_id":"a","extra":1}"#).unwrap_err();
        assert!(e.message.contains("extra"), "{e}");
        assert_eq!(check(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(check(b"[]").unwrap_err().code, "invalid_json");
    }

    #[test]
    fn batches() {
        let items = parse_batch(
            br#"{"checks":[{"tenant_id":"a"},{"tenant_id":""}]}"#,
            &RateLimitConfig::default(),
        )
        .unwrap();
        assert!(items[0].is_ok());
        assert_eq!(
            items[1].as_ref().unwrap_err().field.as_deref(),
            Some("tenant_id")
        );
        assert_eq!(
            parse_batch(br#"{"checks":[]}"#, &RateLimitConfig::default())
                .unwrap_err()
                .field
                .as_deref(),
            Some("checks")
        );
        assert_eq!(
            parse_batch(br#"{"checks":1}"#, &RateLimitConfig::default())
                .unwrap_err()
                .field
                .as_deref(),
            Some("checks")
        );
        assert_eq!(
            parse_batch(br#"{}"#, &RateLimitConfig::default())
                .unwrap_err()
                .field
                .as_deref(),
            Some("checks")
        );
        let many = format!(
            r#"{{"checks":[{}]}}"#,
            vec![r#"{"tenant_id":"a"}"#; 1001].join(",")
        );
        assert_eq!(
            parse_batch(many.as_bytes(), &RateLimitConfig::default())
                .unwrap_err()
                .field
                .as_deref(),
            Some("checks")
        );
    }

    /// The error of `body`: (code, field).
    fn error_of(body: &str) -> (&'static str, Option<String>) {
        let e = check(body.as_bytes()).unwrap_err();
        (e.code, e.field.map(|f| f.into_owned()))
    }

    #[test]
    fn a_duplicated_key_is_invalid_json_naming_it() {
        for key in ["tenant_id", "cost", "limit"] {
            let body = match key {
                "tenant_id" => r#"{"tenant_id":"a","cost":1,"tenant_id":"b"}"#,
                "cost" => r#"{"tenant_id":"a","cost":1,"cost":2}"#,
                _ => r#"{"limit":"requests","tenant_id":"a","limit":"tokens"}"#,
            };
            let e = check(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "invalid_json", "{body}: {e}");
            assert!(e.message.contains(&format!("`{key}`")), "{body}: {e}");
            assert_eq!(e.field.as_deref(), Some(key), "{body}: {e}");
        }
        // An unknown key given twice, or a key duplicated deeper down: named
        // in the message, not a field of a check.
        for (body, key) in [
            (r#"{"tenant_id":"a","x":1,"x":1}"#, "x"),
            (r#"{"tenant_id":"a","x":{"cost":1,"cost":1}}"#, "cost"),
        ] {
            let e = check(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "invalid_json", "{body}: {e}");
            assert!(e.message.contains(&format!("`{key}`")), "{body}: {e}");
            assert_eq!(e.field, None, "{body}: {e}");
        }
    }

    #[test]
    fn a_duplicated_key_in_a_batch() {
        // In the envelope: the whole batch is refused.
        let e = parse_batch(
            br#"{"checks":[{"tenant_id":"a"}],"checks":[{"tenant_id":"b"}]}"#,
            &RateLimitConfig::default(),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_json", Some("checks")),
            "{e}"
        );
        // In an item: that item's error, the others decided.
        let items = parse_batch(
            br#"{"checks":[{"tenant_id":"a","cost":1,"cost":9},{"tenant_id":"b"}]}"#,
            &RateLimitConfig::default(),
        )
        .unwrap();
        let e = items[0].as_ref().unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_json", Some("cost")),
            "{e}"
        );
        assert!(e.message.contains("`cost`"), "{e}");
        assert_eq!(items[1].as_ref().map(|c| c.tenant_id.as_str()), Ok("b"));
    }

    #[test]
    fn null_is_refused_naming_the_field() {
        for (body, field) in [
            (r#"{"tenant_id":"a","cost":null}"#, "cost"),
            (r#"{"tenant_id":"a","limit":null}"#, "limit"),
            (r#"{"tenant_id":null}"#, "tenant_id"),
        ] {
            let (code, f) = error_of(body);
            assert_eq!(
                (code, f.as_deref()),
                ("invalid_field", Some(field)),
                "{body}"
            );
            let items = parse_batch(
                format!(r#"{{"checks":[{body}]}}"#).as_bytes(),
                &RateLimitConfig::default(),
            )
            .unwrap();
            let e = items[0].as_ref().unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "batch item {body}: {e}");
        }
        let e = parse_batch(br#"{"checks":null}"#, &RateLimitConfig::default()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("checks"), "{e}");
    }

    #[test]
    fn an_unknown_field_is_named_in_field() {
        let (code, field) = error_of(r#"{"tenant_id":"a","extra":1}"#);
        assert_eq!((code, field.as_deref()), ("unknown_field", Some("extra")));
        let items = parse_batch(
            br#"{"checks":[{"tenant_id":"a","costs":1}]}"#,
            &RateLimitConfig::default(),
        )
        .unwrap();
        let e = items[0].as_ref().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("costs"), "{e}");
        let e = parse_batch(
            br#"{"checks":[{"tenant_id":"a"}],"check":1}"#,
            &RateLimitConfig::default(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("check"), "{e}");
        assert!(e.message.contains("`check`"), "{e}");
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_check(&bytes, &RateLimitConfig::default());
            let _ = parse_batch(&bytes, &RateLimitConfig::default());
        }
    }
}
