//! `[bus]`: how completion events travel (in process or Pub/Sub) and the in-process
//! bus's delivery settings.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    #[default]
    InProcess,
    Pubsub,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    #[serde(default)]
    pub kind: BusKind,
    /// In-process bus: deliveries per message before it is dead-lettered (as Pub/Sub's
    /// `max_delivery_attempts`).
    #[serde(default = "default_max_delivery_attempts")]
    pub max_delivery_attempts: u32,
    /// In-process bus: pause before a nacked message is delivered again.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// In-process bus: deliveries running at once.
    #[serde(default = "default_max_concurrent_deliveries")]
    pub max_concurrent_deliveries: usize,
    /// In-process bus: how long a delivery's claim holds without renewal; a message whose
    /// deliverer died is redelivered after it.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// In-process bus: how often the queue is polled for messages other processes published
    /// or whose lease expired.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Pub/Sub project of the topics.
    #[serde(default)]
    pub project: Option<String>,
    /// `host:port` of the Pub/Sub emulator; unset in production.
    #[serde(default)]
    pub emulator_host: Option<String>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::InProcess,
            max_delivery_attempts: default_max_delivery_attempts(),
            retry_backoff_ms: default_retry_backoff_ms(),
            max_concurrent_deliveries: default_max_concurrent_deliveries(),
            lease_secs: default_lease_secs(),
            poll_interval_ms: default_poll_interval_ms(),
            project: None,
            emulator_host: None,
        }
    }
}

fn default_max_delivery_attempts() -> u32 {
    5
}
fn default_retry_backoff_ms() -> u64 {
    100
}
fn default_max_concurrent_deliveries() -> usize {
    8
}
fn default_lease_secs() -> u64 {
    30
}
fn default_poll_interval_ms() -> u64 {
    500
}
