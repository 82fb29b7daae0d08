//! Backfill and verify through the real binary: error policies, resume, retry commands,
//! the multi-phase workflow.

use crate::common;

use std::process::{Command, Output};

use common::{PIPELINE, TestEnv, d, dates};
use phasegate::ledger::RunStatus;

/// Run `phasegate --config <env's config> <command line>` (arguments split on spaces).
fn phasegate(env: &TestEnv, command_line: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args(command_line.split_whitespace())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run phasegate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every `retry:` command printed.
fn retry_commands(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("retry: "))
        .map(String::from)
        .collect()
}

/// Run a command phasegate printed, exactly as printed, through the shell.
fn run_printed(command: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(command)
        .output()
        .expect("run the printed command")
}

async fn season_with_lost_feed(n: u32, lost: &str) -> (TestEnv, Vec<chrono::NaiveDate>) {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", n);
    env.season(&days).await;
    env.lose_feed(d(lost)).await;
    (env, days)
}

#[tokio::test]
async fn the_stop_policy_halts_at_the_first_failure() {
    let (env, days) = season_with_lost_feed(5, "2024-01-03").await;
    let out = phasegate(
        &env,
        "backfill --phase raw --from 2024-01-01 --to 2024-01-05 --error-policy stop",
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert_eq!(
        env.status("ingest", days[1]).await,
        Some(RunStatus::Success)
    );
    assert_eq!(env.status("ingest", days[2]).await, Some(RunStatus::Failed));
    assert_eq!(
        env.status("ingest", days[3]).await,
        None,
        "not run after the stop"
    );
    assert_eq!(env.status("ingest", days[4]).await, None);
    assert!(
        text.contains("2 succeeded, 0 no data, 1 failed, 2 skipped"),
        "{text}"
    );
    assert!(
        text.contains("NOT RUN: the backfill stopped at the failure on 2024-01-03"),
        "{text}"
    );
    assert_eq!(
        retry_commands(&text).len(),
        3,
        "one retry command per date not done: {text}"
    );
    // One command retries them all; run as printed after the fix, it finishes the range.
    let all = text
        .lines()
        .skip_while(|l| !l.starts_with("Retry all of them at once"))
        .nth(1)
        .expect("a retry-all command")
        .trim()
        .to_string();
    assert!(
        all.ends_with("--from 2024-01-03 --to 2024-01-05 --error-policy stop --parallel 1"),
        "{all}"
    );
    env.restore_feed(days[2]).await;
    let out = run_printed(&all);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    for day in &days {
        assert_eq!(
            env.status("ingest", *day).await,
            Some(RunStatus::Success),
            "{day}"
        );
    }
    // A backfill never cascades.
    let run = env.latest("ingest", days[0]).await.unwrap();
    assert!(run.skip_downstream_trigger);
    assert_eq!(run.published_at, None);
    assert_eq!(env.status("summary", days[0]).await, None);
}

#[tokio::test]
async fn the_continue_policy_runs_every_date() {
    let (env, days) = season_with_lost_feed(5, "2024-01-03").await;
    let out = phasegate(
        &env,
        "backfill --phase raw --from 2024-01-01 --to 2024-01-05 --error-policy continue --parallel 3",
    );
    assert_eq!(out.status.code(), Some(1));
    for (i, day) in days.iter().enumerate() {
        let expected = if i == 2 {
            RunStatus::Failed
        } else {
            RunStatus::Success
        };
        assert_eq!(env.status("ingest", *day).await, Some(expected), "{day}");
    }
    let text = stdout(&out);
    assert!(
        text.contains("4 succeeded, 0 no data, 1 failed, 0 skipped"),
        "{text}"
    );
    assert!(text.contains("2024-01-03  FAILED"), "{text}");
}

#[tokio::test]
async fn skip_dependents_skips_the_dates_that_look_back_over_a_failed_or_skipped_date() {
    // Precompute looks back 3 days (historical gaps only).
    let text = PIPELINE
        .replace("{MODE}", "strict")
        .replace("lookback_days = 7", "lookback_days = 3")
        .lines()
        .filter(|l| !l.starts_with("entity_completeness"))
        .collect::<Vec<_>>()
        .join("\n");
    let env = TestEnv::with_pipeline(&text).await;
    let days = dates("2024-01-01", 14);
    env.season(&days).await;
    env.lose_feed(d("2024-01-04")).await;
    for phase in ["raw", "analytics"] {
        let out = phasegate(
            &env,
            &format!(
                "backfill --phase {phase} --from 2024-01-01 --to 2024-01-14 --error-policy continue"
            ),
        );
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    }
    // Done before this backfill: the cascade of skips ends after them.
    for day in ["2024-01-09", "2024-01-10", "2024-01-11"] {
        env.record_run("features", "precompute", d(day), RunStatus::Success)
            .await;
    }
    let out = phasegate(
        &env,
        "backfill --phase precompute --from 2024-01-01 --to 2024-01-14 --error-policy skip-dependents --parallel 4",
    );
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    let status = |day: &str| {
        let env = &env;
        let day = d(day);
        async move { env.status("features", day).await }
    };
    for day in ["2024-01-01", "2024-01-02", "2024-01-03"] {
        assert_eq!(status(day).await, Some(RunStatus::Success), "{day}");
    }
    assert_eq!(status("2024-01-04").await, Some(RunStatus::Blocked));
    for day in ["2024-01-05", "2024-01-06", "2024-01-07"] {
        assert_eq!(status(day).await, None, "{day} must be skipped");
        assert!(
            report.contains(&format!(
                "{day}  SKIPPED: its checks look back 3 days over failed 2024-01-04"
            )),
            "{report}"
        );
    }
    // 2024-01-08 looks back only over skipped dates: skipped too, naming the nearest.
    assert_eq!(status("2024-01-08").await, None);
    assert!(
        report.contains("2024-01-08  SKIPPED: its checks look back 3 days over skipped 2024-01-07"),
        "{report}"
    );
    for day in ["2024-01-12", "2024-01-13", "2024-01-14"] {
        assert_eq!(status(day).await, Some(RunStatus::Success), "{day} runs");
    }
    assert!(
        report.contains("6 succeeded, 0 no data, 1 failed, 4 skipped, 3 already done"),
        "{report}"
    );
}

#[tokio::test]
async fn resume_skips_done_dates_and_a_printed_retry_command_repairs_its_date() {
    let (env, days) = season_with_lost_feed(4, "2024-01-02").await;
    let out = phasegate(
        &env,
        "backfill --phase raw --from 2024-01-01 --to 2024-01-04 --error-policy continue",
    );
    let text = stdout(&out);
    let retries = retry_commands(&text);
    assert_eq!(retries.len(), 1, "{text}");
    let first_run = env.latest("ingest", days[0]).await.unwrap().run_id;

    env.restore_feed(days[1]).await;
    let out = run_printed(&retries[0]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        env.status("ingest", days[1]).await,
        Some(RunStatus::Success)
    );

    // Resume over the whole range: nothing left to do, nothing re-run.
    let out = phasegate(
        &env,
        "backfill --phase raw --from 2024-01-01 --to 2024-01-04",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("0 succeeded, 0 no data, 0 failed, 0 skipped, 4 already done"));
    assert_eq!(
        env.latest("ingest", days[0]).await.unwrap().run_id,
        first_run
    );
    // --force runs them again.
    let out = phasegate(
        &env,
        "backfill --phase raw --from 2024-01-01 --to 2024-01-01 --force",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_ne!(
        env.latest("ingest", days[0]).await.unwrap().run_id,
        first_run
    );
}

#[tokio::test]
async fn dry_run_prints_the_plan_and_changes_nothing() {
    let env = TestEnv::new("strict").await;
    env.season(&dates("2024-01-01", 3)).await;
    env.record_run("ingest", "raw", d("2024-01-02"), RunStatus::Success)
        .await;
    let out = phasegate(
        &env,
        "backfill --phase raw --from 2024-01-01 --to 2024-01-03 --dry-run --output json",
    );
    assert_eq!(out.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json plan");
    let actions: Vec<&str> = plan["dates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["run", "skip", "run"]);
    assert!(
        plan["dates"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("already success")
    );
    assert_eq!(env.status("ingest", d("2024-01-01")).await, None);
}

#[tokio::test]
async fn verify_finds_gaps_and_passes_on_complete_data() {
    let env = TestEnv::new("strict").await;
    // Games every day but the 3rd (an off-day).
    let games: Vec<_> = dates("2024-01-01", 6)
        .into_iter()
        .filter(|x| *x != d("2024-01-03"))
        .collect();
    env.season(&games).await;
    env.lose_feed(d("2024-01-05")).await;
    phasegate(
        &env,
        "backfill --phase raw --from 2024-01-01 --to 2024-01-06 --error-policy continue",
    );
    let out = phasegate(&env, "verify --phase raw --from 2024-01-01 --to 2024-01-06");
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("5 expected dates"),
        "the off-day is not expected: {text}"
    );
    assert!(text.contains("1 MISSING: 2024-01-05"), "{text}");
    let csv = stdout(&phasegate(
        &env,
        "verify --phase raw --from 2024-01-01 --to 2024-01-06 --output csv",
    ));
    assert_eq!(
        csv,
        "phase,processor,table,missing_date\nraw,ingest,raw,2024-01-05\n"
    );

    env.restore_feed(d("2024-01-05")).await;
    phasegate(
        &env,
        "backfill --phase raw --from 2024-01-05 --to 2024-01-05",
    );
    let out = phasegate(
        &env,
        "verify --phase raw --from 2024-01-01 --to 2024-01-06 --output json",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["is_continuous"], true);
    assert_eq!(v["outputs"][0]["coverage_pct"], 100.0);
}

#[tokio::test]
async fn the_full_workflow_backfills_every_phase_over_three_days() {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 3);
    env.season(&days).await;
    let out = phasegate(
        &env,
        "backfill --all --from 2024-01-01 --to 2024-01-03 --yes --parallel 2",
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for p in ["ingest", "summary", "features", "preds"] {
        for day in &days {
            let run = env.latest(p, *day).await.unwrap();
            assert_eq!(run.status, RunStatus::Success, "{p} {day}");
            assert!(run.skip_downstream_trigger && run.published_at.is_none());
        }
    }
    assert!(
        text.contains("Every phase is complete and gap-free."),
        "{text}"
    );
}

#[tokio::test]
async fn the_workflow_stops_before_a_phase_whose_upstream_is_incomplete() {
    let (env, _) = season_with_lost_feed(3, "2024-01-02").await;
    let out = phasegate(
        &env,
        "backfill --all --from 2024-01-01 --to 2024-01-03 --yes --error-policy continue",
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("STOPPED: phase raw has failed or skipped dates"),
        "{text}"
    );
    assert!(text.contains("analytics      not started"), "{text}");
    assert_eq!(env.status("summary", d("2024-01-01")).await, None);

    // The same workflow as JSON: one document, the phases that ran and why it stopped.
    let out = phasegate(
        &env,
        "backfill --all --from 2024-01-01 --to 2024-01-03 --yes --error-policy continue --output json",
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["phases"].as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(doc["phases"][0]["phase"], "raw");
    assert!(
        doc["stopped"]
            .as_str()
            .unwrap_or_default()
            .contains("phase raw"),
        "{doc}"
    );
}

#[tokio::test]
async fn an_all_phase_dry_run_as_json_is_one_document_with_every_phase_in_order() {
    let env = TestEnv::new("strict").await;
    env.season(&dates("2024-01-01", 2)).await;
    let out = phasegate(
        &env,
        "backfill --all --from 2024-01-01 --to 2024-01-02 --dry-run --output json",
    );
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let phases: Vec<&str> = doc["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["phase"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(phases, ["raw", "analytics", "precompute", "predictions"]);
    assert_eq!(env.status("ingest", d("2024-01-01")).await, None);
}

#[tokio::test]
async fn usage_errors_exit_2_with_the_reason() {
    let env = TestEnv::new("strict").await;
    let cases = [
        (
            "backfill --all --from 2024-01-01 --to 2024-01-02",
            "pass --yes",
        ),
        (
            "backfill --phase raw --from 2024-01-01 --to 2024-01-02 --via-pubsub",
            "needs the Pub/Sub bus",
        ),
        (
            "backfill --phase raw --from 2024-01-05 --to 2024-01-02",
            "is after --to",
        ),
        (
            "backfill --phase nope --from 2024-01-01 --to 2024-01-02",
            "no phase `nope`",
        ),
    ];
    for (args, needle) in cases {
        let out = phasegate(&env, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = phasegate(
        &env,
        "backfill --phase raw --from 2024-13-01 --to 2024-01-02",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM-DD"));
}

#[tokio::test]
async fn a_retry_command_carries_the_environment_overrides_it_ran_with() {
    let (env, days) = season_with_lost_feed(3, "2024-01-02").await;
    // A configuration naming another database; the backfill runs on the test's database
    // through PHASEGATE_SQLITE_PATH, as a deployment's environment would set it.
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let db = env.db_path().display().to_string();
    let elsewhere = env.dir.path().join("elsewhere.toml");
    std::fs::write(
        &elsewhere,
        text.replace(&format!("{db:?}"), "\"not-this.db\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(&elsewhere)
        .args(
            "backfill --phase raw --from 2024-01-01 --to 2024-01-03 --error-policy continue"
                .split(' '),
        )
        .env("PHASEGATE_SQLITE_PATH", &db)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let retries = retry_commands(&stdout(&out));
    assert_eq!(retries.len(), 1, "{}", stdout(&out));
    assert!(
        retries[0].contains(&format!("PHASEGATE_SQLITE_PATH={db} ")),
        "{}",
        retries[0]
    );
    env.restore_feed(days[1]).await;
    // Run as printed, without the variable in the environment: it repairs the same database.
    let out = Command::new("bash")
        .arg("-c")
        .arg(&retries[0])
        .env_remove("PHASEGATE_SQLITE_PATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        env.status("ingest", days[1]).await,
        Some(RunStatus::Success)
    );
}
