//! Calendar dates as the pipeline speaks them: `YYYY-MM-DD`, inclusive ranges, compact ranges.

use chrono::{Duration, NaiveDate};

/// The years a `data_date` may carry: wide enough for any pipeline's history and
/// future schedule, narrow enough that SQLite text and BigQuery `DATE` agree on every date.
pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=2199;

/// A `data_date` that failed to parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadDate {
    #[error("`{0}` is not a date in YYYY-MM-DD form (ASCII digits, dashes at positions 5 and 8)")]
    Form(String),
    #[error("`{0}` is not a calendar date (YYYY-MM-DD)")]
    Calendar(String),
    #[error("`{0}`: the year must be between 1900 and 2199")]
    Year(String),
}

/// Parse a strict `YYYY-MM-DD` date: exactly ten ASCII characters, digits everywhere but the
/// dashes at byte positions 4 and 7 (no sign, no spaces, no short fields), a real calendar
/// date, and a year within [`YEARS`].
pub fn parse_date(s: &str) -> Result<NaiveDate, BadDate> {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shaped {
        return Err(BadDate::Form(s.to_string()));
    }
    let field = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
    let year = i32::try_from(field(0..4)).unwrap_or(0);
    if !YEARS.contains(&year) {
        return Err(BadDate::Year(s.to_string()));
    }
    NaiveDate::from_ymd_opt(year, field(5..7), field(8..10))
        .ok_or_else(|| BadDate::Calendar(s.to_string()))
}

/// Every date from `from` to `to`, both included (empty when `from > to`).
pub fn days(from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    from.iter_days().take_while(move |d| *d <= to)
}

/// Number of days in the inclusive range (0 when `from > to`).
pub fn day_count(from: NaiveDate, to: NaiveDate) -> u64 {
    let n = (to - from).num_days() + 1;
    n.max(0) as u64
}

/// 0001-01-01: the earliest date both SQLite text and BigQuery `DATE` agree on.
pub fn earliest() -> NaiveDate {
    NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or(NaiveDate::MIN)
}

/// `date - n days`, saturating at [`earliest`].
pub fn minus_days(date: NaiveDate, n: u32) -> NaiveDate {
    date.checked_sub_signed(Duration::days(i64::from(n)))
        .unwrap_or(NaiveDate::MIN)
        .max(earliest())
}

/// Collapse sorted dates into runs: `2024-01-03..2024-01-05, 2024-01-09`.
pub fn compact_ranges(dates: &[NaiveDate]) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for &d in dates {
        match out.last_mut() {
            Some((_, end)) if end.succ_opt() == Some(d) => *end = d,
            _ => out.push((d, d)),
        }
    }
    out
}

/// Human form of [`compact_ranges`].
pub fn format_ranges(dates: &[NaiveDate]) -> String {
    compact_ranges(dates)
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        parse_date(s).unwrap()
    }

    #[test]
    fn parses_only_strict_dates() {
        assert!(parse_date("2024-02-29").is_ok());
        assert!(parse_date("2023-02-29").is_err());
        assert!(parse_date("2024-2-01").is_err());
        assert!(parse_date("2024-02-01T00:00").is_err());
        for loose in [
            "+2025-1-01",
            " 2025-1-01",
            "2025- 1- 1",
            "+002-01-01",
            "-001-01-01",
            "+99999-1-1",
            "2025-01-1 ",
            "２０２５-01-01",
            "2025/01/01",
            "20250101",
        ] {
            assert!(
                matches!(parse_date(loose), Err(BadDate::Form(_))),
                "{loose:?}"
            );
        }
        assert!(matches!(parse_date("0000-01-01"), Err(BadDate::Year(_))));
        assert!(matches!(parse_date("1899-12-31"), Err(BadDate::Year(_))));
        assert!(matches!(parse_date("2200-01-01"), Err(BadDate::Year(_))));
        assert!(parse_date("1900-01-01").is_ok());
        assert!(parse_date("2199-12-31").is_ok());
        assert!(matches!(
            parse_date("2025-13-01"),
            Err(BadDate::Calendar(_))
        ));
    }

    #[test]
    fn compacts_runs() {
        let dates = [
            d("2024-01-03"),
            d("2024-01-04"),
            d("2024-01-05"),
            d("2024-01-09"),
        ];
        assert_eq!(format_ranges(&dates), "2024-01-03..2024-01-05, 2024-01-09");
        assert_eq!(day_count(d("2024-01-01"), d("2024-01-31")), 31);
        assert_eq!(days(d("2024-12-30"), d("2025-01-02")).count(), 4);
    }
}
