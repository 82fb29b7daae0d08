//! Date-range completeness (gap detection): which expected dates of a range have no rows.
//!
//! Expected dates are every calendar day, or a reference's dates (the schedule), so an
//! off-day is not a gap. One query covers the whole range.

use chrono::NaiveDate;
use serde::Serialize;

use crate::config::Reference;
use crate::warehouse::{Warehouse, WarehouseError};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DateRangeCompleteness {
    pub table: String,
    pub has_gaps: bool,
    pub missing_dates: Vec<NaiveDate>,
    pub gap_count: usize,
    /// Percent of expected dates present (100 when nothing was expected).
    pub coverage_pct: f64,
    pub is_continuous: bool,
    pub date_range: (NaiveDate, NaiveDate),
    pub expected_dates: usize,
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
    let missing_dates: Vec<NaiveDate> = presence
        .iter()
        .filter(|p| !p.present)
        .map(|p| p.date)
        .collect();
    let expected_dates = presence.len();
    let present = expected_dates - missing_dates.len();
    let coverage_pct = if expected_dates == 0 {
        100.0
    } else {
        present as f64 * 100.0 / expected_dates as f64
    };
    Ok(DateRangeCompleteness {
        table: table.to_string(),
        has_gaps: !missing_dates.is_empty(),
        gap_count: missing_dates.len(),
        is_continuous: missing_dates.is_empty(),
        missing_dates,
        coverage_pct,
        date_range: (from, to),
        expected_dates,
    })
}
