//! The append-only run ledger on BigQuery: every state change of a run is a new row.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    BigQuery, LEDGER_SCHEMA, LEDGER_TABLE, Row, date_param, param, parse_bool, parse_bq_ts,
    ts_param,
};
use crate::ledger::{Ledger, LedgerError, RunRecord, RunStatus, TriggerKind};

pub(super) fn record_from_row(r: Row) -> Result<RunRecord, LedgerError> {
    let get = |i: usize| r.get(i).cloned().flatten();
    let need = |i: usize, what: &str| {
        get(i).ok_or_else(|| LedgerError(format!("ledger row without {what}")))
    };
    let status = need(4, "status")?;
    let trigger = need(11, "trigger_source")?;
    let ts = |i: usize| {
        get(i)
            .map(|s| parse_bq_ts(&s))
            .transpose()
            .map_err(LedgerError)
    };
    Ok(RunRecord {
        run_id: need(0, "run_id")?,
        processor: need(1, "processor_name")?,
        phase: need(2, "phase")?,
        data_date: crate::dates::parse_date(&need(3, "data_date")?)
            .map_err(|e| LedgerError(e.to_string()))?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| LedgerError(format!("unknown status {status}")))?,
        started_at: parse_bq_ts(&need(5, "started_at")?).map_err(LedgerError)?,
        finished_at: ts(6)?,
        rows_affected: get(7).and_then(|s| s.parse().ok()),
        errors: get(8),
        findings: get(9).and_then(|s| serde_json::from_str(&s).ok()),
        production_ready: parse_bool(r.get(10).and_then(Option::as_ref)),
        trigger: TriggerKind::parse(&trigger)
            .ok_or_else(|| LedgerError(format!("unknown trigger {trigger}")))?,
        message_id: get(12),
        skip_downstream_trigger: parse_bool(r.get(13).and_then(Option::as_ref)),
        published_at: ts(14)?,
    })
}

#[async_trait]
impl Ledger for BigQuery {
    async fn ensure_schema(&self) -> Result<(), LedgerError> {
        self.ensure_dataset().await.map_err(LedgerError)?;
        let columns = LEDGER_SCHEMA
            .iter()
            .map(|(c, t, mode)| {
                if *mode == "REQUIRED" {
                    format!("{c} {t} NOT NULL")
                } else {
                    format!("{c} {t}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} ({columns}) PARTITION BY data_date CLUSTER BY processor_name",
            t = self.table(LEDGER_TABLE)
        );
        self.query(&sql, Vec::new())
            .await
            .map(|_| ())
            .map_err(LedgerError)
    }

    async fn record(&self, r: &RunRecord) -> Result<(), LedgerError> {
        let sql = format!(
            "INSERT INTO {t} ({cols}, recorded_at) VALUES (@run_id, @processor_name, @phase, \
             @data_date, @status, @started_at, @finished_at, @rows_affected, @errors, @findings, \
             @production_ready, @trigger_source, @message_id, @skip_downstream_trigger, \
             @published_at, CURRENT_TIMESTAMP())",
            t = self.table(LEDGER_TABLE),
            cols = Self::ledger_columns()
        );
        let s = |v: &str| Some(v.to_string());
        let params = vec![
            param("run_id", "STRING", s(&r.run_id)),
            param("processor_name", "STRING", s(&r.processor)),
            param("phase", "STRING", s(&r.phase)),
            date_param("data_date", r.data_date),
            param("status", "STRING", s(r.status.as_str())),
            ts_param("started_at", Some(&r.started_at)),
            ts_param("finished_at", r.finished_at.as_ref()),
            param(
                "rows_affected",
                "INT64",
                r.rows_affected.map(|n| n.to_string()),
            ),
            param("errors", "STRING", r.errors.clone()),
            param(
                "findings",
                "STRING",
                r.findings.as_ref().map(|f| f.to_string()),
            ),
            param(
                "production_ready",
                "BOOL",
                s(if r.production_ready { "true" } else { "false" }),
            ),
            param("trigger_source", "STRING", s(r.trigger.as_str())),
            param("message_id", "STRING", r.message_id.clone()),
            param(
                "skip_downstream_trigger",
                "BOOL",
                s(if r.skip_downstream_trigger {
                    "true"
                } else {
                    "false"
                }),
            ),
            ts_param("published_at", r.published_at.as_ref()),
        ];
        self.query(&sql, params)
            .await
            .map(|_| ())
            .map_err(LedgerError)
    }

    async fn latest(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Option<RunRecord>, LedgerError> {
        // History is oldest first: the latest run is its last.
        Ok(self.history(processor, date).await?.pop())
    }

    async fn history(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let mut runs = self
            .runs(
                "processor_name = @p AND data_date = @d",
                vec![
                    param("p", "STRING", Some(processor.to_string())),
                    date_param("d", date),
                ],
            )
            .await?;
        runs.reverse();
        Ok(runs)
    }

    async fn latest_in_range(
        &self,
        processor: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let runs = self
            .runs(
                "processor_name = @p AND data_date BETWEEN @f AND @t",
                vec![
                    param("p", "STRING", Some(processor.to_string())),
                    date_param("f", from),
                    date_param("t", to),
                ],
            )
            .await?;
        // Sorted by date, newest run first within a date: keep the first of each date.
        let mut out: Vec<RunRecord> = Vec::new();
        for run in runs {
            if out.last().is_none_or(|l| l.data_date != run.data_date) {
                out.push(run);
            }
        }
        Ok(out)
    }

    async fn withdraw(&self, run: &RunRecord) -> Result<(), LedgerError> {
        // The one exception to append-only: a claim that did no work disappears. Rows
        // written by DML (never streamed) can be deleted at once.
        let sql = format!("DELETE FROM {} WHERE run_id = @r", self.table(LEDGER_TABLE));
        self.query(&sql, vec![param("r", "STRING", Some(run.run_id.clone()))])
            .await
            .map(|_| ())
            .map_err(LedgerError)
    }

    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        for run in runs {
            let mut next = run.clone();
            next.published_at = Some(at);
            self.record(&next).await?;
        }
        Ok(())
    }
}
