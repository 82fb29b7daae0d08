//! Logging: JSON for Cloud Logging (tracing-stackdriver) on Cloud Run, compact text locally;
//! trace correlation per request ([`trace`]) and the one summary line per push.

mod trace;

use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

pub use trace::{TraceContext, request_span};

/// Log as JSON when `PHASEGATE_LOG_FORMAT=json`, or on Cloud Run (`K_SERVICE` is set);
/// as text on stderr otherwise. `RUST_LOG` filters (default `info`).
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("PHASEGATE_LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false)
        || std::env::var_os("K_SERVICE").is_some();
    let result = if json {
        let project = std::env::var("GOOGLE_CLOUD_PROJECT")
            .ok()
            .filter(|p| !p.is_empty());
        Registry::default()
            .with(filter)
            .with(trace::json_layer(project))
            .try_init()
    } else {
        Registry::default()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    // Already initialised (tests): keep the first subscriber.
    let _ = result;
}

/// What the summary line of one push says.
pub struct PushSummary<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub status: u16,
    pub latency: Duration,
    pub phase: &'a str,
    pub data_date: Option<String>,
    pub message_id: Option<String>,
    pub delivery_attempt: Option<u32>,
    pub outcome: &'a str,
    /// Why, for every outcome but a done phase (the alerts' `jsonPayload.reason`).
    pub reason: Option<String>,
}

impl PushSummary<'_> {
    /// One line per push; `http_request.*` becomes Cloud Logging's `httpRequest`.
    pub fn log(&self) {
        // Whole milliseconds: the stackdriver layer writes floats as strings; the exact
        // duration is in `httpRequest.latency`.
        let latency_ms = u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            http_request.request_method = self.method,
            http_request.request_url = self.url,
            http_request.status = self.status,
            http_request.latency = format!("{:.6}s", self.latency.as_secs_f64()),
            phase = self.phase,
            data_date = self.data_date.as_deref().unwrap_or(""),
            messageId = self.message_id.as_deref().unwrap_or(""),
            delivery_attempt = self.delivery_attempt,
            outcome = self.outcome,
            reason = self.reason.as_deref().unwrap_or(""),
            latency_ms,
            "push summary"
        );
    }
}

/// After a push: its summary line and its metrics.
pub fn push_done(
    config: &crate::config::Config,
    phase: &str,
    url: &str,
    body: &[u8],
    outcome: &crate::worker::PushOutcome,
    started: std::time::Instant,
) {
    let latency = started.elapsed();
    let envelope = crate::envelope::PushEnvelope::from_json(body).ok();
    // The date the worker ran; decoded again only for a push that ran nothing.
    let data_date = outcome.data_date().map(|d| d.to_string()).or_else(|| {
        envelope.as_ref().and_then(|e| {
            e.clone()
                .decode_with(config.trigger.as_ref())
                .ok()
                .map(|t| t.data_date.to_string())
        })
    });
    let (message_id, delivery_attempt) = envelope.map_or((None, None), |e| {
        (
            Some(e.message.message_id).filter(|m| !m.is_empty()),
            e.delivery_attempt,
        )
    });
    PushSummary {
        method: "POST",
        url,
        status: outcome.http_status(),
        latency,
        phase,
        data_date,
        message_id,
        delivery_attempt,
        outcome: outcome.label(),
        reason: outcome.reason(),
    }
    .log();
    crate::metrics::push_handled(phase, outcome.label(), latency.as_secs_f64());
}
