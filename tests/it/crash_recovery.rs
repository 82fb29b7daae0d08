//! The real binary killed with SIGKILL while a driver pushes dates and redelivers like Pub/Sub
//! (every non-2xx answer and every dropped connection, until 2xx): after restarts, every date
//! completes all four phases, no processor ran a date twice to success, no `running` row is
//! left, and every completion event was published exactly once (SQLite + durable bus).

use crate::common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, PIPELINE, TestEnv};
use phasegate::backends::sqlite::Sqlite;
use phasegate::envelope::PushEnvelope;
use phasegate::ledger::{Ledger, RunStatus};
use serde_json::json;

const DATES: u32 = 24;
const KILLS: usize = 4;
const PROCESSORS: [&str; 4] = ["ingest", "summary", "features", "preds"];
const TOPICS: [&str; 4] = [
    "test-raw-done",
    "test-analytics-done",
    "test-precompute-done",
    "test-predictions-done",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(env: &TestEnv, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .arg("serve")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve")
}

/// Push one date's trigger until it is acknowledged, as Pub/Sub redelivers.
async fn push_until_acked(client: &reqwest::Client, base: &str, date: chrono::NaiveDate) {
    let body = PushEnvelope::wrap(
        &json!({ "data_date": date }),
        Default::default(),
        format!("trigger-{date}"),
        "crash".into(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client
            .post(format!("{base}/push/raw"))
            .json(&body)
            .send()
            .await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{date} never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_moment_loses_nothing_and_runs_nothing_twice() {
    if common::backend() == Backend::BigQuery {
        return; // a process-crash test of the embedded default
    }
    // Pub/Sub-like redelivery (many attempts, short backoff) and short leases, so a killed
    // run's claim and a killed delivery's message come back quickly.
    let text = PIPELINE
        .replace("{MODE}", "soft")
        .replace(
            "max_delivery_attempts = 2\nretry_backoff_ms = 1",
            "max_delivery_attempts = 100\nretry_backoff_ms = 20\nlease_secs = 2\npoll_interval_ms = 50\n\n[server]\nrun_lease_secs = 3\noutbox_sweep_secs = 2",
        );
    // Slow every processor down (~tens of ms of SQL) so kills land inside runs.
    let slow = "\"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) SELECT COUNT(*) FROM c\",\n";
    let text = ["raw", "summary", "features", "preds"]
        .iter()
        .fold(text, |t, table| {
            let delete =
                format!("\"DELETE FROM {{dataset}}.{table} WHERE game_date = @data_date\",");
            t.replace(&delete, &format!("{slow}  {delete}"))
        });
    let env = TestEnv::with_pipeline(&text).await;
    let days = common::dates("2024-01-01", DATES);
    env.season(&days).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(&env, port);

    // The killer: SIGKILL at spread-out moments, restart at once.
    let killer = {
        let config = env.config_path().to_path_buf();
        tokio::spawn(async move {
            let mut pauses = [700u64, 450, 900, 600].into_iter().cycle();
            let mut kills = 0;
            let mut handle = child;
            while kills < KILLS {
                tokio::time::sleep(Duration::from_millis(pauses.next().unwrap_or(500))).await;
                let _ = handle.kill(); // SIGKILL
                let _ = handle.wait();
                kills += 1;
                handle = Command::new(env!("CARGO_BIN_EXE_phasegate"))
                    .arg("--config")
                    .arg(&config)
                    .arg("serve")
                    .env("PORT", port.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("restart serve");
            }
            handle
        })
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for day in &days {
        push_until_acked(&client, &base, *day).await;
    }
    child = killer.await.unwrap();

    // Wait until the cascade settles: every processor done for every date.
    let ledger = Sqlite::open(&env.db_path(), "test").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut done = 0;
        for p in PROCESSORS {
            done += ledger
                .latest_in_range(p, days[0], days[days.len() - 1])
                .await
                .unwrap()
                .iter()
                .filter(|r| r.status.is_done() && r.published_at.is_some())
                .count();
        }
        if done == PROCESSORS.len() * days.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {} processor-dates done and announced",
            PROCESSORS.len() * days.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    let mut taken_over = 0;
    for day in &days {
        for p in PROCESSORS {
            let history = ledger.history(p, *day).await.unwrap();
            taken_over += history
                .iter()
                .filter(|r| r.status == RunStatus::Failed)
                .count();
            let done = history.iter().filter(|r| r.status.is_done()).count();
            assert_eq!(done, 1, "{p} {day} ran to success once: {history:?}");
            assert!(
                history.iter().all(|r| r.status != RunStatus::Running),
                "{p} {day}: a running row was left behind"
            );
        }
    }
    eprintln!("{KILLS} kills, {DATES} dates: {taken_over} interrupted runs taken over");
    // Exactly one completion event per phase and date in the durable bus.
    let mut events: HashMap<(String, String), usize> = HashMap::new();
    for m in ledger.bus_list_blocking(None).unwrap() {
        if TOPICS.contains(&m.topic.as_str()) {
            let date = m.attributes.get("data_date").cloned().unwrap_or_default();
            *events.entry((m.topic, date)).or_default() += 1;
        }
    }
    for day in &days {
        for topic in TOPICS {
            assert_eq!(
                events.get(&(topic.to_string(), day.to_string())),
                Some(&1),
                "{topic} {day}: one event"
            );
        }
    }
}
