//! The token lease RPC (`POST /cluster/v1/token-lease`): a node that
//! forwards many checks of one bucket asks its owner for a lease, gives
//! unspent units back, or both. Decoded as hostile input like every
//! node-to-node body (see [`super::wire`]).

use bincode::{Decode, Encode};
use llmtrace_cluster_config::{Limit, RateLimitConfig};

use super::client::Rpc;
use super::wire::{addressed, decode, WireError};
use crate::core::bucket::BucketQuota;

/// "Grant me up to `ask` units of this bucket; here is what I did not
/// spend of lease `give_back`."
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TokenLeaseRequest {
    /// Node id of the holder.
    pub origin: String,
    pub tenant: String,
    /// The limit's name.
    pub limit: String,
    /// Units wanted; 0: only a return.
    pub ask: u64,
    /// `(lease id, unspent units)` of a lease given back.
    pub give_back: Option<(u64, u64)>,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct WireGrant {
    pub id: u64,
    pub units: u64,
    /// How long the holder may spend, counted from before it asked.
    pub ttl_ns: u64,
    /// The quota the bucket was held to: the holder spends only while the
    /// key resolves to the same (an override revokes the lease).
    pub quota: BucketQuota,
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TokenLeaseResponse {
    /// Node id of the node that answered.
    pub node: String,
    pub grant: Option<WireGrant>,
}

impl Rpc for TokenLeaseRequest {
    const PATH: &'static str = "/cluster/v1/token-lease";
    type Response = TokenLeaseResponse;
}

/// Decodes and validates a token lease request.
pub fn decode_token_lease(
    bytes: &[u8],
    limits: &RateLimitConfig,
) -> Result<(TokenLeaseRequest, Limit), WireError> {
    let req: TokenLeaseRequest = decode(bytes)?;
    let limit = addressed(&req.origin, &req.tenant, &req.limit, limits)?;
    Ok((req, limit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::wire::{encode, WIRE_VERSION};

    fn limits() -> RateLimitConfig {
        RateLimitConfig::with_requests(1, 1)
    }

    fn req() -> TokenLeaseRequest {
        TokenLeaseRequest {
            origin: "b".into(),
            tenant: "t".into(),
            limit: "requests".into(),
            ask: 10,
            give_back: Some((7, 3)),
        }
    }

    #[test]
    fn round_trips() {
        let (r, limit) = decode_token_lease(&encode(&req()), &limits()).unwrap();
        assert_eq!((r, limit), (req(), Limit::REQUESTS));
    }

    #[test]
    fn refuses_hostile_input() {
        let l = limits();
        let mut bad_origin = req();
        bad_origin.origin = "no spaces".into();
        assert_eq!(
            decode_token_lease(&encode(&bad_origin), &l),
            Err(WireError::BadOrigin)
        );
        let mut bad_limit = req();
        bad_limit.limit = "nope".into();
        assert!(decode_token_lease(&encode(&bad_limit), &l).is_err());
        let mut bad_key = req();
        bad_key.tenant = "k".repeat(300);
        assert!(decode_token_lease(&encode(&bad_key), &l).is_err());
        let mut body = encode(&req());
        body.push(0);
        assert!(matches!(
            decode_token_lease(&body, &l),
            Err(WireError::Decode(_))
        ));
        body.truncate(body.len() - 3);
        assert!(decode_token_lease(&body, &l).is_err(), "truncated");
        assert_eq!(
            decode_token_lease(&[WIRE_VERSION + 1, 0], &l),
            Err(WireError::Version(WIRE_VERSION + 1))
        );
        assert_eq!(decode_token_lease(&[], &l), Err(WireError::Empty));
        // A string length claiming far more than the body holds.
        let huge = [WIRE_VERSION, 0xfc, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode_token_lease(&huge, &l).is_err());
    }
}
