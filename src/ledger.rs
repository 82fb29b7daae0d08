//! The run ledger, `processor_run_history`: one row per run attempt.
//!
//! It is the single source of truth for upstream status (the gate reads it), for
//! de-duplication (the worker reads it before doing work) and the outbox of completion
//! events (`published_at`). Backends implement [`Ledger`]; what a row holds is defined here.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// The state of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Success,
    /// A legitimate empty date (no games): counts as done for gates.
    NoData,
    Failed,
    /// A strict gate refused to process the date.
    Blocked,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::NoData => "no_data",
            RunStatus::Failed => "failed",
            RunStatus::Blocked => "blocked",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "success" => RunStatus::Success,
            "no_data" => RunStatus::NoData,
            "failed" => RunStatus::Failed,
            "blocked" => RunStatus::Blocked,
            _ => return None,
        })
    }

    /// The status of a finished phase: `no_data` when every processor had no data, else
    /// `success`.
    pub fn of_done_phase(statuses: impl IntoIterator<Item = RunStatus>) -> RunStatus {
        if statuses.into_iter().all(|s| s == RunStatus::NoData) {
            RunStatus::NoData
        } else {
            RunStatus::Success
        }
    }

    /// `success` and `no_data` mean the date is done.
    pub fn is_done(&self) -> bool {
        matches!(self, RunStatus::Success | RunStatus::NoData)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Pubsub,
    Cli,
    Backfill,
}

impl TriggerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TriggerKind::Pubsub => "pubsub",
            TriggerKind::Cli => "cli",
            TriggerKind::Backfill => "backfill",
        }
    }

    pub fn parse(s: &str) -> Option<TriggerKind> {
        Some(match s {
            "pubsub" => TriggerKind::Pubsub,
            "cli" => TriggerKind::Cli,
            "backfill" => TriggerKind::Backfill,
            _ => return None,
        })
    }
}

/// An upstream run a downstream run consumed (lineage).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpstreamRun {
    pub processor: String,
    pub run_id: String,
}

/// A gate's findings: a JSON document kept as its text. A run's findings are written on
/// every gated run and read back only by reports, so they are serialised once, straight to
/// text, rather than built as a `serde_json::Value` tree first (which cost ~4 % of a push's
/// CPU on the benchmark).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Findings(Box<serde_json::value::RawValue>);

impl Findings {
    /// The findings of `report`.
    pub fn of(report: &impl Serialize) -> Option<Findings> {
        serde_json::value::to_raw_value(report).ok().map(Findings)
    }

    /// Findings read back from the ledger; `None` if the text is not JSON.
    pub fn parse(text: String) -> Option<Findings> {
        serde_json::value::RawValue::from_string(text)
            .ok()
            .map(Findings)
    }

    /// The JSON text, as stored.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The document, to read a field of it.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_str()).unwrap_or_default()
    }
}

impl PartialEq for Findings {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One row of `processor_run_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// The pipeline (`pipeline.name`); the ledger scopes every query by it.
    pub pipeline: String,
    pub processor: String,
    pub phase: String,
    pub data_date: NaiveDate,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub rows_affected: Option<i64>,
    pub errors: Option<String>,
    /// The gate's findings (JSON).
    pub findings: Option<Findings>,
    /// False when soft-mode checks found problems or an upstream run it consumed was not
    /// production-ready.
    pub production_ready: bool,
    pub trigger: TriggerKind,
    pub message_id: Option<String>,
    /// Pub/Sub's `deliveryAttempt` of the push that made this attempt, when known.
    pub delivery_attempt: Option<u32>,
    pub skip_downstream_trigger: bool,
    pub published_at: Option<DateTime<Utc>>,
    /// The upstream runs (latest done run of each upstream processor) this run consumed:
    /// `Some([])` when it consumed none (its upstream had not run yet), `None` when unknown
    /// (a row written before the ledger recorded lineage, or by another tool).
    #[serde(default)]
    pub upstream_runs: Option<Vec<UpstreamRun>>,
    /// Until when the delivery that owns this run holds it: a `running` row past its lease
    /// is abandoned (its worker crashed or lost its connection) and may be taken over; a
    /// done row with an unpublished event is being published by its owner until then.
    pub lease_until: Option<DateTime<Utc>>,
}

impl RunRecord {
    /// A fresh `running` row.
    pub fn start(
        processor: &str,
        phase: &str,
        data_date: NaiveDate,
        trigger: TriggerKind,
        message_id: Option<String>,
        skip_downstream_trigger: bool,
    ) -> RunRecord {
        RunRecord {
            run_id: uuid::Uuid::now_v7().to_string(),
            pipeline: String::new(),
            processor: processor.to_string(),
            phase: phase.to_string(),
            data_date,
            status: RunStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            rows_affected: None,
            errors: None,
            findings: None,
            production_ready: true,
            trigger,
            message_id,
            delivery_attempt: None,
            skip_downstream_trigger,
            published_at: None,
            upstream_runs: None,
            lease_until: None,
        }
    }

    /// Close the run with a final status.
    pub fn finish(&mut self, status: RunStatus, rows: Option<i64>, errors: Option<String>) {
        self.status = status;
        self.rows_affected = rows;
        self.errors = errors;
        self.finished_at = Some(Utc::now());
    }

    /// A `running` row whose lease has run out: its owner is gone.
    pub fn is_abandoned(&self, now: DateTime<Utc>) -> bool {
        self.status == RunStatus::Running && self.lease_until.is_none_or(|l| l < now)
    }

    /// This abandoned `running` run, closed `failed` as taken over by run `taker`.
    pub fn taken_over_by(&self, taker: &str) -> RunRecord {
        let mut dead = self.clone();
        let lease = self
            .lease_until
            .map(|l| l.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default();
        dead.finish(
            RunStatus::Failed,
            None,
            Some(format!(
                "abandoned: its worker stopped renewing the claim (lease ran out at {lease}); \
                 taken over by run {taker}"
            )),
        );
        dead.lease_until = None;
        dead
    }

    /// Still held by the delivery that made it (running, or publishing its event).
    pub fn lease_alive(&self, now: DateTime<Utc>) -> bool {
        self.lease_until.is_some_and(|l| l >= now)
    }

    /// Done, meant to announce itself, and not announced yet: the outbox owes its event.
    pub fn owes_event(&self) -> bool {
        self.status.is_done() && !self.skip_downstream_trigger && self.published_at.is_none()
    }

    /// Stale: done, but a newer upstream run exists for its date than the one it consumed
    /// (`latest_upstream` holds the latest done run of each upstream processor) — including
    /// a run that consumed nothing (made before its upstream existed, in soft mode) once the
    /// upstream has run. A run whose lineage is unknown (written before the ledger recorded
    /// it, or by a tool) is taken as current: upgrading must not declare a whole history
    /// stale.
    pub fn is_stale(&self, latest_upstream: &[UpstreamRun]) -> bool {
        let Some(consumed) = &self.upstream_runs else {
            return false;
        };
        self.status.is_done()
            && latest_upstream.iter().any(|u| {
                !consumed
                    .iter()
                    .any(|c| c.processor == u.processor && c.run_id == u.run_id)
            })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ledger: {0}")]
pub struct LedgerError(pub String);

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The run is this delivery's: its `running` row is written.
    Won,
    /// The latest run of the processor and date is no longer the one the claimant saw
    /// (a concurrent delivery claimed first), or it is running under a live lease.
    Lost(Box<RunRecord>),
}

/// Storage of run records, scoped to one pipeline. Implementations keep the latest state
/// of a run per `run_id` (by update, or append-only where the latest row wins).
///
/// The atomic operations (`claim`, `complete`, `renew`, `claim_publication`) are the
/// serialisation points of the exactly-once protocol (README, "Concurrent deliveries").
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Create the ledger table if it is missing.
    async fn ensure_schema(&self) -> Result<(), LedgerError>;
    /// Insert or replace the state of `record.run_id` unconditionally (tools and tests).
    async fn record(&self, record: &RunRecord) -> Result<(), LedgerError>;
    /// Atomically: when the latest run of `run`'s processor and date is still `seen` (the
    /// run the claimant read; `None` = no run yet) and is not running under a live lease,
    /// write `run` (a `running` row) as the new latest run and mark an abandoned `running`
    /// row `failed`. Otherwise write nothing and return the latest run.
    async fn claim(&self, run: &RunRecord, seen: Option<&RunRecord>) -> Result<Claim, LedgerError>;
    /// Record the final state of a run this delivery holds. Returns false (writing
    /// nothing) when the run is no longer `running` — its lease ran out and it was taken
    /// over.
    async fn complete(&self, run: &RunRecord) -> Result<bool, LedgerError>;
    /// Extend the lease of a `running` run or of an owed publication. False when lost.
    async fn renew(&self, run_id: &str, until: DateTime<Utc>) -> Result<bool, LedgerError>;
    /// A claimed run's holder lives in this process for as long as `alive` can be upgraded.
    /// A store whose writes queue behind other work (the embedded SQLite's one writer) never
    /// lets a claim of such a run take it over, whatever its lease says: a renewal queued
    /// behind a long write can land already expired, but the holder is not gone. Liveness
    /// is thus known without the writer. The default ignores it (leases alone decide).
    fn holding(&self, _run_id: &str, _alive: std::sync::Weak<()>) {}
    /// Atomically take the publication of done runs whose event is owed: the caller's own
    /// runs (with the lease it wrote) and runs whose lease it saw run out (their owner is
    /// gone) — never another holder's live lease. The lease a caller passes is its token:
    /// whoever took a run's publication since changed it, so the caller loses. True when
    /// every run was taken; then, and only then, the caller publishes. The holder, a
    /// redelivery and the outbox sweep all publish through this one claim.
    async fn claim_publication(
        &self,
        runs: &[RunRecord],
        until: DateTime<Utc>,
    ) -> Result<bool, LedgerError>;
    /// Latest run of a processor for a date (by `started_at`).
    async fn latest(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Option<RunRecord>, LedgerError>;
    /// The latest run of each of `processors` for a date, in their order: what a delivery
    /// reads to decide (its own processor and its upstream ones). One query where the
    /// backend can (each is a billed job on BigQuery).
    async fn latest_of(
        &self,
        processors: &[String],
        date: NaiveDate,
    ) -> Result<Vec<Option<RunRecord>>, LedgerError> {
        let mut out = Vec::with_capacity(processors.len());
        for p in processors {
            out.push(self.latest(p, date).await?);
        }
        Ok(out)
    }
    /// Every run of a processor for a date (its latest state), oldest first.
    async fn history(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError>;
    /// Latest run of a processor for each date of a range that has any.
    async fn latest_in_range(
        &self,
        processor: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError>;
    /// Done runs of `phase` whose completion event is owed and whose lease ran out (the
    /// outbox sweep), oldest date first.
    async fn owed_events(&self, phase: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError>;
    /// Set `published_at` on these runs.
    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
}

/// The done runs among `latest` (the latest run of each of `upstream`, in order): what a
/// run consumes, and what a done run is stale against.
pub fn consumed(
    upstream: &[String],
    latest: &[Option<RunRecord>],
) -> Vec<(UpstreamRun, RunRecord)> {
    upstream
        .iter()
        .zip(latest)
        .filter_map(|(name, run)| {
            let run = run.as_ref().filter(|r| r.status.is_done())?;
            Some((
                UpstreamRun {
                    processor: name.clone(),
                    run_id: run.run_id.clone(),
                },
                run.clone(),
            ))
        })
        .collect()
}

/// The latest run of `processor` for each date of a range that has one, each with whether
/// it is stale: a done run of one of its `upstream` processors exists for its date that it
/// did not consume (a correction arrived after it ran). One range query per processor.
pub async fn latest_in_range_with_staleness(
    ledger: &dyn Ledger,
    processor: &str,
    upstream: &[String],
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<(RunRecord, bool)>, LedgerError> {
    let runs = ledger.latest_in_range(processor, from, to).await?;
    let mut latest_upstream: std::collections::HashMap<NaiveDate, Vec<UpstreamRun>> =
        std::collections::HashMap::new();
    for name in upstream {
        for run in ledger.latest_in_range(name, from, to).await? {
            if run.status.is_done() {
                latest_upstream
                    .entry(run.data_date)
                    .or_default()
                    .push(UpstreamRun {
                        processor: name.clone(),
                        run_id: run.run_id,
                    });
            }
        }
    }
    Ok(runs
        .into_iter()
        .map(|r| {
            let ups = latest_upstream.get(&r.data_date).map(Vec::as_slice);
            let stale = r.is_stale(ups.unwrap_or(&[]));
            (r, stale)
        })
        .collect())
}
