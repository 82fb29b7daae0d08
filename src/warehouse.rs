//! The warehouse: where processors write and where the gate counts.
//!
//! Each method is one query. Table and column names come from the validated configuration
//! and are spliced as identifiers; every value (dates, names) is a bound parameter.

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::config::{EntityCompleteness, Reference, WindowKind};

#[derive(Debug, thiserror::Error)]
#[error("warehouse: {0}")]
pub struct WarehouseError(pub String);

/// Which dates of a range were expected, and which of them are present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatePresence {
    pub date: NaiveDate,
    pub present: bool,
}

/// Expected and actual appearances of one entity in a lookback window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityCount {
    pub entity: String,
    pub expected: u64,
    pub actual: u64,
}

#[async_trait]
pub trait Warehouse: Send + Sync {
    /// Run a processor's statements for one date, `@data_date` bound; all or nothing where
    /// the backend allows it.
    async fn run_statements(
        &self,
        statements: &[String],
        date: NaiveDate,
    ) -> Result<(), WarehouseError>;

    /// Rows of `table` whose `date_column` equals `date`.
    async fn count_rows(
        &self,
        table: &str,
        date_column: &str,
        date: NaiveDate,
    ) -> Result<u64, WarehouseError>;

    /// Expected dates of the range (every day, or the reference's dates) each with whether
    /// `table` has rows on it — one query: expected dates LEFT JOIN actual dates.
    async fn date_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError>;

    /// Per entity of the reference, expected vs actual appearances in the lookback window
    /// ending the day before `date` — one query for all entities.
    async fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError>;
}

/// An entity-completeness window ending the day before `date`: its first date and how many of
/// each entity's latest reference dates it keeps (every backend's query binds these two).
pub fn entity_window(spec: &EntityCompleteness, date: NaiveDate) -> (NaiveDate, i64) {
    let season = spec.season_start.unwrap_or_else(crate::dates::earliest);
    match spec.window {
        WindowKind::Games => (season, i64::from(spec.lookback)),
        WindowKind::Days => (
            crate::dates::minus_days(date, spec.lookback).max(season),
            i64::MAX,
        ),
    }
}
