//! `phasegate history`: every attempt of a blocked-then-repaired date, in order.

use crate::common;

use std::process::Command;

use common::{TestEnv, d};
use phasegate::envelope::PushEnvelope;
use serde_json::{Value, json};

/// A push to the analytics phase for `date`, as Pub/Sub delivers it.
fn delivery(date: &str, message_id: &str, attempt: u32) -> Vec<u8> {
    let mut envelope = PushEnvelope::wrap(
        &json!({ "data_date": date, "phase": "raw" }),
        Default::default(),
        message_id.into(),
        "projects/p/subscriptions/analytics".into(),
    );
    envelope.delivery_attempt = Some(attempt);
    serde_json::to_vec(&envelope).unwrap()
}

fn history(env: &TestEnv, output: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args(["history", "--phase", "analytics", "--date", "2024-01-01"])
        .args(["--output", output])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_blocked_then_repaired_date_lists_every_attempt_in_order() {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let worker = &env.app.worker;
    // Delivered before raw ran: the strict gate blocks it, twice.
    for attempt in 1..=2 {
        let outcome = worker
            .handle_push("analytics", &delivery("2024-01-01", "m-early", attempt))
            .await;
        assert_eq!(outcome.label(), "blocked");
    }
    // Raw runs and its completion event triggers analytics, which now succeeds.
    env.trigger(d("2024-01-01"), false).await;

    let doc: Value = serde_json::from_str(&history(&env, "json")).expect("json");
    assert_eq!(doc["phase"], "analytics");
    assert_eq!(doc["data_date"], "2024-01-01");
    let attempts = doc["attempts"].as_array().expect("attempts");
    let statuses: Vec<&str> = attempts
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["blocked", "blocked", "success"]);
    let started: Vec<&str> = attempts
        .iter()
        .map(|a| a["started_at"].as_str().unwrap())
        .collect();
    assert!(started.windows(2).all(|w| w[0] <= w[1]), "{started:?}");
    for blocked in &attempts[..2] {
        assert_eq!(blocked["message_id"], "m-early");
        assert_eq!(blocked["trigger"], "pubsub");
        assert!(
            blocked["reason"]
                .as_str()
                .is_some_and(|r| r.contains("upstream ingest")),
            "{blocked}"
        );
        assert!(blocked["published_at"].is_null());
    }
    let fixed = &attempts[2];
    assert!(fixed["reason"].is_null());
    assert!(fixed["published_at"].is_string());
    assert_eq!(fixed["production_ready"], true);
    assert_eq!(doc["processors"][0]["attempts"], 3);
    assert_eq!(doc["processors"][0]["latest_status"], "success");

    let table = history(&env, "table");
    assert!(
        table.contains("analytics 2024-01-01: 3 attempt(s)"),
        "{table}"
    );
    let order: Vec<usize> = ["blocked", "success"]
        .iter()
        .map(|s| table.find(s).unwrap_or(usize::MAX))
        .collect();
    assert!(order[0] < order[1], "{table}");
    assert!(
        table.contains("summary: success after 3 attempt(s)"),
        "{table}"
    );
}

/// Issue 24: an event that will never be sent says so. A done run superseded by a newer run
/// of its processor and date is not owed (the newer run announces the date, and the sweep
/// does not read it): `history` names the run that supersedes it; the newer one is owed.
#[tokio::test]
async fn a_superseded_run_shows_its_event_will_never_be_sent_and_by_whom() {
    use phasegate::ledger::{RunRecord, RunStatus, TriggerKind};
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    let mut old = RunRecord::start("summary", "analytics", day, TriggerKind::Cli, None, false);
    old.started_at = start;
    old.finish(RunStatus::Success, Some(2), None);
    env.app.ledger().record(&old).await.unwrap();
    let mut newer = RunRecord::start("summary", "analytics", day, TriggerKind::Cli, None, false);
    newer.started_at = start + chrono::Duration::minutes(1);
    newer.finish(RunStatus::Success, Some(2), None);
    env.app.ledger().record(&newer).await.unwrap();

    let text = history(&env, "table");
    assert!(text.contains("superseded"), "{text}");
    assert!(
        text.contains(&format!("superseded by run {}", newer.run_id)),
        "{text}"
    );
    let json: Value = serde_json::from_str(&history(&env, "json")).unwrap();
    let events: Vec<&Value> = json["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["event"])
        .collect();
    assert_eq!(
        events,
        [
            &json!({ "state": "superseded", "detail": newer.run_id }),
            &json!({ "state": "owed" })
        ],
        "{json}"
    );
}
