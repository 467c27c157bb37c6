//! The runtime part of the proxy's key table: `GET /admin/proxy/keys`,
//! `PUT` and `DELETE /admin/proxy/keys/{key_id}`. An entry gives a key id
//! (the UUID v5 the proxy derives from an API key; raw keys are never
//! sent here) its `team` and `org`, in every node, until deleted; it is
//! spread and persisted exactly as runtime limit overrides are (gossip,
//! and Redis when configured), and takes precedence over the file's
//! `[proxy.keys."<key id>"]`.

use actix_web::{web, HttpResponse};
use llmtrace_cluster_config::proxy_rules::{key_table_limit, KeyInfo};
use serde_json::{json, Value};

use super::admin::tenant_of;
use super::admin_limits::apply;
use super::error::ApiError;
use super::input::read_body;
use super::strict_json;
use super::NodeContext;

const FIELDS: [&str; 2] = ["team", "org"];

/// Parses `{"team"?, "org"?}` (at least one; each a valid id).
pub fn parse_key_info(body: &[u8]) -> Result<KeyInfo, ApiError> {
    let obj = strict_json::object(body, &FIELDS)?;
    let field = |name: &'static str| -> Result<Option<String>, ApiError> {
        match obj.get(name) {
            None => Ok(None),
            Some(_) => strict_json::required_str(&obj, name, name).map(|s| Some(s.to_string())),
        }
    };
    let info = KeyInfo {
        team: field("team")?,
        org: field("org")?,
    };
    if info == KeyInfo::default() {
        return Err(ApiError::field(
            "team",
            "give `team`, `org` or both (DELETE removes an entry)",
        ));
    }
    info.check()
        .map_err(|(field, why)| ApiError::field(field, format!("`{field}` {why}")))?;
    Ok(info)
}

fn entry_json(key_id: &str, info: &KeyInfo) -> Value {
    json!({"key_id": key_id, "team": info.team, "org": info.org})
}

/// `GET /admin/proxy/keys`: the runtime entries in force on this node.
pub async fn list(ctx: web::Data<NodeContext>) -> HttpResponse {
    let runtime = &ctx.router.local().limits().runtime;
    let keys: Vec<Value> = runtime
        .key_entries()
        .iter()
        .map(|(id, info)| entry_json(id, info))
        .collect();
    HttpResponse::Ok().json(json!({ "keys": keys }))
}

/// `PUT /admin/proxy/keys/{key_id}` `{"team"?, "org"?}`.
pub async fn put(
    ctx: web::Data<NodeContext>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key_id = tenant_of(path)?;
    let body = read_body(payload).await?;
    let info = parse_key_info(&body)?;
    let (entry, _) = apply(&ctx, &key_id, key_table_limit(), None, Some(info.clone())).await?;
    let mut body = entry_json(&key_id, &info);
    body["version"] = json!(entry.version);
    body["persisted"] = json!(ctx.admin.store.is_some());
    Ok(HttpResponse::Ok().json(body))
}

/// `DELETE /admin/proxy/keys/{key_id}`: back to the file's entry (if any).
/// Idempotent: `deleted` says whether a runtime entry existed.
pub async fn delete(
    ctx: web::Data<NodeContext>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key_id = tenant_of(path)?;
    let (entry, before) = apply(&ctx, &key_id, key_table_limit(), None, None).await?;
    Ok(HttpResponse::Ok().json(json!({
        "key_id": key_id,
        "deleted": before.is_some_and(|b| b.key.is_some()),
        "version": entry.version,
        "persisted": ctx.admin.store.is_some(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> String {
        let e = parse_key_info(body.as_bytes()).unwrap_err();
        e.field.map(|f| f.to_string()).unwrap_or_default()
    }

    #[test]
    fn key_info_is_validated_naming_the_field() {
        let info = parse_key_info(br#"{"team": "search"}"#).unwrap();
        assert_eq!(info.team.as_deref(), Some("search"));
        assert_eq!(info.org, None);
        assert_eq!(field("{}"), "team");
        assert_eq!(field(r#"{"org": "a b"}"#), "org");
        assert_eq!(field(r#"{"org": 5}"#), "org");
        assert_eq!(field(r#"{"who": "x"}"#), "who");
    }
}
