//! What every other module builds on, and which imports none of them: the
//! bucket math, the clock, bucket keys, the snapshot format and the
//! decision types.

pub mod bucket;
pub mod clock;
pub mod fence;
pub mod held;
pub mod key;
pub mod lease;
pub mod snapshot;
pub mod token_lease;
pub mod verdict;
