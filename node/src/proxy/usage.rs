//! What a call consumed, in one shape whatever the API ([`Usage`]), read
//! from each API's `usage` objects and streamed events:
//! - OpenAI Chat / Completions / Embeddings: `usage.prompt_tokens`
//!   (`prompt_tokens_details.cached_tokens` of them cached),
//!   `completion_tokens`; a stream's final chunk carries the same `usage`.
//! - OpenAI Responses: `usage.input_tokens`
//!   (`input_tokens_details.cached_tokens` of them cached), `output_tokens`;
//!   a stream's `response.completed` (or `.incomplete`, `.failed`) event
//!   carries it in `response.usage`.
//! - Anthropic Messages: `usage.input_tokens` (uncached),
//!   `cache_read_input_tokens`, `cache_creation_input_tokens`,
//!   `output_tokens`; a stream's `message_start` carries it in
//!   `message.usage`, its `message_delta` the final (cumulative) counts.

use llmtrace_cluster_config::proxy_prices::TokenCounts;
use serde::Deserialize;
use serde_json::Value;

use super::tokens::Kind;

/// Tokens a call consumed, split the way prices are (each part counted
/// once: `input` excludes the cached and cache-written tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens at the full price.
    pub input: u64,
    /// Input tokens read from the prompt cache.
    pub cached_input: u64,
    /// Input tokens written to the prompt cache (Anthropic).
    pub cache_creation_input: u64,
    /// Output tokens (reasoning included).
    pub output: u64,
}

impl Usage {
    /// The counts a price applies to: cache reads at the cached price,
    /// every other input token (cache writes included) at the input price.
    pub fn price_counts(&self) -> TokenCounts {
        TokenCounts {
            prompt: self
                .input
                .saturating_add(self.cached_input)
                .saturating_add(self.cache_creation_input),
            cached: self.cached_input,
            output: self.output,
        }
    }

    /// Every token of the call: what the `tokens` limit is charged.
    pub fn total(&self) -> u64 {
        self.input
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_creation_input)
            .saturating_add(self.output)
    }

    /// The usage object of an answer of `kind`; `None` when it carries no
    /// count at all (missing, null, garbage).
    pub fn parse(kind: Kind, usage: &Value) -> Option<Usage> {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        match kind {
            Kind::Chat | Kind::Completion | Kind::Embedding => Self::openai(
                usage,
                [
                    "prompt_tokens",
                    "completion_tokens",
                    "prompt_tokens_details",
                ],
            ),
            Kind::Responses => Self::openai(
                usage,
                ["input_tokens", "output_tokens", "input_tokens_details"],
            ),
            Kind::Messages => {
                let parts = [
                    n("input_tokens"),
                    n("cache_read_input_tokens"),
                    n("cache_creation_input_tokens"),
                    n("output_tokens"),
                ];
                parts.iter().any(Option::is_some).then(|| Usage {
                    input: parts[0].unwrap_or(0),
                    cached_input: parts[1].unwrap_or(0),
                    cache_creation_input: parts[2].unwrap_or(0),
                    output: parts[3].unwrap_or(0),
                })
            }
        }
    }

    /// OpenAI's counts, named `[input, output, input details]`: the cached
    /// tokens (`cached_tokens` of the details) are part of the input. Only
    /// a `total_tokens`: all of it counted as input.
    fn openai(usage: &Value, [input, output, details]: [&str; 3]) -> Option<Usage> {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        let (i, o) = (n(input), n(output));
        if i.is_none() && o.is_none() {
            return n("total_tokens").map(|t| Usage {
                input: t,
                ..Usage::default()
            });
        }
        let i = i.unwrap_or(0);
        let cached = usage
            .get(details)
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(i);
        Some(Usage {
            input: i - cached,
            cached_input: cached,
            cache_creation_input: 0,
            output: o.unwrap_or(0),
        })
    }

    /// Anthropic's `message_delta` counts over the `message_start` ones:
    /// the fields it gives are cumulative and replace the earlier ones.
    fn update(&mut self, delta: &Value) {
        let set = |to: &mut u64, k: &str| {
            if let Some(v) = delta.get(k).and_then(Value::as_u64) {
                *to = v;
            }
        };
        set(&mut self.input, "input_tokens");
        set(&mut self.cached_input, "cache_read_input_tokens");
        set(
            &mut self.cache_creation_input,
            "cache_creation_input_tokens",
        );
        set(&mut self.output, "output_tokens");
    }
}

/// What one streamed event (the JSON of its `data:` line) says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The usage is final: nothing more will be counted.
    pub final_usage: bool,
    /// The event carries only usage (OpenAI's usage chunk, no choices).
    pub usage_only: bool,
    /// Generated text, for a count when no final usage arrives.
    pub text: Option<String>,
}

/// The usage read from a stream so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    pub usage: Option<Usage>,
    /// `usage` is the final count (else only the input is known, from
    /// Anthropic's `message_start`).
    pub complete: bool,
}

#[derive(Deserialize)]
struct Event {
    /// Anthropic and Responses events.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Value>,
    /// Anthropic's `message_start`: `message.usage`.
    #[serde(default)]
    message: Option<Holder>,
    /// Responses' terminal events: `response.usage`.
    #[serde(default)]
    response: Option<Holder>,
    /// Anthropic's `content_block_delta` (an object), Responses'
    /// `response.output_text.delta` (a string).
    #[serde(default)]
    delta: Option<Value>,
}

#[derive(Deserialize)]
struct Holder {
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<ChoiceDelta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceDelta {
    #[serde(default)]
    content: Option<String>,
}

impl Streamed {
    /// Reads one event's JSON; garbage says nothing.
    pub fn event(&mut self, kind: Kind, data: &[u8]) -> Seen {
        let Ok(ev) = serde_json::from_slice::<Event>(data) else {
            return Seen::default();
        };
        let mut seen = Seen::default();
        match kind {
            Kind::Chat | Kind::Completion | Kind::Embedding => {
                if let Some(u) = ev.usage.as_ref().and_then(|u| Usage::parse(kind, u)) {
                    self.settle(u);
                    seen.final_usage = true;
                    seen.usage_only = ev.choices.is_empty();
                }
                let text: String = ev
                    .choices
                    .into_iter()
                    .filter_map(|c| c.delta.and_then(|d| d.content).or(c.text))
                    .collect();
                seen.text = (!text.is_empty()).then_some(text);
            }
            Kind::Responses => match ev.kind.as_deref() {
                Some("response.completed" | "response.incomplete" | "response.failed") => {
                    let usage = ev.response.and_then(|r| r.usage);
                    if let Some(u) = usage.as_ref().and_then(|u| Usage::parse(kind, u)) {
                        self.settle(u);
                        seen.final_usage = true;
                    }
                }
                Some("response.output_text.delta" | "response.refusal.delta") => {
                    seen.text = ev.delta.and_then(|d| d.as_str().map(str::to_string));
                }
                _ => {}
            },
            Kind::Messages => match ev.kind.as_deref() {
                Some("message_start") => {
                    let usage = ev.message.and_then(|m| m.usage);
                    if let Some(u) = usage.as_ref().and_then(|u| Usage::parse(kind, u)) {
                        self.usage = Some(u);
                    }
                }
                Some("message_delta") => {
                    if let Some(delta) = ev.usage.as_ref().filter(|u| u.is_object()) {
                        let mut u = self.usage.unwrap_or_default();
                        u.update(delta);
                        self.settle(u);
                        seen.final_usage = true;
                    }
                }
                Some("content_block_delta") => {
                    let d = ev.delta.unwrap_or_default();
                    seen.text = ["text", "partial_json", "thinking"]
                        .iter()
                        .find_map(|k| d.get(*k).and_then(Value::as_str))
                        .map(str::to_string);
                }
                _ => {}
            },
        }
        seen
    }

    /// The final usage.
    pub fn settle(&mut self, u: Usage) {
        self.usage = Some(u);
        self.complete = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(input: u64, cached_input: u64, cache_creation_input: u64, output: u64) -> Usage {
        Usage {
            input,
            cached_input,
            cache_creation_input,
            output,
        }
    }

    #[test]
    fn openai_usage() {
        let u = Usage::parse(
            Kind::Chat,
            &json!({"prompt_tokens": 40, "completion_tokens": 60, "total_tokens": 100,
                    "prompt_tokens_details": {"cached_tokens": 30}}),
        )
        .unwrap();
        assert_eq!(u, usage(10, 30, 0, 60));
        assert_eq!(u.total(), 100);
        // Embeddings: no output.
        let u = Usage::parse(
            Kind::Embedding,
            &json!({"prompt_tokens": 8, "total_tokens": 8}),
        );
        assert_eq!(u.map(|u| (u.input, u.output)), Some((8, 0)));
        // Only a total; nothing; garbage; a cache larger than the input.
        let total = |v: Value| Usage::parse(Kind::Chat, &v).map(|u| u.total());
        assert_eq!(total(json!({"total_tokens": 9})), Some(9));
        assert_eq!(total(json!({"prompt_tokens": 4})), Some(4));
        assert_eq!(total(json!({})), None);
        assert_eq!(total(json!("lots")), None);
        assert_eq!(
            total(json!({"prompt_tokens": "4", "completion_tokens": -1})),
            None
        );
        assert_eq!(
            total(json!({"prompt_tokens": 4, "prompt_tokens_details": {"cached_tokens": 9}})),
            Some(4)
        );
    }

    #[test]
    fn responses_usage() {
        let u = Usage::parse(
            Kind::Responses,
            &json!({"input_tokens": 50, "output_tokens": 7, "total_tokens": 57,
                    "input_tokens_details": {"cached_tokens": 20},
                    "output_tokens_details": {"reasoning_tokens": 3}}),
        )
        .unwrap();
        assert_eq!(
            (u.input, u.cached_input, u.output, u.total()),
            (30, 20, 7, 57)
        );
        assert_eq!(
            Usage::parse(Kind::Responses, &json!({"input_tokens": 5})).map(|u| u.total()),
            Some(5)
        );
        assert_eq!(Usage::parse(Kind::Responses, &json!(null)), None);
    }

    #[test]
    fn anthropic_usage() {
        let u = Usage::parse(
            Kind::Messages,
            &json!({"input_tokens": 12, "output_tokens": 30,
                    "cache_creation_input_tokens": 100, "cache_read_input_tokens": 200}),
        )
        .unwrap();
        assert_eq!(u, usage(12, 200, 100, 30));
        assert_eq!(u.total(), 342);
        // Cache fields missing or null (older answers).
        let u = Usage::parse(
            Kind::Messages,
            &json!({"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": null}),
        );
        assert_eq!(u.map(|u| u.total()), Some(7));
        assert_eq!(Usage::parse(Kind::Messages, &json!({"output": 4})), None);
        assert_eq!(Usage::parse(Kind::Messages, &json!([1, 2])), None);
    }

    fn events(kind: Kind, datas: &[Value]) -> (Streamed, String) {
        let mut s = Streamed::default();
        let mut text = String::new();
        for d in datas {
            let seen = s.event(kind, d.to_string().as_bytes());
            text.push_str(seen.text.as_deref().unwrap_or(""));
        }
        (s, text)
    }

    #[test]
    fn anthropic_stream_usage_is_start_then_delta() {
        let start = json!({"type": "message_start", "message": {"id": "m", "usage":
            {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5,
             "cache_creation_input_tokens": 0}}});
        let text = json!({"type": "content_block_delta", "index": 0,
                          "delta": {"type": "text_delta", "text": "Hi there"}});
        let delta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 15}});
        let (s, t) = events(Kind::Messages, &[start.clone(), text.clone(), delta]);
        assert!(s.complete);
        assert_eq!(
            s.usage.map(|u| (u.input, u.cached_input, u.output)),
            Some((25, 5, 15))
        );
        assert_eq!(t, "Hi there");
        // Cut before message_delta: the input is known, the output is not.
        let (s, t) = events(Kind::Messages, &[start, text]);
        assert!(!s.complete);
        assert_eq!(s.usage.map(|u| u.input + u.cached_input), Some(30));
        assert_eq!(t, "Hi there");
        // A delta without a start still counts; one without usage does not.
        let (s, _) = events(
            Kind::Messages,
            &[json!({"type": "message_delta", "usage": {"output_tokens": 4, "input_tokens": 2}})],
        );
        assert_eq!(s.usage.map(|u| u.total()), Some(6));
        let (s, _) = events(
            Kind::Messages,
            &[json!({"type": "message_delta", "usage": 7})],
        );
        assert_eq!(s, Streamed::default());
    }

    #[test]
    fn responses_stream_usage_is_in_the_terminal_event() {
        let (s, t) = events(
            Kind::Responses,
            &[
                json!({"type": "response.created", "response": {"usage": null}}),
                json!({"type": "response.output_text.delta", "delta": "Hel"}),
                json!({"type": "response.output_text.delta", "delta": "lo"}),
                json!({"type": "response.completed", "response": {"usage":
                    {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11}}}),
            ],
        );
        assert!(s.complete);
        assert_eq!(s.usage.map(|u| u.total()), Some(11));
        assert_eq!(t, "Hello");
    }

    #[test]
    fn garbage_events_say_nothing() {
        let mut s = Streamed::default();
        for d in [
            &b"not json"[..],
            b"[1]",
            b"{\"type\": 5}",
            b"{\"type\": \"message_start\", \"message\": 3}",
            b"{\"type\": \"content_block_delta\", \"delta\": [1]}",
            b"{\"choices\": 7}",
        ] {
            for kind in [Kind::Chat, Kind::Responses, Kind::Messages] {
                assert_eq!(
                    s.event(kind, d),
                    Seen::default(),
                    "{}",
                    String::from_utf8_lossy(d)
                );
            }
        }
        assert_eq!(s, Streamed::default());
    }

    #[test]
    fn prices_apply_to_cached_reads_apart() {
        // OpenAI: 100 prompt tokens of which 60 cached, 20 output.
        let u = Usage::parse(
            Kind::Chat,
            &json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                    "prompt_tokens_details": {"cached_tokens": 60}}),
        )
        .unwrap();
        assert_eq!(u.total(), 120);
        let c = u.price_counts();
        assert_eq!((c.prompt, c.cached, c.output), (100, 60, 20));
        // Anthropic: cache writes are input at the input price.
        let c = usage(40, 200, 100, 60).price_counts();
        assert_eq!((c.prompt, c.cached, c.output), (340, 200, 60));
    }
}
