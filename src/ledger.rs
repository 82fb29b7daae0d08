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

/// One row of `processor_run_history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub processor: String,
    pub phase: String,
    pub data_date: NaiveDate,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub rows_affected: Option<i64>,
    pub errors: Option<String>,
    /// The gate's findings (JSON).
    pub findings: Option<serde_json::Value>,
    /// False when soft-mode checks found problems.
    pub production_ready: bool,
    pub trigger: TriggerKind,
    pub message_id: Option<String>,
    pub skip_downstream_trigger: bool,
    pub published_at: Option<DateTime<Utc>>,
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
            run_id: uuid::Uuid::new_v4().to_string(),
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
            skip_downstream_trigger,
            published_at: None,
        }
    }

    /// Close the run with a final status.
    pub fn finish(&mut self, status: RunStatus, rows: Option<i64>, errors: Option<String>) {
        self.status = status;
        self.rows_affected = rows;
        self.errors = errors;
        self.finished_at = Some(Utc::now());
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ledger: {0}")]
pub struct LedgerError(pub String);

/// Storage of run records. Implementations keep the latest state of a run per `run_id`
/// (by update, or append-only where the latest row wins).
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Create the ledger table if it is missing.
    async fn ensure_schema(&self) -> Result<(), LedgerError>;
    /// Insert or replace the state of `record.run_id`.
    async fn record(&self, record: &RunRecord) -> Result<(), LedgerError>;
    /// Latest run of a processor for a date (by `started_at`).
    async fn latest(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Option<RunRecord>, LedgerError>;
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
    /// Remove a `running` claim that lost to a concurrent delivery (it did no work).
    async fn withdraw(&self, run: &RunRecord) -> Result<(), LedgerError>;
    /// Set `published_at` on these runs.
    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError>;
}
