//! The HTTP server's limits, from `[server]` in the configuration, and the shared gates
//! (semaphores) that enforce the counting ones.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::ServerConfig;

/// Largest accepted push body (Pub/Sub's own message limit is 10 MB).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Bytes of memory a push body costs per byte received, decoding included (see `body`).
pub const DECODE_FACTOR: usize = 4;

/// Time and size bounds of the push server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// To send a request's headers; also the idle bound of a kept-alive connection.
    pub header_timeout: Duration,
    /// To send a request's body.
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_in_flight: usize,
    /// Memory for push bodies at once, all requests together, decoding included (a body is
    /// charged four times its size).
    pub body_budget_bytes: usize,
    /// Bound on the graceful-shutdown drain.
    pub shutdown_drain: Duration,
}

impl From<&ServerConfig> for ServerLimits {
    fn from(c: &ServerConfig) -> Self {
        ServerLimits {
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            body_timeout: Duration::from_millis(c.body_timeout_ms),
            max_connections: c.max_connections.max(1),
            max_in_flight: c.max_in_flight.max(1),
            body_budget_bytes: c
                .max_buffered_body_mib
                .saturating_mul(1024 * 1024)
                .max(MAX_BODY_BYTES * DECODE_FACTOR),
            shutdown_drain: Duration::from_secs(c.shutdown_drain_secs),
        }
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits::from(&ServerConfig::default())
    }
}

/// The counting limits, shared by every connection of one server.
pub(super) struct Gates {
    pub connections: Arc<Semaphore>,
    pub in_flight: Arc<Semaphore>,
    pub body_budget: Arc<Semaphore>,
}

impl Gates {
    pub(super) fn new(limits: &ServerLimits) -> Gates {
        let cap = |n: usize| n.min(Semaphore::MAX_PERMITS);
        Gates {
            connections: Arc::new(Semaphore::new(cap(limits.max_connections))),
            in_flight: Arc::new(Semaphore::new(cap(limits.max_in_flight))),
            body_budget: Arc::new(Semaphore::new(cap(limits.body_budget_bytes))),
        }
    }
}
