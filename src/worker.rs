//! The phase worker: one date through de-duplication, the gate, the processors, the ledger
//! and — unless the cascade is told to stop — the completion event.
//!
//! Push deliveries ([`Worker::handle_push`]) and CLI runs ([`Worker::run_phase`]) take the
//! same path. [`PushOutcome`] is the contract with Pub/Sub: its HTTP status decides between
//! ack and redelivery.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use serde_json::json;

use crate::bus::{PublishError, Publisher};
use crate::config::{Config, Phase, Processor};
use crate::envelope::{BadMessage, PushEnvelope, Trigger};
use crate::event::CompletionEvent;
use crate::gate::{self, GateError, GateReport};
use crate::ledger::{Ledger, LedgerError, RunRecord, RunStatus, TriggerKind};
use crate::processor;
use crate::warehouse::Warehouse;

/// One request to run a phase for a date.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub phase: String,
    pub data_date: NaiveDate,
    pub trigger: TriggerKind,
    pub message_id: Option<String>,
    /// Do not publish the completion event (the cascade stops here).
    pub skip_downstream: bool,
    /// Re-run processors whose latest run for the date already succeeded.
    pub force: bool,
}

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

    pub fn label(&self) -> &'static str {
        match self {
            PushOutcome::Ran(o) => o.label(),
            PushOutcome::BadMessage(_) => "bad_message",
            PushOutcome::WrongPhase(_) => "wrong_phase",
            PushOutcome::UnknownPhase(_) => "unknown_phase",
            PushOutcome::StoreUnavailable(_) => "store_unavailable",
        }
    }

    /// The JSON body of the response.
    pub fn body(&self) -> serde_json::Value {
        let reason = match self {
            PushOutcome::Ran(o) => o.reason(),
            PushOutcome::BadMessage(e) => Some(e.to_string()),
            PushOutcome::WrongPhase(m)
            | PushOutcome::UnknownPhase(m)
            | PushOutcome::StoreUnavailable(m) => Some(m.clone()),
        };
        let mut body = json!({ "outcome": self.label() });
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        if let PushOutcome::Ran(PhaseOutcome::Done { publication, .. }) = self {
            body["published"] = json!(matches!(publication, Publication::Published { .. }));
        }
        body
    }
}

/// Runs phases against a ledger, a warehouse and a publisher.
pub struct Worker {
    config: Arc<Config>,
    ledger: Arc<dyn Ledger>,
    warehouse: Arc<dyn Warehouse>,
    publisher: Arc<dyn Publisher>,
}

impl Worker {
    pub fn new(
        config: Arc<Config>,
        ledger: Arc<dyn Ledger>,
        warehouse: Arc<dyn Warehouse>,
        publisher: Arc<dyn Publisher>,
    ) -> Worker {
        Worker {
            config,
            ledger,
            warehouse,
            publisher,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    pub fn warehouse(&self) -> &Arc<dyn Warehouse> {
        &self.warehouse
    }

    fn phase(&self, name: &str) -> Result<&Phase, WorkerError> {
        self.config
            .phase(name)
            .ok_or_else(|| WorkerError::UnknownPhase {
                phase: name.to_string(),
                known: self.config.phase_names(),
            })
    }

    /// Handle a push body addressed to `phase`. Never panics on input; every refusal is
    /// logged once with its reason.
    pub async fn handle_push(&self, phase_name: &str, body: &[u8]) -> PushOutcome {
        let outcome = self.push_outcome(phase_name, body).await;
        let status = outcome.http_status();
        let body = outcome.body();
        if status < 300 {
            tracing::info!(
                phase = phase_name,
                status,
                outcome = outcome.label(),
                "push handled"
            );
        } else {
            tracing::warn!(
                phase = phase_name,
                status,
                outcome = outcome.label(),
                reason = body.get("reason").and_then(|r| r.as_str()).unwrap_or(""),
                "push not acknowledged"
            );
        }
        outcome
    }

    async fn push_outcome(&self, phase_name: &str, body: &[u8]) -> PushOutcome {
        let Some(phase) = self.config.phase(phase_name) else {
            return PushOutcome::UnknownPhase(format!(
                "no phase `{phase_name}` (phases: {})",
                self.config.phase_names()
            ));
        };
        let trigger = match PushEnvelope::from_json(body).and_then(PushEnvelope::decode) {
            Ok(t) => t,
            Err(e) => return PushOutcome::BadMessage(e),
        };
        if let Some(from) = &trigger.from_phase {
            let expected = self
                .config
                .previous_phase(&phase.name)
                .map(|p| p.name.as_str());
            if expected != Some(from.as_str()) {
                return PushOutcome::WrongPhase(format!(
                    "message is a completion event of phase `{from}`, but phase `{}` listens to {}",
                    phase.name,
                    match expected {
                        Some(p) => format!("phase `{p}`"),
                        None => "triggers only".to_string(),
                    }
                ));
            }
        }
        let request = request_from_trigger(&phase.name, &trigger);
        match self.run_phase(&request).await {
            Ok(o) => PushOutcome::Ran(o),
            Err(e) => PushOutcome::StoreUnavailable(e.to_string()),
        }
    }

    /// Run every processor of a phase for a date, then publish the completion event unless
    /// told not to.
    pub async fn run_phase(&self, req: &RunRequest) -> Result<PhaseOutcome, WorkerError> {
        let phase = self.phase(&req.phase)?;
        let mut runs = Vec::with_capacity(phase.processors.len());
        let mut reused = 0;
        for p in &phase.processors {
            match self.run_processor(phase, p, req).await? {
                Step::Reused(run) => {
                    reused += 1;
                    runs.push(*run);
                }
                Step::Ran(run) => runs.push(*run),
                Step::Stop(outcome) => return Ok(outcome),
            }
        }
        if req.skip_downstream {
            tracing::info!(phase = %phase.name, data_date = %req.data_date,
                "skip_downstream_trigger set: completion event not published");
            return Ok(PhaseOutcome::Done {
                runs,
                reused,
                publication: Publication::Skipped,
            });
        }
        if runs.iter().all(|r| r.published_at.is_some()) {
            return Ok(PhaseOutcome::Done {
                runs,
                reused,
                publication: Publication::AlreadyPublished,
            });
        }
        match self.publish(phase, req.data_date, &runs).await {
            Ok(message_id) => {
                let at = Utc::now();
                self.ledger.mark_published(&runs, at).await?;
                for r in &mut runs {
                    r.published_at = Some(at);
                }
                Ok(PhaseOutcome::Done {
                    runs,
                    reused,
                    publication: Publication::Published { message_id },
                })
            }
            Err(e) => Ok(PhaseOutcome::PublishFailed {
                runs,
                error: e.to_string(),
            }),
        }
    }

    async fn run_processor(
        &self,
        phase: &Phase,
        p: &Processor,
        req: &RunRequest,
    ) -> Result<Step, WorkerError> {
        let latest = self.ledger.latest(&p.name, req.data_date).await?;
        let latest_started = latest.as_ref().map(|r| r.started_at);
        if let Some(run) = latest {
            let same_message = req.message_id.is_some() && run.message_id == req.message_id;
            if run.status.is_done() && (!req.force || same_message) {
                return Ok(Step::Reused(Box::new(run)));
            }
            let stale_after = Duration::from_secs(self.config.server.stale_running_secs);
            let age = (Utc::now() - run.started_at).to_std().unwrap_or_default();
            if run.status == RunStatus::Running && age < stale_after {
                return Ok(Step::Stop(PhaseOutcome::InProgress { run: Box::new(run) }));
            }
        }

        let mut run = RunRecord::start(
            &p.name,
            &phase.name,
            req.data_date,
            req.trigger,
            req.message_id.clone(),
            req.skip_downstream,
        );
        let report = gate::evaluate(
            &self.config,
            p,
            req.data_date,
            self.ledger.as_ref(),
            self.warehouse.as_ref(),
        )
        .await?;
        if !p.checks.is_empty() {
            run.findings = serde_json::to_value(&report).ok();
        }
        run.production_ready = report.production_ready();
        if report.blocks() {
            run.finish(RunStatus::Blocked, None, Some(report.summary()));
            self.ledger.record(&run).await?;
            tracing::warn!(processor = %p.name, data_date = %req.data_date,
                reason = %report.summary(), "blocked by strict gate");
            return Ok(Step::Stop(PhaseOutcome::Blocked {
                run: Box::new(run),
                report: Box::new(report),
            }));
        }
        if !report.production_ready() {
            tracing::warn!(processor = %p.name, data_date = %req.data_date,
                reason = %report.summary(), "soft gate: processing, not production-ready");
        }

        if let Some(winner) = self.claim(&run, latest_started).await? {
            return Ok(Step::Stop(PhaseOutcome::InProgress {
                run: Box::new(winner),
            }));
        }
        let expected = p
            .output
            .as_ref()
            .filter(|o| o.require_rows)
            .and_then(|o| o.expected.as_deref())
            .and_then(|name| self.config.reference(name));
        let result = processor::run(
            p,
            req.data_date,
            self.warehouse.as_ref(),
            &self.config.backend.kind,
            expected,
        )
        .await;
        match result {
            Ok(produced) => {
                let rows = produced.rows.map(|n| n as i64);
                let status = if produced.rows == Some(0) {
                    RunStatus::NoData
                } else {
                    RunStatus::Success
                };
                run.finish(status, rows, None);
                self.ledger.record(&run).await?;
                tracing::info!(processor = %p.name, data_date = %req.data_date,
                    status = %status, rows = ?rows, "processor finished");
                Ok(Step::Ran(Box::new(run)))
            }
            Err(error) => {
                run.finish(RunStatus::Failed, None, Some(error.clone()));
                self.ledger.record(&run).await?;
                tracing::error!(processor = %p.name, data_date = %req.data_date,
                    error = %error, "processor failed");
                Ok(Step::Stop(PhaseOutcome::Failed { run: Box::new(run) }))
            }
        }
    }

    /// Write the `running` claim, then read back the date's runs: when a concurrent delivery
    /// (one that appeared after `seen`, the latest run this delivery saw) claimed it first (earlier `started_at`, then smaller `run_id`), withdraw and return
    /// the winner. Both sides compute the same winner from the same rows.
    async fn claim(
        &self,
        run: &RunRecord,
        seen: Option<chrono::DateTime<Utc>>,
    ) -> Result<Option<RunRecord>, WorkerError> {
        self.ledger.record(run).await?;
        let settle = self
            .config
            .server
            .claim_settle_ms
            .unwrap_or(match self.config.backend.kind {
                crate::config::BackendKind::Sqlite => 0,
                crate::config::BackendKind::Bigquery => 250,
            });
        if settle > 0 {
            tokio::time::sleep(Duration::from_millis(settle)).await;
        }
        let stale_after = chrono::Duration::seconds(
            i64::try_from(self.config.server.stale_running_secs).unwrap_or(i64::MAX / 1000),
        );
        let now = Utc::now();
        let key = |r: &RunRecord| (r.started_at, r.run_id.clone());
        let winner = self
            .ledger
            .history(&run.processor, run.data_date)
            .await?
            .into_iter()
            // Only runs that appeared after this delivery looked at the ledger compete.
            .filter(|r| r.run_id != run.run_id && seen.is_none_or(|s| r.started_at > s))
            .filter(|r| {
                (r.status == RunStatus::Running && now - r.started_at < stale_after)
                    || r.status.is_done()
            })
            .filter(|r| key(r) < key(run))
            .min_by_key(key);
        if let Some(w) = &winner {
            self.ledger.withdraw(run).await?;
            tracing::info!(processor = %run.processor, data_date = %run.data_date,
                winner = %w.run_id, "concurrent delivery claimed this date first; backing off");
        }
        Ok(winner)
    }

    async fn publish(
        &self,
        phase: &Phase,
        date: NaiveDate,
        runs: &[RunRecord],
    ) -> Result<String, PublishError> {
        let status = RunStatus::of_done_phase(runs.iter().map(|r| r.status));
        let event = CompletionEvent {
            phase: phase.name.clone(),
            processors: runs.iter().map(|r| r.processor.clone()).collect(),
            data_date: date,
            run_id: runs
                .iter()
                .map(|r| r.run_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            status,
            production_ready: runs.iter().all(|r| r.production_ready),
        };
        let id = self
            .publisher
            .publish(
                &phase.completion_topic,
                &event.to_json(),
                event.attributes(),
            )
            .await?;
        tracing::info!(phase = %phase.name, data_date = %date, topic = %phase.completion_topic,
            message_id = %id, "completion event published");
        Ok(id)
    }

    /// Wait for pending publishes (graceful shutdown).
    pub async fn flush(&self) {
        self.publisher.flush().await;
    }
}

enum Step {
    Reused(Box<RunRecord>),
    Ran(Box<RunRecord>),
    Stop(PhaseOutcome),
}

fn request_from_trigger(phase: &str, t: &Trigger) -> RunRequest {
    RunRequest {
        phase: phase.to_string(),
        data_date: t.data_date,
        trigger: match t.attributes.get("trigger").map(String::as_str) {
            Some("backfill") => TriggerKind::Backfill,
            Some("cli") => TriggerKind::Cli,
            _ => TriggerKind::Pubsub,
        },
        message_id: Some(t.message_id.clone()),
        skip_downstream: t.skip_downstream(),
        force: t.force(),
    }
}
