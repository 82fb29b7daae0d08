//! The embedded bus: topics and push subscriptions inside one process.
//!
//! A publish to a topic that a phase listens on is wrapped in the same push envelope Pub/Sub
//! would send and handed to the same [`Worker::handle_push`]. A non-2xx answer is redelivered
//! after a pause, up to `max_delivery_attempts`, then dead-lettered — as a push subscription
//! with a dead-letter policy behaves. Every published message is kept for inspection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::bus::{PublishError, Publisher};
use crate::config::Config;
use crate::envelope::PushEnvelope;
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

pub struct InProcessBus {
    config: Arc<Config>,
    worker: OnceLock<Weak<Worker>>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    idle: Notify,
    published: Mutex<Vec<PublishedMessage>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
}

impl InProcessBus {
    pub fn new(config: Arc<Config>) -> Arc<InProcessBus> {
        Arc::new(InProcessBus {
            config,
            worker: OnceLock::new(),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            published: Mutex::new(Vec::new()),
            dead_letters: Mutex::new(Vec::new()),
        })
    }

    /// Connect the subscriptions to the worker that handles them.
    pub fn attach(&self, worker: &Arc<Worker>) {
        let _ = self.worker.set(Arc::downgrade(worker));
    }

    /// Every message published so far, in order.
    pub fn published(&self) -> Vec<PublishedMessage> {
        self.published.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Messages published to one topic.
    pub fn published_to(&self, topic: &str) -> Vec<PublishedMessage> {
        self.published()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Wait until every delivery (and the deliveries they caused) has finished.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn done_one(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn deliver(&self, phase: String, message: PublishedMessage) {
        let max = self.config.bus.max_delivery_attempts;
        let backoff = Duration::from_millis(self.config.bus.retry_backoff_ms);
        let subscription = format!("in-process/{phase}");
        let mut last = (0u16, String::new());
        for attempt in 1..=max {
            let Some(worker) = self.worker.get().and_then(Weak::upgrade) else {
                last = (503, "no worker attached to the bus".into());
                break;
            };
            let mut envelope = PushEnvelope::wrap(
                &message.data,
                message.attributes.clone(),
                message.message_id.clone(),
                subscription.clone(),
            );
            envelope.delivery_attempt = Some(attempt);
            let body = serde_json::to_vec(&envelope).unwrap_or_default();
            let outcome = worker.handle_push(&phase, &body).await;
            let status = outcome.http_status();
            if (200..300).contains(&status) {
                return;
            }
            last = (
                status,
                outcome.body()["reason"].as_str().unwrap_or("").to_string(),
            );
            if attempt < max {
                tokio::time::sleep(backoff * attempt).await;
            }
        }
        tracing::error!(topic = %message.topic, phase = %phase, message_id = %message.message_id,
            status = last.0, reason = %last.1, "message dead-lettered");
        if let Ok(mut d) = self.dead_letters.lock() {
            d.push(DeadLetter {
                message,
                phase,
                attempts: max,
                last_status: last.0,
                last_reason: last.1,
            });
        }
    }
}

struct InFlight(Arc<InProcessBus>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.done_one();
    }
}

/// Publishing through the handle delivers to the subscribed phase in the background.
#[async_trait]
impl Publisher for Arc<InProcessBus> {
    async fn publish(
        &self,
        topic: &str,
        data: &serde_json::Value,
        attributes: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        let message = PublishedMessage {
            topic: topic.to_string(),
            message_id: format!("local-{}", self.next_id.fetch_add(1, Ordering::SeqCst)),
            data: data.clone(),
            attributes,
        };
        if let Ok(mut p) = self.published.lock() {
            p.push(message.clone());
        }
        let id = message.message_id.clone();
        if let Some(phase) = self.config.phase_for_topic(topic) {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let bus = Arc::clone(self);
            let phase = phase.name.clone();
            tokio::spawn(async move {
                // Counted down even if the delivery panics, so `wait_idle` cannot hang.
                let _in_flight = InFlight(Arc::clone(&bus));
                bus.deliver(phase, message).await;
            });
        }
        Ok(id)
    }

    async fn flush(&self) {
        self.wait_idle().await;
    }
}
