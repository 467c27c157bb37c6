//! `docs/openapi.json` against a real node: every documented operation, sent to the
//! listener the document names, answers one of its documented statuses (never 404 /
//! 405); operations that need the admin token answer 401 without it; undocumented
//! methods on documented paths answer 405 and undocumented paths 404. (The unit test
//! `openapi_documents_exactly_the_served_routes` compares the document with the
//! route tables the listeners are built from.)

use llmtrace_integration::http::Client;
use llmtrace_integration::node::Node;
use serde_json::Value;

const TOKEN: &str = "openapi-test-token-0123456789";

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("read docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

fn body_for(operation: &str) -> &'static [u8] {
    match operation {
        "check" => br#"{"tenant_id":"openapi"}"#,
        "checkBatch" => br#"{"checks":[{"tenant_id":"openapi"}]}"#,
        "putLimits" => br#"{"requests_per_second":5,"burst_size":10}"#,
        "putKeyOverride" => br#"{"rate":5,"burst":10}"#,
        "putProxyKey" => br#"{"team":"openapi"}"#,
        "adjust" => br#"{"limit":"requests","key":"openapi","delta":-1}"#,
        "release" => br#"{"lease_id":"requests:00000000000000ff:openapi"}"#,
        _ => b"",
    }
}

fn send(client: &Client, method: &str, path: &str, body: &[u8]) -> u16 {
    match method {
        "GET" => client.get(path).status,
        "POST" => client.post_raw(path, Some("application/json"), body).status,
        "PUT" => {
            let v: Value = serde_json::from_slice(body).expect("PUT bodies are JSON");
            client.put_json(path, &v).status
        }
        _ => client.request(method, path).status,
    }
}

#[test]
fn every_documented_operation_is_served_as_documented() {
    let node = Node::builder().admin_token(TOKEN).start();
    node.wait_ready();
    let doc = doc();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for listener in item["x-listeners"].as_array().expect("x-listeners") {
            for (method, op) in item.as_object().unwrap() {
                if !["get", "put", "post", "delete"].contains(&method.as_str()) {
                    continue;
                }
                ops.push((
                    listener.as_str().unwrap().to_string(),
                    method.to_uppercase(),
                    path.clone(),
                    op.clone(),
                ));
            }
        }
    }
    // The drain last: it takes the node out of the ring.
    ops.sort_by_key(|(_, _, _, op)| op["operationId"] == "drain");
    assert!(ops.len() >= 13, "{} operations documented", ops.len());
    for (listener, method, path, op) in &ops {
        let client = match listener.as_str() {
            "public" => node.public().clone(),
            "admin" => node.admin().clone(),
            other => panic!("unknown listener {other}"),
        };
        let url = path
            .replace("{tenant}", "openapi")
            .replace("{limit}", "requests")
            .replace("{key}", "openapi")
            .replace("{key_id}", "openapi");
        let op_id = op["operationId"].as_str().expect("operationId");
        let needs_token = op["security"].as_array().is_some_and(|s| !s.is_empty());
        if needs_token {
            let status = send(
                &client.clone().without_bearer(),
                method,
                &url,
                body_for(op_id),
            );
            assert_eq!(status, 401, "{method} {url} without the token");
        }
        let status = send(&client, method, &url, body_for(op_id));
        assert!(
            status != 404 && status != 405,
            "{listener} {method} {url}: {status}"
        );
        assert!(
            op["responses"].get(status.to_string()).is_some(),
            "{listener} {method} {url}: status {status} is not documented"
        );
        for other in ["GET", "PUT", "POST", "DELETE"] {
            let documented = doc["paths"][path.as_str()]
                .get(other.to_lowercase())
                .is_some();
            if !documented && other != "PUT" && !(other == "POST" && op_id == "drain") {
                let status = send(&client, other, &url, b"{}");
                assert_eq!(status, 405, "{listener} {other} {url} is not documented");
            }
        }
    }
    for (client, path) in [
        (node.public(), "/admin/cluster"),
        (node.public(), "/metrics"),
        (node.admin(), "/v1/check"),
        (node.admin(), "/admin"),
        (node.admin(), "/admin/tenants"),
    ] {
        assert_eq!(
            client.get(path).status,
            404,
            "{path} is not documented for this listener"
        );
    }
}
