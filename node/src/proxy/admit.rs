//! Admission of a proxied call: its charges ([`super::rules`]) go through
//! the all-or-nothing multi-descriptor check, so a refused call charges
//! nothing. An admitted call leaves with its reservations to reconcile and
//! its leases to release ([`super::settle`]); a refused one gets the 429
//! ([`super::headers::refusal`]). A limit in shadow mode that would have
//! refused is counted and named in `x-llmtrace-shadow-refused`, nothing
//! more.

use std::sync::Arc;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use llmtrace_actors::{BucketQuota, Decision, Verdict};
use llmtrace_cluster_config::proxy_rules::Cost;
use llmtrace_cluster_config::Limit;

use super::errors::{Dialect, ProxyError};
use super::headers::{self, Refused};
use super::rules::{charges, ChargeError, Facts};
use super::settle::{Leases, Reservation, Reserved};
use super::tokens::Plan;
use super::{keys, ProxyContext};
use crate::multi_check::{check_all, remaining_and_reset, shadow_header, SHADOW_HEADER};

/// The limits' answers for an admitted call (the default: a call no limit
/// is asked for).
#[derive(Default)]
pub struct Admitted {
    /// The tightest request and token limits, as `requests` and `tokens`
    /// (for the `x-ratelimit-*` headers).
    pub states: Vec<(Limit, BucketQuota, Decision)>,
    /// What was reserved, to reconcile after the answer.
    pub reservation: Option<Reservation>,
    /// Leases held for the whole upstream call.
    pub leases: Option<Leases>,
    /// The [`SHADOW_HEADER`] value, when a limit in shadow mode refused.
    pub shadow: Option<String>,
}

impl Admitted {
    /// Adds the limits' headers, in the `dialect`'s names, to an answer.
    pub fn insert_headers(&self, dialect: Dialect, b: &mut actix_web::HttpResponseBuilder) {
        headers::insert_limits(dialect, b, &self.states);
        if let Some(v) = &self.shadow {
            b.insert_header((SHADOW_HEADER, v.as_str()));
        }
    }
}

/// The tightest state of each class (`requests` or `tokens`): the one with
/// the fewest units left.
#[derive(Default)]
struct Tightest {
    requests: Option<(BucketQuota, Decision)>,
    tokens: Option<(BucketQuota, Decision)>,
}

impl Tightest {
    fn offer(&mut self, cost: Cost, quota: BucketQuota, decision: Decision) {
        let slot = match (cost, quota) {
            (_, BucketQuota::Leases { .. }) | (Cost::UsdMicros, _) => return,
            (Cost::Requests, _) => &mut self.requests,
            (Cost::Tokens, _) => &mut self.tokens,
        };
        let left = |d: Decision| remaining_and_reset(d).0;
        if slot.is_none_or(|(_, d)| left(decision) < left(d)) {
            *slot = Some((quota, decision));
        }
    }

    fn states(self) -> Vec<(Limit, BucketQuota, Decision)> {
        let r = self.requests.map(|(q, d)| (Limit::REQUESTS, q, d));
        let t = self.tokens.map(|(q, d)| (Limit::TOKENS, q, d));
        r.into_iter().chain(t).collect()
    }
}

/// Decides a call. `Ok(Err(response))` is a 429 in the `dialect`'s shape
/// (nothing stays charged).
pub async fn admit(
    ctx: &ProxyContext,
    tenant: &str,
    request_headers: &HeaderMap,
    plan: Option<&Plan>,
    dialect: Dialect,
) -> Result<Result<Admitted, HttpResponse>, ProxyError> {
    let router = &ctx.router;
    let limits = router.local().limits();
    let who = keys::resolve(&ctx.config, &limits.runtime, tenant, request_headers)
        .map_err(|why| ProxyError::bad_tenant(&why))?;
    let price = plan.and_then(|p| ctx.config.prices.of(&p.model));
    let facts = Facts {
        key: tenant,
        team: who.team.as_deref(),
        org: who.org.as_deref(),
        headers: request_headers,
        plan,
        price,
    };
    let charged = charges(&ctx.config.rules, &facts, limits).map_err(|e| match e {
        ChargeError::Unpriced(model) => ProxyError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "model_not_priced",
            format!("The model `{model}` has no price on this gateway."),
        ),
    })?;
    // Moved apart, not copied: the check takes the descriptors alone.
    let (descriptors, costs): (Vec<_>, Vec<_>) =
        charged.into_iter().map(|c| (c.descriptor, c.cost)).unzip();
    let outcome = check_all(router, &descriptors).await;
    if let Some(i) = outcome.failed() {
        let Err(e) = &outcome.results[i] else {
            unreachable!()
        };
        return Err(ProxyError::unavailable(format!("rate limiter: {e}")));
    }
    let mut tightest = Tightest::default();
    let mut refused = Vec::new();
    let mut wait_ns = None::<u64>;
    let mut shadow = Vec::new();
    for (i, (d, &cost)) in descriptors.iter().zip(&costs).enumerate() {
        let Ok(routed) = &outcome.results[i] else {
            continue;
        };
        let Verdict::Limited { quota, decision } = routed.verdict else {
            continue;
        };
        let state = outcome.undone(i).unwrap_or(decision);
        tightest.offer(cost, quota, state);
        let Decision::Refused { retry_after_ns, .. } = decision else {
            continue;
        };
        let limit = d.limit;
        if outcome.is_shadow(i) {
            ctx.metrics.count_shadow_refused(limit);
            shadow.push(limit.as_str());
            continue;
        }
        wait_ns = Some(wait_ns.unwrap_or(0).max(retry_after_ns));
        refused.push(Refused {
            limit,
            capacity: quota.capacity_units(),
            remaining: remaining_and_reset(state).0,
            requested: (cost != Cost::Requests).then_some(d.amount),
        });
    }
    let shadow = shadow_header(&shadow);
    let states = tightest.states();
    if outcome.refused() {
        let mut resp =
            headers::refusal(dialect, &refused, wait_ns.unwrap_or(1_000_000_000), &states);
        if let Some(v) = shadow.and_then(|v| HeaderValue::from_str(&v).ok()) {
            resp.headers_mut()
                .insert(HeaderName::from_static(SHADOW_HEADER), v);
        }
        return Ok(Err(resp));
    }
    // Admitted: what each limited, admitted descriptor did stays, to be
    // reconciled (reservations) or released (leases) after the answer.
    let mut items = Vec::new();
    let mut held = Vec::new();
    for (i, (d, cost)) in descriptors.into_iter().zip(costs).enumerate() {
        let took = matches!(&outcome.results[i],
            Ok(r) if matches!(r.verdict, Verdict::Limited { decision, .. } if decision.is_allowed()));
        if !took {
            continue;
        }
        if let Some(id) = d.lease_id() {
            held.push((d.limit, d.key, id));
        } else if cost != Cost::Requests {
            if cost == Cost::Tokens {
                ctx.metrics.tokens_reserved.inc_by(d.amount);
            }
            items.push(Reserved {
                limit: d.limit,
                key: d.key,
                cost,
                amount: d.amount,
            });
        }
    }
    Ok(Ok(Admitted {
        states,
        reservation: (!items.is_empty()).then(|| Reservation {
            router: router.clone(),
            items,
            price,
            metrics: Arc::clone(&ctx.metrics),
        }),
        leases: (!held.is_empty()).then(|| Leases {
            router: router.clone(),
            metrics: Arc::clone(&ctx.metrics),
            held,
        }),
        shadow,
    }))
}
