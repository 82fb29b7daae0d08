//! The real Pub/Sub client against an endpoint that does not answer: the publish is retried
//! with backoff, then the push is nacked (503) with the run recorded and its event owed; the
//! next delivery publishes the owed event without running again (the outbox).

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{TestEnv, d};
use phasegate::backends::pubsub::PubSubBus;
use phasegate::config::{BusConfig, BusKind};
use phasegate::envelope::PushEnvelope;
use phasegate::ledger::RunStatus;
use phasegate::worker::Worker;
use serde_json::json;

#[tokio::test]
async fn an_unreachable_pubsub_is_a_nack_and_the_redelivery_publishes_the_owed_event() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let bus = PubSubBus::connect(&BusConfig {
        kind: BusKind::Pubsub,
        project: Some("phasegate-test".into()),
        emulator_host: Some(format!("127.0.0.1:{dead}")),
        ..BusConfig::default()
    })
    .await
    .expect("the client connects lazily");
    let down = Worker::new(
        env.app.config.clone(),
        env.app.ledger().clone(),
        env.app.warehouse().clone(),
        Arc::new(bus),
    )
    .with_one_transaction(env.app.one_transaction());
    let body = serde_json::to_vec(&PushEnvelope::wrap(
        &json!({ "data_date": day }),
        BTreeMap::new(),
        "m-1".into(),
        "s".into(),
    ))
    .unwrap();

    let outcome = down.handle_push("raw", &body).await;
    assert_eq!(outcome.http_status(), 503);
    assert_eq!(outcome.label(), "publish_failed");
    let run = env.latest("ingest", day).await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    assert_eq!(run.published_at, None);

    // The redelivery reaches a worker whose bus works: no second run, the event goes out.
    let outcome = env.app.worker.handle_push("raw", &body).await;
    assert_eq!(outcome.http_status(), 200);
    assert_eq!(env.published_to("test-raw-done"), 1);
    let after = env.latest("ingest", day).await.unwrap();
    assert_eq!(after.run_id, run.run_id);
    assert!(after.published_at.is_some());
}
