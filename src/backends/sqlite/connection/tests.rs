//! The connections' tests: group commit, the checkpointer's bounds on the log, reads.

use std::time::Instant;

use tokio::sync::oneshot;

use super::checkpointer::{JOURNAL_SIZE_LIMIT, Restarts, flush_copied};
use super::job::SHARE_MARGIN;
use super::*;

/// A directory in memory (`/dev/shm`) where there is one, else the usual temp dir. These
/// tests check how the log is copied back and started over, which the disk's speed
/// must not decide: beside a parallel `dd … conv=fsync` loop the two log-bound tests
/// failed in 8 runs of 8 on disk (slow syncs, fewer restarts; the writer-bound one
/// before the checkpointer's flush existed too), as both did in a CI run whose venv
/// installs were writing beside them. In memory, without the checkpointer's requests,
/// the log still reaches 48.9 MB against a 14 MB bound.
fn memory_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir")
}

fn open() -> (tempfile::TempDir, Arc<Connections>) {
    let dir = memory_dir();
    let conns = Connections::open(&dir.path().join("t.db"), Synchronous::Full).expect("open");
    (dir, conns)
}

/// Hold the writer thread until the returned sender is used, so that the writes sent
/// meanwhile are all queued when it comes back (one group).
async fn hold_writer(conns: &Arc<Connections>) -> (mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (release, held) = mpsc::channel::<()>();
    let (started_tx, started) = oneshot::channel();
    let c = Arc::clone(conns);
    let blocker = tokio::spawn(async move {
        c.write(move |_| {
            let _ = started_tx.send(());
            let _ = held.recv();
            Ok(())
        })
        .await
        .expect("blocker");
    });
    started.await.expect("writer started the blocker");
    (release, blocker)
}

fn insert(
    conns: &Arc<Connections>,
    v: i64,
    fail: bool,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let c = Arc::clone(conns);
    tokio::spawn(async move {
        c.write_grouped(Role::Plain, move |sp| {
            sp.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
            if fail {
                // Changes made, then refused: the savepoint is dropped, not committed.
                return Err(rusqlite::Error::InvalidQuery);
            }
            sp.commit()
        })
        .await
    })
}

async fn values(conns: &Arc<Connections>) -> Vec<i64> {
    conns
        .read(|c| {
            c.prepare("SELECT v FROM t ORDER BY v")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
        .expect("read")
}

async fn setup(conns: &Arc<Connections>) {
    conns
        .write(|c| c.execute_batch("CREATE TABLE t (v INTEGER)"))
        .await
        .expect("create");
}

/// Writes that never pause (`pages` log pages of 4 KiB rows, in writes of 16) beside
/// point reads that never stop, as the worker's; returns the write-ahead log's size.
async fn write_under_reads(dir: &tempfile::TempDir, conns: &Arc<Connections>, pages: usize) -> u64 {
    setup(conns).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (c, stop) = (Arc::clone(conns), Arc::clone(&stop));
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = c.read_blocking(|c| {
                    c.query_row("SELECT COUNT(*) FROM t WHERE rowid = 1", [], |r| {
                        r.get::<_, i64>(0)
                    })
                });
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let page = "x".repeat(4000);
    for _ in 0..pages / 16 {
        let page = page.clone();
        conns
            .write_grouped(Role::Plain, move |sp| {
                for _ in 0..16 {
                    sp.execute("INSERT INTO t (v) VALUES (?1)", [&page])?;
                }
                sp.commit()
            })
            .await
            .expect("write");
    }
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("reader");
    std::fs::metadata(dir.path().join("t.db-wal"))
        .map(|m| m.len())
        .expect("write-ahead log")
}

#[tokio::test]
async fn the_write_ahead_log_stays_bounded_under_writes_and_reads_that_never_stop() {
    // The writer's own bound alone: the checkpointer asks nothing.
    let dir = memory_dir();
    let path = dir.path().join("t.db");
    let conns = Connections::open_with(&path, Synchronous::Full, None).expect("open");
    // 40 times the bound.
    let wal = write_under_reads(&dir, &conns, 40 * WAL_LIMIT_PAGES as usize).await;
    let bound = (WAL_LIMIT_PAGES as u64 + 256) * 4096 * 2;
    assert!(wal < bound, "write-ahead log {wal} bytes, bound {bound}");
}

/// The checkpointer's requests alone (the writer's own bound switched off) start the log
/// over, so the writer's checkpoints stay small.
#[tokio::test]
async fn the_checkpointer_has_the_writer_start_the_log_over() {
    let (dir, conns) = open();
    conns
        .write(|c| c.pragma_update(None, "wal_autocheckpoint", 0))
        .await
        .expect("no writer bound");
    let total = 40 * WAL_LIMIT_PAGES as usize;
    let wal = write_under_reads(&dir, &conns, total).await;
    let bound = (total as u64) * 4096 / 3;
    assert!(wal < bound, "write-ahead log {wal} bytes, bound {bound}");
    // `done` first: a request is flushed before it is sent, and run after.
    let done = conns.writer_checkpoints();
    assert!(done > 0, "the writer was never asked");
    assert!(
        conns.restarts.flushed.load(Ordering::Relaxed) >= done,
        "the checkpointer flushes the database file before every request to the writer"
    );
}

#[test]
fn the_checkpointers_flush_syncs_a_log_it_copied_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t.db");
    let writer = Connection::open(&path).expect("open");
    writer
        .pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    writer
        .execute_batch("CREATE TABLE t (v BLOB); INSERT INTO t VALUES (zeroblob(100000));")
        .expect("write");
    let checkpointer = Connection::open(&path).expect("open");
    let (log, copied) = checkpoint(&checkpointer).expect("pass");
    assert!(log > 0 && copied == log, "the pass copied the log back");
    assert!(flush_copied(&checkpointer), "flushed");
    let memory = Connection::open_in_memory().expect("memory");
    assert!(!flush_copied(&memory), "nothing to flush in memory");
}

#[test]
fn the_writer_is_asked_once_at_a_time_and_never_for_an_idle_log() {
    let restarts = Arc::new(Restarts::new(Some(64)));
    assert!(!restarts.due((63, 10), 0), "short log");
    assert!(restarts.due((100, 100), 90), "long and growing");
    assert!(
        !restarts.due((200, 100), 100),
        "a request is already queued"
    );
    restarts.pending.store(false, Ordering::Release);
    assert!(!restarts.due((100, 100), 100), "idle and copied back");
    assert!(restarts.due((100, 80), 100), "idle but not copied back");
    let never = Restarts::new(None);
    assert!(!never.due((1_000_000, 0), 0));
}

#[tokio::test]
async fn queued_writes_commit_once_and_a_failed_one_rolls_back_only_itself() {
    let (_dir, conns) = open();
    setup(&conns).await;
    let before = conns.group_commits();
    let (release, blocker) = hold_writer(&conns).await;
    let writes: Vec<_> = (1..=5).map(|v| insert(&conns, v, v == 3)).collect();
    // Let every write reach the queue before the writer comes back.
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).expect("release");
    blocker.await.expect("blocker");
    let mut results = Vec::new();
    for w in writes {
        results.push(w.await.expect("task"));
    }
    assert!(results[2].is_err(), "the refused write reports its error");
    assert!(results.iter().enumerate().all(|(i, r)| i == 2 || r.is_ok()));
    assert_eq!(values(&conns).await, vec![1, 2, 4, 5]);
    assert_eq!(conns.group_commits() - before, 1, "five writes, one commit");
}

#[tokio::test]
async fn a_panicking_write_loses_nothing_of_its_group() {
    let (_dir, conns) = open();
    setup(&conns).await;
    let (release, blocker) = hold_writer(&conns).await;
    let first = insert(&conns, 1, false);
    let c = Arc::clone(&conns);
    let panics = tokio::spawn(async move {
        c.write_grouped(Role::Plain, |sp| -> rusqlite::Result<()> {
            sp.execute("INSERT INTO t (v) VALUES (99)", [])?;
            panic!("a bug in a write");
        })
        .await
    });
    let last = insert(&conns, 2, false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).expect("release");
    blocker.await.expect("blocker");
    assert!(first.await.expect("task").is_ok());
    assert!(panics.await.expect("task").is_err());
    assert!(last.await.expect("task").is_ok());
    assert_eq!(values(&conns).await, vec![1, 2]);
}

#[tokio::test]
async fn an_interrupted_leading_write_rolls_back_nothing_queued_before_or_after_it() {
    let (_dir, conns) = open();
    setup(&conns).await;
    let (release, blocker) = hold_writer(&conns).await;
    let before = insert(&conns, 1, false);
    let c = Arc::clone(&conns);
    let interrupted = tokio::spawn(async move {
        c.write_grouped(Role::Leads, |sp| {
            sp.execute("INSERT INTO t (v) VALUES (50)", [])?;
            // An interrupt (the push deadline) makes SQLite roll back the whole
            // transaction, not just this savepoint.
            sp.progress_handler(1, Some(|| true));
            let r = sp.execute("INSERT INTO t (v) VALUES (51)", []);
            sp.progress_handler(0, None::<fn() -> bool>);
            r?;
            sp.commit()
        })
        .await
    });
    let after = insert(&conns, 2, false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).expect("release");
    blocker.await.expect("blocker");
    assert!(before.await.expect("task").is_ok());
    let e = interrupted.await.expect("task").expect_err("interrupted");
    assert!(e.contains("interrupt"), "{e}");
    assert!(after.await.expect("task").is_ok());
    assert_eq!(values(&conns).await, vec![1, 2]);
}

/// A redoable write whose deadline is far enough to share a group.
fn far() -> Role {
    Role::Redoable {
        deadline: Instant::now() + SHARE_MARGIN * 20,
    }
}

#[tokio::test]
async fn an_interrupted_redoable_write_near_its_deadline_starts_its_own_group() {
    let (_dir, conns) = open();
    setup(&conns).await;
    let (release, blocker) = hold_writer(&conns).await;
    let first = write_as(&conns, Some(10), far());
    let near = Role::Redoable {
        deadline: Instant::now() + SHARE_MARGIN / 5,
    };
    let interrupted = write_as(&conns, None, near);
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).expect("release");
    blocker.await.expect("blocker");
    assert!(
        first.await.expect("task").is_ok(),
        "not lost with the interrupt"
    );
    assert!(interrupted.await.expect("task").is_err());
    assert_eq!(values(&conns).await, vec![10]);
}

/// A write of `v` as `role`, or (`v` = None) one interrupted after writing 50.
fn write_as(
    conns: &Arc<Connections>,
    v: Option<i64>,
    role: Role,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let c = Arc::clone(conns);
    tokio::spawn(async move {
        c.write_grouped(role, move |sp| {
            let Some(v) = v else {
                sp.execute("INSERT INTO t (v) VALUES (50)", [])?;
                sp.progress_handler(1, Some(|| true));
                let r = sp.execute("INSERT INTO t (v) VALUES (51)", []);
                sp.progress_handler(0, None::<fn() -> bool>);
                return r.map(|_| ());
            };
            sp.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
            sp.commit()
        })
        .await
    })
}

#[tokio::test]
async fn an_interrupted_redoable_write_joins_no_group_holding_a_plain_write() {
    let (_dir, conns) = open();
    setup(&conns).await;
    let (release, blocker) = hold_writer(&conns).await;
    let redoable = write_as(&conns, Some(10), far());
    let plain = write_as(&conns, Some(1), Role::Plain);
    let interrupted = write_as(&conns, None, far());
    let after = write_as(&conns, Some(11), far());
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).expect("release");
    blocker.await.expect("blocker");
    assert!(redoable.await.expect("task").is_ok());
    assert!(
        plain.await.expect("task").is_ok(),
        "not lost with the interrupt"
    );
    assert!(interrupted.await.expect("task").is_err());
    assert!(after.await.expect("task").is_ok());
    assert_eq!(values(&conns).await, vec![1, 10, 11]);
}

#[tokio::test]
async fn an_interrupted_redoable_write_takes_its_redoable_group_down_and_says_so() {
    let (_dir, conns) = open();
    setup(&conns).await;
    let (release, blocker) = hold_writer(&conns).await;
    let first = write_as(&conns, Some(10), far());
    let interrupted = write_as(&conns, None, far());
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).expect("release");
    blocker.await.expect("blocker");
    let e = first.await.expect("task").expect_err("lost with its group");
    assert!(e.contains("rolled back with its group"), "{e}");
    assert!(interrupted.await.expect("task").is_err());
    assert_eq!(values(&conns).await, Vec::<i64>::new(), "nothing committed");
}

#[tokio::test]
async fn a_log_left_by_a_process_that_never_closed_is_copied_back_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("t.db");
    let wal = dir.path().join("t.db-wal");
    // An earlier process: writes, never closes its connection (a CLI run that exits).
    let gone = Connection::open(&path).expect("open");
    gone.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    gone.pragma_update(None, "wal_autocheckpoint", 0)
        .expect("no autocheckpoint");
    gone.execute_batch("CREATE TABLE t (v INTEGER)")
        .expect("create");
    for i in 0..200 {
        gone.execute("INSERT INTO t (v) VALUES (?1)", [i])
            .expect("insert");
    }
    std::mem::forget(gone);
    assert!(std::fs::metadata(&wal).expect("log").len() > 200 * 4096);

    let conns = Connections::open(&path, Synchronous::Full).expect("open");
    insert(&conns, 1_000, false)
        .await
        .expect("task")
        .expect("write");
    // The file keeps its size; the log's frames (what the next start reads) start over.
    let (frames, _) = conns.write(|c| checkpoint(c)).await.expect("frames");
    assert!(
        frames < 16,
        "the first write started the log over: {frames} frames"
    );
    assert_eq!(values(&conns).await.len(), 201);
}

/// A reader holds a snapshot while the log grows far past [`JOURNAL_SIZE_LIMIT`]; once it
/// lets go and no write follows, the checkpointer has the writer truncate the log's file.
#[tokio::test]
async fn the_log_file_shrinks_once_a_long_reader_lets_go() {
    let (dir, conns) = open();
    setup(&conns).await;
    insert(&conns, 0, false)
        .await
        .expect("task")
        .expect("write");
    let wal = dir.path().join("t.db-wal");
    let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());

    let reader = Connection::open(dir.path().join("t.db")).expect("reader");
    reader.execute_batch("BEGIN").expect("begin");
    let seen: i64 = reader
        .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
        .expect("snapshot");
    assert_eq!(seen, 1);
    let page = "x".repeat(4000);
    for _ in 0..64 {
        let page = page.clone();
        conns
            .write_grouped(Role::Plain, move |sp| {
                for _ in 0..16 {
                    sp.execute("INSERT INTO t (v) VALUES (?1)", [&page])?;
                }
                sp.commit()
            })
            .await
            .expect("write");
    }
    let grown = size();
    let limit = JOURNAL_SIZE_LIMIT as u64;
    assert!(
        grown > 4 * limit,
        "the reader kept the log growing: {grown} bytes"
    );
    // Still held: the log cannot be truncated however often it is asked.
    tokio::time::sleep(CHECKPOINT_PASSES).await;
    assert!(size() >= grown, "truncated under a live reader");

    reader.execute_batch("COMMIT").expect("let go");
    drop(reader);
    let start = Instant::now();
    while size() > limit && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        size() <= limit,
        "the log file kept {} bytes after its reader left",
        size()
    );
    assert!(conns.writer_truncations() > 0, "truncated by the writer");
    let rows: i64 = conns
        .read(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)))
        .await
        .expect("count");
    assert_eq!(rows, 1 + 64 * 16, "nothing lost");
}

/// Several of the checkpointer's passes (every 20 ms in the tests).
const CHECKPOINT_PASSES: Duration = Duration::from_millis(200);
