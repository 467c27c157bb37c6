//! Parses Prometheus text exposition: `name{label="v",...} value` lines, label order free.
//! Series are compared by name and labels, never by substring, so `x 1` and `x 10` (or
//! `x_total` and `x_total_more`) are told apart. Histograms give Prometheus-style
//! quantiles.

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
    sum(&parse(text), selector)
}

/// [`value`] over samples already parsed.
pub fn sum(samples: &[Sample], selector: &str) -> Option<f64> {
    let (name, want, _) = parse_series(selector)?;
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|l| s.labels.contains(l)))
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// The cumulative buckets of one histogram: `(upper bound, count)` sorted by bound,
/// `+Inf` last; series that differ in other labels than `le` are summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram(pub Vec<(f64, f64)>);

/// A quantile and the bounds of the bucket that holds it (seconds, for durations).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantile {
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

impl Histogram {
    /// The `{name}_bucket` series of a page.
    pub fn of(samples: &[Sample], name: &str) -> Histogram {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for s in samples.iter().filter(|s| s.name == bucket) {
            let Some(le) = s.labels.iter().find(|(k, _)| k == "le") else {
                continue;
            };
            let Ok(le) = le.1.parse::<f64>() else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, count)) => *count += s.value,
                None => buckets.push((le, s.value)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram(buckets)
    }

    /// The observations made since `before` (same buckets).
    pub fn since(&self, before: &Histogram) -> Histogram {
        let old = |le: f64| {
            before
                .0
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c)
        };
        Histogram(self.0.iter().map(|&(le, c)| (le, c - old(le))).collect())
    }

    /// Both histograms' observations (same buckets; an empty one adds nothing).
    pub fn plus(&self, other: &Histogram) -> Histogram {
        if self.0.is_empty() {
            return other.clone();
        }
        let more = |le: f64| {
            other
                .0
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c)
        };
        Histogram(self.0.iter().map(|&(le, c)| (le, c + more(le))).collect())
    }

    /// The `q` quantile, Prometheus-style: linear interpolation inside the bucket that
    /// holds the rank (the first bucket's lower edge is 0; in the `+Inf` bucket the
    /// value is its lower edge). None without observations.
    pub fn quantile(&self, q: f64) -> Option<Quantile> {
        let total = self.0.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut prev_le, mut prev_c) = (0.0, 0.0);
        for &(le, c) in &self.0 {
            if c >= rank && c > prev_c {
                let value = if le.is_infinite() {
                    prev_le
                } else {
                    prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
                };
                return Some(Quantile {
                    value,
                    lower: prev_le,
                    upper: le,
                });
            }
            (prev_le, prev_c) = (le, c);
        }
        None
    }
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

    #[test]
    fn a_series_is_told_apart_from_a_longer_name_and_value() {
        let page = "llmtrace_restore_hits_total 10\nllmtrace_restore_hits_total_x 1\n";
        assert_eq!(value(page, "llmtrace_restore_hits_total"), Some(10.0));
        assert_eq!(value(page, "llmtrace_restore_hits"), None);
    }

    #[test]
    fn histogram_quantiles_interpolate_inside_the_bucket() {
        let page = |n: [u32; 3]| {
            format!(
                "d_bucket{{le=\"0.001\"}} {}\nd_bucket{{le=\"0.002\"}} {}\n\
                 d_bucket{{le=\"+Inf\"}} {}\n",
                n[0], n[1], n[2]
            )
        };
        let before = Histogram::of(&parse(&page([10, 10, 10])), "d");
        let after = Histogram::of(&parse(&page([60, 110, 110])), "d");
        let run = after.since(&before);
        assert_eq!(
            run.0,
            vec![(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)]
        );
        let p50 = run.quantile(0.5).unwrap();
        assert_eq!((p50.value, p50.lower, p50.upper), (0.001, 0.0, 0.001));
        let p75 = run.quantile(0.75).unwrap();
        assert!((p75.value - 0.0015).abs() < 1e-12, "{p75:?}");
        assert_eq!(run.plus(&run).quantile(0.75), Some(p75));
        assert_eq!(Histogram::default().quantile(0.5), None);
        let tail = Histogram::of(&parse(&page([0, 0, 4])), "d")
            .quantile(0.99)
            .unwrap();
        assert_eq!((tail.value, tail.upper), (0.002, f64::INFINITY));
    }
}
