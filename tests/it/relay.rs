//! The relay (issue 23): a worker publishes its own phase's owed events — at start-up, on
//! `POST /relay` (Cloud Scheduler's call, where Cloud Run gives CPU to a scaled-to-zero
//! service), and on its periodic sweep — never another phase's; a failing publish gives the
//! publication back at once and the sweep goes on with the next event.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use common::{TestEnv, d, dates};
use phasegate::bus::{PublishError, Publisher};
use phasegate::ledger::{RunRecord, RunStatus, TriggerKind};
use phasegate::server::{ServerState, serve};
use phasegate::worker::{RunRequest, Worker};
use serde_json::{Value, json};

/// A bus that refuses the dates in `failing` and records what it published.
#[derive(Default)]
struct Flaky {
    failing: Mutex<HashSet<String>>,
    published: Mutex<Vec<(String, String)>>,
}

impl Flaky {
    fn fail(&self, dates: &[NaiveDate]) {
        let mut failing = self.failing.lock().unwrap();
        failing.clear();
        failing.extend(dates.iter().map(ToString::to_string));
    }

    fn published(&self) -> Vec<(String, String)> {
        self.published.lock().unwrap().clone()
    }
}

#[async_trait]
impl Publisher for Flaky {
    async fn publish(
        &self,
        topic: &str,
        _: &Value,
        attributes: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        let date = attributes.get("data_date").cloned().unwrap_or_default();
        if self.failing.lock().unwrap().contains(&date) {
            return Err(PublishError {
                topic: topic.to_string(),
                message: format!("bus refused {date}"),
            });
        }
        self.published
            .lock()
            .unwrap()
            .push((topic.to_string(), date));
        Ok("flaky-1".into())
    }
}

/// Run `phase` for each date through a worker on `bus`; with the bus refusing every one of
/// them, each run is done and its event owed.
async fn owed(env: &TestEnv, bus: &Arc<Flaky>, phase: &str, days: &[NaiveDate]) {
    let worker = Worker::new(
        env.app.config.clone(),
        env.app.ledger().clone(),
        env.app.warehouse().clone(),
        bus.clone(),
    );
    bus.fail(days);
    for day in days {
        let outcome = worker
            .run_phase(&RunRequest::new(phase, *day, TriggerKind::Cli))
            .await;
        assert!(
            outcome.is_err() || format!("{outcome:?}").contains("Failed"),
            "{outcome:?}"
        );
    }
}

async fn published_at(env: &TestEnv, processor: &str, day: NaiveDate) -> bool {
    env.latest(processor, day)
        .await
        .and_then(|r| r.published_at)
        .is_some()
}

#[tokio::test]
async fn a_failing_event_is_given_back_and_the_sweep_goes_on_with_its_own_phase_only() {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 3);
    env.season(&days).await;
    let bus = Arc::new(Flaky::default());
    owed(&env, &bus, "raw", &days).await;
    owed(&env, &bus, "analytics", &days[2..]).await;
    let worker = Worker::new(
        env.app.config.clone(),
        env.app.ledger().clone(),
        env.app.warehouse().clone(),
        bus.clone(),
    );

    // The oldest raw event still fails; the two newer ones are published all the same.
    bus.fail(&days[..1]);
    let report = worker
        .relay(&["raw".to_string()], std::time::Duration::from_secs(60))
        .await;
    assert_eq!(report.published, 2, "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].contains("2024-01-01"), "{report:?}");
    assert!(!published_at(&env, "ingest", days[0]).await);
    assert!(published_at(&env, "ingest", days[1]).await);

    // Its publication was given back: the very next sweep takes it (no lease lock-out).
    bus.fail(&[]);
    let report = worker
        .relay(&["raw".to_string()], std::time::Duration::from_secs(60))
        .await;
    assert_eq!(
        (report.published, report.failed.len()),
        (1, 0),
        "{report:?}"
    );
    assert!(published_at(&env, "ingest", days[0]).await);

    // The analytics event owed all along was never touched by raw's sweeps.
    let topics: Vec<String> = bus.published().into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["test-raw-done"; 3]);
    assert!(!published_at(&env, "summary", days[2]).await);
}

#[tokio::test]
async fn an_event_owed_by_a_stopped_worker_goes_out_at_start_up_and_on_a_scheduled_relay() {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 2);
    env.season(&days).await;
    // The worker that ran these dates could not publish, then stopped (scaled to zero).
    owed(&env, &Arc::new(Flaky::default()), "raw", &days).await;
    // One event the next instance's start-up sweep publishes …
    let sweep = phasegate::worker::spawn_outbox_sweep(
        env.app.worker.clone(),
        vec!["raw".into()],
        std::time::Duration::from_secs(3600),
    );
    let deadline = Utc::now() + chrono::Duration::seconds(10);
    while !published_at(&env, "ingest", days[1]).await {
        assert!(
            Utc::now() < deadline,
            "the start-up sweep published nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sweep.abort();
    env.bus().wait_idle().await;
    assert!(env.published_to("test-raw-done") >= 2);

    // … and one owed after the sweep ran, which the scheduled call to /relay publishes.
    let day = d("2024-01-03");
    env.season(&[day]).await;
    owed(&env, &Arc::new(Flaky::default()), "raw", &[day]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/relay", listener.local_addr().unwrap());
    let state = Arc::new(ServerState {
        worker: env.app.worker.clone(),
        phase: Some("raw".into()),
        auth: None,
    });
    tokio::spawn(serve(listener, state, std::future::pending()));
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&json!({ "relay": "raw" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["published"], 1, "{body}");
    assert!(published_at(&env, "ingest", day).await);
}

#[tokio::test]
async fn a_relay_out_of_budget_starts_no_event_and_counts_what_it_left() {
    // Cloud Scheduler cancels a /relay call at its attempt deadline: an event dropped between
    // its claim and its publish would stay locked for a lease. Past its budget the sweep
    // starts no event; the next sweep takes them.
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 3);
    env.season(&days).await;
    let bus = Arc::new(Flaky::default());
    owed(&env, &bus, "raw", &days).await;
    bus.fail(&[]);
    let worker = Worker::new(
        env.app.config.clone(),
        env.app.ledger().clone(),
        env.app.warehouse().clone(),
        bus.clone(),
    );
    let none = worker.relay(&[], std::time::Duration::ZERO).await;
    assert_eq!((none.published, none.left), (0, 3), "{none:?}");
    assert!(bus.published().is_empty());
    let all = worker.relay(&[], std::time::Duration::from_secs(60)).await;
    assert_eq!((all.published, all.left), (3, 0), "{all:?}");
}

/// Six hundred owed runs that can never be published — each superseded by a newer,
/// published run of its processor and date — are older than one genuinely owed run: more
/// than a sweep reads at once (500). The sweep still publishes the live one (SQLite).
#[tokio::test]
async fn superseded_owed_runs_cannot_hide_a_live_owed_event_from_the_sweep() {
    let env = TestEnv::new("strict").await;
    let ledger = env.app.ledger();
    let old = dates("2022-01-01", 600);
    let start = Utc::now() - chrono::Duration::hours(1);
    for (i, day) in old.iter().enumerate() {
        let at = start + chrono::Duration::milliseconds(i as i64);
        let mut dead = RunRecord::start("ingest", "raw", *day, TriggerKind::Cli, None, false);
        dead.started_at = at;
        dead.finish(RunStatus::Success, Some(2), None);
        ledger.record(&dead).await.unwrap();
        let mut newer = RunRecord::start("ingest", "raw", *day, TriggerKind::Cli, None, false);
        newer.started_at = at + chrono::Duration::microseconds(1);
        newer.finish(RunStatus::Success, Some(2), None);
        newer.published_at = Some(Utc::now());
        ledger.record(&newer).await.unwrap();
    }
    let live_day = d("2024-01-01");
    let mut live = RunRecord::start("ingest", "raw", live_day, TriggerKind::Cli, None, false);
    live.finish(RunStatus::Success, Some(2), None);
    ledger.record(&live).await.unwrap();

    let bus = Arc::new(Flaky::default());
    let worker = Worker::new(
        env.app.config.clone(),
        env.app.ledger().clone(),
        env.app.warehouse().clone(),
        bus.clone(),
    );
    let report = worker
        .relay(&["raw".to_string()], std::time::Duration::from_secs(60))
        .await;
    assert_eq!(
        (report.published, report.failed.len()),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(
        bus.published(),
        [("test-raw-done".to_string(), live_day.to_string())]
    );
    assert!(published_at(&env, "ingest", live_day).await);
}

/// The sweep reads owed events of the window's dates only (`backend.owed_events_window_days`,
/// 35 by default) on SQLite as on BigQuery: an older owed event is its message's
/// redelivery's to publish, and a ledger of years is not read on every sweep.
#[tokio::test]
async fn the_sqlite_sweep_reads_only_the_dates_of_its_window() {
    use phasegate::backends::sqlite::Sqlite;
    use phasegate::ledger::{Ledger, RunRecord, RunStatus};
    let dir = tempfile::tempdir().unwrap();
    let db = Sqlite::open(&dir.path().join("window.db"), "test")
        .unwrap()
        .with_owed_window(35);
    db.ensure_schema().await.unwrap();
    let today = Utc::now().date_naive();
    let recent = today - chrono::Days::new(1);
    for day in [recent, today - chrono::Days::new(40)] {
        let mut run = RunRecord::start("ingest", "raw", day, TriggerKind::Cli, None, false);
        run.finish(RunStatus::Success, Some(2), None);
        db.record(&run).await.unwrap();
    }
    let owed: Vec<NaiveDate> = db
        .owed_events("raw", 500)
        .await
        .unwrap()
        .iter()
        .map(|r| r.data_date)
        .collect();
    assert_eq!(owed, [recent]);
}
