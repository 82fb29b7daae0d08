//! Backfill under faults: a store error on one date is that date's failure (never the whole
//! backfill's), the stop policy lets dates in flight finish, and retry commands repeat every
//! flag that changes what runs.

use crate::common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use common::{TestEnv, d, dates};
use phasegate::backfill::{
    BackfillOptions, DateResult, DateRunner, ErrorPolicy, Executor, Plan, PlanEntry, Planned,
    Progress, ProgressSink, RetryCommand, execute, run_phase,
};
use phasegate::ledger::{Claim, Ledger, LedgerError, RunRecord, RunStatus};
use phasegate::startup::App;
use phasegate::worker::{Worker, WorkerError};
use tokio::sync::Notify;

const INJECTED: &str = "injected store error";

/// The real ledger, except that every read or write of one date fails.
struct FailingLedger {
    inner: Arc<dyn Ledger>,
    date: NaiveDate,
}

impl FailingLedger {
    fn check(&self, date: NaiveDate) -> Result<(), LedgerError> {
        if date == self.date {
            Err(LedgerError(INJECTED.into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Ledger for FailingLedger {
    async fn ensure_schema(&self) -> Result<(), LedgerError> {
        self.inner.ensure_schema().await
    }
    async fn record(&self, record: &RunRecord) -> Result<(), LedgerError> {
        self.check(record.data_date)?;
        self.inner.record(record).await
    }
    async fn latest(&self, p: &str, date: NaiveDate) -> Result<Option<RunRecord>, LedgerError> {
        self.check(date)?;
        self.inner.latest(p, date).await
    }
    async fn history(&self, p: &str, date: NaiveDate) -> Result<Vec<RunRecord>, LedgerError> {
        self.check(date)?;
        self.inner.history(p, date).await
    }
    async fn latest_in_range(
        &self,
        p: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        self.inner.latest_in_range(p, from, to).await
    }
    async fn claim(&self, run: &RunRecord, seen: Option<&RunRecord>) -> Result<Claim, LedgerError> {
        self.check(run.data_date)?;
        self.inner.claim(run, seen).await
    }
    async fn complete(&self, run: &RunRecord) -> Result<bool, LedgerError> {
        self.inner.complete(run).await
    }
    async fn renew(&self, id: &str, until: DateTime<Utc>) -> Result<bool, LedgerError> {
        self.inner.renew(id, until).await
    }
    async fn claim_publication(
        &self,
        runs: &[RunRecord],
        until: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        self.inner.claim_publication(runs, until).await
    }
    async fn owed_events(&self, phase: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        self.inner.owed_events(phase, limit).await
    }
    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.inner.mark_published(runs, at).await
    }
}

/// The test environment's app with its worker on another ledger.
fn app_on(env: &TestEnv, ledger: Arc<dyn Ledger>) -> App {
    let worker = Worker::new(
        env.app.config.clone(),
        ledger,
        env.app.warehouse().clone(),
        Arc::new(env.bus().clone()),
    );
    App {
        config: env.app.config.clone(),
        worker: Arc::new(worker),
        bus: None,
        pubsub: None,
        sqlite: env.app.sqlite.clone(),
        store: env.app.store.clone(),
    }
}

/// Run a printed command (its first word is `phasegate`) with the built binary.
/// Run a command phasegate printed, exactly as printed, through the shell.
fn run_printed(command: &str) -> std::process::Output {
    Command::new("bash")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the printed command")
}

/// The words of a printed command after its environment assignments and its program.
fn arguments(command: &str) -> Vec<String> {
    let words = shlex::split(command).expect("a shell-parsable command");
    let program = words
        .iter()
        .position(|w| !w.contains('=') || w.starts_with('-'))
        .expect("a program");
    words[program + 1..].to_vec()
}

#[tokio::test]
async fn a_store_error_on_one_date_is_that_dates_failure_and_its_retry_repeats_the_flags() {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 6);
    env.season(&days).await;
    let bad = days[2];
    let app = app_on(
        &env,
        Arc::new(FailingLedger {
            inner: env.app.ledger().clone(),
            date: bad,
        }),
    );
    let opts = BackfillOptions {
        phase: "raw".into(),
        from: days[0],
        to: days[5],
        policy: ErrorPolicy::Continue,
        parallel: 4,
        force: true,
    };
    let mut retry = RetryCommand::new(Some(env.config_path()), &opts, Executor::InProcess);
    // Built in this test process, the command would name the test binary.
    retry.program = env!("CARGO_BIN_EXE_phasegate").into();
    let report = run_phase(
        &app,
        &opts,
        Executor::InProcess,
        &|_, _| Progress::hidden(),
        &|phase, from, to| retry.render(phase, from, to),
    )
    .await
    .expect("a store error on one date does not abort the backfill");

    assert_eq!(
        (report.succeeded, report.failed),
        (5, 1),
        "{}",
        report.render()
    );
    assert!(!report.all_done());
    for day in days.iter().filter(|day| **day != bad) {
        assert_eq!(
            env.status("ingest", *day).await,
            Some(RunStatus::Success),
            "{day}"
        );
    }
    let failed = &report.dates[2];
    assert_eq!(failed.date, bad);
    match &failed.result {
        DateResult::Failed { status, reason } => {
            assert_eq!(status, "store_error");
            assert!(reason.contains(INJECTED), "{reason}");
        }
        other => panic!("{bad} should have failed: {other:?}"),
    }
    let command = failed.retry.as_deref().expect("a retry command");
    let config = std::fs::canonicalize(env.config_path()).unwrap();
    let expected: Vec<String> = [
        env!("CARGO_BIN_EXE_phasegate"),
        "--config",
        &config.display().to_string(),
        "backfill",
        "--phase",
        "raw",
        "--from",
        "2024-01-03",
        "--to",
        "2024-01-03",
        "--error-policy",
        "continue",
        "--parallel",
        "4",
        "--force",
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();
    assert_eq!(shlex::split(command).unwrap(), expected);

    // The store is back: the printed command repairs the date.
    let out = run_printed(command);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(env.status("ingest", bad).await, Some(RunStatus::Success));
}

#[tokio::test]
async fn the_binary_exits_1_with_a_summary_when_the_store_fails_on_one_date() {
    if common::backend() != common::Backend::Sqlite {
        return; // the fault is a SQLite trigger on the ledger table
    }
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 5);
    env.season(&days).await;
    let sqlite = env.app.sqlite.as_ref().expect("sqlite");
    sqlite
        .execute_batch(format!(
            "CREATE TRIGGER inject BEFORE INSERT ON processor_run_history \
             WHEN NEW.data_date = '2024-01-03' BEGIN SELECT RAISE(ABORT, '{INJECTED}'); END"
        ))
        .await
        .expect("trigger");
    // A configuration path the shell must quote.
    let odd = env.dir.path().join("my team's pipeline.toml");
    std::fs::copy(env.config_path(), &odd).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(&odd)
        .args("backfill --phase raw --from 2024-01-01 --to 2024-01-05 --error-policy skip-dependents --parallel 3 --force".split(' '))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2024-01-03  FAILED (store_error)"), "{text}");
    assert!(text.contains(INJECTED), "{text}");
    assert!(
        text.contains("4 succeeded, 0 no data, 1 failed, 0 skipped"),
        "{text}"
    );
    for day in days.iter().filter(|day| **day != d("2024-01-03")) {
        assert_eq!(
            env.status("ingest", *day).await,
            Some(RunStatus::Success),
            "{day}"
        );
    }
    assert_eq!(
        env.status("ingest", d("2024-01-03")).await,
        None,
        "no claim left behind"
    );
    let retry = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("retry: "))
        .expect("a retry command");
    let words = arguments(retry);
    assert_eq!(
        words[1],
        std::fs::canonicalize(&odd).unwrap().display().to_string()
    );
    assert!(
        retry.ends_with(
            "--from 2024-01-03 --to 2024-01-03 --error-policy skip-dependents --parallel 3 --force"
        ),
        "{retry}"
    );

    sqlite
        .execute_batch("DROP TRIGGER inject".into())
        .await
        .unwrap();
    let out = run_printed(retry);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for day in &days {
        assert_eq!(
            env.status("ingest", *day).await,
            Some(RunStatus::Success),
            "{day}"
        );
    }
}

/// A runner whose first date fails with a store error and whose second date is still in
/// flight when the executor records that failure: it finishes only after it.
struct FailThenFinish {
    dates: Vec<NaiveDate>,
    failure_recorded: Arc<Notify>,
    started: Mutex<Vec<NaiveDate>>,
}

#[async_trait]
impl DateRunner for FailThenFinish {
    async fn run(&self, date: NaiveDate) -> Result<DateResult, WorkerError> {
        self.started.lock().unwrap().push(date);
        if date == self.dates[0] {
            return Err(WorkerError::Ledger(LedgerError(INJECTED.into())));
        }
        if date == self.dates[1] {
            self.failure_recorded.notified().await;
        }
        Ok(DateResult::Succeeded {
            status: RunStatus::Success,
        })
    }
}

/// Tells the runner when the executor has recorded the first failure.
struct OnFailure(Arc<Notify>);

impl ProgressSink for OnFailure {
    fn done(&self, _phase: &str, _date: NaiveDate, result: &DateResult) {
        if matches!(result, DateResult::Failed { .. }) {
            self.0.notify_one();
        }
    }
}

#[tokio::test]
async fn the_stop_policy_lets_dates_in_flight_finish_and_starts_no_new_one() {
    let days = dates("2024-01-01", 5);
    let notify = Arc::new(Notify::new());
    let runner = Arc::new(FailThenFinish {
        dates: days.clone(),
        failure_recorded: notify.clone(),
        started: Mutex::new(Vec::new()),
    });
    let plan = Plan {
        phase: "raw".into(),
        from: days[0],
        to: days[4],
        policy: ErrorPolicy::Stop,
        parallel: 2,
        lookback_days: 0,
        dates: days
            .iter()
            .map(|date| PlanEntry {
                date: *date,
                planned: Planned::Run,
            })
            .collect(),
    };
    let report = execute(runner.clone(), &plan, &OnFailure(notify), &|p, f, t| {
        format!("retry {p} {f} {t}")
    })
    .await;

    assert_eq!(
        *runner.started.lock().unwrap(),
        days[..2],
        "no date starts after the stop"
    );
    let results: Vec<&DateResult> = report.dates.iter().map(|r| &r.result).collect();
    assert!(
        matches!(results[0], DateResult::Failed { status, .. } if status == "store_error"),
        "{results:?}"
    );
    assert_eq!(
        results[1],
        &DateResult::Succeeded {
            status: RunStatus::Success
        },
        "the date in flight finished"
    );
    for r in &results[2..] {
        assert_eq!(
            *r,
            &DateResult::NotRun {
                reason: format!("the backfill stopped at the failure on {}", d("2024-01-01"))
            }
        );
    }
    assert_eq!(report.dates[1].retry, None);
    // Exactly the dates not done: never 2024-01-02, which finished (and which a retry with
    // --force would run again).
    assert_eq!(
        report.retry_all.as_deref(),
        Some("retry raw 2024-01-01 2024-01-01 && retry raw 2024-01-03 2024-01-05")
    );
}
