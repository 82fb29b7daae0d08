//! Running a plan: dates go to a [`DateRunner`] up to `parallel` at a time, never before the
//! earlier dates of the backfill that their checks look back over have finished; the error
//! policy decides what runs after a failure.
//!
//! Whatever happens to one date — a failed run, a store error, a panic — is that date's result:
//! the executor always ends with every date accounted for, and a date in flight always
//! finishes (nothing is cancelled, so no claim is left behind by the backfill).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use chrono::NaiveDate;
use tokio::task::{JoinError, JoinSet};

use super::plan::{ErrorPolicy, Plan, Planned};
use super::progress::ProgressSink;
use super::report::{BackfillReport, DateResult};
use crate::dates::minus_days;
use crate::worker::WorkerError;

/// Runs one date of a backfill and says how it ended. An `Err` is the date's failure
/// (`store_error`), never the backfill's.
#[async_trait::async_trait]
pub trait DateRunner: Send + Sync {
    async fn run(&self, date: NaiveDate) -> Result<DateResult, WorkerError>;
}

/// Run a plan to the end. `retry` renders the command that retries a range of dates.
pub async fn execute(
    runner: Arc<dyn DateRunner>,
    plan: &Plan,
    progress: &dyn ProgressSink,
    retry: &dyn Fn(&str, NaiveDate, NaiveDate) -> String,
) -> BackfillReport {
    let mut schedule = Schedule::new(plan);
    let mut tasks: JoinSet<Result<DateResult, WorkerError>> = JoinSet::new();
    let mut task_dates = HashMap::new();
    loop {
        while let Some(next) = schedule.next(progress) {
            let runner = runner.clone();
            let task = tasks.spawn(async move { runner.run(next).await });
            task_dates.insert(task.id(), next);
        }
        let Some(joined) = tasks.join_next_with_id().await else {
            break;
        };
        let (id, result) = match joined {
            Ok((id, result)) => (id, result.unwrap_or_else(store_error)),
            Err(e) => (e.id(), panicked(&e)),
        };
        if let Some(date) = task_dates.remove(&id) {
            schedule.finished(date, result, progress);
        }
    }
    progress.finish();
    BackfillReport::new(plan, schedule.into_results(), retry)
}

fn store_error(e: WorkerError) -> DateResult {
    DateResult::Failed {
        status: "store_error".into(),
        reason: e.to_string(),
    }
}

fn panicked(e: &JoinError) -> DateResult {
    DateResult::Failed {
        status: "panicked".into(),
        reason: format!("the run of this date panicked: {e}"),
    }
}

/// Which date starts next, and what became of each.
struct Schedule<'a> {
    plan: &'a Plan,
    pending: VecDeque<NaiveDate>,
    running: BTreeSet<NaiveDate>,
    results: BTreeMap<NaiveDate, DateResult>,
    /// The first failure under the stop policy.
    stopped_at: Option<NaiveDate>,
}

impl<'a> Schedule<'a> {
    fn new(plan: &'a Plan) -> Schedule<'a> {
        let mut schedule = Schedule {
            plan,
            pending: VecDeque::new(),
            running: BTreeSet::new(),
            results: BTreeMap::new(),
            stopped_at: None,
        };
        for e in &plan.dates {
            match &e.planned {
                Planned::Run => schedule.pending.push_back(e.date),
                Planned::Skip { status, .. } => {
                    let done = DateResult::AlreadyDone { status: *status };
                    schedule.results.insert(e.date, done);
                }
            }
        }
        schedule
    }

    /// The next date to start, if one may start now. Dates that skip-dependents skips are
    /// settled on the way.
    fn next(&mut self, progress: &dyn ProgressSink) -> Option<NaiveDate> {
        while self.stopped_at.is_none() && self.running.len() < self.plan.parallel {
            let next = *self.pending.front()?;
            if self.waits_for_earlier(next) {
                return None;
            }
            self.pending.pop_front();
            match self.depends_on_failure(next) {
                Some(skipped) => {
                    progress.done(&self.plan.phase, next, &skipped);
                    self.results.insert(next, skipped);
                }
                None => {
                    self.running.insert(next);
                    return Some(next);
                }
            }
        }
        None
    }

    /// The first day of a date's look-back window.
    fn window_start(&self, date: NaiveDate) -> NaiveDate {
        minus_days(date, self.plan.lookback_days)
    }

    /// A date waits while an earlier date within its look-back is still running.
    fn waits_for_earlier(&self, date: NaiveDate) -> bool {
        self.plan.lookback_days > 0
            && self
                .running
                .range(self.window_start(date)..date)
                .next()
                .is_some()
    }

    /// Under skip-dependents, a date whose look-back covers a failed or skipped date is
    /// skipped; the reason names the nearest failed date, else the nearest skipped one.
    fn depends_on_failure(&self, date: NaiveDate) -> Option<DateResult> {
        if self.plan.policy != ErrorPolicy::SkipDependents || self.plan.lookback_days == 0 {
            return None;
        }
        let window = || self.results.range(self.window_start(date)..date).rev();
        let failed = window().find(|(_, r)| matches!(r, DateResult::Failed { .. }));
        let (&depends_on, how) = match failed {
            Some((d, _)) => (d, "failed"),
            None => window()
                .find(|(_, r)| matches!(r, DateResult::SkippedDependent { .. }))
                .map(|(d, _)| (d, "skipped"))?,
        };
        Some(DateResult::SkippedDependent {
            depends_on,
            reason: format!(
                "its checks look back {} days over {how} {depends_on}",
                self.plan.lookback_days
            ),
        })
    }

    /// A date ended; under the stop policy its failure stops new dates (dates in flight
    /// still finish).
    fn finished(&mut self, date: NaiveDate, result: DateResult, progress: &dyn ProgressSink) {
        self.running.remove(&date);
        progress.done(&self.plan.phase, date, &result);
        if matches!(result, DateResult::Failed { .. })
            && self.plan.policy == ErrorPolicy::Stop
            && self.stopped_at.is_none()
        {
            self.stopped_at = Some(date);
        }
        self.results.insert(date, result);
    }

    /// Every date's result; dates never started after a stop are `NotRun`.
    fn into_results(mut self) -> BTreeMap<NaiveDate, DateResult> {
        if let Some(stop) = self.stopped_at {
            for date in self.pending.drain(..) {
                let reason = format!("the backfill stopped at the failure on {stop}");
                self.results.insert(date, DateResult::NotRun { reason });
            }
        }
        self.results
    }
}
