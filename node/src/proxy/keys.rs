//! Who a key belongs to: its team and org, for the `{team}` and `{org}`
//! placeholders of the rules. Taken from the trusted headers
//! `X-LLMTrace-Team` / `X-LLMTrace-Org` when `proxy.trust_tenant_header`
//! is on and they are given, else from the key table by the tenant the
//! proxy derived: its runtime entry (admin API, spread like runtime
//! overrides) or else the file's `[proxy.keys."<key id>"]`. Key ids are
//! UUID v5 of the keys: raw API keys are never stored.

use actix_web::http::header::HeaderMap;
use llmtrace_cluster_config::proxy_rules::KeyInfo;
use llmtrace_cluster_config::{validate_tenant_id, ProxyConfig, RuntimeLimits};

/// The trusted team header.
pub const TEAM_HEADER: &str = "x-llmtrace-team";
/// The trusted org header.
pub const ORG_HEADER: &str = "x-llmtrace-org";

/// The team and org of `tenant`; `Err` names a trusted header whose value
/// is not a valid id.
pub fn resolve(
    config: &ProxyConfig,
    runtime: &RuntimeLimits,
    tenant: &str,
    headers: &HeaderMap,
) -> Result<KeyInfo, String> {
    let runtime = runtime.key_info(tenant);
    let table = runtime.as_ref().or_else(|| config.keys.get(tenant));
    let from = |header: &str, table_value: Option<&String>| -> Result<Option<String>, String> {
        if config.trust_tenant_header {
            if let Some(v) = headers.get(header) {
                let v = v
                    .to_str()
                    .map_err(|_| format!("{header}: not visible ASCII"))?;
                validate_tenant_id(v).map_err(|e| format!("{header}: {e}"))?;
                return Ok(Some(v.to_string()));
            }
        }
        Ok(table_value.cloned())
    };
    Ok(KeyInfo {
        team: from(TEAM_HEADER, table.and_then(|k| k.team.as_ref()))?,
        org: from(ORG_HEADER, table.and_then(|k| k.org.as_ref()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::header_map as headers;
    use llmtrace_cluster_config::{NodeConfig, NodeSettings};

    fn config(trust: bool) -> ProxyConfig {
        let s = NodeSettings::parse(&format!(
            r#"
            [proxy]
            trust_tenant_header = {trust}
            [proxy.keys."k1"]
            team = "search"
            org = "acme"
            "#
        ))
        .unwrap();
        NodeConfig::resolve(s).unwrap().proxy
    }

    #[test]
    fn runtime_then_file_then_trusted_headers() {
        let rt = RuntimeLimits::new();
        let team_header = headers(&[(TEAM_HEADER, "ads")]);
        let k = resolve(&config(false), &rt, "k1", &team_header).unwrap();
        assert_eq!(
            k.team.as_deref(),
            Some("search"),
            "untrusted header ignored"
        );
        let k = resolve(&config(true), &rt, "k1", &team_header).unwrap();
        assert_eq!(k.team.as_deref(), Some("ads"));
        assert_eq!(k.org.as_deref(), Some("acme"));
        let k = resolve(&config(false), &rt, "other", &HeaderMap::new()).unwrap();
        assert_eq!(k, KeyInfo::default());
        let bad = headers(&[(ORG_HEADER, "a b")]);
        assert!(resolve(&config(true), &rt, "k1", &bad)
            .unwrap_err()
            .contains(ORG_HEADER));
        // A runtime entry replaces the file's whole entry.
        let moved = KeyInfo {
            team: Some("ml".into()),
            org: None,
        };
        rt.replace_keys([("k1".to_string(), moved.clone())]);
        let k = resolve(&config(false), &rt, "k1", &HeaderMap::new()).unwrap();
        assert_eq!(k, moved);
    }
}
