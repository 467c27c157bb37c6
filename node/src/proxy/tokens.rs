//! What a proxied call will cost in tokens, before it is sent: the prompt
//! counted with the model's real tokenizer (tiktoken-rs, whose encodings are
//! compiled into the binary: nothing is downloaded at run time) plus the
//! completion tokens the request allows (`max_completion_tokens`,
//! `max_tokens`, or `proxy.default_max_tokens`, times `n`; Responses'
//! `max_output_tokens`; Anthropic's required `max_tokens`, see
//! [`super::messages`]).
//!
//! Models tiktoken-rs does not know are estimated: one token per 4 bytes of
//! UTF-8 text, rounded up, per text field (the usual rule of thumb for
//! English; reconciling with the upstream's `usage` corrects it afterwards).
//! Image parts count 85 tokens (a low-detail image), tool definitions and
//! tool calls their JSON text.
//!
//! Streaming calls get `stream_options.include_usage = true` when the client
//! did not ask for it, so the final chunk carries the real usage; that
//! usage-only chunk is then dropped before it reaches the client.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;
use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// The endpoints whose tokens are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OpenAI `/chat/completions`: `messages`.
    Chat,
    /// OpenAI `/completions`: `prompt`.
    Completion,
    /// OpenAI `/embeddings`: `input`, no completion.
    Embedding,
    /// OpenAI `/responses`: `instructions` and `input`.
    Responses,
    /// Anthropic `/v1/messages`: `system` and `messages`.
    Messages,
}

/// How the proxy charges a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A request and its tokens, reserved then settled from the usage.
    Tokens(Kind),
    /// A request only (any other route).
    Request,
    /// Nothing: Anthropic's `/v1/messages/count_tokens` (free upstream too).
    Free,
}

/// The route of a path (`/v1/chat/completions`, with any prefix).
pub fn route(method: &actix_web::http::Method, path: &str) -> Route {
    if method != actix_web::http::Method::POST {
        return Route::Request;
    }
    let path = path.trim_end_matches('/');
    let kind = if path.ends_with("/chat/completions") {
        Kind::Chat
    } else if path.ends_with("/completions") {
        Kind::Completion
    } else if path.ends_with("/embeddings") {
        Kind::Embedding
    } else if path.ends_with("/responses") {
        Kind::Responses
    } else if path.ends_with("/v1/messages") {
        Kind::Messages
    } else if path.ends_with("/v1/messages/count_tokens") {
        return Route::Free;
    } else {
        return Route::Request;
    };
    Route::Tokens(kind)
}

/// Counts tokens of one model.
#[derive(Clone, Copy)]
pub struct Counter {
    /// The model's tokenizer, and its counts of [`ROLES`] (filled on first
    /// use); `None`: estimated.
    bpe: Option<(&'static CoreBPE, &'static RoleCounts)>,
}

type RoleCounts = OnceLock<[u64; ROLES.len()]>;

/// Tokens of an image part (OpenAI's low-detail cost).
const IMAGE_TOKENS: u64 = 85;

/// The message roles of the APIs: every chat message names one, so their
/// counts are kept (by tokenizer) instead of tokenized on every call.
const ROLES: [&str; 6] = [
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
    "function",
];

/// [`ROLES`] counted, by tokenizer (o200k, cl100k, p50k, p50k_edit, r50k).
static ROLE_COUNTS: [RoleCounts; 5] = [const { OnceLock::new() }; 5];

impl Counter {
    /// The real tokenizer of `model` when known, else the estimate.
    pub fn for_model(model: &str) -> Self {
        let bpe = get_tokenizer(model).map(|t| match t {
            Tokenizer::O200kBase => (tiktoken_rs::o200k_base_singleton(), 0),
            Tokenizer::Cl100kBase => (tiktoken_rs::cl100k_base_singleton(), 1),
            Tokenizer::P50kBase => (tiktoken_rs::p50k_base_singleton(), 2),
            Tokenizer::P50kEdit => (tiktoken_rs::p50k_edit_singleton(), 3),
            Tokenizer::R50kBase | Tokenizer::Gpt2 => (tiktoken_rs::r50k_base_singleton(), 4),
        });
        Counter {
            bpe: bpe.map(|(bpe, i)| (bpe, &ROLE_COUNTS[i])),
        }
    }

    /// True when the model's tokenizer is known (counts are exact).
    pub fn is_exact(&self) -> bool {
        self.bpe.is_some()
    }

    /// Tokens of `text`.
    pub fn count(&self, text: &str) -> u64 {
        let Some((bpe, roles)) = self.bpe else {
            return estimate(text);
        };
        match ROLES.iter().position(|r| *r == text) {
            Some(i) => roles.get_or_init(|| ROLES.map(|r| bpe.encode_ordinary(r).len() as u64))[i],
            None => bpe.encode_ordinary(text).len() as u64,
        }
    }

    pub(super) fn count_json(&self, v: &Value) -> u64 {
        match v {
            Value::Null => 0,
            Value::String(s) => self.count(s),
            other => self.count(&other.to_string()),
        }
    }

    /// A prompt given as a string, strings, or token arrays.
    fn count_input(&self, v: &Value) -> u64 {
        match v {
            Value::String(s) => self.count(s),
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::Number(_) => 1,
                    other => self.count_input(other),
                })
                .sum(),
            Value::Null => 0,
            other => self.count_json(other),
        }
    }

    /// Chat messages, as OpenAI's cookbook counts them: 3 tokens per
    /// message, its role, content and name (+1), and 3 to prime the reply.
    fn count_messages(&self, messages: &[Value]) -> u64 {
        let mut n = 3;
        for m in messages {
            n += 3;
            n += m.get("role").map_or(0, |r| self.count_json(r));
            n += m.get("content").map_or(0, |c| self.count_content(c));
            if let Some(name) = m.get("name") {
                n += self.count_json(name) + 1;
            }
            for key in ["tool_calls", "function_call"] {
                n += m.get(key).map_or(0, |v| self.count_json(v));
            }
        }
        n
    }

    /// A content part or block: its text, an image's fixed cost, or its
    /// JSON text (tool calls and results, documents).
    pub(super) fn count_part(&self, part: &Value) -> u64 {
        match part.get("type").and_then(Value::as_str) {
            Some("text" | "input_text" | "output_text") => {
                part.get("text").map_or(0, |t| self.count_json(t))
            }
            Some("image_url" | "input_image" | "image") => IMAGE_TOKENS,
            _ => self.count_json(part),
        }
    }

    /// A content given as a string or as parts.
    pub(super) fn count_content(&self, content: &Value) -> u64 {
        match content {
            Value::Array(parts) => parts.iter().map(|p| self.count_part(p)).sum(),
            other => self.count_json(other),
        }
    }

    /// Responses' `input`: a string, or items (messages with a content,
    /// function calls and outputs counted as their JSON).
    fn count_items(&self, input: &Value) -> u64 {
        match input {
            Value::Array(items) => items
                .iter()
                .map(|i| match i.get("content") {
                    Some(c) => {
                        i.get("role").map_or(0, |r| self.count_json(r)) + self.count_content(c)
                    }
                    None => self.count_json(i),
                })
                .sum(),
            other => self.count_json(other),
        }
    }
}

/// The estimate for unknown models: one token per 4 bytes, rounded up.
pub fn estimate(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// What the proxy will reserve for a call, and how it forwards it.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The API of the call (`None`: not a JSON object, nothing reserved).
    pub kind: Option<Kind>,
    /// Prompt tokens counted before forwarding.
    pub prompt: u64,
    /// Completion tokens the call may produce.
    pub completion: u64,
    /// The request's `model`.
    pub model: String,
    /// The request asked for a stream.
    pub stream: bool,
    /// The proxy added `stream_options.include_usage`: drop the usage-only
    /// chunk before the client sees it.
    pub injected_usage: bool,
    /// The body to forward when the proxy changed it.
    pub body: Option<Bytes>,
}

impl Plan {
    /// Tokens to reserve.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// The counter of this call's model.
    pub fn counter(&self) -> Counter {
        Counter::for_model(&self.model)
    }
}

/// Largest `n` honoured when sizing a reservation.
const MAX_CHOICES: u64 = 128;

/// Plans a call of `kind` from its JSON body. An OpenAI body that is not
/// a JSON object reserves nothing (the upstream will refuse it); an
/// Anthropic one is refused here, with the reason
/// ([`super::messages::plan`]).
pub fn plan(kind: Kind, body: &[u8], default_max_tokens: u32) -> Result<Plan, String> {
    if kind == Kind::Messages {
        return super::messages::plan(body);
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Ok(Plan::default());
    };
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let counter = Counter::for_model(&model);
    let prompt = match kind {
        Kind::Chat => {
            let messages = obj.get("messages").and_then(Value::as_array);
            let mut n = messages.map_or(0, |m| counter.count_messages(m));
            for key in ["tools", "functions"] {
                n += obj.get(key).map_or(0, |v| counter.count_json(v));
            }
            n
        }
        Kind::Completion => obj.get("prompt").map_or(0, |p| counter.count_input(p)),
        Kind::Embedding => obj.get("input").map_or(0, |p| counter.count_input(p)),
        Kind::Responses => {
            ["instructions", "tools"]
                .iter()
                .map(|k| obj.get(*k).map_or(0, |v| counter.count_json(v)))
                .sum::<u64>()
                + obj.get("input").map_or(0, |i| counter.count_items(i))
        }
        // Never here: planned by `messages::plan`.
        Kind::Messages => 0,
    };
    let completion = match kind {
        Kind::Embedding => 0,
        Kind::Responses => obj
            .get("max_output_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(u64::from(default_max_tokens)),
        _ => {
            let max = ["max_completion_tokens", "max_tokens"]
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_u64))
                .unwrap_or(u64::from(default_max_tokens));
            let n = obj
                .get("n")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, MAX_CHOICES);
            max.saturating_mul(n)
        }
    };
    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
    let mut injected_usage = false;
    let mut new_body = None;
    // Responses streams always end with their usage.
    if stream && matches!(kind, Kind::Chat | Kind::Completion) {
        let asked = obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        if !asked {
            let options = obj
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Default::default()));
            if !options.is_object() {
                *options = Value::Object(Default::default());
            }
            options
                .as_object_mut()
                .expect("just made an object")
                .insert("include_usage".into(), Value::Bool(true));
            injected_usage = true;
            new_body = serde_json::to_vec(&obj).ok().map(Bytes::from);
        }
    }
    Ok(Plan {
        kind: Some(kind),
        prompt,
        completion,
        model,
        stream,
        injected_usage,
        body: new_body,
    })
}

/// Builds the tokenizers once, off the request path.
pub fn warm_up() {
    std::thread::spawn(|| {
        let _ = tiktoken_rs::o200k_base_singleton();
        let _ = tiktoken_rs::cl100k_base_singleton();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn routes() {
        use actix_web::http::Method;
        let post = |p: &str| route(&Method::POST, p);
        assert_eq!(post("/v1/chat/completions"), Route::Tokens(Kind::Chat));
        assert_eq!(post("/v1/completions"), Route::Tokens(Kind::Completion));
        assert_eq!(
            post("/openai/v1/embeddings/"),
            Route::Tokens(Kind::Embedding)
        );
        assert_eq!(post("/v1/responses"), Route::Tokens(Kind::Responses));
        assert_eq!(post("/v1/messages"), Route::Tokens(Kind::Messages));
        assert_eq!(post("/v1/messages/count_tokens"), Route::Free);
        // OpenAI's Assistants messages are not Anthropic's.
        assert_eq!(post("/v1/threads/t1/messages"), Route::Request);
        assert_eq!(post("/v1/responses/resp_1/cancel"), Route::Request);
        assert_eq!(route(&Method::GET, "/v1/chat/completions"), Route::Request);
        assert_eq!(
            route(&Method::GET, "/v1/messages/count_tokens"),
            Route::Request
        );
        assert_eq!(post("/v1/models"), Route::Request);
    }

    #[test]
    fn responses_count_instructions_input_and_max_output_tokens() {
        let c = Counter::for_model("gpt-4o");
        let p = plan(
            Kind::Responses,
            &body(json!({"model": "gpt-4o", "instructions": "hello world",
                         "input": [{"role": "user", "content": [
                             {"type": "input_text", "text": "hello world"},
                             {"type": "input_image", "image_url": "data:x"}]},
                           {"type": "function_call_output", "call_id": "c", "output": "42"}],
                         "max_output_tokens": 30, "stream": true})),
            4096,
        )
        .unwrap();
        let item = json!({"type": "function_call_output", "call_id": "c", "output": "42"});
        let prompt = 2 + c.count("user") + 2 + IMAGE_TOKENS + c.count_json(&item);
        assert_eq!((p.prompt, p.completion), (prompt, 30));
        // Its stream always ends with the usage: the body is left alone.
        assert!(p.stream && !p.injected_usage && p.body.is_none());
        let p = plan(
            Kind::Responses,
            &body(json!({"model": "gpt-4o", "input": "hello world"})),
            77,
        )
        .unwrap();
        assert_eq!((p.prompt, p.completion), (2, 77));
    }

    #[test]
    fn known_models_use_the_real_tokenizer() {
        let c = Counter::for_model("gpt-4o");
        assert!(c.is_exact());
        // "hello world" is two tokens in o200k_base and cl100k_base.
        assert_eq!(c.count("hello world"), 2);
        assert_eq!(Counter::for_model("gpt-4").count("hello world"), 2);
        // A chat of one user message "hello world": 3 + 1 (role) + 2 + 3.
        let p = plan(
            Kind::Chat,
            &body(json!({"model": "gpt-4o", "max_tokens": 10,
                         "messages": [{"role": "user", "content": "hello world"}]})),
            4096,
        )
        .unwrap();
        assert_eq!((p.prompt, p.completion, p.total()), (9, 10, 19));
        assert!(!p.stream && p.body.is_none());
    }

    #[test]
    fn kept_role_counts_are_the_tokenizers() {
        for model in [
            "gpt-4o",
            "gpt-4",
            "text-davinci-003",
            "text-davinci-edit-001",
            "gpt2",
        ] {
            let c = Counter::for_model(model);
            let (bpe, _) = c.bpe.expect("a known model");
            for role in ROLES {
                let direct = bpe.encode_ordinary(role).len() as u64;
                // The first count fills the kept counts, the second reads them.
                assert_eq!(
                    (c.count(role), c.count(role)),
                    (direct, direct),
                    "{model} {role}"
                );
            }
        }
    }

    #[test]
    fn unknown_models_are_estimated() {
        let c = Counter::for_model("llama-local");
        assert!(!c.is_exact());
        assert_eq!(c.count("abcdefgh"), 2);
        assert_eq!(c.count("abcdefghi"), 3);
        assert_eq!(c.count(""), 0);
        let p = plan(
            Kind::Embedding,
            &body(json!({"model": "x", "input": ["abcd", "abcde", [1, 2, 3]]})),
            4096,
        )
        .unwrap();
        assert_eq!((p.prompt, p.completion), (1 + 2 + 3, 0));
    }

    #[test]
    fn completion_budget_defaults_and_scales_with_n() {
        let p = plan(
            Kind::Completion,
            &body(json!({"model": "m", "prompt": "abcd"})),
            50,
        )
        .unwrap();
        assert_eq!((p.prompt, p.completion), (1, 50));
        let p = plan(
            Kind::Chat,
            &body(
                json!({"model": "m", "messages": [], "max_completion_tokens": 7,
                         "max_tokens": 99, "n": 3}),
            ),
            50,
        )
        .unwrap();
        assert_eq!((p.prompt, p.completion), (3, 21));
    }

    #[test]
    fn streams_get_usage_added_once() {
        let p = plan(
            Kind::Chat,
            &body(json!({"model": "m", "messages": [], "stream": true,
                         "stream_options": {"other": 1}})),
            5,
        )
        .unwrap();
        assert!(p.stream && p.injected_usage);
        let sent: Value = serde_json::from_slice(p.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            sent["stream_options"],
            json!({"other": 1, "include_usage": true})
        );
        let p = plan(
            Kind::Chat,
            &body(json!({"model": "m", "messages": [], "stream": true,
                         "stream_options": {"include_usage": true}})),
            5,
        )
        .unwrap();
        assert!(p.stream && !p.injected_usage && p.body.is_none());
    }

    #[test]
    fn garbage_reserves_nothing() {
        for b in [&b"not json"[..], b"[1,2]", b"", b"{\"messages\": 5}"] {
            let p = plan(Kind::Chat, b, 100).unwrap();
            assert!(p.total() <= 103, "{p:?}");
        }
        assert_eq!(plan(Kind::Chat, b"nope", 100).unwrap().total(), 0);
    }

    proptest::proptest! {
        /// No body makes planning panic.
        #[test]
        fn any_body_plans_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            for kind in [Kind::Chat, Kind::Completion, Kind::Embedding, Kind::Responses, Kind::Messages] {
                let _ = plan(kind, &bytes, 16);
            }
        }

        #[test]
        fn any_text_counts_without_panic(text in ".{0,200}", n in 0u64..1000) {
            let body = body(json!({"model": "gpt-4o", "max_tokens": n, "n": 2,
                                   "messages": [{"role": "user", "content": text.clone(), "name": "x"}]}));
            let p = plan(Kind::Chat, &body, 16)
        .unwrap();
            proptest::prop_assert_eq!(p.completion, 2 * n);
            // Priming 3 + message 3 + role 1 + name "x" 1 + 1, whatever the text.
            let overhead = 3 + 3 + 1 + 1 + 1;
            proptest::prop_assert!(p.prompt >= overhead);
            proptest::prop_assert!(Counter::for_model("unknown").count(&text) == estimate(&text));
        }
    }
}
