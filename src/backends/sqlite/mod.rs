//! The embedded warehouse and ledger: one SQLite file (rusqlite, bundled).
//!
//! Dates are stored as `YYYY-MM-DD` text, timestamps as RFC 3339 text in UTC. The connection
//! sits behind a mutex and every call runs on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, Row};

use crate::ledger::{RunRecord, RunStatus, TriggerKind};
use crate::warehouse::WarehouseError;

/// A SQLite database used as both warehouse and ledger.
#[derive(Clone)]
pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
}

const LEDGER_DDL: &str = "
CREATE TABLE IF NOT EXISTS processor_run_history (
    run_id TEXT PRIMARY KEY,
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
    skip_downstream_trigger INTEGER NOT NULL,
    published_at TEXT
);
CREATE INDEX IF NOT EXISTS processor_run_history_by_date
    ON processor_run_history (processor_name, data_date, started_at);
";

const LEDGER_COLUMNS: &str = "run_id, processor_name, phase, data_date, status, started_at, \
    finished_at, rows_affected, errors, findings, production_ready, trigger_source, message_id, \
    skip_downstream_trigger, published_at";

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
    let status: String = row.get(4)?;
    let trigger: String = row.get(11)?;
    let findings: Option<String> = row.get(9)?;
    Ok(RunRecord {
        run_id: row.get(0)?,
        processor: row.get(1)?,
        phase: row.get(2)?,
        data_date: parse_day(&row.get::<_, String>(3)?)?,
        status: RunStatus::parse(&status).ok_or_else(|| bad_column("status", &status))?,
        started_at: parse_ts(&row.get::<_, String>(5)?)?,
        finished_at: row
            .get::<_, Option<String>>(6)?
            .map(|s| parse_ts(&s))
            .transpose()?,
        rows_affected: row.get(7)?,
        errors: row.get(8)?,
        findings: findings.and_then(|f| serde_json::from_str(&f).ok()),
        production_ready: row.get(10)?,
        trigger: TriggerKind::parse(&trigger).ok_or_else(|| bad_column("trigger", &trigger))?,
        message_id: row.get(12)?,
        skip_downstream_trigger: row.get(13)?,
        published_at: row
            .get::<_, Option<String>>(14)?
            .map(|s| parse_ts(&s))
            .transpose()?,
    })
}

impl Sqlite {
    /// Open (or create) the database file.
    pub fn open(path: &Path) -> Result<Sqlite, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` with the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| "sqlite connection poisoned".to_string())?;
            f(&mut guard).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("sqlite task failed: {e}"))?
    }

    /// Run DDL or other parameterless statements (setup, sample data).
    pub async fn execute_batch(&self, sql: String) -> Result<(), WarehouseError> {
        let sql = warehouse::expand_dataset(&sql);
        self.with(move |c| c.execute_batch(&sql))
            .await
            .map_err(WarehouseError)
    }

    /// Direct access for tools that load data in bulk (the sample-data generator).
    pub async fn with_connection<T, F>(&self, f: F) -> Result<T, WarehouseError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.with(f).await.map_err(WarehouseError)
    }
}

mod ledger;
pub mod queue;
mod warehouse;
