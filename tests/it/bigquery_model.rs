//! The BigQuery backend on the model of BigQuery's documented limits (scripts/bqmodel, in
//! front of bqemulator): parallel backfills, injected transient errors and conflicts, a job
//! that outlives the push deadline, a dataset outside the US/EU multi-regions.
//!
//! Runs with `PHASEGATE_TEST_BACKEND=bigquery` under scripts/emulators.sh; returns at once on
//! SQLite, and says so and returns when BIGQUERY_EMULATOR_HOST is a plain bqemulator
//! (`PHASEGATE_BQ_MODEL=0`). Faults are scheduled by count on the test's own dataset, so
//! tests running at the same time on the same model do not see each other's.

use crate::common;

use std::process::Command;

use common::{Backend, PIPELINE, TestEnv, backend, dates};
use phasegate::config::Config;
use phasegate::ledger::RunStatus;
use phasegate::startup::{self, Store};
use serde_json::{Value, json};

const PROCESSORS: [&str; 4] = ["ingest", "summary", "features", "preds"];
const TABLES: [&str; 4] = ["raw", "summary", "features", "preds"];

/// The model's admin address, or `None` (with a note) when there is no model.
async fn model() -> Option<String> {
    if backend() != Backend::BigQuery {
        return None;
    }
    let host = std::env::var("BIGQUERY_EMULATOR_HOST").ok()?;
    let ok = reqwest::get(format!("http://{host}/phasegate-model/health"))
        .await
        .is_ok_and(|r| r.status().is_success());
    if !ok {
        eprintln!("no BigQuery model at {host} (PHASEGATE_BQ_MODEL=0?): test skipped");
        return None;
    }
    Some(host)
}

/// The shared test pipeline on a fresh dataset, with extra `[backend]` lines and sections.
async fn env_with(backend_lines: &str, sections: &str) -> TestEnv {
    env_with_backoff(backend_lines, sections, 1).await
}

/// [`env_with`] with the bus's redelivery backoff (the fixture's is 1 ms; Pub/Sub's
/// minimum is 10 s).
async fn env_with_backoff(backend_lines: &str, sections: &str, backoff_ms: u64) -> TestEnv {
    env_on(
        &crate::common::coordination_lines(),
        backend_lines,
        sections,
        backoff_ms,
    )
    .await
}

/// [`env_with_backoff`] with the `[backend]` lines that choose the coordination store.
async fn env_on(coord: &str, backend_lines: &str, sections: &str, backoff_ms: u64) -> TestEnv {
    let backend_lines = format!("{coord}{backend_lines}");
    env_of(PIPELINE, &backend_lines, sections, backoff_ms).await
}

/// `pipeline` (the shared fixture, or a variant of it) on a fresh dataset of the model.
async fn env_of(pipeline: &str, backend_lines: &str, sections: &str, backoff_ms: u64) -> TestEnv {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = std::env::var("BIGQUERY_EMULATOR_HOST").expect("BIGQUERY_EMULATOR_HOST");
    let project =
        std::env::var("PHASEGATE_EMULATOR_PROJECT").unwrap_or_else(|_| "phasegate-test".into());
    let dataset = format!("t_{}", uuid::Uuid::new_v4().simple());
    let text = pipeline
        .replace("{MODE}", "strict")
        .replace("sql.sqlite", "sql.bigquery");
    let text = text.replacen(
        "retry_backoff_ms = 1\n",
        &format!("retry_backoff_ms = {backoff_ms}\n"),
        1,
    );
    let text = text.replacen(
        "[pipeline]",
        &format!(
            "[backend]\nkind = \"bigquery\"\nproject = {project:?}\ndataset = {dataset:?}\n\
             emulator_host = {host:?}\n{backend_lines}\n{sections}\n[pipeline]"
        ),
        1,
    );
    let config_path = dir.path().join("pipeline.toml");
    std::fs::write(&config_path, &text).expect("write config");
    let mut config = Config::parse(&text, &config_path).expect("parse");
    config.validate().expect("valid");
    let app = startup::build(config).await.expect("build");
    app.init_schema().await.expect("schema");
    TestEnv {
        app,
        dir,
        config_path,
    }
}

fn dataset(env: &TestEnv) -> String {
    env.app
        .config
        .backend
        .dataset
        .clone()
        .expect("a BigQuery dataset")
}

async fn add_faults(host: &str, rules: Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{host}/phasegate-model/faults"))
        .json(&json!({ "rules": rules }))
        .send()
        .await
        .expect("model admin");
    assert!(resp.status().is_success(), "{resp:?}");
}

/// Two fresh datasets with the same season, the second with the fault `rules` made for its
/// dataset name; each date then triggered on both. Returns (clean, faulty).
async fn clean_and_faulty(
    host: &str,
    days: &[chrono::NaiveDate],
    rules: impl FnOnce(&str) -> Value,
) -> (TestEnv, TestEnv) {
    let clean = env_with("", "").await;
    let faulty = env_with("", "").await;
    for env in [&clean, &faulty] {
        env.season(days).await;
    }
    add_faults(host, rules(&dataset(&faulty))).await;
    for env in [&clean, &faulty] {
        for day in days {
            env.trigger(*day, false).await;
        }
    }
    (clean, faulty)
}

async fn stats(host: &str, dataset: &str) -> Value {
    reqwest::get(format!(
        "http://{host}/phasegate-model/stats?dataset={dataset}"
    ))
    .await
    .expect("model admin")
    .json()
    .await
    .expect("stats")
}

fn stat(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Every output table's rows, sorted.
async fn outputs(env: &TestEnv) -> Vec<Vec<Vec<Option<String>>>> {
    let Store::BigQuery(bq) = &env.app.store else {
        panic!("the BigQuery suite runs on BigQuery");
    };
    let mut out = Vec::new();
    for t in TABLES {
        out.push(bq.rows_sorted(t).await.expect("rows"));
    }
    out
}

/// Per processor and date: every run's (latest) status, oldest run first.
async fn ledger(
    env: &TestEnv,
    days: &[chrono::NaiveDate],
) -> Vec<(String, String, Vec<RunStatus>)> {
    let mut out = Vec::new();
    for p in PROCESSORS {
        for day in days {
            let history = env.app.ledger().history(p, *day).await.expect("history");
            out.push((
                p.to_string(),
                day.to_string(),
                history.iter().map(|r| r.status).collect(),
            ));
        }
    }
    out
}

fn backfill(env: &TestEnv, parallel: u32, days: u32) -> std::process::Output {
    let to = dates("2024-01-01", days)
        .last()
        .expect("a date")
        .to_string();
    Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args([
            "backfill",
            "--all",
            "--from",
            "2024-01-01",
            "--to",
            &to,
            "--yes",
            "--parallel",
        ])
        .arg(parallel.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run phasegate")
}

#[tokio::test]
async fn a_parallel_backfill_of_eight_dates_through_four_phases_fails_no_run_and_matches_a_serial_one()
 {
    let Some(host) = model().await else { return };
    let days = dates("2024-01-01", 8);
    let serial = env_with("", "").await;
    let parallel = env_with("", "").await;
    for env in [&serial, &parallel] {
        env.season(&days).await;
    }
    // Real-BigQuery-like job latency on the parallel run's dataset only: jobs overlap as
    // they would in production (the model's default latency is a few ms for CI).
    add_faults(
        &host,
        json!([{ "dataset": dataset(&parallel), "kind": "delay", "ms": 100 }]),
    )
    .await;
    let out = backfill(&serial, 1, 8);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = backfill(&parallel, 8, 8);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");

    let (serial_ledger, parallel_ledger) =
        (ledger(&serial, &days).await, ledger(&parallel, &days).await);
    let failed = parallel_ledger
        .iter()
        .filter(|(_, _, h)| h.contains(&RunStatus::Failed))
        .count();
    assert_eq!(
        failed, 0,
        "failed runs in the parallel backfill: {parallel_ledger:?}"
    );
    assert_eq!(serial_ledger, parallel_ledger);
    for (p, day, h) in &parallel_ledger {
        assert_eq!(h.as_slice(), [RunStatus::Success], "{p} {day}: one run");
    }
    assert_eq!(outputs(&serial).await, outputs(&parallel).await);
    let s = stats(&host, &dataset(&parallel)).await;
    println!(
        "parallel backfill, 8 dates x 4 phases on the model: 0 failed runs, outputs equal to \
         the serial run's; model: {s}"
    );
}

#[tokio::test]
async fn transient_errors_and_conflicts_on_every_kind_of_job_change_nothing() {
    let Some(host) = model().await else { return };
    let days = dates("2024-01-01", 2);
    // By count, on the faulty dataset only: every 3rd jobs.query refused before it runs
    // (503), every 5th run and its answer lost (500: the retry's requestId finds the job),
    // run scripts refused (403 rateLimitExceeded) and one run with its answer lost (the
    // retried insert finds the job: 409), look-ups throttled (403 jobRateLimitExceeded), and
    // with claims on BigQuery's table, the first claim MERGE failing with a serialisation
    // conflict (with claims in Firestore no standalone mutating DML is left to conflict:
    // run scripts are transactions, whose conflicts the parallel backfill test meets).
    let (clean, faulty) = clean_and_faulty(&host, &days, |ds| {
        json!([
            { "dataset": ds, "endpoint": "query", "every": 3, "status": 503, "reason": "backendError" },
            { "dataset": ds, "endpoint": "query", "every": 5, "phase": "after", "status": 500, "reason": "internalError" },
            { "dataset": ds, "endpoint": "insert", "nth": [1, 4], "status": 403, "reason": "rateLimitExceeded" },
            { "dataset": ds, "endpoint": "insert", "nth": [2], "phase": "after", "status": 503, "reason": "backendError" },
            { "dataset": ds, "endpoint": "getQueryResults", "every": 2, "status": 403, "reason": "jobRateLimitExceeded" },
            { "dataset": ds, "kind": "serialize", "match": "MERGE", "nth": [1] },
        ])
    })
    .await;
    let ds = dataset(&faulty);
    let s = stats(&host, &ds).await;
    println!("fault injection on the model: {s}");
    assert!(stat(&s, "faults_injected") >= 10, "{s}");
    assert!(stat(&s, "request_id_reused") >= 1, "{s}");
    assert!(stat(&s, "duplicate_job_ids") >= 1, "{s}");
    if env_coordination() == "bigquery" {
        assert!(stat(&s, "serialize_errors") >= 1, "{s}");
    }

    let faulty_ledger = ledger(&faulty, &days).await;
    for (p, day, h) in &faulty_ledger {
        assert_eq!(
            h.as_slice(),
            [RunStatus::Success],
            "{p} {day}: one run, no failed one"
        );
    }
    assert_eq!(ledger(&clean, &days).await, faulty_ledger);
    assert_eq!(outputs(&clean).await, outputs(&faulty).await);
    for topic in [
        "test-raw-done",
        "test-analytics-done",
        "test-precompute-done",
        "test-predictions-done",
    ] {
        assert_eq!(
            faulty.published_to(topic),
            days.len(),
            "{topic}: one event per date"
        );
    }
}

#[tokio::test]
async fn a_job_that_outlives_the_push_deadline_is_cancelled_and_commits_nothing() {
    let Some(host) = model().await else { return };
    let day = dates("2024-01-01", 1)[0];
    // The redelivery comes after a backoff (as Pub/Sub's, at least 10 s), by when the first
    // delivery's release — written once its cancelled job is reported done — is in.
    let env = env_with_backoff("", "[server]\npush_deadline_secs = 4\n", 1500).await;
    env.season(&[day]).await;
    // The first run script (ingest's) takes 60 s; jobs.query/getQueryResults answer
    // jobComplete=false after 200 ms, so the client polls until the deadline drops it.
    add_faults(
        &host,
        json!([{ "dataset": dataset(&env), "kind": "delay", "endpoint": "insert",
                 "match": "BEGIN TRANSACTION", "nth": [1], "ms": 60000, "wait_ms": 200 }]),
    )
    .await;
    env.trigger(day, false).await;
    // The first delivery hit its deadline; the bus redelivered and the second run
    // succeeded. Had the cancelled job committed, the date would hold its rows twice.
    let s = stats(&host, &dataset(&env)).await;
    println!("deadline on the model: {s}");
    // Stopped once: by the cancel its dropped delivery sent, or — when the model's
    // jobTimeoutMs (what remained of the deadline) fires first and the client sees the job
    // end before the drop — by the timeout (a slower machine orders them either way).
    assert!(
        stat(&s, "cancel_requests") >= 1 || stat(&s, "timeouts") == 1,
        "{s}"
    );
    assert_eq!(stat(&s, "cancelled") + stat(&s, "timeouts"), 1, "{s}");
    assert_eq!(
        env.count("raw", "game_date", day).await,
        2,
        "one run's rows, once"
    );
    let history = env
        .app
        .ledger()
        .history("ingest", day)
        .await
        .expect("history");
    let statuses: Vec<RunStatus> = history.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Failed, RunStatus::Success],
        "{history:#?}"
    );
    assert!(
        history[0]
            .errors
            .as_deref()
            .is_some_and(|e| e.contains("interrupted") || e.contains("timed out")),
        "the first run is released, not blamed: {:?}",
        history[0].errors
    );
    // Let the cancellation reach the model before the dataset goes away.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_dataset_in_europe_west2_with_a_job_longer_than_the_first_poll_completes() {
    let Some(host) = model().await else { return };
    let day = dates("2024-01-01", 1)[0];
    let env = env_with("location = \"europe-west2\"", "").await;
    env.season(&[day]).await;
    // Every run script outlives the first answer (jobComplete=false after 100 ms): the
    // client must poll getQueryResults with the location, which the model refuses without.
    add_faults(
        &host,
        json!([{ "dataset": dataset(&env), "kind": "delay", "endpoint": "insert",
                 "match": "BEGIN TRANSACTION", "ms": 400, "wait_ms": 100 }]),
    )
    .await;
    env.trigger(day, false).await;
    for p in PROCESSORS {
        assert_eq!(env.status(p, day).await, Some(RunStatus::Success), "{p}");
    }
    let s = stats(&host, &dataset(&env)).await;
    assert_eq!(stat(&s, "location_refusals"), 0, "{s}");
    assert!(stat(&s, "jobs") > 0, "{s}");
}

/// The `ingest` processor's run for `day` as the worker would make it, claimed.
async fn claimed_ingest(env: &TestEnv, day: chrono::NaiveDate) -> phasegate::ledger::RunRecord {
    use phasegate::ledger::{Claim, TriggerKind};
    let mut run =
        phasegate::ledger::RunRecord::start("ingest", "raw", day, TriggerKind::Cli, None, true);
    run.lease_until = Some(chrono::Utc::now() + chrono::Duration::seconds(600));
    let claim = env.app.ledger().claim(&run, None).await.expect("claim");
    assert_eq!(claim, Claim::Won);
    run
}

/// Run `run`'s script (ingest's statements, output `raw`) through the warehouse.
async fn run_ingest(
    env: &TestEnv,
    run: phasegate::ledger::RunRecord,
) -> phasegate::warehouse::Committed {
    let config = &env.app.config;
    let p = &config.phase("raw").expect("raw").processors[0];
    let job = phasegate::warehouse::ProcessorRun {
        statements: p.sql.for_backend(&config.backend.kind),
        date: run.data_date,
        output: p.output.as_ref(),
        require_rows: None,
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(30),
    };
    env.app
        .warehouse()
        .run_and_record(&job, run, env.app.ledger().as_ref())
        .await
        .expect("run script")
}

/// The release a dropped delivery writes (`Held` in src/worker/claim.rs).
fn released(run: &phasegate::ledger::RunRecord) -> phasegate::ledger::RunRecord {
    let mut r = run.clone();
    r.finish(
        RunStatus::Failed,
        None,
        Some("interrupted before it finished".into()),
    );
    r.lease_until = None;
    r
}

fn statuses(h: &[phasegate::ledger::RunRecord]) -> Vec<RunStatus> {
    h.iter().map(|r| r.status).collect()
}

#[tokio::test]
async fn a_release_after_its_run_committed_writes_nothing_and_a_script_after_its_release_commits_nothing()
 {
    let Some(_host) = model().await else { return };
    let days = dates("2024-01-01", 2);
    let env = env_with("", "").await;
    env.season(&days).await;
    let ledger = env.app.ledger();

    // Committed, then released (a delivery dropped after the commit): the release is not
    // written over the committed output.
    let run = claimed_ingest(&env, days[0]).await;
    let done = run_ingest(&env, run.clone()).await;
    assert!(
        matches!(done, phasegate::warehouse::Committed::Done(_)),
        "{done:?}"
    );
    assert!(!ledger.complete(&released(&run)).await.expect("release"));
    let h = ledger.history("ingest", days[0]).await.expect("history");
    assert_eq!(statuses(&h), [RunStatus::Success], "{h:#?}");
    assert_eq!(env.count("raw", "game_date", days[0]).await, 2);

    // Released, then its script runs (a job that outlived its delivery): it commits nothing.
    let run = claimed_ingest(&env, days[1]).await;
    assert!(ledger.complete(&released(&run)).await.expect("release"));
    let done = run_ingest(&env, run.clone()).await;
    assert_eq!(done, phasegate::warehouse::Committed::TakenOver);
    let h = ledger.history("ingest", days[1]).await.expect("history");
    assert_eq!(statuses(&h), [RunStatus::Failed], "{h:#?}");
    assert_eq!(env.count("raw", "game_date", days[1]).await, 0, "no output");
}

#[tokio::test]
async fn a_release_waits_for_a_job_its_cancel_could_not_stop_and_then_says_nothing() {
    let Some(host) = model().await else { return };
    let day = dates("2024-01-01", 1)[0];
    let env = env_with("", "").await;
    env.season(&[day]).await;
    let ds = dataset(&env);
    // The run script takes 1.5 s (answers jobComplete=false after 100 ms) and the cancel
    // sent when its delivery is dropped fails: the job commits after the drop.
    add_faults(
        &host,
        json!([
            { "dataset": ds, "kind": "delay", "endpoint": "insert", "match": "BEGIN TRANSACTION",
              "nth": [1], "ms": 1500, "wait_ms": 100 },
            { "dataset": ds, "endpoint": "cancel", "status": 503, "reason": "backendError" },
        ]),
    )
    .await;
    let run = claimed_ingest(&env, day).await;
    let before = stat(&stats(&host, &ds).await, "jobs");
    let task = tokio::spawn({
        let (app_ledger, app_warehouse, config) = (
            std::sync::Arc::clone(env.app.ledger()),
            std::sync::Arc::clone(env.app.warehouse()),
            std::sync::Arc::clone(&env.app.config),
        );
        let run = run.clone();
        async move {
            let p = &config.phase("raw").expect("raw").processors[0];
            let job = phasegate::warehouse::ProcessorRun {
                statements: p.sql.for_backend(&config.backend.kind),
                date: run.data_date,
                output: p.output.as_ref(),
                require_rows: None,
                deadline: std::time::Instant::now() + std::time::Duration::from_secs(30),
            };
            app_warehouse
                .run_and_record(&job, run, app_ledger.as_ref())
                .await
        }
    });
    // The delivery is dropped once its job is in BigQuery (the model counts it).
    while stat(&stats(&host, &ds).await, "jobs") == before {
        tokio::task::yield_now().await;
    }
    task.abort();
    assert!(task.await.is_err(), "dropped");
    // The release the dropped delivery writes: it waits for the job, which committed.
    let written = env
        .app
        .ledger()
        .complete(&released(&run))
        .await
        .expect("release");
    let h = env
        .app
        .ledger()
        .history("ingest", day)
        .await
        .expect("history");
    let s = stats(&host, &ds).await;
    println!("release after an unstoppable job: written={written}; model: {s}");
    assert!(stat(&s, "cancel_requests") >= 1, "{s}");
    assert_eq!(
        (statuses(&h), env.count("raw", "game_date", day).await),
        (vec![RunStatus::Success], 2),
        "the job committed; the release must not say failed: {h:#?}"
    );
    assert!(!written);
}

#[tokio::test]
async fn exhausted_retries_release_the_claim_without_a_failed_row_and_the_redelivery_runs_at_once()
{
    let Some(host) = model().await else { return };
    let day = dates("2024-01-01", 1)[0];
    let env = env_with("", "[server]\npush_deadline_secs = 3\n").await;
    env.season(&[day]).await;
    let ds = dataset(&env);
    // Every run script refused (503 backendError) until the retry budget runs out.
    add_faults(
        &host,
        json!([{ "dataset": ds, "endpoint": "insert", "status": 503, "reason": "backendError" }]),
    )
    .await;
    let req = phasegate::worker::RunRequest::new("raw", day, phasegate::ledger::TriggerKind::Cli);
    let first = env.app.worker.run_phase(&req).await;
    assert!(first.is_err(), "answered as unavailable (503): {first:?}");
    reqwest::Client::new()
        .delete(format!("http://{host}/phasegate-model/faults?dataset={ds}"))
        .send()
        .await
        .expect("model admin");
    // The redelivery takes the released claim at once (no lease to wait out).
    let second = env.app.worker.run_phase(&req).await.expect("redelivery");
    assert!(
        matches!(second, phasegate::worker::PhaseOutcome::Done { .. }),
        "{second:?}"
    );
    let h = env
        .app
        .ledger()
        .history("ingest", day)
        .await
        .expect("history");
    assert_eq!(
        statuses(&h),
        [RunStatus::Running, RunStatus::Success],
        "no failed row for a store that was unavailable: {h:#?}"
    );
    assert!(
        h[0].finished_at.is_some() && h[0].lease_until.is_none(),
        "{:?}",
        h[0]
    );
    assert!(
        h[0].errors
            .as_deref()
            .is_some_and(|e| e.starts_with("released")),
        "{:?}",
        h[0].errors
    );
    // `history` says what happened; `status` shows the date done.
    let phase = env.app.config.phase("raw").expect("raw");
    let text = phasegate::report::history::History::load(
        phase,
        day,
        env.app.ledger().as_ref(),
        chrono::Utc::now(),
    )
    .await
    .expect("history")
    .render();
    println!("{text}");
    assert!(
        text.contains("released") && !text.contains("failed"),
        "{text}"
    );
    assert_eq!(env.status("ingest", day).await, Some(RunStatus::Success));
}

#[tokio::test]
async fn the_outbox_sweep_reads_only_the_recent_dates_of_the_ledger() {
    let Some(_host) = model().await else { return };
    // The default window: 35 days back from today.
    let env = env_with("", "").await;
    let today = chrono::Utc::now().date_naive();
    let (recent, old) = (today - chrono::Days::new(34), today - chrono::Days::new(36));
    for day in [recent, old] {
        env.record_run("ingest", "raw", day, RunStatus::Success)
            .await;
    }
    let owed = env
        .app
        .ledger()
        .owed_events("raw", 100)
        .await
        .expect("owed events");
    let owed: Vec<_> = owed.iter().map(|r| r.data_date).collect();
    assert_eq!(owed, [recent], "only dates inside the window are read");
}

#[tokio::test]
async fn jobs_that_succeed_with_warnings_are_successes() {
    let Some(host) = model().await else { return };
    let days = dates("2024-01-01", 2);
    // Every job of the second dataset (jobs.query and jobs.insert) succeeds with a warning:
    // its answers and its status carry `errors`, its status no `errorResult`.
    let (clean, warned) = clean_and_faulty(
        &host,
        &days,
        |ds| json!([{ "dataset": ds, "kind": "warning" }]),
    )
    .await;
    let ds = dataset(&warned);
    let s = stats(&host, &ds).await;
    println!("warnings on every job: {s}");
    assert!(stat(&s, "warnings") >= 20, "{s}");
    let warned_ledger = ledger(&warned, &days).await;
    for (p, day, h) in &warned_ledger {
        assert_eq!(h.as_slice(), [RunStatus::Success], "{p} {day}");
    }
    assert_eq!(ledger(&clean, &days).await, warned_ledger);
    assert_eq!(outputs(&clean).await, outputs(&warned).await);
}

#[tokio::test]
async fn a_processor_whose_bytes_limit_is_too_small_fails_once_with_bytes_billed_limit_exceeded() {
    let Some(host) = model().await else { return };
    let day = dates("2024-01-01", 1)[0];
    // summary's run job may bill 10 MB: BigQuery's minimum for one table read, while its
    // script reads several (claims, ledger, its input and output). No backend-wide limit.
    let summary = "name = \"summary\"\nkind = \"sql\"\n";
    assert!(PIPELINE.contains(summary));
    let pipeline = PIPELINE.replacen(
        summary,
        &format!("{summary}maximum_bytes_billed = 10485760\n"),
        1,
    );
    let env = env_of(&pipeline, &crate::common::coordination_lines(), "", 1).await;
    env.season(&[day]).await;
    let ds = dataset(&env);
    let Store::BigQuery(bq) = &env.app.store else {
        panic!("the BigQuery suite runs on BigQuery");
    };
    let retries = bq.retries();
    // Each phase run here, once, without its completion event (no cascade, no redelivery).
    let run = |phase: &str| phasegate::worker::RunRequest {
        skip_downstream: true,
        ..phasegate::worker::RunRequest::new(phase, day, phasegate::ledger::TriggerKind::Cli)
    };
    let raw = env.app.worker.run_phase(&run("raw")).await.expect("raw");
    assert!(
        matches!(raw, phasegate::worker::PhaseOutcome::Done { .. }),
        "no limit of its own: {raw:?}"
    );
    let analytics = env.app.worker.run_phase(&run("analytics")).await;
    assert!(
        matches!(
            analytics,
            Ok(phasegate::worker::PhaseOutcome::Failed { .. })
        ),
        "{analytics:?}"
    );
    let s = stats(&host, &ds).await;
    println!("a run job over its bytes limit: {s}");
    // Refused once, before it ran: not retried (the model answers it as an HTTP 500, whose
    // reason says it is no transient error).
    assert_eq!(stat(&s, "bytes_limit_refusals"), 1, "{s}");
    assert_eq!(bq.retries(), retries, "nothing was retried");
    let h = env
        .app
        .ledger()
        .history("summary", day)
        .await
        .expect("history");
    assert_eq!(statuses(&h), [RunStatus::Failed], "{h:#?}");
    let errors = h[0].errors.as_deref().unwrap_or_default();
    assert!(
        errors.contains("Query exceeded limit for bytes billed: 10485760"),
        "{errors}"
    );
    assert_eq!(env.count("summary", "game_date", day).await, 0, "no output");
    assert_eq!(env.status("ingest", day).await, Some(RunStatus::Success));
}

/// Issue 26: a claim granted by the coordination store whose `running` row cannot be
/// appended to the ledger is given back at once — the redelivery runs the date without
/// waiting out the lease (push deadline + 60 s), and the ledger holds no row of the claim
/// that was never recorded.
#[tokio::test]
async fn a_claim_the_ledger_could_not_record_is_given_back_and_the_redelivery_runs_at_once() {
    let Some(host) = model().await else { return };
    if env_coordination() != "firestore" {
        return;
    }
    let day = dates("2024-01-01", 1)[0];
    let env = env_with("", "").await;
    env.season(&[day]).await;
    let ds = dataset(&env);
    // The claim's append (the only job writing a `running` row literal) fails once, finally.
    add_faults(
        &host,
        json!([{ "dataset": ds, "endpoint": "any", "match": "FROM_BASE64('cnVubmluZw==')",
                 "status": 400, "reason": "invalidQuery", "times": 1 }]),
    )
    .await;
    let req = phasegate::worker::RunRequest::new("raw", day, phasegate::ledger::TriggerKind::Cli);
    let first = env.app.worker.run_phase(&req).await;
    assert!(first.is_err(), "answered as unavailable (503): {first:?}");
    let started = std::time::Instant::now();
    let second = env.app.worker.run_phase(&req).await.expect("redelivery");
    assert!(
        matches!(second, phasegate::worker::PhaseOutcome::Done { .. }),
        "the redelivery ran at once: {second:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let h = env
        .app
        .ledger()
        .history("ingest", day)
        .await
        .expect("history");
    assert_eq!(statuses(&h), [RunStatus::Success], "{h:#?}");
}

fn env_coordination() -> String {
    std::env::var("PHASEGATE_TEST_COORDINATION").unwrap_or_else(|_| "firestore".into())
}

/// Issue 26, the coordination store's transient errors (Firestore documents `UNAVAILABLE`
/// and friends as "retry with backoff"; its emulator never fails): the claim's commit applied
/// but its answer lost, the publication's commit refused, a read refused. The client retries;
/// a retried claim whose first attempt applied finds itself the holder. Same ledger, outputs
/// and events as without faults: one run per processor and date, no failed row.
#[tokio::test]
async fn transient_firestore_errors_on_claims_and_publications_change_nothing() {
    use crate::common::firestore_faults::{Fault, FirestoreFaults};
    if model().await.is_none() || env_coordination() != "firestore" {
        return;
    }
    let upstream = std::env::var("FIRESTORE_EMULATOR_HOST").expect("FIRESTORE_EMULATOR_HOST");
    let fault = |method, nth, after| Fault { method, nth, after };
    let proxy = FirestoreFaults::start(
        upstream,
        vec![
            fault("commit", 1, true),
            fault("commit", 3, false),
            fault("commit", 6, true),
            fault("batchGet", 2, false),
            fault("batchGet", 5, false),
        ],
    )
    .await;
    let coord = format!(
        "coordination = \"firestore\"\nfirestore_emulator_host = {:?}\n",
        proxy.host
    );
    let env = env_on(&coord, "", "", 1).await;
    let days = dates("2024-01-01", 2);
    env.season(&days).await;
    for day in &days {
        env.trigger(*day, false).await;
    }
    assert!(proxy.injected() >= 5, "{} faults", proxy.injected());
    for p in ["ingest", "summary", "features", "preds"] {
        for day in &days {
            let h = env.app.ledger().history(p, *day).await.expect("history");
            assert_eq!(statuses(&h), [RunStatus::Success], "{p} {day}: {h:#?}");
        }
    }
    assert_eq!(env.published_to("test-predictions-done"), 2);
}
