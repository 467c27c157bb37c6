//! Limit names. A [`Limit`] is the name of a `[limits.<name>]` block (or of
//! the seed's blocks: `requests` is `[rate_limit]`, `tokens` is
//! `[token_limit]`), interned once per process: a pointer-sized `Copy`
//! handle whose name and dense id cost nothing to read on the hot path.
//!
//! Only configuration interns names, so the table is bounded by what
//! operators wrote; input from clients and peers is looked up in the
//! configuration ([`crate::RateLimitConfig::limit`]) and never interned.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use thiserror::Error;

/// Longest limit name, in bytes.
pub const MAX_LIMIT_NAME_LEN: usize = 64;

struct LimitName {
    id: u32,
    name: &'static str,
}

static REQUESTS_NAME: LimitName = LimitName {
    id: 0,
    name: "requests",
};
static TOKENS_NAME: LimitName = LimitName {
    id: 1,
    name: "tokens",
};

/// Every name interned so far; the index is the id.
static INTERNED: Mutex<Vec<&'static LimitName>> = Mutex::new(Vec::new());

/// A limit's name, interned. Equal names are the same handle.
#[derive(Clone, Copy)]
pub struct Limit(&'static LimitName);

/// Why a limit name was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("limit names are 1 to 64 characters of a-z, 0-9, `_`, `.` and `-`")]
pub struct LimitNameError;

/// Checks a limit name: `[a-z0-9_.-]{1,64}`.
pub fn validate_limit_name(name: &str) -> Result<(), LimitNameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LIMIT_NAME_LEN
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    ok.then_some(()).ok_or(LimitNameError)
}

impl Limit {
    /// The seed's `[rate_limit]` block: one unit per request.
    pub const REQUESTS: Limit = Limit(&REQUESTS_NAME);
    /// The seed's `[token_limit]` block: LLM tokens of proxied calls.
    pub const TOKENS: Limit = Limit(&TOKENS_NAME);

    /// The limit named `name`, interning it on first use. Configuration
    /// only: the table grows with every distinct valid name.
    pub fn intern(name: &str) -> Result<Limit, LimitNameError> {
        validate_limit_name(name)?;
        let mut table = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        if table.is_empty() {
            table.extend([&REQUESTS_NAME, &TOKENS_NAME]);
        }
        if let Some(found) = table.iter().find(|l| l.name == name) {
            return Ok(Limit(found));
        }
        let interned: &'static LimitName = Box::leak(Box::new(LimitName {
            id: table.len() as u32,
            name: Box::leak(name.to_owned().into_boxed_str()),
        }));
        table.push(interned);
        Ok(Limit(interned))
    }

    /// The limit named `name` if some configuration of this process
    /// interned it (input from peers: never interns).
    pub fn find(name: &str) -> Option<Limit> {
        match name {
            "requests" => Some(Limit::REQUESTS),
            "tokens" => Some(Limit::TOKENS),
            _ => INTERNED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| l.name == name)
                .map(|l| Limit(l)),
        }
    }

    /// How many names were interned so far (ids are below this).
    pub fn count() -> usize {
        INTERNED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(2)
    }

    /// The name used in config, the API, metrics and Redis keys.
    #[inline]
    pub fn as_str(self) -> &'static str {
        self.0.name
    }

    /// A dense id, stable for the life of the process (metrics index).
    #[inline]
    pub fn id(self) -> usize {
        self.0.id as usize
    }
}

impl PartialEq for Limit {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Limit {}

impl Hash for Limit {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state)
    }
}

impl PartialOrd for Limit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Ordered by name (listings and tables read alphabetically).
impl Ord for Limit {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_gives_one_handle_per_name() {
        assert_eq!(Limit::intern("requests"), Ok(Limit::REQUESTS));
        assert_eq!(Limit::intern("tokens"), Ok(Limit::TOKENS));
        let a = Limit::intern("rpm.test").unwrap();
        let b = Limit::intern("rpm.test").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id(), b.id());
        assert!(a.id() >= 2 && a.id() < Limit::count());
        assert_ne!(a, Limit::REQUESTS);
        assert_eq!(a.as_str(), "rpm.test");
        assert_eq!(Limit::find("rpm.test"), Some(a));
        assert_eq!(Limit::find("never.interned"), None);
    }

    #[test]
    fn names_are_checked() {
        for ok in ["rpm", "daily_quota", "a.b-c_9", &"x".repeat(64)] {
            assert_eq!(validate_limit_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "RPM", "a b", "a/b", "é", &"x".repeat(65), "a:b"] {
            assert!(validate_limit_name(bad).is_err(), "{bad:?}");
            assert!(Limit::intern(bad).is_err());
        }
    }
}
