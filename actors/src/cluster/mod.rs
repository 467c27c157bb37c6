//! Everything that spans nodes: who is in the cluster ([`view`], [`gossip`]
//! over [`gossip_transport`], sealed by [`gossip_seal`],
//! [`control`], [`overrides`], whether its view is fresh: [`freshness`]),
//! where a check is decided ([`router`],
//! [`forwarder`], [`dedup`]), how buckets move between owners
//! ([`handoff_client`]), the admin API's reach to a bucket's owner
//! ([`tenant_rpc`]) and the node-to-node wire ([`rpc`]).

pub mod control;
pub mod dedup;
pub mod forwarder;
pub mod freshness;
pub mod gossip;
pub mod gossip_seal;
pub mod gossip_transport;
pub mod handoff_client;
pub mod overrides;
pub mod router;
pub mod rpc;
pub mod tenant_rpc;
pub mod token_leases;
pub mod view;
