//! Who runs a processor for a date: de-duplication, the atomic claim, and the guard that
//! never leaves a claim behind.
//!
//! A delivery reads the latest run (and the latest upstream runs), decides — reuse it, wait
//! for it, or run again — and, to run, claims with a compare-and-set on the ledger: the claim
//! succeeds only if the latest run is still the one it saw. Whoever loses re-decides from
//! what won. The [`Held`] guard releases a claim on every path that does not finish it
//! (error, panic, dropped request, deadline) and renews its lease while the run is alive.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::task::JoinHandle;

use super::decide::{Consumed, Decision, Seen};
use super::{PhaseOutcome, RunRequest, Step, Worker, WorkerError};
use crate::config::{LeasePolicy, Phase, Processor, ProcessorKind};
use crate::gate::{self, GateError, GateReport};
use crate::ledger::{Claim, Ledger, LedgerError, RunRecord, RunStatus};

/// Decisions re-taken after losing a claim before answering "in progress".
const CLAIM_ROUNDS: usize = 3;

/// A claimed run: released (recorded `failed`) if dropped before [`Held::complete`].
pub(super) struct Held {
    ledger: Arc<dyn Ledger>,
    run: Option<RunRecord>,
    renewer: Option<JoinHandle<()>>,
    /// While this exists, the store knows the holder is alive ([`Ledger::holding`]).
    _alive: Arc<()>,
}

impl Held {
    fn new(ledger: Arc<dyn Ledger>, run: RunRecord, policy: LeasePolicy) -> Held {
        let alive = Arc::new(());
        ledger.holding(&run.run_id, Arc::downgrade(&alive));
        let renewer = policy.renew_every.map(|every| {
            let (ledger, id) = (Arc::clone(&ledger), run.run_id.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let until = Utc::now() + policy.lease;
                    match ledger.renew(&id, until).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => tracing::warn!(run_id = %id, error = %e, "lease renewal failed"),
                    }
                }
            })
        });
        Held {
            ledger,
            run: Some(run),
            renewer,
            _alive: alive,
        }
    }

    /// Record the run's final state (written only if the claim is still ours).
    pub(super) async fn complete(mut self, run: &RunRecord) -> Result<bool, LedgerError> {
        self.stop_renewing();
        let result = self.ledger.complete(run).await;
        // Finished or not, the outcome is decided here: don't release on drop.
        self.run = None;
        result
    }

    /// The run was completed elsewhere (inside the processor's own transaction).
    pub(super) fn disarm(mut self) {
        self.stop_renewing();
        self.run = None;
    }

    fn stop_renewing(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop_renewing();
        let Some(mut run) = self.run.take() else {
            return;
        };
        run.finish(
            RunStatus::Failed,
            None,
            Some(
                "interrupted before it finished (request dropped, deadline, error or panic); \
                 released for the next delivery"
                    .into(),
            ),
        );
        run.lease_until = None;
        let ledger = Arc::clone(&self.ledger);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    match ledger.complete(&run).await {
                        Ok(_) => tracing::warn!(run_id = %run.run_id, processor = %run.processor,
                            data_date = %run.data_date, "unfinished run released"),
                        Err(e) => tracing::error!(run_id = %run.run_id, error = %e,
                            "could not release an unfinished run; its lease will expire"),
                    }
                });
            }
            Err(_) => tracing::error!(run_id = %run.run_id,
                "no runtime to release an unfinished run; its lease will expire"),
        }
    }
}

/// A run this delivery claimed, with what it needs to go on.
pub(super) struct Claimed {
    /// The `running` run written by the claim.
    pub run: RunRecord,
    /// Releases the claim on every path that does not finish it.
    pub held: Held,
    /// The done upstream runs the run saw when it claimed: the lineage it consumes.
    pub consumed: Consumed,
    /// The gate's verdict, read while the claim was being written.
    pub report: Result<GateReport, GateError>,
}

impl Worker {
    /// De-duplicate, claim and (if won) run one processor — or, where the ledger and the
    /// warehouse are one store that can, run a SQL processor in one transaction instead
    /// ([`super::atomic`]).
    pub(super) async fn run_processor(
        &self,
        phase: &Phase,
        p: &Processor,
        req: &RunRequest,
        deadline: Instant,
    ) -> Result<Step, WorkerError> {
        if p.kind == ProcessorKind::Sql
            && let Some(one) = self.one_transaction.as_deref()
            && let Some(index) = phase.processors.iter().position(|x| x.name == p.name)
        {
            return self
                .run_in_one_transaction(one, (phase, p, index), req, deadline)
                .await;
        }
        let policy = self.config.server.lease_policy(&self.config.backend.kind);
        // The processor's own latest run, its upstream processors' and theirs (one ledger
        // call): the last ones tell whether an upstream run it would consume is stale.
        let names = Seen::names(&self.config, p);
        for _ in 0..CLAIM_ROUNDS {
            let read = self.ledger.latest_of(&names, req.data_date).await?;
            let mut seen = Seen::new(&self.config, p, read);
            let latest = match seen.decide(req) {
                Decision::Reuse(run) => return Ok(Step::Reused(Box::new(run))),
                Decision::Wait(run) => {
                    return Ok(Step::Stop(PhaseOutcome::InProgress { run: Box::new(run) }));
                }
                Decision::Run(latest) => latest,
            };
            let mut run = seen.start(p, phase, req);
            run.lease_until = Some(Utc::now() + policy.lease);
            // The gate reads what the claim does not write, so both go out together: on
            // SQLite their jobs share one group of the writer thread (one wait instead of
            // two), on BigQuery their jobs run side by side. A lost claim drops the report.
            // The guard is made as soon as the claim is won, while the gate may still be
            // reading: a request dropped then (deadline, client gone) releases the claim.
            let gate = gate::evaluate_with_upstream(
                &self.config,
                p,
                req.data_date,
                &seen.upstream,
                self.warehouse.as_ref(),
            );
            let claim = async {
                Ok::<_, LedgerError>(match self.ledger.claim(&run, latest.as_ref()).await? {
                    Claim::Won => Ok(Held::new(Arc::clone(&self.ledger), run.clone(), policy)),
                    Claim::Lost(winner) => Err(winner),
                })
            };
            let (claim, report) = tokio::join!(claim, gate);
            match claim? {
                Ok(held) => {
                    let claimed = Claimed {
                        held,
                        run,
                        consumed: seen.consumed_runs(),
                        report,
                    };
                    return self.run_claimed(p, req, claimed, deadline).await;
                }
                Err(winner) => {
                    tracing::debug!(processor = %p.name, data_date = %req.data_date,
                        winner = %winner.run_id, "claim lost to a concurrent delivery");
                }
            }
        }
        match self.ledger.latest(&p.name, req.data_date).await? {
            Some(run) if run.status.is_done() && !req.force => Ok(Step::Reused(Box::new(run))),
            Some(run) => Ok(Step::Stop(PhaseOutcome::InProgress { run: Box::new(run) })),
            None => Err(WorkerError::Ledger(LedgerError(format!(
                "claim of {} for {} kept losing but no run is recorded",
                p.name, req.data_date
            )))),
        }
    }
}
