//! What a phase run and a push came to, and how each answer maps to HTTP (the contract with
//! Pub/Sub: 2xx acknowledges, anything else redelivers).

use serde_json::json;

use crate::envelope::BadMessage;
use crate::gate::{GateError, GateReport};
use crate::ledger::{LedgerError, RunRecord, RunStatus};

/// What happened to the completion event of a finished phase run.
#[derive(Debug, Clone, PartialEq)]
pub enum Publication {
    Published {
        message_id: String,
    },
    /// The skip flag was set: nothing published.
    Skipped,
    /// Published by an earlier delivery.
    AlreadyPublished,
    /// Owed, and another delivery holds a run of it: this delivery gave back the runs it
    /// made and is answered 503, so Pub/Sub redelivers it until the event is out (published
    /// by the holder, or taken over by the redelivery or the sweep). Never acknowledged.
    PendingElsewhere,
}

/// The result of running one phase for one date.
#[derive(Debug, Clone)]
pub enum PhaseOutcome {
    /// Every processor is done (`success` or `no_data`).
    Done {
        runs: Vec<RunRecord>,
        /// Processors whose earlier successful run was reused instead of run again.
        reused: usize,
        publication: Publication,
    },
    /// A strict gate refused to process the date.
    Blocked {
        run: Box<RunRecord>,
        report: Box<GateReport>,
    },
    /// A processor failed.
    Failed { run: Box<RunRecord> },
    /// Another delivery is running this processor for this date right now.
    InProgress { run: Box<RunRecord> },
    /// The processors are done but the completion event could not be published; a
    /// redelivery publishes it (the ledger is the outbox).
    PublishFailed { runs: Vec<RunRecord>, error: String },
}

impl PhaseOutcome {
    /// A short word for logs and summaries.
    pub fn label(&self) -> &'static str {
        match self {
            PhaseOutcome::Done {
                publication: Publication::PendingElsewhere,
                ..
            } => "publish_pending",
            PhaseOutcome::Done { runs, reused, .. } if *reused == runs.len() => "already_done",
            PhaseOutcome::Done { runs, .. }
                if runs.iter().all(|r| r.status == RunStatus::NoData) =>
            {
                "no_data"
            }
            PhaseOutcome::Done { .. } => "success",
            PhaseOutcome::Blocked { .. } => "blocked",
            PhaseOutcome::Failed { .. } => "failed",
            PhaseOutcome::InProgress { .. } => "in_progress",
            PhaseOutcome::PublishFailed { .. } => "publish_failed",
        }
    }

    /// A sentence saying why, for failures.
    pub fn reason(&self) -> Option<String> {
        match self {
            PhaseOutcome::Blocked { report, .. } => Some(report.summary()),
            PhaseOutcome::Failed { run } => run.errors.clone(),
            PhaseOutcome::InProgress { run } => Some(format!(
                "{} is already running for {} (run {})",
                run.processor, run.data_date, run.run_id
            )),
            PhaseOutcome::PublishFailed { error, .. } => Some(error.clone()),
            PhaseOutcome::Done {
                publication: Publication::PendingElsewhere,
                ..
            } => Some(
                "the completion event is owed and another delivery holds a run of it: retry \
                 until it is published"
                    .into(),
            ),
            PhaseOutcome::Done { .. } => None,
        }
    }
}

/// The store could not be reached: nothing can be decided, so the message is retried.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error("unknown phase `{phase}` (phases: {known})")]
    UnknownPhase { phase: String, known: String },
    #[error("the push did not finish within its deadline of {0} s")]
    Deadline(u64),
}

/// The answer to one push, and how Pub/Sub treats it.
#[derive(Debug)]
pub enum PushOutcome {
    Ran(PhaseOutcome),
    BadMessage(BadMessage),
    /// The payload names a phase that is not this phase's upstream.
    WrongPhase(String),
    UnknownPhase(String),
    StoreUnavailable(String),
}

impl PushOutcome {
    /// 2xx acknowledges; anything else makes Pub/Sub redeliver (and, after the subscription's
    /// max attempts, dead-letter).
    pub fn http_status(&self) -> u16 {
        match self {
            // Nothing owed is ever acknowledged: see `Publication::PendingElsewhere`.
            PushOutcome::Ran(PhaseOutcome::Done {
                publication: Publication::PendingElsewhere,
                ..
            }) => 503,
            PushOutcome::Ran(PhaseOutcome::Done { .. }) => 200,
            PushOutcome::Ran(PhaseOutcome::Blocked { .. }) => 424,
            PushOutcome::Ran(PhaseOutcome::Failed { .. }) => 500,
            PushOutcome::Ran(PhaseOutcome::InProgress { .. }) => 409,
            PushOutcome::Ran(PhaseOutcome::PublishFailed { .. }) => 503,
            PushOutcome::BadMessage(_) | PushOutcome::WrongPhase(_) => 400,
            PushOutcome::UnknownPhase(_) => 404,
            PushOutcome::StoreUnavailable(_) => 503,
        }
    }

    /// The date the phase ran for, when it ran.
    pub fn data_date(&self) -> Option<chrono::NaiveDate> {
        match self {
            PushOutcome::Ran(
                PhaseOutcome::Done { runs, .. } | PhaseOutcome::PublishFailed { runs, .. },
            ) => runs.first().map(|r| r.data_date),
            PushOutcome::Ran(
                PhaseOutcome::Blocked { run, .. }
                | PhaseOutcome::Failed { run }
                | PhaseOutcome::InProgress { run },
            ) => Some(run.data_date),
            _ => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            PushOutcome::Ran(o) => o.label(),
            PushOutcome::BadMessage(_) => "bad_message",
            PushOutcome::WrongPhase(_) => "wrong_phase",
            PushOutcome::UnknownPhase(_) => "unknown_phase",
            PushOutcome::StoreUnavailable(_) => "store_unavailable",
        }
    }

    /// A sentence saying why, for every outcome but a done phase.
    pub fn reason(&self) -> Option<String> {
        match self {
            PushOutcome::Ran(o) => o.reason(),
            PushOutcome::BadMessage(e) => Some(e.to_string()),
            PushOutcome::WrongPhase(m)
            | PushOutcome::UnknownPhase(m)
            | PushOutcome::StoreUnavailable(m) => Some(m.clone()),
        }
    }

    /// The JSON body of the response.
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({ "outcome": self.label() });
        if let Some(r) = self.reason() {
            body["reason"] = json!(r);
        }
        if let PushOutcome::Ran(PhaseOutcome::Done { publication, .. }) = self {
            body["published"] = json!(matches!(publication, Publication::Published { .. }));
        }
        body
    }
}
