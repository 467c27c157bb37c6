//! Parses Prometheus text exposition: `name{label="v",...} value` lines, label order free.

/// One sample: metric name, labels sorted by name, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// Label pairs sorted by name.
type Labels = Vec<(String, String)>;

/// Parses a series selector or a sample line prefix: `name` or `name{a="x",b="y"}`.
/// Returns the name, the sorted labels and the rest of the line.
fn parse_series(s: &str) -> Option<(String, Labels, &str)> {
    let s = s.trim_start();
    let name_end = s
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(s.len());
    let name = s[..name_end].to_string();
    if name.is_empty() {
        return None;
    }
    let mut rest = &s[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let close = inner.find('}')?;
        for pair in inner[..close].split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=')?;
            labels.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
        }
        rest = &inner[close + 1..];
    }
    labels.sort();
    Some((name, labels, rest))
}

/// All samples of a metrics page; comments and unparsable lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let (name, labels, rest) = parse_series(line)?;
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// The value of the series `selector` (e.g. `llmtrace_checks_total{decision="allowed"}`):
/// the sum over every sample with that name whose labels include the selector's labels.
/// `None` when no sample matches.
pub fn value(text: &str, selector: &str) -> Option<f64> {
    let (name, want, _) = parse_series(selector)?;
    let matching: Vec<f64> = parse(text)
        .into_iter()
        .filter(|s| s.name == name && want.iter().all(|l| s.labels.contains(l)))
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_order_does_not_matter() {
        let page = "# HELP x\nllmtrace_checks_total{limit=\"requests\",decision=\"allowed\"} 3\n\
                    llmtrace_checks_total{decision=\"refused\",limit=\"requests\"} 2\n\
                    llmtrace_buckets_resident 7\n";
        let q = "llmtrace_checks_total{decision=\"allowed\",limit=\"requests\"}";
        assert_eq!(value(page, q), Some(3.0));
        assert_eq!(value(page, "llmtrace_checks_total"), Some(5.0));
        assert_eq!(value(page, "llmtrace_buckets_resident"), Some(7.0));
        assert_eq!(value(page, "llmtrace_missing"), None);
    }
}
