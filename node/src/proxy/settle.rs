//! What an admitted call still owes or holds after its answer:
//! - a [`Reservation`]: the `tokens` and `usd_micros` taken before
//!   forwarding, reconciled with the usage the answer reports (the unused
//!   part refunded, the excess charged), or given back whole when the call
//!   failed;
//! - [`Leases`]: the concurrency leases taken for the whole upstream call,
//!   released when dropped (the answer ended, failed, or the client went
//!   away and actix dropped the body).
//!
//! Both run their operations in the background on the buckets' owners.

use std::sync::Arc;

use llmtrace_actors::{Op, Router};
use llmtrace_cluster_config::proxy_prices::{Price, TokenCounts};
use llmtrace_cluster_config::proxy_rules::Cost;
use llmtrace_cluster_config::Limit;
use serde_json::Value;
use tracing::warn;

use super::metrics::ProxyMetrics;

/// The usage of a call, as the answer reported it (or counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Used {
    /// Total tokens (what `tokens` rules settle to).
    pub total: u64,
    /// By price class (what `usd_micros` rules settle to).
    pub counts: TokenCounts,
}

impl Used {
    /// The usage of an OpenAI `usage` object: `total_tokens` (else prompt +
    /// completion), with cached prompt tokens from
    /// `prompt_tokens_details.cached_tokens`.
    pub fn of_openai(usage: &Value) -> Option<Used> {
        let n = |v: Option<&Value>| v.and_then(Value::as_u64);
        let prompt = n(usage.get("prompt_tokens"));
        let output = n(usage.get("completion_tokens"));
        let total = n(usage.get("total_tokens"));
        if prompt.is_none() && output.is_none() && total.is_none() {
            return None;
        }
        let prompt = prompt.unwrap_or(0);
        let output = output.unwrap_or_else(|| total.unwrap_or(0).saturating_sub(prompt));
        let cached = n(usage.pointer("/prompt_tokens_details/cached_tokens")).unwrap_or(0);
        Some(Used {
            total: total.unwrap_or(prompt.saturating_add(output)),
            counts: TokenCounts {
                prompt,
                cached,
                output,
            },
        })
    }

    /// A counted usage (no report from the upstream).
    pub fn counted(prompt: u64, output: u64) -> Used {
        Used {
            total: prompt.saturating_add(output),
            counts: TokenCounts {
                prompt,
                cached: 0,
                output,
            },
        }
    }
}

/// One bucket a reservation took from.
#[derive(Debug, Clone)]
pub struct Reserved {
    pub limit: Limit,
    pub key: String,
    pub cost: Cost,
    /// Units taken before forwarding.
    pub amount: u64,
}

/// The reservations of an admitted call, still to reconcile.
pub struct Reservation {
    pub router: Router,
    pub items: Vec<Reserved>,
    /// The model's price (for `usd_micros` items).
    pub price: Option<Price>,
    pub metrics: Arc<ProxyMetrics>,
}

impl Reservation {
    /// Reconciles every item with the usage: refunds the unused part or
    /// charges the excess, on the bucket's owner. Runs in the background.
    pub fn reconcile(self, used: Used) {
        let price = self.price;
        self.settle(|r| match r.cost {
            Cost::Tokens => used.total,
            Cost::UsdMicros => price.map_or(r.amount, |p| p.cost(used.counts)),
            Cost::Requests => r.amount,
        });
    }

    /// Gives every reservation back whole (the call failed).
    pub fn refund_all(self) {
        self.settle(|_| 0);
    }

    fn settle(self, actual: impl Fn(&Reserved) -> u64) {
        let mut ops = Vec::new();
        for r in self.items {
            let actual = actual(&r);
            let (op, n) = if actual < r.amount {
                (Op::Refund, r.amount - actual)
            } else {
                (Op::Charge, actual - r.amount)
            };
            if n > 0 {
                ops.push((r, op, n));
            }
        }
        // Not inside a runtime any more (the node is stopping): nothing to
        // run the reconciliation on.
        if ops.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (router, metrics) = (self.router, self.metrics);
        actix_rt::spawn(async move {
            let runs = ops.into_iter().map(|(r, op, n)| {
                let (router, metrics) = (&router, &metrics);
                async move {
                    let tokens = r.cost == Cost::Tokens;
                    match router.perform(r.key, r.limit, op, n).await {
                        Ok(_) if tokens => {
                            match op {
                                Op::Refund => metrics.tokens_refunded.inc_by(n),
                                _ => metrics.tokens_charged.inc_by(n),
                            };
                        }
                        Ok(_) => {}
                        Err(e) => {
                            metrics.reconcile_errors.inc();
                            warn!(limit = %r.limit, op = op.as_str(), units = n, error = %e,
                                "reconcile failed");
                        }
                    }
                }
            });
            futures_util::future::join_all(runs).await;
        });
    }
}

/// Concurrency leases held for the whole upstream call; released on drop.
pub struct Leases {
    pub router: Router,
    /// `(limit, key, lease id)`.
    pub held: Vec<(Limit, String, u64)>,
}

impl Drop for Leases {
    fn drop(&mut self) {
        if self.held.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        let router = self.router.clone();
        actix_rt::spawn(async move {
            let runs = held.into_iter().map(|(limit, key, id)| {
                let router = &router;
                async move {
                    if let Err(e) = router.perform(key, limit, Op::Release, id).await {
                        // The lease expires after its ttl.
                        warn!(%limit, error = %e, "lease release failed");
                    }
                }
            });
            futures_util::future::join_all(runs).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_with_cached_tokens() {
        let u = Used::of_openai(&json!({"prompt_tokens": 100, "completion_tokens": 20,
            "total_tokens": 120, "prompt_tokens_details": {"cached_tokens": 60}}))
        .unwrap();
        assert_eq!(u.total, 120);
        assert_eq!(
            u.counts,
            TokenCounts {
                prompt: 100,
                cached: 60,
                output: 20
            }
        );
        // Embeddings: prompt and total only.
        let u = Used::of_openai(&json!({"prompt_tokens": 8, "total_tokens": 8})).unwrap();
        assert_eq!((u.total, u.counts.output), (8, 0));
        assert_eq!(Used::of_openai(&json!({})), None);
    }
}
