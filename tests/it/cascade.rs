//! Cascade control, the scenarios that motivated phasegate, de-duplication and the outbox —
//! through the in-process bus and the real worker.

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use common::{TestEnv, d, dates};
use phasegate::bus::{PublishError, Publisher};
use phasegate::envelope::PushEnvelope;
use phasegate::ledger::{RunStatus, TriggerKind};
use phasegate::worker::{PhaseOutcome, Publication, PushOutcome, RunRequest, Worker};
use serde_json::json;

const ALL: [&str; 4] = ["ingest", "summary", "features", "preds"];

#[tokio::test]
async fn a_trigger_runs_all_four_phases() {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 3);
    env.season(&days).await;
    for day in &days {
        env.trigger(*day, false).await;
    }
    for p in ALL {
        for day in &days {
            assert_eq!(
                env.status(p, *day).await,
                Some(RunStatus::Success),
                "{p} {day}"
            );
        }
    }
    assert_eq!(env.count("preds", "game_date", days[2]).await, 2);
    assert_eq!(env.published_to("test-predictions-done"), 3);
    let last = env.latest("preds", days[2]).await.unwrap();
    assert!(last.published_at.is_some());
    assert_eq!(last.trigger, TriggerKind::Pubsub);
}

#[tokio::test]
async fn the_skip_attribute_runs_the_first_phase_only_and_publishes_nothing() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    env.trigger(day, true).await;
    assert_eq!(env.status("ingest", day).await, Some(RunStatus::Success));
    for p in &ALL[1..] {
        assert_eq!(env.status(p, day).await, None, "{p} must not run");
    }
    assert_eq!(env.published_to("test-raw-done"), 0);
    let run = env.latest("ingest", day).await.unwrap();
    assert!(run.skip_downstream_trigger);
    assert_eq!(run.published_at, None);
}

#[tokio::test]
async fn the_attribute_means_skip_whatever_its_value() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let attrs = BTreeMap::from([("skip_downstream_trigger".to_string(), "false".to_string())]);
    let envelope = PushEnvelope::wrap(
        &json!({ "data_date": day }),
        attrs,
        "m-1".into(),
        "s".into(),
    );
    let body = serde_json::to_vec(&envelope).unwrap();
    let outcome = env.app.worker.handle_push("raw", &body).await;
    assert_eq!(outcome.http_status(), 200);
    env.bus().wait_idle().await;
    assert_eq!(env.published_to("test-raw-done"), 0);
}

#[tokio::test]
async fn a_cli_run_with_the_skip_flag_stops_the_cascade() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_phasegate"))
            .arg("--config")
            .arg(env.config_path())
            .args(["run", "--phase", "raw", "--date", "2024-01-01"])
            .args(extra)
            .output()
            .expect("run phasegate")
    };
    let out = cli(&["--skip-downstream-trigger"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("NOT published"), "{stdout}");
    assert_eq!(env.status("ingest", day).await, Some(RunStatus::Success));
    assert_eq!(env.status("summary", day).await, None);
    let run = env.latest("ingest", day).await.unwrap();
    assert_eq!(run.trigger, TriggerKind::Cli);
    assert!(run.skip_downstream_trigger);

    // Without the flag the same date publishes (it was never published) and cascades.
    let out = cli(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in ALL {
        assert_eq!(env.status(p, day).await, Some(RunStatus::Success), "{p}");
    }
}

/// (a) Day 3 failed upstream: day 4 of a phase with a strict historical-gap check is blocked.
#[tokio::test]
async fn a_strict_historical_gap_check_blocks_the_day_after_a_failure() {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 4);
    env.season(&days).await;
    env.lose_feed(days[2]).await;
    for day in &days {
        env.trigger(*day, false).await;
    }
    assert_eq!(env.status("ingest", days[2]).await, Some(RunStatus::Failed));
    assert_eq!(env.status("summary", days[2]).await, None);
    assert_eq!(
        env.status("summary", days[3]).await,
        Some(RunStatus::Success)
    );
    let blocked = env.latest("features", days[3]).await.unwrap();
    assert_eq!(blocked.status, RunStatus::Blocked);
    let why = blocked.errors.unwrap();
    assert!(why.contains("2024-01-03"), "{why}");
    assert_eq!(
        env.count("features", "game_date", days[3]).await,
        0,
        "nothing processed"
    );
    let findings = blocked.findings.unwrap().value();
    assert_eq!(findings["historical_gaps"]["gap_count"], 1);
    assert_eq!(env.status("preds", days[3]).await, None);
    // Blocked means nacked: redelivered, then dead-lettered.
    assert!(
        env.bus()
            .dead_letters()
            .iter()
            .any(|m| m.phase == "precompute" && m.last_status == 424)
    );
}

/// (b) Monday's upstream run failed: Tuesday's run of a phase with a lookback is blocked
/// (strict) or processed but recorded as not production-ready (soft).
#[tokio::test]
async fn monday_failed_so_tuesday_is_blocked_or_not_production_ready() {
    let monday = d("2024-01-08");
    let tuesday = d("2024-01-09");
    for (mode, expected) in [("strict", RunStatus::Blocked), ("soft", RunStatus::Success)] {
        let env = TestEnv::new(mode).await;
        let days = dates("2024-01-01", 9);
        env.season(&days).await;
        env.lose_feed(monday).await;
        for day in &days {
            env.trigger(*day, false).await;
        }
        let run = env.latest("features", tuesday).await.unwrap();
        assert_eq!(run.status, expected, "{mode}");
        assert!(!run.production_ready, "{mode}");
        if mode == "soft" {
            assert_eq!(env.count("features", "game_date", tuesday).await, 2);
            let event = env
                .bus()
                .published_to("test-precompute-done")
                .into_iter()
                .find(|m| m.data["data_date"] == "2024-01-09")
                .expect("soft mode publishes");
            assert_eq!(event.data["production_ready"], false);
        }
    }
}

#[tokio::test]
async fn the_same_message_id_twice_is_processed_once() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let attrs = BTreeMap::from([("skip_downstream_trigger".to_string(), "true".to_string())]);
    let envelope = PushEnvelope::wrap(
        &json!({ "data_date": day }),
        attrs,
        "msg-42".into(),
        "s".into(),
    );
    let body = serde_json::to_vec(&envelope).unwrap();
    let first = env.app.worker.handle_push("raw", &body).await;
    let first_run = env.latest("ingest", day).await.unwrap();
    let second = env.app.worker.handle_push("raw", &body).await;
    assert_eq!(first.http_status(), 200);
    assert_eq!(second.http_status(), 200);
    assert_eq!(second.label(), "already_done");
    assert_eq!(
        env.latest("ingest", day).await.unwrap().run_id,
        first_run.run_id
    );
    let history = env.app.ledger().history("ingest", day).await.unwrap();
    assert_eq!(history.len(), 1);
}

#[tokio::test]
async fn a_message_published_twice_is_processed_once() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    env.trigger(day, false).await;
    let run = env.latest("preds", day).await.unwrap();
    env.trigger(day, false).await;
    assert_eq!(env.latest("preds", day).await.unwrap().run_id, run.run_id);
    // The second trigger found every phase done and published: nothing new downstream.
    assert_eq!(env.published_to("test-raw-done"), 1);
    assert_eq!(env.published_to("test-predictions-done"), 1);
}

/// Fails the first `n` publishes, then delegates.
struct Flaky {
    inner: Arc<dyn Publisher>,
    failures_left: AtomicUsize,
    published: AtomicUsize,
}

#[async_trait]
impl Publisher for Flaky {
    async fn publish(
        &self,
        topic: &str,
        data: &serde_json::Value,
        attributes: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(PublishError {
                topic: topic.into(),
                message: "connection reset (injected)".into(),
            });
        }
        self.published.fetch_add(1, Ordering::SeqCst);
        self.inner.publish(topic, data, attributes).await
    }
}

#[tokio::test]
async fn a_crash_between_run_and_publish_is_repaired_by_redelivery_exactly_once() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let flaky = Arc::new(Flaky {
        inner: Arc::new(env.bus().clone()),
        failures_left: AtomicUsize::new(1),
        published: AtomicUsize::new(0),
    });
    let worker = Worker::new(
        env.app.config.clone(),
        env.app.ledger().clone(),
        env.app.warehouse().clone(),
        flaky.clone(),
    )
    .with_one_transaction(env.app.one_transaction());
    let envelope = PushEnvelope::wrap(
        &json!({ "data_date": day }),
        BTreeMap::new(),
        "m-7".into(),
        "s".into(),
    );
    let body = serde_json::to_vec(&envelope).unwrap();

    let first = worker.handle_push("raw", &body).await;
    assert_eq!(
        first.http_status(),
        503,
        "publish failed: nack so Pub/Sub redelivers"
    );
    let run = env.latest("ingest", day).await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    assert_eq!(
        run.published_at, None,
        "the outbox remembers the event is owed"
    );

    let second = worker.handle_push("raw", &body).await;
    assert_eq!(second.http_status(), 200);
    let PushOutcome::Ran(PhaseOutcome::Done {
        reused,
        publication,
        ..
    }) = second
    else {
        panic!("expected done");
    };
    assert_eq!(reused, 1, "the processor did not run again");
    assert!(matches!(publication, Publication::Published { .. }));
    let third = worker.handle_push("raw", &body).await;
    assert_eq!(third.http_status(), 200);
    assert_eq!(
        flaky.published.load(Ordering::SeqCst),
        1,
        "published exactly once"
    );
    assert_eq!(env.latest("ingest", day).await.unwrap().run_id, run.run_id);
    assert!(
        env.latest("ingest", day)
            .await
            .unwrap()
            .published_at
            .is_some()
    );
}

#[tokio::test]
async fn force_runs_a_done_date_again_and_a_blocked_date_succeeds_once_fixed() {
    let env = TestEnv::new("strict").await;
    let days = dates("2024-01-01", 2);
    env.season(&days).await;
    env.lose_feed(days[0]).await;
    let req = |phase: &str, date, force| RunRequest {
        phase: phase.into(),
        data_date: date,
        trigger: TriggerKind::Cli,
        message_id: None,
        delivery_attempt: None,
        skip_downstream: true,
        force,
    };
    let w = &env.app.worker;
    assert!(matches!(
        w.run_phase(&req("raw", days[0], false)).await.unwrap(),
        PhaseOutcome::Failed { .. }
    ));
    assert!(matches!(
        w.run_phase(&req("analytics", days[0], false))
            .await
            .unwrap(),
        PhaseOutcome::Blocked { .. }
    ));
    env.restore_feed(days[0]).await;
    assert!(matches!(
        w.run_phase(&req("raw", days[0], false)).await.unwrap(),
        PhaseOutcome::Done { .. }
    ));
    let done = w
        .run_phase(&req("analytics", days[0], false))
        .await
        .unwrap();
    assert_eq!(done.label(), "success");
    let first = env.latest("summary", days[0]).await.unwrap().run_id;
    assert_eq!(
        w.run_phase(&req("analytics", days[0], false))
            .await
            .unwrap()
            .label(),
        "already_done"
    );
    w.run_phase(&req("analytics", days[0], true)).await.unwrap();
    assert_ne!(env.latest("summary", days[0]).await.unwrap().run_id, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_of_one_date_run_it_once() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let body = |id: &str| {
        let attrs = BTreeMap::from([("skip_downstream_trigger".to_string(), "true".to_string())]);
        serde_json::to_vec(&PushEnvelope::wrap(
            &json!({ "data_date": day }),
            attrs,
            id.into(),
            "s".into(),
        ))
        .unwrap()
    };
    let (a, b) = (body("first"), body("second"));
    let worker = env.app.worker.clone();
    let (x, y) = tokio::join!(worker.handle_push("raw", &a), worker.handle_push("raw", &b));
    let codes = [x.http_status(), y.http_status()];
    assert!(codes.contains(&200), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 409), "{codes:?}");
    // The loser's redelivery finds the date done.
    assert_eq!(worker.handle_push("raw", &b).await.http_status(), 200);
    let history = env.app.ledger().history("ingest", day).await.unwrap();
    assert_eq!(
        history.len(),
        1,
        "one run for two concurrent deliveries: {history:?}"
    );
}
