//! Push benchmark: N envelopes at one phase worker (the NBA example's `raw` phase) over HTTP,
//! on the embedded default, with a number of concurrent senders.
//!
//! Run: `cargo bench --bench push -- --messages 2000 --concurrency 8` (add
//! `--synchronous full` to measure SQLite's `synchronous = FULL` instead of the default
//! NORMAL; `TMPDIR` decides the disk the database is on).
//! Prints messages/s and p50/p99 latency for fresh dates (gate + SQL + ledger) and for
//! redeliveries of the same messages (the de-duplication path).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use phasegate::envelope::PushEnvelope;
use phasegate::sample::{SeasonSpec, generate};
use phasegate::server::{ServerState, serve};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn blast(
    url: &str,
    bodies: Arc<Vec<String>>,
    concurrency: usize,
) -> (f64, Duration, Duration) {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, bodies, next, url) = (
            client.clone(),
            bodies.clone(),
            next.clone(),
            url.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("send");
                assert!(resp.status().is_success(), "status {}", resp.status());
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed();
    all.sort();
    (
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
    )
}

#[tokio::main]
async fn main() {
    let messages = arg("--messages", 2000);
    let concurrency = arg("--concurrency", 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config =
        phasegate::example::example_config(&dir.path().join("bench.db")).expect("config");
    let args: Vec<String> = std::env::args().collect();
    if let Some(v) = args
        .iter()
        .position(|a| a == "--synchronous")
        .and_then(|i| args.get(i + 1))
    {
        config.backend.sqlite_synchronous =
            phasegate::config::Synchronous::parse(v).expect("--synchronous full|normal");
    }
    let synchronous = config.backend.sqlite_synchronous.as_pragma();
    let app = phasegate::startup::build(config).await.expect("build");
    app.init_schema().await.expect("schema");
    let start = NaiveDate::from_ymd_opt(2000, 1, 1).expect("date");
    let mut spec = SeasonSpec::new(start, messages as u32);
    spec.missing_feed.clear();
    spec.corrupt_feed.clear();
    generate(app.sqlite.as_ref().expect("sqlite"), &spec)
        .await
        .expect("sample data");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/push", listener.local_addr().expect("addr"));
    let state = Arc::new(ServerState {
        worker: app.worker.clone(),
        phase: Some("raw".into()),
        auth: None,
    });
    tokio::spawn(serve(listener, state, std::future::pending()));

    let bodies: Arc<Vec<String>> = Arc::new(
        phasegate::dates::days(start, spec.end())
            .enumerate()
            .map(|(i, d)| {
                serde_json::to_string(&PushEnvelope::wrap(
                    &json!({ "data_date": d }),
                    [("skip_downstream_trigger".to_string(), "true".to_string())].into(),
                    format!("bench-{i}"),
                    "bench".into(),
                ))
                .expect("json")
            })
            .collect(),
    );
    println!(
        "push benchmark: {messages} messages, {concurrency} concurrent senders, phase raw, SQLite (synchronous = {synchronous})"
    );
    let (rate, p50, p99) = blast(&url, bodies.clone(), concurrency).await;
    println!(
        "fresh dates   : {rate:>8.0} msg/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let (rate, p50, p99) = blast(&url, bodies, concurrency).await;
    println!(
        "redeliveries  : {rate:>8.0} msg/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}
