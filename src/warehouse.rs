//! The warehouse: where processors write and where the gate counts.
//!
//! Each method is one query. Table and column names come from the validated configuration
//! and are spliced as identifiers; every value (dates, names) is a bound parameter.

use std::time::Instant;

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::config::{EntityCompleteness, Output, Reference, WindowKind};
use crate::ledger::{Ledger, RunRecord, RunStatus};

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

/// A processor's statements for one date, the post-condition on its output, and the ledger
/// outcome they commit with.
pub struct ProcessorRun<'a> {
    pub statements: &'a [String],
    pub date: NaiveDate,
    /// The output table counted after the statements (rows recorded in the ledger).
    pub output: Option<&'a Output>,
    /// 0 output rows on a date this reference lists fails the run and rolls it back.
    pub require_rows: Option<&'a Reference>,
    /// SQL still running at this instant is interrupted where the backend allows it.
    pub deadline: Instant,
}

/// How a processor run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Committed {
    /// Output and ledger outcome (`success`/`no_data`) are committed: the finished run.
    Done(Box<RunRecord>),
    /// The post-condition failed: nothing of the run's output was kept.
    PostCondition(String),
    /// The claim was taken over before the outcome could be written: nothing was kept
    /// (where the backend is transactional).
    TakenOver,
}

/// The reason a run with `rows` output rows on `date` fails, if `require_rows` lists the
/// date (`scheduled` = the reference's rows on it).
pub fn post_condition(
    rows: Option<u64>,
    scheduled: u64,
    reference: &Reference,
    date: NaiveDate,
) -> Option<String> {
    (rows == Some(0) && scheduled > 0).then(|| {
        format!(
            "{} expects {date} ({scheduled} reference rows) but the run produced 0 rows: \
             the input for this date is missing",
            reference.table
        )
    })
}

/// The finished state of `run` after producing `rows`.
pub fn finished(mut run: RunRecord, rows: Option<u64>) -> RunRecord {
    let status = if rows == Some(0) {
        RunStatus::NoData
    } else {
        RunStatus::Success
    };
    run.finish(
        status,
        rows.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        None,
    );
    run
}

#[async_trait]
pub trait Warehouse: Send + Sync {
    /// Run a processor and record its outcome in `ledger` as one unit where the backend
    /// allows it (SQLite: one transaction with the ledger row; a failed post-condition or a
    /// lost claim rolls everything back). The default runs the steps in order: the
    /// statements, the row count, the post-condition, then `ledger.complete`.
    async fn run_and_record(
        &self,
        job: &ProcessorRun<'_>,
        run: RunRecord,
        ledger: &dyn Ledger,
    ) -> Result<Committed, WarehouseError> {
        self.run_statements(job.statements, job.date).await?;
        let rows = match job.output {
            Some(o) => Some(self.count_rows(&o.table, &o.date_column, job.date).await?),
            None => None,
        };
        if let Some(reference) = job.require_rows {
            let scheduled = self
                .count_rows(&reference.table, &reference.date_column, job.date)
                .await?;
            if let Some(reason) = post_condition(rows, scheduled, reference, job.date) {
                return Ok(Committed::PostCondition(reason));
            }
        }
        let done = finished(run, rows);
        match ledger.complete(&done).await {
            Ok(true) => Ok(Committed::Done(Box::new(done))),
            Ok(false) => Ok(Committed::TakenOver),
            Err(e) => Err(WarehouseError(e.to_string())),
        }
    }

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
