//! The node-to-node wire format: one bincode 2 message per HTTP body, with a
//! leading version byte. Input from the cluster port is hostile until decoded:
//! bodies are capped ([`MAX_BODY_BYTES`]), decoding is capped by bincode's
//! allocation limit, batch length and tenant ids are validated, unknown
//! versions and trailing bytes are refused.

use bincode::{config, Decode, Encode};
use llmtrace_cluster_config::{
    validate_key, validate_tenant_id, Limit, OwnerUnreachable, RateLimitConfig,
};
use thiserror::Error;

use super::client::Rpc;
use crate::core::bucket::{BucketQuota, Decision, Op};
use crate::core::verdict::{ErrorCode, Verdict};
use crate::metrics::top_refused::{self, Counted, Summary};

/// Version of every node-to-node message. 2: checks carry an operation
/// (take, refund, charge), answers the quota's period, bucket levels are
/// signed. 3: limits are named (any `[limits.<name>]`), keys are up to 256
/// characters, answers carry the quota of any kind. A node refuses other
/// versions whole: in a cluster of mixed versions, forwards between versions
/// fail and `on_owner_unreachable` decides (upgrade one node at a time,
/// quickly, or accept degraded decisions meanwhile).
pub const WIRE_VERSION: u8 = 3;
/// Largest node-to-node body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most checks in one forwarded batch.
pub const MAX_BATCH_ITEMS: usize = 4096;
/// Header carrying the cluster secret.
pub const SECRET_HEADER: &str = "x-llmtrace-cluster-secret";

/// One forwarded check.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WireCheck {
    /// Unique per origin node; a retry reuses it so the owner can dedup.
    pub id: u64,
    /// The key the limit counts under.
    pub tenant: String,
    /// The limit's name.
    pub limit: String,
    /// Index into `Op::ALL` (0: take).
    pub op: u8,
    pub cost: u64,
    /// True when this is a retry of an earlier send of the same id.
    pub retry: bool,
    /// Times this check has been forwarded, this send included. The receiver
    /// forwards again only while this is below [`MAX_FORWARDS`].
    pub hops: u8,
}

/// A check is forwarded at most this many times: once by the node that
/// received it, once more by a receiver whose ring disagrees (hop limit 1).
pub const MAX_FORWARDS: u8 = 2;

/// A batch of checks from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BatchRequest {
    /// Node id of the sender (scope of the check ids).
    pub origin: String,
    pub checks: Vec<WireCheck>,
}

/// The answer to one forwarded check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum WireResult {
    Unlimited,
    /// The owner's decision and the quota it was made under.
    Limited {
        quota: BucketQuota,
        decision: Decision,
    },
    /// The check itself was invalid (cost, key, limit).
    Invalid(ErrorCode),
    /// The owner could not decide (shutting down, duplicate still in flight).
    Unavailable(ErrorCode),
}

/// The answer to one forwarded check and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct WireAnswer {
    pub result: WireResult,
    /// Set when the node that decided could not reach the owner and its
    /// `on_owner_unreachable` policy decided: 0 local, 1 allow, 2 deny.
    pub degraded: Option<u8>,
}

impl WireAnswer {
    pub fn plain(result: WireResult) -> Self {
        WireAnswer {
            result,
            degraded: None,
        }
    }

    pub fn degraded_policy(&self) -> Option<OwnerUnreachable> {
        self.degraded.map(|p| match p {
            1 => OwnerUnreachable::Allow,
            2 => OwnerUnreachable::Deny,
            _ => OwnerUnreachable::Local,
        })
    }
}

/// The wire byte of a policy.
pub fn policy_byte(p: OwnerUnreachable) -> u8 {
    match p {
        OwnerUnreachable::Local => 0,
        OwnerUnreachable::Allow => 1,
        OwnerUnreachable::Deny => 2,
    }
}

impl Rpc for BatchRequest {
    const PATH: &'static str = "/cluster/v1/checks";
    type Response = BatchResponse;
}

/// Answers in the order of the request's checks.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BatchResponse {
    /// Node id of the node that answered.
    pub node: String,
    pub results: Vec<WireAnswer>,
}

impl From<Verdict> for WireResult {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Unlimited => WireResult::Unlimited,
            Verdict::Limited { quota, decision } => WireResult::Limited { quota, decision },
        }
    }
}

impl WireResult {
    /// The verdict carried, if the owner decided.
    pub fn verdict(self) -> Option<Verdict> {
        match self {
            WireResult::Unlimited => Some(Verdict::Unlimited),
            WireResult::Limited { quota, decision } => Some(Verdict::Limited { quota, decision }),
            WireResult::Invalid(_) | WireResult::Unavailable(_) => None,
        }
    }
}

/// "Give me the bucket of this key and stop serving it."
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HandoffRequest {
    /// Node id of the new owner (where later checks for the key go).
    pub origin: String,
    pub tenant: String,
    /// The limit's name.
    pub limit: String,
}

/// A new owner takes a moved bucket.
impl Rpc for HandoffRequest {
    const PATH: &'static str = "/cluster/v1/handoff";
    type Response = HandoffResponse;
}

/// The previous owner's state of the key, if it held one.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HandoffResponse {
    pub state: Option<crate::core::held::Held>,
}

/// Buckets a leaving node pushes to their new owner.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct InstallRequest {
    pub origin: String,
    /// `(key, limit name, state)`.
    pub buckets: Vec<(String, String, crate::core::held::Held)>,
}

/// A leaving node hands its buckets over.
impl Rpc for InstallRequest {
    const PATH: &'static str = "/cluster/v1/install";
    type Response = InstallResponse;
}

/// How many of the pushed buckets the new owner installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct InstallResponse {
    pub installed: u32,
}

/// Most buckets in one push.
pub const MAX_INSTALL_ITEMS: usize = 4096;

/// Decodes and validates a push; items of unknown limits or invalid keys
/// are dropped.
pub fn decode_install(
    bytes: &[u8],
    limits: &RateLimitConfig,
) -> Result<Vec<(String, Limit, crate::core::held::Held)>, WireError> {
    let req: InstallRequest = decode(bytes)?;
    validate_tenant_id(&req.origin).map_err(|_| WireError::BadOrigin)?;
    if req.buckets.len() > MAX_INSTALL_ITEMS {
        return Err(WireError::TooManyItems(req.buckets.len()));
    }
    Ok(req
        .buckets
        .into_iter()
        .filter(|(t, _, _)| validate_key(t).is_ok())
        .filter_map(|(t, l, s)| Some((t, limits.limit(&l)?, s)))
        .collect())
}

/// Decodes and validates a handoff request.
pub fn decode_handoff(
    bytes: &[u8],
    limits: &RateLimitConfig,
) -> Result<(HandoffRequest, Limit), WireError> {
    let req: HandoffRequest = decode(bytes)?;
    let limit = addressed(&req.origin, &req.tenant, &req.limit, limits)?;
    Ok((req, limit))
}

/// Validates the origin, key and limit a request about one bucket names.
pub(super) fn addressed(
    origin: &str,
    key: &str,
    limit: &str,
    limits: &RateLimitConfig,
) -> Result<Limit, WireError> {
    validate_tenant_id(origin).map_err(|_| WireError::BadOrigin)?;
    validate_key(key).map_err(|_| WireError::Decode("invalid key".into()))?;
    limits
        .limit(limit)
        .ok_or_else(|| WireError::Decode(format!("unknown limit {limit:?}")))
}

/// What the tenant RPC does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum TenantOp {
    /// Report the bucket without taking units.
    Inspect,
    /// Refill the bucket (and its snapshot), then report it.
    Reset,
}

/// "Report (or refill) the bucket of this key."
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TenantRequest {
    /// Node id of the asking node.
    pub origin: String,
    pub tenant: String,
    /// The limit's name.
    pub limit: String,
    pub op: TenantOp,
}

/// The admin API of any node asks a bucket's owner for its state, or to
/// refill it.
impl Rpc for TenantRequest {
    const PATH: &'static str = "/cluster/v1/tenant";
    type Response = TenantResponse;
}

/// One bucket as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct WireLimitReport {
    /// The bucket's quota; `None`: no bucket applies (limiting disabled,
    /// rate 0, or a concurrency limit).
    pub quota: Option<BucketQuota>,
    /// 0 default, 1 config, 2 runtime.
    pub source: u8,
    /// Level in nano-units (whole units: `level / 10^9`), 0 in debt.
    pub level: u64,
    pub full_in_ns: u64,
    pub snapshot_age_ns: Option<u64>,
    pub resident: bool,
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TenantResponse {
    /// Node id of the node that answered.
    pub node: String,
    pub report: WireLimitReport,
}

/// Decodes and validates a tenant request.
pub fn decode_tenant(
    bytes: &[u8],
    limits: &RateLimitConfig,
) -> Result<(TenantRequest, Limit), WireError> {
    let req: TenantRequest = decode(bytes)?;
    let limit = addressed(&req.origin, &req.tenant, &req.limit, limits)?;
    Ok((req, limit))
}

/// "Send me your most refused keys of the last minute."
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TopRefusedRequest {
    /// Node id of the asking node.
    pub origin: String,
}

/// The admin API of any node merges every ready member's most refused keys.
impl Rpc for TopRefusedRequest {
    const PATH: &'static str = "/cluster/v1/top-refused";
    type Response = TopRefusedResponse;
}

/// One listed key of a [`TopRefusedResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WireRefused {
    /// The limit's name.
    pub limit: String,
    pub key: String,
    pub count: u64,
    pub error: u64,
}

/// A node's [`Summary`] of its refusals.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TopRefusedResponse {
    /// Node id of the node that answered.
    pub node: String,
    pub entries: Vec<WireRefused>,
    pub floor: u64,
    pub total: u64,
}

impl TopRefusedResponse {
    pub fn new(node: &str, summary: &Summary) -> Self {
        TopRefusedResponse {
            node: node.to_string(),
            entries: summary
                .entries
                .iter()
                .map(|e| WireRefused {
                    limit: e.limit.as_str().to_string(),
                    key: e.key.to_string(),
                    count: e.count,
                    error: e.error,
                })
                .collect(),
            floor: summary.floor,
            total: summary.total,
        }
    }

    /// The summary of a peer's answer: at most [`top_refused::K`] keys,
    /// each valid, with `error <= count`; keys of limits this node does not
    /// know are left out (they stay bounded by the floor of the rest).
    pub fn summary(self, limits: &RateLimitConfig) -> Result<Summary, WireError> {
        if self.entries.len() > top_refused::K {
            return Err(WireError::Decode(format!(
                "{} keys exceed {}",
                self.entries.len(),
                top_refused::K
            )));
        }
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in self.entries {
            validate_key(&e.key).map_err(|_| WireError::Decode("invalid key".into()))?;
            if e.error > e.count || e.count > self.total {
                return Err(WireError::Decode("count out of bounds".into()));
            }
            if let Some(limit) = limits.limit(&e.limit) {
                entries.push(Counted {
                    limit,
                    key: e.key.into(),
                    count: e.count,
                    error: e.error,
                });
            }
        }
        // Sorted as every summary is, whatever order the peer sent.
        Ok(top_refused::merge(
            &[Summary {
                entries,
                floor: self.floor.min(self.total),
                total: self.total,
            }],
            top_refused::K,
        ))
    }
}

/// Decodes and validates a top-refused request.
pub fn decode_top_refused(bytes: &[u8]) -> Result<TopRefusedRequest, WireError> {
    let req: TopRefusedRequest = decode(bytes)?;
    validate_tenant_id(&req.origin).map_err(|_| WireError::BadOrigin)?;
    Ok(req)
}

/// Why a node-to-node body was refused as a whole.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("empty body")]
    Empty,
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("body of {0} bytes exceeds {MAX_BODY_BYTES}")]
    TooLarge(usize),
    #[error("undecodable body: {0}")]
    Decode(String),
    #[error("batch of {0} checks exceeds {MAX_BATCH_ITEMS}")]
    TooManyItems(usize),
    #[error("invalid origin node id")]
    BadOrigin,
}

fn cfg() -> impl config::Config {
    config::standard().with_limit::<MAX_BODY_BYTES>()
}

/// Encodes a message with the leading version byte.
pub fn encode<T: Encode>(msg: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(WIRE_VERSION);
    bincode::encode_into_std_write(msg, &mut out, cfg()).expect("writing to a Vec cannot fail");
    out
}

/// Decodes a message written by [`encode`], refusing anything else.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, used) =
        bincode::decode_from_slice(body, cfg()).map_err(|e| WireError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Decode(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// Decodes and validates a batch request's envelope.
pub fn decode_request(bytes: &[u8]) -> Result<BatchRequest, WireError> {
    let req: BatchRequest = decode(bytes)?;
    if req.checks.len() > MAX_BATCH_ITEMS {
        return Err(WireError::TooManyItems(req.checks.len()));
    }
    validate_tenant_id(&req.origin).map_err(|_| WireError::BadOrigin)?;
    Ok(req)
}

/// Validates one forwarded check's fields (the quota checks come later).
pub fn validate_check(c: &WireCheck, limits: &RateLimitConfig) -> Result<(Limit, Op), ErrorCode> {
    validate_key(&c.tenant).map_err(|_| ErrorCode::BadTenant)?;
    if c.cost == 0 {
        return Err(ErrorCode::ZeroCost);
    }
    let limit = limits.limit(&c.limit).ok_or(ErrorCode::UnknownLimit)?;
    let op = Op::ALL
        .get(usize::from(c.op))
        .copied()
        .ok_or(ErrorCode::UnknownOp)?;
    Ok((limit, op))
}

#[cfg(test)]
mod tests;
