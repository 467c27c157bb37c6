//! Gateway configurations of the proxy's tests and benchmark, as TOML: the
//! `[limits.<name>]` blocks and the `[[proxy.rules]]` that charge them, and
//! the gpt-4o price (dollars per million tokens).

/// One `[limits.<name>]` block: its name and its `key = value` lines (TOML
/// values, written as given).
pub type LimitBlock<'a> = (&'a str, &'a [(&'a str, &'a str)]);

/// One `[[proxy.rules]]` item: limit, key template, cost (`None`: requests).
pub type RuleItem<'a> = (&'a str, &'a str, Option<&'a str>);

/// The price of gpt-4o, cached input included.
pub const GPT_4O_PRICE: &str = r#"
[proxy.prices."gpt-4o"]
input_per_million = 2.5
cached_input_per_million = 1.25
output_per_million = 10.0
"#;

/// The limits, then the rules, then the gpt-4o price.
pub fn gateway_toml(limits: &[LimitBlock<'_>], rules: &[RuleItem<'_>]) -> String {
    let mut out = String::new();
    for (name, lines) in limits {
        out += &format!("\n[limits.{name}]\n");
        for (k, v) in lines.iter() {
            out += &format!("{k} = {v}\n");
        }
    }
    for (limit, key, cost) in rules {
        out += &format!("\n[[proxy.rules]]\nlimit = \"{limit}\"\nkey = \"{key}\"\n");
        if let Some(cost) = cost {
            out += &format!("cost = \"{cost}\"\n");
        }
    }
    out + GPT_4O_PRICE
}
