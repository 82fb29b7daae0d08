//! How each date of a backfill ended, and the closing summary an operator cannot misread:
//! counts, then every date not done with its reason and the command that retries it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::process::ExitCode;

use chrono::NaiveDate;
use serde::Serialize;

use super::plan::{ErrorPolicy, Plan};
use crate::ledger::RunStatus;

/// The result of one date.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DateResult {
    Succeeded {
        status: RunStatus,
    },
    /// The date ran and did not finish: failed, blocked, in progress elsewhere, or the store
    /// answered with an error (`store_error`).
    Failed {
        status: String,
        reason: String,
    },
    /// Already done before this backfill.
    AlreadyDone {
        status: RunStatus,
    },
    /// Not run: it looks back over a failed or skipped date (skip-dependents).
    SkippedDependent {
        depends_on: NaiveDate,
        reason: String,
    },
    /// Not run: the backfill stopped before it (stop policy).
    NotRun {
        reason: String,
    },
}

impl DateResult {
    /// Failed, skipped or not run: the date needs a retry.
    pub fn needs_retry(&self) -> bool {
        matches!(
            self,
            DateResult::Failed { .. }
                | DateResult::SkippedDependent { .. }
                | DateResult::NotRun { .. }
        )
    }

    /// One line for progress output.
    pub fn line(&self) -> String {
        match self {
            DateResult::Succeeded { status } | DateResult::AlreadyDone { status } => {
                status.to_string()
            }
            DateResult::Failed { status, reason } => format!("{status}: {reason}"),
            DateResult::SkippedDependent { reason, .. } => format!("skipped: {reason}"),
            DateResult::NotRun { reason } => format!("not run: {reason}"),
        }
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
    /// The report of a plan's results; `retry` renders the command that retries a range.
    pub fn new(
        plan: &Plan,
        results: BTreeMap<NaiveDate, DateResult>,
        retry: &dyn Fn(&str, NaiveDate, NaiveDate) -> String,
    ) -> BackfillReport {
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
            dates: Vec::with_capacity(results.len()),
            retry_all: None,
        };
        for (date, result) in results {
            report.count(&result);
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
        report.retry_all = (!not_done.is_empty()).then(|| {
            consecutive_runs(&not_done)
                .into_iter()
                .map(|(from, to)| retry(&plan.phase, from, to))
                .collect::<Vec<_>>()
                .join(" && ")
        });
        report
    }

    fn count(&mut self, result: &DateResult) {
        let counter = match result {
            DateResult::Succeeded {
                status: RunStatus::NoData,
            } => &mut self.no_data,
            DateResult::Succeeded { .. } => &mut self.succeeded,
            DateResult::Failed { .. } => &mut self.failed,
            DateResult::AlreadyDone { .. } => &mut self.already_done,
            DateResult::SkippedDependent { .. } | DateResult::NotRun { .. } => &mut self.skipped,
        };
        *counter += 1;
    }

    pub fn all_done(&self) -> bool {
        self.failed == 0 && self.skipped == 0
    }

    /// 0 when every date is done, 1 when some failed, were skipped or not run.
    pub fn exit_code(&self) -> ExitCode {
        if self.all_done() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }

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
                DateResult::SkippedDependent { reason, .. } => format!("SKIPPED: {reason}"),
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

/// `dates` (ascending) as runs of consecutive days, `(first, last)` each: a retry of exactly
/// these dates never names a done date between them (which `--force` would run again).
fn consecutive_runs(dates: &[NaiveDate]) -> Vec<(NaiveDate, NaiveDate)> {
    let mut runs: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for &d in dates {
        match runs.last_mut() {
            Some((_, last)) if last.succ_opt() == Some(d) => *last = d,
            _ => runs.push((d, d)),
        }
    }
    runs
}
