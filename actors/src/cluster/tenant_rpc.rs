//! The admin API's view of one tenant, from any node: the bucket's owner
//! answers ([`serve_tenant`]); other nodes ask it over the cluster listener
//! (`TenantRequest` through the `ClusterClient`), so every node reports the
//! same state.

use llmtrace_cluster_config::{Limit, QuotaSource};

use crate::cluster::rpc::wire::{TenantOp, WireLimitReport};
use crate::core::verdict::CheckError;
use crate::local::limiter::Limiter;

fn source_byte(s: QuotaSource) -> u8 {
    match s {
        QuotaSource::Default => 0,
        QuotaSource::Config => 1,
        QuotaSource::Runtime => 2,
    }
}

/// The wire byte back to a source (unknown bytes read as default).
pub fn source_of(b: u8) -> QuotaSource {
    match b {
        1 => QuotaSource::Config,
        2 => QuotaSource::Runtime,
        _ => QuotaSource::Default,
    }
}

/// Answers a tenant request on this node's own shards.
pub async fn serve_tenant(
    limiter: &Limiter,
    tenant: &str,
    limit: Limit,
    op: TenantOp,
) -> Result<WireLimitReport, CheckError> {
    if op == TenantOp::Reset {
        limiter.reset(tenant, limit).await?;
    }
    let source = source_byte(limiter.limits().quota_with_source(tenant, limit).1);
    Ok(match limiter.inspect(tenant, limit).await? {
        None => WireLimitReport {
            rate: 0,
            burst: 0,
            source,
            unlimited: true,
            level: 0,
            full_in_ns: 0,
            snapshot_age_ns: None,
            resident: false,
        },
        Some((q, r)) => WireLimitReport {
            rate: q.rate,
            burst: q.burst,
            source,
            unlimited: false,
            level: r.level,
            full_in_ns: r.full_in_ns,
            snapshot_age_ns: r.snapshot_age_ns,
            resident: r.resident,
        },
    })
}
