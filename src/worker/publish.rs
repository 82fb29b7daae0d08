//! Who announces a finished phase: at most one completion event per run, and one for every
//! run that should publish.
//!
//! The delivery that ran a processor holds its run until the event is out (its lease). A
//! delivery that finds a done run whose event is owed publishes it only after taking the
//! publication over atomically, which succeeds only when the owner's lease ran out (it
//! crashed between recording and publishing). The ledger is the outbox; `relay` (the sweep)
//! uses the same take-over for events whose deliveries all gave up.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};

use super::{Publication, RunRequest, Worker};
use crate::config::Phase;
use crate::event::CompletionEvent;
use crate::ledger::{RunRecord, RunStatus};

impl Worker {
    /// Publish the phase's completion event for `runs` unless the cascade stops here.
    /// `ran` are the runs this delivery made (and so holds). `Err` is why publishing failed.
    pub(super) async fn announce(
        &self,
        phase: &Phase,
        req: &RunRequest,
        runs: &mut [RunRecord],
        ran: &[String],
    ) -> Result<Publication, String> {
        if req.skip_downstream {
            tracing::debug!(phase = %phase.name, data_date = %req.data_date,
                "skip_downstream_trigger set: completion event not published");
            return Ok(Publication::Skipped);
        }
        if runs.iter().all(|r| r.published_at.is_some()) {
            return Ok(Publication::AlreadyPublished);
        }
        let others: Vec<&RunRecord> = runs
            .iter()
            .filter(|r| r.published_at.is_none() && !ran.contains(&r.run_id))
            .collect();
        // Another delivery holds a run of it: give ours back and let Pub/Sub retry.
        if others.iter().any(|r| r.lease_alive(Utc::now())) {
            self.release_own(runs, ran).await;
            return Ok(Publication::PendingElsewhere);
        }
        // Claimed after the run, not before: its own runs with the lease it wrote (a run
        // that outlived its lease may have been taken over meanwhile), the others' with the
        // expired lease it read.
        let taken = self
            .claim_publication(runs)
            .await
            .map_err(|e| e.to_string())?;
        if !taken {
            self.release_own(runs, ran).await;
            return Ok(Publication::PendingElsewhere);
        }
        let result = self.publish_and_mark(phase, runs).await;
        if result.is_err() {
            self.release_publication(runs).await;
        }
        result
    }

    /// The one publication claim every publisher makes ([`crate::ledger::Ledger::claim_publication`])
    /// for the unpublished runs among `runs`, for one lease.
    async fn claim_publication(
        &self,
        runs: &[RunRecord],
    ) -> Result<bool, crate::ledger::LedgerError> {
        let unpublished: Vec<RunRecord> = runs
            .iter()
            .filter(|r| r.published_at.is_none())
            .cloned()
            .collect();
        let lease = self
            .config
            .server
            .lease_policy(&self.config.backend.kind)
            .lease;
        self.ledger
            .claim_publication(&unpublished, Utc::now() + lease)
            .await
    }

    /// Give back the publication of the runs this delivery made (`ran`) among `runs`: it
    /// will not announce them, so their leases must not keep a redelivery waiting.
    pub(super) async fn release_own(&self, runs: &[RunRecord], ran: &[String]) {
        let own: Vec<RunRecord> = runs
            .iter()
            .filter(|r| ran.contains(&r.run_id))
            .cloned()
            .collect();
        if !own.is_empty() {
            self.release_publication(&own).await;
        }
    }

    /// Publishing failed: let the next delivery (the redelivery of this message) take the
    /// owed event over at once instead of waiting for the lease to run out.
    async fn release_publication(&self, runs: &[RunRecord]) {
        let past = Utc::now() - chrono::Duration::seconds(1);
        for r in runs.iter().filter(|r| r.published_at.is_none()) {
            if let Err(e) = self.ledger.renew(&r.run_id, past).await {
                tracing::warn!(run_id = %r.run_id, error = %e,
                    "could not release the publication; it is retried when the lease ends");
            }
        }
    }

    /// Publish the event of runs this caller holds, then record `published_at`.
    pub(crate) async fn publish_and_mark(
        &self,
        phase: &Phase,
        runs: &mut [RunRecord],
    ) -> Result<Publication, String> {
        let event = completion_event(phase, runs);
        let message_id = self
            .publisher
            .publish(
                &phase.completion_topic,
                &event.to_json(),
                event.attributes(),
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(phase = %phase.name, data_date = %event.data_date,
            topic = %phase.completion_topic, message_id = %message_id,
            "completion event published");
        let at = Utc::now();
        let unpublished: Vec<RunRecord> = runs
            .iter()
            .filter(|r| r.published_at.is_none())
            .cloned()
            .collect();
        if let Err(e) = self.ledger.mark_published(&unpublished, at).await {
            // The event is out; the ledger will offer it again after the lease, and the
            // downstream de-duplication (same upstream run ids) absorbs the repeat.
            tracing::error!(phase = %phase.name, error = %e,
                "completion event published but not recorded as published");
        }
        for r in runs.iter_mut() {
            r.published_at.get_or_insert(at);
            r.lease_until = None;
        }
        Ok(Publication::Published { message_id })
    }

    /// The outbox sweep for `phases` (a worker's own phase; every phase where one process
    /// serves them all): publish each owed event whose runs' holders are gone (their leases
    /// ran out). A failing event gives its publication back at once (no lease lock-out of
    /// its owner) and the sweep goes on with the next one. No event is started after
    /// `budget` has passed (the caller's own deadline: Cloud Scheduler cancels a `/relay`
    /// call at its attempt deadline, which would drop an event between claim and publish);
    /// the ones left are counted in `left` for the next sweep.
    pub async fn relay_owed_events(&self, phases: &[&Phase], budget: Duration) -> RelayReport {
        let until = Instant::now() + budget;
        let mut report = RelayReport::default();
        for phase in phases {
            let owed = match self.ledger.owed_events(&phase.name, OWED_PER_SWEEP).await {
                Ok(owed) => owed,
                Err(e) => {
                    report.failed.push(format!("{}: {e}", phase.name));
                    continue;
                }
            };
            // One event per date, however many of its processors' runs are owed.
            let mut dates: Vec<NaiveDate> = owed.iter().map(|r| r.data_date).collect();
            dates.dedup();
            for date in dates {
                if Instant::now() >= until {
                    report.left += 1;
                    continue;
                }
                self.relay_one(phase, date, &mut report).await;
            }
        }
        report
    }

    /// Publish the event owed for `date` of `phase`, if every processor is done and the
    /// publication can be taken over.
    async fn relay_one(&self, phase: &Phase, date: NaiveDate, report: &mut RelayReport) {
        let names: Vec<String> = phase.processors.iter().map(|p| p.name.clone()).collect();
        let latest = match self.ledger.latest_of(&names, date).await {
            Ok(latest) => latest,
            Err(e) => return report.failed.push(format!("{} {date}: {e}", phase.name)),
        };
        let Some(mut runs) = latest
            .into_iter()
            .map(|r| r.filter(|r| r.status.is_done()))
            .collect::<Option<Vec<RunRecord>>>()
        else {
            return;
        };
        if runs.iter().all(|r| r.published_at.is_some())
            || runs.iter().any(|r| r.skip_downstream_trigger)
            || runs
                .iter()
                .any(|r| r.published_at.is_none() && r.lease_alive(Utc::now()))
        {
            // Out, not to be announced, or held by a live delivery.
            return;
        }
        match self.claim_publication(&runs).await {
            Ok(true) => match self.publish_and_mark(phase, &mut runs).await {
                Ok(_) => report.published += 1,
                Err(e) => {
                    self.release_publication(&runs).await;
                    report.failed.push(format!("{} {date}: {e}", phase.name));
                }
            },
            Ok(false) => {}
            Err(e) => report.failed.push(format!("{} {date}: {e}", phase.name)),
        }
    }
}

/// Owed runs one sweep reads per phase, oldest date first.
const OWED_PER_SWEEP: usize = 500;

/// What one outbox sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayReport {
    /// Events published.
    pub published: usize,
    /// One line per event (or phase) that could not be relayed; retried by the next sweep.
    pub failed: Vec<String>,
    /// Owed dates not looked at because the budget ran out; the next sweep takes them.
    pub left: usize,
}

/// The event announcing `runs` (every processor of `phase` for one date).
pub fn completion_event(phase: &Phase, runs: &[RunRecord]) -> CompletionEvent {
    CompletionEvent {
        phase: phase.name.clone(),
        processors: runs.iter().map(|r| r.processor.clone()).collect(),
        data_date: runs.first().map(|r| r.data_date).unwrap_or_default(),
        run_id: runs
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>()
            .join(","),
        status: RunStatus::of_done_phase(runs.iter().map(|r| r.status)),
        production_ready: runs.iter().all(|r| r.production_ready),
    }
}

/// Run the outbox sweep of `phases` (names; all of the pipeline's when empty) now and then
/// every `every` until the handle is aborted (`serve`). Where the platform gives CPU only
/// while a request is served (Cloud Run's default), the loop does not run between requests:
/// the start-up sweep and `POST /relay` (a scheduled call) cover that.
pub fn spawn_outbox_sweep(
    worker: std::sync::Arc<Worker>,
    phases: Vec<String>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let report = worker.relay(&phases, every).await;
            if report.published > 0 {
                tracing::info!(
                    events = report.published,
                    "outbox sweep published owed events"
                );
            }
            for failure in &report.failed {
                tracing::warn!(error = %failure, "outbox sweep: an owed event was not published; retried later");
            }
            tokio::time::sleep(every).await;
        }
    })
}

impl Worker {
    /// [`Worker::relay_owed_events`] for phases named `phases` (every phase when empty;
    /// unknown names are ignored: the caller validated them), starting no event after
    /// `budget`.
    pub async fn relay(&self, phases: &[String], budget: Duration) -> RelayReport {
        let scope: Vec<&Phase> = self
            .config
            .phases
            .iter()
            .filter(|p| phases.is_empty() || phases.contains(&p.name))
            .collect();
        self.relay_owed_events(&scope, budget).await
    }
}
