//! End to end on Google's Pub/Sub emulator and bqemulator, as Cloud Run would run it: one
//! `phasegate serve --phase P` process per phase, push subscriptions from each phase's input
//! topic to its worker, the ledger and tables in BigQuery.
//!
//! Needs the emulators (scripts/test.sh runs it):
//! `scripts/emulators.sh env PHASEGATE_TEST_BACKEND=bigquery cargo test --test it -- --ignored e2e_emulators::`

use crate::common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use common::{Backend, PIPELINE, TestEnv, d};
use phasegate::backends::pubsub::{PubSubAdmin, PubSubBus};
use phasegate::bus::Publisher;
use phasegate::config::BusConfig;
use phasegate::ledger::RunStatus;
use serde_json::json;

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn emulator(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run under scripts/emulators.sh"))
}

/// Worker logs go to files in the test's directory (printed when a wait times out).
fn log_file(env: &TestEnv, phase: &str) -> Stdio {
    let path = env.dir.path().join(format!("worker-{phase}.log"));
    std::fs::File::create(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn worker_logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("worker-") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!(
                    "--- {name}\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
    }
    out
}

/// Poll until `f` returns true or the timeout passes.
async fn eventually<F, Fut>(env: &TestEnv, what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\n{}",
            worker_logs(env.dir.path())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A test pipeline on both emulators, with worker processes behind push subscriptions.
struct Cloud {
    env: TestEnv,
    bus_config: BusConfig,
    admin: PubSubAdmin,
    prefix: String,
    workers: Workers,
    /// Each worker's base URL (its `/metrics`).
    bases: Vec<String>,
}

impl Cloud {
    async fn new(tag: &str) -> Cloud {
        assert_eq!(
            common::backend(),
            Backend::BigQuery,
            "run with PHASEGATE_TEST_BACKEND=bigquery"
        );
        let pubsub_host = emulator("PUBSUB_EMULATOR_HOST");
        let project =
            std::env::var("PHASEGATE_EMULATOR_PROJECT").unwrap_or_else(|_| "phasegate-test".into());
        // Unique topics per run: the emulator keeps state for its whole life.
        let prefix = format!("{tag}{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let pipeline = PIPELINE
            .replace("{MODE}", "strict")
            .replace("\"test-", &format!("\"{prefix}-"))
            .replace(
                "[bus]\n",
                &format!(
                    "[bus]\nkind = \"pubsub\"\nproject = {project:?}\nemulator_host = {pubsub_host:?}\n"
                ),
            );
        let env = TestEnv::with_pipeline(&pipeline).await;
        let bus_config = BusConfig {
            kind: phasegate::config::BusKind::Pubsub,
            project: Some(project),
            emulator_host: Some(pubsub_host),
            ..BusConfig::default()
        };
        let admin = PubSubAdmin::connect(&bus_config).await.expect("admin");
        Cloud {
            env,
            bus_config,
            admin,
            prefix,
            workers: Workers(Vec::new()),
            bases: Vec::new(),
        }
    }

    /// `phasegate serve --phase P` on a free port, with a push subscription from the
    /// phase's input topic to its `/push`.
    async fn start_worker(&mut self, phase: &str) {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_phasegate"))
            .arg("--config")
            .arg(self.env.config_path())
            .args(["serve", "--phase", phase])
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(log_file(&self.env, phase))
            .spawn()
            .expect("spawn worker");
        self.workers.0.push(child);
        let base = format!("http://127.0.0.1:{port}");
        self.bases.push(base.clone());
        eventually(&self.env, &format!("worker {phase} up"), 30, || {
            let url = format!("{base}/healthz");
            async move {
                reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        let input = self
            .env
            .app
            .config
            .phase(phase)
            .map(|p| p.input().to_string())
            .expect("phase");
        self.admin
            .ensure_push_subscription(
                &format!("{}-{phase}-push", self.prefix),
                &input,
                &format!("{base}/push"),
                60,
            )
            .await
            .expect("push subscription");
    }
}

#[tokio::test]
#[ignore = "needs the Pub/Sub and BigQuery emulators: scripts/emulators.sh"]
async fn the_cascade_runs_through_pubsub_push_workers_into_bigquery() {
    let mut cloud = Cloud::new("e2e").await;
    let config = cloud.env.app.config.clone();
    // Day 2 is the blocked-then-fixed date, day 3 the duplicate, day 4 (a week later, out of
    // every other day's look-back) the skip-flagged one. Day 1 is the fixture's season start
    // (`not_before`): no history is expected before it.
    let days = [
        d("2024-01-01"),
        d("2024-01-02"),
        d("2024-01-03"),
        d("2024-01-10"),
    ];
    cloud.env.season(&days).await;
    // One worker process per phase, each with a push subscription from its input topic.
    for phase in &config.phases {
        cloud.start_worker(&phase.name).await;
    }
    let env = &cloud.env;
    let bus = PubSubBus::connect(&cloud.bus_config)
        .await
        .expect("publisher");
    let trigger_topic = config.phases[0].input().to_string();
    let trigger = |date: NaiveDate, skip: bool| {
        let mut attrs = BTreeMap::from([("data_date".to_string(), date.to_string())]);
        if skip {
            attrs.insert("skip_downstream_trigger".into(), "true".into());
        }
        (json!({ "data_date": date }), attrs)
    };
    let status = |p: &'static str, day: NaiveDate| {
        let env = &env;
        async move { env.status(p, day).await }
    };

    // 1. A trigger for D flows through every phase into the BigQuery ledger.
    let (data, attrs) = trigger(days[0], false);
    bus.publish(&trigger_topic, &data, attrs)
        .await
        .expect("publish");
    eventually(env, "all four phases for day 1", 90, || async {
        status("preds", days[0]).await == Some(RunStatus::Success)
    })
    .await;
    for p in ["ingest", "summary", "features"] {
        let run = env.latest(p, days[0]).await.unwrap();
        assert_eq!(run.status, RunStatus::Success, "{p}");
        assert!(
            run.published_at.is_some(),
            "{p} published its completion event"
        );
        assert!(
            run.message_id.is_some(),
            "{p} records the Pub/Sub message id"
        );
    }

    // 2. A strict gate blocks (nack, the emulator redelivers) and the same message succeeds
    //    on a later delivery once the upstream run is fixed.
    let run_raw_day_2 = || {
        Command::new(env!("CARGO_BIN_EXE_phasegate"))
            .arg("--config")
            .arg(env.config_path())
            .args("run --phase raw --date 2024-01-02 --skip-downstream-trigger".split(' '))
            .output()
            .expect("run raw")
    };
    env.lose_feed(days[1]).await;
    let out = run_raw_day_2();
    assert_eq!(out.status.code(), Some(1), "raw fails without its feed");
    let (_, attrs) = trigger(days[1], false);
    let raw_done_topic = config.phases[0].completion_topic.clone();
    bus.publish(
        &raw_done_topic,
        &json!({"data_date": days[1], "phase": "raw"}),
        attrs.clone(),
    )
    .await
    .expect("publish");
    eventually(env, "analytics blocked on day 2", 60, || async {
        status("summary", days[1]).await == Some(RunStatus::Blocked)
    })
    .await;
    env.restore_feed(days[1]).await;
    let out = run_raw_day_2();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eventually(
        env,
        "the redelivered message succeeds and cascades",
        90,
        || async { status("preds", days[1]).await == Some(RunStatus::Success) },
    )
    .await;
    let history = env.app.ledger().history("summary", days[1]).await.unwrap();
    assert!(
        history.iter().any(|r| r.status == RunStatus::Blocked),
        "blocked at least once"
    );
    assert_eq!(history.last().map(|r| r.status), Some(RunStatus::Success));

    // 3. A message published twice is processed once.
    for _ in 0..2 {
        let (data, attrs) = trigger(days[2], false);
        bus.publish(&trigger_topic, &data, attrs)
            .await
            .expect("publish");
    }
    eventually(env, "day 3 through every phase", 90, || async {
        status("preds", days[2]).await == Some(RunStatus::Success)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in ["ingest", "summary", "features", "preds"] {
        let runs = env.app.ledger().history(p, days[2]).await.unwrap();
        assert_eq!(runs.len(), 1, "{p} ran once for two identical triggers");
    }
    // 4. A skip-flagged trigger stops after the first phase.
    let (data, attrs) = trigger(days[3], true);
    bus.publish(&trigger_topic, &data, attrs)
        .await
        .expect("publish");
    eventually(env, "raw for day 4", 60, || async {
        status("ingest", days[3]).await == Some(RunStatus::Success)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status("summary", days[3]).await,
        None,
        "the cascade must stop"
    );
    assert_eq!(
        env.latest("ingest", days[3]).await.unwrap().published_at,
        None
    );
}

#[tokio::test]
#[ignore = "needs the Pub/Sub and BigQuery emulators: scripts/emulators.sh"]
async fn backfill_via_pubsub_follows_the_ledger_and_never_cascades() {
    let mut cloud = Cloud::new("bf").await;
    let days = [d("2024-04-01"), d("2024-04-02"), d("2024-04-03")];
    cloud.env.season(&days).await;
    cloud.env.lose_feed(days[2]).await;
    cloud.start_worker("raw").await;
    let env = &cloud.env;

    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args([
            "backfill",
            "--phase",
            "raw",
            "--from",
            "2024-04-01",
            "--to",
            "2024-04-03",
            "--error-policy",
            "continue",
            "--via-pubsub",
            "--timeout-secs",
            "60",
            "--parallel",
            "3",
        ])
        .output()
        .expect("backfill");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2 succeeded, 0 no data, 1 failed"), "{text}");
    assert!(text.contains("2024-04-03  FAILED (failed)"), "{text}");
    for day in &days[..2] {
        let run = env.latest("ingest", *day).await.unwrap();
        assert_eq!(run.status, RunStatus::Success);
        assert_eq!(run.trigger, phasegate::ledger::TriggerKind::Backfill);
        assert!(run.skip_downstream_trigger && run.published_at.is_none());
    }
    assert_eq!(env.status("summary", days[0]).await, None, "no cascade");
}

/// `backfill --phase P --via-pubsub` over `from..=to` on the workers; its exit code and output.
fn backfill_via_pubsub(
    env: &TestEnv,
    phase: &str,
    day: &str,
    extra: &[&str],
) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args(["backfill", "--phase", phase, "--from", day, "--to", day])
        .args(["--via-pubsub", "--timeout-secs", "60"])
        .args(extra)
        .output()
        .expect("backfill");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
#[ignore = "needs the Pub/Sub and BigQuery emulators: scripts/emulators.sh"]
async fn backfill_via_pubsub_waits_for_the_run_that_replaces_a_stale_one() {
    let mut cloud = Cloud::new("stale").await;
    let day = d("2024-05-01");
    cloud.env.season(&[day]).await;
    cloud.start_worker("raw").await;
    cloud.start_worker("analytics").await;
    let env = &cloud.env;
    let (code, text) = backfill_via_pubsub(env, "raw", "2024-05-01", &[]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = backfill_via_pubsub(env, "analytics", "2024-05-01", &[]);
    assert_eq!(code, Some(0), "{text}");
    let stale = env.latest("summary", day).await.expect("summary ran");

    // A corrected raw run (a forced re-run, the cascade off): summary's run is now stale, and
    // the next analytics backfill must wait for its replacement, not count the stale run done.
    let (code, text) = backfill_via_pubsub(env, "raw", "2024-05-01", &["--force"]);
    assert_eq!(code, Some(0), "{text}");
    let corrected = env.latest("ingest", day).await.unwrap().run_id;
    let (code, text) = backfill_via_pubsub(env, "analytics", "2024-05-01", &[]);
    assert_eq!(code, Some(0), "{text}");
    let fresh = env.latest("summary", day).await.unwrap();
    assert_ne!(
        fresh.run_id, stale.run_id,
        "the backfill ended before the re-run: {text}"
    );
    let consumed: Vec<String> = fresh
        .upstream_runs
        .unwrap_or_default()
        .into_iter()
        .map(|u| u.run_id)
        .collect();
    assert_eq!(consumed, [corrected], "{text}");
}

/// The year-long backfill of issue 26, as a benchmark with its guarantees asserted:
/// `backfill --all --via-pubsub --parallel 8` over `PHASEGATE_BENCH_DAYS` days (default 10,
/// as scripts/test.sh runs it; scripts/bench-coordination.sh runs 365) × 4 phases through the push workers, claims in
/// Firestore. Prints the wall time, the coordination time (every worker's Firestore calls,
/// from their `/metrics`) and its share, and asserts 0 failed and 0 duplicate runs.
#[tokio::test]
#[ignore = "needs the Pub/Sub, BigQuery and Firestore emulators: scripts/emulators.sh"]
async fn a_long_backfill_through_the_push_workers_has_no_failed_or_duplicate_run() {
    let days: i64 = std::env::var("PHASEGATE_BENCH_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut cloud = Cloud::new("yr").await;
    let from = d("2023-01-01");
    let to = from + chrono::Duration::days(days - 1);
    // One statement per table for the whole range: a job per date would dominate the run.
    for table in ["schedule", "feed"] {
        cloud
            .env
            .app
            .warehouse()
            .run_statements(
                &[format!(
                    "INSERT INTO {{dataset}}.{table} (game_date, team) SELECT g, t \
                     FROM UNNEST(GENERATE_DATE_ARRAY(DATE '{from}', DATE '{to}')) AS g \
                     CROSS JOIN UNNEST(['A', 'B']) AS t"
                )],
                from,
            )
            .await
            .expect("season");
    }
    for phase in ["raw", "analytics", "precompute", "predictions"] {
        cloud.start_worker(phase).await;
    }
    let env = &cloud.env;
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("--config")
        .arg(env.config_path())
        .args([
            "backfill",
            "--all",
            "--yes",
            "--via-pubsub",
            "--parallel",
            "8",
        ])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .args(["--timeout-secs", "3600"])
        .output()
        .expect("backfill");
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        worker_logs(env.dir.path())
    );
    let (mut failed, mut duplicates, mut runs) = (0, 0, 0);
    for p in ["ingest", "summary", "features", "preds"] {
        let mut day = from;
        while day <= to {
            let history = env.app.ledger().history(p, day).await.expect("history");
            runs += history.len();
            failed += history
                .iter()
                .filter(|r| r.status == RunStatus::Failed)
                .count();
            let done = history.iter().filter(|r| r.status.is_done()).count();
            duplicates += done.saturating_sub(1);
            assert_eq!(done, 1, "{p} {day}: {history:?}");
            day += chrono::Duration::days(1);
        }
    }
    let mut coordination = 0.0;
    for base in &cloud.bases {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        coordination += text
            .lines()
            .filter(|l| {
                l.starts_with("phasegate_store_call_duration_seconds_sum")
                    && l.contains("store=\"firestore\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    println!(
        "backfill --all --via-pubsub --parallel 8: {days} days x 4 phases, {runs} runs in \
         {wall:.1} s; failed {failed}, duplicate {duplicates}; coordination (Firestore calls, \
         all workers) {coordination:.1} s = {:.1} % of wall time x 8 lanes",
        100.0 * coordination / (wall * 8.0)
    );
    assert_eq!((failed, duplicates), (0, 0));
}
