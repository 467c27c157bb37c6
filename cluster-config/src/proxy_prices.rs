//! Model prices of the proxy's `usd_micros` costs: `[proxy.prices."<model>"]`
//! in dollars per million tokens, converted once (rounded up) to integer
//! micro-dollars per million tokens; every cost after that is integer math.
//!
//! ```toml
//! [proxy.prices."gpt-4o"]
//! input_per_million = 2.5
//! cached_input_per_million = 1.25   # default: the input price
//! output_per_million = 10.0
//!
//! [proxy.prices.default]            # for models without a price
//! input_per_million = 5.0
//! output_per_million = 15.0
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::ConfigError;

/// The name of the price used for a model without its own.
pub const DEFAULT_PRICE: &str = "default";
/// Highest price accepted, in dollars per million tokens.
pub const MAX_PRICE_PER_MILLION: f64 = 1_000_000.0;

/// One `[proxy.prices."<model>"]` table as the file gives it.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBlock {
    pub input_per_million: f64,
    pub cached_input_per_million: Option<f64>,
    pub output_per_million: f64,
}

/// A model's price, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
}

/// Tokens of one call, by how they are priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenCounts {
    /// Prompt tokens, cached ones included.
    pub prompt: u64,
    /// Of the prompt tokens, those read from the provider's cache.
    pub cached: u64,
    pub output: u64,
}

impl Price {
    /// The cost of `t` in micro-dollars, rounded up (never under-charged).
    pub fn cost(&self, t: TokenCounts) -> u64 {
        let cached = t.cached.min(t.prompt);
        let part = |n: u64, price: u64| u128::from(n) * u128::from(price);
        let micro_millionths = part(t.prompt - cached, self.input)
            .saturating_add(part(cached, self.cached_input))
            .saturating_add(part(t.output, self.output));
        u64::try_from(micro_millionths.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// Dollars per million tokens to micro-dollars per million, rounded up
/// (after rounding to the nano-dollar, so `1.1` is 1_100_000, not 1_100_001
/// from the binary fraction).
pub fn dollars_to_micros(dollars: f64) -> Option<u64> {
    if !dollars.is_finite() || !(0.0..=MAX_PRICE_PER_MILLION).contains(&dollars) {
        return None;
    }
    let nanos = (dollars * 1e9).round() as u64;
    Some(nanos.div_ceil(1000))
}

/// The prices of a proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prices {
    pub models: BTreeMap<String, Price>,
    /// The `default` table: the price of a model without its own.
    pub default: Option<Price>,
    /// Refuse a call of an unpriced model even with a `default` price.
    pub refuse_unpriced: bool,
}

impl Prices {
    /// The price of `model`; `None`: the call must be refused.
    pub fn of(&self, model: &str) -> Option<Price> {
        match self.models.get(model) {
            Some(p) => Some(*p),
            None if self.refuse_unpriced => None,
            None => self.default,
        }
    }

    pub fn resolve(
        blocks: &BTreeMap<String, PriceBlock>,
        refuse_unpriced: bool,
    ) -> Result<Prices, ConfigError> {
        let mut prices = Prices {
            refuse_unpriced,
            ..Prices::default()
        };
        for (model, b) in blocks {
            let at = |f: &str| format!("proxy.prices.\"{model}\".{f}");
            let micros = |field: &str, v: f64| {
                dollars_to_micros(v).ok_or_else(|| {
                    ConfigError::invalid(
                        at(field),
                        format!("{v} must be 0 to {MAX_PRICE_PER_MILLION} dollars per million"),
                    )
                })
            };
            let input = micros("input_per_million", b.input_per_million)?;
            let price = Price {
                input,
                cached_input: match b.cached_input_per_million {
                    Some(c) => micros("cached_input_per_million", c)?,
                    None => input,
                },
                output: micros("output_per_million", b.output_per_million)?,
            };
            if model == DEFAULT_PRICE {
                prices.default = Some(price);
            } else {
                prices.models.insert(model.clone(), price);
            }
        }
        Ok(prices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_convert_once_rounding_up() {
        assert_eq!(dollars_to_micros(2.5), Some(2_500_000));
        assert_eq!(dollars_to_micros(1.1), Some(1_100_000));
        assert_eq!(dollars_to_micros(0.15), Some(150_000));
        assert_eq!(dollars_to_micros(0.0000011), Some(2));
        assert_eq!(dollars_to_micros(0.0), Some(0));
        assert_eq!(dollars_to_micros(-1.0), None);
        assert_eq!(dollars_to_micros(f64::NAN), None);
    }

    #[test]
    fn costs_are_exact_and_round_up() {
        let p = Price {
            input: 2_500_000,
            cached_input: 1_250_000,
            output: 10_000_000,
        };
        let t = |prompt, cached, output| TokenCounts {
            prompt,
            cached,
            output,
        };
        // 1000 × 2.5 + 500 × 10 = 7500 µ$.
        assert_eq!(p.cost(t(1000, 0, 500)), 7_500);
        // 600 uncached × 2.5 + 400 cached × 1.25 = 1500 + 500.
        assert_eq!(p.cost(t(1000, 400, 0)), 2_000);
        // One token at 1.25 µ$: 2 µ$.
        assert_eq!(p.cost(t(1, 1, 0)), 2);
        // Cached above the prompt counts as the prompt.
        assert_eq!(p.cost(t(10, 50, 0)), 13);
        assert_eq!(p.cost(t(0, 0, 0)), 0);
        let huge = Price {
            input: u64::MAX,
            cached_input: 0,
            output: u64::MAX,
        };
        assert_eq!(huge.cost(t(u64::MAX, 0, u64::MAX)), u64::MAX);
    }

    #[test]
    fn default_and_refusal_of_unpriced_models() {
        let mut blocks = BTreeMap::new();
        let b = |i, o| PriceBlock {
            input_per_million: i,
            cached_input_per_million: None,
            output_per_million: o,
        };
        blocks.insert("gpt-4o".to_string(), b(2.5, 10.0));
        blocks.insert(DEFAULT_PRICE.to_string(), b(1.0, 2.0));
        let p = Prices::resolve(&blocks, false).unwrap();
        assert_eq!(p.of("gpt-4o").unwrap().cached_input, 2_500_000);
        assert_eq!(p.of("other").unwrap().input, 1_000_000);
        let p = Prices::resolve(&blocks, true).unwrap();
        assert_eq!(p.of("other"), None);
        assert!(p.of("gpt-4o").is_some());
        blocks.insert("bad".to_string(), b(-1.0, 2.0));
        let e = Prices::resolve(&blocks, false).unwrap_err().to_string();
        assert!(e.contains("proxy.prices.\"bad\".input_per_million"), "{e}");
    }
}
