//! Coordination benchmark (issue 26): claim + release cycles per second in the Firestore
//! coordination store, on the emulators. Run through `scripts/bench-coordination.sh`, which
//! starts them (it needs `FIRESTORE_EMULATOR_HOST` and `BIGQUERY_EMULATOR_HOST`).
//!
//! Three figures:
//! - **distinct dates**: `--concurrency` tasks each take a new date's claim and give it back
//!   (the store's half of a claim, [`Coordinated::take`], and its release);
//! - **one contended date**: `--contenders` deliveries race for the same date, round after
//!   round; every round must have exactly one winner;
//! - **full ledger cycles**: `Ledger::claim` + `Ledger::complete`, which add the BigQuery
//!   appends (the ledger of record) on the BigQuery model, at its configured job latency.
//!
//! `cargo bench --bench coordination -- --cycles 1000 --concurrency 16 --contenders 50
//! --rounds 20 --full 100`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::{Duration, NaiveDate, Utc};
use phasegate::backends::bigquery::BigQuery;
use phasegate::backends::firestore::{Coordinated, Firestore};
use phasegate::config::{BackendConfig, BackendKind};
use phasegate::ledger::{Claim, Ledger, RunRecord, RunStatus, TriggerKind};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run scripts/bench-coordination.sh");
        std::process::exit(2)
    })
}

/// A run of processor `p` for `day`, as a delivery makes it (lease: the push deadline's).
fn run(p: &str, day: NaiveDate) -> RunRecord {
    let mut r = RunRecord::start(p, "raw", day, TriggerKind::Backfill, None, true);
    r.lease_until = Some(Utc::now() + Duration::seconds(660));
    r
}

fn day(i: usize) -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).expect("date") + Duration::days(i as i64)
}

#[tokio::main]
async fn main() {
    let cycles = arg("--cycles", 1000);
    let concurrency = arg("--concurrency", 16);
    let contenders = arg("--contenders", 50);
    let rounds = arg("--rounds", 20);
    let full = arg("--full", 100);
    let project = std::env::var("PHASEGATE_EMULATOR_PROJECT").unwrap_or("phasegate-test".into());
    let dataset = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let backend = BackendConfig {
        kind: BackendKind::Bigquery,
        project: Some(project.clone()),
        dataset: Some(dataset.clone()),
        emulator_host: Some(env("BIGQUERY_EMULATOR_HOST")),
        ..BackendConfig::default()
    };
    let bq = BigQuery::connect(&backend)
        .await
        .expect("BigQuery")
        .for_pipeline("bench");
    let store = Firestore::connect(&project, "phasegate", Some(&env("FIRESTORE_EMULATOR_HOST")))
        .expect("Firestore");
    let ledger = Arc::new(Coordinated::new(store, bq, &format!("{dataset}.bench")));
    ledger.ensure_schema().await.expect("ledger table");

    // Distinct dates: take + give back.
    let next = Arc::new(AtomicUsize::new(0));
    let calls = ledger.store().calls();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (ledger, next) = (Arc::clone(&ledger), Arc::clone(&next));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cycles {
                    return;
                }
                let r = run("distinct", day(i));
                assert_eq!(ledger.take(&r, None).await.expect("take"), Claim::Won);
                assert!(ledger.give_back(&r).await.expect("give back"));
            }
        });
    }
    tasks.join_all().await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "distinct dates: {cycles} claim + release cycles, {concurrency} concurrent: \
         {:.0} cycles/s ({:.1} ms each, {:.1} round trips each)",
        cycles as f64 / secs,
        secs * 1000.0 * concurrency as f64 / cycles as f64,
        (ledger.store().calls() - calls) as f64 / cycles as f64
    );

    // One contended date per round: exactly one winner.
    let t = Instant::now();
    for round in 0..rounds {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..contenders {
            let ledger = Arc::clone(&ledger);
            tasks.spawn(async move {
                let r = run("contended", day(round));
                let won = ledger.take(&r, None).await.expect("take") == Claim::Won;
                if won {
                    assert!(ledger.give_back(&r).await.expect("give back"));
                }
                won
            });
        }
        let winners = tasks.join_all().await.into_iter().filter(|w| *w).count();
        assert_eq!(winners, 1, "round {round}: {winners} winners");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "one contended date: {rounds} rounds of {contenders} concurrent claims, one winner \
         every round: {:.1} rounds/s, {:.0} claim attempts/s",
        rounds as f64 / secs,
        (rounds * contenders) as f64 / secs
    );

    // Full ledger cycles: the store, then BigQuery's appended rows.
    let jobs = ledger_jobs(&ledger);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(8) {
        let (ledger, next) = (Arc::clone(&ledger), Arc::clone(&next));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= full {
                    return;
                }
                let mut r = run("full", day(i));
                assert_eq!(ledger.claim(&r, None).await.expect("claim"), Claim::Won);
                r.finish(RunStatus::Success, Some(1), None);
                r.lease_until = None;
                assert!(ledger.complete(&r).await.expect("complete"));
            }
        });
    }
    tasks.join_all().await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "full ledger cycles (claim + complete, with BigQuery appends on the model): {full} in \
         {secs:.1} s, {:.1} cycles/s, {:.1} BigQuery jobs each",
        full as f64 / secs,
        (ledger_jobs(&ledger) - jobs) as f64 / full.max(1) as f64
    );
}

fn ledger_jobs(ledger: &Coordinated) -> u64 {
    ledger.of_record().jobs_started()
}
