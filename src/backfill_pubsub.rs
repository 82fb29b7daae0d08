//! `backfill --via-pubsub`: the backfill the production system uses. For each date a
//! skip-flagged trigger goes to the phase's input topic; the phase's own workers (Cloud Run)
//! process it; the ledger is followed until every processor of the phase has a final run for
//! the date that started after the publish, or the timeout passes.
//!
//! A date that ends `failed` or `blocked` is reported at once; Pub/Sub keeps redelivering its
//! message until the subscription's max delivery attempts, then dead-letters it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use serde_json::json;

use crate::backends::pubsub::PubSubBus;
use crate::backfill::{DateResult, DateRunner};
use crate::bus::Publisher;
use crate::envelope::{FORCE, SKIP_DOWNSTREAM_TRIGGER};
use crate::ledger::{Ledger, RunStatus};
use crate::startup::App;
use crate::worker::WorkerError;

/// How often the ledger is read while waiting.
const POLL: Duration = Duration::from_millis(500);

pub struct PubSubRunner {
    bus: Arc<PubSubBus>,
    ledger: Arc<dyn Ledger>,
    topic: String,
    processors: Vec<String>,
    force: bool,
    timeout: Duration,
}

impl PubSubRunner {
    pub fn new(
        app: &App,
        phase: &str,
        force: bool,
        timeout_secs: u64,
    ) -> Result<PubSubRunner, WorkerError> {
        let p = app
            .config
            .phase(phase)
            .ok_or_else(|| WorkerError::UnknownPhase {
                phase: phase.to_string(),
                known: app.config.phase_names(),
            })?;
        let bus = app.pubsub.clone().ok_or_else(|| {
            WorkerError::Ledger(crate::ledger::LedgerError(
                "--via-pubsub needs the Pub/Sub bus".into(),
            ))
        })?;
        Ok(PubSubRunner {
            bus,
            ledger: app.ledger().clone(),
            topic: p.input().to_string(),
            processors: p.processors.iter().map(|p| p.name.clone()).collect(),
            force,
            timeout: Duration::from_secs(timeout_secs),
        })
    }
}

#[async_trait::async_trait]
impl DateRunner for PubSubRunner {
    async fn run(&self, date: NaiveDate) -> Result<DateResult, WorkerError> {
        let mut attributes = BTreeMap::from([
            ("data_date".to_string(), date.to_string()),
            (SKIP_DOWNSTREAM_TRIGGER.to_string(), "true".to_string()),
            ("trigger".to_string(), "backfill".to_string()),
        ]);
        if self.force {
            attributes.insert(FORCE.to_string(), "true".to_string());
        }
        // Runs that started before this instant belong to earlier attempts.
        let since = Utc::now() - chrono::Duration::seconds(1);
        if let Err(e) = self
            .bus
            .publish(&self.topic, &json!({ "data_date": date }), attributes)
            .await
        {
            return Ok(DateResult::Failed {
                status: "publish_failed".into(),
                reason: e.to_string(),
            });
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let mut all_done = true;
            for p in &self.processors {
                match self.ledger.latest(p, date).await? {
                    Some(run) if run.started_at >= since || run.status.is_done() && !self.force => {
                        match run.status {
                            RunStatus::Failed | RunStatus::Blocked => {
                                return Ok(DateResult::Failed {
                                    status: run.status.to_string(),
                                    reason: run.errors.unwrap_or_default(),
                                });
                            }
                            RunStatus::Running => all_done = false,
                            RunStatus::Success | RunStatus::NoData => {}
                        }
                    }
                    _ => all_done = false,
                }
            }
            if all_done {
                let mut statuses = Vec::new();
                for p in &self.processors {
                    if let Some(run) = self.ledger.latest(p, date).await? {
                        statuses.push(run.status);
                    }
                }
                return Ok(DateResult::Succeeded {
                    status: RunStatus::of_done_phase(statuses),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(DateResult::Failed {
                    status: "timeout".into(),
                    reason: format!(
                        "no final run in the ledger {}s after publishing to {}: are the workers \
                         and the push subscription up?",
                        self.timeout.as_secs(),
                        self.topic
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
