//! The warehouse: where processors write and where the gate counts.
//!
//! Each method is one query. Table and column names come from the validated configuration
//! and are spliced as identifiers; every value (dates, names) is a bound parameter. Every
//! date column is read as a date (`date(col)` on SQLite, `DATE(col)` on BigQuery), so DATE,
//! DATETIME, TIMESTAMP and datetime-text columns all count by calendar day.

use std::time::Instant;

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::config::{EntityCompleteness, Output, Reference};
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
    /// The store kept failing transiently (or losing to concurrent jobs) until the deadline:
    /// nothing of the run committed and nothing is known to be wrong with the processor.
    /// The claim is released and the delivery answered 503, so it is redelivered.
    Unavailable(String),
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

/// After a processor ran outside a transaction: count its output, check the post-condition
/// and record the outcome (only while the claim is still ours).
pub async fn count_and_record(
    warehouse: &(impl Warehouse + ?Sized),
    output: Option<&Output>,
    require_rows: Option<&Reference>,
    date: NaiveDate,
    run: RunRecord,
    ledger: &dyn Ledger,
) -> Result<Committed, WarehouseError> {
    let rows = match output {
        Some(o) => Some(warehouse.count_rows(&o.table, &o.date_column, date).await?),
        None => None,
    };
    if let Some(reference) = require_rows.filter(|_| rows == Some(0)) {
        let scheduled = warehouse
            .count_rows(&reference.table, &reference.date_column, date)
            .await?;
        if let Some(reason) = post_condition(rows, scheduled, reference, date) {
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
        count_and_record(self, job.output, job.require_rows, job.date, run, ledger).await
    }

    /// Run a processor's statements for one date, `@data_date` bound; all or nothing where
    /// the backend allows it.
    async fn run_statements(
        &self,
        statements: &[String],
        date: NaiveDate,
    ) -> Result<(), WarehouseError>;

    /// Rows of `table` whose `date_column`, as a date, equals `date`.
    async fn count_rows(
        &self,
        table: &str,
        date_column: &str,
        date: NaiveDate,
    ) -> Result<u64, WarehouseError>;

    /// Expected dates of the range (every day, or the reference's dates) each with whether
    /// `table` has rows on it — one query: expected dates LEFT JOIN actual dates. An empty
    /// result for a non-empty range means the reference lists no date in it.
    async fn date_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError>;

    /// Per entity with a reference date in the [`entity_window`] of `date`, expected vs
    /// actual appearances — one query for all entities.
    async fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError>;

    /// The reference lists at least one date (a row whose date column is set). Asked only
    /// when a check's window holds none of its dates: `true` means nothing was expected
    /// there (an off-season, a pipeline's first days), `false` that the reference cannot
    /// tell (empty); a missing table is an error. Either of the last two fails closed.
    async fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError>;
}

/// An entity-completeness window: the reference dates `floor ..= last` (the day before the
/// processed date), of which each entity keeps its latest `max_dates`. Both backends bind it,
/// and the gate reports it, so the query and the findings say the same thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityWindow<'a> {
    pub entity_column: &'a str,
    /// The window's first date: `window_days` before the date, not before `season_start`.
    pub floor: NaiveDate,
    /// The window's last date: the day before the processed date.
    pub last: NaiveDate,
    /// How many of each entity's latest reference dates it keeps (`lookback`; for a `days`
    /// window no entity can have more, so it is no limit there).
    pub max_dates: i64,
}

impl EntityWindow<'_> {
    /// The window has no day at all (the date is at or before `season_start`).
    pub fn is_empty(&self) -> bool {
        self.floor > self.last
    }
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
    let mut floor = crate::dates::minus_days(date, spec.window_days());
    if let Some(season) = spec.season_start {
        floor = floor.max(season);
    }
    Ok(EntityWindow {
        entity_column,
        floor,
        last: date.pred_opt().unwrap_or(date),
        max_dates: i64::from(spec.lookback),
    })
}
