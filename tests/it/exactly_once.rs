//! Fault injection: concurrent and repeated deliveries, a delivery paused between its look at
//! the ledger and its claim, requests dropped mid-run, errors after the claim, a forced
//! re-run whose post-condition fails, a worker that dies holding a claim. Every case checks
//! what a user relies on: one run and one completion event per processor, phase and date,
//! and no date stranded.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use common::{TestEnv, d};
use phasegate::bus::{PublishError, Publisher};
use phasegate::config::{EntityCompleteness, Reference};
use phasegate::envelope::PushEnvelope;
use phasegate::ledger::{Claim, Ledger, LedgerError, RunRecord, RunStatus};
use phasegate::warehouse::{
    Committed, DatePresence, EntityCount, ProcessorRun, Warehouse, WarehouseError,
};
use phasegate::worker::{PhaseOutcome, PushOutcome, RunRequest, Worker};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Counts completion events per (topic, data_date); delivers nothing.
#[derive(Default)]
struct Counting {
    events: Mutex<HashMap<(String, String), usize>>,
}

impl Counting {
    fn count(&self, topic: &str, date: NaiveDate) -> usize {
        let events = self.events.lock().unwrap();
        events
            .get(&(topic.to_string(), date.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl Publisher for Counting {
    async fn publish(
        &self,
        topic: &str,
        _: &Value,
        attributes: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        let date = attributes.get("data_date").cloned().unwrap_or_default();
        *self
            .events
            .lock()
            .unwrap()
            .entry((topic.to_string(), date))
            .or_default() += 1;
        Ok("counted".into())
    }
}

/// A ledger that can hold one `claim` until released.
struct Faulty {
    inner: Arc<dyn Ledger>,
    pause_next_claim: AtomicBool,
    paused: Notify,
    release: Notify,
}

impl Faulty {
    fn new(inner: Arc<dyn Ledger>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            pause_next_claim: AtomicBool::new(false),
            paused: Notify::new(),
            release: Notify::new(),
        })
    }
}

/// A warehouse that can hold or fail the next processor run (a point after the claim and
/// before the run's outcome is written), or hold the next gate read (which runs beside the
/// claim).
struct FaultyWarehouse {
    inner: Arc<dyn Warehouse>,
    pause_next_run: AtomicBool,
    pause_next_gate: AtomicBool,
    fail_next_run: AtomicBool,
    paused: Notify,
}

impl FaultyWarehouse {
    fn new(inner: Arc<dyn Warehouse>) -> Arc<FaultyWarehouse> {
        Arc::new(FaultyWarehouse {
            inner,
            pause_next_run: AtomicBool::new(false),
            pause_next_gate: AtomicBool::new(false),
            fail_next_run: AtomicBool::new(false),
            paused: Notify::new(),
        })
    }
}

#[async_trait]
impl Warehouse for FaultyWarehouse {
    async fn run_and_record(
        &self,
        job: &ProcessorRun<'_>,
        run: RunRecord,
        ledger: &dyn Ledger,
    ) -> Result<Committed, WarehouseError> {
        if self.fail_next_run.swap(false, Ordering::SeqCst) {
            return Err(WarehouseError("injected: connection reset".into()));
        }
        if self.pause_next_run.swap(false, Ordering::SeqCst) {
            self.paused.notify_one();
            // Held until the request is dropped.
            std::future::pending::<()>().await;
        }
        self.inner.run_and_record(job, run, ledger).await
    }
    async fn run_statements(&self, s: &[String], d: NaiveDate) -> Result<(), WarehouseError> {
        self.inner.run_statements(s, d).await
    }
    async fn count_rows(&self, t: &str, c: &str, d: NaiveDate) -> Result<u64, WarehouseError> {
        self.inner.count_rows(t, c, d).await
    }
    async fn date_presence(
        &self,
        t: &str,
        c: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        if self.pause_next_gate.swap(false, Ordering::SeqCst) {
            self.paused.notify_one();
            // Held until the request is dropped.
            std::future::pending::<()>().await;
        }
        self.inner.date_presence(t, c, from, to, expected).await
    }
    async fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        d: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError> {
        self.inner.entity_counts(spec, reference, d).await
    }
    async fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError> {
        self.inner.reference_in_use(reference).await
    }
}

#[async_trait]
impl Ledger for Faulty {
    async fn ensure_schema(&self) -> Result<(), LedgerError> {
        self.inner.ensure_schema().await
    }
    async fn record(&self, r: &RunRecord) -> Result<(), LedgerError> {
        self.inner.record(r).await
    }
    async fn claim(&self, run: &RunRecord, seen: Option<&RunRecord>) -> Result<Claim, LedgerError> {
        if self.pause_next_claim.swap(false, Ordering::SeqCst) {
            self.paused.notify_one();
            self.release.notified().await;
        }
        self.inner.claim(run, seen).await
    }
    async fn complete(&self, run: &RunRecord) -> Result<bool, LedgerError> {
        self.inner.complete(run).await
    }
    async fn renew(&self, id: &str, until: DateTime<Utc>) -> Result<bool, LedgerError> {
        self.inner.renew(id, until).await
    }
    async fn claim_publication(
        &self,
        runs: &[RunRecord],
        until: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        self.inner.claim_publication(runs, until).await
    }
    async fn latest(&self, p: &str, date: NaiveDate) -> Result<Option<RunRecord>, LedgerError> {
        self.inner.latest(p, date).await
    }
    async fn history(&self, p: &str, date: NaiveDate) -> Result<Vec<RunRecord>, LedgerError> {
        self.inner.history(p, date).await
    }
    async fn latest_in_range(
        &self,
        p: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        self.inner.latest_in_range(p, from, to).await
    }
    async fn owed_events(&self, phase: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        self.inner.owed_events(phase, limit).await
    }
    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        self.inner.mark_published(runs, at).await
    }
}

/// Redeliver message `m` for `day` until it is not answered "in progress" (409), for up to
/// a second (a released claim is written by a task of its own); the last status.
async fn redeliver(worker: &Worker, phase: &str, day: NaiveDate) -> u16 {
    let mut status = 0;
    for _ in 0..50 {
        status = worker
            .handle_push(phase, &push_body(day, "m"))
            .await
            .http_status();
        if status != 409 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    status
}

fn push_body(date: NaiveDate, message_id: &str) -> Vec<u8> {
    let envelope = PushEnvelope::wrap(
        &json!({ "data_date": date }),
        BTreeMap::new(),
        message_id.into(),
        "s".into(),
    );
    serde_json::to_vec(&envelope).unwrap()
}

fn worker_on(env: &TestEnv, ledger: Arc<dyn Ledger>, publisher: Arc<dyn Publisher>) -> Arc<Worker> {
    worker_with(env, ledger, env.app.warehouse().clone(), publisher)
}

fn worker_with(
    env: &TestEnv,
    ledger: Arc<dyn Ledger>,
    warehouse: Arc<dyn Warehouse>,
    publisher: Arc<dyn Publisher>,
) -> Arc<Worker> {
    // The store's one-transaction run only on the app's own ledger and warehouse, as the
    // app wires it: a decorated one runs claim, run, record.
    let own =
        Arc::ptr_eq(&ledger, env.app.ledger()) && Arc::ptr_eq(&warehouse, env.app.warehouse());
    let worker = Worker::new(env.app.config.clone(), ledger, warehouse, publisher);
    Arc::new(worker.with_one_transaction(env.app.one_transaction().filter(|_| own)))
}

const PHASES: [(&str, &str, &str); 4] = [
    ("raw", "ingest", "test-raw-done"),
    ("analytics", "summary", "test-analytics-done"),
    ("precompute", "features", "test-precompute-done"),
    ("predictions", "preds", "test-predictions-done"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_deliveries_run_once_and_publish_once_every_round() {
    // Every push on the BigQuery emulator is several jobs: a smaller storm there.
    let (rounds, concurrency) = match common::backend() {
        common::Backend::Sqlite => (8, 50),
        common::Backend::BigQuery => (1, 8),
    };
    let env = TestEnv::new("soft").await;
    let days = common::dates("2024-01-01", rounds);
    env.season(&days).await;
    let counting = Arc::new(Counting::default());
    let worker = worker_on(&env, env.app.ledger().clone(), counting.clone());
    for day in &days {
        for (phase, processor, topic) in PHASES {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..concurrency {
                // Half distinct message ids, half one id delivered 25 times.
                let id = if i % 2 == 0 {
                    format!("m-{i}")
                } else {
                    "same".into()
                };
                let body = push_body(*day, &format!("{phase}-{day}-{id}"));
                let (w, phase) = (worker.clone(), phase.to_string());
                tasks.spawn(async move { w.handle_push(&phase, &body).await.http_status() });
            }
            let statuses: Vec<u16> = tasks.join_all().await;
            // 409: the run is in progress elsewhere; 503: it is done and its event is still
            // owed by the delivery publishing it. Both are redelivered, never acknowledged.
            assert!(
                statuses.iter().all(|s| [200, 409, 503].contains(s)),
                "{phase} {day}: {statuses:?}"
            );
            let history = env.app.ledger().history(processor, *day).await.unwrap();
            assert_eq!(history.len(), 1, "{processor} {day}: one run, {history:?}");
            assert!(history[0].status.is_done());
            assert_eq!(counting.count(topic, *day), 1, "{phase} {day}: one event");
        }
    }
}

#[tokio::test]
async fn a_delivery_paused_before_its_claim_does_not_run_the_date_again() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let faulty = Faulty::new(env.app.ledger().clone());
    let counting = Arc::new(Counting::default());
    let worker = worker_on(&env, faulty.clone(), counting.clone());

    // Delivery A looks at the ledger (nothing there) and is held just before its claim.
    faulty.pause_next_claim.store(true, Ordering::SeqCst);
    let paused = faulty.paused.notified();
    let a = {
        let w = worker.clone();
        tokio::spawn(async move { w.handle_push("raw", &push_body(day, "a")).await })
    };
    paused.await;
    // Delivery B runs the date to the end meanwhile.
    let b = worker.handle_push("raw", &push_body(day, "b")).await;
    assert_eq!(b.http_status(), 200);
    faulty.release.notify_one();
    let a = a.await.unwrap();
    assert_eq!(a.http_status(), 200, "{:?}", a.body());
    assert_eq!(a.label(), "already_done", "A sees B's run and reuses it");

    let history = env.app.ledger().history("ingest", day).await.unwrap();
    assert_eq!(history.len(), 1, "one run: {history:?}");
    assert_eq!(counting.count("test-raw-done", day), 1, "one event");
}

#[tokio::test]
async fn a_request_dropped_mid_run_is_released_and_its_redelivery_succeeds() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let faulty = FaultyWarehouse::new(env.app.warehouse().clone());
    let counting = Arc::new(Counting::default());
    let worker = worker_with(
        &env,
        env.app.ledger().clone(),
        faulty.clone(),
        counting.clone(),
    );

    worker
        .handle_push("raw", &push_body(day, "raw"))
        .await
        .http_status();
    // analytics claims the date and passes its gate; as its processor starts, the request
    // is dropped (client gone, hyper drops the future) and never resumes.
    faulty.pause_next_run.store(true, Ordering::SeqCst);
    let paused = faulty.paused.notified();
    let dropped = {
        let w = worker.clone();
        tokio::spawn(async move { w.handle_push("analytics", &push_body(day, "m")).await })
    };
    paused.await;
    assert_eq!(
        env.status("summary", day).await,
        Some(RunStatus::Running),
        "claimed and held"
    );
    dropped.abort();
    let _ = dropped.await;

    // The redelivery is never told "in progress" by the abandoned claim.
    assert_eq!(redeliver(&worker, "analytics", day).await, 200);
    let latest = env.latest("summary", day).await.unwrap();
    assert!(latest.status.is_done(), "{latest:?}");
    assert!(
        env.app
            .ledger()
            .history("summary", day)
            .await
            .unwrap()
            .iter()
            .all(|r| r.status != RunStatus::Running),
        "no running row left behind"
    );
    assert_eq!(counting.count("test-analytics-done", day), 1);
}

#[tokio::test]
async fn a_request_dropped_while_its_gate_reads_releases_its_claim() {
    let env = TestEnv::new("soft").await;
    // The second day: its gap check has a day before it to read.
    let (first, day) = (d("2024-01-01"), d("2024-01-02"));
    env.season(&[first, day]).await;
    let faulty = FaultyWarehouse::new(env.app.warehouse().clone());
    let counting = Arc::new(Counting::default());
    let worker = worker_with(
        &env,
        env.app.ledger().clone(),
        faulty.clone(),
        counting.clone(),
    );
    for date in [first, day] {
        for phase in ["raw", "analytics"] {
            let status = worker
                .handle_push(phase, &push_body(date, &format!("{phase}-{date}")))
                .await
                .http_status();
            assert_eq!(status, 200, "{phase} {date}");
        }
    }
    // precompute's gate (a gap check) reads while the claim is written; the gate is held,
    // the claim commits, then the request is dropped (the push deadline, or the client).
    faulty.pause_next_gate.store(true, Ordering::SeqCst);
    let paused = faulty.paused.notified();
    let dropped = {
        let w = worker.clone();
        tokio::spawn(async move { w.handle_push("precompute", &push_body(day, "m")).await })
    };
    paused.await;
    for _ in 0..200 {
        if env.status("features", day).await == Some(RunStatus::Running) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        env.status("features", day).await,
        Some(RunStatus::Running),
        "claimed while the gate was held"
    );
    dropped.abort();
    let _ = dropped.await;

    // Released at once (not left running until its lease runs out): the redelivery runs.
    assert_eq!(redeliver(&worker, "precompute", day).await, 200);
    let history = env.app.ledger().history("features", day).await.unwrap();
    assert!(
        history.iter().all(|r| r.status != RunStatus::Running),
        "no running row left behind: {history:?}"
    );
    assert!(
        history.iter().any(|r| r.status == RunStatus::Failed),
        "the dropped run was released as failed: {history:?}"
    );
}

#[tokio::test]
async fn an_error_after_the_claim_releases_it_for_the_redelivery() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let worker0 = worker_on(
        &env,
        env.app.ledger().clone(),
        Arc::new(Counting::default()),
    );
    assert_eq!(
        worker0
            .handle_push("raw", &push_body(day, "r"))
            .await
            .http_status(),
        200
    );
    let faulty = FaultyWarehouse::new(env.app.warehouse().clone());
    let worker = worker_with(
        &env,
        env.app.ledger().clone(),
        faulty.clone(),
        Arc::new(Counting::default()),
    );
    // analytics claims the date; its processor's store call then fails once.
    faulty.fail_next_run.store(true, Ordering::SeqCst);
    let first = worker.handle_push("analytics", &push_body(day, "x")).await;
    assert_eq!(first.http_status(), 500, "{:?}", first.body());
    assert!(matches!(
        first,
        PushOutcome::Ran(PhaseOutcome::Failed { .. })
    ));
    let second = worker.handle_push("analytics", &push_body(day, "x")).await;
    assert_eq!(second.http_status(), 200, "{:?}", second.body());
    let history = env.app.ledger().history("summary", day).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![RunStatus::Failed, RunStatus::Success],
        "the interrupted attempt is recorded failed, the redelivery succeeded"
    );
}

#[tokio::test]
async fn a_forced_rerun_whose_post_condition_fails_keeps_the_previous_output() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let w = &env.app.worker;
    let mut req = RunRequest::new("raw", day, phasegate::ledger::TriggerKind::Cli);
    req.skip_downstream = true;
    assert!(matches!(
        w.run_phase(&req).await.unwrap(),
        PhaseOutcome::Done { .. }
    ));
    assert_eq!(env.count("raw", "game_date", day).await, 2);
    env.lose_feed(day).await;
    req.force = true;
    let outcome = w.run_phase(&req).await.unwrap();
    assert!(
        matches!(outcome, PhaseOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        env.count("raw", "game_date", day).await,
        2,
        "the failed run rolled back: the good rows are still there"
    );
}

#[tokio::test]
async fn a_worker_that_died_holding_a_claim_is_taken_over_after_its_lease() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    // A claim whose holder is gone: running, lease already over.
    let mut dead = RunRecord::start(
        "ingest",
        "raw",
        day,
        phasegate::ledger::TriggerKind::Pubsub,
        Some("crashed".into()),
        false,
    );
    dead.lease_until = Some(Utc::now() - chrono::Duration::seconds(1));
    env.app.ledger().record(&dead).await.unwrap();

    let counting = Arc::new(Counting::default());
    let worker = worker_on(&env, env.app.ledger().clone(), counting.clone());
    let outcome = worker.handle_push("raw", &push_body(day, "crashed")).await;
    assert_eq!(outcome.http_status(), 200, "{:?}", outcome.body());
    let history = env.app.ledger().history("ingest", day).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].status, RunStatus::Failed);
    assert!(
        history[0]
            .errors
            .as_deref()
            .unwrap_or_default()
            .contains("abandoned")
    );
    assert!(history[1].status.is_done());
    assert_eq!(counting.count("test-raw-done", day), 1);
}

#[tokio::test]
async fn an_owed_event_whose_owner_died_is_published_once_by_the_sweep() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let counting = Arc::new(Counting::default());
    let worker = worker_on(&env, env.app.ledger().clone(), counting.clone());
    let mut req = RunRequest::new("raw", day, phasegate::ledger::TriggerKind::Cli);
    req.skip_downstream = true;
    worker.run_phase(&req).await.unwrap();
    // Simulate "succeeded, crashed before publishing": owed, lease over.
    let mut run = env.latest("ingest", day).await.unwrap();
    run.skip_downstream_trigger = false;
    run.lease_until = Some(Utc::now() - chrono::Duration::seconds(1));
    env.app.ledger().record(&run).await.unwrap();

    let sweeps = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (w, n) = (worker.clone(), sweeps.clone());
        tasks.spawn(async move {
            let report = w.relay(&[], std::time::Duration::from_secs(60)).await;
            assert_eq!(report.failed, Vec::<String>::new());
            n.fetch_add(report.published, Ordering::SeqCst);
        });
    }
    tasks.join_all().await;
    assert_eq!(sweeps.load(Ordering::SeqCst), 1);
    assert_eq!(counting.count("test-raw-done", day), 1);
    assert!(
        env.latest("ingest", day)
            .await
            .unwrap()
            .published_at
            .is_some()
    );
}
