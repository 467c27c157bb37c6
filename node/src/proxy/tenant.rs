//! Who a proxied call belongs to. The `X-LLMTrace-Tenant-ID` header when the
//! operator trusts it (`proxy.trust_tenant_header`, only behind a gateway
//! that sets it); otherwise a UUID v5 of the API key (`Authorization:
//! Bearer`, or Anthropic's `x-api-key`), so every key is its own tenant and the key itself is never kept, logged or forwarded anywhere
//! but to the upstream. No key and no trusted header: no tenant (401), never
//! a shared "unknown" tenant.

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use llmtrace_cluster_config::validate_tenant_id;
use uuid::Uuid;

/// The tenant header.
pub const TENANT_HEADER: &str = "x-llmtrace-tenant-id";

/// Anthropic's API key header (read when there is no bearer key).
const API_KEY_HEADER: &str = "x-api-key";

/// Namespace of the UUID v5 derived from an API key (the OID namespace of
/// RFC 9562, fixed so every node derives the same tenant from a key).
const KEY_NAMESPACE: Uuid = Uuid::NAMESPACE_OID;

/// Why no tenant could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantError {
    /// Neither an API key nor a trusted tenant header.
    Missing,
    /// A trusted tenant header that is not a valid tenant id.
    BadHeader(String),
}

/// The tenant of a request.
pub fn resolve(headers: &HeaderMap, trust_header: bool) -> Result<String, TenantError> {
    if trust_header {
        if let Some(v) = headers.get(TENANT_HEADER) {
            let id = v
                .to_str()
                .map_err(|_| TenantError::BadHeader("not visible ASCII".into()))?;
            validate_tenant_id(id).map_err(|e| TenantError::BadHeader(e.to_string()))?;
            return Ok(id.to_string());
        }
    }
    let key = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or_else(|| {
            let key = headers.get(API_KEY_HEADER)?.to_str().ok()?.trim();
            (!key.is_empty()).then_some(key)
        })
        .ok_or(TenantError::Missing)?;
    Ok(tenant_of_key(key))
}

/// The key of an `Authorization: Bearer <key>` value (scheme
/// case-insensitive); `None` when absent or empty.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// The tenant id of an API key: its UUID v5.
pub fn tenant_of_key(key: &str) -> String {
    Uuid::new_v5(&KEY_NAMESPACE, key.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::header_map as headers;

    #[test]
    fn key_derived_tenant_is_a_stable_v5_uuid_without_the_key() {
        let t = resolve(&headers(&[("authorization", "Bearer sk-abc")]), false).unwrap();
        let u = Uuid::parse_str(&t).unwrap();
        assert_eq!(u.get_version_num(), 5);
        assert!(!t.contains("sk-abc"));
        assert_eq!(t, tenant_of_key("sk-abc"));
        assert_ne!(t, tenant_of_key("sk-abd"));
        // Scheme is case-insensitive; surrounding blanks are ignored.
        assert_eq!(
            resolve(&headers(&[("authorization", "bearer  sk-abc ")]), false).unwrap(),
            t
        );
    }

    #[test]
    fn anthropic_key_header_is_the_same_tenant() {
        let t = resolve(&headers(&[("x-api-key", " sk-abc ")]), false).unwrap();
        assert_eq!(t, tenant_of_key("sk-abc"));
        // The bearer key wins when both are sent.
        let h = headers(&[("x-api-key", "sk-x"), ("authorization", "Bearer sk-abc")]);
        assert_eq!(resolve(&h, false).unwrap(), t);
        assert_eq!(
            resolve(&headers(&[("x-api-key", "  ")]), false),
            Err(TenantError::Missing)
        );
    }

    #[test]
    fn header_only_when_trusted() {
        let h = headers(&[("authorization", "Bearer sk-abc"), (TENANT_HEADER, "acme")]);
        assert_eq!(resolve(&h, true).unwrap(), "acme");
        assert_eq!(resolve(&h, false).unwrap(), tenant_of_key("sk-abc"));
        // An untrusted header alone is no identity.
        let h = headers(&[(TENANT_HEADER, "acme")]);
        assert_eq!(resolve(&h, false), Err(TenantError::Missing));
        assert_eq!(resolve(&h, true).unwrap(), "acme");
    }

    #[test]
    fn missing_or_bad_identity_is_refused() {
        assert_eq!(resolve(&headers(&[]), true), Err(TenantError::Missing));
        for v in ["Basic abc", "Bearer", "Bearer   ", "sk-abc"] {
            assert_eq!(
                resolve(&headers(&[("authorization", v)]), false),
                Err(TenantError::Missing),
                "{v}"
            );
        }
        assert!(matches!(
            resolve(&headers(&[(TENANT_HEADER, "has space")]), true),
            Err(TenantError::BadHeader(_))
        ));
    }
}
