//! The push endpoint over real HTTP: every row of README's outcome → status table, and every
//! kind of bad input (refused with a clear 4xx, nothing written).

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use common::{TestEnv, d};
use phasegate::bus::{PublishError, Publisher};
use phasegate::envelope::PushEnvelope;
use phasegate::ledger::{RunRecord, RunStatus, TriggerKind};
use phasegate::server::{ServerLimits, ServerState, serve_with};
use phasegate::worker::Worker;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(worker: Arc<Worker>, phase: Option<&str>) -> Server {
        Server::start_with(worker, phase, ServerLimits::default()).await
    }

    async fn start_with(worker: Arc<Worker>, phase: Option<&str>, limits: ServerLimits) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(ServerState {
            worker,
            phase: phase.map(String::from),
            auth: None,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            serve_with(listener, state, limits, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            base,
            stop: Some(tx),
            handle,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = self.handle.await;
    }
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

fn envelope(payload: Value, attrs: &[(&str, &str)], id: &str) -> String {
    let attributes = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::to_string(&PushEnvelope::wrap(
        &payload,
        attributes,
        id.into(),
        "projects/p/subscriptions/s".into(),
    ))
    .unwrap()
}

fn ledger_rows(env: &TestEnv) -> i64 {
    let c = rusqlite::Connection::open(env.db_path()).unwrap();
    c.query_row("SELECT COUNT(*) FROM processor_run_history", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[tokio::test]
async fn healthz_answers() {
    let env = TestEnv::new("strict").await;
    let server = Server::start(env.app.worker.clone(), None).await;
    let resp = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    server.stop().await;
}

#[tokio::test]
async fn success_rows_acknowledge() {
    let env = TestEnv::new("strict").await;
    let days = [d("2024-01-01"), d("2024-01-02")];
    env.season(&days).await;
    let server = Server::start(env.app.worker.clone(), Some("raw")).await;
    let url = format!("{}/push", server.base);

    // Processed and published.
    let (s, b) = post(
        &url,
        envelope(json!({"data_date": "2024-01-01"}), &[], "m1"),
    )
    .await;
    assert_eq!(
        (s, b["outcome"].as_str(), b["published"].as_bool()),
        (200, Some("success"), Some(true))
    );
    // Processed, skip flag: not published.
    let (s, b) = post(
        &url,
        envelope(
            json!({"data_date": "2024-01-02"}),
            &[("skip_downstream_trigger", "true")],
            "m2",
        ),
    )
    .await;
    assert_eq!((s, b["published"].as_bool()), (200, Some(false)));
    // Already done: acknowledged without work.
    let (s, b) = post(
        &url,
        envelope(
            json!({"data_date": "2024-01-02"}),
            &[("skip_downstream_trigger", "true")],
            "m2",
        ),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("already_done")));
    // A date without games: no_data, acknowledged.
    let (s, b) = post(
        &url,
        envelope(json!({"data_date": "2024-01-03"}), &[], "m3"),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (200, Some("no_data")));
    assert_eq!(
        env.status("ingest", d("2024-01-03")).await,
        Some(RunStatus::NoData)
    );
    server.stop().await;
}

#[tokio::test]
async fn failure_rows_nack_with_their_status() {
    let env = TestEnv::new("strict").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let server = Server::start(env.app.worker.clone(), None).await;
    let base = server.base.clone();

    // Strict gate: upstream never ran → 424, recorded as blocked.
    let (s, b) = post(
        &format!("{base}/push/analytics"),
        envelope(json!({"data_date": "2024-01-01"}), &[], "b1"),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (424, Some("blocked")));
    assert_eq!(env.status("summary", day).await, Some(RunStatus::Blocked));

    // Processor failed (feed missing on a scheduled date) → 500, recorded as failed.
    env.lose_feed(day).await;
    let (s, b) = post(
        &format!("{base}/push/raw"),
        envelope(json!({"data_date": "2024-01-01"}), &[], "f1"),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (500, Some("failed")));
    assert!(b["reason"].as_str().unwrap().contains("missing"));
    assert_eq!(env.status("ingest", day).await, Some(RunStatus::Failed));

    // Another delivery is running the same processor and date → 409.
    let mut running = RunRecord::start(
        "ingest",
        "raw",
        d("2024-01-05"),
        TriggerKind::Pubsub,
        Some("x".into()),
        false,
    );
    // A live claim: its holder renews the lease.
    running.lease_until = Some(chrono::Utc::now() + chrono::Duration::seconds(60));
    env.app.ledger().record(&running).await.unwrap();
    let (s, b) = post(
        &format!("{base}/push/raw"),
        envelope(json!({"data_date": "2024-01-05"}), &[], "r1"),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (409, Some("in_progress")));
    server.stop().await;
}

struct DownBus;

#[async_trait]
impl Publisher for DownBus {
    async fn publish(
        &self,
        topic: &str,
        _: &Value,
        _: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        Err(PublishError {
            topic: topic.into(),
            message: "unavailable".into(),
        })
    }
}

#[tokio::test]
async fn publish_failure_and_store_failure_are_503() {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let worker = Arc::new(
        Worker::new(
            env.app.config.clone(),
            env.app.ledger().clone(),
            env.app.warehouse().clone(),
            Arc::new(DownBus),
        )
        .with_one_transaction(env.app.one_transaction()),
    );
    let server = Server::start(worker, Some("raw")).await;
    let url = format!("{}/push", server.base);
    let (s, b) = post(
        &url,
        envelope(json!({"data_date": "2024-01-01"}), &[], "p1"),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (503, Some("publish_failed")));

    let c = rusqlite::Connection::open(env.db_path()).unwrap();
    c.execute_batch("DROP TABLE processor_run_history").unwrap();
    let (s, b) = post(
        &url,
        envelope(json!({"data_date": "2024-01-02"}), &[], "p2"),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (503, Some("store_unavailable")));
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let server = Server::start(env.app.worker.clone(), None).await;
    let raw = format!("{}/push/raw", server.base);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let with_data = |data: String| {
        json!({"message": {"data": data, "messageId": "x1", "attributes": {}}, "subscription": "s"})
            .to_string()
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{not json".into(), 400, "not a push envelope"),
        (
            "no message",
            json!({"subscription": "s"}).to_string(),
            400,
            "message",
        ),
        (
            "no messageId",
            json!({"message": {"data": b64("{}")}}).to_string(),
            400,
            "messageId",
        ),
        (
            "empty messageId",
            json!({"message": {"data": b64("{}"), "messageId": " "}}).to_string(),
            400,
            "messageId",
        ),
        (
            "no data",
            json!({"message": {"messageId": "x"}}).to_string(),
            400,
            "data is missing",
        ),
        (
            "bad base64",
            with_data("%%%not-base64".into()),
            400,
            "base64",
        ),
        (
            "payload not JSON",
            with_data(b64("hello")),
            400,
            "not a JSON object",
        ),
        ("no date", with_data(b64("{}")), 400, "data_date is missing"),
        (
            "invalid date",
            with_data(b64(r#"{"data_date": "2024-02-30"}"#)),
            400,
            "YYYY-MM-DD",
        ),
        (
            "date in wrong form",
            with_data(b64(r#"{"data_date": "01/02/2024"}"#)),
            400,
            "YYYY-MM-DD",
        ),
        (
            "signed year",
            with_data(b64(r#"{"data_date": "+2025-1-01"}"#)),
            400,
            "YYYY-MM-DD",
        ),
        (
            "space-padded date",
            with_data(b64(r#"{"data_date": "2025- 1- 1"}"#)),
            400,
            "YYYY-MM-DD",
        ),
        (
            "negative year",
            with_data(b64(r#"{"data_date": "-001-01-01"}"#)),
            400,
            "YYYY-MM-DD",
        ),
        (
            "year zero",
            with_data(b64(r#"{"data_date": "0000-01-01"}"#)),
            400,
            "between 1900 and 2199",
        ),
        (
            "payload is an array",
            with_data(b64(r#"["2025-10-22"]"#)),
            400,
            "not a JSON object",
        ),
        (
            "data_date is a number",
            with_data(b64(r#"{"data_date": 20251022}"#)),
            400,
            "not a JSON object with string fields",
        ),
        (
            "envelope is an array",
            json!([{"data": b64(r#"{"data_date":"2024-01-01"}"#), "messageId": "x"}, "s"])
                .to_string(),
            400,
            "expected a JSON object",
        ),
        (
            "message is an array",
            json!({"message": [b64(r#"{"data_date":"2024-01-01"}"#), {}, "x"]}).to_string(),
            400,
            "not a push envelope",
        ),
        (
            "dates disagree",
            envelope(
                json!({"data_date": "2024-01-01"}),
                &[("data_date", "2024-01-02")],
                "x",
            ),
            400,
            "disagree",
        ),
        (
            "completion event of the wrong phase",
            envelope(
                json!({"data_date": "2024-01-01", "phase": "analytics"}),
                &[],
                "x",
            ),
            400,
            "listens to",
        ),
    ];
    for (name, body, status, needle) in cases {
        let (s, b) = post(&raw, body).await;
        assert_eq!(s, status, "{name}: {b}");
        let reason = b["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(needle), "{name}: {reason}");
    }
    let (s, b) = post(
        &format!("{}/push/nosuch", server.base),
        envelope(json!({"data_date": "2024-01-01"}), &[], "x"),
    )
    .await;
    assert_eq!((s, b["outcome"].as_str()), (404, Some("unknown_phase")));
    let (s, _) = post(
        &format!("{}/push", server.base),
        envelope(json!({"data_date": "2024-01-01"}), &[], "x"),
    )
    .await;
    assert_eq!(s, 404, "an all-phase worker needs /push/{{phase}}");
    let (s, _) = post(&format!("{}/elsewhere", server.base), "{}").await;
    assert_eq!(s, 404);
    let resp = reqwest::get(&raw).await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);

    let huge = format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(phasegate::server::MAX_BODY_BYTES + 1)
    );
    let (s, b) = post(&raw, huge).await;
    assert_eq!((s, b["outcome"].as_str()), (413, Some("too_large")));

    assert_eq!(ledger_rows(&env), 0, "bad input must not write anything");
    server.stop().await;
}

#[tokio::test]
async fn a_phase_worker_refuses_pushes_for_other_phases() {
    let env = TestEnv::new("strict").await;
    let server = Server::start(env.app.worker.clone(), Some("raw")).await;
    let (s, _) = post(
        &format!("{}/push/analytics", server.base),
        envelope(json!({"data_date": "2024-01-01"}), &[], "x"),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(ledger_rows(&env), 0);
    server.stop().await;
}

/// Read what the server sends until it closes the connection (a hang fails the test).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

fn short_limits() -> ServerLimits {
    ServerLimits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn a_stalled_half_header_and_an_idle_connection_are_closed() {
    let env = TestEnv::new("strict").await;
    let server = Server::start_with(env.app.worker.clone(), Some("raw"), short_limits()).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    let answer = read_until_closed(&mut half).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    read_until_closed(&mut idle).await;
    // The server still serves.
    let resp = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(ledger_rows(&env), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_writes_nothing() {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let server = Server::start_with(env.app.worker.clone(), Some("raw"), short_limits()).await;
    let mut s = TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"message\":")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert_eq!(ledger_rows(&env), 0);
    server.stop().await;
}

#[tokio::test]
async fn pushes_beyond_the_in_flight_cap_get_503_with_retry_after() {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let limits = ServerLimits {
        max_in_flight: 1,
        body_timeout: Duration::from_secs(60),
        ..ServerLimits::default()
    };
    let server = Server::start_with(env.app.worker.clone(), Some("raw"), limits).await;
    let url = format!("{}/push", server.base);
    // A client holds the one slot: the server asks for its body (100 Continue) only once
    // the push has its slot, and the body never comes.
    let mut holder = TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    holder
        .write_all(
            b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = holder.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("100 Continue"));
    let busy = reqwest::Client::new()
        .post(&url)
        .body(envelope(json!({"data_date": "2024-01-01"}), &[], "busy-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status().as_u16(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    let b: Value = busy.json().await.unwrap();
    assert_eq!(b["outcome"], "too_busy");
    drop(holder);
    server.stop().await;
}
