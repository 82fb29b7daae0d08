//! The production bus: Google Cloud Pub/Sub, through the official `google-cloud-pubsub` crate.
//!
//! Completion events are published with their attributes; a transient error is retried with
//! exponential backoff (backon) and then surfaces to the worker, which nacks — the ledger's
//! outbox makes the redelivery publish exactly the event that is owed. Publishers are kept
//! per topic and flushed on shutdown.
//!
//! `google-cloud-pubsub` does not read `PUBSUB_EMULATOR_HOST`: with `emulator_host` set the
//! clients get that endpoint and anonymous credentials; otherwise Application Default
//! Credentials.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::client::{
    BasePublisher, Publisher as TopicPublisher, SubscriptionAdmin, TopicAdmin,
};
use google_cloud_pubsub::model::{Message, PushConfig};
use tokio::sync::Mutex;

use crate::bus::{PublishError, Publisher};
use crate::config::BusConfig;

/// Publishes completion events to Pub/Sub topics of one project.
pub struct PubSubBus {
    base: BasePublisher,
    project: String,
    publishers: Mutex<HashMap<String, TopicPublisher>>,
    backoff: ExponentialBuilder,
}

fn project_of(cfg: &BusConfig) -> Result<String, String> {
    cfg.project.clone().ok_or_else(|| {
        "bus.project (or PHASEGATE_PUBSUB_PROJECT / GOOGLE_CLOUD_PROJECT) is required for Pub/Sub"
            .to_string()
    })
}

impl PubSubBus {
    pub async fn connect(cfg: &BusConfig) -> Result<PubSubBus, String> {
        let project = project_of(cfg)?;
        // Retries are ours (backon, below), bounded so a nack comes well within the push
        // deadline; the client's own default would retry for up to ten minutes.
        let mut builder =
            BasePublisher::builder().with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
        if let Some(host) = &cfg.emulator_host {
            builder = builder
                .with_endpoint(format!("http://{host}"))
                .with_credentials(anonymous::Builder::new().build());
        }
        let base = builder
            .build()
            .await
            .map_err(|e| format!("Pub/Sub publisher: {e}"))?;
        Ok(PubSubBus {
            base,
            project,
            publishers: Mutex::new(HashMap::new()),
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(4)
                .with_jitter(),
        })
    }

    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    async fn publisher(&self, topic: &str) -> TopicPublisher {
        let mut map = self.publishers.lock().await;
        map.entry(topic.to_string())
            .or_insert_with(|| {
                self.base
                    .publisher(self.topic_path(topic))
                    // A completion event is one message: send it at once.
                    .set_delay_threshold(Duration::from_millis(0))
                    .build()
            })
            .clone()
    }
}

#[async_trait]
impl Publisher for PubSubBus {
    async fn publish(
        &self,
        topic: &str,
        data: &serde_json::Value,
        attributes: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        let publisher = self.publisher(topic).await;
        let payload = data.to_string();
        let send = || {
            let msg = Message::new()
                .set_data(payload.clone())
                .set_attributes(attributes.clone());
            publisher.publish(msg)
        };
        send.retry(self.backoff)
            .notify(|e, wait| {
                tracing::warn!(topic, error = %e, retry_in = ?wait, "publish failed; retrying");
            })
            .await
            .map_err(|e| PublishError {
                topic: topic.to_string(),
                message: e.to_string(),
            })
    }

    async fn flush(&self) {
        let publishers: Vec<TopicPublisher> =
            self.publishers.lock().await.values().cloned().collect();
        for p in publishers {
            p.flush().await;
        }
    }
}

/// Topic and subscription administration, for local and emulator use (`phasegate init`);
/// Terraform owns them in production.
pub struct PubSubAdmin {
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    project: String,
}

fn already_exists(e: &google_cloud_pubsub::Error) -> bool {
    e.http_status_code() == Some(409)
        || e.to_string()
            .to_ascii_lowercase()
            .contains("already exists")
}

impl PubSubAdmin {
    pub async fn connect(cfg: &BusConfig) -> Result<PubSubAdmin, String> {
        let project = project_of(cfg)?;
        let (topics, subscriptions) = match &cfg.emulator_host {
            Some(host) => (
                TopicAdmin::builder()
                    .with_endpoint(format!("http://{host}"))
                    .with_credentials(anonymous::Builder::new().build())
                    .build()
                    .await,
                SubscriptionAdmin::builder()
                    .with_endpoint(format!("http://{host}"))
                    .with_credentials(anonymous::Builder::new().build())
                    .build()
                    .await,
            ),
            None => (
                TopicAdmin::builder().build().await,
                SubscriptionAdmin::builder().build().await,
            ),
        };
        Ok(PubSubAdmin {
            topics: topics.map_err(|e| format!("Pub/Sub topic admin: {e}"))?,
            subscriptions: subscriptions.map_err(|e| format!("Pub/Sub subscription admin: {e}"))?,
            project,
        })
    }

    /// Create a topic; an existing one is fine.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), String> {
        match self
            .topics
            .create_topic()
            .set_name(format!("projects/{}/topics/{topic}", self.project))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(format!("creating topic {topic}: {e}")),
        }
    }

    /// Create a push subscription from `topic` to `endpoint`; an existing one is fine.
    pub async fn ensure_push_subscription(
        &self,
        name: &str,
        topic: &str,
        endpoint: &str,
        ack_deadline_secs: i32,
    ) -> Result<(), String> {
        match self
            .subscriptions
            .create_subscription()
            .set_name(format!("projects/{}/subscriptions/{name}", self.project))
            .set_topic(format!("projects/{}/topics/{topic}", self.project))
            .set_push_config(PushConfig::new().set_push_endpoint(endpoint))
            .set_ack_deadline_seconds(ack_deadline_secs)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(format!("creating subscription {name}: {e}")),
        }
    }
}
