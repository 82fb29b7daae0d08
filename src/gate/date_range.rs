//! Date-range completeness (gap detection): which expected dates of a range have no rows.
//!
//! Expected dates are every calendar day, or a reference's dates (the schedule), so an
//! off-day is not a gap. One query covers the whole range. A range in which the reference
//! lists no date is one of two things, told apart by a second query made only then: nothing
//! was expected (`nothing_expected`: the reference lists dates, none in this range — an
//! off-season, a pipeline's first days), or the reference cannot tell (`reference_empty`: it
//! lists no date at all), which is never reported as 100 % coverage.

use chrono::NaiveDate;
use serde::Serialize;

use crate::config::Reference;
use crate::warehouse::{DatePresence, Warehouse, WarehouseError};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DateRangeCompleteness {
    pub table: String,
    /// The reference table whose dates were expected; `None`: every calendar day.
    pub reference: Option<String>,
    /// The checked range, both ends included (`from > to`: nothing to check).
    pub date_range: (NaiveDate, NaiveDate),
    pub expected_dates: usize,
    /// The range has days but the reference lists no date at all (an empty reference): the
    /// range cannot be checked.
    pub reference_empty: bool,
    /// The range has days, the reference lists dates, but none in the range: nothing was
    /// expected, so there is nothing to check.
    pub nothing_expected: bool,
    pub has_gaps: bool,
    pub missing_dates: Vec<NaiveDate>,
    pub gap_count: usize,
    /// Percent of expected dates present; `None` when no date was expected.
    pub coverage_pct: Option<f64>,
    /// No gap and not an empty reference (true when nothing was expected).
    pub is_continuous: bool,
}

pub async fn date_range_completeness(
    warehouse: &dyn Warehouse,
    table: &str,
    date_column: &str,
    from: NaiveDate,
    to: NaiveDate,
    expected: Option<&Reference>,
) -> Result<DateRangeCompleteness, WarehouseError> {
    let presence = if from <= to {
        warehouse
            .date_presence(table, date_column, from, to, expected)
            .await?
    } else {
        Vec::new()
    };
    let in_use = match expected {
        Some(r) if from <= to && presence.is_empty() => warehouse.reference_in_use(r).await?,
        _ => true,
    };
    Ok(DateRangeCompleteness::from_presence(
        table, expected, from, to, &presence, in_use,
    ))
}

impl DateRangeCompleteness {
    /// The completeness of `from..=to` given which expected dates are present (what
    /// [`Warehouse::date_presence`] answers; nothing when `from > to`) and whether the
    /// reference lists any date at all ([`Warehouse::reference_in_use`]; only read when it
    /// lists none in the range).
    pub fn from_presence(
        table: &str,
        expected: Option<&Reference>,
        from: NaiveDate,
        to: NaiveDate,
        presence: &[DatePresence],
        reference_in_use: bool,
    ) -> DateRangeCompleteness {
        let missing_dates: Vec<NaiveDate> = presence
            .iter()
            .filter(|p| !p.present)
            .map(|p| p.date)
            .collect();
        let expected_dates = presence.len();
        let present = expected_dates - missing_dates.len();
        let coverage_pct =
            (expected_dates > 0).then(|| present as f64 * 100.0 / expected_dates as f64);
        let none_in_range = from <= to && expected_dates == 0;
        let reference_empty = none_in_range && !reference_in_use;
        DateRangeCompleteness {
            table: table.to_string(),
            reference: expected.map(|r| r.table.clone()),
            date_range: (from, to),
            expected_dates,
            reference_empty,
            nothing_expected: none_in_range && reference_in_use,
            has_gaps: !missing_dates.is_empty(),
            gap_count: missing_dates.len(),
            is_continuous: missing_dates.is_empty() && !reference_empty,
            missing_dates,
            coverage_pct,
        }
    }
}
