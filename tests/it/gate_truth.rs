//! Gates that tell the truth (issue 10): no silent pass on an empty output or an empty
//! reference, no false block from an entity long gone, `days` windows and timestamp date
//! columns on both backends. Shared suite: `PHASEGATE_TEST_BACKEND=bigquery` runs it on the
//! BigQuery emulator.

use crate::common;

use std::path::Path;

use chrono::NaiveDate;
use common::{Backend, PIPELINE, TestEnv, backend, d, dates};
use phasegate::config::{Config, WindowKind};
use phasegate::gate::{self, GateReport};
use phasegate::ledger::RunStatus;

/// The fixture's entity check, as written in [`PIPELINE`].
const ENTITY_WINDOW: &str = r#"window = "games", lookback = 5"#;

async fn env_with(mode: &str, edits: &[(&str, &str)]) -> TestEnv {
    let mut text = PIPELINE.replace("{MODE}", mode);
    for (from, to) in edits {
        assert!(text.contains(from), "fixture has `{from}`");
        text = text.replace(from, to);
    }
    TestEnv::with_pipeline(&text).await
}

/// Insert one row per date for `team` into `table` (`game_date`, `team`).
async fn rows(env: &TestEnv, table: &str, team: &str, days: &[NaiveDate]) {
    env.exec_for(
        &format!("INSERT INTO {{dataset}}.{table} (game_date, team) VALUES (@data_date, '{team}')"),
        days,
    )
    .await;
}

/// The precompute processor's gate for `date`, its upstream marked done first.
async fn features_gate(env: &TestEnv, date: NaiveDate) -> GateReport {
    env.record_run("summary", "analytics", date, RunStatus::Success)
        .await;
    let config = env.app.config.clone();
    gate::evaluate(
        &config,
        &config.phases[2].processors[0],
        date,
        env.app.ledger().as_ref(),
        env.app.warehouse().as_ref(),
    )
    .await
    .expect("gate")
}

#[tokio::test]
async fn an_expected_date_with_zero_output_rows_fails_unless_the_processor_allows_it() {
    // The ingest output declares `expected = "schedule"` and nothing else: rows are required.
    let written = r#"output = { table = "raw", date_column = "game_date", expected = "schedule", require_rows = true }"#;
    let default_output =
        r#"output = { table = "raw", date_column = "game_date", expected = "schedule" }"#;
    let env = env_with("strict", &[(written, default_output)]).await;
    let day = d("2024-01-02");
    env.season(&[d("2024-01-01"), day]).await;
    env.lose_feed(day).await;
    env.trigger(day, false).await;
    let run = env.latest("ingest", day).await.expect("ingest ran");
    assert_eq!(run.status, RunStatus::Failed, "0 rows on a scheduled date");
    assert!(
        run.errors
            .as_deref()
            .unwrap_or_default()
            .contains("expects 2024-01-02"),
        "{:?}",
        run.errors
    );
    assert_eq!(
        env.status("summary", day).await,
        None,
        "a failed run announces nothing: downstream does not build on it"
    );
    // An off-day (not in the schedule) with 0 rows is a legitimate empty date.
    let off_day = d("2024-01-03");
    env.trigger(off_day, false).await;
    assert_eq!(env.status("ingest", off_day).await, Some(RunStatus::NoData));

    // The explicit opt-out: 0 rows on a scheduled date is recorded `no_data`.
    let opted_out = r#"output = { table = "raw", date_column = "game_date", expected = "schedule", require_rows = false }"#;
    let env = env_with("strict", &[(written, opted_out)]).await;
    env.season(&[day]).await;
    env.lose_feed(day).await;
    env.trigger(day, false).await;
    assert_eq!(env.status("ingest", day).await, Some(RunStatus::NoData));
}

#[tokio::test]
async fn an_empty_reference_blocks_in_strict_mode_and_is_a_finding_in_soft_mode() {
    let day = d("2024-01-10");
    for (mode, features) in [("strict", RunStatus::Blocked), ("soft", RunStatus::NoData)] {
        // No schedule at all: raw and analytics expect nothing (no_data), but precompute's
        // look-back cannot be checked, so it does not pass as "100 % complete".
        let env = TestEnv::new(mode).await;
        env.trigger(day, false).await;
        assert_eq!(env.status("summary", day).await, Some(RunStatus::NoData));
        let run = env.latest("features", day).await.expect("features ran");
        assert_eq!(run.status, features, "{mode}");
        assert!(!run.production_ready, "{mode}");
        let findings = run.findings.expect("findings recorded").value();
        let gaps = &findings["historical_gaps"];
        assert_eq!(gaps["reference_empty"], true, "{findings}");
        assert_eq!(gaps["expected_dates"], 0);
        assert!(gaps["coverage_pct"].is_null(), "never 100 %: {findings}");
        assert_eq!(gaps["is_continuous"], false);
        let entities = &findings["entity_completeness"];
        assert_eq!(entities["reference_empty"], true, "{findings}");
        assert_eq!(entities["entities"].as_array().map(Vec::len), Some(0));
        let problems = findings["problems"].to_string();
        assert!(
            problems.contains("schedule lists no date in 2024-01-03..2024-01-09"),
            "{problems}"
        );
        assert!(problems.contains("schedule lists no entity"), "{problems}");
    }
}

#[tokio::test]
async fn the_season_start_is_not_an_empty_reference() {
    // The fixture's season starts 2024-01-01 (`not_before`, `season_start`): on that day
    // nothing is expected before it, which is not a finding.
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let report = features_gate(&env, day).await;
    assert!(report.production_ready(), "{}", report.summary());
    let gaps = report.historical_gaps.expect("gaps checked");
    assert_eq!((gaps.expected_dates, gaps.reference_empty), (0, false));
    assert!(gaps.is_continuous);
}

#[tokio::test]
async fn a_retired_entity_does_not_block_a_later_date_whose_active_entities_are_complete() {
    let env = TestEnv::new("strict").await;
    let date = d("2024-02-15");
    // Station X reported once, on 2024-01-02, and that reading never arrived; A and B have
    // been complete every day since February.
    rows(&env, "schedule", "X", &[d("2024-01-02")]).await;
    let active = dates("2024-02-01", 14);
    for team in ["A", "B"] {
        rows(&env, "schedule", team, &active).await;
        rows(&env, "summary", team, &active).await;
    }
    let report = features_gate(&env, date).await;
    assert!(report.production_ready(), "{}", report.summary());
    assert!(!report.blocks());
    let e = report.entity_completeness.expect("entity check ran");
    let names: Vec<&str> = e.entities.iter().map(|x| x.entity.as_str()).collect();
    assert_eq!(
        names,
        ["A", "B"],
        "only the entities expected in the window"
    );
    assert_eq!(e.window, WindowKind::Occurrences);
    assert_eq!(e.window_days, 20, "4 days per occurrence by default");
    assert_eq!(e.window_range, (d("2024-01-26"), d("2024-02-14")));
    assert!(e.entities.iter().all(|x| x.expected_count == 5));

    // The same missing reading inside the window does block: the check still has teeth.
    rows(&env, "schedule", "X", &[d("2024-02-10")]).await;
    let report = features_gate(&env, date).await;
    assert!(report.blocks(), "X misses its only game in the window");
    let x = &report.entity_completeness.expect("entity check").entities[2];
    assert_eq!(
        (x.entity.as_str(), x.expected_count, x.actual_count),
        ("X", 1, 0)
    );
}

#[tokio::test]
async fn a_days_window_counts_the_reference_dates_of_the_last_n_days() {
    let env = env_with(
        "strict",
        &[(ENTITY_WINDOW, r#"window = "days", lookback = 7"#)],
    )
    .await;
    let days = dates("2024-01-01", 9);
    env.season(&days).await;
    rows(&env, "summary", "A", &days).await;
    let b_days: Vec<_> = days
        .iter()
        .copied()
        .filter(|x| *x != d("2024-01-08"))
        .collect();
    rows(&env, "summary", "B", &b_days).await;
    let report = features_gate(&env, d("2024-01-10")).await;
    assert!(report.blocks());
    let e = report.entity_completeness.expect("entity check ran");
    assert_eq!(e.window, WindowKind::Days);
    assert_eq!(e.window_days, 7);
    assert_eq!(e.window_range, (d("2024-01-03"), d("2024-01-09")));
    let counts: Vec<(&str, u64, u64)> = e
        .entities
        .iter()
        .map(|x| (x.entity.as_str(), x.expected_count, x.actual_count))
        .collect();
    assert_eq!(counts, [("A", 7, 7), ("B", 7, 6)]);
    assert_eq!(e.not_ready_count, 1, "6/7 is under 90 %");
}

/// The fixture with `summary.game_date` holding date-times: TIMESTAMP on BigQuery, datetime
/// text on SQLite.
async fn env_with_timestamps() -> TestEnv {
    env_with(
        "strict",
        &[(
            "summary (game_date DATE NOT NULL",
            "summary (game_date TIMESTAMP NOT NULL",
        )],
    )
    .await
}

async fn timestamp_rows(env: &TestEnv, team: &str, days: &[NaiveDate]) {
    let at_evening = match backend() {
        Backend::Sqlite => "@data_date || ' 19:30:00'",
        Backend::BigQuery => "TIMESTAMP_ADD(TIMESTAMP(@data_date), INTERVAL 1170 MINUTE)",
    };
    env.exec_for(
        &format!(
            "INSERT INTO {{dataset}}.summary (game_date, team) VALUES ({at_evening}, '{team}')"
        ),
        days,
    )
    .await;
}

#[tokio::test]
async fn timestamp_date_columns_count_by_calendar_day_in_every_check() {
    let env = env_with_timestamps().await;
    // Seven scheduled days; summary rows (at 19:30) on the first six, B missing the 4th.
    env.season(&dates("2024-01-01", 7)).await;
    let days = dates("2024-01-01", 6);
    timestamp_rows(&env, "A", &days).await;
    let b_days: Vec<_> = days
        .iter()
        .copied()
        .filter(|x| *x != d("2024-01-04"))
        .collect();
    timestamp_rows(&env, "B", &b_days).await;

    assert_eq!(env.count("summary", "game_date", d("2024-01-04")).await, 1);
    let report = features_gate(&env, d("2024-01-07")).await;
    let gaps = report.historical_gaps.as_ref().expect("gaps checked");
    assert_eq!(gaps.expected_dates, 6);
    assert!(gaps.missing_dates.is_empty(), "{gaps:?}");
    let e = report.entity_completeness.as_ref().expect("entity check");
    let counts: Vec<(&str, u64, u64)> = e
        .entities
        .iter()
        .map(|x| (x.entity.as_str(), x.expected_count, x.actual_count))
        .collect();
    assert_eq!(counts, [("A", 5, 5), ("B", 5, 4)]);

    // `verify` reads the same way: summary's output on the timestamp column, the 7th missing.
    let v = phasegate::verify::verify(
        &env.app.config,
        env.app.ledger().as_ref(),
        env.app.warehouse().as_ref(),
        "analytics",
        d("2024-01-01"),
        d("2024-01-07"),
    )
    .await
    .expect("verify");
    assert_eq!(v.outputs[0].expected_dates, 7);
    assert_eq!(v.outputs[0].missing_dates, [d("2024-01-07")]);
}

fn validate(text: &str) -> Result<Config, String> {
    let text = text.replace("{MODE}", "soft");
    let mut config = Config::parse(&text, Path::new("p.toml")).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn window_options_are_validated_and_games_is_an_alias() {
    let spec = |c: &Config| {
        c.phases[2].processors[0]
            .checks
            .entity_completeness
            .clone()
            .expect("entity check")
    };
    let games = validate(PIPELINE).expect("valid");
    assert_eq!(spec(&games).window, WindowKind::Occurrences);
    assert_eq!(games.phases[2].processors[0].checks.lookback_days(), 20);

    let bounded = PIPELINE.replace(
        ENTITY_WINDOW,
        r#"window = "occurrences", lookback = 5, window_days = 12"#,
    );
    let c = validate(&bounded).expect("valid");
    assert_eq!(spec(&c).window_days(), 12);
    assert_eq!(c.phases[2].processors[0].checks.lookback_days(), 12);

    let days_with_bound = PIPELINE.replace(
        ENTITY_WINDOW,
        r#"window = "days", lookback = 5, window_days = 12"#,
    );
    let err = validate(&days_with_bound).expect_err("window_days on a days window");
    assert!(err.contains("entity_completeness.window_days"), "{err}");

    let too_short = PIPELINE.replace(
        ENTITY_WINDOW,
        r#"window = "games", lookback = 5, window_days = 3"#,
    );
    let err = validate(&too_short).expect_err("3 days cannot hold 5 occurrences");
    assert!(err.contains("cannot hold 5 occurrences"), "{err}");
}

#[test]
fn rows_are_required_by_default_wherever_a_reference_is_expected() {
    let c = validate(
        &PIPELINE
            .replace("{MODE}", "soft")
            .replace(", require_rows = true", ""),
    )
    .expect("valid");
    let outputs: Vec<bool> = c
        .phases
        .iter()
        .map(|p| {
            p.processors[0]
                .output
                .as_ref()
                .is_some_and(|o| o.require_rows)
        })
        .collect();
    assert_eq!(
        outputs,
        [true, true, false, false],
        "features and preds expect no reference"
    );
    let err = validate(&PIPELINE.replace(
        r#"output = { table = "features", date_column = "game_date" }"#,
        r#"output = { table = "features", date_column = "game_date", require_rows = true }"#,
    ))
    .expect_err("require_rows without expected");
    assert!(err.contains("require_rows needs `expected`"), "{err}");
}
