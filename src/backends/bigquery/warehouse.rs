//! The production warehouse: processors' statements and the gate's counting queries on BigQuery.

use async_trait::async_trait;
use chrono::NaiveDate;

use std::sync::Arc;

use gcp_bigquery_client::model::field_type::FieldType;

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
    fn count_sql(&self, table: &str, date_column: &str, kind: DateKind, date: NaiveDate) -> String {
        let d = script::date(date);
        format!(
            "SELECT COUNT(*) AS n FROM {} WHERE {}",
            self.table(table),
            on_days(kind, date_column, &d, &d)
        )
    }

    /// `table` as SQL with its date column and that column's type.
    async fn dated<'a>(&self, table: &str, column: &'a str) -> Dated<'a> {
        Dated {
            table: self.table(table),
            column,
            kind: self.date_kind(table, column).await,
        }
    }

    /// The type of `table.column` (from the table's schema, looked up once per process;
    /// `Other` when it cannot be read).
    pub(super) async fn date_kind(&self, table: &str, column: &str) -> DateKind {
        let key = format!("{}.{column}", self.table(table));
        if let Some(k) = self
            .date_kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return *k;
        }
        let (project, dataset, name) = match table.split('.').collect::<Vec<_>>().as_slice() {
            [t] => (self.project.clone(), self.dataset.clone(), t.to_string()),
            [d, t] => (self.project.clone(), d.to_string(), t.to_string()),
            [p, d, t] => (p.to_string(), d.to_string(), t.to_string()),
            _ => return DateKind::Other,
        };
        let kind = match self
            .client
            .table()
            .get(&project, &dataset, &name, None)
            .await
        {
            Ok(t) => t
                .schema
                .fields
                .unwrap_or_default()
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(column))
                .map_or(DateKind::Other, |f| match f.r#type {
                    FieldType::Date => DateKind::Date,
                    FieldType::Datetime => DateKind::Datetime,
                    FieldType::Timestamp => DateKind::Timestamp,
                    _ => DateKind::Other,
                }),
            Err(e) => {
                tracing::warn!(table, column, error = %e,
                    "could not read the column's type; filtering through DATE() (no pruning)");
                return DateKind::Other;
            }
        };
        self.date_kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, kind);
        kind
    }

    /// A processor run as one script in one transaction (one job): the claim must still be
    /// this run's, then its statements, the post-condition, and its outcome row (status and
    /// row count computed in the script). A raised error rolls every statement back.
    ///
    /// The output's rows for the date are counted once, inside the transaction after the
    /// statements (its snapshot plus its own writes: this run's rows), into the script
    /// variable [`ROWS_VARIABLE`]; the post-condition, the ledger row and the job's answer
    /// (the `SELECT` after `COMMIT`) all read that variable. A count read after the commit
    /// would see the table as it is by then: another run of the same date committing in
    /// between (a takeover) would be counted as this run's.
    fn run_script(
        &self,
        job: &ProcessorRun<'_>,
        template: &RunRecord,
        kinds: (DateKind, DateKind),
    ) -> String {
        let d = job.date;
        let mut steps = Vec::new();
        if job.output.is_some() {
            // DECLARE comes first in a script, before the transaction.
            steps.push(format!("DECLARE {ROWS_VARIABLE} INT64"));
        }
        steps.push("BEGIN TRANSACTION".to_string());
        steps.push(format!(
            "SELECT IF({holds}, 0, ERROR('{lost}'))",
            holds = self.holds(&template.processor, d, &template.run_id),
            lost = script::CLAIM_LOST
        ));
        steps.extend(
            job.statements
                .iter()
                .map(|sql| script::bind_data_date(&self.expand(sql), d)),
        );
        let mut outcome = script::ledger_row_select(template, &self.pipeline, &[]);
        let mut rows = "SELECT CAST(NULL AS INT64)".to_string();
        if let Some(out) = job.output {
            let count = self.count_sql(&out.table, &out.date_column, kinds.0, d);
            steps.push(format!("SET {ROWS_VARIABLE} = ({count})"));
            if let Some(r) = job.require_rows {
                let scheduled = self.count_sql(&r.table, &r.date_column, kinds.1, d);
                steps.push(format!(
                    "SELECT IF({ROWS_VARIABLE} = 0 AND ({scheduled}) > 0, \
                     ERROR(CONCAT('{pc} ', CAST(({scheduled}) AS STRING))), 0)",
                    pc = script::POST_CONDITION
                ));
            }
            outcome = script::ledger_row_select(
                template,
                &self.pipeline,
                &[
                    (
                        "status",
                        format!("IF({ROWS_VARIABLE} = 0, 'no_data', 'success')"),
                    ),
                    ("rows_affected", ROWS_VARIABLE.to_string()),
                ],
            );
            rows = format!("SELECT {ROWS_VARIABLE}");
        }
        // At commit, not only at the start: the claim must still be this run's and the run
        // not released (a delivery that gave up writes its release only after this job has
        // ended, `Ledger::complete`; this check catches a release committed before the
        // transaction's snapshot, and a takeover). The outcome row and COMMIT follow.
        steps.push(format!(
            "SELECT IF({holds}, 0, ERROR('{lost}'))",
            holds = self.holds_and_running(&template.processor, d, &template.run_id),
            lost = script::CLAIM_LOST
        ));
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

/// The run script's variable holding the output's row count for the date, as counted inside
/// its transaction.
const ROWS_VARIABLE: &str = "phasegate_output_rows";

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
        let kinds = (
            match job.output {
                Some(o) => self.date_kind(&o.table, &o.date_column).await,
                None => DateKind::Other,
            },
            match job.require_rows {
                Some(r) => self.date_kind(&r.table, &r.date_column).await,
                None => DateKind::Other,
            },
        );
        let sql = self.run_script(job, &template, kinds);
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
        // Held until the job has ended, even when this call is dropped: the run's release
        // waits for it (`Ledger::complete`).
        let settle = self.run_job_lock(&template.run_id).lock_owned().await;
        let rows = match self
            .insert_job(
                &sql,
                labels,
                self.run_bytes_billed(&template.processor),
                job.deadline,
                Some(settle),
            )
            .await
        {
            Ok(rows) => rows,
            Err(e @ JobError::Exhausted { .. }) => {
                // Its release (`complete`) forgets the lock once the job has settled.
                return Ok(Committed::Unavailable(e.to_string()));
            }
            Err(JobError::Failed(e)) => {
                tracing::debug!(run_id = %template.run_id, error = %e, "run script failed");
                self.forget_run_job(&template.run_id);
                return scripted_outcome(&e, job).ok_or(WarehouseError(e));
            }
        };
        self.forget_run_job(&template.run_id);
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
        let sql = count_rows_sql(&self.dated(t, date_column).await);
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
        let expected = match expected {
            Some(r) => Some(self.dated(&r.table, &r.date_column).await),
            None => None,
        };
        let sql = date_presence_sql(&self.dated(t, date_column).await, expected.as_ref());
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
        let sql = entity_counts_sql(
            (
                &self.dated(&reference.table, &reference.date_column).await,
                window.entity_column,
            ),
            (
                &self
                    .dated(&spec.upstream_table, &spec.upstream_date_column)
                    .await,
                &spec.upstream_entity_column,
            ),
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

    async fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError> {
        let sql = reference_in_use_sql(&self.dated(&reference.table, &reference.date_column).await);
        let rows = self.query(&sql, Vec::new()).await.map_err(WarehouseError)?;
        Ok(parse_bool(
            rows.first()
                .and_then(|r| r.first())
                .and_then(Option::as_ref),
        ))
    }
}

/// A table (as SQL) and its date column, which the gate's queries filter on.
struct Dated<'a> {
    table: String,
    column: &'a str,
    kind: DateKind,
}

/// The rows of one day (`@d`).
fn count_rows_sql(t: &Dated<'_>) -> String {
    format!(
        "SELECT COUNT(*) FROM {} WHERE {}",
        t.table,
        on_days(t.kind, t.column, "@d", "@d")
    )
}

/// Each expected day of `@f ..= @t` (every calendar day, or the reference's) and whether `t`
/// has rows on it.
fn date_presence_sql(t: &Dated<'_>, expected: Option<&Dated<'_>>) -> String {
    let expected_cte = match expected {
        None => "expected AS (SELECT d FROM UNNEST(GENERATE_DATE_ARRAY(@f, @t)) AS d)".to_string(),
        Some(r) => format!(
            "expected AS (SELECT DISTINCT {c} AS d FROM {t} WHERE {w})",
            c = day(r.column),
            t = r.table,
            w = on_days(r.kind, r.column, "@f", "@t"),
        ),
    };
    format!(
        "WITH {expected_cte},
         actual AS (SELECT DISTINCT {c} AS d FROM {t} WHERE {w})
         SELECT CAST(e.d AS STRING), a.d IS NOT NULL FROM expected e LEFT JOIN actual a ON a.d = e.d
         ORDER BY e.d",
        c = day(t.column),
        t = t.table,
        w = on_days(t.kind, t.column, "@f", "@t"),
    )
}

/// Per entity of the reference: its last `@max_dates` dates within `@floor ..= @last`, and
/// how many of them the upstream table has (each table with its entity column).
fn entity_counts_sql(reference: (&Dated<'_>, &str), upstream: (&Dated<'_>, &str)) -> String {
    let ((r, re), (u, ue)) = (reference, upstream);
    format!(
        "WITH ref AS (
            SELECT DISTINCT CAST({re} AS STRING) AS entity, {rd} AS d FROM {rt}
            WHERE {rw}),
         ranked AS (
            SELECT entity, d, ROW_NUMBER() OVER (PARTITION BY entity ORDER BY d DESC) AS rn FROM ref),
         expected AS (SELECT entity, d FROM ranked WHERE rn <= @max_dates),
         actual AS (
            SELECT DISTINCT CAST({ue} AS STRING) AS entity, {ud} AS d FROM {ut}
            WHERE {uw})
         SELECT e.entity, COUNT(*), COUNT(a.d)
         FROM expected e LEFT JOIN actual a ON a.entity = e.entity AND a.d = e.d
         GROUP BY e.entity ORDER BY e.entity",
        rd = day(r.column),
        rt = r.table,
        rw = on_days(r.kind, r.column, "@floor", "@last"),
        ud = day(u.column),
        ut = u.table,
        uw = on_days(u.kind, u.column, "@floor", "@last"),
    )
}

/// Whether the reference lists any date at all.
fn reference_in_use_sql(r: &Dated<'_>) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE {})",
        r.table,
        any_day(r.kind, r.column)
    )
}

/// What a date column holds, for a predicate BigQuery can prune partitions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DateKind {
    Date,
    Datetime,
    Timestamp,
    /// Another type (a date as text): read through `DATE()`, no pruning possible.
    Other,
}

/// A date column read as a DATE (for SELECT lists and joins, never for filtering).
fn day(column: &str) -> String {
    format!("DATE({column})")
}

/// `column` within the days `from` ..= `to` (DATE expressions: parameters or literals),
/// comparing the column itself so a partitioned table is pruned
/// (<https://cloud.google.com/bigquery/docs/querying-partitioned-tables#use_a_constant_filter_expression>):
/// a DATE as dates, a DATETIME or TIMESTAMP as the half-open range of those days (UTC).
pub(super) fn on_days(kind: DateKind, column: &str, from: &str, to: &str) -> String {
    let one_day = |f: &str| -> String {
        if from == to {
            format!("{column} = {f}")
        } else {
            format!("{column} BETWEEN {f} AND {to}")
        }
    };
    match kind {
        DateKind::Date => one_day(from),
        DateKind::Datetime => format!(
            "{column} >= DATETIME({from}) AND {column} < DATETIME(DATE_ADD({to}, INTERVAL 1 DAY))"
        ),
        DateKind::Timestamp => format!(
            "{column} >= TIMESTAMP({from}) AND {column} < TIMESTAMP(DATE_ADD({to}, INTERVAL 1 DAY))"
        ),
        DateKind::Other => {
            if from == to {
                format!("DATE({column}) = {from}")
            } else {
                format!("DATE({column}) BETWEEN {from} AND {to}")
            }
        }
    }
}

/// `column` holds a date at all (is not NULL), as a constant comparison on the column itself:
/// a filter BigQuery can eliminate partitions with, which a table with
/// `require_partition_filter` demands of every query
/// (<https://cloud.google.com/bigquery/docs/querying-partitioned-tables>). It keeps every
/// partition but the NULL one: the same rows as `IS NOT NULL`, since no value is earlier.
pub(super) fn any_day(kind: DateKind, column: &str) -> String {
    match kind {
        DateKind::Date => format!("{column} >= DATE '0001-01-01'"),
        DateKind::Datetime => format!("{column} >= DATETIME '0001-01-01 00:00:00'"),
        DateKind::Timestamp => format!("{column} >= TIMESTAMP '0001-01-01 00:00:00+00'"),
        // Text cannot partition a table.
        DateKind::Other => format!("{column} IS NOT NULL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_columns_are_filtered_as_themselves_so_partitions_are_pruned() {
        assert_eq!(
            on_days(DateKind::Date, "game_date", "@d", "@d"),
            "game_date = @d"
        );
        assert_eq!(
            on_days(DateKind::Date, "game_date", "@f", "@t"),
            "game_date BETWEEN @f AND @t"
        );
        assert_eq!(
            on_days(DateKind::Timestamp, "ts", "@d", "@d"),
            "ts >= TIMESTAMP(@d) AND ts < TIMESTAMP(DATE_ADD(@d, INTERVAL 1 DAY))"
        );
        assert_eq!(
            on_days(DateKind::Datetime, "dt", "@f", "@t"),
            "dt >= DATETIME(@f) AND dt < DATETIME(DATE_ADD(@t, INTERVAL 1 DAY))"
        );
        assert_eq!(
            on_days(
                DateKind::Date,
                "d",
                "DATE '2024-01-05'",
                "DATE '2024-01-05'"
            ),
            "d = DATE '2024-01-05'"
        );
        // No function around a DATE, DATETIME or TIMESTAMP column on the left of the filter.
        for kind in [DateKind::Date, DateKind::Datetime, DateKind::Timestamp] {
            for sql in [
                on_days(kind, "c", "@d", "@d"),
                on_days(kind, "c", "@f", "@t"),
            ] {
                assert!(sql.starts_with("c "), "{sql}");
                assert!(!sql.contains("DATE(c)"), "{sql}");
            }
        }
        assert_eq!(on_days(DateKind::Other, "s", "@d", "@d"), "DATE(s) = @d");
    }

    /// A handle whose client is never called (an emulator address nothing listens on).
    async fn offline() -> BigQuery {
        let cfg = crate::config::BackendConfig {
            kind: crate::config::BackendKind::Bigquery,
            project: Some("p".into()),
            dataset: Some("d".into()),
            emulator_host: Some("127.0.0.1:9".into()),
            ..Default::default()
        };
        BigQuery::connect(&cfg)
            .await
            .expect("no request is sent")
            .for_pipeline("nba")
    }

    #[tokio::test]
    async fn the_run_script_counts_its_output_once_inside_its_transaction_and_answers_that_count() {
        let bq = offline().await;
        let day = NaiveDate::from_ymd_opt(2024, 1, 5).expect("date");
        let output = crate::config::Output {
            table: "raw".into(),
            date_column: "game_date".into(),
            expected: Some("schedule".into()),
            require_rows_setting: None,
            require_rows: true,
        };
        let schedule = Reference {
            table: "schedule".into(),
            date_column: "game_date".into(),
            entity_column: None,
        };
        let statements = [
            "DELETE FROM {dataset}.raw WHERE game_date = @data_date".to_string(),
            "INSERT INTO {dataset}.raw SELECT * FROM {dataset}.feed WHERE game_date = @data_date"
                .to_string(),
        ];
        let job = ProcessorRun {
            statements: &statements,
            date: day,
            output: Some(&output),
            require_rows: Some(&schedule),
            deadline: std::time::Instant::now(),
        };
        let template = RunRecord::start(
            "ingest",
            "raw",
            day,
            crate::ledger::TriggerKind::Cli,
            None,
            false,
        );
        let sql = bq.run_script(&job, &template, (DateKind::Date, DateKind::Date));
        let steps: Vec<&str> = sql.split(";\n").collect();
        let at = |prefix: &str| {
            steps
                .iter()
                .position(|s| s.starts_with(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}…` step in:\n{sql}"))
        };
        let count_of_raw =
            "SELECT COUNT(*) AS n FROM `p`.d.raw WHERE game_date = DATE '2024-01-05'";
        assert_eq!(steps[0], "DECLARE phasegate_output_rows INT64");
        assert_eq!(steps[1], "BEGIN TRANSACTION");
        assert_eq!(
            steps[at("DELETE")],
            "DELETE FROM `p`.d.raw WHERE game_date = DATE '2024-01-05'"
        );
        let set = at("SET phasegate_output_rows");
        assert_eq!(
            steps[set],
            format!("SET phasegate_output_rows = ({count_of_raw})")
        );
        assert_eq!(sql.matches(count_of_raw).count(), 1, "counted once:\n{sql}");
        let (insert, commit) = (at("INSERT INTO `p`.d.processor_run_history"), at("COMMIT"));
        assert!(at("INSERT INTO `p`.d.raw") < set && set < insert && insert < commit);
        assert!(
            steps[insert].contains("IF(phasegate_output_rows = 0, 'no_data', 'success')")
                && steps[insert].contains(", phasegate_output_rows,"),
            "the ledger row records the counted rows: {}",
            steps[insert]
        );
        assert!(at("SELECT IF(phasegate_output_rows = 0 AND") < insert);
        // The job's answer: the variable, read after COMMIT, never the table again.
        assert_eq!(commit, steps.len() - 2, "{sql}");
        assert_eq!(steps[steps.len() - 1], "SELECT phasegate_output_rows");

        // Without an output there is nothing to count (and no variable).
        let job = ProcessorRun {
            output: None,
            require_rows: None,
            ..job
        };
        let sql = bq.run_script(&job, &template, (DateKind::Other, DateKind::Other));
        assert!(sql.starts_with("BEGIN TRANSACTION;\n"), "{sql}");
        assert!(
            sql.ends_with("COMMIT TRANSACTION;\nSELECT CAST(NULL AS INT64)"),
            "{sql}"
        );
        assert!(!sql.contains("phasegate_output_rows"), "{sql}");
    }

    #[test]
    fn every_gate_query_filters_each_table_on_its_date_column_itself() {
        let dated = |table: &str, column: &'static str, kind| Dated {
            table: format!("`p`.d.{table}"),
            column,
            kind,
        };
        for kind in [DateKind::Date, DateKind::Timestamp] {
            let out = dated("raw", "game_date", kind);
            let schedule = dated("schedule", "day", kind);
            let queries = [
                (
                    count_rows_sql(&out),
                    vec![on_days(kind, "game_date", "@d", "@d")],
                ),
                (
                    date_presence_sql(&out, None),
                    vec![on_days(kind, "game_date", "@f", "@t")],
                ),
                (
                    date_presence_sql(&out, Some(&schedule)),
                    vec![
                        on_days(kind, "game_date", "@f", "@t"),
                        on_days(kind, "day", "@f", "@t"),
                    ],
                ),
                (
                    entity_counts_sql((&schedule, "team"), (&out, "team")),
                    vec![
                        on_days(kind, "game_date", "@floor", "@last"),
                        on_days(kind, "day", "@floor", "@last"),
                    ],
                ),
                (reference_in_use_sql(&schedule), vec![any_day(kind, "day")]),
            ];
            for (sql, filters) in queries {
                // One WHERE per table read, each the column compared as itself.
                assert_eq!(
                    sql.matches("WHERE ").count() - sql.matches("WHERE rn").count(),
                    filters.len(),
                    "{sql}"
                );
                for filter in filters {
                    assert!(
                        sql.contains(&format!("WHERE {filter}")),
                        "{filter} in {sql}"
                    );
                }
                assert!(!sql.contains("WHERE DATE("), "{sql}");
            }
        }
    }

    #[tokio::test]
    async fn the_run_scripts_ledger_and_claims_reads_are_bounded_by_the_date() {
        let bq = offline().await;
        let day = NaiveDate::from_ymd_opt(2024, 1, 5).expect("date");
        for sql in [
            bq.holder_sql("ingest", day),
            bq.still_running_sql("run-1", "ingest", day),
        ] {
            assert!(sql.contains("AND data_date = DATE '2024-01-05'"), "{sql}");
        }
    }

    #[test]
    fn whether_a_reference_lists_any_date_is_asked_with_a_partition_filter() {
        assert_eq!(
            any_day(DateKind::Date, "game_date"),
            "game_date >= DATE '0001-01-01'"
        );
        assert_eq!(
            any_day(DateKind::Datetime, "dt"),
            "dt >= DATETIME '0001-01-01 00:00:00'"
        );
        assert_eq!(
            any_day(DateKind::Timestamp, "ts"),
            "ts >= TIMESTAMP '0001-01-01 00:00:00+00'"
        );
        // The partitioning column compared with a constant of its own type, nothing around
        // the column, no IS NOT NULL (not a pruning filter).
        for (kind, literal) in [
            (DateKind::Date, "DATE '"),
            (DateKind::Datetime, "DATETIME '"),
            (DateKind::Timestamp, "TIMESTAMP '"),
        ] {
            let sql = any_day(kind, "c");
            assert!(sql.starts_with("c >= "), "{sql}");
            assert!(sql["c >= ".len()..].starts_with(literal), "{sql}");
            assert!(!sql.contains("NULL"), "{sql}");
        }
        assert_eq!(any_day(DateKind::Other, "s"), "s IS NOT NULL");
    }
}
