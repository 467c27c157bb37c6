//! Node-to-node calls: the bincode messages and their hostile-input-safe
//! decoding ([`wire`]), and the one client that sends them ([`client`]).

pub mod client;
pub mod wire;
