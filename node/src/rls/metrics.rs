//! Prometheus series of the RLS service: decisions per domain and rule
//! name (labels bounded by the rule files) and rule reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use llmtrace_actors::metrics::{counter_family, Counter, Family, Label, Registry, Scraped};
use llmtrace_cluster_config::rls::Rule;
use llmtrace_cluster_config::{Limit, RlsRules};

/// What an RLS descriptor with a rule was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    Allowed,
    Refused,
    /// A `shadow_mode` rule would have refused; answered OK.
    ShadowRefused,
}

const DECISIONS: [&str; 3] = ["allowed", "refused", "shadow_refused"];

type Counts = Arc<[AtomicU64; 3]>;

/// Counters of the RLS service.
pub struct RlsMetrics {
    /// The counters of each rule in force, by its limit.
    by_limit: ArcSwap<HashMap<Limit, Counts>>,
    /// Every (domain, rule name) seen since start, so a reload keeps counts.
    all: Mutex<Vec<((String, String), Counts)>>,
    pub reloads_ok: Counter,
    pub reloads_invalid: Counter,
    reloads: Family<Label, Counter>,
}

impl Default for RlsMetrics {
    fn default() -> Self {
        let (reloads, [reloads_ok, reloads_invalid]) = counter_family("result", ["ok", "invalid"]);
        RlsMetrics {
            by_limit: ArcSwap::default(),
            all: Mutex::default(),
            reloads_ok,
            reloads_invalid,
            reloads,
        }
    }
}

impl RlsMetrics {
    /// Points the counters at the rules of `rules` (a rule keeps its counts
    /// across reloads while its domain and name stay).
    pub fn track(&self, rules: &RlsRules) {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_limit = HashMap::new();
        for rule in rules.rules() {
            let id = (rule.domain.clone(), rule.name.clone());
            let counts = match all.iter().find(|(k, _)| *k == id) {
                Some((_, c)) => Arc::clone(c),
                None => {
                    let c: Counts = Arc::default();
                    all.push((id, Arc::clone(&c)));
                    c
                }
            };
            by_limit.insert(rule.limit, counts);
        }
        self.by_limit.store(Arc::new(by_limit));
    }

    /// Counts one decision of `rule`.
    pub fn count(&self, rule: &Rule, decided: Decided) {
        if let Some(c) = self.by_limit.load().get(&rule.limit) {
            c[decided as usize].fetch_add(1, Relaxed);
        }
    }

    fn decisions(&self) -> Vec<([(&'static str, String); 3], u64)> {
        let all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(all.len() * 3);
        for ((domain, rule), c) in all.iter() {
            for (i, decision) in DECISIONS.into_iter().enumerate() {
                out.push((
                    [
                        ("domain", domain.clone()),
                        ("rule", rule.clone()),
                        ("decision", decision.to_string()),
                    ],
                    c[i].load(Relaxed),
                ));
            }
        }
        out
    }

    /// Registers the RLS series.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        let m = Arc::clone(self);
        registry.register(
            "llmtrace_rls_decisions",
            "RLS descriptors with a rule, by domain, rule name and decision",
            Scraped::counters(move || m.decisions()),
        );
        registry.register(
            "llmtrace_rls_config_reloads",
            "RLS rule reloads, by result (an invalid file leaves the rules in force)",
            self.reloads.clone(),
        );
    }
}
