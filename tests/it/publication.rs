//! One publication path (issue 24, finding 1): nothing owed is ever acknowledged. A phase with
//! two processors whose second fails once: the first delivery stops after the first
//! processor ran; its redelivery runs the second and publishes the phase's event itself, at
//! once — not 200 with the event left to a lease running out and the sweep.

use crate::common;

use std::collections::BTreeMap;

use common::{PIPELINE, TestEnv, d};
use phasegate::envelope::PushEnvelope;
use serde_json::json;

/// The fixture with a second raw processor that fails while `poison` has a row.
fn two_processor_raw() -> String {
    let setup_sqlite = "  \"CREATE TABLE IF NOT EXISTS {dataset}.raw (game_date TEXT NOT NULL, team TEXT NOT NULL)\",\n";
    let setup_bigquery = "  \"CREATE TABLE IF NOT EXISTS {dataset}.raw (game_date DATE NOT NULL, team STRING NOT NULL) PARTITION BY game_date CLUSTER BY team\",\n";
    let second = r#"
[[phases.processors]]
name = "ingest_odds"
kind = "sql"
sql.sqlite = [
  "DELETE FROM {dataset}.odds WHERE game_date = @data_date",
  "INSERT INTO {dataset}.odds (game_date, team) SELECT @data_date, (SELECT CASE WHEN COUNT(*) > 0 THEN NULL ELSE 'ok' END FROM {dataset}.poison)",
]
"#;
    // The fixture's statements as written there (a silent miss would drop the new tables).
    assert!(PIPELINE.contains(setup_sqlite) && PIPELINE.contains(setup_bigquery));
    let text = PIPELINE
        .replace("{MODE}", "strict")
        .replace(
            setup_sqlite,
            &format!(
                "{setup_sqlite}  \"CREATE TABLE IF NOT EXISTS {{dataset}}.odds (game_date TEXT NOT NULL, team TEXT NOT NULL)\",\n  \"CREATE TABLE IF NOT EXISTS {{dataset}}.poison (x TEXT)\",\n"
            ),
        )
        .replace(
            setup_bigquery,
            &format!(
                "{setup_bigquery}  \"CREATE TABLE IF NOT EXISTS {{dataset}}.odds (game_date DATE NOT NULL, team STRING NOT NULL) PARTITION BY game_date CLUSTER BY team\",\n  \"CREATE TABLE IF NOT EXISTS {{dataset}}.poison (x STRING)\",\n"
            ),
        );
    let at = text
        .find("\n[[phases]]\nname = \"analytics\"")
        .expect("analytics phase");
    format!("{}{second}{}", &text[..at], &text[at..])
}

fn push_body(date: &str) -> Vec<u8> {
    serde_json::to_vec(&PushEnvelope::wrap(
        &json!({ "data_date": date }),
        BTreeMap::new(),
        "m-1".into(),
        "projects/p/subscriptions/raw".into(),
    ))
    .unwrap()
}

#[tokio::test]
async fn a_redelivery_after_a_later_processor_failed_publishes_the_event_itself() {
    let env = TestEnv::with_pipeline(&two_processor_raw()).await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    env.exec_for("INSERT INTO {dataset}.poison (x) VALUES ('once')", &[day])
        .await;
    let worker = env.app.worker.clone();

    let first = worker.handle_push("raw", &push_body("2024-01-01")).await;
    assert_eq!(first.http_status(), 500, "{:?}", first.body());
    assert_eq!(env.published_to("test-raw-done"), 0);

    env.exec_for("DELETE FROM {dataset}.poison WHERE x = 'once'", &[day])
        .await;
    let again = worker.handle_push("raw", &push_body("2024-01-01")).await;
    assert_eq!(again.http_status(), 200, "{:?}", again.body());
    assert_eq!(again.body()["published"], true, "{:?}", again.body());
    assert_eq!(env.published_to("test-raw-done"), 1);

    // A third delivery of the same message acknowledges without publishing again.
    let third = worker.handle_push("raw", &push_body("2024-01-01")).await;
    assert_eq!(third.http_status(), 200);
    assert_eq!(env.published_to("test-raw-done"), 1, "one event per run");
}

/// The one publication claim (issue 24, finding 3): the holder, a redelivery and the sweep
/// all publish through `claim_publication`, and the lease a caller passes is its token. Once
/// one publisher took an owed event, a caller still holding the older lease — a holder whose
/// run outlived its lease — loses, so the event goes out once. Shared: SQLite (the lease
/// compared in place), BigQuery's claims table and Firestore (the document's version).
#[tokio::test]
async fn a_publication_taken_over_is_lost_by_the_caller_with_the_older_lease() {
    use chrono::{Duration, Utc};
    use phasegate::ledger::TriggerKind;
    use phasegate::worker::RunRequest;

    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let mut req = RunRequest::new("raw", day, TriggerKind::Cli);
    req.skip_downstream = true;
    env.app.worker.run_phase(&req).await.expect("run");
    // Done, owed, its holder's lease over.
    let mut run = env.latest("ingest", day).await.expect("run");
    run.skip_downstream_trigger = false;
    run.lease_until = Some(Utc::now() - Duration::seconds(1));
    env.app.ledger().record(&run).await.expect("record");
    let seen = env.latest("ingest", day).await.expect("run");
    assert!(
        seen.owes_event() && !seen.lease_alive(Utc::now()),
        "{seen:?}"
    );

    let ledger = env.app.ledger();
    let until = Utc::now() + Duration::seconds(60);
    assert!(
        ledger
            .claim_publication(std::slice::from_ref(&seen), until)
            .await
            .expect("claim"),
        "the first publisher takes it"
    );
    assert!(
        !ledger
            .claim_publication(std::slice::from_ref(&seen), until)
            .await
            .expect("claim"),
        "a caller with the older lease loses: one event"
    );
}
