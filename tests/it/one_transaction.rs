//! The embedded store's one-transaction run (SQLite only): a SQL processor's decision, gate,
//! statements and ledger row commit together, so there is no claim to strand. A run cut off
//! by the deadline is recorded failed with none of its output, and takes no other run down
//! (one near its deadline shares no group commit; one past it does not start); a delivery
//! dropped mid-run still commits its run whole, and every delivery queued behind it reuses
//! that run.

use crate::common;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::NaiveDate;
use common::{TestEnv, d};
use phasegate::atomic::{Answer, InTransaction, OneTransaction, Processed, Work};
use phasegate::bus::{PublishError, Publisher};
use phasegate::config::{EntityCompleteness, Reference};
use phasegate::envelope::PushEnvelope;
use phasegate::gate::GateReads;
use phasegate::ledger::{LedgerError, RunRecord, RunStatus};
use phasegate::warehouse::{DatePresence, EntityCount, ProcessorRun, WarehouseError};
use phasegate::worker::Worker;
use serde_json::json;
use tokio::sync::Notify;

/// One phase whose processor spins (a recursive query, as `{SPIN}`) while `slow` lists
/// the date.
const SPINNING: &str = r#"
[pipeline]
name = "test"

[auth]
mode = "disabled"

[server]
push_deadline_secs = 1

[setup]
sqlite = [
  "CREATE TABLE IF NOT EXISTS {dataset}.feed (game_date TEXT NOT NULL, team TEXT NOT NULL)",
  "CREATE TABLE IF NOT EXISTS {dataset}.raw (game_date TEXT NOT NULL, team TEXT NOT NULL)",
  "CREATE TABLE IF NOT EXISTS {dataset}.slow (on_date TEXT NOT NULL)",
]

[[phases]]
name = "raw"
input_topic = "spin-trigger"
completion_topic = "spin-done"

[[phases.processors]]
name = "ingest"
kind = "sql"
output = { table = "raw", date_column = "game_date" }
sql.sqlite = [
  "DELETE FROM {dataset}.raw WHERE game_date = @data_date",
  "INSERT INTO {dataset}.raw (game_date, team) SELECT game_date, team FROM {dataset}.feed WHERE game_date = @data_date",
  "{SPIN}",
]
"#;

const SPIN: &str = "WITH RECURSIVE spin(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM spin \
    WHERE EXISTS (SELECT 1 FROM {dataset}.slow WHERE on_date = @data_date)) SELECT x FROM spin";

/// The spin as a read (SQLite interrupts the statement) and as a write (SQLite rolls the
/// whole transaction back).
fn spins() -> [String; 2] {
    [
        format!("SELECT max(x) FROM ({SPIN})"),
        format!(
            "INSERT INTO {{dataset}}.raw (game_date, team) SELECT @data_date, x FROM ({SPIN}) WHERE x < 0"
        ),
    ]
}

fn push_body(date: NaiveDate, message_id: &str) -> Vec<u8> {
    push_with(date, message_id, BTreeMap::new())
}

fn push_with(date: NaiveDate, message_id: &str, attributes: BTreeMap<String, String>) -> Vec<u8> {
    let data = json!({ "data_date": date });
    let envelope = PushEnvelope::wrap(&data, attributes, message_id.into(), "s".into());
    serde_json::to_vec(&envelope).expect("envelope")
}

/// A backfill's push: the cascade stops here (no completion event to record as published,
/// which would be a second write behind whatever the writer runs next).
fn backfill_push(date: NaiveDate, message_id: &str) -> Vec<u8> {
    let skip = [("skip_downstream_trigger".to_string(), "true".to_string())];
    push_with(date, message_id, skip.into_iter().collect())
}

async fn teams(env: &TestEnv, day: NaiveDate) -> Vec<String> {
    let sql = format!("SELECT team FROM raw WHERE game_date = '{day}' ORDER BY team");
    let db = env.app.sqlite.clone().expect("sqlite");
    db.with_connection(move |c| {
        c.prepare(&sql)?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect()
    })
    .await
    .expect("read raw")
}

/// Wait until every job queued on the store's writer so far is done.
async fn writer_done(env: &TestEnv) {
    let db = env.app.sqlite.clone().expect("sqlite");
    db.with_connection(|_| Ok(()))
        .await
        .expect("the writer's queue is done");
}

#[tokio::test]
async fn a_run_cut_off_by_the_deadline_is_recorded_failed_and_keeps_the_previous_output() {
    for spin in spins() {
        let env = TestEnv::with_pipeline(&SPINNING.replace("{SPIN}", &spin)).await;
        let day = d("2024-03-01");
        for sql in [
            "INSERT INTO feed VALUES (@data_date, 'new')",
            "INSERT INTO raw VALUES (@data_date, 'old')",
            "INSERT INTO slow VALUES (@data_date)",
        ] {
            env.exec_for(sql, &[day]).await;
        }

        let started = Instant::now();
        let cut = env
            .app
            .worker
            .handle_push("raw", &push_body(day, "m1"))
            .await;
        assert!(cut.http_status() >= 500, "{spin}: {:?}", cut.body());
        assert!(started.elapsed() < Duration::from_secs(30), "interrupted");
        // The delivery is answered at its deadline; the writer, interrupted at the same
        // instant, records the failure just after: wait for its queue.
        writer_done(&env).await;
        let history = env
            .app
            .ledger()
            .history("ingest", day)
            .await
            .expect("history");
        assert_eq!(history.len(), 1, "{spin}: {history:?} {:?}", cut.body());
        assert_eq!(
            history[0].status,
            RunStatus::Failed,
            "{spin}: never left running"
        );
        let error = history[0].errors.as_deref().unwrap_or_default();
        assert!(error.contains("deadline"), "{spin}: {error}");
        assert_eq!(
            teams(&env, day).await,
            ["old"],
            "{spin}: its DELETE was rolled back"
        );

        env.exec_for("DELETE FROM slow WHERE on_date = @data_date", &[day])
            .await;
        let again = env
            .app
            .worker
            .handle_push("raw", &push_body(day, "m1"))
            .await;
        assert_eq!(again.http_status(), 200, "{spin}: {:?}", again.body());
        let latest = env.latest("ingest", day).await.expect("latest");
        assert_eq!(latest.status, RunStatus::Success, "{spin}");
        assert_eq!(teams(&env, day).await, ["new"], "{spin}");
    }
}

/// Holds the next processor run inside its transaction (on the store's writer) until told:
/// before its statements, or (`after_statements`) once they ran, before its ledger row.
#[derive(Default)]
struct Hold {
    armed: Mutex<Option<mpsc::Receiver<()>>>,
    after_statements: bool,
    holding: Notify,
    /// How many runs have been queued on the store's writer.
    queued: Mutex<Option<tokio::sync::watch::Sender<usize>>>,
}

impl Hold {
    fn arm(&self) -> mpsc::Sender<()> {
        let (release, armed) = mpsc::channel();
        *self.armed.lock().expect("hold") = Some(armed);
        release
    }

    fn wait_here(&self) {
        let armed = self.armed.lock().expect("hold").take();
        if let Some(release) = armed {
            self.holding.notify_one();
            let _ = release.recv();
        }
    }
}

/// The app's one-transaction run, going through [`Hold`].
struct Holding {
    inner: Arc<dyn OneTransaction>,
    hold: Arc<Hold>,
}

/// The store's transaction, with `process` held while a hold is armed.
struct HeldTx<'a> {
    inner: &'a dyn InTransaction,
    hold: &'a Hold,
}

impl GateReads for HeldTx<'_> {
    fn date_presence(
        &self,
        table: &str,
        column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        self.inner.date_presence(table, column, from, to, expected)
    }
    fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError> {
        self.inner.entity_counts(spec, reference, date)
    }
    fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError> {
        self.inner.reference_in_use(reference)
    }
}

impl InTransaction for HeldTx<'_> {
    fn latest_of(
        &self,
        processors: &[String],
        date: NaiveDate,
    ) -> Result<Vec<Option<RunRecord>>, LedgerError> {
        self.inner.latest_of(processors, date)
    }
    fn process(&self, job: &ProcessorRun<'_>) -> Result<Processed, WarehouseError> {
        if !self.hold.after_statements {
            self.hold.wait_here();
        }
        self.inner.process(job)
    }
    fn record(&self, run: &RunRecord) -> Result<(), LedgerError> {
        if self.hold.after_statements {
            self.hold.wait_here();
        }
        self.inner.record(run)
    }
}

#[async_trait]
impl OneTransaction for Holding {
    async fn run_boxed(
        &self,
        deadline: Instant,
        work: Work,
    ) -> Result<Result<Answer, Answer>, String> {
        let hold = Arc::clone(&self.hold);
        let held: Work = Box::new(move |tx| {
            work(&HeldTx {
                inner: tx,
                hold: &hold,
            })
        });
        let mut run = self.inner.run_boxed(deadline, held);
        // The first poll queues the job on the writer; then count it.
        tokio::select! {
            biased;
            answer = &mut run => return answer,
            () = std::future::ready(()) => {}
        }
        if let Some(queued) = &*self.hold.queued.lock().expect("hold") {
            queued.send_modify(|n| *n += 1);
        }
        run.await
    }
}

/// Counts the completion events published.
#[derive(Default)]
struct Events(Mutex<usize>);

#[async_trait]
impl Publisher for Events {
    async fn publish(
        &self,
        _: &str,
        _: &serde_json::Value,
        _: BTreeMap<String, String>,
    ) -> Result<String, PublishError> {
        *self.0.lock().expect("events") += 1;
        Ok("counted".into())
    }
}

#[tokio::test]
async fn a_delivery_dropped_inside_its_transaction_commits_whole_and_queued_ones_reuse_it() {
    let env = TestEnv::new("soft").await;
    let day = d("2024-01-01");
    env.season(&[day]).await;
    let hold = Arc::new(Hold::default());
    let events = Arc::new(Events::default());
    let holding = Arc::new(Holding {
        inner: env.app.one_transaction().expect("sqlite"),
        hold: Arc::clone(&hold),
    });
    let worker = Worker::new(
        env.app.config.clone(),
        env.app.ledger().clone(),
        env.app.warehouse().clone(),
        events.clone(),
    );
    let worker = Arc::new(worker.with_one_transaction(Some(holding)));
    let release = hold.arm();

    // A is held inside its transaction, after its decision and gate, before its statements.
    let holding = hold.holding.notified();
    let a = {
        let w = Arc::clone(&worker);
        tokio::spawn(async move { w.handle_push("raw", &push_body(day, "a")).await })
    };
    holding.await;
    // B (another message for the date) queues behind A on the store's writer.
    let b = {
        let w = Arc::clone(&worker);
        tokio::spawn(async move { w.handle_push("raw", &push_body(day, "b")).await })
    };
    // A's request is dropped (client gone, or the push deadline) while it is held.
    a.abort();
    assert!(a.await.expect_err("aborted").is_cancelled());
    assert!(
        env.app
            .ledger()
            .history("ingest", day)
            .await
            .expect("history")
            .is_empty(),
        "nothing is visible while A's transaction is open: no claim row"
    );
    release.send(()).expect("release");

    let b = b.await.expect("B");
    assert_eq!(b.http_status(), 200, "{:?}", b.body());
    assert_eq!(b.label(), "already_done", "B reuses A's run");
    // A's run was recorded after its delivery was gone, so without a lease: B announced it
    // at once instead of leaving it to the outbox sweep after the lease.
    let redelivered = worker.handle_push("raw", &push_body(day, "a")).await;
    assert_eq!(redelivered.label(), "already_done");
    let history = env
        .app
        .ledger()
        .history("ingest", day)
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "one run, committed whole: {history:?}");
    assert_eq!(history[0].status, RunStatus::Success);
    assert_eq!(history[0].message_id.as_deref(), Some("a"));
    assert_eq!(env.count("raw", "game_date", day).await, 2);
    assert_eq!(*events.0.lock().expect("events"), 1, "one completion event");
}

/// A worker whose one-transaction runs can be held, publishing nowhere.
fn holding_worker(env: &TestEnv, hold: &Arc<Hold>) -> Arc<Worker> {
    let holding = Arc::new(Holding {
        inner: env.app.one_transaction().expect("sqlite"),
        hold: Arc::clone(hold),
    });
    let worker = Worker::new(
        env.app.config.clone(),
        env.app.ledger().clone(),
        env.app.warehouse().clone(),
        Arc::new(Events::default()),
    );
    Arc::new(worker.with_one_transaction(Some(holding)))
}

#[tokio::test]
async fn a_run_near_or_past_its_deadline_takes_no_other_run_down() {
    let insert_spin = &spins()[1];
    let env = TestEnv::with_pipeline(&SPINNING.replace("{SPIN}", insert_spin)).await;
    let days = common::dates("2024-03-01", 4);
    let (b_day, a_day, b2_day, a2_day) = (days[0], days[1], days[2], days[3]);
    env.exec_for("INSERT INTO feed VALUES (@data_date, 'new')", &days)
        .await;
    env.exec_for("INSERT INTO slow VALUES (@data_date)", &[a_day])
        .await;
    let (queued, mut queued_rx) = tokio::sync::watch::channel(0);
    let hold = Arc::new(Hold {
        after_statements: true,
        queued: Mutex::new(Some(queued)),
        ..Hold::default()
    });
    let worker = holding_worker(&env, &hold);
    let push = |day: NaiveDate, id: &'static str| {
        let w = Arc::clone(&worker);
        tokio::spawn(async move { w.handle_push("raw", &backfill_push(day, id)).await })
    };

    // B's statements ran; B is held before its ledger row. A (spinning until its 1 s
    // deadline) queues behind it, too close to its deadline to join B's group.
    let release = hold.arm();
    let holding = hold.holding.notified();
    let b = push(b_day, "b");
    holding.await;
    let a = push(a_day, "a");
    queued_rx.wait_for(|n| *n == 2).await.expect("queued");
    release.send(()).expect("release");
    let (a, b) = (a.await.expect("A"), b.await.expect("B"));
    assert_eq!(b.http_status(), 200, "{:?}", b.body());
    assert!(a.http_status() >= 500, "{:?}", a.body());
    assert_eq!(teams(&env, b_day).await, ["new"], "B kept");
    assert_eq!(env.status("ingest", b_day).await, Some(RunStatus::Success));
    assert_eq!(env.status("ingest", a_day).await, Some(RunStatus::Failed));

    // A2 waits behind B2 past its deadline: it does not start, writes nothing, and B2 is
    // kept. Its redelivery runs it.
    let release = hold.arm();
    let holding = hold.holding.notified();
    let b2 = push(b2_day, "b2");
    holding.await;
    let a2 = push(a2_day, "a2");
    queued_rx.wait_for(|n| *n == 4).await.expect("queued");
    tokio::time::sleep(Duration::from_millis(1100)).await; // A2's 1 s deadline passes
    release.send(()).expect("release");
    // Both deliveries were answered at their deadline (503, redelivered); the writer
    // finishes their jobs after, in order: wait for it.
    assert!(a2.await.expect("A2").http_status() >= 500);
    assert!(b2.await.expect("B2").http_status() >= 500);
    writer_done(&env).await;
    assert_eq!(env.status("ingest", b2_day).await, Some(RunStatus::Success));
    let history = env
        .app
        .ledger()
        .history("ingest", a2_day)
        .await
        .expect("history");
    assert!(history.is_empty(), "A2 never started: {history:?}");
    let again = worker.handle_push("raw", &push_body(a2_day, "a2")).await;
    assert_eq!(again.http_status(), 200, "{:?}", again.body());
}

/// Push `day` and expect the run to fail (its processor SQL holds `control`).
async fn push_refused(env: &TestEnv, day: NaiveDate, message_id: &str, control: &str) {
    let refused = env
        .app
        .worker
        .handle_push("raw", &push_body(day, message_id))
        .await;
    assert!(
        refused.http_status() >= 500,
        "{control}: {:?}",
        refused.body()
    );
}

#[tokio::test]
async fn transaction_control_in_processor_sql_is_refused_and_the_run_fails_whole() {
    let day = d("2024-03-01");
    for control in [
        "COMMIT",
        "END",
        "ROLLBACK",
        "BEGIN",
        "SAVEPOINT mine",
        "RELEASE processor",
        "ROLLBACK TO processor",
        // Written exactly like phasegate's own cached statements.
        "COMMIT -- phasegate",
        "RELEASE processor -- phasegate",
    ] {
        let env = TestEnv::with_pipeline(&SPINNING.replace("{SPIN}", control)).await;
        env.exec_for("INSERT INTO feed VALUES (@data_date, 'new')", &[day])
            .await;
        env.exec_for("INSERT INTO raw VALUES (@data_date, 'old')", &[day])
            .await;

        push_refused(&env, day, "m1", control).await;
        let latest = env.latest("ingest", day).await.expect("a ledger row");
        assert_eq!(latest.status, RunStatus::Failed, "{control}");
        let error = latest.errors.as_deref().unwrap_or_default();
        assert!(
            error.contains("may not control the transaction") && error.contains(control),
            "{control}: {error}"
        );
        assert_eq!(
            teams(&env, day).await,
            ["old"],
            "{control}: the statements before it were rolled back"
        );
        // Again, now that every statement of phasegate's own is cached (the first run's
        // group committed, its savepoint was rolled back): still refused.
        let again = d("2024-03-03");
        env.exec_for("INSERT INTO feed VALUES (@data_date, 'again')", &[again])
            .await;
        push_refused(&env, again, "m2", control).await;
        assert_eq!(
            teams(&env, again).await,
            Vec::<String>::new(),
            "{control}: second run rolled back"
        );
        // The writer is not left inside a transaction: its next write commits.
        let next = d("2024-03-02");
        env.exec_for("INSERT INTO raw VALUES (@data_date, 'after')", &[next])
            .await;
        assert_eq!(teams(&env, next).await, ["after"], "{control}");
    }
}

/// A table or trigger made outside phasegate whose conflict clause rolls back the whole
/// transaction (the authorizer never sees it) stops the store from starting, naming it:
/// otherwise one conflicting write would roll back every run in its group commit, and again
/// on every retry.
#[tokio::test]
async fn a_schema_that_rolls_back_whole_transactions_is_refused_at_start_up() {
    for ddl in [
        "CREATE TABLE guarded (a TEXT UNIQUE ON CONFLICT ROLLBACK)",
        "CREATE TABLE plain (a TEXT); CREATE TRIGGER t BEFORE INSERT ON plain BEGIN SELECT RAISE(ROLLBACK, 'no'); END",
    ] {
        let env = TestEnv::new("strict").await;
        let path = env.db_path();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(ddl)
            .unwrap();
        let config = env.app.config.as_ref().clone();
        let refused = match phasegate::startup::build(config).await {
            Ok(_) => panic!("started on a schema with {ddl}"),
            Err(e) => e.to_string(),
        };
        assert!(
            refused.contains("rolls back the whole transaction"),
            "{refused}"
        );
    }
}
