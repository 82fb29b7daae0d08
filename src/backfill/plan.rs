//! The backfill plan: which dates of a phase run and which are already done, and how far back
//! the phase's checks look (which orders the dates and decides what `skip-dependents` skips).

use std::collections::HashMap;
use std::fmt::Write;

use chrono::NaiveDate;
use serde::Serialize;

use crate::config::{Config, Phase};
use crate::dates::days;
use crate::ledger::{RunRecord, RunStatus};
use crate::worker::{Worker, WorkerError};

/// What to do when a date fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Halt at the first failure; later dates are not run.
    Stop,
    /// Run every date whatever fails.
    Continue,
    /// Run every date except those whose checks look back over a failed or skipped date.
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

/// One phase's backfill as asked for.
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

/// How many days before a date the checks of a phase read: the longest look-back of its
/// processors' checks, by the gate's own definition ([`crate::config::Checks::lookback_days`]:
/// `historical_gaps.lookback_days`, a `days` window's `lookback`, an `occurrences` window's
/// time bound `window_days`). Used for date ordering under `--parallel` and for
/// `skip-dependents`.
pub fn phase_lookback_days(phase: &Phase) -> u32 {
    phase
        .processors
        .iter()
        .map(|p| p.checks.lookback_days())
        .max()
        .unwrap_or(0)
}

/// Whether a processor's latest run leaves its date done, so a backfill without `--force`
/// does not run it again: `success` or `no_data`.
///
/// The planner's ONE definition of "done" (the Pub/Sub runner uses it too). Staleness goes
/// here: a run that consumed an upstream run older than the upstream's latest is not done,
/// so a plain backfill (no `--force`) re-runs it.
/// (Stale runs never reach it: [`plan`] drops them first, with
/// [`crate::ledger::latest_in_range_with_staleness`].)
pub fn is_done(run: &RunRecord) -> bool {
    run.status.is_done()
}

pub(super) fn phase<'a>(config: &'a Config, name: &str) -> Result<&'a Phase, WorkerError> {
    config.phase(name).ok_or_else(|| WorkerError::UnknownPhase {
        phase: name.to_string(),
        known: config.phase_names(),
    })
}

/// Decide, from the ledger, which dates run and which are already done: one range query per
/// processor, whatever the number of dates.
pub async fn plan(worker: &Worker, opts: &BackfillOptions) -> Result<Plan, WorkerError> {
    let phase = phase(worker.config(), &opts.phase)?;
    let mut latest: Vec<HashMap<NaiveDate, RunRecord>> = Vec::new();
    for p in &phase.processors {
        let runs = crate::ledger::latest_in_range_with_staleness(
            worker.ledger().as_ref(),
            &p.name,
            &p.checks.upstream,
            opts.from,
            opts.to,
        )
        .await?;
        // A stale run (its upstream was corrected since) is not done: the date runs again.
        latest.push(
            runs.into_iter()
                .filter(|(_, stale)| !stale)
                .map(|(r, _)| (r.data_date, r))
                .collect(),
        );
    }
    let dates = days(opts.from, opts.to)
        .map(|date| PlanEntry {
            date,
            planned: plan_date(&latest, date, opts.force),
        })
        .collect();
    Ok(Plan {
        phase: phase.name.clone(),
        from: opts.from,
        to: opts.to,
        policy: opts.policy,
        parallel: opts.parallel.max(1),
        lookback_days: phase_lookback_days(phase),
        dates,
    })
}

/// Skip a date when every processor's latest run is done (and not forced).
fn plan_date(latest: &[HashMap<NaiveDate, RunRecord>], date: NaiveDate, force: bool) -> Planned {
    let runs: Option<Vec<&RunRecord>> = latest.iter().map(|by_date| by_date.get(&date)).collect();
    match runs {
        Some(runs) if !force && runs.iter().all(|r| is_done(r)) => {
            let status = RunStatus::of_done_phase(runs.iter().map(|r| r.status));
            Planned::Skip {
                status,
                reason: format!("already {status} (use --force to run again)"),
            }
        }
        _ => Planned::Run,
    }
}

impl Plan {
    /// How many dates will run.
    pub fn to_run(&self) -> usize {
        self.dates
            .iter()
            .filter(|e| e.planned == Planned::Run)
            .count()
    }

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
        let runs = self.to_run();
        let _ = writeln!(
            out,
            "{runs} date(s) to run, {} to skip",
            self.dates.len() - runs
        );
        out
    }
}
