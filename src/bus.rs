//! Publishing completion events: the [`Publisher`] trait every bus implements.

use std::collections::BTreeMap;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
#[error("publish to {topic} failed: {message}")]
pub struct PublishError {
    pub topic: String,
    pub message: String,
}

/// Something that can publish a JSON message with attributes to a topic.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publish and wait until the bus has accepted the message; returns its message id.
    async fn publish(
        &self,
        topic: &str,
        data: &serde_json::Value,
        attributes: BTreeMap<String, String>,
    ) -> Result<String, PublishError>;

    /// Wait for pending publishes (called on shutdown).
    async fn flush(&self) {}
}
