//! The embedded warehouse: processors' statements and the gate's counting queries on SQLite.

use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::params;

use super::{Sqlite, parse_day};
use crate::config::{EntityCompleteness, Reference};
use crate::ledger::{Ledger, RunRecord};
use crate::warehouse::{
    Committed, DatePresence, EntityCount, ProcessorRun, Warehouse, WarehouseError,
};

/// `{dataset}` in configured SQL is SQLite's main schema.
pub(super) fn expand_dataset(sql: &str) -> String {
    sql.replace(crate::config::DATASET_PLACEHOLDER, "main")
}

/// Rows of `table` on one date (`?1`).
pub(super) fn count_rows_sql(table: &str, date_column: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM {table} WHERE {}",
        days_between(date_column, "?1", "?1")
    )
}

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
            super::atomic::execute_statements(&tx, &statements, date)?;
            tx.commit()
        })
        .await
        .map_err(WarehouseError)
    }

    async fn run_and_record(
        &self,
        job: &ProcessorRun<'_>,
        run: RunRecord,
        _ledger: &dyn Ledger,
    ) -> Result<Committed, WarehouseError> {
        self.run_atomic(job, run).await
    }

    async fn count_rows(
        &self,
        table: &str,
        date_column: &str,
        date: NaiveDate,
    ) -> Result<u64, WarehouseError> {
        let sql = count_rows_sql(table, date_column);
        // One date on the date index: short enough to run on the calling task.
        self.read_point(move |c| {
            c.prepare_cached(&sql)?
                .query_row(params![date.to_string()], |r| r.get::<_, i64>(0))
        })
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
        // Every day of the window is expected unless a reference table says which are.
        let (expected_cte, every_day) = match expected {
            None => (
                "expected(d) AS (SELECT value FROM json_each(:days))".to_string(),
                Some(
                    serde_json::to_string(&crate::dates::days(from, to).collect::<Vec<_>>())
                        .map_err(|e| WarehouseError(e.to_string()))?,
                ),
            ),
            Some(r) => (
                format!(
                    "expected(d) AS (SELECT DISTINCT {c} FROM {t} WHERE {range})",
                    c = day(&r.date_column),
                    t = r.table,
                    range = days_between(&r.date_column, ":from", ":to"),
                ),
                None,
            ),
        };
        // One index probe per expected date (it stops at the first row), rather than
        // reading and normalising every row of the window.
        let sql = format!(
            "WITH {expected_cte}
             SELECT e.d, EXISTS (SELECT 1 FROM {table} WHERE {present})
             FROM expected e ORDER BY e.d",
            present = days_between(date_column, "e.d", "e.d"),
        );
        let (from, to) = (from.to_string(), to.to_string());
        // One index probe per day of a bounded window: short enough for the calling task.
        self.read_point(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let params: Vec<(&str, &dyn rusqlite::ToSql)> = match &every_day {
                Some(days) => vec![(":days", days)],
                None => vec![(":from", &from), (":to", &to)],
            };
            let rows = stmt.query_map(params.as_slice(), |row| {
                Ok(DatePresence {
                    date: parse_day(&row.get::<_, String>(0)?)?,
                    present: row.get(1)?,
                })
            })?;
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
        let sql = format!(
            "WITH ref AS (
                SELECT DISTINCT CAST({re} AS TEXT) AS entity, {rd} AS d FROM {rt}
                WHERE {rr}),
             ranked AS (
                SELECT entity, d, ROW_NUMBER() OVER (PARTITION BY entity ORDER BY d DESC) AS rn
                FROM ref),
             expected AS (SELECT entity, d FROM ranked WHERE rn <= :max_dates),
             actual AS (
                SELECT DISTINCT CAST({ue} AS TEXT) AS entity, {ud} AS d FROM {ut}
                WHERE {ur})
             SELECT e.entity, COUNT(*), COUNT(a.d)
             FROM expected e LEFT JOIN actual a ON a.entity = e.entity AND a.d = e.d
             GROUP BY e.entity ORDER BY e.entity",
            re = window.entity_column,
            rd = day(&reference.date_column),
            rt = reference.table,
            rr = days_between(&reference.date_column, ":floor", ":last"),
            ue = spec.upstream_entity_column,
            ud = day(&spec.upstream_date_column),
            ut = spec.upstream_table,
            ur = days_between(&spec.upstream_date_column, ":floor", ":last"),
        );
        let (floor, last, max_dates) = (window.floor, window.last, window.max_dates);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                rusqlite::named_params! {
                    ":floor": floor.to_string(),
                    ":last": last.to_string(),
                    ":max_dates": max_dates,
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

/// A date column read as a `YYYY-MM-DD` day: dates stored as text, datetimes stored as text
/// (`2024-01-05 18:30:00`, `2024-01-05T18:30:00Z`) and both count by calendar day.
fn day(column: &str) -> String {
    format!("date({column})")
}

/// Rows whose `column` falls on a day from `from` to `to` (both SQL parameters), written so
/// SQLite can use an index on `column`: a text date or datetime sorts after its day's
/// `YYYY-MM-DD` and before the next day's. (`date(column) BETWEEN …` reads every row.)
fn days_between(column: &str, from: &str, to: &str) -> String {
    format!("({column} >= date({from}) AND {column} < date({to}, '+1 day'))")
}
