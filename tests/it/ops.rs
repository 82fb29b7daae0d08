//! The day-to-day commands through the real binary: `status` in every output, `freshness`,
//! and the command line's edges (refused outputs, reversed ranges, closed pipes).

use crate::common;

use std::io::Read;
use std::process::{Command, Output, Stdio};

use common::{PIPELINE, TestEnv, d};
use serde_json::Value;

fn phasegate(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .output()
        .expect("run phasegate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const PROCESSORS: [&str; 4] = ["ingest", "summary", "features", "preds"];

/// 2024-01-01 runs the whole cascade; 2024-01-02's feed is missing (raw fails);
/// 2024-01-03 is never triggered.
async fn three_days() -> TestEnv {
    let env = TestEnv::new("soft").await;
    env.season(&[d("2024-01-01"), d("2024-01-02"), d("2024-01-03")])
        .await;
    env.lose_feed(d("2024-01-02")).await;
    env.trigger(d("2024-01-01"), false).await;
    env.trigger(d("2024-01-02"), false).await;
    env
}

#[tokio::test]
async fn status_json_is_one_document_with_every_processor_and_date() {
    let env = three_days().await;
    let out = phasegate(
        &env,
        &[
            "status",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-03",
            "--output",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    let cells = doc["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), PROCESSORS.len() * 3);
    let cell = |p: &str, date: &str| {
        cells
            .iter()
            .find(|c| c["processor"] == p && c["data_date"] == date)
            .unwrap_or_else(|| panic!("no cell {p} {date}"))
            .clone()
    };
    assert_eq!(cell("preds", "2024-01-01")["state"], "success");
    let failed = cell("ingest", "2024-01-02");
    assert_eq!(failed["state"], "failed");
    assert!(failed["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(cell("summary", "2024-01-02")["state"], "not_run");
    assert_eq!(cell("ingest", "2024-01-03")["state"], "not_run");
    assert_eq!(doc["processors"][1]["phase"], "analytics");
}

#[tokio::test]
async fn status_html_is_a_self_contained_calendar_of_every_processor_and_date() {
    let env = three_days().await;
    let out = phasegate(
        &env,
        &[
            "status",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-03",
            "--output",
            "html",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let html = stdout(&out);
    assert!(html.starts_with("<!DOCTYPE html>"));
    for p in PROCESSORS {
        assert!(
            html.contains(&format!("<tr data-processor=\"{p}\">")),
            "row for {p}"
        );
    }
    assert!(html.contains("data-date=\"2024-01-01\" data-state=\"success\""));
    assert!(html.contains("data-date=\"2024-01-02\" data-state=\"failed\""));
    assert!(html.contains("data-date=\"2024-01-03\" data-state=\"not_run\""));
    // 4 processors × 3 dates, each cell with its reason on hover.
    assert_eq!(html.matches("<td class=\"c s-").count(), 12);
    assert!(html.contains("title=\"ingest 2024-01-02: failed — "));
    for legend in [
        "success",
        "no data",
        "failed",
        "blocked",
        "running",
        "not run",
        "not production-ready",
        "stale",
    ] {
        assert!(html.contains(legend), "legend lacks {legend}");
    }
    // Nothing is fetched: no external scripts, styles, images or fonts.
    for external in ["http://", "https://", "<script", "<link", "@import", "url("] {
        assert!(!html.contains(external), "page references {external}");
    }
}

#[tokio::test]
async fn status_csv_and_table() {
    let env = three_days().await;
    let out = phasegate(
        &env,
        &[
            "status",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-03",
            "--output",
            "csv",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    let headers = reader.headers().expect("header").clone();
    assert_eq!(&headers[0], "data_date");
    assert!(headers.iter().any(|h| h == "state"));
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 12);
    let table = phasegate(
        &env,
        &["status", "--from", "2024-01-01", "--to", "2024-01-03"],
    );
    let text = stdout(&table);
    assert!(
        text.contains("2024-01-02") && text.contains("failed"),
        "{text}"
    );
}

#[tokio::test]
async fn unsupported_outputs_are_refused_by_the_parser() {
    let env = TestEnv::new("soft").await;
    for args in [
        vec![
            "status",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-02",
            "--output",
            "xml",
        ],
        vec![
            "check",
            "--phase",
            "raw",
            "--date",
            "2024-01-01",
            "--output",
            "csv",
        ],
        vec![
            "history",
            "--phase",
            "raw",
            "--date",
            "2024-01-01",
            "--output",
            "html",
        ],
        vec![
            "backfill",
            "--phase",
            "raw",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-02",
            "--output",
            "csv",
        ],
    ] {
        let out = phasegate(&env, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("invalid value"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn a_reversed_range_is_a_usage_error_on_every_command_with_a_range() {
    let env = TestEnv::new("soft").await;
    for cmd in [
        vec!["status"],
        vec!["verify", "--phase", "raw"],
        vec!["backfill", "--phase", "raw", "--dry-run"],
        vec!["backfill", "--all", "--yes", "--dry-run"],
    ] {
        let mut args = cmd.clone();
        args.extend(["--from", "2024-01-05", "--to", "2024-01-01"]);
        let out = phasegate(&env, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("--from 2024-01-05 is after --to 2024-01-01"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?} printed {}", stdout(&out));
    }
}

#[test]
fn a_missing_config_file_says_the_os_error_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .args(["--config", "/nonexistent/pipeline.toml", "status"])
        .args(["--from", "2024-01-01", "--to", "2024-01-02"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/pipeline.toml"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn demo_refuses_a_short_season_and_says_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .args(["demo", "--days", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at least 21") && err.contains("looks back 14 days"),
        "{err}"
    );
}

/// Spawn with stdout a pipe whose reading end is closed before anything is written.
fn with_closed_stdout(env: &TestEnv, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    (child.wait().expect("wait").code(), err)
}

#[tokio::test]
async fn a_closed_pipe_is_a_quiet_exit_0() {
    let env = three_days().await;
    for args in [
        // Written by the operations commands (handled as an I/O error)...
        vec![
            "status",
            "--from",
            "2023-01-01",
            "--to",
            "2024-12-31",
            "--output",
            "html",
        ],
        vec!["status", "--from", "2024-01-01", "--to", "2024-01-03"],
        vec!["history", "--phase", "raw", "--date", "2024-01-02"],
        // ...and by commands that print as they go.
        vec![
            "verify",
            "--phase",
            "raw",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-03",
        ],
        vec!["check", "--phase", "analytics", "--date", "2024-01-02"],
    ] {
        let (code, err) = with_closed_stdout(&env, &args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} wrote to stderr: {err}");
    }
}

fn with_freshness() -> String {
    PIPELINE.replace("{MODE}", "soft").replacen(
        "completion_topic = \"test-raw-done\"\n",
        "completion_topic = \"test-raw-done\"\nfreshness = { by = \"09:00\", timezone = \"America/New_York\", offset_days = -1 }\n",
        1,
    )
}

#[tokio::test]
async fn freshness_is_late_until_the_expected_date_is_done() {
    let env = TestEnv::with_pipeline(&with_freshness()).await;
    env.season(&[d("2024-01-01")]).await;
    // 10:00 in New York on the 2nd: yesterday (the 1st) was due at 09:00.
    let at = "2024-01-02T15:00:00Z";
    let late = phasegate(&env, &["freshness", "--at", at]);
    assert_eq!(late.status.code(), Some(1), "{}", stderr(&late));
    assert!(
        stdout(&late).contains("LATE  raw 2024-01-01"),
        "{}",
        stdout(&late)
    );

    env.trigger(d("2024-01-01"), true).await;
    let fresh = phasegate(&env, &["freshness", "--at", at, "--output", "json"]);
    assert_eq!(fresh.status.code(), Some(0), "{}", stderr(&fresh));
    let doc: Value = serde_json::from_str(&stdout(&fresh)).expect("json");
    assert_eq!(doc[0]["phase"], "raw");
    assert_eq!(doc[0]["expected_date"], "2024-01-01");
    assert_eq!(doc[0]["fresh"], true);
    assert_eq!(doc[0]["deadline"], "2024-01-02T14:00:00Z");

    // At 08:00 the latest deadline passed is the 1st's, for 2023-12-31: never run.
    let early = phasegate(&env, &["freshness", "--at", "2024-01-02T13:00:00Z"]);
    assert_eq!(early.status.code(), Some(1));
    assert!(stdout(&early).contains("2023-12-31"), "{}", stdout(&early));
}

#[tokio::test]
async fn freshness_without_any_deadline_is_a_configuration_error() {
    let env = TestEnv::new("soft").await;
    let out = phasegate(&env, &["freshness"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("declares `freshness`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn init_refuses_real_bigquery_where_terraform_owns_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    let text = PIPELINE
        .replace("{MODE}", "strict")
        .replace("sql.sqlite", "sql.bigquery");
    let text = text.replacen(
        "[pipeline]",
        "[backend]\nkind = \"bigquery\"\nproject = \"p\"\ndataset = \"d\"\n\n[pipeline]",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(&config)
        .arg("init")
        .env_remove("BIGQUERY_EMULATOR_HOST")
        .env_remove("PHASEGATE_BIGQUERY_EMULATOR_HOST")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Terraform owns every table"), "{err}");
    assert!(err.contains("Nothing was changed"), "{err}");
}
