//! One phase's backfill from plan to report, and `backfill --all`: every phase in pipeline
//! order, each verified complete and gap-free before the next starts.

use std::process::ExitCode;

use chrono::NaiveDate;
use serde::Serialize;

use super::execution::execute;
use super::plan::{BackfillOptions, plan};
use super::progress::Progress;
use super::report::BackfillReport;
use super::runners::{Executor, runner};
use crate::startup::App;
use crate::verify::Verification;

/// The outcome of `backfill --all`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowReport {
    pub phases: Vec<BackfillReport>,
    /// Why the workflow stopped before the last phase, if it did.
    pub stopped: Option<String>,
}

impl WorkflowReport {
    pub fn all_done(&self) -> bool {
        self.stopped.is_none() && self.phases.iter().all(BackfillReport::all_done)
    }

    /// 0 when every phase is complete and gap-free, 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        if self.all_done() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// Run one phase's backfill with the chosen executor. An error means nothing ran (the plan
/// could not be read or the executor cannot start); once dates run, every failure is in the
/// report.
pub async fn run_phase(
    app: &App,
    opts: &BackfillOptions,
    executor: Executor,
    progress: &dyn Fn(usize, &str) -> Progress,
    retry: &dyn Fn(&str, NaiveDate, NaiveDate) -> String,
) -> anyhow::Result<BackfillReport> {
    let plan = plan(&app.worker, opts).await?;
    let runner = runner(app, &plan.phase, opts.force, executor)?;
    let progress = progress(plan.to_run(), &plan.phase);
    Ok(execute(runner, &plan, &progress, retry).await)
}

/// Every phase in order; each must end with every date done and a gap-free output before the
/// next starts. `on_phase` sees each phase's report (and verification) as it finishes.
pub async fn run_all(
    app: &App,
    template: &BackfillOptions,
    executor: Executor,
    progress: &dyn Fn(usize, &str) -> Progress,
    retry: &dyn Fn(&str, NaiveDate, NaiveDate) -> String,
    on_phase: &mut dyn FnMut(&BackfillReport, Option<&Verification>),
) -> anyhow::Result<WorkflowReport> {
    let mut phases = Vec::new();
    for phase in &app.config.phases {
        let opts = BackfillOptions {
            phase: phase.name.clone(),
            ..template.clone()
        };
        let report = match run_phase(app, &opts, executor, progress, retry).await {
            Ok(report) => report,
            Err(e) if phases.is_empty() => return Err(e),
            Err(e) => {
                return Ok(stop(
                    phases,
                    format!("phase {} could not start: {e:#}", phase.name),
                ));
            }
        };
        if !report.all_done() {
            on_phase(&report, None);
            let why = format!(
                "phase {} has failed or skipped dates: later phases were NOT started. Fix them \
                 (retry commands above), then run the same command again; finished dates are \
                 skipped.",
                phase.name
            );
            phases.push(report);
            return Ok(stop(phases, why));
        }
        let verified = crate::verify::verify(
            &app.config,
            app.ledger().as_ref(),
            app.warehouse().as_ref(),
            &phase.name,
            opts.from,
            opts.to,
        )
        .await;
        on_phase(&report, verified.as_ref().ok());
        phases.push(report);
        match verified {
            Ok(v) if v.is_continuous => {}
            Ok(_) => {
                let why = format!(
                    "phase {} has gaps in its output: later phases were NOT started. \
                     `phasegate verify --phase {} --from {} --to {}` lists them.",
                    phase.name, phase.name, opts.from, opts.to
                );
                return Ok(stop(phases, why));
            }
            Err(e) => {
                let why = format!(
                    "phase {} could not be verified ({e}): later phases were NOT started.",
                    phase.name
                );
                return Ok(stop(phases, why));
            }
        }
    }
    Ok(WorkflowReport {
        phases,
        stopped: None,
    })
}

fn stop(phases: Vec<BackfillReport>, why: String) -> WorkflowReport {
    WorkflowReport {
        phases,
        stopped: Some(why),
    }
}
