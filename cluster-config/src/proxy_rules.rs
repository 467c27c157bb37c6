//! What a proxied call is charged: the `[[proxy.rules]]` (a named limit, a
//! key template, a cost) and the key table `[proxy.keys."<key id>"]` that
//! gives a key its team and org.
//!
//! ```toml
//! [[proxy.rules]]
//! limit = "tpm_model"
//! key = "{key}/{model}"
//! cost = "tokens"
//!
//! [proxy.keys."6f1c…"]        # the UUID v5 the proxy derives from a key
//! team = "search"
//! org = "acme"
//! ```
//!
//! Templates are parsed once here; [`Template::render`] fills them per call.
//! Without rules the proxy charges `requests` and `tokens` per tenant
//! ([`default_rules`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::limit::Limit;
use crate::limits::RateLimitConfig;
use crate::named::LimitKind;
use crate::tenant::{validate_key, validate_tenant_id};

/// What one call costs under a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cost {
    /// One unit per call (a lease under a concurrency limit).
    Requests,
    /// The prompt plus the most output tokens, reconciled from `usage`.
    Tokens,
    /// The same reservation priced in micro-dollars, reconciled from usage.
    UsdMicros,
}

impl Cost {
    pub fn as_str(self) -> &'static str {
        match self {
            Cost::Requests => "requests",
            Cost::Tokens => "tokens",
            Cost::UsdMicros => "usd_micros",
        }
    }

    fn parse(text: &str) -> Option<Cost> {
        [Cost::Requests, Cost::Tokens, Cost::UsdMicros]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// One piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `{key}`: the tenant (trusted header or UUID v5 of the bearer key).
    Key,
    /// `{model}`: the body's `model`.
    Model,
    /// `{team}`: from the key table or the trusted team header.
    Team,
    /// `{org}`: from the key table or the trusted org header.
    Org,
    /// `{header:NAME}`: a request header (name lower-cased).
    Header(String),
}

/// A parsed key template such as `{key}/{model}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(0) if rest.starts_with('}') => {
                    return Err("a `}` without its `{`".into());
                }
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed placeholder in {text:?}"))?;
                    parts.push(placeholder(&rest[1..end])?);
                    rest = &rest[end + 1..];
                }
                Some(i) => {
                    parts.push(Part::Text(rest[..i].to_string()));
                    rest = &rest[i..];
                }
                None => {
                    parts.push(Part::Text(rest.to_string()));
                    rest = "";
                }
            }
        }
        if parts.is_empty() {
            return Err("is empty".into());
        }
        for p in &parts {
            if let Part::Text(t) = p {
                validate_key(t).map_err(|e| format!("text {t:?}: {e}"))?;
            }
        }
        Ok(Template { parts })
    }

    /// The key for one call; `None` when a placeholder has no value (the
    /// rule is skipped) or the key would not be a valid bucket key.
    pub fn render<'a>(&self, value: impl Fn(&Part) -> Option<&'a str>) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                other => out.push_str(value(other).filter(|v| !v.is_empty())?),
            }
        }
        validate_key(&out).ok()?;
        Some(out)
    }

    /// The placeholders used.
    pub fn placeholders(&self) -> impl Iterator<Item = &Part> {
        self.parts.iter().filter(|p| !matches!(p, Part::Text(_)))
    }
}

fn placeholder(name: &str) -> Result<Part, String> {
    Ok(match name {
        "key" => Part::Key,
        "model" => Part::Model,
        "team" => Part::Team,
        "org" => Part::Org,
        _ => match name.strip_prefix("header:") {
            Some(h)
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Part::Header(h.to_ascii_lowercase())
            }
            _ => {
                return Err(format!(
                    "unknown placeholder {{{name}}}; use {{key}}, {{model}}, {{team}}, {{org}} \
                     or {{header:NAME}}"
                ))
            }
        },
    })
}

/// One resolved rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub limit: Limit,
    pub key: Template,
    pub cost: Cost,
}

/// Today's charge when no rule is configured: `requests` and `tokens` of
/// the tenant.
pub fn default_rules() -> Vec<Rule> {
    let key = Template {
        parts: vec![Part::Key],
    };
    vec![
        Rule {
            limit: Limit::REQUESTS,
            key: key.clone(),
            cost: Cost::Requests,
        },
        Rule {
            limit: Limit::TOKENS,
            key,
            cost: Cost::Tokens,
        },
    ]
}

/// One `[[proxy.rules]]` item as the file gives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBlock {
    pub limit: String,
    pub key: String,
    pub cost: Option<String>,
}

impl RuleBlock {
    pub fn new(limit: &str, key: &str, cost: Option<&str>) -> Self {
        RuleBlock {
            limit: limit.into(),
            key: key.into(),
            cost: cost.map(str::to_string),
        }
    }
}

/// `[proxy.keys."<key id>"]` (or a runtime entry): who a key belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

impl KeyInfo {
    /// Checks the team and org names; `Err((field, why))`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, v) in [("team", &self.team), ("org", &self.org)] {
            if let Some(v) = v {
                validate_tenant_id(v).map_err(|e| (field, e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// The name under which runtime key table entries travel with the runtime
/// limit overrides (gossip and Redis); reserved, no `[limits]` block may
/// take it.
pub const KEY_TABLE: &str = "proxy.keys";

/// The limit handle of [`KEY_TABLE`] (interned on first use).
pub fn key_table_limit() -> Limit {
    Limit::intern(KEY_TABLE).expect("a valid limit name")
}

/// Resolves the rules against the configured limits.
pub fn resolve_rules(
    blocks: &[RuleBlock],
    limits: &RateLimitConfig,
) -> Result<Vec<Rule>, ConfigError> {
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let at = |f: &str| format!("proxy.rules[{i}].{f}");
            let limit = limits.limit(&b.limit).ok_or_else(|| {
                ConfigError::invalid(at("limit"), format!("no limit named `{}`", b.limit))
            })?;
            let key = Template::parse(&b.key)
                .map_err(|e| ConfigError::invalid(at("key"), format!("{:?} {e}", b.key)))?;
            let cost = match b.cost.as_deref() {
                None => Cost::Requests,
                Some(c) => Cost::parse(c).ok_or_else(|| {
                    ConfigError::invalid(
                        at("cost"),
                        format!("unknown cost {c:?}; use requests, tokens or usd_micros"),
                    )
                })?,
            };
            if limits.kind(limit) == LimitKind::Concurrency && cost != Cost::Requests {
                return Err(ConfigError::invalid(
                    at("cost"),
                    format!("`{limit}` is a concurrency limit: a call takes one lease"),
                ));
            }
            Ok(Rule { limit, key, cost })
        })
        .collect()
}

/// Validates the key table (ids, team and org names).
pub fn resolve_keys(
    keys: &BTreeMap<String, KeyInfo>,
) -> Result<BTreeMap<String, KeyInfo>, ConfigError> {
    // Interned here (configuration), so peers' entries are recognised.
    key_table_limit();
    for (id, info) in keys {
        let at = |f: &str| format!("proxy.keys.\"{id}\".{f}");
        validate_tenant_id(id).map_err(|e| ConfigError::invalid(at("id"), e.to_string()))?;
        for (field, v) in [("team", &info.team), ("org", &info.org)] {
            if let Some(v) = v {
                validate_tenant_id(v)
                    .map_err(|e| ConfigError::invalid(at(field), e.to_string()))?;
            }
        }
    }
    Ok(keys.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, model: Option<&str>) -> Option<String> {
        Template::parse(t).unwrap().render(|p| match p {
            Part::Key => Some("k1"),
            Part::Model => model,
            Part::Team => Some("search"),
            Part::Org => None,
            Part::Header(h) if h == "x-project" => Some("p9"),
            _ => None,
        })
    }

    #[test]
    fn templates_fill_or_skip() {
        assert_eq!(render("{key}", None).as_deref(), Some("k1"));
        assert_eq!(
            render("{key}/{model}", Some("gpt-4o")).as_deref(),
            Some("k1/gpt-4o")
        );
        assert_eq!(render("{key}/{model}", None), None);
        assert_eq!(render("{key}/{model}", Some("")), None);
        assert_eq!(render("team:{team}", None).as_deref(), Some("team:search"));
        assert_eq!(render("{org}", None), None);
        assert_eq!(
            render("{header:X-Project}-{key}", None).as_deref(),
            Some("p9-k1")
        );
        assert_eq!(render("{header:x-other}", None), None);
        // A value that is no valid key: skipped.
        assert_eq!(render("{model}", Some("a b")), None);
    }

    #[test]
    fn bad_templates_say_why() {
        for (t, why) in [
            ("", "empty"),
            ("{key", "unclosed"),
            ("key}", "without"),
            ("{user}", "unknown placeholder"),
            ("{header:}", "unknown placeholder"),
            ("{header:a b}", "unknown placeholder"),
            ("a b{key}", "text"),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.contains(why), "{t:?}: {e}");
        }
    }

    fn limits() -> RateLimitConfig {
        let text = r#"
            [limits.inflight]
            kind = "concurrency"
            max = 2
            [limits.daily]
            kind = "quota"
            amount = 100
            period = "1d"
        "#;
        let s: crate::NodeSettings = toml::from_str(text).unwrap();
        RateLimitConfig::resolve(s.rate_limit, s.token_limit, s.limits).unwrap()
    }

    fn block(limit: &str, key: &str, cost: Option<&str>) -> RuleBlock {
        RuleBlock::new(limit, key, cost)
    }

    #[test]
    fn rules_resolve_and_errors_name_the_key() {
        let l = limits();
        let rules = resolve_rules(
            &[
                block("requests", "{key}", None),
                block("daily", "{team}", Some("tokens")),
                block("inflight", "{key}", None),
            ],
            &l,
        )
        .unwrap();
        assert_eq!(rules[1].cost, Cost::Tokens);
        assert_eq!(rules[2].limit.as_str(), "inflight");
        for (b, key) in [
            (block("nope", "{key}", None), "proxy.rules[0].limit"),
            (block("daily", "{who}", None), "proxy.rules[0].key"),
            (
                block("daily", "{key}", Some("euros")),
                "proxy.rules[0].cost",
            ),
            (
                block("inflight", "{key}", Some("tokens")),
                "proxy.rules[0].cost",
            ),
        ] {
            let e = resolve_rules(&[b], &l).unwrap_err().to_string();
            assert!(e.contains(key), "{e} should name {key}");
        }
    }

    #[test]
    fn the_key_table_name_is_reserved() {
        let s: crate::NodeSettings = toml::from_str("[limits.\"proxy.keys\"]\nrate = 1\n").unwrap();
        let e = crate::NodeConfig::resolve(s).unwrap_err().to_string();
        assert!(
            e.contains("limits.proxy.keys") && e.contains("reserved"),
            "{e}"
        );
    }

    #[test]
    fn key_table_is_validated() {
        let mut keys = BTreeMap::new();
        keys.insert(
            "k".to_string(),
            KeyInfo {
                team: Some("a b".into()),
                org: None,
            },
        );
        let e = resolve_keys(&keys).unwrap_err().to_string();
        assert!(e.contains("proxy.keys.\"k\".team"), "{e}");
    }
}
