//! A processor run as one SQLite transaction: its statements, the count of its output, the
//! post-condition and its ledger outcome commit together or not at all.
//!
//! The outcome is written only while the run is still `running` (its claim is ours): a run
//! whose lease ran out and was taken over rolls back instead of overwriting newer output.
//! SQL still running at the push deadline is interrupted (a progress handler).

use std::time::Instant;

use chrono::NaiveDate;
use rusqlite::{Connection, Savepoint, params};

use super::Sqlite;
use super::sql::{count_rows_sql, expand_dataset};
use crate::config::{Output, Reference};
use crate::ledger::RunRecord;
use crate::warehouse::{Committed, ProcessorRun, WarehouseError, finished, post_condition};

/// Bound as `@data_date` in processor statements.
const DATA_DATE_PARAM: &str = "@data_date";
/// SQLite VM steps between deadline checks.
const DEADLINE_CHECK_STEPS: std::ffi::c_int = 10_000;

/// Run each statement with `@data_date` bound; any other parameter is refused.
pub(super) fn execute_statements(
    tx: &Connection,
    statements: &[String],
    date: NaiveDate,
) -> rusqlite::Result<()> {
    for sql in statements {
        let mut stmt = tx.prepare_cached(sql)?;
        let bound = match stmt.parameter_index(DATA_DATE_PARAM)? {
            Some(i) => {
                stmt.raw_bind_parameter(i, date.to_string())?;
                1
            }
            None => 0,
        };
        if stmt.parameter_count() != bound {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "statement uses parameters other than {DATA_DATE_PARAM}: {sql}"
            )));
        }
        let mut rows = stmt.raw_query();
        while rows.next()?.is_some() {}
    }
    Ok(())
}

fn count(tx: &Connection, table: &str, column: &str, date: NaiveDate) -> rusqlite::Result<u64> {
    let n: i64 = tx
        .prepare_cached(&count_rows_sql(table, column))?
        .query_row(params![date.to_string()], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Everything the writer thread needs, owned.
struct Job {
    statements: Vec<String>,
    date: NaiveDate,
    output: Option<Output>,
    require_rows: Option<Reference>,
    deadline: Instant,
    run: RunRecord,
}

/// The run inside its savepoint (its own transaction, or the first part of a group's: see
/// `connection`): committed only when the post-condition holds and the claim is still ours.
fn run_in_transaction(tx: Savepoint<'_>, job: Job) -> rusqlite::Result<Committed> {
    let deadline = job.deadline;
    tx.progress_handler(
        DEADLINE_CHECK_STEPS,
        Some(move || Instant::now() >= deadline),
    );
    let result = (|| {
        execute_statements(&tx, &job.statements, job.date)?;
        let rows = match &job.output {
            Some(o) => Some(count(&tx, &o.table, &o.date_column, job.date)?),
            None => None,
        };
        if let Some(reference) = job.require_rows.as_ref().filter(|_| rows == Some(0)) {
            let scheduled = count(&tx, &reference.table, &reference.date_column, job.date)?;
            if let Some(reason) = post_condition(rows, scheduled, reference, job.date) {
                return Ok(Committed::PostCondition(reason)); // dropped: rolled back
            }
        }
        let done = finished(job.run, rows);
        if !super::ledger::complete(&tx, &done)? {
            return Ok(Committed::TakenOver); // rolled back
        }
        Ok(Committed::Done(Box::new(done)))
    })();
    tx.progress_handler(0, None::<fn() -> bool>);
    match result {
        Ok(Committed::Done(done)) => {
            tx.commit()?;
            Ok(Committed::Done(done))
        }
        // Dropping the savepoint rolls the run back.
        other => other,
    }
}

impl Sqlite {
    pub(super) async fn run_atomic(
        &self,
        job: &ProcessorRun<'_>,
        run: RunRecord,
    ) -> Result<Committed, WarehouseError> {
        let job = Job {
            statements: job.statements.iter().map(|s| expand_dataset(s)).collect(),
            date: job.date,
            output: job.output.cloned(),
            require_rows: job.require_rows.cloned(),
            deadline: job.deadline,
            run,
        };
        self.grouped(true, move |sp| run_in_transaction(sp, job))
            .await
            .map_err(|e| {
                if e.contains("interrupted") {
                    WarehouseError(format!("{e}: the push deadline was reached"))
                } else {
                    WarehouseError(e)
                }
            })
    }
}
