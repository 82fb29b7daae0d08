//! The append-only run ledger on BigQuery: every state change of a run is a new row.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    BigQuery, CLAIMS_SCHEMA, CLAIMS_TABLE, LEDGER_SCHEMA, LEDGER_TABLE, Row, array_param,
    date_param, param, parse_bool, parse_bq_ts, script, ts_param,
};
use crate::ledger::{Claim, Findings, Ledger, LedgerError, RunRecord, RunStatus, TriggerKind};

fn column_list(schema: &[(&str, &str, &str)]) -> String {
    schema
        .iter()
        .map(|(c, t, mode)| {
            if *mode == "REQUIRED" {
                format!("{c} {t} NOT NULL")
            } else {
                format!("{c} {t}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl BigQuery {
    /// `pipeline = … AND processor_name = … AND data_date = …` as literals (scripts).
    fn claim_key(&self, processor: &str, date: NaiveDate) -> String {
        format!(
            "pipeline = {} AND processor_name = {} AND data_date = {}",
            script::string(Some(&self.pipeline)),
            script::string(Some(processor)),
            script::date(date)
        )
    }

    /// `Some(<the claims row names run id>)`; `None` when claims live in another store
    /// ([`BigQuery::with_claims_elsewhere`], which checked before the script was sent).
    fn holder_check(&self, processor: &str, date: NaiveDate, id: &str) -> Option<String> {
        (!self.claims_elsewhere).then(|| {
            format!(
                "{} = {}",
                self.holder_sql(processor, date),
                script::string(Some(id))
            )
        })
    }

    /// The check a script makes before it writes for run `id`: the claims row names it —
    /// or, with claims elsewhere, what the ledger can still tell: no row has ended the run
    /// (a release, a takeover). Never a constant: bqemulator folds `IF(TRUE, 0, ERROR(…))`
    /// and raises.
    pub(super) fn holds(&self, processor: &str, date: NaiveDate, id: &str) -> String {
        self.holder_check(processor, date, id)
            .unwrap_or_else(|| self.still_running_sql(id, processor, date))
    }

    /// The claims row names run `id` (with claims elsewhere: nothing to check there) and no
    /// row has ended the run.
    pub(super) fn holds_and_running(&self, processor: &str, date: NaiveDate, id: &str) -> String {
        let running = self.still_running_sql(id, processor, date);
        match self.holder_check(processor, date, id) {
            Some(holder) => format!("{holder} AND {running}"),
            None => running,
        }
    }

    /// The run the claims row names (the smallest id if a first-claim race left two rows),
    /// as a scalar subquery.
    pub(super) fn holder_sql(&self, processor: &str, date: NaiveDate) -> String {
        format!(
            "(SELECT run_id FROM {c} WHERE {key} ORDER BY claimed_at, run_id LIMIT 1)",
            c = self.table(CLAIMS_TABLE),
            key = self.claim_key(processor, date)
        )
    }

    /// True while run `run_id` of `processor` and `date` has no row that ends it: no final
    /// status, and no release (a `running` row with `finished_at` set, written when the
    /// store was unavailable). The SQLite ledger's `complete` checks the same.
    pub(super) fn still_running_sql(
        &self,
        run_id: &str,
        processor: &str,
        date: NaiveDate,
    ) -> String {
        format!(
            "NOT EXISTS (SELECT 1 FROM {l} WHERE {key} AND run_id = {id} \
             AND (status != 'running' OR finished_at IS NOT NULL))",
            l = self.table(LEDGER_TABLE),
            key = self.claim_key(processor, date),
            id = script::string(Some(run_id)),
        )
    }

    /// `INSERT INTO ledger (columns, recorded_at) SELECT … WHERE <the claim is r's and r is
    /// still running>`: a release never lands over a committed outcome, nor an outcome
    /// over a release.
    fn insert_if_holder(&self, r: &RunRecord, overrides: &[(&str, String)]) -> String {
        format!(
            "INSERT INTO {l} ({cols}, recorded_at) {row} FROM (SELECT 1) \
             WHERE {holds}",
            l = self.table(LEDGER_TABLE),
            cols = Self::ledger_columns(),
            row = script::ledger_row_select(r, &self.pipeline, overrides),
            holds = self.holds_and_running(&r.processor, r.data_date, &r.run_id),
        )
    }

    /// After [`Self::insert_if_holder`] wrote `r`'s final row: 1 when the only row ending
    /// the run is that one (status and finish time as written), else 0.
    fn written_sql(&self, r: &RunRecord) -> String {
        let finished = match &r.finished_at {
            Some(t) => format!("finished_at = {}", script::timestamp(Some(t))),
            None => "finished_at IS NULL".to_string(),
        };
        format!(
            "SELECT IF(COUNT(*) = 1 AND SUM(IF(status = {st} AND {finished}, 1, 0)) = 1, 1, 0) \
             FROM {l} WHERE {key} AND run_id = {id} \
             AND (status != 'running' OR finished_at IS NOT NULL)",
            st = script::string(Some(r.status.as_str())),
            l = self.table(LEDGER_TABLE),
            key = self.claim_key(&r.processor, r.data_date),
            id = script::string(Some(&r.run_id)),
        )
    }

    /// When `r` holds the claim and `seen` is still `running` (its lease ran out), record
    /// `seen` as failed: it was taken over. A run released because the store was
    /// unavailable (`finished_at` set) is not blamed: it committed nothing and failed at
    /// nothing of its own.
    fn abandon_if_taken_over(&self, r: &RunRecord, seen: &str) -> String {
        let reason = format!("abandoned: lease ran out; taken over by run {}", r.run_id);
        let exprs: Vec<String> = LEDGER_SCHEMA
            .iter()
            .map(|(c, _, _)| *c)
            .filter(|c| *c != "recorded_at")
            .map(|c| match c {
                "status" => "'failed'".to_string(),
                "finished_at" => "CURRENT_TIMESTAMP()".to_string(),
                "errors" => script::string(Some(&reason)),
                "lease_until" => "CAST(NULL AS TIMESTAMP)".to_string(),
                other => other.to_string(),
            })
            .collect();
        format!(
            "INSERT INTO {l} ({cols}, recorded_at)
             SELECT {exprs}, CURRENT_TIMESTAMP() FROM (
               SELECT *, ROW_NUMBER() OVER (PARTITION BY run_id ORDER BY recorded_at DESC) AS k
               FROM {l} WHERE pipeline = {pl} AND data_date = {dd} AND run_id = {seen})
             WHERE k = 1 AND status = 'running' AND finished_at IS NULL{holds}",
            l = self.table(LEDGER_TABLE),
            cols = Self::ledger_columns(),
            exprs = exprs.join(", "),
            pl = script::string(Some(&self.pipeline)),
            seen = script::string(Some(seen)),
            dd = script::date(r.data_date),
            holds = self
                .holder_check(&r.processor, r.data_date, &r.run_id)
                .map(|h| format!(" AND {h}"))
                .unwrap_or_default(),
        )
    }

    /// Record a claim another store granted (Firestore coordination): in one job, the
    /// taken-over run's `failed` row (only while it is still running: a run that committed
    /// its outcome meanwhile keeps it) and `run`'s `running` row. Plain `INSERT`s: no
    /// mutating DML, so they do not queue behind the two-per-table `MERGE`/`UPDATE` limit.
    pub async fn append_claim(
        &self,
        run: &RunRecord,
        taken_over: Option<&str>,
    ) -> Result<(), LedgerError> {
        let mut steps = Vec::new();
        if let Some(seen) = taken_over {
            steps.push(self.abandon_if_taken_over(run, seen));
        }
        steps.push(format!(
            "INSERT INTO {l} ({cols}, recorded_at) {row}",
            l = self.table(LEDGER_TABLE),
            cols = Self::ledger_columns(),
            row = script::ledger_row_select(run, &self.pipeline, &[]),
        ));
        steps.push("SELECT 1".to_string());
        self.script_returning_holder(&steps.join(";\n"), run, "claim")
            .await
            .map(|_| ())
    }

    /// Run a script (for `r`, labelled `what`) whose last statement selects the claim
    /// holder; return it.
    async fn script_returning_holder(
        &self,
        sql: &str,
        r: &RunRecord,
        what: &str,
    ) -> Result<Option<String>, LedgerError> {
        let labels = self.labels(&[
            ("phase", &r.phase),
            ("processor", &r.processor),
            ("run_id", &r.run_id),
            ("job", what),
        ]);
        let rows = self
            .query_job(sql, Vec::new(), labels, None)
            .await
            .map_err(|e| LedgerError(e.to_string()))?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }
}

impl BigQuery {
    /// The latest run of each processor and date of `phase` in the sweep's window, when it
    /// is done, its event is not out and it should announce itself — whatever its lease:
    /// [`Ledger::owed_events`] filters them by the ledger's leases, the Firestore
    /// coordination by its own. A superseded run is never owed (its date's latest run is the
    /// one to announce), so however many of them pile up, none hides a live one.
    pub async fn unannounced(&self, phase: &str) -> Result<Vec<RunRecord>, LedgerError> {
        let runs = self
            .runs(
                // `data_date >= @since`: a constant comparison on the partitioning column,
                // so only the window's partitions are read and billed
                // (https://cloud.google.com/bigquery/docs/querying-partitioned-tables).
                "pipeline = @pipeline AND phase = @phase AND data_date >= @since",
                vec![
                    param("pipeline", "STRING", Some(self.pipeline.to_string())),
                    param("phase", "STRING", Some(phase.to_string())),
                    date_param(
                        "since",
                        Utc::now().date_naive()
                            - chrono::Days::new(u64::from(self.owed_events_window_days)),
                    ),
                ],
            )
            .await?;
        // By date, newest run first within a date: the first of each processor and date is
        // its latest.
        let mut seen = std::collections::HashSet::new();
        Ok(runs
            .into_iter()
            .filter(|r| seen.insert((r.processor.clone(), r.data_date)))
            .filter(RunRecord::owes_event)
            .collect())
    }
}

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
        findings: get(9).and_then(Findings::parse),
        production_ready: parse_bool(r.get(10).and_then(Option::as_ref)),
        trigger: TriggerKind::parse(&trigger)
            .ok_or_else(|| LedgerError(format!("unknown trigger {trigger}")))?,
        message_id: get(12),
        skip_downstream_trigger: parse_bool(r.get(13).and_then(Option::as_ref)),
        published_at: ts(14)?,
        pipeline: get(15).unwrap_or_default(),
        delivery_attempt: get(16).and_then(|s| s.parse().ok()),
        upstream_runs: get(17).and_then(|s| serde_json::from_str(&s).ok()),
        lease_until: ts(18)?,
    })
}

#[async_trait]
impl Ledger for BigQuery {
    async fn ensure_schema(&self) -> Result<(), LedgerError> {
        self.ensure_dataset().await.map_err(LedgerError)?;
        for (table, schema, layout) in [
            (
                LEDGER_TABLE,
                LEDGER_SCHEMA,
                "PARTITION BY data_date CLUSTER BY pipeline, processor_name",
            ),
            (
                CLAIMS_TABLE,
                CLAIMS_SCHEMA,
                "CLUSTER BY pipeline, processor_name",
            ),
        ] {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {t} ({columns}) {layout}",
                t = self.table(table),
                columns = column_list(schema)
            );
            self.query(&sql, Vec::new()).await.map_err(LedgerError)?;
        }
        Ok(())
    }

    async fn record(&self, r: &RunRecord) -> Result<(), LedgerError> {
        let sql = format!(
            "INSERT INTO {t} ({cols}, recorded_at) VALUES (@run_id, @processor_name, @phase, \
             @data_date, @status, @started_at, @finished_at, @rows_affected, @errors, @findings, \
             @production_ready, @trigger_source, @message_id, @skip_downstream_trigger, \
             @published_at, @pipeline, @delivery_attempt, @upstream_runs, @lease_until, \
             CURRENT_TIMESTAMP())",
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
                r.findings.as_ref().map(|f| f.as_str().to_string()),
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
            param("pipeline", "STRING", s(&self.pipeline)),
            param(
                "delivery_attempt",
                "INT64",
                r.delivery_attempt.map(|n| n.to_string()),
            ),
            param(
                "upstream_runs",
                "STRING",
                r.upstream_runs
                    .as_ref()
                    .and_then(|u| serde_json::to_string(u).ok()),
            ),
            ts_param("lease_until", r.lease_until.as_ref()),
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

    async fn latest_of(
        &self,
        processors: &[String],
        date: NaiveDate,
    ) -> Result<Vec<Option<RunRecord>>, LedgerError> {
        // One job for all of them: runs come newest first within the date.
        let runs = self
            .runs(
                "pipeline = @pipeline AND processor_name IN UNNEST(@ps) AND data_date = @d",
                vec![
                    param("pipeline", "STRING", Some(self.pipeline.to_string())),
                    array_param("ps", processors),
                    date_param("d", date),
                ],
            )
            .await?;
        Ok(processors
            .iter()
            .map(|p| runs.iter().find(|r| &r.processor == p).cloned())
            .collect())
    }

    async fn history(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let mut runs = self
            .runs(
                "pipeline = @pipeline AND processor_name = @p AND data_date = @d",
                vec![
                    param("pipeline", "STRING", Some(self.pipeline.to_string())),
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
                "pipeline = @pipeline AND processor_name = @p AND data_date BETWEEN @f AND @t",
                vec![
                    param("pipeline", "STRING", Some(self.pipeline.to_string())),
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

    async fn claim(&self, run: &RunRecord, seen: Option<&RunRecord>) -> Result<Claim, LedgerError> {
        let seen = seen.map(|r| r.run_id.as_str());
        // One job: the compare-and-set on the claims row (BigQuery serialises mutating DML
        // on a table, so of two concurrent claims at most one matches), then — only if it
        // won — the taken-over run's `failed` row and this run's `running` row, then the
        // holder, read back.
        let seen_id = seen.unwrap_or("");
        let (p, d) = (&run.processor, run.data_date);
        let id = script::string(Some(&run.run_id));
        let merge = format!(
            "MERGE {c} T
             USING (SELECT {pl} AS pipeline, {pn} AS processor_name, {dd} AS data_date) S
             ON T.pipeline = S.pipeline AND T.processor_name = S.processor_name
                AND T.data_date = S.data_date
             WHEN MATCHED AND (T.run_id = {seen} OR T.lease_until < CURRENT_TIMESTAMP()) THEN
               UPDATE SET run_id = {id}, lease_until = {until}, claimed_at = CURRENT_TIMESTAMP()
             WHEN NOT MATCHED THEN
               INSERT (pipeline, processor_name, data_date, run_id, lease_until, claimed_at)
               VALUES (S.pipeline, S.processor_name, S.data_date, {id}, {until}, CURRENT_TIMESTAMP())",
            c = self.table(CLAIMS_TABLE),
            pl = script::string(Some(&self.pipeline)),
            pn = script::string(Some(p)),
            dd = script::date(d),
            seen = script::string(Some(seen_id)),
            until = script::timestamp(run.lease_until.as_ref()),
        );
        let mut steps = vec![merge];
        if seen.is_some() {
            steps.push(self.abandon_if_taken_over(run, seen_id));
        }
        steps.push(self.insert_if_holder(run, &[]));
        steps.push(format!("SELECT {}", self.holder_sql(p, d)));
        let holder = self
            .script_returning_holder(&steps.join(";\n"), run, "claim")
            .await?;
        if holder.as_deref() == Some(run.run_id.as_str()) {
            return Ok(Claim::Won);
        }
        let latest = self.latest(p, d).await?;
        Ok(Claim::Lost(Box::new(latest.unwrap_or_else(|| run.clone()))))
    }

    async fn complete(&self, run: &RunRecord) -> Result<bool, LedgerError> {
        // A release (or any outcome) of a run whose run script may still be running waits
        // until that job has ended: inside its transaction BigQuery reads a snapshot taken
        // at BEGIN ("During a transaction, all reads return a consistent snapshot of the
        // tables referenced in the transaction", https://cloud.google.com/bigquery/docs/transactions),
        // so a release written meanwhile would be invisible to the script's last check.
        self.settle_run_job(&run.run_id).await;
        // One job: the outcome row, written only while the claims row still names this run
        // and the run has no final row (a release never says `failed` over committed
        // output), then whether it was written.
        let sql = format!(
            "{};\n{}",
            self.insert_if_holder(run, &[]),
            self.written_sql(run)
        );
        let written = self.script_returning_holder(&sql, run, "outcome").await?;
        Ok(written.as_deref() == Some("1"))
    }

    async fn renew(&self, run_id: &str, until: DateTime<Utc>) -> Result<bool, LedgerError> {
        // Append-only: the run's next state is its current one with the new lease. Used on
        // BigQuery only to release a publication after a failed publish (no heartbeats).
        let current = self
            .runs(
                "pipeline = @pipeline AND run_id = @r",
                vec![
                    param("pipeline", "STRING", Some(self.pipeline.to_string())),
                    param("r", "STRING", Some(run_id.to_string())),
                ],
            )
            .await?;
        let Some(mut run) = current.into_iter().next() else {
            return Ok(false);
        };
        run.lease_until = Some(until);
        self.record(&run).await?;
        // The publication claim is the claims row's `publish_until`: move it too, or a release
        // would leave the publication locked until the old lease ran out.
        let sql = format!(
            "UPDATE {c} SET publish_until = @until WHERE pipeline = @pipeline AND run_id = @r",
            c = self.table(CLAIMS_TABLE)
        );
        let params = vec![
            ts_param("until", Some(&until)),
            param("pipeline", "STRING", Some(self.pipeline.to_string())),
            param("r", "STRING", Some(run_id.to_string())),
        ];
        self.query(&sql, params).await.map_err(LedgerError)?;
        Ok(true)
    }

    async fn claim_publication(
        &self,
        runs: &[RunRecord],
        until: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let run_ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
        let run_ids = run_ids.as_slice();
        let token = uuid::Uuid::new_v4().to_string();
        let sql = format!(
            "UPDATE {c} SET publish_until = @until, publisher = @token \
             WHERE pipeline = @pipeline AND run_id IN UNNEST(@ids) \
               AND (publish_until IS NULL OR publish_until < CURRENT_TIMESTAMP())",
            c = self.table(CLAIMS_TABLE)
        );
        let ids = array_param("ids", run_ids);
        let params = vec![
            ts_param("until", Some(&until)),
            param("token", "STRING", Some(token.clone())),
            param("pipeline", "STRING", Some(self.pipeline.to_string())),
            ids,
        ];
        self.query(&sql, params).await.map_err(LedgerError)?;
        let check = format!(
            "SELECT COUNT(*) FROM {c} WHERE pipeline = @pipeline AND publisher = @token",
            c = self.table(CLAIMS_TABLE)
        );
        let rows = self
            .query(
                &check,
                vec![
                    param("pipeline", "STRING", Some(self.pipeline.to_string())),
                    param("token", "STRING", Some(token)),
                ],
            )
            .await
            .map_err(LedgerError)?;
        let n: usize = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(n == run_ids.len())
    }

    async fn owed_events(&self, phase: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        let mut runs = self.unannounced(phase).await?;
        let now = Utc::now();
        runs.retain(|r| !r.lease_alive(now));
        runs.truncate(limit);
        Ok(runs)
    }

    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        if runs.is_empty() {
            return Ok(());
        }
        // One INSERT for every run of the phase (one job, one DML statement of the quota).
        let rows: Vec<String> = runs
            .iter()
            .map(|run| {
                let mut next = run.clone();
                next.published_at = Some(at);
                script::ledger_row_select(&next, &self.pipeline, &[])
            })
            .collect();
        let sql = format!(
            "INSERT INTO {t} ({cols}, recorded_at) {rows}",
            t = self.table(LEDGER_TABLE),
            cols = Self::ledger_columns(),
            rows = rows.join(" UNION ALL ")
        );
        self.query(&sql, Vec::new())
            .await
            .map(|_| ())
            .map_err(LedgerError)
    }
}
