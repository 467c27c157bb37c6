//! The stub's Anthropic Messages API: `POST /v1/messages` (a message, or
//! its server-sent events when `"stream": true`: `message_start` with the
//! input usage, text deltas, `message_delta` with the output tokens) and
//! `POST /v1/messages/count_tokens`; errors in Anthropic's shape.

use std::io::Write;

use serde_json::{json, Value};

use super::{cache_of, chunks_of, send_events, send_json, usage_of, Request};

/// `status` with Anthropic's error body.
pub(super) fn error(out: &mut impl Write, status: u16) -> std::io::Result<()> {
    send_json(
        out,
        status,
        &json!({"type": "error", "error": {"type": "api_error", "message": "stub error"}}),
    )
}

pub(super) fn count_tokens(out: &mut impl Write, req: &Request) -> std::io::Result<()> {
    send_json(out, 200, &json!({"input_tokens": usage_of(req).0}))
}

pub(super) fn messages(out: &mut impl Write, req: &Request, body: &Value) -> std::io::Result<()> {
    let model = body["model"].as_str().unwrap_or("");
    let (p, c) = usage_of(req);
    let (read, written) = cache_of(req);
    let usage = |output: u64| {
        json!({"input_tokens": p, "output_tokens": output,
               "cache_read_input_tokens": read, "cache_creation_input_tokens": written})
    };
    let message = |content: Value, stop: Value, output: u64| {
        json!({"id": "msg_stub", "type": "message", "role": "assistant", "model": model,
               "content": content, "stop_reason": stop, "stop_sequence": null,
               "usage": usage(output)})
    };
    if body["stream"] != json!(true) {
        let text = json!([{"type": "text", "text": "Hello from stub"}]);
        return send_json(out, 200, &message(text, json!("end_turn"), c));
    }
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for i in 0..chunks_of(req) {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": format!("tok{i} ")}}),
        ));
    }
    if !req.headers.contains_key("x-stub-cut") {
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push((
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": c}}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
    }
    send_events(out, &events)
}
