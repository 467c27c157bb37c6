//! What an admitted call still owes or holds after its answer:
//! - a [`Reservation`]: the `tokens` and `usd_micros` taken before
//!   forwarding, reconciled with the usage the answer reports (the unused
//!   part refunded, the excess charged), or given back whole when the call
//!   failed;
//! - [`Leases`]: the concurrency leases taken for the whole upstream call,
//!   released when dropped (the answer ended, failed, or the client went
//!   away and actix dropped the body).
//!
//! Both run their operations in the background on the buckets' owners, in
//! one task per call.

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
    /// part or charges the excess, on the bucket's owner; releases the
    /// call's `leases` with them. Runs in the background.
    pub fn settle(self, usage: &Usage, leases: Option<Leases>) {
        let (price, total, counts) = (self.price, usage.total(), usage.price_counts());
        self.apply(
            |r| match r.cost {
                Cost::Tokens => total,
                Cost::UsdMicros => price.map_or(r.amount, |p| p.cost(counts)),
                Cost::Requests => r.amount,
            },
            leases,
        );
    }

    /// Gives every reservation back whole (the call failed).
    pub fn refund_all(self) {
        self.apply(|_| 0, None);
    }

    fn apply(self, actual: impl Fn(&Reserved) -> u64, leases: Option<Leases>) {
        let mut owed = Vec::new();
        for r in self.items {
            let actual = actual(&r);
            let (op, n) = if actual < r.amount {
                (Op::Refund, r.amount - actual)
            } else {
                (Op::Charge, actual - r.amount)
            };
            if n > 0 {
                let tokens = r.cost == Cost::Tokens;
                owed.push(Owed {
                    limit: r.limit,
                    key: r.key,
                    op,
                    units: n,
                    tokens,
                });
            }
        }
        // One background task for the call: its releases go with the
        // reconciliation.
        if let Some(mut leases) = leases {
            owed.extend(leases.owed());
        }
        run(self.router, self.metrics, owed);
    }
}

/// Concurrency leases held for the whole upstream call; released on drop.
pub struct Leases {
    pub router: Router,
    pub metrics: Arc<ProxyMetrics>,
    /// `(limit, key, lease id)`.
    pub held: Vec<(Limit, String, u64)>,
}

impl Leases {
    /// The releases of the leases, taken out (nothing is left to release on
    /// drop).
    fn owed(&mut self) -> impl Iterator<Item = Owed> {
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|(limit, key, id)| Owed {
                limit,
                key,
                op: Op::Release,
                units: id,
                tokens: false,
            })
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        let owed = self.owed().collect();
        run(self.router.clone(), Arc::clone(&self.metrics), owed);
    }
}

/// One operation an admitted call owes after its answer: a reconciliation
/// (refund or charge of `units`) or the release of lease `units`.
struct Owed {
    limit: Limit,
    key: String,
    op: Op,
    units: u64,
    /// Counted in the proxy's token metrics.
    tokens: bool,
}

/// Performs `owed` on the buckets' owners, in one background task.
fn run(router: Router, metrics: Arc<ProxyMetrics>, owed: Vec<Owed>) {
    // Not inside a runtime any more (the node is stopping): nothing to run
    // them on (a lease expires after its ttl).
    if owed.is_empty() || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    actix_rt::spawn(async move {
        let runs = owed.into_iter().map(|o| perform(&router, &metrics, o));
        futures_util::future::join_all(runs).await;
    });
}

async fn perform(router: &Router, metrics: &ProxyMetrics, o: Owed) {
    let (limit, op, n) = (o.limit, o.op, o.units);
    match router.perform(o.key, limit, op, n).await {
        Ok(_) if o.tokens => {
            match op {
                Op::Refund => metrics.tokens_refunded.inc_by(n),
                _ => metrics.tokens_charged.inc_by(n),
            };
        }
        Ok(_) => {}
        // The lease expires after its ttl.
        Err(e) if op == Op::Release => warn!(%limit, error = %e, "lease release failed"),
        Err(e) => {
            metrics.reconcile_errors.inc();
            warn!(%limit, op = op.as_str(), units = n, error = %e, "reconcile failed");
        }
    }
}
