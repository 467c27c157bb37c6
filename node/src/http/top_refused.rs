//! `GET /admin/limits/top-refused`: who is being throttled. This node's most
//! refused (limit, key) pairs of the last 30 to 60 s merged with every ready
//! peer's (asked over the cluster listener, all at once); a peer that does
//! not answer in time is named and the answer marked `partial`. See
//! `llmtrace_actors::metrics::top_refused` for the sketch and its bounds.

use actix_web::{web, HttpResponse};
use futures_util::future::join_all;
use llmtrace_actors::cluster::rpc::wire::TopRefusedRequest;
use llmtrace_actors::metrics::top_refused::{self, Summary, WINDOW_NS};
use llmtrace_actors::MemberState;
use serde_json::{json, Value};
use tracing::warn;

use super::NodeContext;

/// One node's part of the answer: its summary, or why it has none.
type Part = (String, Result<Summary, String>);

/// This node's summary and every ready peer's.
async fn parts(ctx: &NodeContext) -> Vec<Part> {
    let view = ctx.router.view();
    let now = ctx.router.local().clock().now_ns();
    let own = (view.self_id.to_string(), Ok(ctx.metrics().top_refused(now)));
    let req = TopRefusedRequest {
        origin: view.self_id.to_string(),
    };
    let limits = ctx.router.local().limits();
    let peers = view
        .members
        .iter()
        .filter(|m| m.state == MemberState::Ready && !view.is_self(&m.node_id));
    let calls = peers.map(|m| {
        let call = ctx.admin.client.call(m.cluster_addr, &req);
        async move {
            let answer = match call.await {
                Ok(answer) => answer.summary(limits).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = &answer {
                warn!(peer = %m.node_id, error = %e, "peer did not send its most refused keys");
            }
            (m.node_id.clone(), answer)
        }
    });
    let mut all = vec![own];
    all.extend(join_all(calls).await);
    all
}

/// The JSON answer of the merged parts.
fn body(parts: &[Part]) -> Value {
    let summaries: Vec<&Summary> = parts.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    let merged = top_refused::merge(summaries, top_refused::K);
    let nodes: Vec<Value> = parts
        .iter()
        .map(|(node, s)| match s {
            Ok(s) => json!({ "node": node, "answered": true, "total": s.total }),
            Err(e) => json!({ "node": node, "answered": false, "error": e }),
        })
        .collect();
    let keys: Vec<Value> = merged
        .entries
        .iter()
        .map(|e| {
            json!({
                "limit": e.limit.as_str(),
                "key": &*e.key,
                "count": e.count,
                "error": e.error,
            })
        })
        .collect();
    json!({
        "window_s": [WINDOW_NS / 1_000_000_000, 2 * WINDOW_NS / 1_000_000_000],
        "k": top_refused::K,
        "partial": parts.iter().any(|(_, s)| s.is_err()),
        "nodes": nodes,
        "total": merged.total,
        "floor": merged.floor,
        "keys": keys,
    })
}

/// `GET /admin/limits/top-refused`.
pub async fn list(ctx: web::Data<NodeContext>) -> HttpResponse {
    HttpResponse::Ok().json(body(&parts(&ctx).await))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmtrace_actors::metrics::top_refused::SpaceSaving;
    use llmtrace_cluster_config::Limit;

    #[test]
    fn merges_the_answers_and_marks_a_silent_peer() {
        let mut a = SpaceSaving::default();
        a.observe(Limit::REQUESTS, "k1", 3);
        let mut b = SpaceSaving::default();
        b.observe(Limit::REQUESTS, "k2", 5);
        b.observe(Limit::REQUESTS, "k1", 1);
        let parts = vec![
            ("n1".to_string(), Ok(a.summary())),
            ("n2".to_string(), Ok(b.summary())),
            ("n3".to_string(), Err("timeout".to_string())),
        ];
        let v = body(&parts);
        assert_eq!(v["partial"], true);
        assert_eq!(v["total"], 9);
        assert_eq!(
            v["keys"],
            json!([
                {"limit": "requests", "key": "k2", "count": 5, "error": 0},
                {"limit": "requests", "key": "k1", "count": 4, "error": 0},
            ])
        );
        assert_eq!(
            v["nodes"][2],
            json!({"node": "n3", "answered": false, "error": "timeout"})
        );
        assert_eq!(body(&parts[..2])["partial"], false);
    }
}
