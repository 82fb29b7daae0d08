//! JSON logs of the real binary: the lines of a push carry Cloud Logging's trace fields from
//! `X-Cloud-Trace-Context` or `traceparent`, and one summary line says what the push was.

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestEnv, d};
use phasegate::envelope::PushEnvelope;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn push_body(date: &str, id: &str, attempt: u32) -> String {
    let mut e = PushEnvelope::wrap(
        &json!({ "data_date": date }),
        [("skip_downstream_trigger".to_string(), "true".to_string())].into(),
        id.into(),
        "s".into(),
    );
    e.delivery_attempt = Some(attempt);
    serde_json::to_string(&e).unwrap()
}

/// Serve with JSON logs, send two traced pushes, stop, and return every stdout line.
async fn logged_pushes(env: &TestEnv) -> Vec<Value> {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args(["serve", "--phase", "raw"])
        .env("PORT", port.to_string())
        .env("PHASEGATE_LOG_FORMAT", "json")
        .env("GOOGLE_CLOUD_PROJECT", "my-proj")
        // Debug: the per-push detail lines too, so "every line" is more than the summary.
        .env("RUST_LOG", "phasegate=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cloud = client
        .post(format!("{base}/push"))
        .header(
            "X-Cloud-Trace-Context",
            "105445aa7843bc8bf206b12000100000/1;o=1",
        )
        .body(push_body("2024-01-01", "msg-cloud", 3))
        .send()
        .await
        .unwrap();
    assert_eq!(cloud.status().as_u16(), 200);
    let w3c = client
        .post(format!("{base}/push"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(w3c.status().as_u16(), 400);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn with_trace<'a>(lines: &'a [Value], trace: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["logging.googleapis.com/trace"] == trace)
        .collect()
}

#[tokio::test]
async fn every_line_of_a_push_carries_its_trace_for_both_header_formats() {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let lines = logged_pushes(&env).await;

    // X-Cloud-Trace-Context: the span id is decimal there, hex in the log.
    let cloud = with_trace(
        &lines,
        "projects/my-proj/traces/105445aa7843bc8bf206b12000100000",
    );
    assert!(cloud.len() >= 2, "worker line and summary: {lines:#?}");
    assert!(
        cloud
            .iter()
            .all(|l| l["logging.googleapis.com/spanId"] == "0000000000000001")
    );
    let summary = cloud
        .iter()
        .find(|l| l["message"] == "push summary")
        .expect("summary line");
    assert_eq!(summary["httpRequest"]["requestMethod"], "POST");
    assert_eq!(summary["httpRequest"]["requestUrl"], "/push");
    assert_eq!(summary["httpRequest"]["status"], 200);
    assert!(
        summary["httpRequest"]["latency"]
            .as_str()
            .is_some_and(|l| l.ends_with('s'))
    );
    assert_eq!(summary["phase"], "raw");
    assert_eq!(summary["dataDate"], "2024-01-01");
    assert_eq!(summary["messageId"], "msg-cloud");
    assert_eq!(summary["deliveryAttempt"], 3);
    assert_eq!(summary["outcome"], "success");
    assert!(summary["latencyMs"].is_number());

    // traceparent, on a push that is refused: the refusal and the summary both carry it.
    let w3c = with_trace(
        &lines,
        "projects/my-proj/traces/4bf92f3577b34da6a3ce929d0e0e4736",
    );
    assert!(w3c.len() >= 2, "{lines:#?}");
    assert!(
        w3c.iter()
            .all(|l| l["logging.googleapis.com/spanId"] == "00f067aa0ba902b7")
    );
    let refused = w3c
        .iter()
        .find(|l| l["message"] == "push summary" && l["outcome"] == "bad_message")
        .expect("summary of the refused push");
    // The alerts name `jsonPayload.reason` (terraform/monitoring.tf): it is on the summary.
    assert!(
        refused["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{refused}"
    );
    assert_eq!(summary["reason"], "", "a done phase has no reason");

    // Lines outside a request (start-up, shutdown) carry no trace.
    let startup = lines
        .iter()
        .find(|l| l["message"] == "phasegate worker listening")
        .expect("start-up line");
    assert!(startup.get("logging.googleapis.com/trace").is_none());
}
