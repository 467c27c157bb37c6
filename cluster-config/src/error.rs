//! The one error type of configuration loading (every variant names the key),
//! and the checks every config block shares: ranges and addresses.

use thiserror::Error;

/// Why a configuration was refused. `key` is the dotted TOML path
/// (`rate_limit.burst_size`), which also identifies the flag and the
/// environment variable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    /// The file is not valid TOML or has a key or type we do not accept.
    #[error("invalid config file {path}: {reason}")]
    Parse { path: String, reason: String },
    /// A value is present but not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// `value` when it lies in `min..=max`; otherwise an error naming `key`.
pub(crate) fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is out of range {min}..={max}"),
        ));
    }
    Ok(value)
}

/// `value` as an `IP:port` address; otherwise an error naming `key`.
pub(crate) fn parse_addr(key: &str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{value}` is not an IP:port address")))
}
