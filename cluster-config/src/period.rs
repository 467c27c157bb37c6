//! Lengths of time in limit blocks: a token bucket's `per` and a lease's
//! `lease_ttl` ([`parse_duration_secs`]: `Ns`, `Nm`, `Nh`, `Nd`), and a quota's
//! `period` ([`Period`]): a fixed window aligned to the Unix epoch, or a
//! calendar week (from Monday) or month (from the first), all in UTC.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};
use chrono::{DateTime, Datelike, NaiveDate, Utc};

const NANOS: u64 = 1_000_000_000;
const DAY_SECS: u64 = 86_400;

/// Parses `Ns`, `Nm`, `Nh` or `Nd` (N ≥ 1) into seconds; the error says
/// what is accepted.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration: use Ns, Nm, Nh or Nd with N at least 1");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => DAY_SECS,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    n.checked_mul(scale).ok_or_else(bad)
}

/// Writes seconds back in the largest unit that divides them.
pub fn format_duration_secs(secs: u64) -> String {
    for (unit, scale) in [("d", DAY_SECS), ("h", 3_600), ("m", 60)] {
        if secs >= scale && secs.is_multiple_of(scale) {
            return format!("{}{unit}", secs / scale);
        }
    }
    format!("{secs}s")
}

/// The window a quota counts in. Every window is aligned to UTC: a fixed
/// length to the Unix epoch (so `1d` starts at midnight UTC and `1h` on the
/// hour), a week on Monday 00:00, a month on the first at 00:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Period {
    /// A window of this many seconds (at least 1).
    Fixed(u64),
    /// Monday 00:00 UTC to the next Monday.
    Week,
    /// The first of a month 00:00 UTC to the first of the next (28 to 31
    /// days).
    Month,
}

impl Period {
    /// The window holding `now_ns` (nanoseconds since the epoch):
    /// `(start_ns, end_ns)`, end exclusive.
    pub fn window(self, now_ns: u64) -> (u64, u64) {
        match self {
            Period::Fixed(secs) => {
                let len = secs.saturating_mul(NANOS).max(1);
                let start = now_ns - now_ns % len;
                (start, start.saturating_add(len))
            }
            Period::Week => {
                let day = now_ns / NANOS / DAY_SECS;
                // 1970-01-01 was a Thursday: three days after a Monday. The
                // first window is cut at the epoch.
                let next_monday = day + 7 - (day + 3) % 7;
                let end = next_monday * DAY_SECS * NANOS;
                (end.saturating_sub(7 * DAY_SECS * NANOS), end)
            }
            Period::Month => {
                let secs = (now_ns / NANOS).min(i64::MAX as u64) as i64;
                let date = DateTime::<Utc>::from_timestamp(secs, 0)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
                    .date_naive();
                let first = NaiveDate::from_ymd_opt(date.year(), date.month(), 1)
                    .expect("the first of a month exists");
                let next = first
                    .checked_add_months(chrono::Months::new(1))
                    .unwrap_or(NaiveDate::MAX);
                (day_ns(first), day_ns(next))
            }
        }
    }

    /// The start of the window holding `now_ns`: two instants are in the
    /// same window exactly when their starts are equal.
    pub fn window_start(self, now_ns: u64) -> u64 {
        self.window(now_ns).0
    }
}

fn day_ns(date: NaiveDate) -> u64 {
    let secs = date
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp();
    (secs.max(0) as u64).saturating_mul(NANOS)
}

impl FromStr for Period {
    type Err = String;

    /// `Ns`, `Nm`, `Nh`, `Nd` (fixed, aligned to the epoch), `1w`, `1mo`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "1w" => Ok(Period::Week),
            "1mo" => Ok(Period::Month),
            _ => parse_duration_secs(text).map(Period::Fixed).map_err(|_| {
                format!(
                    "{text:?} is not a period: use Ns, Nm, Nh, Nd (aligned to the epoch), 1w \
                     (from Monday) or 1mo (from the first of the month), all UTC"
                )
            }),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Fixed(secs) => f.write_str(&format_duration_secs(*secs)),
            Period::Week => f.write_str("1w"),
            Period::Month => f.write_str("1mo"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDateTime, Weekday};
    use proptest::prelude::*;

    fn at(text: &str) -> u64 {
        let t = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap();
        t.and_utc().timestamp() as u64 * NANOS
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("1s"), Ok(1));
        assert_eq!(parse_duration_secs("90m"), Ok(5_400));
        assert_eq!(parse_duration_secs("1h"), Ok(3_600));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        for bad in [
            "",
            "0s",
            "s",
            "1",
            "1x",
            "-1s",
            "1.5m",
            "1 m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration_secs(60), "1m");
        assert_eq!(format_duration_secs(86_400), "1d");
        assert_eq!(format_duration_secs(61), "61s");
    }

    #[test]
    fn periods_parse() {
        assert_eq!("1d".parse(), Ok(Period::Fixed(86_400)));
        assert_eq!("1w".parse(), Ok(Period::Week));
        assert_eq!("1mo".parse(), Ok(Period::Month));
        assert!("2w".parse::<Period>().is_err());
        assert!("1y".parse::<Period>().is_err());
        for p in ["15m", "1d", "1w", "1mo", "7s"] {
            assert_eq!(p.parse::<Period>().unwrap().to_string(), p);
        }
    }

    #[test]
    fn calendar_windows() {
        let day = Period::Fixed(86_400);
        assert_eq!(
            day.window(at("2024-02-29 13:00:00")),
            (at("2024-02-29 00:00:00"), at("2024-03-01 00:00:00"))
        );
        // 2024-03-06 is a Wednesday.
        assert_eq!(
            Period::Week.window(at("2024-03-06 10:00:00")),
            (at("2024-03-04 00:00:00"), at("2024-03-11 00:00:00"))
        );
        assert_eq!(
            Period::Week.window(at("2024-03-04 00:00:00")).0,
            at("2024-03-04 00:00:00")
        );
        assert_eq!(
            Period::Month.window(at("2024-02-29 23:59:59")),
            (at("2024-02-01 00:00:00"), at("2024-03-01 00:00:00"))
        );
        assert_eq!(
            Period::Month.window(at("2023-02-10 00:00:00")),
            (at("2023-02-01 00:00:00"), at("2023-03-01 00:00:00"))
        );
        assert_eq!(
            Period::Month.window(at("2024-12-31 23:00:00")),
            (at("2024-12-01 00:00:00"), at("2025-01-01 00:00:00"))
        );
        assert_eq!(Period::Week.window(0), (0, at("1970-01-05 00:00:00")));
    }

    proptest! {
        /// Any instant lies in its window; the window has its period's
        /// length, starts at midnight UTC on the right day, and the next
        /// window starts where it ends.
        #[test]
        fn windows_hold_their_instant(now in 7 * DAY_SECS * NANOS..4_102_444_800 * NANOS) {
            for period in [Period::Fixed(1), Period::Fixed(3_600), Period::Fixed(86_400),
                           Period::Week, Period::Month] {
                let (start, end) = period.window(now);
                prop_assert!(start <= now && now < end, "{period:?} {start} {now} {end}");
                prop_assert_eq!(period.window(end).0, end);
                prop_assert_eq!(period.window(end - 1), (start, end));
                let s = DateTime::<Utc>::from_timestamp((start / NANOS) as i64, 0).unwrap();
                match period {
                    Period::Fixed(secs) => prop_assert_eq!(end - start, secs * NANOS),
                    Period::Week => {
                        prop_assert_eq!(end - start, 7 * DAY_SECS * NANOS);
                        prop_assert!(start == 0 || s.weekday() == Weekday::Mon);
                    }
                    Period::Month => {
                        prop_assert_eq!(s.day(), 1);
                        let days = (end - start) / NANOS / DAY_SECS;
                        prop_assert!((28..=31).contains(&days));
                        let leap = NaiveDate::from_ymd_opt(s.year(), 2, 29).is_some();
                        if s.month() == 2 {
                            prop_assert_eq!(days, if leap { 29 } else { 28 });
                        }
                    }
                }
            }
        }
    }
}
