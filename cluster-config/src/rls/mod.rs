//! The Envoy rate limit service (RLS v3 gRPC) configuration: the `[rls]`
//! block (listener, rule files, response headers) and the rules, read from
//! envoyproxy/ratelimit's YAML format unchanged.
//!
//! - [`file`]: parsing the YAML files (one, or a directory of them); every
//!   error names the file, the line and the key.
//! - [`rules`]: the rule tree of each domain and how a request's descriptor
//!   finds its rule (exact value, then wildcard value, then key only), as
//!   envoyproxy/ratelimit does.
//! - [`table`]: the rules in force, swapped whole on reload, and the policy
//!   of every RLS limit (`rls.<hash>` for a rule, `rls.override.<unit>.<n>`
//!   for a per-call override) so every node resolves them by name.
//! - [`settings`]: the `[rls]` table and its flags.

pub mod file;
pub mod rules;
pub mod settings;
pub mod table;

pub use file::{load_rules, RlsLoadError};
pub use rules::{bucket_key, Algorithm, RlsRules, Rule, Unit};
pub use settings::{RlsConfig, RlsSettings};
pub use table::{override_limit, RlsLimits, MAX_OVERRIDE_LIMITS};
