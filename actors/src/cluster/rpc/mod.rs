//! Node-to-node calls: the bincode messages and their hostile-input-safe
//! decoding ([`wire`]), the one client that sends them ([`client`]), the long-lived
//! forwarding stream ([`stream`]), and the
//! mutual TLS both ends of the cluster port use when configured ([`tls`]).

pub mod client;
pub mod stream;
pub mod tls;
pub mod token_lease_wire;
pub mod wire;
