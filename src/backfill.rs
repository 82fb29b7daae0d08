//! Backfill: run one phase over a date range with the cascade switched off, under an error
//! policy, and end with a summary an operator cannot misread.
//!
//! Every date goes through the same gate and ledger as a push, with `skip_downstream_trigger`
//! set, so a backfill never triggers later phases. Dates already `success`/`no_data` are
//! skipped unless forced (resume).
//!
//! Parallelism: a date may start only when every earlier date of the backfill within its
//! phase's lookback (the longest look-back of its checks) has finished, so no date is checked
//! against history that the same backfill is still writing. A phase without look-back checks
//! runs its dates fully in parallel; a phase that looks back runs them in order.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write;
use std::io::IsTerminal;
use std::path::Path;

use chrono::NaiveDate;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::config::{Config, Phase};
use crate::dates::{days, minus_days};
use crate::ledger::{RunStatus, TriggerKind};
use crate::worker::{PhaseOutcome, RunRequest, Worker, WorkerError};

/// What to do when a date fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Halt at the first failure; later dates are not run.
    Stop,
    /// Run every date whatever fails.
    Continue,
    /// Run every date except those whose checks look back over a failed date.
    SkipDependents,
}

impl ErrorPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorPolicy::Stop => "stop",
            ErrorPolicy::Continue => "continue",
            ErrorPolicy::SkipDependents => "skip-dependents",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub phase: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub policy: ErrorPolicy,
    pub parallel: usize,
    pub force: bool,
}

/// Why a date is in the plan as it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Planned {
    Run,
    /// Every processor's latest run for the date is done.
    Skip {
        status: RunStatus,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    pub date: NaiveDate,
    #[serde(flatten)]
    pub planned: Planned,
}

/// What a backfill will do, date by date.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub phase: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub policy: ErrorPolicy,
    pub parallel: usize,
    pub lookback_days: u32,
    pub dates: Vec<PlanEntry>,
}

/// The result of one date.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DateResult {
    Succeeded {
        status: RunStatus,
    },
    Failed {
        status: String,
        reason: String,
    },
    /// Already done before this backfill.
    AlreadyDone {
        status: RunStatus,
    },
    /// Not run: it looks back over a failed date (skip-dependents).
    SkippedDependent {
        reason: String,
    },
    /// Not run: the backfill stopped before it (stop policy).
    NotRun {
        reason: String,
    },
}

impl DateResult {
    fn needs_retry(&self) -> bool {
        matches!(
            self,
            DateResult::Failed { .. }
                | DateResult::SkippedDependent { .. }
                | DateResult::NotRun { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DateReport {
    pub date: NaiveDate,
    #[serde(flatten)]
    pub result: DateResult,
    /// The command that retries this date, for dates that are not done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    pub phase: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub policy: ErrorPolicy,
    pub succeeded: usize,
    pub no_data: usize,
    pub failed: usize,
    pub skipped: usize,
    pub already_done: usize,
    pub dates: Vec<DateReport>,
    /// One command for every date not done (finished dates in between are skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_all: Option<String>,
}

impl BackfillReport {
    pub fn all_done(&self) -> bool {
        self.failed == 0 && self.skipped == 0
    }
}

fn phase<'a>(config: &'a Config, name: &str) -> Result<&'a Phase, WorkerError> {
    config.phase(name).ok_or_else(|| WorkerError::UnknownPhase {
        phase: name.to_string(),
        known: config.phase_names(),
    })
}

/// The longest look-back of a phase's checks.
pub fn lookback_days(phase: &Phase) -> u32 {
    phase
        .processors
        .iter()
        .map(|p| p.checks.lookback_days())
        .max()
        .unwrap_or(0)
}

/// Decide, from the ledger, which dates run and which are already done.
pub async fn plan(worker: &Worker, opts: &BackfillOptions) -> Result<Plan, WorkerError> {
    let config = worker.config();
    let phase = phase(config, &opts.phase)?;
    // Latest status of every processor for every date: one ledger query per processor.
    let mut latest: BTreeMap<(String, NaiveDate), RunStatus> = BTreeMap::new();
    for p in &phase.processors {
        for run in worker
            .ledger()
            .latest_in_range(&p.name, opts.from, opts.to)
            .await?
        {
            latest.insert((p.name.clone(), run.data_date), run.status);
        }
    }
    let dates = days(opts.from, opts.to)
        .map(|date| {
            let statuses: Vec<Option<RunStatus>> = phase
                .processors
                .iter()
                .map(|p| latest.get(&(p.name.clone(), date)).copied())
                .collect();
            let done = statuses.iter().all(|s| s.is_some_and(|s| s.is_done()));
            let planned = if done && !opts.force {
                let status = if statuses.iter().all(|s| *s == Some(RunStatus::NoData)) {
                    RunStatus::NoData
                } else {
                    RunStatus::Success
                };
                Planned::Skip {
                    status,
                    reason: format!("already {status} (use --force to run again)"),
                }
            } else {
                Planned::Run
            };
            PlanEntry { date, planned }
        })
        .collect();
    Ok(Plan {
        phase: phase.name.clone(),
        from: opts.from,
        to: opts.to,
        policy: opts.policy,
        parallel: opts.parallel.max(1),
        lookback_days: lookback_days(phase),
        dates,
    })
}

impl Plan {
    pub fn render(&self) -> String {
        let mut out = format!(
            "Plan: backfill {} {}..{} (error policy {}, parallel {}, look-back {} days)\n",
            self.phase,
            self.from,
            self.to,
            self.policy.as_str(),
            self.parallel,
            self.lookback_days
        );
        for e in &self.dates {
            let _ = match &e.planned {
                Planned::Run => writeln!(out, "  {}  run", e.date),
                Planned::Skip { reason, .. } => writeln!(out, "  {}  skip: {reason}", e.date),
            };
        }
        let runs = self
            .dates
            .iter()
            .filter(|e| e.planned == Planned::Run)
            .count();
        let _ = writeln!(
            out,
            "{runs} date(s) to run, {} to skip",
            self.dates.len() - runs
        );
        out
    }
}

/// How progress is shown while dates run.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
}

impl Progress {
    /// A bar on a terminal, plain lines on stderr otherwise.
    pub fn new(len: usize, phase: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(len as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(phase.to_string());
            Progress {
                bar: Some(bar),
                lines: false,
            }
        } else {
            Progress {
                bar: None,
                lines: true,
            }
        }
    }

    /// No progress output at all.
    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            lines: false,
        }
    }

    fn done(&self, phase: &str, date: NaiveDate, line: &str) {
        match &self.bar {
            Some(bar) => {
                // The bar shows the outcome word only; the summary has the reasons.
                let word = line.split(':').next().unwrap_or(line);
                bar.set_message(format!("{date} {word}"));
                bar.inc(1);
            }
            None if self.lines => eprintln!("{phase} {date} {line}"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Runs one date of a backfill and says how it ended.
#[async_trait::async_trait]
pub trait DateRunner: Send + Sync {
    async fn run(&self, date: NaiveDate) -> Result<DateResult, WorkerError>;
}

/// Each date through the worker in this process.
pub struct InProcessRunner {
    pub worker: std::sync::Arc<Worker>,
    pub phase: String,
    pub force: bool,
}

#[async_trait::async_trait]
impl DateRunner for InProcessRunner {
    async fn run(&self, date: NaiveDate) -> Result<DateResult, WorkerError> {
        let req = RunRequest {
            phase: self.phase.clone(),
            data_date: date,
            trigger: TriggerKind::Backfill,
            message_id: None,
            delivery_attempt: None,
            skip_downstream: true,
            force: self.force,
        };
        Ok(match self.worker.run_phase(&req).await? {
            PhaseOutcome::Done { runs, .. } => DateResult::Succeeded {
                status: RunStatus::of_done_phase(runs.iter().map(|r| r.status)),
            },
            other => DateResult::Failed {
                status: other.label().to_string(),
                reason: other.reason().unwrap_or_default(),
            },
        })
    }
}

/// Run a plan. `retry` renders the command that retries a range of dates.
pub async fn execute(
    runner: std::sync::Arc<dyn DateRunner>,
    plan: &Plan,
    progress: &Progress,
    retry: &dyn Fn(&str, NaiveDate, NaiveDate) -> String,
) -> Result<BackfillReport, WorkerError> {
    let lookback = plan.lookback_days;
    let mut results: BTreeMap<NaiveDate, DateResult> = BTreeMap::new();
    let mut pending: VecDeque<NaiveDate> = VecDeque::new();
    for e in &plan.dates {
        match &e.planned {
            Planned::Run => pending.push_back(e.date),
            Planned::Skip { status, .. } => {
                results.insert(e.date, DateResult::AlreadyDone { status: *status });
            }
        }
    }

    let mut running: HashSet<NaiveDate> = HashSet::new();
    let mut failed: Vec<NaiveDate> = Vec::new();
    let mut stopped_at: Option<NaiveDate> = None;
    let mut tasks: JoinSet<(NaiveDate, Result<DateResult, WorkerError>)> = JoinSet::new();
    loop {
        while stopped_at.is_none() && running.len() < plan.parallel {
            let Some(&next) = pending.front() else { break };
            let window_start = minus_days(next, lookback);
            if lookback > 0 && running.iter().any(|d| *d >= window_start && *d < next) {
                break; // wait for the earlier dates it looks back over
            }
            pending.pop_front();
            if plan.policy == ErrorPolicy::SkipDependents
                && lookback > 0
                && let Some(f) = failed.iter().find(|f| **f >= window_start && **f < next)
            {
                let reason = format!("its checks look back {lookback} days over failed {f}");
                progress.done(&plan.phase, next, &format!("skipped: {reason}"));
                results.insert(next, DateResult::SkippedDependent { reason });
                continue;
            }
            running.insert(next);
            let runner = runner.clone();
            tasks.spawn(async move { (next, runner.run(next).await) });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (date, result) = joined.map_err(|e| {
            WorkerError::Ledger(crate::ledger::LedgerError(format!(
                "backfill task failed: {e}"
            )))
        })?;
        running.remove(&date);
        let result = result?;
        let line = match &result {
            DateResult::Succeeded { status } => status.to_string(),
            DateResult::Failed { status, reason } => format!("{status}: {reason}"),
            _ => String::new(),
        };
        progress.done(&plan.phase, date, &line);
        if matches!(result, DateResult::Failed { .. }) {
            failed.push(date);
            if plan.policy == ErrorPolicy::Stop && stopped_at.is_none() {
                stopped_at = Some(date);
            }
        }
        results.insert(date, result);
    }
    progress.finish();
    if let Some(stop) = stopped_at {
        for d in pending {
            results.insert(
                d,
                DateResult::NotRun {
                    reason: format!("the backfill stopped at the failure on {stop}"),
                },
            );
        }
    }

    let mut report = BackfillReport {
        phase: plan.phase.clone(),
        from: plan.from,
        to: plan.to,
        policy: plan.policy,
        succeeded: 0,
        no_data: 0,
        failed: 0,
        skipped: 0,
        already_done: 0,
        dates: Vec::new(),
        retry_all: None,
    };
    for (date, result) in results {
        match &result {
            DateResult::Succeeded {
                status: RunStatus::NoData,
            } => report.no_data += 1,
            DateResult::Succeeded { .. } => report.succeeded += 1,
            DateResult::Failed { .. } => report.failed += 1,
            DateResult::AlreadyDone { .. } => report.already_done += 1,
            DateResult::SkippedDependent { .. } | DateResult::NotRun { .. } => report.skipped += 1,
        }
        let retry = result.needs_retry().then(|| retry(&plan.phase, date, date));
        report.dates.push(DateReport {
            date,
            result,
            retry,
        });
    }
    let not_done: Vec<NaiveDate> = report
        .dates
        .iter()
        .filter(|d| d.retry.is_some())
        .map(|d| d.date)
        .collect();
    if let (Some(first), Some(last), true) = (not_done.first(), not_done.last(), not_done.len() > 1)
    {
        report.retry_all = Some(retry(&plan.phase, *first, *last));
    }
    Ok(report)
}

impl BackfillReport {
    /// The closing summary: counts, then every date that is not done with its retry command.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Backfill {} {}..{} ({}): {} succeeded, {} no data, {} failed, {} skipped, {} already done\n",
            self.phase,
            self.from,
            self.to,
            self.policy.as_str(),
            self.succeeded,
            self.no_data,
            self.failed,
            self.skipped,
            self.already_done
        );
        let not_done: Vec<&DateReport> = self.dates.iter().filter(|d| d.retry.is_some()).collect();
        if not_done.is_empty() {
            let _ = writeln!(out, "Every date is done.");
            return out;
        }
        let _ = writeln!(out, "\nNOT DONE — {} date(s):", not_done.len());
        for d in not_done {
            let what = match &d.result {
                DateResult::Failed { status, reason } => format!("FAILED ({status}): {reason}"),
                DateResult::SkippedDependent { reason } => format!("SKIPPED: {reason}"),
                DateResult::NotRun { reason } => format!("NOT RUN: {reason}"),
                _ => String::new(),
            };
            let _ = writeln!(out, "  {}  {what}", d.date);
            if let Some(cmd) = &d.retry {
                let _ = writeln!(out, "      retry: {cmd}");
            }
        }
        if let Some(cmd) = &self.retry_all {
            let _ = writeln!(
                out,
                "\nRetry all of them at once (done dates are skipped):\n  {cmd}"
            );
        }
        out
    }
}

/// `phasegate --config CFG backfill --phase P --from D --to D`.
pub fn retry_command(config_path: &Path, phase: &str, from: NaiveDate, to: NaiveDate) -> String {
    let path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    format!(
        "phasegate --config {} backfill --phase {phase} --from {from} --to {to}",
        shell_quote(&path.display().to_string())
    )
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How dates are run.
#[derive(Debug, Clone, Copy)]
pub enum Executor {
    /// Each date through the worker in this process.
    InProcess,
    /// Skip-flagged triggers on the phase's input topic; the ledger is followed.
    ViaPubsub { timeout_secs: u64 },
}

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
}

/// Run one phase's backfill with the chosen executor.
pub async fn run_phase(
    app: &crate::startup::App,
    opts: &BackfillOptions,
    executor: Executor,
    progress: &dyn Fn(usize, &str) -> Progress,
    retry: &dyn Fn(&str, NaiveDate, NaiveDate) -> String,
) -> anyhow::Result<BackfillReport> {
    let plan = plan(&app.worker, opts).await?;
    let to_run = plan
        .dates
        .iter()
        .filter(|e| e.planned == Planned::Run)
        .count();
    let progress = progress(to_run, &plan.phase);
    let runner: std::sync::Arc<dyn DateRunner> = match executor {
        Executor::InProcess => std::sync::Arc::new(InProcessRunner {
            worker: app.worker.clone(),
            phase: plan.phase.clone(),
            force: opts.force,
        }),
        Executor::ViaPubsub { timeout_secs } => std::sync::Arc::new(
            crate::backfill_pubsub::PubSubRunner::new(app, &plan.phase, opts.force, timeout_secs)?,
        ),
    };
    Ok(execute(runner, &plan, &progress, retry).await?)
}

/// Every phase in order; each must end with every date done and a gap-free output before the
/// next starts. `on_phase` sees each phase's report (and verification) as it finishes.
pub async fn run_all(
    app: &crate::startup::App,
    template: &BackfillOptions,
    executor: Executor,
    progress: &dyn Fn(usize, &str) -> Progress,
    retry: &dyn Fn(&str, NaiveDate, NaiveDate) -> String,
    on_phase: &mut dyn FnMut(&BackfillReport, Option<&crate::verify::Verification>),
) -> anyhow::Result<WorkflowReport> {
    let mut phases = Vec::new();
    let mut stopped = None;
    for phase in &app.config.phases {
        let opts = BackfillOptions {
            phase: phase.name.clone(),
            ..template.clone()
        };
        let report = run_phase(app, &opts, executor, progress, retry).await?;
        if !report.all_done() {
            on_phase(&report, None);
            stopped = Some(format!(
                "phase {} has failed or skipped dates: later phases were NOT started. Fix them \
                 (retry commands above), then run the same command again; finished dates are \
                 skipped.",
                phase.name
            ));
            phases.push(report);
            break;
        }
        let v = crate::verify::verify(
            &app.config,
            app.ledger().as_ref(),
            app.warehouse().as_ref(),
            &phase.name,
            opts.from,
            opts.to,
        )
        .await?;
        on_phase(&report, Some(&v));
        phases.push(report);
        if !v.is_continuous {
            stopped = Some(format!(
                "phase {} has gaps in its output: later phases were NOT started. \
                 `phasegate verify --phase {} --from {} --to {}` lists them.",
                phase.name, phase.name, opts.from, opts.to
            ));
            break;
        }
    }
    Ok(WorkflowReport { phases, stopped })
}
