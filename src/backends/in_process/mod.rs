//! The embedded bus: topics and push subscriptions inside one process, durable in SQLite.
//!
//! A publish stores the message in the `bus_messages` table (see
//! [`crate::backends::sqlite::queue`]) and returns only once it is committed; a message with
//! an `event_id` attribute already stored for its topic is not stored twice. A delivery loop
//! claims due messages, wraps each in the push envelope Pub/Sub would send and hands it to
//! the same [`Worker::handle_push`]. A message counts as delivered only when the handler
//! answered 2xx; otherwise it is redelivered after `retry_backoff_ms` × attempt, up to
//! `max_delivery_attempts`, then dead-lettered (kept in the table). Messages owed when the
//! process stopped — pending, or claimed by a delivery that never answered — are delivered
//! after a restart. Every published message is kept for inspection.

mod delivery;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::backends::sqlite::Sqlite;
use crate::backends::sqlite::queue::{
    ClaimRequest, MessageState, NewMessage, QueueError, QueuedMessage,
};
use crate::bus::{PublishError, Publisher};
use crate::config::Config;
use crate::worker::Worker;

/// A message as it was published.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedMessage {
    pub topic: String,
    pub message_id: String,
    pub data: serde_json::Value,
    pub attributes: BTreeMap<String, String>,
}

/// A message that exhausted its delivery attempts.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: PublishedMessage,
    pub phase: String,
    pub attempts: u32,
    pub last_status: u16,
    pub last_reason: String,
}

/// The message id the bus gives a stored message.
fn message_id(id: i64) -> String {
    format!("local-{id}")
}

impl From<QueuedMessage> for PublishedMessage {
    fn from(m: QueuedMessage) -> Self {
        PublishedMessage {
            topic: m.topic,
            message_id: message_id(m.id),
            data: m.data,
            attributes: m.attributes,
        }
    }
}

/// What the bus handle and its delivery loop share.
struct Shared {
    config: Arc<Config>,
    queue: Sqlite,
    /// This bus's name in `claimed_by`: unique per process and bus.
    owner: String,
    /// The phases this bus delivers to.
    phases: Vec<String>,
    worker: OnceLock<Weak<Worker>>,
    /// A message was published: the loop looks for due messages.
    wake: Notify,
    /// A delivery settled (delivered, rescheduled or dead-lettered): `wait_idle` looks again.
    settled: Notify,
}

impl Shared {
    fn worker(&self) -> Option<Arc<Worker>> {
        self.worker.get().and_then(Weak::upgrade)
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.config.bus.lease_secs)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.config.bus.poll_interval_ms)
    }

    fn claim_request(&self, limit: usize) -> ClaimRequest {
        ClaimRequest {
            owner: self.owner.clone(),
            lease: self.lease(),
            limit,
            max_attempts: self.config.bus.max_delivery_attempts,
            phases: self.phases.clone(),
        }
    }
}

pub struct InProcessBus {
    shared: Arc<Shared>,
    /// The delivery loop, once a worker is attached; stopped when the bus is dropped.
    deliveries: Mutex<Option<AbortHandle>>,
}

impl InProcessBus {
    /// A bus whose queue lives in `queue` (its table is created if missing). It publishes
    /// at once; it delivers once a worker is [attached](InProcessBus::attach).
    pub async fn open(config: Arc<Config>, queue: Sqlite) -> Result<Arc<InProcessBus>, QueueError> {
        queue.bus_ensure_schema().await?;
        let phases = config.phases.iter().map(|p| p.name.clone()).collect();
        Ok(Arc::new(InProcessBus {
            shared: Arc::new(Shared {
                config,
                queue,
                owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
                phases,
                worker: OnceLock::new(),
                wake: Notify::new(),
                settled: Notify::new(),
            }),
            deliveries: Mutex::new(None),
        }))
    }

    /// Connect the subscriptions to the worker that handles them and start delivering,
    /// beginning with whatever was owed before this process started. Call it inside a tokio
    /// runtime; a second call changes nothing.
    pub fn attach(&self, worker: &Arc<Worker>) {
        if self.shared.worker.set(Arc::downgrade(worker)).is_err() {
            return;
        }
        let task = tokio::spawn(delivery::run(self.shared.clone()));
        if let Ok(mut d) = self.deliveries.lock() {
            *d = Some(task.abort_handle());
        }
    }

    fn is_delivering(&self) -> bool {
        self.deliveries.lock().is_ok_and(|d| d.is_some())
    }

    /// The name this bus claims messages under (`claimed_by` in the queue table).
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// Every message in the queue, oldest first, with its delivery state.
    pub fn messages(&self) -> Vec<QueuedMessage> {
        self.list(None)
    }

    fn list(&self, state: Option<MessageState>) -> Vec<QueuedMessage> {
        self.shared
            .queue
            .bus_list_blocking(state)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the bus queue");
                Vec::new()
            })
    }

    /// Every message published so far, in order (duplicates by `event_id` appear once).
    pub fn published(&self) -> Vec<PublishedMessage> {
        self.messages().into_iter().map(Into::into).collect()
    }

    /// Messages published to one topic.
    pub fn published_to(&self, topic: &str) -> Vec<PublishedMessage> {
        self.published()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Messages that exhausted their delivery attempts.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.list(Some(MessageState::Dead))
            .into_iter()
            .map(|m| DeadLetter {
                phase: m.phase.clone().unwrap_or_default(),
                attempts: m.attempts,
                last_status: m.last_status.unwrap_or(0),
                last_reason: m.last_reason.clone().unwrap_or_default(),
                message: m.into(),
            })
            .collect()
    }

    /// Wait until the cascade settles: no message for this bus's phases is pending — none
    /// due, none scheduled for a retry, none under a delivery's lease (here or in another
    /// process sharing the file). Dead letters are settled. Returns at once when this bus
    /// does not deliver (no worker attached).
    pub async fn wait_idle(&self) {
        if !self.is_delivering() {
            return;
        }
        let shared = &self.shared;
        loop {
            // Registered before the check, so a delivery settling in between is not missed.
            let settled = shared.settled.notified();
            match shared.queue.bus_backlog(shared.phases.clone()).await {
                Ok(b) if b.pending == 0 => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the bus queue; not waiting");
                    return;
                }
            }
            // Another process's deliveries do not notify this one: look again after a while.
            tokio::select! {
                _ = settled => {}
                _ = tokio::time::sleep(shared.poll_interval()) => {}
            }
        }
    }
}

impl Drop for InProcessBus {
    fn drop(&mut self) {
        if let Some(task) = self.deliveries.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// Publishing stores the message durably; the delivery loop hands it to the subscribed phase.
#[async_trait]
impl Publisher for Arc<InProcessBus> {
    async fn publish(
        &self,
        topic: &str,
        data: &serde_json::Value,
        attributes: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        let shared = &self.shared;
        let phase = shared.config.phase_for_topic(topic).map(|p| p.name.clone());
        let routed = phase.is_some();
        let id = shared
            .queue
            .bus_enqueue(NewMessage {
                topic: topic.to_string(),
                phase,
                data: data.clone(),
                attributes,
            })
            .await
            .map_err(|e| PublishError {
                topic: topic.to_string(),
                message: e.to_string(),
            })?;
        if routed {
            shared.wake.notify_one();
        }
        Ok(message_id(id))
    }

    async fn flush(&self) {
        self.wait_idle().await;
    }
}
