//! Logging: JSON for Cloud Logging (tracing-stackdriver) on Cloud Run, compact text locally.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

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
        Registry::default()
            .with(filter)
            .with(tracing_stackdriver::layer())
            .try_init()
    } else {
        Registry::default()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    // Already initialised (tests): keep the first subscriber.
    let _ = result;
}
