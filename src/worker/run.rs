//! A claimed run: the gate's verdict, the processor and the outcome in the ledger.
//!
//! Every exit records an outcome for the claim — `blocked`, `failed`, `success`/`no_data` —
//! or leaves it to the [`Held`] guard to release. Production-readiness is this run's gate
//! result and that of every upstream run it consumed.

use std::time::Instant;

use chrono::Utc;

use super::claim::{Claimed, Held};
use super::decide::judge;
use super::{PhaseOutcome, RunRequest, Step, Worker, WorkerError};
use crate::config::{Processor, ProcessorKind};
use crate::ledger::{RunRecord, RunStatus};
use crate::processor;
use crate::warehouse::{Committed, ProcessorRun};

impl Worker {
    pub(super) async fn run_claimed(
        &self,
        p: &Processor,
        req: &RunRequest,
        claimed: Claimed,
        deadline: Instant,
    ) -> Result<Step, WorkerError> {
        let Claimed {
            mut run,
            held,
            consumed,
            report,
        } = claimed;
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                run.finish(
                    RunStatus::Failed,
                    None,
                    Some(format!("the gate could not be evaluated: {e}")),
                );
                run.lease_until = None;
                held.complete(&run).await?;
                return Err(e.into());
            }
        };
        crate::metrics::gate_report(&report);
        let report = judge(&mut run, report, p, &consumed);
        if report.blocks() {
            held.complete(&run).await?;
            crate::metrics::run_finished(&run);
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
        // A run that will announce itself keeps its lease until its event is out.
        if !req.skip_downstream {
            let lease = self
                .config
                .server
                .lease_policy(&self.config.backend.kind)
                .lease;
            run.lease_until = Some(Utc::now() + lease);
        } else {
            run.lease_until = None;
        }
        let committed = self.execute(p, req, run.clone(), deadline).await;
        self.settle(p, req, run, held, committed).await
    }

    /// Run the processor; SQL processors commit output and outcome together.
    async fn execute(
        &self,
        p: &Processor,
        req: &RunRequest,
        run: RunRecord,
        deadline: Instant,
    ) -> Result<Committed, String> {
        let require_rows = processor::rows_reference(&self.config, p);
        match p.kind {
            ProcessorKind::Sql => {
                let job = ProcessorRun {
                    statements: p.sql.for_backend(&self.config.backend.kind),
                    date: req.data_date,
                    output: p.output.as_ref(),
                    require_rows,
                    deadline,
                };
                self.warehouse
                    .run_and_record(&job, run, self.ledger.as_ref())
                    .await
                    .map_err(|e| e.to_string())
            }
            ProcessorKind::Command => {
                processor::run_command_and_record(
                    p,
                    req.data_date,
                    self.warehouse.as_ref(),
                    self.ledger.as_ref(),
                    require_rows,
                    run,
                )
                .await
            }
        }
    }

    /// Turn the processor's result into the step and the ledger's final word.
    async fn settle(
        &self,
        p: &Processor,
        req: &RunRequest,
        mut run: RunRecord,
        held: Held,
        committed: Result<Committed, String>,
    ) -> Result<Step, WorkerError> {
        let error = match committed {
            Ok(Committed::Done(done)) => {
                held.disarm();
                crate::metrics::run_finished(&done);
                tracing::debug!(processor = %p.name, data_date = %req.data_date,
                    status = %done.status, rows = ?done.rows_affected, "processor finished");
                return Ok(Step::Ran(done));
            }
            Ok(Committed::TakenOver) => {
                held.disarm();
                let latest = self.ledger.latest(&p.name, req.data_date).await?;
                return Ok(Step::Stop(PhaseOutcome::InProgress {
                    run: Box::new(latest.unwrap_or(run)),
                }));
            }
            Ok(Committed::PostCondition(reason)) => reason,
            Ok(Committed::Unavailable(reason)) => {
                // Not the processor's failure, and nothing of it committed: no outcome. The
                // run is released — still `running`, its lease ended and `finished_at` set
                // (so a takeover does not blame it) — the delivery is answered 503, and its
                // redelivery takes the claim at once.
                run.finished_at = Some(Utc::now());
                run.errors = Some(format!(
                    "released: the store was unavailable ({reason}); nothing committed, \
                     redelivered"
                ));
                run.lease_until = None;
                held.complete(&run).await?;
                return Err(WorkerError::Ledger(crate::ledger::LedgerError(reason)));
            }
            Err(e) => e,
        };
        run.finish(RunStatus::Failed, None, Some(error.clone()));
        run.lease_until = None;
        held.complete(&run).await?;
        crate::metrics::run_finished(&run);
        tracing::error!(processor = %p.name, data_date = %req.data_date,
            error = %error, "processor failed");
        Ok(Step::Stop(PhaseOutcome::Failed { run: Box::new(run) }))
    }
}
