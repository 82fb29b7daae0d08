//! The run ledger on SQLite: `processor_run_history` in the same file as the warehouse.
//!
//! Every decision that must be exclusive (a claim, a take-over of an owed publication) runs
//! on the writer connection inside a write transaction (`BEGIN IMMEDIATE`, shared with the
//! other writes of its group, in a savepoint of its own): read, decide, write. Two processes
//! sharing the file serialise on SQLite's write lock; inside one process the writer thread
//! runs one at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::connection::Role;
use super::{
    LEDGER_COLUMNS, LEDGER_DDL, LEDGER_INDEXES, LEDGER_MIGRATIONS, Sqlite, record_from_row, ts,
};
use crate::ledger::{Claim, Findings, Ledger, LedgerError, RunRecord, RunStatus};

const UPSERT: &str = "INSERT INTO processor_run_history (run_id, pipeline, processor_name, \
    phase, data_date, status, started_at, finished_at, rows_affected, errors, findings, \
    production_ready, trigger_source, message_id, delivery_attempt, skip_downstream_trigger, \
    published_at, upstream_runs, lease_until) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) \
    ON CONFLICT(run_id) DO UPDATE SET status = excluded.status, \
    skip_downstream_trigger = excluded.skip_downstream_trigger, \
    finished_at = excluded.finished_at, rows_affected = excluded.rows_affected, \
    errors = excluded.errors, findings = excluded.findings, \
    production_ready = excluded.production_ready, published_at = excluded.published_at, \
    upstream_runs = excluded.upstream_runs, lease_until = excluded.lease_until";

/// The final state of a run, written only while it is still `running` (its holder's).
const COMPLETE: &str = "UPDATE processor_run_history SET status = ?2, finished_at = ?3, \
    rows_affected = ?4, errors = ?5, findings = ?6, production_ready = ?7, \
    upstream_runs = ?8, lease_until = ?9 \
    WHERE run_id = ?1 AND status = 'running'";

/// A processor's latest run for a date (built once: the statement cache is keyed by it).
static LATEST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {LEDGER_COLUMNS} FROM processor_run_history \
         WHERE pipeline = ?1 AND processor_name = ?2 AND data_date = ?3 \
         ORDER BY started_at DESC, rowid DESC LIMIT 1"
    )
});

pub(super) fn upsert(c: &Connection, pipeline: &str, r: &RunRecord) -> rusqlite::Result<()> {
    c.prepare_cached(UPSERT)?
        .execute(params![
            r.run_id,
            pipeline,
            r.processor,
            r.phase,
            r.data_date.to_string(),
            r.status.as_str(),
            ts(&r.started_at),
            r.finished_at.as_ref().map(ts),
            r.rows_affected,
            r.errors,
            r.findings.as_ref().map(Findings::as_str),
            r.production_ready,
            r.trigger.as_str(),
            r.message_id,
            r.delivery_attempt,
            r.skip_downstream_trigger,
            r.published_at.as_ref().map(ts),
            upstream_json(r),
            r.lease_until.as_ref().map(ts),
        ])
        .map(|_| ())
}

/// The lineage as JSON: `[]` when the run consumed nothing, NULL when it is unknown.
fn upstream_json(r: &RunRecord) -> Option<String> {
    r.upstream_runs
        .as_ref()
        .and_then(|u| serde_json::to_string(u).ok())
}

/// Write the final state of a run still `running`; false when it was taken over.
pub(super) fn complete(c: &Connection, r: &RunRecord) -> rusqlite::Result<bool> {
    let n = c.prepare_cached(COMPLETE)?.execute(params![
        r.run_id,
        r.status.as_str(),
        r.finished_at.as_ref().map(ts),
        r.rows_affected,
        r.errors,
        r.findings.as_ref().map(Findings::as_str),
        r.production_ready,
        upstream_json(r),
        r.lease_until.as_ref().map(ts),
    ])?;
    Ok(n == 1)
}

pub(super) fn latest(
    c: &Connection,
    pipeline: &str,
    processor: &str,
    date: NaiveDate,
) -> rusqlite::Result<Option<RunRecord>> {
    c.prepare_cached(&LATEST_SQL)?
        .query_row(
            params![pipeline, processor, date.to_string()],
            record_from_row,
        )
        .optional()
}

/// The claim decision, inside a write transaction.
/// Claimed runs whose holders live in this process: run id → the holder's liveness token.
/// Read on the writer when a claim would take a run over, written off it (see
/// [`crate::ledger::Ledger::holding`]).
#[derive(Clone, Default)]
pub(super) struct Holders(Arc<Mutex<HashMap<String, Weak<()>>>>);

impl Holders {
    fn hold(&self, run_id: &str, alive: Weak<()>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, a| a.strong_count() > 0);
        map.insert(run_id.to_string(), alive);
    }

    /// The run's holder is alive in this process.
    fn alive(&self, run_id: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(run_id).is_some_and(|a| a.strong_count() > 0)
    }
}

fn claim_in(
    tx: &Connection,
    pipeline: &str,
    run: &RunRecord,
    seen: Option<&str>,
    holders: &Holders,
) -> rusqlite::Result<Claim> {
    let now = Utc::now();
    let current = latest(tx, pipeline, &run.processor, run.data_date)?;
    if let Some(cur) = &current {
        let moved_on = Some(cur.run_id.as_str()) != seen;
        let held = cur.status == RunStatus::Running
            && (!cur.is_abandoned(now) || holders.alive(&cur.run_id));
        if moved_on || held {
            return Ok(Claim::Lost(Box::new(cur.clone())));
        }
        if cur.status == RunStatus::Running {
            complete(tx, &cur.taken_over_by(&run.run_id))?;
        }
    } else if seen.is_some() {
        return Ok(Claim::Lost(Box::new(run.clone())));
    }
    let mut mine = run.clone();
    // Keep "latest = greatest started_at" true even if the clock stepped back.
    if let Some(cur) = &current
        && mine.started_at <= cur.started_at
    {
        mine.started_at = cur.started_at + chrono::Duration::microseconds(1);
    }
    upsert(tx, pipeline, &mine)?;
    Ok(Claim::Won)
}

/// Take the publication of `runs`: each still unpublished, done, and with the lease the
/// caller saw (or wrote, for its own runs) — the lease is the token: whoever took the
/// publication since changed it, so of two publishers at most one gets every run.
fn claim_publication_in(
    tx: &Connection,
    runs: &[(String, Option<String>)],
    until: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let mut stmt = tx.prepare_cached(
        "UPDATE processor_run_history SET lease_until = ?2 WHERE run_id = ?1 \
         AND published_at IS NULL AND status IN ('success', 'no_data') \
         AND lease_until IS ?3",
    )?;
    for (id, seen) in runs {
        if stmt.execute(params![id, ts(&until), seen])? != 1 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn ensure_schema(c: &mut Connection) -> rusqlite::Result<()> {
    c.execute_batch(LEDGER_DDL)?;
    let existing: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('processor_run_history')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, decl) in LEDGER_MIGRATIONS {
        if !existing.iter().any(|e| e == column) {
            c.execute_batch(&format!(
                "ALTER TABLE processor_run_history ADD COLUMN {column} {decl}"
            ))?;
        }
    }
    c.execute_batch(LEDGER_INDEXES)
}

#[async_trait]
impl Ledger for Sqlite {
    async fn ensure_schema(&self) -> Result<(), LedgerError> {
        self.with(ensure_schema).await.map_err(LedgerError)
    }

    async fn record(&self, r: &RunRecord) -> Result<(), LedgerError> {
        let (r, pipeline) = (r.clone(), self.pipeline.clone());
        self.grouped(Role::Plain, move |sp| {
            upsert(&sp, &pipeline, &r)?;
            sp.commit()
        })
        .await
        .map_err(LedgerError)
    }

    async fn claim(&self, run: &RunRecord, seen: Option<&RunRecord>) -> Result<Claim, LedgerError> {
        let (run, pipeline) = (run.clone(), self.pipeline.clone());
        let seen = seen.map(|r| r.run_id.clone());
        let holders = self.holders.clone();
        self.grouped(Role::Plain, move |sp| {
            let claim = claim_in(&sp, &pipeline, &run, seen.as_deref(), &holders)?;
            sp.commit()?;
            Ok(claim)
        })
        .await
        .map_err(LedgerError)
    }

    async fn complete(&self, run: &RunRecord) -> Result<bool, LedgerError> {
        let run = run.clone();
        self.grouped(Role::Plain, move |sp| {
            let completed = complete(&sp, &run)?;
            sp.commit()?;
            Ok(completed)
        })
        .await
        .map_err(LedgerError)
    }

    fn holding(&self, run_id: &str, alive: Weak<()>) {
        self.holders.hold(run_id, alive);
    }

    async fn renew(&self, run_id: &str, until: DateTime<Utc>) -> Result<bool, LedgerError> {
        let id = run_id.to_string();
        self.grouped(Role::Plain, move |sp| {
            let n = sp
                .prepare_cached(
                    "UPDATE processor_run_history SET lease_until = ?2 WHERE run_id = ?1 \
                     AND (status = 'running' OR published_at IS NULL)",
                )?
                .execute(params![id, ts(&until)])?;
            sp.commit()?;
            Ok(n == 1)
        })
        .await
        .map_err(LedgerError)
    }

    async fn claim_publication(
        &self,
        runs: &[RunRecord],
        until: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let ids: Vec<(String, Option<String>)> = runs
            .iter()
            .map(|r| (r.run_id.clone(), r.lease_until.as_ref().map(ts)))
            .collect();
        self.grouped(Role::Plain, move |sp| {
            let won = claim_publication_in(&sp, &ids, until)?;
            if won {
                sp.commit()?;
            }
            Ok(won)
        })
        .await
        .map_err(LedgerError)
    }

    async fn latest(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Option<RunRecord>, LedgerError> {
        let (processor, pipeline) = (processor.to_string(), self.pipeline.clone());
        self.read_point(move |c| latest(c, &pipeline, &processor, date))
            .await
            .map_err(LedgerError)
    }

    /// One read transaction for all of them: one snapshot, and one page-cache refill after
    /// the writer's commits instead of one per processor.
    async fn latest_of(
        &self,
        processors: &[String],
        date: NaiveDate,
    ) -> Result<Vec<Option<RunRecord>>, LedgerError> {
        let (processors, pipeline) = (processors.to_vec(), self.pipeline.clone());
        self.read_point(move |c| {
            // A failed read rolls back when the transaction is dropped.
            let tx = c.transaction()?;
            let found = processors
                .iter()
                .map(|p| latest(&tx, &pipeline, p, date))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            Ok(found)
        })
        .await
        .map_err(LedgerError)
    }

    async fn history(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let (processor, pipeline) = (processor.to_string(), self.pipeline.clone());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM processor_run_history \
                 WHERE pipeline = ?1 AND processor_name = ?2 AND data_date = ?3 \
                 ORDER BY started_at, rowid"
            ))?;
            let rows = stmt.query_map(
                params![pipeline, processor, date.to_string()],
                record_from_row,
            )?;
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
        let (processor, pipeline) = (processor.to_string(), self.pipeline.clone());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM (
                    SELECT *, ROW_NUMBER() OVER (
                        PARTITION BY data_date ORDER BY started_at DESC, rowid DESC) AS rn
                    FROM processor_run_history
                    WHERE pipeline = ?1 AND processor_name = ?2
                      AND data_date BETWEEN ?3 AND ?4)
                 WHERE rn = 1 ORDER BY data_date"
            ))?;
            let rows = stmt.query_map(
                params![pipeline, processor, from.to_string(), to.to_string()],
                record_from_row,
            )?;
            rows.collect()
        })
        .await
        .map_err(LedgerError)
    }

    /// Only runs that can still be published are read, so that runs which never will cannot
    /// fill the sweep's `limit` and hide a live one: a run superseded by a newer run of its
    /// processor and date is left out (its date's event is the newer run's), and so is a run
    /// whose date has another processor of the phase whose latest run failed or was blocked
    /// (the phase's event waits for that processor's re-run, whose delivery publishes it).
    /// Runs of a phase no longer configured are never read: the sweep asks per configured
    /// phase.
    async fn owed_events(&self, phase: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        let (pipeline, phase) = (self.pipeline.clone(), phase.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let since = (Utc::now().date_naive() - chrono::Days::new(u64::from(self.owed_window_days)))
            .to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM processor_run_history AS h
                 WHERE pipeline = ?1 AND phase = ?2 AND data_date >= ?5 AND published_at IS NULL
                   AND skip_downstream_trigger = 0 AND status IN ('success', 'no_data')
                   AND (lease_until IS NULL OR lease_until < ?3)
                   AND NOT EXISTS (
                     SELECT 1 FROM processor_run_history AS n
                     WHERE n.pipeline = h.pipeline AND n.processor_name = h.processor_name
                       AND n.data_date = h.data_date AND n.started_at > h.started_at)
                   AND NOT EXISTS (
                     SELECT 1 FROM processor_run_history AS s
                     WHERE s.pipeline = h.pipeline AND s.phase = h.phase
                       AND s.data_date = h.data_date AND s.processor_name <> h.processor_name
                       AND s.status IN ('failed', 'blocked')
                       AND NOT EXISTS (
                         SELECT 1 FROM processor_run_history AS t
                         WHERE t.pipeline = s.pipeline AND t.processor_name = s.processor_name
                           AND t.data_date = s.data_date AND t.started_at > s.started_at))
                 ORDER BY data_date, started_at LIMIT ?4"
            ))?;
            let now = ts(&Utc::now());
            let rows =
                stmt.query_map(params![pipeline, phase, now, limit, since], record_from_row)?;
            rows.collect()
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
        self.grouped(Role::Plain, move |sp| {
            {
                let mut stmt = sp.prepare_cached(
                    "UPDATE processor_run_history SET published_at = ?1, lease_until = NULL \
                     WHERE run_id = ?2",
                )?;
                for id in &ids {
                    stmt.execute(params![ts(&at), id])?;
                }
            }
            sp.commit()
        })
        .await
        .map_err(LedgerError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In memory, reads run on the writer connection: a read that fails inside its
    /// transaction must not leave that transaction open under the writes that follow.
    #[tokio::test]
    async fn a_failed_read_leaves_no_transaction_open_on_the_writer() {
        let db = Sqlite::open(std::path::Path::new(":memory:"), "p").expect("open");
        db.ensure_schema().await.expect("schema");
        db.with_connection(|c| {
            c.execute(
                "INSERT INTO processor_run_history (run_id, pipeline, processor_name, phase, \
                 data_date, status, started_at, production_ready, trigger_source, \
                 skip_downstream_trigger) VALUES ('r1', 'p', 'a', 'x', '2024-01-01', 'bogus', \
                 '2024-01-01T00:00:00Z', 1, 'cli', 0)",
                [],
            )
        })
        .await
        .expect("a row no reader can decode");
        let date = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");
        let read = db.latest_of(&["a".to_string()], date).await;
        assert!(read.is_err(), "an unknown status is an error");
        let open = db
            .with_connection(|c| Ok(!c.is_autocommit()))
            .await
            .expect("writer");
        assert!(!open, "the failed read's transaction was rolled back");
    }
}
