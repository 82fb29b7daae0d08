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

/// An entity-completeness window ending the day before the processed date, as every
/// backend's query binds it.
pub struct EntityWindow<'a> {
    pub entity_column: &'a str,
    /// The window's first date.
    pub floor: NaiveDate,
    /// How many of each entity's latest reference dates it keeps.
    pub max_dates: i64,
}

pub fn entity_window<'a>(
    spec: &EntityCompleteness,
    reference: &'a Reference,
    date: NaiveDate,
) -> Result<EntityWindow<'a>, WarehouseError> {
    let entity_column = reference.entity_column.as_deref().ok_or_else(|| {
        WarehouseError(format!(
            "reference table {} has no entity_column",
            reference.table
        ))
    })?;
    let season = spec.season_start.unwrap_or_else(crate::dates::earliest);
    let (floor, max_dates) = match spec.window {
        WindowKind::Games => (season, i64::from(spec.lookback)),
        WindowKind::Days => (
            crate::dates::minus_days(date, spec.lookback).max(season),
            i64::MAX,
        ),
    };
    Ok(EntityWindow {
        entity_column,
        floor,
        max_dates,
    })
}
