//! A processor run as one SQLite transaction: its statements, the count of its output, the
//! post-condition and its ledger outcome commit together or not at all.
//!
//! Two ways in. [`OneTransaction`] runs the whole run on the writer — the latest runs, the
//! decision, the gate's reads, the statements and the ledger row — so no claim is written
//! at all (see [`crate::atomic`]). [`Sqlite::run_atomic`] runs a claimed run's statements
//! and outcome: the outcome is written only while the run is still `running` (its claim is
//! ours), so a run whose lease ran out and was taken over rolls back instead of overwriting
//! newer output. Either way SQL still running at the push deadline is interrupted (a
//! progress handler).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::{Connection, Savepoint, params};

use super::Sqlite;
use super::connection::Role;
use super::gate_queries::{
    EntityCountsQuery, ReferencePresence, presence_of, probe_every_day, reference_in_use,
};
use super::guard::{self, own};
use super::presence::PresenceCache;
use super::sql::{count_rows_sql, expand_dataset};
use crate::atomic::{Answer, InTransaction, OneTransaction, Processed, Work};
use crate::config::{EntityCompleteness, Output, Reference};
use crate::gate::GateReads;
use crate::ledger::{LedgerError, RunRecord, RunStatus};
use crate::warehouse::{
    Committed, DatePresence, EntityCount, ProcessorRun, WarehouseError, finished, post_condition,
};

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
    guard::user_sql(|| {
        statements
            .iter()
            .try_for_each(|sql| execute_one(tx, sql, date))
    })
}

/// Run one processor statement (transaction control refused: see [`guard`]).
fn execute_one(tx: &Connection, sql: &str, date: NaiveDate) -> rusqlite::Result<()> {
    guard::not_own(sql)?;
    let mut stmt = tx.prepare_cached(sql).map_err(|e| guard::explain(e, sql))?;
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
    while rows.next().map_err(|e| guard::explain(e, sql))?.is_some() {}
    Ok(())
}

fn count(tx: &Connection, table: &str, column: &str, date: NaiveDate) -> rusqlite::Result<u64> {
    let n: i64 = tx
        .prepare_cached(&count_rows_sql(table, column))?
        .query_row(params![date.to_string()], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A processor's statements for one date, expanded, with what is checked after them.
struct Steps<'a> {
    statements: &'a [String],
    date: NaiveDate,
    output: Option<&'a Output>,
    require_rows: Option<&'a Reference>,
    deadline: Instant,
}

/// Run the statements, count the output and check the post-condition, interrupting SQL
/// still running at the deadline. The caller keeps or rolls back what they wrote.
fn process_in(conn: &Connection, steps: &Steps<'_>) -> rusqlite::Result<Processed> {
    interrupted_at(conn, steps.deadline, || {
        execute_statements(conn, steps.statements, steps.date)?;
        let rows = match steps.output {
            Some(o) => Some(count(conn, &o.table, &o.date_column, steps.date)?),
            None => None,
        };
        if let Some(reference) = steps.require_rows.filter(|_| rows == Some(0)) {
            let scheduled = count(conn, &reference.table, &reference.date_column, steps.date)?;
            if let Some(reason) = post_condition(rows, scheduled, reference, steps.date) {
                return Ok(Processed::PostCondition(reason));
            }
        }
        Ok(Processed::Rows(rows))
    })
}

/// Run `f` with SQL still running at `deadline` interrupted (a progress handler).
fn interrupted_at<T>(
    conn: &Connection,
    deadline: Instant,
    f: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.progress_handler(
        DEADLINE_CHECK_STEPS,
        Some(move || Instant::now() >= deadline),
    );
    let result = f();
    conn.progress_handler(0, None::<fn() -> bool>);
    result
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
    let steps = Steps {
        statements: &job.statements,
        date: job.date,
        output: job.output.as_ref(),
        require_rows: job.require_rows.as_ref(),
        deadline: job.deadline,
    };
    let rows = match process_in(&tx, &steps)? {
        Processed::Rows(rows) => rows,
        // Dropping the savepoint rolls the run back.
        Processed::PostCondition(reason) => return Ok(Committed::PostCondition(reason)),
    };
    let done = finished(job.run, rows);
    if !super::ledger::complete(&tx, &done)? {
        return Ok(Committed::TakenOver); // rolled back
    }
    tx.commit()?;
    Ok(Committed::Done(Box::new(done)))
}

/// A deadline interrupt, said so.
fn deadline_error(e: String) -> String {
    if e.contains("interrupted") {
        format!("{e}: the push deadline was reached")
    } else {
        e
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
        self.grouped(Role::Leads, move |sp| run_in_transaction(sp, job))
            .await
            .map_err(|e| WarehouseError(deadline_error(e)))
    }
}

/// A whole processor run on the writer, inside its group transaction (see
/// [`crate::atomic`]): it shares its group with other such runs only ([`Role::Redoable`]),
/// since an interrupt at its deadline rolls the whole transaction back.
#[async_trait]
impl OneTransaction for Sqlite {
    async fn run_boxed(
        &self,
        deadline: Instant,
        work: Work,
    ) -> Result<Result<Answer, Answer>, String> {
        let pipeline = Arc::clone(&self.pipeline);
        let presence = Arc::clone(self.conns.presence_cache());
        let role = Role::Redoable { deadline };
        self.grouped(role, move |sp| {
            if Instant::now() >= deadline {
                return Err(not_started());
            }
            let tx = Tx {
                conn: &sp,
                pipeline: &pipeline,
                presence: &presence,
                deadline,
                failed: RefCell::new(Vec::new()),
            };
            let answer = work(&tx);
            if sp.is_autocommit() {
                // An interrupted write rolled the whole transaction back: the failures it
                // recorded are facts all the same; the group reports the rollback.
                tx.record_failures_alone();
                return Ok(answer);
            }
            // An `Err` answer drops the savepoint: what the work wrote is rolled back.
            if answer.is_ok() {
                sp.commit()?;
            }
            Ok(answer)
        })
        .await
        .map_err(deadline_error)
    }
}

fn not_started() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
        Some("not started: the push deadline passed while the run waited for the writer".into()),
    )
}

/// The writer connection inside a one-transaction run.
struct Tx<'a> {
    conn: &'a Connection,
    pipeline: &'a str,
    presence: &'a PresenceCache,
    /// Reads still running at this instant are interrupted.
    deadline: Instant,
    /// The `failed` rows the run recorded (or tried to, after an interrupt rolled the
    /// transaction back): an abandoned run it took over, its own failure.
    failed: RefCell<Vec<RunRecord>>,
}

impl Tx<'_> {
    /// Fails once the transaction is gone (an interrupt rolled it back): nothing may then be
    /// read or written as if it were still open.
    fn open(&self) -> rusqlite::Result<()> {
        if self.conn.is_autocommit() {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("the run's transaction was rolled back".into()),
            ));
        }
        Ok(())
    }

    /// A read of the open transaction, interrupted at the deadline (a read interrupt fails
    /// the statement only).
    fn bounded<T>(&self, read: impl FnOnce() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        self.open()?;
        interrupted_at(self.conn, self.deadline, read)
    }

    fn savepoint(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    /// After the transaction was rolled back: write the failures on their own.
    fn record_failures_alone(&self) {
        for run in self.failed.borrow().iter() {
            if let Err(e) = super::ledger::upsert(self.conn, self.pipeline, run) {
                tracing::error!(run_id = %run.run_id, error = %e,
                    "could not record a failed run after its transaction was rolled back");
            }
        }
    }
}

fn ledger_error(e: rusqlite::Error) -> LedgerError {
    LedgerError(e.to_string())
}

fn warehouse_error(e: rusqlite::Error) -> WarehouseError {
    WarehouseError(deadline_error(e.to_string()))
}

impl InTransaction for Tx<'_> {
    fn latest_of(
        &self,
        processors: &[String],
        date: NaiveDate,
    ) -> Result<Vec<Option<RunRecord>>, LedgerError> {
        self.bounded(|| {
            processors
                .iter()
                .map(|p| super::ledger::latest(self.conn, self.pipeline, p, date))
                .collect()
        })
        .map_err(ledger_error)
    }

    fn process(&self, job: &ProcessorRun<'_>) -> Result<Processed, WarehouseError> {
        self.open().map_err(warehouse_error)?;
        let statements: Vec<String> = job.statements.iter().map(|s| expand_dataset(s)).collect();
        let steps = Steps {
            statements: &statements,
            date: job.date,
            output: job.output,
            require_rows: job.require_rows,
            deadline: job.deadline,
        };
        self.savepoint(own::SAVEPOINT).map_err(warehouse_error)?;
        let result = process_in(self.conn, &steps);
        let keep = matches!(result, Ok(Processed::Rows(_)));
        // After an interrupt there is no savepoint left to close: the transaction is gone.
        if self.open().is_ok() {
            let close = if keep {
                self.savepoint(own::RELEASE)
            } else {
                self.savepoint(own::ROLLBACK_TO)
                    .and_then(|()| self.savepoint(own::RELEASE))
            };
            close.map_err(warehouse_error)?;
        }
        result.map_err(warehouse_error)
    }

    fn record(&self, run: &RunRecord) -> Result<(), LedgerError> {
        if run.status == RunStatus::Failed {
            self.failed.borrow_mut().push(run.clone());
        }
        self.open().map_err(ledger_error)?;
        super::ledger::upsert(self.conn, self.pipeline, run).map_err(ledger_error)
    }
}

impl GateReads for Tx<'_> {
    fn date_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        if let Some(r) = expected {
            let query = ReferencePresence::new(table, date_column, from, to, r);
            return self
                .bounded(|| query.run(self.conn))
                .map_err(warehouse_error);
        }
        let days: Vec<NaiveDate> = crate::dates::days(from, to).collect();
        self.bounded(|| {
            match self
                .presence
                .presence(self.conn, table, date_column, &days)?
            {
                Some(present) => Ok(presence_of(&days, present)),
                None => probe_every_day(self.conn, table, date_column, &days),
            }
        })
        .map_err(warehouse_error)
    }

    fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError> {
        let query = EntityCountsQuery::new(spec, reference, date)?;
        self.bounded(|| query.run(self.conn))
            .map_err(warehouse_error)
    }

    fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError> {
        let sql = super::sql::any_date_sql(&reference.table, &reference.date_column);
        self.bounded(|| reference_in_use(self.conn, &sql))
            .map_err(warehouse_error)
    }
}
