//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: a
//! request's descriptors become one multi-descriptor check, all or nothing
//! ([`crate::multi_check`]).
//!
//! Each descriptor finds its rule in the domain's tree (or brings its own
//! `limit` override); its bucket is (rule limit, `domain|k=v|...`), owned
//! through the ring like any bucket. Hits: the descriptor's `hits_addend`,
//! else the request's (0 means 1); a descriptor `hits_addend` of 0 checks
//! without charging (a peek); `is_negative_hits` refunds; on a rule with
//! `charge: always` hits are charged whatever is left. Descriptors that
//! match no rule, or an `unlimited` one, are OK and never counted; a rule
//! of 0 requests refuses without a bucket; a `shadow_mode` rule's refusal
//! is answered OK and counted. When any other descriptor refuses, the
//! answer is OVER_LIMIT and nothing stays charged.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use llmtrace_actors::{CheckError, Op, Route, Verdict};
use llmtrace_cluster_config::rls::{bucket_key, override_limit, Rule, Unit};
use llmtrace_cluster_config::OwnerUnreachable;
use llmtrace_cluster_config::{Limit, RlsLimits};
use tonic::{Request, Response, Status};

use super::metrics::{Decided, RlsMetrics};
use crate::multi_check::{decide_all, remaining_and_reset, Descriptor, HeaderItems};

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 32;

/// The RLS service of a node.
#[derive(Clone)]
pub struct RlsService {
    pub router: llmtrace_actors::Router,
    pub limits: RlsLimits,
    pub response_headers: bool,
    pub metrics: Arc<RlsMetrics>,
}

/// What a descriptor of the request is held to.
enum Plan {
    /// No rule (or replaced, or unlimited): OK, not counted.
    Free { unlimited: bool },
    /// Refused without a bucket: 0 requests per unit, or more hits than
    /// the limit holds.
    Refuse {
        limit: RateLimit,
        unit: Unit,
        counted: Option<Arc<Rule>>,
        shadow: bool,
    },
    /// A bucket check: `index` into the descriptors checked.
    Bucket {
        index: usize,
        limit: RateLimit,
        counted: Option<Arc<Rule>>,
        shadow: bool,
    },
}

fn invalid(i: usize, what: &str) -> Status {
    Status::invalid_argument(format!("descriptors[{i}]: {what}"))
}

fn duration(ns: u64) -> Duration {
    Duration {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

fn window_reset_ns(unit: Unit) -> u64 {
    let now = llmtrace_actors::Clock::now_ns(&llmtrace_actors::SystemClock);
    let len = unit.secs() * 1_000_000_000;
    len - now % len
}

fn status_of(e: &CheckError) -> Status {
    match e {
        CheckError::Unavailable(_)
        | CheckError::Moved { .. }
        | CheckError::Fenced { .. }
        | CheckError::NotPersisted => Status::unavailable(e.to_string()),
        CheckError::OwnerRefused(_) => {
            Status::unavailable(format!("the owner refused the check: {e}"))
        }
        _ => Status::invalid_argument(e.to_string()),
    }
}

impl RlsService {
    /// Validates one descriptor and finds what holds it.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        i: usize,
        d: &RateLimitDescriptor,
        domain: &str,
        rules: &llmtrace_cluster_config::RlsRules,
        hits: u64,
        checks: &mut Vec<Descriptor>,
    ) -> Result<Plan, Status> {
        if d.entries.is_empty() {
            return Err(invalid(i, "a descriptor needs at least one entry"));
        }
        if d.entries.len() > MAX_ENTRIES {
            return Err(invalid(i, &format!("at most {MAX_ENTRIES} entries")));
        }
        if let Some(j) = d.entries.iter().position(|e| e.key.is_empty()) {
            return Err(invalid(i, &format!("entries[{j}].key must not be empty")));
        }
        let entries = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
        let (limit, counted, shadow, n, unit, charge) = match &d.limit {
            Some(o) => {
                let unit = Unit::from_proto(o.unit)
                    .ok_or_else(|| invalid(i, "limit.unit must be SECOND to YEAR"))?;
                let limit = (o.requests_per_unit > 0)
                    .then(|| override_limit(o.requests_per_unit, unit))
                    .flatten();
                if o.requests_per_unit > 0 && limit.is_none() {
                    return Err(Status::resource_exhausted(
                        "too many distinct limit overrides on this node",
                    ));
                }
                (limit, None, false, o.requests_per_unit, unit, false)
            }
            None => {
                let Some(rule) = rules.find(domain, entries.clone()) else {
                    return Ok(Plan::Free { unlimited: false });
                };
                let Some(unit) = rule.unit.filter(|_| !rule.unlimited) else {
                    return Ok(Plan::Free { unlimited: true });
                };
                let limit = (rule.requests_per_unit > 0).then_some(rule.limit);
                (
                    limit,
                    Some(Arc::clone(rule)),
                    rule.shadow_mode,
                    rule.requests_per_unit,
                    unit,
                    rule.charge_always,
                )
            }
        };
        let current = RateLimit {
            name: counted
                .as_ref()
                .map_or_else(String::new, |r| r.name.clone()),
            requests_per_unit: n,
            unit: unit.proto(),
        };
        let check_only = d.hits_addend.as_ref().is_some_and(|h| h.value == 0);
        let (op, amount) = if check_only {
            (Op::Peek, 1)
        } else if d.is_negative_hits {
            (Op::Refund, hits)
        } else if charge {
            (Op::Charge, hits)
        } else {
            (Op::Take, hits)
        };
        let fits = matches!(op, Op::Refund | Op::Charge) || amount <= u64::from(n);
        let Some(limit) = limit.filter(|_| fits) else {
            // 0 per unit, or more hits than the limit ever holds: refused
            // without a bucket (as envoyproxy/ratelimit answers).
            return Ok(Plan::Refuse {
                limit: current,
                unit,
                counted,
                shadow,
            });
        };
        checks.push(Descriptor {
            limit,
            key: bucket_key(domain, entries),
            op,
            amount,
        });
        Ok(Plan::Bucket {
            index: checks.len() - 1,
            limit: current,
            counted,
            shadow,
        })
    }

    /// Decides one request.
    pub async fn decide(&self, req: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        if req.domain.is_empty() {
            return Err(Status::invalid_argument("domain must not be empty"));
        }
        if req.descriptors.is_empty() || req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "a request holds 1 to {MAX_DESCRIPTORS} descriptors, not {}",
                req.descriptors.len()
            )));
        }
        let table = self.limits.load();
        let rules = &table.rules;
        let request_hits = u64::from(req.hits_addend.max(1));
        let mut checks = Vec::with_capacity(req.descriptors.len());
        let mut plans = Vec::with_capacity(req.descriptors.len());
        for (i, d) in req.descriptors.iter().enumerate() {
            let hits = d
                .hits_addend
                .as_ref()
                .map_or(request_hits, |h| h.value.max(1));
            plans.push(self.plan(i, d, &req.domain, rules, hits, &mut checks)?);
        }
        // `replaces`: a named rule replaced by another matched rule does
        // not apply to this call.
        let replaced: Vec<String> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Bucket {
                    counted: Some(r), ..
                }
                | Plan::Refuse {
                    counted: Some(r), ..
                } => Some(r.replaces.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        if !replaced.is_empty() {
            for p in plans.iter_mut() {
                let rule = match p {
                    Plan::Bucket {
                        counted: Some(r), ..
                    }
                    | Plan::Refuse {
                        counted: Some(r), ..
                    } => r,
                    _ => continue,
                };
                if rule.explicit_name && replaced.contains(&rule.name) {
                    if let Plan::Bucket { index, .. } = p {
                        // Peeked, never charged.
                        checks[*index].op = Op::Peek;
                        checks[*index].amount = 1;
                    }
                    *p = Plan::Free { unlimited: false };
                }
            }
        }
        let mut outcome = decide_all(&self.router, &checks).await;
        if let Some(i) = outcome.failed() {
            outcome.undo(&self.router, &checks).await;
            let Err(e) = &outcome.results[i] else {
                unreachable!()
            };
            return Err(status_of(e));
        }
        if outcome.results.iter().any(|r| {
            matches!(r, Ok(routed) if routed.route == Route::Degraded(OwnerUnreachable::Deny)
                && !routed.verdict.is_allowed())
        }) {
            outcome.undo(&self.router, &checks).await;
            return Err(Status::unavailable(
                "the owner of a bucket is unreachable (on_owner_unreachable = deny)",
            ));
        }
        let refused_at =
            |index: usize| matches!(&outcome.results[index], Ok(r) if !r.verdict.is_allowed());
        let over = plans.iter().any(|p| match p {
            Plan::Refuse { shadow, .. } => !shadow,
            Plan::Bucket { index, shadow, .. } => !shadow && refused_at(*index),
            Plan::Free { .. } => false,
        });
        if over {
            outcome.undo(&self.router, &checks).await;
        }
        let mut statuses = Vec::with_capacity(plans.len());
        let mut headers = HeaderItems::default();
        for p in &plans {
            let status = match p {
                Plan::Free { unlimited } => DescriptorStatus {
                    code: Code::Ok as i32,
                    limit_remaining: if *unlimited { u32::MAX } else { 0 },
                    ..DescriptorStatus::default()
                },
                Plan::Refuse {
                    limit,
                    unit,
                    counted,
                    shadow,
                } => {
                    if let Some(rule) = counted {
                        let decided = if *shadow {
                            Decided::ShadowRefused
                        } else {
                            Decided::Refused
                        };
                        self.metrics.count(rule, decided);
                    }
                    DescriptorStatus {
                        code: if *shadow { Code::Ok } else { Code::OverLimit } as i32,
                        current_limit: Some(limit.clone()),
                        limit_remaining: 0,
                        duration_until_reset: Some(duration(window_reset_ns(*unit))),
                        ..DescriptorStatus::default()
                    }
                }
                Plan::Bucket {
                    index,
                    limit,
                    counted,
                    shadow,
                } => {
                    let routed = outcome.results[*index]
                        .as_ref()
                        .expect("failures answered above");
                    let (quota, decision) = match routed.verdict {
                        Verdict::Limited { quota, decision } => (Some(quota), Some(decision)),
                        Verdict::Unlimited => (None, None),
                    };
                    let refused = decision.is_some_and(|d| !d.is_allowed());
                    let decided = match (refused, shadow) {
                        (false, _) => Decided::Allowed,
                        (true, false) => Decided::Refused,
                        (true, true) => Decided::ShadowRefused,
                    };
                    if let Some(rule) = counted {
                        self.metrics.count(rule, decided);
                    }
                    let after = outcome.undone(*index).or(decision);
                    let (remaining, reset_ns) = after.map_or((0, 0), remaining_and_reset);
                    if let Some(quota) = quota.filter(|_| self.response_headers) {
                        headers.push(
                            &header_name(limit, checks[*index].limit),
                            quota,
                            remaining,
                            reset_ns,
                        );
                    }
                    DescriptorStatus {
                        code: if refused && !shadow {
                            Code::OverLimit
                        } else {
                            Code::Ok
                        } as i32,
                        current_limit: Some(limit.clone()),
                        limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                        duration_until_reset: Some(duration(reset_ns)),
                        ..DescriptorStatus::default()
                    }
                }
            };
            statuses.push(status);
        }
        let mut response_headers_to_add = Vec::new();
        if !headers.is_empty() {
            for (key, value) in [
                ("RateLimit-Policy", headers.policy),
                ("RateLimit", headers.state),
            ] {
                response_headers_to_add.push(HeaderValue {
                    key: key.to_string(),
                    value,
                    ..HeaderValue::default()
                });
            }
        }
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add,
            ..RateLimitResponse::default()
        })
    }
}

/// The name a descriptor's RateLimit header items carry: the rule's name,
/// else its limit's.
fn header_name(limit: &RateLimit, bucket: Limit) -> String {
    if limit.name.is_empty() {
        bucket.as_str().to_string()
    } else {
        limit.name.replace(['"', '\\'], "_")
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.into_inner()).await.map(Response::new)
    }
}
