//! This node's shards seen as one: the [`limiter::Limiter`] front that
//! validates a check and sends it to the shard owning its key, and where
//! the shard actors run ([`placement`]).

pub mod limiter;
pub mod placement;
