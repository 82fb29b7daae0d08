//! The phase worker: one date through de-duplication, the claim, the gate, the processors,
//! the ledger and — unless the cascade is told to stop — the completion event.
//!
//! Push deliveries ([`Worker::handle_push`]) and CLI runs ([`Worker::run_phase`]) take the
//! same path. [`PushOutcome`] is the contract with Pub/Sub: its HTTP status decides between
//! ack and redelivery. The exactly-once protocol lives in [`claim`] (who runs a processor
//! for a date) and [`publish`] (who announces it).

mod atomic;
mod claim;
mod decide;
mod outcome;
mod publish;
mod run;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;

use crate::atomic::OneTransaction;
use crate::bus::Publisher;
use crate::config::{Config, Phase};
use crate::envelope::{PushEnvelope, Trigger};
use crate::ledger::{Ledger, RunRecord, TriggerKind};
use crate::warehouse::Warehouse;

pub use outcome::{PhaseOutcome, Publication, PushOutcome, WorkerError};
pub use publish::{RelayReport, completion_event, spawn_outbox_sweep};

/// One request to run a phase for a date.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub phase: String,
    pub data_date: NaiveDate,
    pub trigger: TriggerKind,
    pub message_id: Option<String>,
    /// Pub/Sub's `deliveryAttempt`, recorded with the run.
    pub delivery_attempt: Option<u32>,
    /// Do not publish the completion event (the cascade stops here).
    pub skip_downstream: bool,
    /// Re-run processors whose latest run for the date already succeeded.
    pub force: bool,
}

impl RunRequest {
    /// A run of `phase` for `date` started by `trigger`, cascading, not forced.
    pub fn new(phase: &str, data_date: NaiveDate, trigger: TriggerKind) -> RunRequest {
        RunRequest {
            phase: phase.to_string(),
            data_date,
            trigger,
            message_id: None,
            delivery_attempt: None,
            skip_downstream: false,
            force: false,
        }
    }
}

/// Runs phases against a ledger, a warehouse and a publisher.
pub struct Worker {
    config: Arc<Config>,
    ledger: Arc<dyn Ledger>,
    warehouse: Arc<dyn Warehouse>,
    publisher: Arc<dyn Publisher>,
    /// The store behind both the ledger and the warehouse, where it runs a processor's whole
    /// run in one transaction ([`atomic`]); `None`: claim, run, record.
    one_transaction: Option<Arc<dyn OneTransaction>>,
}

/// One processor's step within a phase run.
enum Step {
    Reused(Box<RunRecord>),
    Ran(Box<RunRecord>),
    Stop(PhaseOutcome),
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
            one_transaction: None,
        }
    }

    /// Run SQL processors in one transaction of `one`, which must be the store behind both
    /// the ledger and the warehouse (the embedded SQLite: [`crate::startup`] passes it on).
    pub fn with_one_transaction(mut self, one: Option<Arc<dyn OneTransaction>>) -> Worker {
        self.one_transaction = one;
        self
    }

    /// The one-transaction run SQL processors take, if any ([`Worker::with_one_transaction`]).
    pub fn one_transaction(&self) -> Option<&Arc<dyn OneTransaction>> {
        self.one_transaction.as_ref()
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
        if status < 300 {
            // The `push summary` line (info) carries the outcome; this is its debug twin.
            tracing::debug!(
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
                reason = outcome
                    .body()
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or(""),
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
        let scheduled = self.config.trigger.as_ref();
        let trigger = match PushEnvelope::from_json(body).and_then(|e| e.decode_with(scheduled)) {
            Ok(t) => t,
            Err(e) => return PushOutcome::BadMessage(e),
        };
        if let Err(reason) = self.check_source(phase, &trigger) {
            return PushOutcome::WrongPhase(reason);
        }
        let request = request_from_trigger(&phase.name, &trigger);
        match self.run_phase(&request).await {
            Ok(o) => PushOutcome::Ran(o),
            Err(e) => PushOutcome::StoreUnavailable(e.to_string()),
        }
    }

    /// A completion event must come from this phase's upstream phase.
    fn check_source(&self, phase: &Phase, trigger: &Trigger) -> Result<(), String> {
        let Some(from) = &trigger.from_phase else {
            return Ok(());
        };
        let expected = self
            .config
            .previous_phase(&phase.name)
            .map(|p| p.name.as_str());
        if expected == Some(from.as_str()) {
            return Ok(());
        }
        Err(format!(
            "message is a completion event of phase `{from}`, but phase `{}` listens to {}",
            phase.name,
            match expected {
                Some(p) => format!("phase `{p}`"),
                None => "triggers only".to_string(),
            }
        ))
    }

    /// Run every processor of a phase for a date, then publish the completion event unless
    /// told not to — all within the push deadline (`server.push_deadline_secs`). A run cut
    /// off by the deadline is released (recorded `failed`), never left `running`.
    pub async fn run_phase(&self, req: &RunRequest) -> Result<PhaseOutcome, WorkerError> {
        let secs = self.config.server.push_deadline_secs;
        let deadline = Instant::now() + Duration::from_secs(secs);
        match tokio::time::timeout_at(deadline.into(), self.run_phase_by(req, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(WorkerError::Deadline(secs)),
        }
    }

    async fn run_phase_by(
        &self,
        req: &RunRequest,
        deadline: Instant,
    ) -> Result<PhaseOutcome, WorkerError> {
        let phase = self.phase(&req.phase)?;
        let mut runs = Vec::with_capacity(phase.processors.len());
        let mut ran = Vec::new();
        for p in &phase.processors {
            match self.run_processor(phase, p, req, deadline).await? {
                Step::Reused(run) => runs.push(*run),
                Step::Ran(run) => {
                    ran.push(run.run_id.clone());
                    runs.push(*run);
                }
                Step::Stop(outcome) => {
                    // The runs made before the stop will not be announced by this delivery:
                    // give them back, so the redelivery takes their publication at once.
                    self.release_own(&runs, &ran).await;
                    return Ok(outcome);
                }
            }
        }
        let reused = runs.len() - ran.len();
        let publication = self.announce(phase, req, &mut runs, &ran).await;
        match publication {
            Ok(publication) => Ok(PhaseOutcome::Done {
                runs,
                reused,
                publication,
            }),
            Err(error) => {
                crate::metrics::publish_failed(&phase.name);
                Ok(PhaseOutcome::PublishFailed { runs, error })
            }
        }
    }

    /// Wait for pending publishes (graceful shutdown).
    pub async fn flush(&self) {
        self.publisher.flush().await;
    }
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
        delivery_attempt: t.delivery_attempt,
        skip_downstream: t.skip_downstream(),
        force: t.force(),
    }
}
