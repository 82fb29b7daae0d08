//! The run ledger on SQLite: `processor_run_history` in the same file as the warehouse.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{OptionalExtension, params};

use super::{LEDGER_COLUMNS, LEDGER_DDL, Sqlite, record_from_row, ts};
use crate::ledger::{Ledger, LedgerError, RunRecord};

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
