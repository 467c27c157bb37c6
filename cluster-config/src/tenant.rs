//! Tenant ids (1 to 128 visible ASCII characters, `!` through `~`) and keys
//! (the string a limit counts under: a tenant, `tenant/model`, a team; 1 to
//! 256 visible ASCII characters). A tenant id is a key.
//!
//! The same rules guard HTTP input, config keys, the wire and Redis key
//! names, so a key can never smuggle whitespace, control bytes or a newline
//! into a log line or a Redis key.

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
    if id.len() > MAX_TENANT_ID_LEN {
        return Err(TenantIdError::TooLong);
    }
    validate_key(id).map_err(|e| match e {
        KeyError::Empty => TenantIdError::Empty,
        KeyError::TooLong => TenantIdError::TooLong,
        KeyError::InvalidChar => TenantIdError::InvalidChar,
    })
}

/// Longest accepted key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Why a key was refused.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum KeyError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 256 characters")]
    TooLong,
    #[error("must contain only visible ASCII characters (no spaces or control characters)")]
    InvalidChar,
}

/// Checks a key against the rule above.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::InvalidChar);
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
            assert_eq!(validate_key(bad), Err(KeyError::InvalidChar));
        }
        assert_eq!(validate_key("acme/gpt-4o"), Ok(()));
        assert_eq!(validate_key(&"k".repeat(256)), Ok(()));
        assert_eq!(validate_key(&"k".repeat(257)), Err(KeyError::TooLong));
        assert_eq!(validate_key(""), Err(KeyError::Empty));
    }
}
