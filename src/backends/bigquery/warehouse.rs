//! The production warehouse: processors' statements and the gate's counting queries on BigQuery.

use async_trait::async_trait;
use chrono::NaiveDate;

use std::sync::Arc;

use super::{BigQuery, JobError, LEDGER_TABLE, date_param, param, parse_bool, script};
use crate::config::{EntityCompleteness, Reference};
use crate::ledger::{Ledger, RunRecord};
use crate::warehouse::{
    Committed, DatePresence, EntityCount, ProcessorRun, Warehouse, WarehouseError, finished,
    post_condition,
};

impl BigQuery {
    /// The lock a run script takes: its output table's (or, without one, its processor's).
    fn turn(&self, job: &ProcessorRun<'_>, processor: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = match job.output {
            Some(out) => self.table(&out.table),
            None => format!("processor {processor}"),
        };
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(turns.entry(key).or_default())
    }

    /// `SELECT COUNT(*) FROM table WHERE <its date column is date>` with literals (scripts).
    fn count_sql(&self, table: &str, date_column: &str, date: NaiveDate) -> String {
        format!(
            "SELECT COUNT(*) AS n FROM {} WHERE {} = {}",
            self.table(table),
            day(date_column),
            script::date(date)
        )
    }

    /// A processor run as one script in one transaction (one job): the claim must still be
    /// this run's, then its statements, the post-condition, and its outcome row (status and
    /// row count computed in the script). A raised error rolls every statement back.
    fn run_script(&self, job: &ProcessorRun<'_>, template: &RunRecord) -> String {
        let d = job.date;
        let mut steps = vec![
            "BEGIN TRANSACTION".to_string(),
            format!(
                "SELECT IF({holder} = {id}, 0, ERROR('{lost}'))",
                holder = self.holder_sql(&template.processor, d),
                id = script::string(Some(&template.run_id)),
                lost = script::CLAIM_LOST
            ),
        ];
        steps.extend(
            job.statements
                .iter()
                .map(|sql| script::bind_data_date(&self.expand(sql), d)),
        );
        let mut outcome = script::ledger_row_select(template, &self.pipeline, &[]);
        let mut rows = "SELECT CAST(NULL AS INT64)".to_string();
        if let Some(out) = job.output {
            let count = self.count_sql(&out.table, &out.date_column, d);
            if let Some(r) = job.require_rows {
                let scheduled = self.count_sql(&r.table, &r.date_column, d);
                steps.push(format!(
                    "SELECT IF(({count}) = 0 AND ({scheduled}) > 0, \
                     ERROR(CONCAT('{pc} ', CAST(({scheduled}) AS STRING))), 0)",
                    pc = script::POST_CONDITION
                ));
            }
            outcome = format!(
                "{} FROM ({count}) AS o",
                script::ledger_row_select(
                    template,
                    &self.pipeline,
                    &[
                        ("status", "IF(o.n = 0, 'no_data', 'success')".to_string()),
                        ("rows_affected", "o.n".to_string()),
                    ],
                )
            );
            rows = count;
        }
        steps.push(format!(
            "INSERT INTO {l} ({cols}, recorded_at) {outcome}",
            l = self.table(LEDGER_TABLE),
            cols = Self::ledger_columns(),
        ));
        steps.push("COMMIT TRANSACTION".to_string());
        steps.push(rows);
        steps.join(";\n")
    }
}

/// What a script's raised error means (`None`: a real failure).
fn scripted_outcome(error: &str, job: &ProcessorRun<'_>) -> Option<Committed> {
    if error.contains(script::CLAIM_LOST) {
        return Some(Committed::TakenOver);
    }
    let (_, tail) = error.split_once(script::POST_CONDITION)?;
    let scheduled: u64 = tail
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let reason = post_condition(Some(0), scheduled, job.require_rows?, job.date)?;
    Some(Committed::PostCondition(reason))
}

#[async_trait]
impl Warehouse for BigQuery {
    async fn run_and_record(
        &self,
        job: &ProcessorRun<'_>,
        run: RunRecord,
        _ledger: &dyn Ledger,
    ) -> Result<Committed, WarehouseError> {
        // The template's finish time and lease are what the outcome row records.
        let template = finished(run, None);
        let sql = self.run_script(job, &template);
        let labels = self.labels(&[
            ("phase", &template.phase),
            ("processor", &template.processor),
            ("run_id", &template.run_id),
            ("job", "run"),
        ]);
        // One run script per output table at a time in this process: BigQuery cancels the
        // later of two concurrent transactions that delete from the same table, so dates
        // of one processor (a parallel backfill, concurrent pushes) take turns here instead
        // of aborting each other. Across processes the conflict is retried as a new job.
        let turn = self.turn(job, &template.processor);
        let _turn = match tokio::time::timeout_at(job.deadline.into(), turn.lock_owned()).await {
            Ok(guard) => guard,
            Err(_) => {
                return Ok(Committed::Unavailable(format!(
                    "waited for another run of the same output table until the deadline ({})",
                    template.processor
                )));
            }
        };
        let rows = match self.insert_job(&sql, labels, job.deadline).await {
            Ok(rows) => rows,
            Err(e @ JobError::Exhausted { .. }) => {
                return Ok(Committed::Unavailable(e.to_string()));
            }
            Err(JobError::Failed(e)) => return scripted_outcome(&e, job).ok_or(WarehouseError(e)),
        };
        let count = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| s.parse::<u64>().ok());
        let finished_at = template.finished_at;
        let mut done = finished(template, count);
        done.finished_at = finished_at;
        Ok(Committed::Done(Box::new(done)))
    }

    async fn run_statements(
        &self,
        statements: &[String],
        date: NaiveDate,
    ) -> Result<(), WarehouseError> {
        // One job per statement, in order (a script cannot take parameters on every
        // backend). Processors are written as idempotent DELETE + INSERT, so a retry after a
        // failure part-way is safe.
        for sql in statements {
            let params = if sql.contains("@data_date") {
                vec![date_param("data_date", date)]
            } else {
                Vec::new()
            };
            self.query(&self.expand(sql), params)
                .await
                .map_err(WarehouseError)?;
        }
        Ok(())
    }

    async fn count_rows(
        &self,
        t: &str,
        date_column: &str,
        date: NaiveDate,
    ) -> Result<u64, WarehouseError> {
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE {} = @d",
            self.table(t),
            day(date_column)
        );
        let rows = self
            .query(&sql, vec![date_param("d", date)])
            .await
            .map_err(WarehouseError)?;
        Ok(rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    async fn date_presence(
        &self,
        t: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        let expected_cte = match expected {
            None => {
                "expected AS (SELECT d FROM UNNEST(GENERATE_DATE_ARRAY(@f, @t)) AS d)".to_string()
            }
            Some(r) => format!(
                "expected AS (SELECT DISTINCT {c} AS d FROM {t} WHERE {c} BETWEEN @f AND @t)",
                c = day(&r.date_column),
                t = self.table(&r.table)
            ),
        };
        let sql = format!(
            "WITH {expected_cte},
             actual AS (SELECT DISTINCT {c} AS d FROM {t} WHERE {c} BETWEEN @f AND @t)
             SELECT CAST(e.d AS STRING), a.d IS NOT NULL FROM expected e LEFT JOIN actual a ON a.d = e.d
             ORDER BY e.d",
            c = day(date_column),
            t = self.table(t)
        );
        let rows = self
            .query(&sql, vec![date_param("f", from), date_param("t", to)])
            .await
            .map_err(WarehouseError)?;
        rows.into_iter()
            .map(|r| {
                let date = r.first().cloned().flatten().unwrap_or_default();
                Ok(DatePresence {
                    date: crate::dates::parse_date(&date)
                        .map_err(|e| WarehouseError(e.to_string()))?,
                    present: parse_bool(r.get(1).and_then(Option::as_ref)),
                })
            })
            .collect()
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
                SELECT DISTINCT CAST({re} AS STRING) AS entity, {rd} AS d FROM {rt}
                WHERE {rd} BETWEEN @floor AND @last),
             ranked AS (
                SELECT entity, d, ROW_NUMBER() OVER (PARTITION BY entity ORDER BY d DESC) AS rn FROM ref),
             expected AS (SELECT entity, d FROM ranked WHERE rn <= @max_dates),
             actual AS (
                SELECT DISTINCT CAST({ue} AS STRING) AS entity, {ud} AS d FROM {ut}
                WHERE {ud} BETWEEN @floor AND @last)
             SELECT e.entity, COUNT(*), COUNT(a.d)
             FROM expected e LEFT JOIN actual a ON a.entity = e.entity AND a.d = e.d
             GROUP BY e.entity ORDER BY e.entity",
            re = window.entity_column,
            rd = day(&reference.date_column),
            rt = self.table(&reference.table),
            ue = spec.upstream_entity_column,
            ud = day(&spec.upstream_date_column),
            ut = self.table(&spec.upstream_table),
        );
        let rows = self
            .query(
                &sql,
                vec![
                    date_param("floor", window.floor),
                    date_param("last", window.last),
                    param("max_dates", "INT64", Some(window.max_dates.to_string())),
                ],
            )
            .await
            .map_err(WarehouseError)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let n = |i: usize| {
                    r.get(i)
                        .cloned()
                        .flatten()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                };
                EntityCount {
                    entity: r.first().cloned().flatten().unwrap_or_default(),
                    expected: n(1),
                    actual: n(2),
                }
            })
            .collect())
    }
}

/// A date column read as a DATE: `DATE()` of a DATE is the date itself, of a DATETIME its
/// day, of a TIMESTAMP its day in UTC.
fn day(column: &str) -> String {
    format!("DATE({column})")
}
