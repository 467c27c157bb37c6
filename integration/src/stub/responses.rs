//! The stub's OpenAI Responses API: `POST /v1/responses`, a response, or
//! its server-sent events when `"stream": true` (`response.created`, text
//! deltas, `response.completed` carrying the usage).

use std::io::Write;

use serde_json::{json, Value};

use super::{cache_of, chunks_of, send_events, send_json, usage_of, Request};

pub(super) fn create(out: &mut impl Write, req: &Request, body: &Value) -> std::io::Result<()> {
    let model = body["model"].as_str().unwrap_or("");
    let (p, c) = usage_of(req);
    let (cached, _) = cache_of(req);
    let response = |status: &str, text: &str, usage: Value| {
        json!({"id": "resp_stub", "object": "response", "created_at": 1, "status": status,
               "model": model, "parallel_tool_calls": true, "tool_choice": "auto",
               "tools": [], "output": [{"type": "message", "id": "msg_stub",
                   "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}],
               "usage": usage})
    };
    let usage = json!({"input_tokens": p + cached,
                       "input_tokens_details": {"cached_tokens": cached},
                       "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": p + cached + c});
    if body["stream"] != json!(true) {
        return send_json(out, 200, &response("completed", "Hello from stub", usage));
    }
    let mut events = vec![(
        "response.created",
        json!({"type": "response.created", "sequence_number": 0,
               "response": response("in_progress", "", Value::Null)}),
    )];
    let mut text = String::new();
    for i in 0..chunks_of(req) {
        let delta = format!("tok{i} ");
        text.push_str(&delta);
        events.push((
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": i + 1,
                   "item_id": "msg_stub", "output_index": 0, "content_index": 0,
                   "delta": delta}),
        ));
    }
    events.push((
        "response.completed",
        json!({"type": "response.completed", "sequence_number": 99,
               "response": response("completed", &text, usage)}),
    ));
    send_events(out, &events)
}
