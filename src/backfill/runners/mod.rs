//! How the dates of a backfill are run: by the worker in this process, or by the phase's own
//! workers through Pub/Sub.

mod local;
mod pubsub;

use std::sync::Arc;

pub use local::LocalRunner;
pub use pubsub::PubSubRunner;

use super::execution::DateRunner;
use crate::startup::App;
use crate::worker::WorkerError;

/// How dates are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// Each date through the worker in this process.
    InProcess,
    /// Skip-flagged triggers on the phase's input topic; the ledger is followed.
    ViaPubsub { timeout_secs: u64 },
}

/// The runner of a phase's dates for an executor.
pub fn runner(
    app: &App,
    phase: &str,
    force: bool,
    executor: Executor,
) -> Result<Arc<dyn DateRunner>, WorkerError> {
    Ok(match executor {
        Executor::InProcess => Arc::new(LocalRunner {
            worker: app.worker.clone(),
            phase: phase.to_string(),
            force,
        }),
        Executor::ViaPubsub { timeout_secs } => {
            Arc::new(PubSubRunner::new(app, phase, force, timeout_secs)?)
        }
    })
}
