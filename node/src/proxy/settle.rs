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
use llmtrace_cluster_config::proxy_prices::Price;
use llmtrace_cluster_config::proxy_rules::Cost;
use llmtrace_cluster_config::Limit;
use tracing::warn;

use super::metrics::ProxyMetrics;
use super::usage::Usage;

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
    /// Settles every item at what the call consumed: refunds the unused
    /// part or charges the excess, on the bucket's owner. Runs in the
    /// background.
    pub fn settle(self, usage: &Usage) {
        let (price, total, counts) = (self.price, usage.total(), usage.price_counts());
        self.apply(|r| match r.cost {
            Cost::Tokens => total,
            Cost::UsdMicros => price.map_or(r.amount, |p| p.cost(counts)),
            Cost::Requests => r.amount,
        });
    }

    /// Gives every reservation back whole (the call failed).
    pub fn refund_all(self) {
        self.apply(|_| 0);
    }

    fn apply(self, actual: impl Fn(&Reserved) -> u64) {
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
