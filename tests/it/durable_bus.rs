//! The embedded bus is durable: messages live in the SQLite file until a handler
//! acknowledged them, survive a restart, are retried and dead-lettered there, are not stored
//! twice for one `event_id`, and are claimed by one deliverer at a time.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestEnv, d, dates};
use phasegate::backends::in_process::InProcessBus;
use phasegate::backends::sqlite::Sqlite;
use phasegate::backends::sqlite::queue::{ClaimRequest, MessageState, NewMessage};
use phasegate::bus::Publisher;
use phasegate::config::Config;
use phasegate::envelope::SKIP_DOWNSTREAM_TRIGGER;
use phasegate::ledger::RunStatus;
use phasegate::startup::{self, App, Deliveries};
use serde_json::json;

const PROCESSORS: [&str; 4] = ["ingest", "summary", "features", "preds"];

/// Another process on the same file: the same configuration, built again.
async fn restart(config_path: &Path) -> App {
    let config = Config::load(config_path).expect("config");
    startup::build(config).await.expect("build")
}

/// The fixture's pipeline with a one-day season on a file no process runs on any more.
struct Stopped {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    config: Arc<Config>,
}

impl Stopped {
    async fn new() -> Stopped {
        let env = TestEnv::new("strict").await;
        env.season(&dates("2024-01-01", 1)).await;
        let TestEnv {
            app,
            dir,
            config_path,
        } = env;
        let config = app.config.clone();
        drop(app);
        Stopped {
            dir,
            config_path,
            config,
        }
    }

    fn db(&self) -> Sqlite {
        Sqlite::open(&self.dir.path().join("test.db"), "test").expect("open")
    }

    /// A bus that only publishes (no worker attached): a process that stops before
    /// delivering.
    async fn publisher_only(&self) -> Arc<InProcessBus> {
        InProcessBus::open(self.config.clone(), self.db())
            .await
            .expect("bus")
    }
}

fn trigger_data(day: &str) -> serde_json::Value {
    json!({ "data_date": day })
}

async fn runs(app: &App, processor: &str, day: &str) -> Vec<RunStatus> {
    app.ledger()
        .history(processor, d(day))
        .await
        .expect("history")
        .into_iter()
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn a_message_published_before_a_stop_is_delivered_once_after_the_restart() {
    let stopped = Stopped::new().await;
    let bus = stopped.publisher_only().await;
    let id = bus
        .publish("test-trigger", &trigger_data("2024-01-01"), BTreeMap::new())
        .await
        .expect("publish");
    let before = bus.messages();
    assert_eq!(before.len(), 1);
    assert_eq!(
        before[0].state,
        MessageState::Pending,
        "owed, not delivered"
    );
    drop(bus);

    let app = restart(&stopped.config_path).await;
    let bus = app.bus.as_ref().expect("in-process bus");
    bus.wait_idle().await;

    for p in PROCESSORS {
        assert_eq!(
            runs(&app, p, "2024-01-01").await,
            [RunStatus::Success],
            "{p}"
        );
    }
    let trigger = &bus.messages()[0];
    assert_eq!(format!("local-{}", trigger.id), id);
    assert_eq!(trigger.state, MessageState::Delivered);
    assert_eq!(trigger.attempts, 1);
    assert!(trigger.delivered_at.is_some());
    assert_eq!(bus.published_to("test-predictions-done").len(), 1);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary: a `serve` started on a file with an owed trigger delivers it (and the
/// cascade it causes) before its graceful shutdown completes.
#[tokio::test]
async fn a_restarted_serve_delivers_what_was_owed() {
    let stopped = Stopped::new().await;
    let bus = stopped.publisher_only().await;
    bus.publish("test-trigger", &trigger_data("2024-01-01"), BTreeMap::new())
        .await
        .expect("publish");
    drop(bus);

    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(&stopped.config_path)
        .arg("serve")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful shutdown waits until the bus is idle.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    assert!(
        stderr.contains("messages owed from before start-up"),
        "{stderr}"
    );

    let config = Config::load(&stopped.config_path).expect("config");
    let reader = startup::build_with(config, Deliveries::Hold)
        .await
        .expect("build");
    for p in PROCESSORS {
        assert_eq!(
            runs(&reader, p, "2024-01-01").await,
            [RunStatus::Success],
            "{p}"
        );
    }
    let messages = reader.bus.as_ref().unwrap().messages();
    assert_eq!(messages.len(), 5, "the trigger and four completion events");
    assert!(
        messages
            .iter()
            .all(|m| m.state != MessageState::Pending && m.attempts <= 1),
        "{messages:?}"
    );
}

#[tokio::test]
async fn an_app_built_to_read_only_leaves_owed_messages_alone() {
    let stopped = Stopped::new().await;
    let bus = stopped.publisher_only().await;
    bus.publish("test-trigger", &trigger_data("2024-01-01"), BTreeMap::new())
        .await
        .expect("publish");
    drop(bus);

    let config = Config::load(&stopped.config_path).expect("config");
    let reader = startup::build_with(config, Deliveries::Hold)
        .await
        .expect("build");
    let bus = reader.bus.as_ref().expect("in-process bus");
    bus.wait_idle().await;
    let owed = &bus.messages()[0];
    assert_eq!(owed.state, MessageState::Pending);
    assert_eq!(owed.attempts, 0, "not claimed");
    assert_eq!(runs(&reader, "ingest", "2024-01-01").await, []);
}

#[tokio::test]
async fn a_delivery_cut_off_by_a_crash_is_redelivered_when_its_lease_expires() {
    let stopped = Stopped::new().await;
    let bus = stopped.publisher_only().await;
    bus.publish("test-trigger", &trigger_data("2024-01-01"), BTreeMap::new())
        .await
        .expect("publish");
    // A process claims the message and dies before the handler answers.
    let claimed = stopped
        .db()
        .bus_claim_due(ClaimRequest {
            owner: "crashed".into(),
            lease: Duration::from_millis(300),
            limit: 10,
            max_attempts: 5,
            phases: vec!["raw".into()],
        })
        .await
        .expect("claim");
    assert_eq!(claimed.due.len(), 1);
    drop(bus);

    let app = restart(&stopped.config_path).await;
    let bus = app.bus.as_ref().expect("in-process bus");
    bus.wait_idle().await;

    let trigger = &bus.messages()[0];
    assert_eq!(trigger.state, MessageState::Delivered);
    assert_eq!(trigger.attempts, 2, "the cut-off attempt counts");
    assert_eq!(trigger.claimed_by.as_deref(), Some(bus.owner()));
    for p in PROCESSORS {
        assert_eq!(
            runs(&app, p, "2024-01-01").await,
            [RunStatus::Success],
            "{p}"
        );
    }
}

#[tokio::test]
async fn a_last_attempt_that_never_answered_is_dead_lettered() {
    let stopped = Stopped::new().await;
    let bus = stopped.publisher_only().await;
    bus.publish("test-trigger", &trigger_data("2024-01-01"), BTreeMap::new())
        .await
        .expect("publish");
    drop(bus);
    // The fixture allows 2 attempts; two deliverers claimed it and died (a zero lease
    // expires at once).
    for owner in ["crashed-1", "crashed-2"] {
        let claimed = stopped
            .db()
            .bus_claim_due(ClaimRequest {
                owner: owner.into(),
                lease: Duration::ZERO,
                limit: 10,
                max_attempts: 2,
                phases: vec!["raw".into()],
            })
            .await
            .expect("claim");
        assert_eq!(claimed.due.len(), 1, "{owner}");
    }

    let app = restart(&stopped.config_path).await;
    let bus = app.bus.as_ref().expect("in-process bus");
    bus.wait_idle().await;
    let dead = bus.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0].last_reason.contains("no answer"),
        "{}",
        dead[0].last_reason
    );
    assert_eq!(runs(&app, "ingest", "2024-01-01").await, []);
}

/// A one-phase pipeline whose command fails until it has run `succeed_on` times (never
/// when 0), counting its runs in `count`.
fn flaky_pipeline(dir: &Path, succeed_on: u32, max_attempts: u32) -> String {
    let script = dir.join("flaky.sh");
    let count = dir.join("count");
    std::fs::write(
        &script,
        format!(
            r#"n=$(( $(cat "{count}" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "{count}"
if [ {succeed_on} -eq 0 ] || [ "$n" -lt {succeed_on} ]; then
  echo "feed not ready (run $n)" >&2
  exit 1
fi
"#,
            count = count.display()
        ),
    )
    .expect("script");
    format!(
        r#"
[pipeline]
name = "flaky"

[bus]
max_delivery_attempts = {max_attempts}
retry_backoff_ms = 1

[[phases]]
name = "ingest"
input_topic = "flaky-trigger"
completion_topic = "flaky-done"

[[phases.processors]]
name = "scraper"
kind = "command"
command = ["sh", "{script}"]
timeout_secs = 5
"#,
        script = script.display()
    )
}

fn runs_counted(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_handler_failing_twice_then_succeeding_is_delivered_with_its_attempts() {
    let scripts = tempfile::tempdir().unwrap();
    let env = TestEnv::with_pipeline(&flaky_pipeline(scripts.path(), 3, 5)).await;
    let bus = env.bus();
    bus.publish(
        "flaky-trigger",
        &trigger_data("2024-01-01"),
        BTreeMap::new(),
    )
    .await
    .unwrap();
    bus.wait_idle().await;

    let trigger = &bus.published_to("flaky-trigger")[0];
    let row = bus
        .messages()
        .into_iter()
        .find(|m| format!("local-{}", m.id) == trigger.message_id)
        .unwrap();
    assert_eq!(row.state, MessageState::Delivered);
    assert_eq!(row.attempts, 3);
    assert_eq!(row.last_status, Some(200));
    assert_eq!(runs_counted(scripts.path()), 3);
    assert_eq!(
        runs(&env.app, "scraper", "2024-01-01").await,
        [RunStatus::Failed, RunStatus::Failed, RunStatus::Success]
    );
    assert!(bus.dead_letters().is_empty());
    assert_eq!(bus.published_to("flaky-done").len(), 1);
}

#[tokio::test]
async fn a_handler_that_keeps_failing_is_dead_lettered_after_the_last_attempt() {
    let scripts = tempfile::tempdir().unwrap();
    let env = TestEnv::with_pipeline(&flaky_pipeline(scripts.path(), 0, 3)).await;
    let bus = env.bus();
    bus.publish(
        "flaky-trigger",
        &trigger_data("2024-01-01"),
        BTreeMap::new(),
    )
    .await
    .unwrap();
    bus.wait_idle().await;

    let dead = bus.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].phase, "ingest");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_status, 500);
    assert!(
        dead[0].last_reason.contains("feed not ready (run 3)"),
        "{}",
        dead[0].last_reason
    );
    assert_eq!(runs_counted(scripts.path()), 3, "no attempt after the last");
    assert_eq!(bus.published_to("flaky-done").len(), 0);
    // Kept in the table: a new process sees it and does not deliver it again.
    let again = restart(env.config_path()).await;
    let bus = again.bus.as_ref().unwrap();
    bus.wait_idle().await;
    assert_eq!(bus.dead_letters().len(), 1);
    assert_eq!(runs_counted(scripts.path()), 3);
}

#[tokio::test]
async fn a_second_publish_with_the_same_event_id_is_a_no_op() {
    let env = TestEnv::new("strict").await;
    env.season(&dates("2024-01-01", 1)).await;
    let bus = env.bus();
    let skip_with_id = |event: &str| {
        BTreeMap::from([
            ("event_id".to_string(), event.to_string()),
            (SKIP_DOWNSTREAM_TRIGGER.to_string(), "true".to_string()),
        ])
    };
    let data = trigger_data("2024-01-01");
    let first = bus
        .publish("test-trigger", &data, skip_with_id("e-1"))
        .await;
    let second = bus
        .publish("test-trigger", &data, skip_with_id("e-1"))
        .await;
    assert_eq!(first.unwrap(), second.unwrap());
    // The key is per topic; other ids, and messages without one, are stored.
    bus.publish("test-other", &data, skip_with_id("e-1"))
        .await
        .unwrap();
    bus.publish("test-trigger", &data, skip_with_id("e-2"))
        .await
        .unwrap();
    bus.wait_idle().await;
    bus.publish("test-trigger", &data, skip_with_id("e-1"))
        .await
        .unwrap();
    bus.wait_idle().await;

    assert_eq!(bus.published_to("test-trigger").len(), 2);
    assert_eq!(bus.published_to("test-other").len(), 1);
    let history = runs(&env.app, "ingest", "2024-01-01").await;
    assert_eq!(history, [RunStatus::Success], "e-2 found the date done");
}

/// A one-phase pipeline whose command appends its date to `log`.
fn logging_pipeline(dir: &Path) -> String {
    format!(
        r#"
[pipeline]
name = "shared"

[bus]
poll_interval_ms = 5
max_concurrent_deliveries = 4

[[phases]]
name = "ingest"
input_topic = "shared-trigger"
completion_topic = "shared-done"

[[phases.processors]]
name = "scraper"
kind = "command"
command = ["sh", "-c", "echo {{data_date}} >> {log}"]
timeout_secs = 5
"#,
        log = dir.join("log").display()
    )
}

#[tokio::test]
async fn two_processes_on_one_file_deliver_each_message_once() {
    let scripts = tempfile::tempdir().unwrap();
    let env = TestEnv::with_pipeline(&logging_pipeline(scripts.path())).await;
    let other = restart(env.config_path()).await;
    let days = dates("2024-01-01", 40);
    for day in &days {
        env.bus()
            .publish(
                "shared-trigger",
                &json!({ "data_date": day }),
                BTreeMap::from([(SKIP_DOWNSTREAM_TRIGGER.to_string(), "true".to_string())]),
            )
            .await
            .unwrap();
    }
    env.bus().wait_idle().await;
    other.bus.as_ref().unwrap().wait_idle().await;

    let messages = env.bus().messages();
    assert_eq!(messages.len(), days.len());
    for m in &messages {
        assert_eq!(m.state, MessageState::Delivered, "{m:?}");
        assert_eq!(m.attempts, 1, "claimed once: {m:?}");
    }
    let log = std::fs::read_to_string(scripts.path().join("log")).unwrap();
    let mut seen: Vec<&str> = log.lines().collect();
    seen.sort_unstable();
    let expected: Vec<String> = days.iter().map(ToString::to_string).collect();
    assert_eq!(seen, expected, "each date ran exactly once");
    let by: BTreeSet<_> = messages
        .iter()
        .filter_map(|m| m.claimed_by.clone())
        .collect();
    eprintln!("deliverers: {by:?}");
}

/// The claim itself: two connections (as two processes would hold) draining one queue claim
/// disjoint sets of messages whose union is the queue.
#[tokio::test]
async fn concurrent_claims_from_two_connections_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let a = Sqlite::open(&path, "test").unwrap();
    a.bus_ensure_schema().await.unwrap();
    for i in 0..200 {
        a.bus_enqueue(NewMessage {
            topic: "t".into(),
            phase: Some("p".into()),
            data: json!({ "i": i }),
            attributes: BTreeMap::new(),
        })
        .await
        .unwrap();
    }
    let drain = |db: Sqlite, owner: &'static str| async move {
        let mut mine = Vec::new();
        loop {
            let claimed = db
                .bus_claim_due(ClaimRequest {
                    owner: owner.into(),
                    lease: Duration::from_secs(600),
                    limit: 3,
                    max_attempts: 5,
                    phases: vec!["p".into()],
                })
                .await
                .unwrap();
            if claimed.due.is_empty() {
                return mine;
            }
            mine.extend(claimed.due.iter().map(|m| m.id));
        }
    };
    let (x, y) = tokio::join!(
        tokio::spawn(drain(a.clone(), "a")),
        tokio::spawn(drain(Sqlite::open(&path, "test").unwrap(), "b"))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let xs: BTreeSet<i64> = x.iter().copied().collect();
    let ys: BTreeSet<i64> = y.iter().copied().collect();
    assert_eq!(xs.len() + ys.len(), 200, "no id claimed twice");
    assert!(xs.is_disjoint(&ys));
    assert_eq!(xs.union(&ys).count(), 200, "every message claimed");
}
