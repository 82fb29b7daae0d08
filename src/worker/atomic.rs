//! A processor run as one transaction of the store (the embedded SQLite; see
//! [`crate::atomic`]): the latest runs, the decision, the gate, the statements and the
//! ledger row commit together.
//!
//! There is no claim. Nothing else commits in between, so two deliveries of a date run one
//! after the other and the second finds the first's run done; a crash or a dropped request
//! leaves nothing behind, so there is nothing to release or take over. A run cut off by
//! the deadline is recorded `failed` with none of its output (one that never started
//! leaves no row); its delivery is answered with an error and redelivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::Utc;

use super::decide::{Decision, Seen, judge};
use super::{PhaseOutcome, RunRequest, Step, Worker, WorkerError};
use crate::atomic::{InTransaction, OneTransaction, Processed};
use crate::config::{Config, Phase, Processor};
use crate::gate::{self, GateError, GateReport};
use crate::ledger::{LedgerError, RunRecord, RunStatus};
use crate::processor;
use crate::warehouse::{ProcessorRun, finished};

/// What a run in one transaction committed.
enum Settled {
    /// The latest run stands (done, or the same message's): nothing written.
    Reused(RunRecord),
    /// A claimed run of the processor holds the date (written by a worker that claims:
    /// another process on an older version, or a decorated store's).
    InProgress(RunRecord),
    /// The gate could not be evaluated: recorded `failed`.
    GateFailed(GateError),
    /// The strict gate blocked it: recorded `blocked`.
    Blocked { run: RunRecord, report: GateReport },
    /// It ran: recorded `success`/`no_data`, or `failed` with its statements rolled back.
    Ran { run: RunRecord, report: GateReport },
}

/// One processor's run, owned: it is made on the store's writer.
struct OneRun {
    config: Arc<Config>,
    phase: String,
    /// The processor's position in its phase.
    index: usize,
    req: RunRequest,
    deadline: Instant,
    /// The delivery still waits for the answer (see [`Waiting`]).
    waiting: Arc<AtomicBool>,
}

/// Tells the transaction the delivery is gone when it is dropped (a request dropped by its
/// client or its deadline): the run it may still commit then takes no lease, so the next
/// delivery (or the outbox sweep) announces it at once instead of after the lease.
struct Waiting(Arc<AtomicBool>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Worker {
    /// De-duplicate, gate, run and record `p`, processor `index` of `phase`, in one
    /// transaction of `one`.
    pub(super) async fn run_in_one_transaction(
        &self,
        one: &dyn OneTransaction,
        (phase, p, index): (&Phase, &Processor, usize),
        req: &RunRequest,
        deadline: Instant,
    ) -> Result<Step, WorkerError> {
        let waiting = Waiting(Arc::new(AtomicBool::new(true)));
        let run = OneRun {
            config: Arc::clone(&self.config),
            phase: phase.name.clone(),
            index,
            req: req.clone(),
            deadline,
            waiting: Arc::clone(&waiting.0),
        };
        let answer = one.run(deadline, move |tx| run.decide_and_run(tx)).await;
        drop(waiting);
        let settled = match answer {
            Ok(settled) => settled?,
            Err(_) if Instant::now() >= deadline => {
                return Err(WorkerError::Deadline(self.config.server.push_deadline_secs));
            }
            Err(e) => return Err(WorkerError::Ledger(LedgerError(e))),
        };
        announce_settled(p, req, settled).map_err(WorkerError::from)
    }
}

/// The step a committed run makes, with its metrics and log lines (written here, after the
/// transaction, not on the store's writer).
fn announce_settled(p: &Processor, req: &RunRequest, settled: Settled) -> Result<Step, GateError> {
    let (run, report) = match settled {
        Settled::Reused(run) => return Ok(Step::Reused(Box::new(run))),
        Settled::InProgress(run) => {
            return Ok(Step::Stop(PhaseOutcome::InProgress { run: Box::new(run) }));
        }
        Settled::GateFailed(error) => return Err(error),
        Settled::Blocked { run, report } => {
            crate::metrics::gate_report(&report);
            crate::metrics::run_finished(&run);
            tracing::warn!(processor = %p.name, data_date = %req.data_date,
                reason = %report.summary(), "blocked by strict gate");
            return Ok(Step::Stop(PhaseOutcome::Blocked {
                run: Box::new(run),
                report: Box::new(report),
            }));
        }
        Settled::Ran { run, report } => (run, report),
    };
    crate::metrics::gate_report(&report);
    if !report.production_ready() {
        tracing::warn!(processor = %p.name, data_date = %req.data_date,
            reason = %report.summary(), "soft gate: processing, not production-ready");
    }
    crate::metrics::run_finished(&run);
    if run.status == RunStatus::Failed {
        tracing::error!(processor = %p.name, data_date = %req.data_date,
            error = run.errors.as_deref().unwrap_or_default(), "processor failed");
        return Ok(Step::Stop(PhaseOutcome::Failed { run: Box::new(run) }));
    }
    tracing::debug!(processor = %p.name, data_date = %req.data_date,
        status = %run.status, rows = ?run.rows_affected, "processor finished");
    Ok(Step::Ran(Box::new(run)))
}

impl OneRun {
    fn processor(&self) -> Result<(&Phase, &Processor), WorkerError> {
        let phase = self
            .config
            .phase(&self.phase)
            .ok_or_else(|| WorkerError::UnknownPhase {
                phase: self.phase.clone(),
                known: self.config.phase_names(),
            })?;
        let p = phase.processors.get(self.index).ok_or_else(|| {
            WorkerError::Ledger(LedgerError(format!(
                "phase {} has no processor #{}",
                phase.name, self.index
            )))
        })?;
        Ok((phase, p))
    }

    /// Inside the transaction: decide, gate, run, record. `Err` rolls back what it wrote.
    fn decide_and_run(self, tx: &dyn InTransaction) -> Result<Settled, WorkerError> {
        let (phase, p) = self.processor()?;
        let (config, req) = (&*self.config, &self.req);
        let read = tx.latest_of(&Seen::names(config, p), req.data_date)?;
        let mut seen = Seen::new(config, p, read);
        let latest = match seen.decide(req) {
            Decision::Reuse(run) => return Ok(Settled::Reused(run)),
            Decision::Wait(run) => return Ok(Settled::InProgress(run)),
            Decision::Run(latest) => latest,
        };
        let mut run = seen.start(p, phase, req);
        if let Some(cur) = &latest {
            if cur.status == RunStatus::Running {
                tx.record(&cur.taken_over_by(&run.run_id))?;
            }
            // Keep "latest = greatest started_at" true even if the clock stepped back.
            if run.started_at <= cur.started_at {
                run.started_at = cur.started_at + chrono::Duration::microseconds(1);
            }
        }
        let report = match gate::evaluate_in(config, p, req.data_date, &seen.upstream, tx) {
            Ok(report) => report,
            Err(error) => {
                let reason = format!("the gate could not be evaluated: {error}");
                run.finish(RunStatus::Failed, None, Some(reason));
                tx.record(&run)?;
                return Ok(Settled::GateFailed(error));
            }
        };
        let report = judge(&mut run, report, p, &seen.consumed_runs());
        if report.blocks() {
            tx.record(&run)?;
            return Ok(Settled::Blocked { run, report });
        }
        let run = self.process(tx, p, run)?;
        Ok(Settled::Ran { run, report })
    }

    /// Run the processor's statements and record how they ended.
    fn process(
        &self,
        tx: &dyn InTransaction,
        p: &Processor,
        mut run: RunRecord,
    ) -> Result<RunRecord, WorkerError> {
        let config = &*self.config;
        let job = ProcessorRun {
            statements: p.sql.for_backend(&config.backend.kind),
            date: self.req.data_date,
            output: p.output.as_ref(),
            require_rows: processor::rows_reference(config, p),
            deadline: self.deadline,
        };
        let failure = match tx.process(&job) {
            Ok(Processed::Rows(rows)) => Ok(rows),
            Ok(Processed::PostCondition(reason)) => Err(reason),
            Err(e) => Err(e.to_string()),
        };
        let run = match failure {
            Ok(rows) => {
                let mut run = finished(run, rows);
                // A run whose delivery will announce it keeps a lease until its event is out.
                let announces = !self.req.skip_downstream && self.waiting.load(Ordering::Acquire);
                run.lease_until = announces
                    .then(|| Utc::now() + config.server.lease_policy(&config.backend.kind).lease);
                run
            }
            Err(reason) => {
                run.finish(RunStatus::Failed, None, Some(reason));
                run
            }
        };
        tx.record(&run)?;
        Ok(run)
    }
}
