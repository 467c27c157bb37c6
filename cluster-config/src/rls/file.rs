//! envoyproxy/ratelimit's YAML rule files: one file, or every `.yaml` and
//! `.yml` file of a directory. An existing file loads unchanged (`domain`,
//! `descriptors` with `key`, `value`, `rate_limit: {unit,
//! requests_per_unit, name, unlimited}`, `shadow_mode`, `detailed_metric`,
//! `replaces`, nested `descriptors`, plus `value_to_metric` and `metadata`,
//! which only shape metrics there). Keys whose meaning llmtrace does not
//! implement (`quota_mode`, `share_threshold`) are refused rather than
//! ignored. Extensions: `rate_limit.algorithm: token_bucket` and
//! `rate_limit.charge: always`.
//!
//! Every error names the file, the line and the key
//! (`descriptors[0].rate_limit.unit`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use super::rules::{Algorithm, Node, RlsRules, Rule, Unit};
use crate::limit::Limit;
use crate::limits::MAX_BURST_TIMES_PER_S;

/// Why rule files were refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid RLS config {path}: {reason}")]
pub struct RlsLoadError {
    pub path: String,
    /// With the line and the key, as the YAML parser or a check gives them.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoot {
    domain: String,
    #[serde(default)]
    descriptors: Siblings,
}

/// The descriptors of one node: their `key_value`s are distinct.
#[derive(Default)]
struct Siblings(Vec<RawDescriptor>);

impl<'de> Deserialize<'de> for Siblings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<RawDescriptor>::deserialize(d)?;
        let mut seen = std::collections::HashSet::new();
        for item in &list {
            if !seen.insert(item.composite()) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate descriptor composite key `{}`",
                    item.composite()
                )));
            }
        }
        Ok(Siblings(list))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: NonEmpty,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    descriptors: Siblings,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    /// Shapes envoyproxy/ratelimit's metric names only.
    #[serde(default, rename = "value_to_metric")]
    _value_to_metric: bool,
    /// Returned in envoyproxy/ratelimit's dynamic metadata only.
    #[serde(default, rename = "metadata")]
    _metadata: Option<serde_yaml::Value>,
}

impl RawDescriptor {
    fn composite(&self) -> String {
        match self.value.as_deref() {
            Some(v) if !v.is_empty() => format!("{}_{v}", self.key.0),
            _ => self.key.0.clone(),
        }
    }
}

struct NonEmpty(String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("descriptor has empty key"));
        }
        Ok(NonEmpty(s))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimitFields {
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    requests_per_unit: u32,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    replaces: Vec<Replaces>,
    #[serde(default)]
    charge: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replaces {
    name: String,
}

struct RawRateLimit {
    unit: Option<Unit>,
    requests_per_unit: u32,
    unlimited: bool,
    name: Option<String>,
    algorithm: Algorithm,
    replaces: Vec<String>,
    charge_always: bool,
}

impl<'de> Deserialize<'de> for RawRateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let f = RawRateLimitFields::deserialize(d)?;
        let unit = match f.unit.as_deref() {
            None | Some("") => None,
            Some(u) => Some(Unit::parse(u).ok_or_else(|| {
                D::Error::custom(format!("rate_limit.unit: invalid rate limit unit `{u}`"))
            })?),
        };
        if f.unlimited && unit.is_some() {
            return Err(D::Error::custom(
                "rate_limit.unit: should not specify rate limit unit when unlimited",
            ));
        }
        if !f.unlimited && unit.is_none() {
            return Err(D::Error::custom(
                "rate_limit.unit: required (second, minute, hour, day, week, month, year) unless \
                 `unlimited: true`",
            ));
        }
        let algorithm = match f.algorithm.as_deref() {
            None | Some("fixed_window") => Algorithm::FixedWindow,
            Some("token_bucket") => Algorithm::TokenBucket,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "rate_limit.algorithm: unknown algorithm `{other}`: fixed_window (the default) or token_bucket"
                )))
            }
        };
        if let (Algorithm::TokenBucket, Some(u)) = (algorithm, unit) {
            if u64::from(f.requests_per_unit) * u.secs() > MAX_BURST_TIMES_PER_S {
                return Err(D::Error::custom(format!(
                    "rate_limit.algorithm: a token bucket of {} per {} is too large for exact arithmetic \
                     (requests_per_unit × unit seconds at most {MAX_BURST_TIMES_PER_S}); \
                     use the default fixed_window",
                    f.requests_per_unit,
                    u.as_str()
                )));
            }
        }
        let charge_always = match f.charge.as_deref() {
            None | Some("when_admitted") => false,
            Some("always") => true,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "rate_limit.charge: unknown value `{other}`: when_admitted (the default) or \
                     always"
                )))
            }
        };
        let name = f.name.filter(|n| !n.is_empty());
        let mut replaces = Vec::with_capacity(f.replaces.len());
        for r in f.replaces {
            if r.name.is_empty() {
                return Err(D::Error::custom(
                    "rate_limit.replaces: should not have an empty replaces entry",
                ));
            }
            if name.as_deref() == Some(r.name.as_str()) {
                return Err(D::Error::custom(
                    "rate_limit.replaces: should not contain the name of the same descriptor",
                ));
            }
            replaces.push(r.name);
        }
        Ok(RawRateLimit {
            unit,
            requests_per_unit: f.requests_per_unit,
            unlimited: f.unlimited,
            name,
            algorithm,
            replaces,
            charge_always,
        })
    }
}

/// The limit of the rule at `path` of `domain`: `rls.` and a hash of both,
/// the same on every node reading the same file.
pub fn rule_limit(domain: &str, path: &str) -> Limit {
    let h = xxh3_64(format!("{domain}\0{path}").as_bytes());
    Limit::intern(&format!("rls.{h:016x}")).expect("a valid limit name")
}

fn build(domain: &str, parent: &str, list: Vec<RawDescriptor>) -> Node {
    let mut node = Node::default();
    for d in list {
        let composite = d.composite();
        let path = if parent.is_empty() {
            composite.clone()
        } else {
            format!("{parent}.{composite}")
        };
        let mut child = build(domain, &path, d.descriptors.0);
        child.rule = d.rate_limit.map(|r| {
            Arc::new(Rule {
                limit: rule_limit(domain, &path),
                domain: domain.to_string(),
                explicit_name: r.name.is_some(),
                name: r.name.unwrap_or_else(|| path.clone()),
                replaces: r.replaces,
                charge_always: r.charge_always,
                path: path.clone(),
                requests_per_unit: r.requests_per_unit,
                unit: r.unit,
                algorithm: r.algorithm,
                unlimited: r.unlimited,
                shadow_mode: d.shadow_mode,
                detailed_metric: d.detailed_metric,
            })
        });
        if composite.contains('*') {
            let parts = composite.split('*').map(String::from).collect();
            node.wildcards.push((composite.clone(), parts));
        }
        node.children.insert(composite, child);
    }
    node
}

/// Parses one file's text; `path` names it in errors.
pub fn parse_file(text: &str, path: &str) -> Result<(String, Node), RlsLoadError> {
    let error = |reason: String| RlsLoadError {
        path: path.to_string(),
        reason,
    };
    let root: RawRoot = serde_yaml::from_str(text).map_err(|e| error(e.to_string()))?;
    if root.domain.is_empty() {
        return Err(error("config file cannot have empty domain".into()));
    }
    let node = build(&root.domain, "", root.descriptors.0);
    Ok((root.domain, node))
}

/// The files `path` names: itself, or a directory's `.yaml`/`.yml` files
/// by name.
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RlsLoadError> {
    let error = |e: std::io::Error| RlsLoadError {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(error)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads the rules of `path` (a file or a directory of them). A domain
/// defined twice is refused, naming the second file.
pub fn load_rules(path: &Path) -> Result<RlsRules, RlsLoadError> {
    let mut domains = HashMap::new();
    for file in rule_files(path)? {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| RlsLoadError {
            path: name.clone(),
            reason: e.to_string(),
        })?;
        let (domain, node) = parse_file(&text, &name)?;
        if domains.insert(domain.clone(), node).is_some() {
            return Err(RlsLoadError {
                path: name,
                reason: format!("domain: duplicate domain `{domain}`"),
            });
        }
    }
    Ok(RlsRules::new(domains))
}

#[cfg(test)]
mod tests;
