//! Who announces a finished phase: at most one completion event per run, and one for every
//! run that should publish.
//!
//! The delivery that ran a processor holds its run until the event is out (its lease). A
//! delivery that finds a done run whose event is owed publishes it only after taking the
//! publication over atomically, which succeeds only when the owner's lease ran out (it
//! crashed between recording and publishing). The ledger is the outbox; `relay` (the sweep)
//! uses the same take-over for events whose deliveries all gave up.

use chrono::Utc;

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
        // The delivery that ran it is still announcing it.
        if others.iter().any(|r| r.lease_alive(Utc::now())) {
            return Ok(Publication::PendingElsewhere);
        }
        let others: Vec<String> = others.iter().map(|r| r.run_id.clone()).collect();
        if !others.is_empty() {
            let lease = self
                .config
                .server
                .lease_policy(&self.config.backend.kind)
                .lease;
            let taken = self
                .ledger
                .claim_publication(&others, Utc::now() + lease)
                .await
                .map_err(|e| e.to_string())?;
            if !taken {
                return Ok(Publication::PendingElsewhere);
            }
        }
        let result = self.publish_and_mark(phase, runs).await;
        if result.is_err() {
            self.release_publication(runs).await;
        }
        result
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

    /// The outbox sweep: publish every owed event whose runs' holders are gone (their
    /// leases ran out). Returns how many events were published.
    pub async fn relay_owed_events(&self) -> Result<usize, String> {
        let owed = self
            .ledger
            .owed_events(500)
            .await
            .map_err(|e| e.to_string())?;
        let lease = self
            .config
            .server
            .lease_policy(&self.config.backend.kind)
            .lease;
        let mut published = 0;
        for run in owed {
            let Some(phase) = self.config.phase(&run.phase) else {
                continue;
            };
            let mut runs = Vec::new();
            for p in &phase.processors {
                match self.ledger.latest(&p.name, run.data_date).await {
                    Ok(Some(r)) if r.status.is_done() => runs.push(r),
                    _ => break,
                }
            }
            if runs.len() != phase.processors.len() || runs.iter().all(|r| r.published_at.is_some())
            {
                continue;
            }
            let ids: Vec<String> = runs
                .iter()
                .filter(|r| r.published_at.is_none())
                .map(|r| r.run_id.clone())
                .collect();
            match self
                .ledger
                .claim_publication(&ids, Utc::now() + lease)
                .await
            {
                Ok(true) => {
                    self.publish_and_mark(phase, &mut runs).await?;
                    published += 1;
                }
                Ok(false) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(published)
    }
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

/// Run the outbox sweep now and then every `every` until the handle is aborted (`serve`).
pub fn spawn_outbox_sweep(
    worker: std::sync::Arc<Worker>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match worker.relay_owed_events().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "outbox sweep published owed events"),
                Err(e) => tracing::warn!(error = %e, "outbox sweep failed; retried later"),
            }
            tokio::time::sleep(every).await;
        }
    })
}
