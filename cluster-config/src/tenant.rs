//! Tenant ids: 1 to 128 visible ASCII characters (`!` through `~`).
//!
//! The same rule guards HTTP input, config keys and Redis key names, so a
//! tenant id can never smuggle whitespace, control bytes or a newline into a
//! log line or a Redis key.

use thiserror::Error;

/// Longest accepted tenant id, in bytes.
pub const MAX_TENANT_ID_LEN: usize = 128;

/// Why a tenant id was refused.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum TenantIdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 128 characters")]
    TooLong,
    #[error("must contain only visible ASCII characters (no spaces or control characters)")]
    InvalidChar,
}

/// Checks a tenant id against the rule above.
pub fn validate_tenant_id(id: &str) -> Result<(), TenantIdError> {
    if id.is_empty() {
        return Err(TenantIdError::Empty);
    }
    if id.len() > MAX_TENANT_ID_LEN {
        return Err(TenantIdError::TooLong);
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TenantIdError::InvalidChar);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_visible_ascii() {
        assert_eq!(validate_tenant_id("acme-42_x.y:z"), Ok(()));
        assert_eq!(validate_tenant_id(&"a".repeat(128)), Ok(()));
    }

    #[test]
    fn refuses_bad_ids() {
        assert_eq!(validate_tenant_id(""), Err(TenantIdError::Empty));
        assert_eq!(
            validate_tenant_id(&"a".repeat(129)),
            Err(TenantIdError::TooLong)
        );
        for bad in ["a b", "a\nb", "é", "tab\t", "nul\0"] {
            assert_eq!(validate_tenant_id(bad), Err(TenantIdError::InvalidChar));
        }
    }
}
