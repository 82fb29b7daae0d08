//! Off-seasons and first days (issue 27): a look-back window in which the reference lists no
//! date is nothing to check when the reference lists dates elsewhere — a pipeline's first
//! day, a season's opening night after a summer break longer than every look-back — and
//! still fails closed when the reference has no rows or is missing. The NBA example's own
//! configuration, unchanged between seasons. Shared suite: `PHASEGATE_TEST_BACKEND=bigquery`
//! runs it on the BigQuery emulator.

use crate::common;

use std::collections::BTreeMap;

use chrono::NaiveDate;
use common::{Backend, TestEnv, backend, d, dates};
use phasegate::bus::Publisher;
use phasegate::gate;
use phasegate::ledger::{RunRecord, RunStatus};
use serde_json::json;

const TEAMS: [(&str, &str); 2] = [("BOS", "NYK"), ("LAL", "GSW")];

/// `examples/nba/pipeline.toml` as shipped, minus its `[backend]` section (the suite picks
/// the backend) and, on BigQuery, minus the SQLite statements (the fixture loader renames
/// `sql.sqlite` keys, and the example already has both dialects).
pub(crate) fn nba_pipeline() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/nba/pipeline.toml"
    ))
    .expect("examples/nba/pipeline.toml");
    let start = text.find("[backend]\n").expect("a [backend] section");
    let end = start + text[start..].find("\n\n").expect("its end");
    let text = format!("{}{}", &text[..start], &text[end..]);
    match backend() {
        Backend::Sqlite => text,
        Backend::BigQuery => drop_sqlite_statements(&text),
    }
}

fn drop_sqlite_statements(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with("sql.sqlite = [") {
            skipping = true;
        } else if skipping {
            skipping = line != "]";
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Games on `days` for both pairs of teams: the schedule, and two players' box scores per
/// team in the source feed.
async fn games(env: &TestEnv, days: &[NaiveDate]) {
    for (home, away) in TEAMS {
        for (team, opponent) in [(home, away), (away, home)] {
            env.exec_for(
                &format!(
                    "INSERT INTO {{dataset}}.team_schedule (game_date, game_id, team, opponent) \
                     VALUES (@data_date, '{home}-{away}', '{team}', '{opponent}')"
                ),
                days,
            )
            .await;
            env.exec_for(
                &format!(
                    "INSERT INTO {{dataset}}.source_player_boxscores \
                     (game_date, game_id, player, team, points, rebounds, assists, minutes) VALUES \
                     (@data_date, '{home}-{away}', '{team}-1', '{team}', 20, 5, 4, 32.0), \
                     (@data_date, '{home}-{away}', '{team}-2', '{team}', 11, 8, 2, 24.5)"
                ),
                days,
            )
            .await;
        }
    }
}

/// The daily trigger for `date`, as the scheduler's message would carry it, run through
/// every phase.
async fn trigger(env: &TestEnv, date: NaiveDate) {
    let bus = env.bus();
    bus.publish(
        "nba-trigger",
        &json!({ "data_date": date }),
        BTreeMap::new(),
    )
    .await
    .expect("publish");
    bus.wait_idle().await;
}

async fn cache_run(env: &TestEnv, date: NaiveDate) -> RunRecord {
    env.latest("player_daily_cache", date)
        .await
        .expect("precompute ran")
}

fn notes(run: &RunRecord) -> String {
    let findings = run.findings.as_ref().expect("findings recorded").value();
    findings["notes"].to_string()
}

#[tokio::test]
async fn the_first_date_and_the_next_seasons_opening_night_pass_in_strict_mode() {
    let env = TestEnv::with_pipeline(&nba_pipeline()).await;
    let season_1 = [d("2024-10-22"), d("2024-10-24"), d("2024-10-25")];
    // 361 days later: far longer than the 14-day gap look-back and the 30-day entity window.
    let opening_night = d("2025-10-21");
    games(&env, &season_1).await;
    games(&env, &[opening_night]).await;

    // The pipeline's very first date: nothing before it is expected.
    trigger(&env, season_1[0]).await;
    let first = cache_run(&env, season_1[0]).await;
    assert_eq!(first.status, RunStatus::NoData, "no history yet: {first:?}");
    assert!(first.production_ready, "{:?}", first.findings);
    let first_notes = notes(&first);
    assert!(
        first_notes.contains("no date expected in 2024-10-08..2024-10-21"),
        "{first_notes}"
    );
    assert!(
        first_notes.contains("no entity expected in 2024-09-22..2024-10-21"),
        "{first_notes}"
    );
    for day in &season_1[1..] {
        trigger(&env, *day).await;
    }

    // Opening night of the next season, with the same configuration.
    trigger(&env, opening_night).await;
    let run = cache_run(&env, opening_night).await;
    assert_eq!(run.status, RunStatus::Success, "{:?}", run.errors);
    assert!(run.production_ready, "{:?}", run.findings);
    assert!(
        notes(&run).contains("no date expected in 2025-10-07..2025-10-20"),
        "{}",
        notes(&run)
    );
    let predictions = env
        .latest("player_points_predictions", opening_night)
        .await
        .expect("predictions ran");
    assert_eq!(predictions.status, RunStatus::Success);
    assert!(predictions.production_ready);
    assert_eq!(
        env.count("player_points_predictions", "game_date", opening_night)
            .await,
        8,
        "every player of both games predicted from last season's history"
    );

    // Inside the season the checks keep their teeth: a lost summary row of 2024-10-24 is a
    // gap two days later.
    env.exec_for(
        "DELETE FROM {dataset}.player_game_summary WHERE game_date = @data_date",
        &[season_1[1]],
    )
    .await;
    let config = env.app.config.clone();
    let report = gate::evaluate(
        &config,
        &config.phases[2].processors[0],
        season_1[2],
        env.app.ledger().as_ref(),
        env.app.warehouse().as_ref(),
    )
    .await
    .expect("gate");
    assert!(report.blocks(), "{}", report.summary());
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[tokio::test]
async fn an_empty_reference_still_blocks_the_first_date() {
    // The same configuration with no schedule rows at all: the reference cannot tell what
    // was expected, so strict precompute blocks (never "nothing to check").
    let env = TestEnv::with_pipeline(&nba_pipeline()).await;
    let day = d("2025-10-21");
    trigger(&env, day).await;
    let run = cache_run(&env, day).await;
    assert_eq!(run.status, RunStatus::Blocked);
    let errors = run.errors.unwrap_or_default();
    assert!(
        errors.contains("team_schedule lists no date in 2025-10-07..2025-10-20")
            && errors.contains("an empty or missing reference"),
        "{errors}"
    );
    assert!(errors.contains("team_schedule lists no entity"), "{errors}");
}

#[tokio::test]
async fn a_missing_reference_table_fails_closed() {
    let env = TestEnv::with_pipeline(&nba_pipeline()).await;
    let day = d("2025-10-21");
    games(&env, &dates("2025-10-21", 1)).await;
    env.exec_for("DROP TABLE {dataset}.team_schedule", &[day])
        .await;
    let config = env.app.config.clone();
    env.record_run("player_game_summary", "analytics", day, RunStatus::Success)
        .await;
    let outcome = gate::evaluate(
        &config,
        &config.phases[2].processors[0],
        day,
        env.app.ledger().as_ref(),
        env.app.warehouse().as_ref(),
    )
    .await;
    let err = outcome.expect_err("a missing reference is an error, never a pass");
    assert!(err.to_string().contains("team_schedule"), "{err}");
}
