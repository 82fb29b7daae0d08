//! Each date through the worker in this process: the same gate and ledger as a push, with the
//! completion event switched off.

use std::sync::Arc;

use chrono::NaiveDate;

use crate::backfill::execution::DateRunner;
use crate::backfill::report::DateResult;
use crate::ledger::{RunStatus, TriggerKind};
use crate::worker::{PhaseOutcome, RunRequest, Worker, WorkerError};

pub struct LocalRunner {
    pub worker: Arc<Worker>,
    pub phase: String,
    pub force: bool,
}

#[async_trait::async_trait]
impl DateRunner for LocalRunner {
    async fn run(&self, date: NaiveDate) -> Result<DateResult, WorkerError> {
        let req = RunRequest {
            phase: self.phase.clone(),
            data_date: date,
            trigger: TriggerKind::Backfill,
            message_id: None,
            delivery_attempt: None,
            skip_downstream: true,
            force: self.force,
        };
        Ok(match self.worker.run_phase(&req).await? {
            PhaseOutcome::Done { runs, .. } => DateResult::Succeeded {
                status: RunStatus::of_done_phase(runs.iter().map(|r| r.status)),
            },
            other => DateResult::Failed {
                status: other.label().to_string(),
                reason: other.reason().unwrap_or_default(),
            },
        })
    }
}
