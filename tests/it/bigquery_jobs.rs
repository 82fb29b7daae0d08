//! BigQuery jobs per processor run, counted on bqemulator: every job is latency and a
//! billed minimum, and every DML statement counts against the table's daily quota.
//!
//! Runs in the emulator stage (`PHASEGATE_TEST_BACKEND=bigquery`); on SQLite there are no
//! jobs to count and the test returns at once.

use crate::common;

use common::{Backend, TestEnv, backend, d};
use phasegate::ledger::RunStatus;
use phasegate::startup::Store;

#[tokio::test]
async fn a_date_through_four_phases_costs_at_most_four_jobs_per_processor_run_and_one_per_event() {
    if backend() != Backend::BigQuery {
        return;
    }
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let Store::BigQuery(bq) = &env.app.store else {
        panic!("the BigQuery suite runs on BigQuery");
    };
    let before = bq.jobs_started();
    env.trigger(day, false).await;
    let jobs = bq.jobs_started() - before;

    let processors = ["ingest", "summary", "features", "preds"];
    for p in processors {
        assert_eq!(env.status(p, day).await, Some(RunStatus::Success), "{p}");
    }
    let events: usize = [
        "test-raw-done",
        "test-analytics-done",
        "test-precompute-done",
        "test-predictions-done",
    ]
    .iter()
    .map(|t| env.published_to(t))
    .sum();
    assert_eq!(events, 4, "one completion event per phase");
    println!(
        "BigQuery jobs for one date through 4 phases: {jobs} ({:.2} per processor run, \
         counting one ledger write per published event)",
        jobs as f64 / processors.len() as f64
    );
    // Per processor run: one read (its own and its upstream runs), one claim script, one
    // query per completeness check, one script for statements + outcome; per event: one
    // ledger write. `features` declares two completeness checks (5 jobs); the others 3.
    assert!(
        jobs <= 4 * processors.len() as u64 + events as u64,
        "{jobs} jobs for {} processor runs and {events} events",
        processors.len()
    );
}
