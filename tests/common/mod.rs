//! Shared test fixtures: a small four-phase pipeline on a temporary SQLite file.
#![allow(dead_code)]

pub mod cloud_run;
pub mod firestore_faults;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use phasegate::bus::Publisher;
use phasegate::config::Config;
use phasegate::envelope::SKIP_DOWNSTREAM_TRIGGER;
use phasegate::ledger::{RunRecord, RunStatus, TriggerKind};
use phasegate::startup::{self, App};
use serde_json::json;

/// The test pipeline. `{MODE}` is the precompute processor's check mode.
pub const PIPELINE: &str = r#"
[pipeline]
name = "test"

[bus]
max_delivery_attempts = 2
retry_backoff_ms = 1

[auth]
mode = "disabled"

[references.schedule]
table = "schedule"
date_column = "game_date"
entity_column = "team"

[setup]
sqlite = [
  "CREATE TABLE IF NOT EXISTS {dataset}.schedule (game_date TEXT NOT NULL, team TEXT NOT NULL)",
  "CREATE TABLE IF NOT EXISTS {dataset}.feed (game_date TEXT NOT NULL, team TEXT NOT NULL)",
  "CREATE TABLE IF NOT EXISTS {dataset}.raw (game_date TEXT NOT NULL, team TEXT NOT NULL)",
  "CREATE TABLE IF NOT EXISTS {dataset}.summary (game_date TEXT NOT NULL, team TEXT NOT NULL)",
  "CREATE TABLE IF NOT EXISTS {dataset}.features (game_date TEXT NOT NULL, team TEXT NOT NULL, games INTEGER NOT NULL)",
  "CREATE TABLE IF NOT EXISTS {dataset}.preds (game_date TEXT NOT NULL, team TEXT NOT NULL)",
]
bigquery = [
  "CREATE TABLE IF NOT EXISTS {dataset}.schedule (game_date DATE NOT NULL, team STRING NOT NULL) PARTITION BY game_date CLUSTER BY team",
  "CREATE TABLE IF NOT EXISTS {dataset}.feed (game_date DATE NOT NULL, team STRING NOT NULL) PARTITION BY game_date CLUSTER BY team",
  "CREATE TABLE IF NOT EXISTS {dataset}.raw (game_date DATE NOT NULL, team STRING NOT NULL) PARTITION BY game_date CLUSTER BY team",
  "CREATE TABLE IF NOT EXISTS {dataset}.summary (game_date DATE NOT NULL, team STRING NOT NULL) PARTITION BY game_date CLUSTER BY team",
  "CREATE TABLE IF NOT EXISTS {dataset}.features (game_date DATE NOT NULL, team STRING NOT NULL, games INT64 NOT NULL) PARTITION BY game_date CLUSTER BY team",
  "CREATE TABLE IF NOT EXISTS {dataset}.preds (game_date DATE NOT NULL, team STRING NOT NULL) PARTITION BY game_date CLUSTER BY team",
]

[[phases]]
name = "raw"
input_topic = "test-trigger"
completion_topic = "test-raw-done"

[[phases.processors]]
name = "ingest"
kind = "sql"
output = { table = "raw", date_column = "game_date", expected = "schedule", require_rows = true }
sql.sqlite = [
  "DELETE FROM {dataset}.raw WHERE game_date = @data_date",
  "INSERT INTO {dataset}.raw (game_date, team) SELECT game_date, team FROM {dataset}.feed WHERE game_date = @data_date",
]

[[phases]]
name = "analytics"
completion_topic = "test-analytics-done"

[[phases.processors]]
name = "summary"
kind = "sql"
output = { table = "summary", date_column = "game_date", expected = "schedule", require_rows = true }
checks = { mode = "strict", upstream = ["ingest"] }
sql.sqlite = [
  "DELETE FROM {dataset}.summary WHERE game_date = @data_date",
  "INSERT INTO {dataset}.summary (game_date, team) SELECT game_date, team FROM {dataset}.raw WHERE game_date = @data_date",
]

[[phases]]
name = "precompute"
completion_topic = "test-precompute-done"

[[phases.processors]]
name = "features"
kind = "sql"
output = { table = "features", date_column = "game_date" }
sql.sqlite = [
  "DELETE FROM {dataset}.features WHERE game_date = @data_date",
  "INSERT INTO {dataset}.features (game_date, team, games) SELECT @data_date, team, COUNT(*) FROM {dataset}.summary WHERE game_date <= @data_date GROUP BY team",
]

[phases.processors.checks]
mode = "{MODE}"
upstream = ["summary"]
historical_gaps = { table = "summary", date_column = "game_date", lookback_days = 7, expected = "schedule", not_before = "2024-01-01" }
entity_completeness = { reference = "schedule", upstream_table = "summary", upstream_entity_column = "team", upstream_date_column = "game_date", window = "games", lookback = 5, threshold_pct = 90.0, season_start = "2024-01-01" }

[[phases]]
name = "predictions"
completion_topic = "test-predictions-done"

[[phases.processors]]
name = "preds"
kind = "sql"
output = { table = "preds", date_column = "game_date" }
checks = { mode = "strict", upstream = ["features"] }
sql.sqlite = [
  "DELETE FROM {dataset}.preds WHERE game_date = @data_date",
  "INSERT INTO {dataset}.preds (game_date, team) SELECT game_date, team FROM {dataset}.features WHERE game_date = @data_date",
]
"#;

/// Which backend the shared behavioural suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    BigQuery,
}

pub fn backend() -> Backend {
    match std::env::var("PHASEGATE_TEST_BACKEND").as_deref() {
        Ok("bigquery") => Backend::BigQuery,
        _ => Backend::Sqlite,
    }
}

pub fn d(s: &str) -> NaiveDate {
    phasegate::dates::parse_date(s).expect("test date")
}

/// `[backend]` lines choosing where the BigQuery suite's claims live: Firestore (the
/// production default) on its emulator (scripts/emulators.sh starts it and exports
/// `FIRESTORE_EMULATOR_HOST`), or BigQuery's claims table with
/// `PHASEGATE_TEST_COORDINATION=bigquery`.
pub fn coordination_lines() -> String {
    let coordination =
        std::env::var("PHASEGATE_TEST_COORDINATION").unwrap_or_else(|_| "firestore".into());
    if coordination != "firestore" {
        return format!("coordination = {coordination:?}\n");
    }
    let host = std::env::var("FIRESTORE_EMULATOR_HOST")
        .expect("Firestore coordination needs FIRESTORE_EMULATOR_HOST (scripts/emulators.sh)");
    format!("coordination = \"firestore\"\nfirestore_emulator_host = {host:?}\n")
}

/// A built app on a temporary database, with the fixture's tables.
pub struct TestEnv {
    pub app: App,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestEnv {
    pub async fn new(mode: &str) -> TestEnv {
        Self::with_pipeline(&PIPELINE.replace("{MODE}", mode)).await
    }

    /// The pipeline on the backend the suite runs against: SQLite by default, the BigQuery
    /// emulator with `PHASEGATE_TEST_BACKEND=bigquery` (a fresh dataset per test). The
    /// fixture's SQL is dialect-neutral, so the same statements serve both. The fixture's
    /// dates are in 2024: the outbox sweep's date window is opened wide here (it is tested
    /// with its default in bigquery_model).
    pub async fn with_pipeline(text: &str) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("test.db");
        let (backend_section, text) = match backend() {
            Backend::Sqlite => (
                // Fixture dates are in 2024: the sweep's date window opened wide (its
                // default is tested in relay.rs).
                format!(
                    "[backend]\nsqlite_path = {:?}\nowed_events_window_days = 36500\n",
                    db.display().to_string()
                ),
                text.to_string(),
            ),
            Backend::BigQuery => {
                let host = std::env::var("BIGQUERY_EMULATOR_HOST").expect(
                    "PHASEGATE_TEST_BACKEND=bigquery needs BIGQUERY_EMULATOR_HOST (scripts/emulators.sh)",
                );
                let project = std::env::var("PHASEGATE_EMULATOR_PROJECT")
                    .unwrap_or_else(|_| "phasegate-test".into());
                let dataset = format!("t_{}", uuid::Uuid::new_v4().simple());
                (
                    format!(
                        "[backend]\nkind = \"bigquery\"\nproject = {project:?}\ndataset = {dataset:?}\nemulator_host = {host:?}\n\
                         owed_events_window_days = 36500\n{}",
                        coordination_lines()
                    ),
                    text.replace("sql.sqlite", "sql.bigquery"),
                )
            }
        };
        let text = format!(
            "{}\n",
            text.replacen("[pipeline]", &format!("{backend_section}\n[pipeline]"), 1)
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

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("test.db")
    }

    /// Run a statement once per date with `@data_date` bound.
    pub async fn exec_for(&self, sql: &str, dates: &[NaiveDate]) {
        for date in dates {
            self.app
                .warehouse()
                .run_statements(&[sql.to_string()], *date)
                .await
                .expect("exec");
        }
    }

    /// Dates with games for teams A and B (schedule) and a feed for each.
    pub async fn season(&self, dates: &[NaiveDate]) {
        self.exec_for(
            "INSERT INTO {dataset}.schedule (game_date, team) VALUES (@data_date, 'A'), (@data_date, 'B')",
            dates,
        )
        .await;
        self.exec_for(
            "INSERT INTO {dataset}.feed (game_date, team) VALUES (@data_date, 'A'), (@data_date, 'B')",
            dates,
        )
        .await;
    }

    /// The feed of a date goes missing (its raw run will fail).
    pub async fn lose_feed(&self, date: NaiveDate) {
        self.exec_for(
            "DELETE FROM {dataset}.feed WHERE game_date = @data_date",
            &[date],
        )
        .await;
    }

    pub async fn restore_feed(&self, date: NaiveDate) {
        self.exec_for(
            "INSERT INTO {dataset}.feed (game_date, team) VALUES (@data_date, 'A'), (@data_date, 'B')",
            &[date],
        )
        .await;
    }

    pub async fn count(&self, table: &str, column: &str, date: NaiveDate) -> u64 {
        self.app
            .warehouse()
            .count_rows(table, column, date)
            .await
            .expect("count")
    }

    pub async fn latest(&self, processor: &str, date: NaiveDate) -> Option<RunRecord> {
        self.app
            .ledger()
            .latest(processor, date)
            .await
            .expect("ledger")
    }

    pub async fn status(&self, processor: &str, date: NaiveDate) -> Option<RunStatus> {
        self.latest(processor, date).await.map(|r| r.status)
    }

    /// Write a finished run straight into the ledger (as an upstream system would).
    pub async fn record_run(
        &self,
        processor: &str,
        phase: &str,
        date: NaiveDate,
        status: RunStatus,
    ) {
        let mut run = RunRecord::start(processor, phase, date, TriggerKind::Cli, None, false);
        run.finish(
            status,
            Some(0),
            (status == RunStatus::Failed).then(|| "boom".into()),
        );
        self.app.ledger().record(&run).await.expect("record");
    }

    /// Publish a trigger on the first phase's topic through the in-process bus and wait.
    pub async fn trigger(&self, date: NaiveDate, skip: bool) {
        let bus = self.app.bus.as_ref().expect("in-process bus");
        let mut attributes = BTreeMap::new();
        if skip {
            attributes.insert(SKIP_DOWNSTREAM_TRIGGER.to_string(), "true".to_string());
        }
        bus.publish("test-trigger", &json!({ "data_date": date }), attributes)
            .await
            .expect("publish");
        bus.wait_idle().await;
    }

    pub fn published_to(&self, topic: &str) -> usize {
        self.app
            .bus
            .as_ref()
            .map_or(0, |b| b.published_to(topic).len())
    }

    pub fn bus(&self) -> &Arc<phasegate::backends::in_process::InProcessBus> {
        self.app.bus.as_ref().expect("in-process bus")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

/// `n` consecutive dates from `start`.
pub fn dates(start: &str, n: u32) -> Vec<NaiveDate> {
    let start = d(start);
    phasegate::dates::days(start, start + chrono::Duration::days(i64::from(n) - 1)).collect()
}
