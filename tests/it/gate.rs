//! The gate's checks, through the public API, on the embedded backend: the seed's checklist.

use crate::common;

use common::{TestEnv, d, dates};
use phasegate::gate::{self, date_range_completeness, entity_completeness, upstream_status};
use phasegate::ledger::RunStatus;

#[tokio::test]
async fn gap_detection_finds_missing_dates() {
    let env = TestEnv::new("strict").await;
    let mut days = dates("2024-01-01", 20);
    days.retain(|x| *x != d("2024-01-05") && *x != d("2024-01-06") && *x != d("2024-01-12"));
    env.exec_for(
        "INSERT INTO {dataset}.summary (game_date, team) VALUES (@data_date, 'A')",
        &days,
    )
    .await;

    let r = date_range_completeness(
        env.app.warehouse().as_ref(),
        "summary",
        "game_date",
        d("2024-01-01"),
        d("2024-01-20"),
        None,
    )
    .await
    .unwrap();
    assert!(r.has_gaps);
    assert!(!r.is_continuous);
    assert_eq!(r.gap_count, 3);
    assert_eq!(
        r.missing_dates,
        vec![d("2024-01-05"), d("2024-01-06"), d("2024-01-12")]
    );
    assert_eq!(r.expected_dates, 20);
    assert!((r.coverage_pct.unwrap() - 85.0).abs() < 1e-9);
    assert_eq!(r.date_range, (d("2024-01-01"), d("2024-01-20")));
}

#[tokio::test]
async fn complete_range_is_continuous_at_100_percent() {
    let env = TestEnv::new("strict").await;
    env.exec_for(
        "INSERT INTO {dataset}.summary (game_date, team) VALUES (@data_date, 'A')",
        &dates("2024-01-01", 10),
    )
    .await;
    let r = date_range_completeness(
        env.app.warehouse().as_ref(),
        "summary",
        "game_date",
        d("2024-01-01"),
        d("2024-01-10"),
        None,
    )
    .await
    .unwrap();
    assert!(!r.has_gaps);
    assert!(r.is_continuous);
    assert_eq!(r.gap_count, 0);
    assert_eq!(r.coverage_pct, Some(100.0));
}

#[tokio::test]
async fn off_days_of_the_reference_are_not_gaps() {
    let env = TestEnv::new("strict").await;
    // Games on the 1st, 3rd and 5th only; data on the 1st and 5th.
    let games = [d("2024-01-01"), d("2024-01-03"), d("2024-01-05")];
    env.season(&games).await;
    env.exec_for(
        "INSERT INTO {dataset}.summary (game_date, team) VALUES (@data_date, 'A')",
        &[games[0], games[2]],
    )
    .await;
    let config = env.app.config.clone();
    let schedule = config.reference("schedule");
    let r = date_range_completeness(
        env.app.warehouse().as_ref(),
        "summary",
        "game_date",
        d("2024-01-01"),
        d("2024-01-05"),
        schedule,
    )
    .await
    .unwrap();
    assert_eq!(r.expected_dates, 3);
    assert_eq!(r.missing_dates, vec![d("2024-01-03")]);
    // Calendar days instead: the two off-days read as gaps too.
    let every_day = date_range_completeness(
        env.app.warehouse().as_ref(),
        "summary",
        "game_date",
        d("2024-01-01"),
        d("2024-01-05"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(every_day.gap_count, 3);
}

#[tokio::test]
async fn upstream_failure_success_and_not_found() {
    let env = TestEnv::new("strict").await;
    let ledger = env.app.ledger().as_ref();
    env.record_run("ingest", "raw", d("2024-01-15"), RunStatus::Failed)
        .await;
    let failed = upstream_status(ledger, "ingest", d("2024-01-15"))
        .await
        .unwrap();
    assert!(!failed.processor_succeeded);
    assert_eq!(failed.status, "failed");
    assert!(!failed.safe_to_process);
    assert!(failed.error_message.unwrap().contains("boom"));

    env.record_run("ingest", "raw", d("2024-01-16"), RunStatus::Success)
        .await;
    let ok = upstream_status(ledger, "ingest", d("2024-01-16"))
        .await
        .unwrap();
    assert!(ok.processor_succeeded);
    assert_eq!(ok.status, "success");
    assert!(ok.safe_to_process);
    assert_eq!(ok.error_message, None);

    let none = upstream_status(ledger, "ingest", d("2024-01-17"))
        .await
        .unwrap();
    assert_eq!(none.status, "not_found");
    assert!(!none.safe_to_process);

    env.record_run("ingest", "raw", d("2024-01-18"), RunStatus::NoData)
        .await;
    let empty = upstream_status(ledger, "ingest", d("2024-01-18"))
        .await
        .unwrap();
    assert!(empty.safe_to_process, "no_data is a legitimate empty date");
    assert_eq!(empty.status, "no_data");
}

#[tokio::test]
async fn the_latest_run_wins() {
    let env = TestEnv::new("strict").await;
    env.record_run("ingest", "raw", d("2024-01-15"), RunStatus::Failed)
        .await;
    env.record_run("ingest", "raw", d("2024-01-15"), RunStatus::Success)
        .await;
    let s = upstream_status(env.app.ledger().as_ref(), "ingest", d("2024-01-15"))
        .await
        .unwrap();
    assert_eq!(s.status, "success");
}

#[tokio::test]
async fn entity_completeness_counts_each_entitys_last_games() {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 6);
    env.season(&days).await;
    // Team A has every game in the summary; team B misses one of its last five.
    env.exec_for(
        "INSERT INTO {dataset}.summary (game_date, team) VALUES (@data_date, 'A')",
        &days,
    )
    .await;
    let b_days: Vec<_> = days
        .iter()
        .copied()
        .filter(|x| *x != d("2024-01-04"))
        .collect();
    env.exec_for(
        "INSERT INTO {dataset}.summary (game_date, team) VALUES (@data_date, 'B')",
        &b_days,
    )
    .await;
    let config = env.app.config.clone();
    let spec = config.phases[2].processors[0]
        .checks
        .entity_completeness
        .clone()
        .unwrap();
    let r = entity_completeness(
        env.app.warehouse().as_ref(),
        &spec,
        config.reference("schedule").unwrap(),
        d("2024-01-07"),
    )
    .await
    .unwrap();
    assert_eq!(r.entities.len(), 2);
    let a = &r.entities[0];
    assert_eq!(
        (a.entity.as_str(), a.expected_count, a.actual_count),
        ("A", 5, 5)
    );
    assert!(a.is_complete && a.is_production_ready);
    let b = &r.entities[1];
    assert_eq!(
        (b.entity.as_str(), b.expected_count, b.actual_count),
        ("B", 5, 4)
    );
    assert_eq!(b.missing_count, 1);
    assert_eq!(b.completeness_pct, 80.0);
    assert!(!b.is_complete);
    assert!(
        !b.is_production_ready,
        "80% is under the default 90% threshold"
    );
    assert_eq!(r.not_ready_count, 1);
}

#[tokio::test]
async fn strict_mode_blocks_and_soft_mode_does_not() {
    for (mode, blocks) in [("strict", true), ("soft", false)] {
        let env = TestEnv::new(mode).await;
        let config = env.app.config.clone();
        let processor = &config.phases[2].processors[0];
        // No upstream run at all: not_found.
        let report = gate::evaluate(
            &config,
            processor,
            d("2024-01-10"),
            env.app.ledger().as_ref(),
            env.app.warehouse().as_ref(),
        )
        .await
        .unwrap();
        assert!(!report.production_ready(), "{mode}");
        assert_eq!(report.blocks(), blocks, "{mode}");
        assert!(report.problems[0].contains("not_found") || report.problems[0].contains("no run"));
    }
}

#[tokio::test]
async fn a_processor_without_checks_passes() {
    let env = TestEnv::new("strict").await;
    let config = env.app.config.clone();
    let report = gate::evaluate(
        &config,
        &config.phases[0].processors[0],
        d("2024-01-10"),
        env.app.ledger().as_ref(),
        env.app.warehouse().as_ref(),
    )
    .await
    .unwrap();
    assert!(report.production_ready());
    assert!(!report.blocks());
    assert!(report.upstream.is_empty() && report.historical_gaps.is_none());
}
