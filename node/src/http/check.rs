//! `POST /v1/check` and `POST /v1/check/batch`: input in, decision out.
//! 200 allowed, 429 refused (with `Retry-After`); both carry the rate-limit
//! headers of the limit that was checked.

use std::time::Instant;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, HttpResponseBuilder};
use futures_util::future::join_all;
use llmtrace_actors::{
    retry_after_secs, BucketQuota, CheckError, Decision, Route, Routed, Verdict,
};
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::headers::{self, LimitState};
use super::input::{self, CheckInput};
use super::NodeContext;
use llmtrace_actors::ErrorCode;

pub(super) fn check_error(e: CheckError) -> ApiError {
    match e {
        CheckError::ZeroCost | CheckError::CostAboveBurst { .. } => {
            ApiError::field("cost", e.to_string())
        }
        CheckError::Unavailable(m) => ApiError::unavailable(m),
        CheckError::WrongOp(_) => ApiError::field("limit", e.to_string()),
        CheckError::NotPersisted => ApiError::not_persisted(e.to_string()),
        // The owner's quota refused it (its view of a runtime override is
        // ahead of or behind this node's for a moment).
        CheckError::OwnerRefused(code) => match code {
            ErrorCode::BadTenant => ApiError::field("tenant_id", "the owner refused `tenant_id`"),
            ErrorCode::UnknownLimit => ApiError::field("limit", "the owner does not know `limit`"),
            ErrorCode::ZeroCost | ErrorCode::CostAboveBurst => ApiError::field(
                "cost",
                "`cost` exceeds the tenant's burst_size on the node that owns its bucket \
                 (a limit change is being applied) and cannot be admitted there",
            ),
            other => ApiError::unavailable(format!("the owner refused the check: {other:?}")),
        },
        // The router follows moved buckets; this only reaches a client if
        // the new owner could not be asked either.
        CheckError::Moved { to, .. } => {
            ApiError::unavailable(format!("bucket moved to node {to}, unreachable"))
        }
        // The router waits for a stale view to catch up, then applies
        // `on_owner_unreachable`; this only reaches a client if it lapsed
        // again meanwhile.
        CheckError::Fenced { .. } => ApiError::unavailable(e.to_string()),
    }
}

/// Runs one validated check on its owner; returns how it was decided.
async fn decide(ctx: &NodeContext, input: CheckInput) -> Result<(CheckInput, Routed), ApiError> {
    let started = Instant::now();
    let routed = ctx
        .router
        .check(&input.tenant_id, input.limit, input.cost)
        .await
        .map_err(check_error)?;
    ctx.metrics()
        .check_latency
        .observe(started.elapsed().as_secs_f64());
    Ok((input, routed))
}

/// The JSON body of a decided check (serialized straight from borrowed
/// fields: this is the hot path). `degraded` is present when the owner was
/// unreachable and the `on_owner_unreachable` policy decided.
#[derive(Serialize)]
struct VerdictBody<'a> {
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    unlimited: Option<bool>,
    tenant_id: &'a str,
    limit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_per_second: Option<u32>,
    /// The rate of a per-minute limit (`tokens`).
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_minute: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
    /// The amount of a quota limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reset_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<bool>,
}

fn verdict_body<'a>(input: &'a CheckInput, routed: &Routed) -> VerdictBody<'a> {
    let mut body = VerdictBody {
        allowed: true,
        unlimited: None,
        tenant_id: &input.tenant_id,
        limit: input.limit.as_str(),
        requests_per_second: None,
        tokens_per_minute: None,
        burst: None,
        amount: None,
        remaining: None,
        reset_after_ms: None,
        retry_after_secs: None,
        retry_after_ms: None,
        degraded: matches!(routed.route, Route::Degraded(_)).then_some(true),
    };
    match routed.verdict {
        Verdict::Unlimited => body.unlimited = Some(true),
        Verdict::Limited { quota, decision } => {
            match quota {
                BucketQuota::Refill {
                    rate, burst, per_s, ..
                } => {
                    match per_s {
                        1 => body.requests_per_second = Some(rate),
                        60 => body.tokens_per_minute = Some(rate),
                        _ => {}
                    }
                    body.burst = Some(u64::from(burst));
                }
                BucketQuota::Window { amount, .. } => body.amount = Some(amount),
                BucketQuota::Leases { max, .. } => body.amount = Some(u64::from(max)),
            }
            match decision {
                Decision::Allowed {
                    remaining,
                    reset_after_ns,
                } => {
                    body.remaining = Some(remaining);
                    body.reset_after_ms = Some(reset_after_ns.div_ceil(1_000_000));
                }
                Decision::Refused { retry_after_ns, .. } => {
                    body.allowed = false;
                    body.remaining = Some(0);
                    body.retry_after_secs = Some(retry_after_secs(retry_after_ns));
                    body.retry_after_ms = Some(retry_after_ns.div_ceil(1_000_000));
                }
            }
        }
    }
    body
}

/// Passes `e` on, counting it as an invalid request when the client is at
/// fault (4xx); a check the node could not decide (503) is not invalid.
pub(super) fn invalid(ctx: &NodeContext, e: ApiError) -> ApiError {
    if e.status.is_client_error() {
        ctx.metrics().invalid_requests.inc();
    }
    e
}

/// `POST /v1/check`.
pub async fn check(
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = input::read_body(payload)
        .await
        .map_err(|e| invalid(&ctx, e))?;
    let limits = ctx.router.local().limits();
    let input = match input::parse_check(&body, limits).map_err(|e| invalid(&ctx, e))? {
        input::CheckBody::One(input) => input,
        input::CheckBody::Descriptors(descriptors) => {
            return super::descriptors::check(&ctx, descriptors)
                .await
                .map_err(|e| invalid(&ctx, e))
        }
    };
    let (input, routed) = decide(&ctx, input).await.map_err(|e| invalid(&ctx, e))?;
    let body = verdict_body(&input, &routed);
    let Verdict::Limited { quota, decision } = routed.verdict else {
        return Ok(json(HttpResponse::Ok(), body));
    };
    let (status, remaining, reset_after_ns) = match decision {
        Decision::Allowed {
            remaining,
            reset_after_ns,
        } => (StatusCode::OK, remaining, reset_after_ns),
        Decision::Refused { reset_after_ns, .. } => {
            (StatusCode::TOO_MANY_REQUESTS, 0, reset_after_ns)
        }
    };
    let mut resp = HttpResponse::build(status);
    headers::insert(
        &mut resp,
        &LimitState {
            limit: input.limit,
            quota,
            remaining,
            reset_after_ns,
        },
    );
    if let Decision::Refused { retry_after_ns, .. } = decision {
        resp.insert_header((
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(retry_after_ns)),
        ));
    }
    Ok(json(resp, body))
}

/// A JSON answer; the content type is a static value (`HttpResponseBuilder::json`
/// would make one per response).
fn json(mut resp: HttpResponseBuilder, body: impl Serialize) -> HttpResponse {
    resp.insert_header((
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    ));
    resp.json(body)
}

/// `POST /v1/check/batch`: every item decided in order; a bad item gets its
/// own error and does not fail the others.
pub async fn check_batch(
    ctx: web::Data<NodeContext>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = input::read_body(payload)
        .await
        .map_err(|e| invalid(&ctx, e))?;
    let items =
        input::parse_batch(&body, ctx.router.local().limits()).map_err(|e| invalid(&ctx, e))?;
    // join_all polls in order, so checks of one tenant reach its shard in
    // the order of the batch.
    let ctx = &ctx;
    let results = join_all(items.into_iter().map(|item| async move {
        match item {
            Ok(input) => match decide(ctx, input).await {
                Ok((input, routed)) => {
                    serde_json::to_value(verdict_body(&input, &routed)).unwrap_or_default()
                }
                Err(e) => invalid(ctx, e).body(),
            },
            Err(e) => invalid(ctx, e).body(),
        }
    }))
    .await;
    Ok(HttpResponse::Ok().json(json!({ "results": results })))
}
