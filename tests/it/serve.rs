//! The real binary: `phasegate serve` listens on $PORT, handles a push, and exits cleanly on
//! SIGTERM (Cloud Run's shutdown signal).

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestEnv, d};
use phasegate::envelope::PushEnvelope;
use phasegate::ledger::RunStatus;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serve_handles_a_push_and_shuts_down_gracefully_on_sigterm() {
    let env = TestEnv::new("strict").await;
    env.season(&[d("2024-01-01")]).await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args(["serve", "--phase", "raw"])
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = PushEnvelope::wrap(
        &json!({"data_date": "2024-01-01"}),
        [("skip_downstream_trigger".to_string(), "true".to_string())].into(),
        "serve-1".into(),
        "s".into(),
    );
    let resp = client
        .post(format!("{base}/push"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        env.status("ingest", d("2024-01-01")).await,
        Some(RunStatus::Success)
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("shutdown complete"), "{stderr}");
    assert!(
        stderr.contains("authentication is DISABLED"),
        "the start-up warning is logged: {stderr}"
    );
}

#[tokio::test]
async fn serve_refuses_to_start_without_auth_settings_unless_disabled_explicitly() {
    let env = TestEnv::new("strict").await;
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let path = env.dir.path().join("no-auth.toml");
    std::fs::write(&path, text.replace("[auth]\nmode = \"disabled\"\n", "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(&path)
        .args(["serve", "--phase", "raw"])
        .env("PORT", free_port().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.audience") && err.contains("auth.mode = \"disabled\""),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_with_a_stalled_client_stops_accepting_and_ends_at_the_drain_deadline() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new("strict").await;
    let path = env.dir.path().join("drain.toml");
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[server]\nshutdown_drain_secs = 2\nbody_timeout_ms = 600000\n"),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(&path)
        .args(["serve", "--phase", "raw"])
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that sends half a body and then nothing.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"message\":")
        .await
        .unwrap();
    // Connections are accepted in order: once a later one is answered, the stalled one is
    // in the server's hands.
    let later = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(
        later
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    );
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // The listener closes first: new connections are refused while the drain still runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "refused while draining, not because the process was gone"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled client kept the server alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("drain deadline reached"), "{stderr}");
    assert!(stderr.contains("shutdown complete"), "{stderr}");
    drop(stalled);
}
