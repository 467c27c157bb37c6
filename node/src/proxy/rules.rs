//! The charge of one proxied call: every `[[proxy.rules]]` item rendered
//! into a descriptor of the all-or-nothing check ([`crate::multi_check`]),
//! from what the proxy knows of the call ([`Facts`]). A rule whose
//! placeholder has no value is skipped; so is a rule whose key is
//! unlimited, and a `tokens` or `usd_micros` rule with nothing to reserve
//! (a call that is not token-accounted).

use actix_web::http::header::HeaderMap;
use llmtrace_actors::BucketQuota;
use llmtrace_cluster_config::proxy_prices::{Price, TokenCounts};
use llmtrace_cluster_config::proxy_rules::{Cost, Part, Rule};
use llmtrace_cluster_config::{LimitKind, RateLimitConfig};

use super::tokens::Plan;
use crate::multi_check::Descriptor;

/// What the proxy knows of a call when it admits it.
pub struct Facts<'a> {
    /// The tenant: trusted header or UUID v5 of the bearer key.
    pub key: &'a str,
    pub team: Option<&'a str>,
    pub org: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The token plan of a token-accounted call.
    pub plan: Option<&'a Plan>,
    /// The price of the call's model (`None`: unpriced).
    pub price: Option<Price>,
}

impl Facts<'_> {
    fn value(&self, part: &Part) -> Option<&str> {
        match part {
            Part::Key => Some(self.key),
            Part::Model => self.plan.map(|p| p.model.as_str()),
            Part::Team => self.team,
            Part::Org => self.org,
            Part::Header(name) => self.headers.get(name.as_str())?.to_str().ok(),
            Part::Text(_) => None,
        }
    }

    /// The tokens a call reserves (prompt + most output).
    pub fn tokens(&self) -> u64 {
        self.plan.map_or(0, Plan::total)
    }

    /// The reservation priced: the prompt as input, the most output as
    /// output; `None` when the model has no price.
    pub fn usd_micros(&self) -> Option<u64> {
        let plan = self.plan?;
        Some(self.price?.cost(TokenCounts {
            prompt: plan.prompt,
            cached: 0,
            output: plan.completion,
        }))
    }
}

/// One rule applied to a call.
#[derive(Debug, Clone)]
pub struct Charge {
    pub descriptor: Descriptor,
    pub cost: Cost,
}

/// Why a call cannot be charged.
#[derive(Debug, PartialEq, Eq)]
pub enum ChargeError {
    /// A `usd_micros` rule applies and the model has no price.
    Unpriced(String),
}

/// The descriptors of a call under `rules`. A reservation never exceeds
/// its bucket (it could never be admitted); the excess is charged after
/// the answer.
pub fn charges(
    rules: &[Rule],
    facts: &Facts<'_>,
    limits: &RateLimitConfig,
) -> Result<Vec<Charge>, ChargeError> {
    let mut out = Vec::with_capacity(rules.len());
    for rule in rules {
        let Some(key) = rule.key.render(|p| facts.value(p)) else {
            continue;
        };
        let wanted = match rule.cost {
            Cost::Requests => 1,
            Cost::Tokens => facts.tokens(),
            Cost::UsdMicros => {
                if facts.plan.is_none() {
                    continue;
                }
                facts.usd_micros().ok_or_else(|| {
                    ChargeError::Unpriced(facts.plan.map(|p| p.model.clone()).unwrap_or_default())
                })?
            }
        };
        // An unlimited key is not checked at all.
        let Some(quota) = BucketQuota::of(limits.policy(&key, rule.limit)) else {
            continue;
        };
        let descriptor = if limits.kind(rule.limit) == LimitKind::Concurrency {
            Descriptor::lease(rule.limit, key)
        } else {
            let amount = wanted.min(quota.capacity_units());
            if amount == 0 {
                continue;
            }
            Descriptor::take(rule.limit, key, amount)
        };
        out.push(Charge {
            descriptor,
            cost: rule.cost,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmtrace_actors::Op;
    use llmtrace_cluster_config::proxy_rules::{default_rules, resolve_rules, RuleBlock};
    use llmtrace_cluster_config::{Limit, NodeConfig, NodeSettings};

    fn config() -> RateLimitConfig {
        let s = NodeSettings::parse(
            r#"
            [token_limit]
            tokens_per_minute = 1000
            burst_size = 1000
            [limits.tpm_model]
            rate = 500
            per = "1m"
            [limits.org_spend]
            kind = "quota"
            amount = 1000000
            period = "30d"
            [limits.inflight]
            kind = "concurrency"
            max = 2
            "#,
        )
        .unwrap();
        NodeConfig::resolve(s).unwrap().rate_limit
    }

    fn plan(model: &str, prompt: u64, completion: u64) -> Plan {
        Plan {
            prompt,
            completion,
            model: model.into(),
            ..Plan::default()
        }
    }

    fn rule(limit: &str, key: &str, cost: Option<&str>) -> RuleBlock {
        RuleBlock::new(limit, key, cost)
    }

    #[test]
    fn rules_render_descriptors_and_skip_missing_values() {
        let limits = config();
        let rules = resolve_rules(
            &[
                rule("tpm_model", "{key}/{model}", Some("tokens")),
                rule("org_spend", "{org}", Some("usd_micros")),
                rule("inflight", "{key}", None),
                rule("requests", "team:{team}", None),
            ],
            &limits,
        )
        .unwrap();
        let headers = HeaderMap::new();
        let p = plan("gpt-4o", 100, 900);
        let facts = Facts {
            key: "k1",
            team: None,
            org: Some("acme"),
            headers: &headers,
            plan: Some(&p),
            price: Some(Price {
                input: 2_500_000,
                cached_input: 1_250_000,
                output: 10_000_000,
            }),
        };
        let c = charges(&rules, &facts, &limits).unwrap();
        assert_eq!(c.len(), 3, "the {{team}} rule is skipped: {c:?}");
        // 1000 tokens, capped at the bucket of 500.
        assert_eq!(c[0].descriptor.key, "k1/gpt-4o");
        assert_eq!(c[0].descriptor.amount, 500);
        // 100 × 2.5 + 900 × 10 = 9250 µ$.
        assert_eq!(c[1].descriptor.key, "acme");
        assert_eq!(c[1].descriptor.amount, 9_250);
        assert_eq!(c[2].descriptor.op, Op::Acquire);
        let unpriced = Facts {
            price: None,
            ..facts
        };
        assert_eq!(
            charges(&rules, &unpriced, &limits).unwrap_err(),
            ChargeError::Unpriced("gpt-4o".into())
        );
    }

    #[test]
    fn default_rules_are_requests_and_tokens_of_the_tenant() {
        let limits = config();
        let headers = HeaderMap::new();
        let p = plan("m", 10, 20);
        let mut facts = Facts {
            key: "t",
            team: None,
            org: None,
            headers: &headers,
            plan: Some(&p),
            price: None,
        };
        let c = charges(&default_rules(), &facts, &limits).unwrap();
        let got: Vec<_> = c
            .iter()
            .map(|c| (c.descriptor.limit, c.descriptor.amount))
            .collect();
        assert_eq!(got, vec![(Limit::REQUESTS, 1), (Limit::TOKENS, 30)]);
        facts.plan = None;
        let c = charges(&default_rules(), &facts, &limits).unwrap();
        assert_eq!(c.len(), 1, "nothing to reserve: no tokens descriptor");
    }
}
