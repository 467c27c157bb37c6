//! Anthropic Messages API calls (`POST /v1/messages`) before they are
//! sent: the body is checked (a JSON object with a `model` string, a
//! `messages` array, a whole `max_tokens` from 1 to [`MAX_TOKENS`], a
//! boolean `stream`, a `system` string or array) and refused with the reason
//! otherwise, so a hostile body is a clear 400 and never reaches the
//! upstream; the plan reserves the prompt (the `system` and `messages`
//! content blocks' text, images at a fixed cost, tool blocks and `tools`
//! as their JSON text) plus `max_tokens`.
//!
//! Claude's tokenizer is not public: the prompt is always estimated (one
//! token per 4 bytes, [`super::tokens::estimate`]) and the usage the
//! upstream reports settles the difference.

use serde_json::{Map, Value};

use super::tokens::{Counter, Kind, Plan};

/// Largest `max_tokens` accepted (far above any Claude model's output).
pub const MAX_TOKENS: u64 = 1_000_000;

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// Checks a Messages body and plans its reservation; `Err` is the message
/// of the 400.
pub fn plan(body: &[u8]) -> Result<Plan, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("request body must be a JSON object".into());
    };
    let model = match field(&obj, "model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err("model: must be a string".into()),
        None => return Err("model: field required".into()),
    };
    let max_tokens = match field(&obj, "max_tokens") {
        None => return Err("max_tokens: field required".into()),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_TOKENS).contains(n))
            .ok_or_else(|| format!("max_tokens: must be a whole number from 1 to {MAX_TOKENS}"))?,
    };
    let messages = match field(&obj, "messages") {
        Some(Value::Array(m)) => m,
        Some(_) => return Err("messages: must be an array".into()),
        None => return Err("messages: field required".into()),
    };
    let stream = match field(&obj, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("stream: must be a boolean".into()),
    };
    let counter = Counter::for_model(&model);
    let system = match field(&obj, "system") {
        None => 0,
        Some(s @ (Value::String(_) | Value::Array(_))) => counter.count_content(s),
        Some(_) => return Err("system: must be a string or an array of blocks".into()),
    };
    let mut prompt = system + field(&obj, "tools").map_or(0, |t| counter.count_json(t));
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!("messages.{i}: must be an object"));
        };
        prompt += field(m, "content").map_or(0, |c| counter.count_content(c));
    }
    Ok(Plan {
        kind: Some(Kind::Messages),
        prompt,
        completion: max_tokens,
        model,
        stream,
        injected_usage: false,
        body: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::tokens::estimate;
    use serde_json::json;

    fn plan_of(v: Value) -> Result<Plan, String> {
        plan(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn reserves_the_estimated_prompt_and_max_tokens() {
        let tool = json!({"name": "get_weather", "input_schema": {"type": "object"}});
        let result = json!({"type": "tool_result", "tool_use_id": "t", "content": "sunny"});
        let p = plan_of(json!({
        "model": "claude-sonnet-4-5", "max_tokens": 300, "stream": true,
        "system": [{"type": "text", "text": "be brief"}],
        "tools": [tool.clone()],
        "messages": [
            {"role": "user", "content": "hello world"},
            {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
            {"role": "user", "content": [result.clone(),
                                         {"type": "image", "source": {"type": "base64"}}]},
        ]}))
        .unwrap();
        let tools = estimate(&json!([tool]).to_string());
        let prompt = estimate("be brief")
            + tools
            + estimate("hello world")
            + estimate("hi")
            + estimate(&result.to_string())
            + 85;
        assert_eq!((p.prompt, p.completion), (prompt, 300));
        assert_eq!(p.kind, Some(Kind::Messages));
        assert!(p.stream && !p.injected_usage && p.body.is_none());
        // A system string, no stream.
        let p = plan_of(
            json!({"model": "claude-x", "max_tokens": 1, "system": "abcd",
                               "messages": []}),
        )
        .unwrap();
        assert_eq!((p.prompt, p.total(), p.stream), (1, 2, false));
    }

    #[test]
    fn hostile_bodies_are_refused_with_the_reason() {
        let ok = json!({"model": "m", "max_tokens": 5, "messages": []});
        assert!(plan_of(ok.clone()).is_ok());
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            plan_of(b).unwrap_err()
        };
        let without = |k: &str| {
            let mut b = ok.clone();
            b.as_object_mut().unwrap().remove(k);
            plan_of(b).unwrap_err()
        };
        for (err, starts) in [
            (
                plan(b"{not json").unwrap_err(),
                "request body is not valid JSON",
            ),
            (plan(b"").unwrap_err(), "request body is not valid JSON"),
            (
                plan(b"[1]").unwrap_err(),
                "request body must be a JSON object",
            ),
            (without("max_tokens"), "max_tokens: field required"),
            (
                with("max_tokens", json!(null)),
                "max_tokens: field required",
            ),
            (with("max_tokens", json!("5")), "max_tokens: must be"),
            (with("max_tokens", json!(0)), "max_tokens: must be"),
            (with("max_tokens", json!(-1)), "max_tokens: must be"),
            (with("max_tokens", json!(2.5)), "max_tokens: must be"),
            (with("max_tokens", json!(1e30)), "max_tokens: must be"),
            (with("max_tokens", json!(u64::MAX)), "max_tokens: must be"),
            (
                with("max_tokens", json!(MAX_TOKENS + 1)),
                "max_tokens: must be",
            ),
            (without("model"), "model: field required"),
            (with("model", json!(5)), "model: must be a string"),
            (without("messages"), "messages: field required"),
            (with("messages", json!("hi")), "messages: must be an array"),
            (
                with("messages", json!([7])),
                "messages.0: must be an object",
            ),
            (with("stream", json!("yes")), "stream: must be a boolean"),
            (with("system", json!(5)), "system: must be"),
        ] {
            assert!(
                err.starts_with(starts),
                "{err:?} should start with {starts:?}"
            );
        }
        assert_eq!(
            plan_of(json!({"model": "m", "max_tokens": MAX_TOKENS, "messages": []}))
                .unwrap()
                .completion,
            MAX_TOKENS
        );
    }

    proptest::proptest! {
        /// No body makes the check panic.
        #[test]
        fn any_body_is_planned_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = plan(&bytes);
        }
    }
}
