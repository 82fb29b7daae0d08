//! `backfill --via-pubsub`: the backfill the production system uses. For each date a
//! skip-flagged trigger goes to the phase's input topic; the phase's own workers (Cloud Run)
//! process it; the ledger is followed until every processor of the phase has a final run for
//! the date that started after the publish, or the timeout passes.
//!
//! A date that ends `failed` or `blocked` is reported at once; Pub/Sub keeps redelivering its
//! message until the subscription's max delivery attempts, then dead-letters it. A ledger read
//! that fails while following is retried until the timeout (the date is being processed
//! elsewhere; one failed read says nothing about it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;

use crate::backfill::execution::DateRunner;
use crate::backfill::plan::{is_done, phase};
use crate::backfill::report::DateResult;
use crate::bus::Publisher;
use crate::envelope::{FORCE, SKIP_DOWNSTREAM_TRIGGER};
use crate::ledger::{Ledger, LedgerError, RunRecord, RunStatus};
use crate::startup::App;
use crate::worker::WorkerError;

/// How often the ledger is read while waiting.
const POLL: Duration = Duration::from_millis(500);

pub struct PubSubRunner {
    /// The Pub/Sub bus.
    bus: Arc<dyn Publisher>,
    ledger: Arc<dyn Ledger>,
    topic: String,
    /// Each processor of the phase with the upstream processors its checks name.
    processors: Vec<(String, Vec<String>)>,
    force: bool,
    timeout: Duration,
}

/// Where a date stands in the ledger after its trigger was published.
enum Standing {
    Finished(DateResult),
    Waiting,
}

impl PubSubRunner {
    pub fn new(
        app: &App,
        phase_name: &str,
        force: bool,
        timeout_secs: u64,
    ) -> Result<PubSubRunner, WorkerError> {
        let p = phase(&app.config, phase_name)?;
        let bus = app.pubsub.clone().ok_or_else(|| {
            WorkerError::Ledger(LedgerError("--via-pubsub needs the Pub/Sub bus".into()))
        })?;
        Ok(PubSubRunner {
            bus,
            ledger: app.ledger().clone(),
            topic: p.input().to_string(),
            processors: p
                .processors
                .iter()
                .map(|p| (p.name.clone(), p.checks.upstream.clone()))
                .collect(),
            force,
            timeout: Duration::from_secs(timeout_secs),
        })
    }

    async fn publish(&self, date: NaiveDate) -> Result<(), String> {
        let mut attributes = BTreeMap::from([
            ("data_date".to_string(), date.to_string()),
            (SKIP_DOWNSTREAM_TRIGGER.to_string(), "true".to_string()),
            ("trigger".to_string(), "backfill".to_string()),
        ]);
        if self.force {
            attributes.insert(FORCE.to_string(), "true".to_string());
        }
        self.bus
            .publish(&self.topic, &json!({ "data_date": date }), attributes)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Read every processor's latest run: a final run of this attempt (or, unforced, any done
    /// run that is not stale) counts; a failed or blocked one ends the date.
    async fn standing(
        &self,
        date: NaiveDate,
        since: DateTime<Utc>,
    ) -> Result<Standing, LedgerError> {
        let mut statuses = Vec::with_capacity(self.processors.len());
        for (p, upstream) in &self.processors {
            let Some(run) = self.ledger.latest(p, date).await? else {
                return Ok(Standing::Waiting);
            };
            // A run of an earlier attempt counts only when it is done, not forced, and not
            // stale: the stale run is the one this backfill is replacing.
            let earlier = run.started_at < since;
            if earlier && (self.force || !is_done(&run) || self.stale(&run, upstream).await?) {
                return Ok(Standing::Waiting);
            }
            match run.status {
                RunStatus::Failed | RunStatus::Blocked => {
                    return Ok(Standing::Finished(DateResult::Failed {
                        status: run.status.to_string(),
                        reason: run.errors.unwrap_or_default(),
                    }));
                }
                RunStatus::Running => return Ok(Standing::Waiting),
                RunStatus::Success | RunStatus::NoData => statuses.push(run.status),
            }
        }
        Ok(Standing::Finished(DateResult::Succeeded {
            status: RunStatus::of_done_phase(statuses),
        }))
    }

    /// `run` consumed other upstream runs than the latest done ones of its date.
    async fn stale(&self, run: &RunRecord, upstream: &[String]) -> Result<bool, LedgerError> {
        if upstream.is_empty() {
            return Ok(false);
        }
        let latest = self.ledger.latest_of(upstream, run.data_date).await?;
        let current: Vec<_> = crate::ledger::consumed(upstream, &latest)
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        Ok(run.is_stale(&current))
    }
}

#[async_trait::async_trait]
impl DateRunner for PubSubRunner {
    async fn run(&self, date: NaiveDate) -> Result<DateResult, WorkerError> {
        // Runs that started before this instant belong to earlier attempts.
        let since = Utc::now() - chrono::Duration::seconds(1);
        if let Err(reason) = self.publish(date).await {
            return Ok(DateResult::Failed {
                status: "publish_failed".into(),
                reason,
            });
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last_error = None;
        loop {
            match self.standing(date, since).await {
                Ok(Standing::Finished(result)) => return Ok(result),
                Ok(Standing::Waiting) => {}
                Err(e) => last_error = Some(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(self.timed_out(last_error));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl PubSubRunner {
    fn timed_out(&self, last_error: Option<LedgerError>) -> DateResult {
        let mut reason = format!(
            "no final run in the ledger {}s after publishing to {}: are the workers and the \
             push subscription up?",
            self.timeout.as_secs(),
            self.topic
        );
        if let Some(e) = last_error {
            reason.push_str(&format!(" (last ledger read failed: {e})"));
        }
        DateResult::Failed {
            status: "timeout".into(),
            reason,
        }
    }
}
