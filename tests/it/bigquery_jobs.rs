//! BigQuery jobs per processor run, counted on bqemulator: every job is latency and a
//! billed minimum, and every DML statement counts against the table's daily quota; and the
//! layout that bounds what each job reads (tables partitioned by their date column).
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
    let billed_before = model_stats(&env).await;
    let before = bq.jobs_started();
    env.trigger(day, false).await;
    let jobs = bq.jobs_started() - before;
    let billed_after = model_stats(&env).await;

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
    if let (Some(before), Some(after)) = (billed_before, billed_after) {
        // The model bills BigQuery's on-demand minimum, 10 MB per table each statement reads
        // (bqemulator reports no bytes, dry runs included): what BigQuery bills a run over
        // tables whose scanned partitions hold less than 10 MB, a floor above that.
        let mb = |key: &str| (stat(&after, key) - stat(&before, key)) as f64 / 1_048_576.0;
        let n = |key: &str| stat(&after, key) - stat(&before, key);
        println!(
            "bytes billed for one date through 4 phases (the model's 10 MB-per-table floor): \
             {:.0} MB, {:.0} MB per processor run; run scripts {:.0} MB in {} jobs, claims \
             {:.0} MB in {} jobs, outcomes {:.0} MB in {} jobs, other jobs (gate checks, \
             ledger reads and writes) {:.0} MB in {} jobs",
            mb("bytes_billed"),
            mb("bytes_billed") / processors.len() as f64,
            mb("bytes_billed_run"),
            n("jobs_run"),
            mb("bytes_billed_claim"),
            n("jobs_claim"),
            mb("bytes_billed_outcome"),
            n("jobs_outcome"),
            mb("bytes_billed_other"),
            n("jobs_other"),
        );
        // Each run script reads at most 8 tables' worth (claims twice, the ledger, its
        // input(s), its output once, the reference for require_rows): 80 MB.
        assert!(
            mb("bytes_billed_run") <= 80.0 * processors.len() as f64,
            "{after}"
        );
        assert_eq!(n("jobs_run"), processors.len() as u64, "{after}");
        assert_eq!(
            n("jobs"),
            jobs,
            "every job the client started, and no other: {after}"
        );
    }
    // Per processor run: one read (its own and its upstream runs), one claim script, one
    // query per completeness check, one script for statements + outcome; per event: one
    // ledger write. `features` declares two completeness checks (5 jobs); the others 3.
    assert!(
        jobs <= 4 * processors.len() as u64 + events as u64,
        "{jobs} jobs for {} processor runs and {events} events",
        processors.len()
    );
}

/// The BigQuery model's counters for the test's dataset (`None` on plain bqemulator).
async fn model_stats(env: &TestEnv) -> Option<serde_json::Value> {
    let host = std::env::var("BIGQUERY_EMULATOR_HOST").ok()?;
    let dataset = env.app.config.backend.dataset.as_deref()?;
    let resp = reqwest::get(format!(
        "http://{host}/phasegate-model/stats?dataset={dataset}"
    ))
    .await
    .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

fn stat(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// The table's `timePartitioning` as the BigQuery API reports it (the emulator's `tables.get`).
async fn time_partitioning(env: &TestEnv, table: &str) -> serde_json::Value {
    let host = std::env::var("BIGQUERY_EMULATOR_HOST").expect("BIGQUERY_EMULATOR_HOST");
    let backend = &env.app.config.backend;
    let (project, dataset) = (
        backend.project.as_deref().expect("project"),
        backend.dataset.as_deref().expect("dataset"),
    );
    let table: serde_json::Value = reqwest::get(format!(
        "http://{host}/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}"
    ))
    .await
    .expect("tables.get")
    .json()
    .await
    .expect("a table resource");
    table["timePartitioning"].clone()
}

#[tokio::test]
async fn the_example_and_fixture_tables_are_created_partitioned_by_their_date_column() {
    if backend() != Backend::BigQuery {
        return;
    }
    // The NBA example as `init` creates it on the emulators (Terraform in production).
    let env = TestEnv::with_pipeline(&crate::off_season::nba_pipeline()).await;
    for (table, column) in [
        ("team_schedule", "game_date"),
        ("source_player_boxscores", "game_date"),
        ("raw_player_boxscores", "game_date"),
        ("player_game_summary", "game_date"),
        ("player_daily_cache", "cache_date"),
        ("player_points_predictions", "game_date"),
    ] {
        assert_eq!(
            time_partitioning(&env, table).await,
            serde_json::json!({ "type": "DAY", "field": column }),
            "{table}"
        );
    }
    // The shared suite's fixture, on which the BigQuery tests run.
    let env = TestEnv::new("strict").await;
    for table in ["schedule", "feed", "raw", "summary", "features", "preds"] {
        assert_eq!(
            time_partitioning(&env, table).await["field"],
            "game_date",
            "{table}"
        );
    }
}
