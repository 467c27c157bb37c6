//! The admin API's view of one tenant, from any node: the bucket's owner
//! answers ([`serve_tenant`]); other nodes ask it over the cluster listener
//! (`TenantRequest` through the `ClusterClient`), so every node reports the
//! same state.

use llmtrace_cluster_config::{Limit, PolicySource};

use crate::cluster::rpc::wire::{TenantOp, WireLimitReport};
use crate::core::verdict::CheckError;
use crate::local::limiter::Limiter;

fn source_byte(s: PolicySource) -> u8 {
    match s {
        PolicySource::Default => 0,
        PolicySource::Config => 1,
        PolicySource::Runtime => 2,
    }
}

/// The wire byte back to a source (unknown bytes read as default).
pub fn source_of(b: u8) -> PolicySource {
    match b {
        1 => PolicySource::Config,
        2 => PolicySource::Runtime,
        _ => PolicySource::Default,
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
    let source = source_byte(limiter.limits().policy_with_source(tenant, limit).1);
    Ok(match limiter.inspect(tenant, limit).await? {
        None => WireLimitReport {
            quota: None,
            source,
            level: 0,
            full_in_ns: 0,
            snapshot_age_ns: None,
            resident: false,
        },
        Some((q, r)) => WireLimitReport {
            quota: Some(q),
            source,
            level: r.level,
            full_in_ns: r.full_in_ns,
            snapshot_age_ns: r.snapshot_age_ns,
            resident: r.resident,
        },
    })
}
