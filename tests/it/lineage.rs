//! Lineage and staleness: a corrected upstream run flows downstream; with the cascade off,
//! the downstream date is stale until it is re-run; not-production-ready propagates; and two
//! pipelines sharing one ledger do not see each other's runs.

use crate::common;

use common::{TestEnv, d};
use phasegate::ledger::{RunStatus, TriggerKind, UpstreamRun};
use phasegate::worker::{PhaseOutcome, RunRequest};

async fn run(env: &TestEnv, phase: &str, date: chrono::NaiveDate, force: bool, skip: bool) {
    let mut req = RunRequest::new(phase, date, TriggerKind::Cli);
    req.force = force;
    req.skip_downstream = skip;
    let outcome = env.app.worker.run_phase(&req).await.unwrap();
    assert!(matches!(outcome, PhaseOutcome::Done { .. }), "{outcome:?}");
    if let Some(bus) = &env.app.bus {
        bus.wait_idle().await;
    }
}

async fn latest_upstream(
    env: &TestEnv,
    processor: &str,
    date: chrono::NaiveDate,
) -> Vec<UpstreamRun> {
    let run = env.latest(processor, date).await.unwrap();
    vec![UpstreamRun {
        processor: processor.to_string(),
        run_id: run.run_id,
    }]
}

#[tokio::test]
async fn a_forced_upstream_rerun_with_the_cascade_on_reruns_downstream_with_the_correction() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    env.trigger(day, false).await;
    assert_eq!(env.count("summary", "game_date", day).await, 2);
    let old_summary = env.latest("summary", day).await.unwrap();

    // The source is corrected (a late team C), raw is re-run without the skip flag.
    env.exec_for(
        "INSERT INTO {dataset}.feed (game_date, team) VALUES (@data_date, 'C')",
        &[day],
    )
    .await;
    run(&env, "raw", day, true, false).await;

    let new_summary = env.latest("summary", day).await.unwrap();
    assert_ne!(new_summary.run_id, old_summary.run_id, "summary re-ran");
    assert_eq!(
        new_summary.upstream_runs,
        Some(latest_upstream(&env, "ingest", day).await),
        "and consumed the corrected run"
    );
    assert_eq!(env.count("summary", "game_date", day).await, 3);
    assert_eq!(env.status("preds", day).await, Some(RunStatus::Success));
}

#[tokio::test]
async fn with_the_skip_flag_the_downstream_date_is_stale_until_rerun() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    env.trigger(day, false).await;
    env.exec_for(
        "INSERT INTO {dataset}.feed (game_date, team) VALUES (@data_date, 'C')",
        &[day],
    )
    .await;
    run(&env, "raw", day, true, true).await;

    let summary = env.latest("summary", day).await.unwrap();
    let upstream = latest_upstream(&env, "ingest", day).await;
    assert!(
        summary.is_stale(&upstream),
        "summary consumed the old raw run"
    );
    assert_eq!(env.count("summary", "game_date", day).await, 2);

    // Re-running analytics without --force repairs it: a stale date is not done.
    run(&env, "analytics", day, false, true).await;
    let summary = env.latest("summary", day).await.unwrap();
    assert!(!summary.is_stale(&upstream));
    assert_eq!(env.count("summary", "game_date", day).await, 3);
    let v = phasegate::verify::verify(
        &env.app.config,
        env.app.ledger().as_ref(),
        env.app.warehouse().as_ref(),
        "analytics",
        day,
        day,
    )
    .await
    .unwrap();
    assert!(v.is_continuous, "repaired");
}

#[tokio::test]
async fn not_production_ready_propagates_two_phases_down() {
    let env = TestEnv::new("soft").await;
    // Day 2 has a hole in its history (day 1's raw feed missing): features is soft-checked.
    let days = common::dates("2024-01-01", 3);
    env.season(&days).await;
    env.lose_feed(days[0]).await;
    for day in &days[1..] {
        env.trigger(*day, false).await;
    }
    let features = env.latest("features", days[2]).await.unwrap();
    assert!(!features.production_ready, "soft gap: {features:?}");
    let preds = env.latest("preds", days[2]).await.unwrap();
    assert!(preds.status.is_done());
    assert!(
        !preds.production_ready,
        "preds consumed a not-production-ready run"
    );
    let summary = env.latest("summary", days[2]).await.unwrap();
    assert!(summary.production_ready);
}

#[tokio::test]
async fn two_pipelines_in_one_ledger_do_not_see_each_others_runs() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    // A second pipeline with the same processor names, on the same database / dataset.
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replacen("name = \"test\"", "name = \"other\"", 1);
    let path = env.dir.path().join("other.toml");
    std::fs::write(&path, &text).unwrap();
    let mut config = phasegate::config::Config::parse(&text, &path).unwrap();
    config.validate().unwrap();
    let other = phasegate::startup::build(config).await.unwrap();

    let mut req = RunRequest::new("raw", day, TriggerKind::Cli);
    req.skip_downstream = true;
    let outcome = other.worker.run_phase(&req).await.unwrap();
    assert!(matches!(outcome, PhaseOutcome::Done { .. }), "{outcome:?}");
    let theirs = other.ledger().latest("ingest", day).await.unwrap().unwrap();
    assert_eq!(theirs.pipeline, "other");
    assert_eq!(
        env.latest("ingest", day).await,
        None,
        "test's ledger is untouched"
    );

    // And this pipeline runs its own date regardless of the other's run.
    run(&env, "raw", day, false, true).await;
    let ours = env.latest("ingest", day).await.unwrap();
    assert_ne!(ours.run_id, theirs.run_id);
    assert_eq!(ours.pipeline, "test");
}

#[tokio::test]
async fn a_soft_run_made_before_its_upstream_existed_is_rerun_once_the_upstream_runs() {
    // Soft mode records and processes even without its upstream: that run consumed nothing,
    // which is not "lineage unknown" — once the upstream has run, it is stale.
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    run(&env, "precompute", day, false, true).await;
    let early = env.latest("features", day).await.unwrap();
    assert_eq!(
        early.upstream_runs,
        Some(Vec::new()),
        "consumed nothing, and says so"
    );
    assert!(!early.production_ready, "its upstream had not run");

    // The daily trigger now runs the whole cascade: precompute is run again on summary's run.
    env.trigger(day, false).await;
    let rerun = env.latest("features", day).await.unwrap();
    assert_ne!(rerun.run_id, early.run_id, "the early run was not reused");
    assert_eq!(
        rerun.upstream_runs,
        Some(latest_upstream(&env, "summary", day).await)
    );
    assert!(rerun.production_ready, "{:?}", rerun.findings);
}

/// Raw is corrected with the skip flag, so summary's run for the day is stale; precompute is
/// then forced on that day (as a backfill of one phase would). Returns the stale summary run.
async fn precompute_on_a_stale_summary(env: &TestEnv, day: chrono::NaiveDate) -> String {
    env.season(&[day]).await;
    env.trigger(day, false).await;
    env.exec_for(
        "INSERT INTO {dataset}.feed (game_date, team) VALUES (@data_date, 'C')",
        &[day],
    )
    .await;
    run(env, "raw", day, true, true).await;
    let summary = env.latest("summary", day).await.unwrap();
    assert!(summary.is_stale(&latest_upstream(env, "ingest", day).await));
    summary.run_id
}

#[tokio::test]
async fn a_run_consuming_a_stale_upstream_run_is_not_production_ready_in_soft_mode() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    let stale = precompute_on_a_stale_summary(&env, day).await;
    assert!(env.latest("features", day).await.unwrap().production_ready);

    run(&env, "precompute", day, true, true).await;
    let features = env.latest("features", day).await.unwrap();
    assert_eq!(features.status, RunStatus::Success, "soft: processed");
    assert!(!features.production_ready, "its upstream run is stale");
    let findings = features.findings.unwrap().as_str().to_string();
    assert!(
        findings.contains(&format!("summary run {stale}")) && findings.contains("stale"),
        "the finding names the stale upstream run: {findings}"
    );

    // Once analytics is re-run on the corrected raw run, precompute is production-ready.
    run(&env, "analytics", day, false, true).await;
    run(&env, "precompute", day, false, true).await;
    let features = env.latest("features", day).await.unwrap();
    assert!(features.production_ready, "{:?}", features.findings);
}

#[tokio::test]
async fn a_strict_gate_blocks_a_run_consuming_a_stale_upstream_run() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    let stale = precompute_on_a_stale_summary(&env, day).await;

    let mut req = RunRequest::new("precompute", day, TriggerKind::Cli);
    req.force = true;
    req.skip_downstream = true;
    let outcome = env.app.worker.run_phase(&req).await.unwrap();
    let PhaseOutcome::Blocked { report, .. } = outcome else {
        panic!("strict gate must block on a stale upstream run: {outcome:?}");
    };
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&format!("summary run {stale}")) && p.contains("stale")),
        "{:?}",
        report.problems
    );
    assert_eq!(env.status("features", day).await, Some(RunStatus::Blocked));
}
