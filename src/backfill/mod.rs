//! Backfill: run one phase over a date range with the cascade switched off, under an error
//! policy, and end with a summary an operator cannot misread.
//!
//! Every date goes through the same gate and ledger as a push, with `skip_downstream_trigger`
//! set, so a backfill never triggers later phases. Dates already done are skipped unless
//! forced (resume).
//!
//! - [`plan`]: which dates run, which are done ([`is_done`]), how far the phase looks back
//!   ([`phase_lookback_days`]).
//! - [`execution`]: runs a plan under `--parallel` and the error policy.
//! - [`runners`]: how one date runs — the worker in this process, or Pub/Sub.
//! - [`report`] and [`retry`]: the summary and the commands that retry what is not done.
//! - [`progress`]: what is shown while dates run.
//! - [`workflow`]: one phase from plan to report, and `--all`.

pub mod execution;
pub mod plan;
pub mod progress;
pub mod report;
pub mod retry;
pub mod runners;
pub mod workflow;

pub use execution::{DateRunner, execute};
pub use plan::{
    BackfillOptions, ErrorPolicy, Plan, PlanEntry, Planned, is_done, phase_lookback_days, plan,
};
pub use progress::{Progress, ProgressSink};
pub use report::{BackfillReport, DateReport, DateResult};
pub use retry::RetryCommand;
pub use runners::Executor;
pub use workflow::{WorkflowReport, run_all, run_phase};
