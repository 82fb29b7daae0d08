//! `GET /metrics` on the real HTTP server: the push counters move for every outcome.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{TestEnv, d};
use phasegate::bus::{PublishError, Publisher};
use phasegate::envelope::PushEnvelope;
use phasegate::server::{ServerState, serve};
use phasegate::worker::Worker;
use serde_json::json;
use tokio::sync::oneshot;

struct Server {
    base: String,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

/// Serialises the tests of this file (they read one process-wide metrics registry).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(env: &TestEnv) -> Server {
    start_worker(env.app.worker.clone()).await
}

async fn start_worker(worker: Arc<Worker>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(ServerState {
        worker,
        phase: None,
        auth: None,
    });
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        serve(listener, state, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server { base, stop, handle }
}

fn body(date: &str, phase: Option<&str>, id: &str) -> String {
    let mut payload = json!({ "data_date": date });
    if let Some(p) = phase {
        payload["phase"] = json!(p);
    }
    let attrs = [("skip_downstream_trigger".to_string(), "true".to_string())].into();
    serde_json::to_string(&PushEnvelope::wrap(&payload, attrs, id.into(), "s".into())).unwrap()
}

/// Every sample of the exposition: `name{labels}` → value.
async fn scrape(base: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            Some((name.to_string(), labels, value.parse().ok()?))
        })
        .collect()
}

fn value(
    samples: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

async fn push(base: &str, phase: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/push/{phase}"))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn push_counters_move_for_every_outcome() {
    // The registry is process-wide: one test at a time, so counts are this test's own.
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01"), d("2024-01-02")]).await;
    env.lose_feed(d("2024-01-02")).await;
    let server = start(&env).await;
    let pushes = [
        ("raw", body("2024-01-01", None, "ok"), 200, "success"),
        ("raw", body("2024-01-01", None, "ok"), 200, "already_done"),
        ("raw", body("2024-01-02", None, "lost"), 500, "failed"),
        // No game on the 5th: a legitimately empty date.
        ("raw", body("2024-01-05", None, "empty"), 200, "no_data"),
        // The 2nd's raw run failed, so the strict gate blocks analytics.
        (
            "analytics",
            body("2024-01-02", Some("raw"), "early"),
            424,
            "blocked",
        ),
        ("raw", "{not json".to_string(), 400, "bad_message"),
        (
            "analytics",
            body("2024-01-01", Some("predictions"), "odd"),
            400,
            "wrong_phase",
        ),
    ];
    for (phase, body, status, outcome) in pushes {
        let labels = [("phase", phase), ("outcome", outcome)];
        let before = value(
            &scrape(&server.base).await,
            "phasegate_pushes_total",
            &labels,
        );
        assert_eq!(push(&server.base, phase, body).await, status, "{outcome}");
        let after = scrape(&server.base).await;
        assert_eq!(
            value(&after, "phasegate_pushes_total", &labels),
            before + 1.0,
            "{phase} {outcome}"
        );
        assert!(
            value(&after, "phasegate_push_duration_seconds_count", &labels) >= 1.0,
            "{outcome}"
        );
    }
    let samples = scrape(&server.base).await;
    assert_eq!(
        value(&samples, "phasegate_pushes_in_flight", &[("phase", "raw")]),
        0.0
    );
    let _ = server.stop.send(());
    server.handle.await.unwrap();
}

#[tokio::test]
async fn the_instrumentation_hooks_for_the_worker_and_backends_record_what_they_say() {
    // The registry is process-wide: one test at a time, so counts are this test's own.
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let server = start(&env).await;
    // The app's ledger is built timed (startup wraps it in `TimedLedger`).
    let timed = env.app.ledger().clone();
    let labels = [("store", "ledger"), ("op", "latest")];
    let count = "phasegate_store_call_duration_seconds_count";
    let before = value(&scrape(&server.base).await, count, &labels);
    timed.latest("ingest", d("2024-01-01")).await.unwrap();
    assert_eq!(
        value(&scrape(&server.base).await, count, &labels),
        before + 1.0
    );

    // analytics before raw ran: the strict upstream check fails.
    let config = &env.app.config;
    let summary = &config.phase("analytics").unwrap().processors[0];
    let report = phasegate::gate::evaluate(
        config,
        summary,
        d("2024-01-01"),
        env.app.ledger().as_ref(),
        env.app.warehouse().as_ref(),
    )
    .await
    .unwrap();
    let failed = [
        ("check", "upstream"),
        ("mode", "strict"),
        ("result", "fail"),
    ];
    let before = value(
        &scrape(&server.base).await,
        "phasegate_gate_results_total",
        &failed,
    );
    phasegate::metrics::gate_report(&report);
    assert_eq!(
        value(
            &scrape(&server.base).await,
            "phasegate_gate_results_total",
            &failed
        ),
        before + 1.0
    );
    let _ = server.stop.send(());
    server.handle.await.unwrap();
}

/// A bus that is down: every publish fails.
struct DownBus;

#[async_trait::async_trait]
impl Publisher for DownBus {
    async fn publish(
        &self,
        topic: &str,
        _: &serde_json::Value,
        _: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        Err(PublishError {
            topic: topic.into(),
            message: "unavailable".into(),
        })
    }
}

#[tokio::test]
async fn publish_and_store_failures_are_counted_too() {
    // The registry is process-wide: one test at a time, so counts are this test's own.
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01"), d("2024-01-02")]).await;
    let worker = Arc::new(
        Worker::new(
            env.app.config.clone(),
            env.app.ledger().clone(),
            env.app.warehouse().clone(),
            Arc::new(DownBus),
        )
        .with_one_transaction(env.app.one_transaction()),
    );
    let server = start_worker(worker).await;
    let unpublished = |date| {
        let e = PushEnvelope::wrap(
            &json!({ "data_date": date }),
            BTreeMap::new(),
            format!("p-{date}"),
            "s".into(),
        );
        serde_json::to_string(&e).unwrap()
    };
    let counted = [("phase", "raw"), ("outcome", "publish_failed")];
    let before = value(
        &scrape(&server.base).await,
        "phasegate_pushes_total",
        &counted,
    );
    assert_eq!(
        push(&server.base, "raw", unpublished("2024-01-01")).await,
        503
    );
    let after = value(
        &scrape(&server.base).await,
        "phasegate_pushes_total",
        &counted,
    );
    assert_eq!(after, before + 1.0);

    let c = rusqlite::Connection::open(env.db_path()).unwrap();
    c.execute_batch("DROP TABLE processor_run_history").unwrap();
    let counted = [("phase", "raw"), ("outcome", "store_unavailable")];
    let before = value(
        &scrape(&server.base).await,
        "phasegate_pushes_total",
        &counted,
    );
    assert_eq!(
        push(&server.base, "raw", unpublished("2024-01-02")).await,
        503
    );
    let after = value(
        &scrape(&server.base).await,
        "phasegate_pushes_total",
        &counted,
    );
    assert_eq!(after, before + 1.0);
    let _ = server.stop.send(());
    server.handle.await.unwrap();
}
