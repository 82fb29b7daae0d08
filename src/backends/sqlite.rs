//! The embedded warehouse and ledger: one SQLite file (rusqlite, bundled).
//!
//! Dates are stored as `YYYY-MM-DD` text, timestamps as RFC 3339 text in UTC. The connection
//! sits behind a mutex and every call runs on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::config::{EntityCompleteness, Reference};
use crate::ledger::{Ledger, LedgerError, RunRecord, RunStatus, TriggerKind};
use crate::warehouse::{DatePresence, EntityCount, Warehouse, WarehouseError};

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
        let sql = expand_dataset(&sql);
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

#[async_trait]
impl Ledger for Sqlite {
    async fn ensure_schema(&self) -> Result<(), LedgerError> {
        self.with(|c| c.execute_batch(LEDGER_DDL))
            .await
            .map_err(LedgerError)
    }

    async fn record(&self, r: &RunRecord) -> Result<(), LedgerError> {
        let r = r.clone();
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT OR REPLACE INTO processor_run_history ({LEDGER_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                ),
                params![
                    r.run_id,
                    r.processor,
                    r.phase,
                    r.data_date.to_string(),
                    r.status.as_str(),
                    ts(&r.started_at),
                    r.finished_at.as_ref().map(ts),
                    r.rows_affected,
                    r.errors,
                    r.findings.as_ref().map(|f| f.to_string()),
                    r.production_ready,
                    r.trigger.as_str(),
                    r.message_id,
                    r.skip_downstream_trigger,
                    r.published_at.as_ref().map(ts),
                ],
            )
            .map(|_| ())
        })
        .await
        .map_err(LedgerError)
    }

    async fn latest(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Option<RunRecord>, LedgerError> {
        let processor = processor.to_string();
        self.with(move |c| {
            c.query_row(
                &format!(
                    "SELECT {LEDGER_COLUMNS} FROM processor_run_history \
                     WHERE processor_name = ?1 AND data_date = ?2 \
                     ORDER BY started_at DESC, rowid DESC LIMIT 1"
                ),
                params![processor, date.to_string()],
                record_from_row,
            )
            .optional()
        })
        .await
        .map_err(LedgerError)
    }

    async fn history(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let processor = processor.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {LEDGER_COLUMNS} FROM processor_run_history \
                 WHERE processor_name = ?1 AND data_date = ?2 ORDER BY started_at, rowid"
            ))?;
            let rows = stmt.query_map(params![processor, date.to_string()], record_from_row)?;
            rows.collect()
        })
        .await
        .map_err(LedgerError)
    }

    async fn latest_in_range(
        &self,
        processor: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let processor = processor.to_string();
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {LEDGER_COLUMNS} FROM (
                    SELECT *, ROW_NUMBER() OVER (
                        PARTITION BY data_date ORDER BY started_at DESC, rowid DESC) AS rn
                    FROM processor_run_history
                    WHERE processor_name = ?1 AND data_date BETWEEN ?2 AND ?3)
                 WHERE rn = 1 ORDER BY data_date"
            ))?;
            let rows = stmt.query_map(
                params![processor, from.to_string(), to.to_string()],
                record_from_row,
            )?;
            rows.collect()
        })
        .await
        .map_err(LedgerError)
    }

    async fn withdraw(&self, run: &RunRecord) -> Result<(), LedgerError> {
        let id = run.run_id.clone();
        self.with(move |c| {
            c.execute(
                "DELETE FROM processor_run_history WHERE run_id = ?1 AND status = 'running'",
                params![id],
            )
            .map(|_| ())
        })
        .await
        .map_err(LedgerError)
    }

    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "UPDATE processor_run_history SET published_at = ?1 WHERE run_id = ?2",
                )?;
                for id in &ids {
                    stmt.execute(params![ts(&at), id])?;
                }
            }
            tx.commit()
        })
        .await
        .map_err(LedgerError)
    }
}

/// `{dataset}` in configured SQL is SQLite's main schema.
fn expand_dataset(sql: &str) -> String {
    sql.replace(crate::config::DATASET_PLACEHOLDER, "main")
}

/// Bound as `@data_date` in processor statements.
const DATA_DATE_PARAM: &str = "@data_date";

#[async_trait]
impl Warehouse for Sqlite {
    async fn run_statements(
        &self,
        statements: &[String],
        date: NaiveDate,
    ) -> Result<(), WarehouseError> {
        let statements: Vec<String> = statements.iter().map(|s| expand_dataset(s)).collect();
        self.with(move |c| {
            let tx = c.transaction()?;
            for sql in &statements {
                let mut stmt = tx.prepare(sql)?;
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
            tx.commit()
        })
        .await
        .map_err(WarehouseError)
    }

    async fn count_rows(
        &self,
        table: &str,
        date_column: &str,
        date: NaiveDate,
    ) -> Result<u64, WarehouseError> {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {date_column} = ?1");
        self.with(move |c| c.query_row(&sql, params![date.to_string()], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| n.max(0) as u64)
            .map_err(WarehouseError)
    }

    async fn date_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        let expected_cte = match expected {
            None => "expected(d) AS (SELECT date(:from) UNION ALL \
                     SELECT date(d, '+1 day') FROM expected WHERE d < date(:to))"
                .to_string(),
            Some(r) => format!(
                "expected(d) AS (SELECT DISTINCT {c} FROM {t} WHERE {c} BETWEEN :from AND :to)",
                c = r.date_column,
                t = r.table
            ),
        };
        let sql = format!(
            "WITH RECURSIVE {expected_cte},
             actual(d) AS (SELECT DISTINCT {date_column} FROM {table}
                           WHERE {date_column} BETWEEN :from AND :to)
             SELECT e.d, a.d IS NOT NULL FROM expected e LEFT JOIN actual a ON a.d = e.d
             ORDER BY e.d"
        );
        self.with(move |c| {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(
                rusqlite::named_params! {":from": from.to_string(), ":to": to.to_string()},
                |row| {
                    Ok(DatePresence {
                        date: parse_day(&row.get::<_, String>(0)?)?,
                        present: row.get(1)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
        .map_err(WarehouseError)
    }

    async fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError> {
        let window = crate::warehouse::entity_window(spec, reference, date)?;
        let (floor, max_games) = (window.floor, window.max_dates);
        let sql = format!(
            "WITH ref AS (
                SELECT DISTINCT CAST({re} AS TEXT) AS entity, {rd} AS d FROM {rt}
                WHERE {rd} < :date AND {rd} >= :floor),
             ranked AS (
                SELECT entity, d, ROW_NUMBER() OVER (PARTITION BY entity ORDER BY d DESC) AS rn
                FROM ref),
             expected AS (SELECT entity, d FROM ranked WHERE rn <= :max_games),
             actual AS (
                SELECT DISTINCT CAST({ue} AS TEXT) AS entity, {ud} AS d FROM {ut}
                WHERE {ud} < :date AND {ud} >= :floor)
             SELECT e.entity, COUNT(*), COUNT(a.d)
             FROM expected e LEFT JOIN actual a ON a.entity = e.entity AND a.d = e.d
             GROUP BY e.entity ORDER BY e.entity",
            re = window.entity_column,
            rd = reference.date_column,
            rt = reference.table,
            ue = spec.upstream_entity_column,
            ud = spec.upstream_date_column,
            ut = spec.upstream_table,
        );
        self.with(move |c| {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(
                rusqlite::named_params! {
                    ":date": date.to_string(),
                    ":floor": floor.to_string(),
                    ":max_games": max_games,
                },
                |row| {
                    Ok(EntityCount {
                        entity: row.get(0)?,
                        expected: row.get::<_, i64>(1)?.max(0) as u64,
                        actual: row.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )?;
            rows.collect()
        })
        .await
        .map_err(WarehouseError)
    }
}
