//! The embedded warehouse and ledger: one SQLite file (rusqlite, bundled).
//!
//! Dates are stored as `YYYY-MM-DD` text, timestamps as RFC 3339 text in UTC. Writes go
//! through one writer thread, reads through a pool of read connections ([`connection`]).

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, Row};

use crate::config::Synchronous;
use crate::ledger::{Findings, RunRecord, RunStatus, TriggerKind, UpstreamRun};
use crate::warehouse::WarehouseError;

mod atomic;
mod connection;
mod file_sync;
mod gate_queries;
mod guard;
mod ledger;
mod presence;
pub mod queue;
mod sql;
mod warehouse;

use connection::Connections;

/// A SQLite database used as both warehouse and ledger (of one pipeline).
#[derive(Clone)]
pub struct Sqlite {
    conns: Arc<Connections>,
    /// The pipeline whose runs this handle's ledger reads and writes.
    pipeline: Arc<str>,
    /// Claimed runs whose holders live in this process ([`crate::ledger::Ledger::holding`]).
    holders: ledger::Holders,
    /// Days back the outbox sweep reads owed events (`backend.owed_events_window_days`).
    owed_window_days: u32,
}

const LEDGER_DDL: &str = "
CREATE TABLE IF NOT EXISTS processor_run_history (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL DEFAULT '',
    processor_name TEXT NOT NULL,
    phase TEXT NOT NULL,
    data_date TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    rows_affected INTEGER,
    errors TEXT,
    findings TEXT,
    production_ready INTEGER NOT NULL,
    trigger_source TEXT NOT NULL,
    message_id TEXT,
    delivery_attempt INTEGER,
    skip_downstream_trigger INTEGER NOT NULL,
    published_at TEXT,
    upstream_runs TEXT,
    lease_until TEXT
);
";

/// Columns added after the first release, added to older files on open.
const LEDGER_MIGRATIONS: &[(&str, &str)] = &[
    ("pipeline", "TEXT NOT NULL DEFAULT ''"),
    ("delivery_attempt", "INTEGER"),
    ("upstream_runs", "TEXT"),
    ("lease_until", "TEXT"),
];

const LEDGER_INDEXES: &str = "
DROP INDEX IF EXISTS processor_run_history_by_date;
CREATE INDEX IF NOT EXISTS processor_run_history_latest
    ON processor_run_history (pipeline, processor_name, data_date, started_at);
CREATE INDEX IF NOT EXISTS processor_run_history_owed
    ON processor_run_history (pipeline, lease_until)
    WHERE published_at IS NULL AND skip_downstream_trigger = 0
      AND status IN ('success', 'no_data');
";

const LEDGER_COLUMNS: &str = "run_id, pipeline, processor_name, phase, data_date, status, \
    started_at, finished_at, rows_affected, errors, findings, production_ready, trigger_source, \
    message_id, delivery_attempt, skip_downstream_trigger, published_at, upstream_runs, \
    lease_until";

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })
}

fn opt_ts(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    row.get::<_, Option<String>>(i)?
        .map(|s| parse_ts(&s))
        .transpose()
}

fn parse_day(s: &str) -> rusqlite::Result<NaiveDate> {
    crate::dates::parse_date(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn bad_column(what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {what} `{value}` in processor_run_history").into(),
    )
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = row.get(5)?;
    let trigger: String = row.get(12)?;
    let findings: Option<String> = row.get(10)?;
    let upstream: Option<String> = row.get(17)?;
    Ok(RunRecord {
        run_id: row.get(0)?,
        pipeline: row.get(1)?,
        processor: row.get(2)?,
        phase: row.get(3)?,
        data_date: parse_day(&row.get::<_, String>(4)?)?,
        status: RunStatus::parse(&status).ok_or_else(|| bad_column("status", &status))?,
        started_at: parse_ts(&row.get::<_, String>(6)?)?,
        finished_at: opt_ts(row, 7)?,
        rows_affected: row.get(8)?,
        errors: row.get(9)?,
        findings: findings.and_then(Findings::parse),
        production_ready: row.get(11)?,
        trigger: TriggerKind::parse(&trigger).ok_or_else(|| bad_column("trigger", &trigger))?,
        message_id: row.get(13)?,
        delivery_attempt: row.get(14)?,
        skip_downstream_trigger: row.get(15)?,
        published_at: opt_ts(row, 16)?,
        upstream_runs: upstream.and_then(|u| serde_json::from_str::<Vec<UpstreamRun>>(&u).ok()),
        lease_until: opt_ts(row, 18)?,
    })
}

impl Sqlite {
    /// Open (or create) the database file; its ledger reads and writes `pipeline`'s runs.
    /// `synchronous` as `backend.sqlite_synchronous` defaults (NORMAL).
    pub fn open(path: &Path, pipeline: &str) -> Result<Sqlite, rusqlite::Error> {
        Self::open_with(path, pipeline, Synchronous::default())
    }

    /// [`Sqlite::open`] with the given `synchronous` setting.
    pub fn open_with(
        path: &Path,
        pipeline: &str,
        synchronous: Synchronous,
    ) -> Result<Sqlite, rusqlite::Error> {
        Ok(Sqlite {
            conns: Connections::open(path, synchronous)?,
            pipeline: Arc::from(pipeline),
            holders: ledger::Holders::default(),
            owed_window_days: crate::config::DEFAULT_OWED_EVENTS_WINDOW_DAYS,
        })
    }

    /// Let the outbox sweep read owed events of the last `days` days only
    /// (`backend.owed_events_window_days`): an older owed event is published by its
    /// message's redelivery, and a ledger of years is not read every minute.
    pub fn with_owed_window(mut self, days: u32) -> Sqlite {
        self.owed_window_days = days;
        self
    }

    /// Refuse a schema in which a table or trigger rolls back the whole transaction
    /// (`ON CONFLICT ROLLBACK`, `RAISE(ROLLBACK, …)`: see [`crate::sql_lint`]); checked at
    /// start-up and after `setup`, wherever the table came from.
    pub async fn refuse_rollback_clauses(&self) -> Result<(), String> {
        match self.read(|c| guard::schema_rollback_clause(c)).await? {
            None => Ok(()),
            Some((name, clause)) => Err(format!(
                "{name}: {}",
                crate::sql_lint::refusal(clause, "drop or redefine it before phasegate runs here")
            )),
        }
    }

    /// Run `f` on the writer thread (one write at a time; `f` manages its transaction).
    async fn with<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.conns.write(f).await
    }

    /// Run `f` on the writer thread in a savepoint of a group transaction (group commit;
    /// see [`connection`]). `f` keeps its changes with `Savepoint::commit`. `role`: which
    /// group `f` may join (an interruptible processor run may not join every group).
    async fn grouped<T, F>(&self, role: connection::Role, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(rusqlite::Savepoint<'c>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.conns.write_grouped(role, f).await
    }

    /// Run `f` with a read connection on the calling thread (short synchronous reads).
    fn read_blocking<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.conns.read_blocking(f)
    }

    /// A point read on an index (the ledger's latest run: tens of microseconds), run on the
    /// calling task without a hand-off to the blocking pool, which would cost more in
    /// thread wake-ups than the read itself. In memory it waits for the writer thread.
    async fn read_point<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.conns.read_point(f).await
    }

    /// Run `f` with a read connection of the pool.
    async fn read<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.conns.read(f).await
    }

    /// Run DDL or other parameterless statements (setup, sample data).
    pub async fn execute_batch(&self, sql: String) -> Result<(), WarehouseError> {
        let sql = sql::expand_dataset(&sql);
        self.with(move |c| c.execute_batch(&sql))
            .await
            .map_err(WarehouseError)
    }

    /// Direct access for tools that load data in bulk (the sample-data generator), on the
    /// writer thread.
    pub async fn with_connection<T, F>(&self, f: F) -> Result<T, WarehouseError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.with(f).await.map_err(WarehouseError)
    }
}
