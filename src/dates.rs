//! Calendar dates as the pipeline speaks them: `YYYY-MM-DD`, inclusive ranges, compact ranges.

use chrono::{Duration, NaiveDate};

/// A `data_date` that failed to parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a date in YYYY-MM-DD form")]
pub struct BadDate(pub String);

/// Parse a strict `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Result<NaiveDate, BadDate> {
    if s.len() != 10 {
        return Err(BadDate(s.to_string()));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| BadDate(s.to_string()))
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
