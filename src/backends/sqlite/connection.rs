//! SQLite connections: one writer thread that owns the only write connection (fed by a
//! channel) and a small pool of read connections (WAL lets readers run beside the writer).
//!
//! Every write is a closure run on the writer thread, so writes never contend for a lock.
//! Most writes (claims, outcomes, processor runs) are *grouped*: the writer runs every such
//! write already waiting in its queue inside one transaction, each in a savepoint of its
//! own, and commits once for all of them (group commit) before answering any. A write that
//! fails rolls back only its savepoint. Reads run with a connection of their own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rusqlite::{Connection, Savepoint};
use tokio::sync::oneshot;

use super::file_sync;
use super::guard::own;
use super::presence::PresenceCache;

/// Answers a grouped write's caller once its group's fate is known: `None` when the group
/// committed, `Some(reason)` when it did not.
type Reply = Box<dyn FnOnce(Option<String>) + Send>;

/// What the writer thread runs.
enum Job {
    /// Runs alone, outside any group, managing its own transaction (schema, DDL, bulk
    /// loads, the bus's queue).
    Solo(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Runs in a savepoint inside the writer's group transaction.
    Grouped { work: GroupedWork, role: Role },
}

/// A grouped job's work: it runs, then answers once its group's fate is known.
type GroupedWork = Box<dyn FnOnce(&mut Connection) -> Reply + Send>;

/// How a grouped job may share its group. A processor run may be interrupted at its
/// deadline, and SQLite rolls the whole transaction back when it interrupts a write, so an
/// interruptible job joins a group only where that loses nothing that cannot be redone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Never interrupted (a ledger write): joins any group.
    Plain,
    /// Interruptible, and its work must not be lost with others' (a claimed run's outcome):
    /// starts a group of its own, which plain jobs may join after it.
    Leads,
    /// Interruptible at `deadline`, and safe to lose with its group (a one-transaction run:
    /// its caller is told the group failed, and a push is redelivered): joins a group of
    /// such jobs only, and only with [`SHARE_MARGIN`] left before its deadline, so that
    /// only SQL running that long can take the group down; otherwise it starts its own.
    Redoable { deadline: Instant },
}

/// Time a one-transaction run must have left to join a group (see [`Role::Redoable`]).
#[cfg(not(test))]
const SHARE_MARGIN: Duration = Duration::from_secs(5);
#[cfg(test)]
const SHARE_MARGIN: Duration = Duration::from_millis(500);

/// Read connections kept open for reuse.
const READ_POOL: usize = 8;
/// Prepared statements cached per connection (`prepare_cached`).
const STATEMENT_CACHE: usize = 64;
/// How often the checkpointer copies the write-ahead log back into the database.
#[cfg(not(test))]
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
#[cfg(test)]
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);
/// Pages the write-ahead log may hold before the writer checkpoints it itself, after a
/// commit (SQLite's `wal_autocheckpoint`). The checkpointer thread's PASSIVE checkpoints
/// copy the log back but cannot let it start over while writes keep coming (a checkpoint is
/// complete only if no write landed during it), so without this bound the log grew without
/// limit under sustained load: 440 MB in 8 s. The writer's own checkpoint runs between
/// writes, so it completes unless a read of an older snapshot is still running, and the
/// next write starts the log over. It costs that commit a sync of the log and the file.
/// Since the checkpointer asks the writer for the same much earlier ([`RESTART_AFTER_PAGES`])
/// this is the backstop, reached only if those requests cannot keep up.
#[cfg(not(test))]
const WAL_LIMIT_PAGES: i64 = 65_536;
#[cfg(test)]
const WAL_LIMIT_PAGES: i64 = 256;
/// Log pages past which the checkpointer, right after copying the log back, asks the
/// writer to copy the few pages written since (a checkpoint between two writes, which
/// completes), so that the next write starts the log over. Keeping this far below
/// [`WAL_LIMIT_PAGES`] keeps the writer's stall short: it copies and syncs what half a
/// second of writes left, not 256 MiB of log.
#[cfg(not(test))]
const RESTART_AFTER_PAGES: i64 = 4_096;
#[cfg(test)]
const RESTART_AFTER_PAGES: i64 = 64;
/// Most writes committed together: bounds how long the first of a group waits for its
/// answer behind the others.
const MAX_GROUP: usize = 16;
/// A group takes no more writes once it has run this long: the first of a group waits for
/// its answer behind the others, so under load a group is a few processor runs (~0.15 ms
/// each on the benchmark), not sixteen: at -c8, +11-21 % throughput over 16 in interleaved
/// rounds, for ~3 % more CPU. (Tests: long, so that their groups are exactly what queued.)
#[cfg(not(test))]
const GROUP_TIME: Duration = Duration::from_micros(500);
#[cfg(test)]
const GROUP_TIME: Duration = Duration::from_secs(10);

pub(super) struct Connections {
    writer: mpsc::Sender<Job>,
    /// Group transactions committed so far (the tests read it; `/metrics` has its own).
    #[cfg_attr(not(test), allow(dead_code))]
    group_commits: Arc<AtomicU64>,
    /// The checkpointer's requests for a checkpoint on the writer (the tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    restarts: Arc<Restarts>,
    /// Dropped with `Connections`: stops the checkpointer thread.
    _stop_checkpointer: Option<mpsc::Sender<()>>,
    readers: Mutex<Vec<Connection>>,
    /// The gap check's days, as the writer connection sees them.
    presence: Arc<PresenceCache>,
    /// `None` for an in-memory database: reads go through the writer.
    path: Option<PathBuf>,
}

/// Settings of every connection. No memory map (`mmap_size`): SQLite drops a connection's
/// whole mapping whenever it sees another connection's commit, and under a steady stream
/// of writes the `munmap`s and the TLB shootdowns they cost took 9 % of the CPU; reading
/// the pages again with `pread` is cheaper.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

impl Connections {
    /// Open the file (WAL, synchronous = NORMAL) and start its writer and checkpointer
    /// threads.
    pub(super) fn open(path: &Path) -> rusqlite::Result<Arc<Connections>> {
        Self::open_with(path, Some(RESTART_AFTER_PAGES))
    }

    /// [`Connections::open`]; `restart_after`: log pages past which the checkpointer asks
    /// the writer for a checkpoint (`None`: never, which only a test wants).
    fn open_with(path: &Path, restart_after: Option<i64>) -> rusqlite::Result<Arc<Connections>> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        configure(&conn)?;
        let in_memory = path.as_os_str() == ":memory:" || path.as_os_str().is_empty();
        let (tx, rx) = mpsc::channel::<Job>();
        let restarts = Arc::new(Restarts::new(restart_after));
        let stop_checkpointer = if in_memory {
            None
        } else {
            // The backstop: a commit stops to copy the log back (and sync) only if the log
            // reaches this bound, which the checkpointer's requests normally prevent.
            conn.pragma_update(None, "wal_autocheckpoint", WAL_LIMIT_PAGES)?;
            // Copy back what an earlier process left in the log (one that never closed its
            // connections: a CLI run that exits, a crash), so that this process's first write
            // starts the log over. Without it a run of short processes (`phasegate run` per
            // date) grew the log by every run's pages, and each start read all of it: 4.5 MB
            // after 330 runs, +50 % per run. PASSIVE: it never waits for another process.
            if let Err(e) = checkpoint(&conn) {
                tracing::warn!(error = %e, "sqlite checkpoint at open failed; the log is copied back later");
            }
            Some(spawn_checkpointer(path, tx.clone(), Arc::clone(&restarts))?)
        };
        let presence = Arc::new(PresenceCache::default());
        PresenceCache::install(&conn, &presence);
        let group_commits = Arc::new(AtomicU64::new(0));
        let commits = Arc::clone(&group_commits);
        std::thread::Builder::new()
            .name("phasegate-sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                serve_writes(&mut conn, &rx, &commits);
            })
            .map_err(thread_error)?;
        Ok(Arc::new(Connections {
            writer: tx,
            group_commits,
            restarts,
            _stop_checkpointer: stop_checkpointer,
            readers: Mutex::new(Vec::new()),
            presence,
            path: (!in_memory).then(|| path.to_path_buf()),
        }))
    }

    /// Run `f` on the writer thread. A panic in `f` is contained: the caller gets an error
    /// and the writer thread keeps serving.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Solo(Box::new(move |conn| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
            let result = match result {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => {
                    // Leave no transaction open behind a panic.
                    let _ = conn.execute_batch("ROLLBACK");
                    Err("sqlite write panicked".to_string())
                }
            };
            let _ = tx.send(result);
        }));
        self.writer
            .send(job)
            .map_err(|_| "sqlite writer thread is gone".to_string())?;
        rx.await
            .map_err(|_| "sqlite writer dropped the request".to_string())?
    }

    /// Run `f` on the writer thread inside a group transaction, in a savepoint of its own:
    /// `f` keeps its changes with `Savepoint::commit` and rolls them back by dropping the
    /// savepoint. The answer comes once the group has committed; if the group could not
    /// commit, the caller gets an error even though `f` succeeded (nothing was written).
    /// `role`: which group `f` may join ([`Role`]). A panic in `f` is contained.
    pub(super) async fn write_grouped<T, F>(&self, role: Role, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(Savepoint<'c>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.grouped_job(role, move |conn| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                conn.savepoint().and_then(f)
            })) {
                Ok(r) => r.map_err(|e| e.to_string()),
                // The savepoint was dropped while unwinding: its changes are rolled back.
                Err(_) => Err("sqlite write panicked".to_string()),
            }
        })
        .await
    }

    /// Run `f` on the writer thread inside a group transaction, without a savepoint: for
    /// reads that must see what the writer sees (they write nothing). The answer comes once
    /// the group has committed, like a grouped write's: what `f` read may include the
    /// group's earlier writes. A panic in `f` is contained.
    async fn read_grouped<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.grouped_job(Role::Plain, move |conn| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn))) {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("sqlite read panicked".to_string()),
            }
        })
        .await
    }

    /// Queue `run` as a grouped job (`role`: see [`Role`]) and wait for its answer,
    /// sent once its group's fate is known: `run`'s result if the group committed, the
    /// group's failure otherwise.
    async fn grouped_job<T, F>(&self, role: Role, run: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, String> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let work = Box::new(move |conn: &mut Connection| -> Reply {
            let result = run(conn);
            Box::new(move |group_failed: Option<String>| {
                let _ = tx.send(match group_failed {
                    Some(reason) if result.is_ok() => Err(reason),
                    _ => result,
                });
            })
        });
        self.writer
            .send(Job::Grouped { work, role })
            .map_err(|_| "sqlite writer thread is gone".to_string())?;
        rx.await
            .map_err(|_| "sqlite writer dropped the request".to_string())?
    }

    /// Whether each of `days` has a row in `table`, as the writer knows it
    /// ([`PresenceCache::presence`]): a grouped read, so it shares a group's transaction
    /// and no other connection can commit while it answers. `None`: not answered there.
    pub(super) async fn known_presence(
        &self,
        table: String,
        date_column: String,
        days: Vec<NaiveDate>,
    ) -> Result<Option<Vec<bool>>, String> {
        let cache = Arc::clone(&self.presence);
        self.read_grouped(move |conn| cache.presence(conn, &table, &date_column, &days))
            .await
    }

    /// The writer's gap-check memory, for jobs that already run on the writer.
    pub(super) fn presence_cache(&self) -> &Arc<PresenceCache> {
        &self.presence
    }

    /// Days the writer probed with SQL for the gap check so far.
    #[cfg(test)]
    pub(super) fn presence_probed(&self) -> u64 {
        self.presence.probed()
    }

    /// Group transactions committed so far.
    #[cfg(test)]
    pub(super) fn group_commits(&self) -> u64 {
        self.group_commits.load(Ordering::Relaxed)
    }

    /// Checkpoints the writer ran at the checkpointer's request so far.
    #[cfg(test)]
    fn writer_checkpoints(&self) -> u64 {
        self.restarts.done.load(Ordering::Acquire)
    }

    /// Run `f` on the calling thread: with a pooled read connection, or (in memory) on the
    /// writer thread, waiting for it. For short synchronous reads only.
    pub(super) fn read_blocking<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let Some(path) = &self.path else {
            let (tx, rx) = mpsc::channel();
            let job = Job::Solo(Box::new(move |conn| {
                let _ = tx.send(f(conn).map_err(|e| e.to_string()));
            }));
            self.writer
                .send(job)
                .map_err(|_| "sqlite writer thread is gone".to_string())?;
            return rx
                .recv()
                .map_err(|_| "sqlite writer dropped the request".to_string())?;
        };
        let pooled = self.readers.lock().ok().and_then(|mut p| p.pop());
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open(path).map_err(|e| e.to_string())?;
                configure(&c).map_err(|e| e.to_string())?;
                c
            }
        };
        let result = f(&mut conn).map_err(|e| e.to_string());
        if conn.is_autocommit()
            && let Ok(mut pool) = self.readers.lock()
            && pool.len() < READ_POOL
        {
            pool.push(conn);
        }
        result
    }

    /// Run `f` with a pooled read connection on the calling task (short indexed reads only).
    pub(super) async fn read_point<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        if self.path.is_none() {
            return self.write(f).await;
        }
        self.read_blocking(f)
    }

    /// Run `f` with a read connection on the blocking pool.
    pub(super) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        if self.path.is_none() {
            return self.write(f).await;
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.read_blocking(f))
            .await
            .map_err(|e| format!("sqlite read task failed: {e}"))?
    }
}

/// The writer thread's loop: solo jobs one by one, grouped jobs in groups. Ends when every
/// sender is dropped.
fn serve_writes(conn: &mut Connection, rx: &mpsc::Receiver<Job>, commits: &AtomicU64) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        next = match job {
            Job::Solo(f) => {
                f(conn);
                None
            }
            Job::Grouped { work, role } => run_group(conn, (work, role), rx, commits),
        };
    }
}

/// Run `first` and the grouped jobs already queued behind it (up to [`MAX_GROUP`], for up to
/// [`GROUP_TIME`]) in one transaction, commit once, then answer them all. Returns the job
/// that ended the group, if one did (a solo job, or a grouped job whose [`Role`] may not
/// join this group).
fn run_group(
    conn: &mut Connection,
    (first, role): (GroupedWork, Role),
    rx: &mpsc::Receiver<Job>,
    commits: &AtomicU64,
) -> Option<Job> {
    if let Err(e) = run_cached(conn, own::BEGIN_GROUP) {
        // No group: the job runs on its own (its savepoint is then its transaction).
        tracing::warn!(error = %e, "sqlite could not begin a group transaction");
        first(conn)(None);
        return None;
    }
    let started = Instant::now();
    let mut replies = vec![first(conn)];
    let mut ended_by = None;
    // An interruptible job may join only while everything before it is safe to lose.
    let mut redoable_only = matches!(role, Role::Redoable { .. });
    while !conn.is_autocommit() && replies.len() < MAX_GROUP && started.elapsed() < GROUP_TIME {
        match rx.try_recv() {
            Ok(Job::Grouped {
                work,
                role: Role::Plain,
            }) => {
                redoable_only = false;
                replies.push(work(conn));
            }
            Ok(Job::Grouped {
                work,
                role: Role::Redoable { deadline },
            }) if redoable_only && deadline > Instant::now() + SHARE_MARGIN => {
                replies.push(work(conn));
            }
            Ok(job) => {
                ended_by = Some(job);
                break;
            }
            Err(_) => break,
        }
    }
    let failed = if conn.is_autocommit() {
        // A failed statement (interrupt, full disk, I/O error) rolled the whole group back.
        Some("rolled back with its group after a failed write; nothing was written".into())
    } else {
        run_cached(conn, own::COMMIT).err().map(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            format!("group commit failed: {e}")
        })
    };
    if failed.is_none() {
        commits.fetch_add(1, Ordering::Relaxed);
        crate::metrics::sqlite_group_committed(replies.len());
    }
    for reply in replies {
        reply(failed.clone());
    }
    ended_by
}

/// A statement the writer runs for every group, prepared once.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn thread_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// The checkpointer's requests for a checkpoint on the writer (see [`RESTART_AFTER_PAGES`]).
struct Restarts {
    /// Log pages past which to ask (`None`: never).
    after_pages: Option<i64>,
    /// A request is queued and not yet run: at most one at a time, so a long write (a
    /// processor run) does not find a request per checkpoint pass queued behind it.
    pending: AtomicBool,
    /// Requests the writer ran.
    done: AtomicU64,
    /// Requests whose copied pages the checkpointer flushed first ([`flush_copied`]).
    flushed: AtomicU64,
}

impl Restarts {
    fn new(after_pages: Option<i64>) -> Restarts {
        Restarts {
            after_pages,
            pending: AtomicBool::new(false),
            done: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// Ask now? For a long log, unless it is idle (no page written since the last pass and
    /// all copied back: the next write starts it over by itself), and only if no request is
    /// queued yet (which this then marks). "All copied back" alone is no sign: under
    /// sustained writes the writer has appended more by the time the checkpointer reports.
    fn due(&self, (log, copied): (i64, i64), log_before: i64) -> bool {
        let idle = log == log_before && copied == log;
        self.after_pages.is_some_and(|n| log >= n && !idle)
            && !self.pending.swap(true, Ordering::AcqRel)
    }

    /// The writer's checkpoint: between two writes, so it completes.
    fn job(self: &Arc<Self>) -> Job {
        let restarts = Arc::clone(self);
        Job::Solo(Box::new(move |conn| {
            match checkpoint(conn) {
                Ok(_) => {
                    restarts.done.fetch_add(1, Ordering::Release);
                }
                Err(e) => tracing::warn!(error = %e, "sqlite writer checkpoint failed"),
            }
            restarts.pending.store(false, Ordering::Release);
        }))
    }
}

/// A thread with its own connection that checkpoints the write-ahead log every
/// [`CHECKPOINT_EVERY`] (PASSIVE: it never blocks the writer or readers), so the writer's
/// commits rarely pay for a checkpoint; when [`Restarts::due`], it asks the writer for a
/// checkpoint of its own. It ends when the returned sender is dropped.
fn spawn_checkpointer(
    path: &Path,
    writer: mpsc::Sender<Job>,
    restarts: Arc<Restarts>,
) -> rusqlite::Result<mpsc::Sender<()>> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("phasegate-sqlite-checkpointer".into())
        .spawn(move || {
            let mut log_before = 0;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                match checkpoint(&conn) {
                    Ok(pages) => {
                        if restarts.due(pages, log_before) {
                            if flush_copied(&conn) {
                                restarts.flushed.fetch_add(1, Ordering::Relaxed);
                            }
                            if writer.send(restarts.job()).is_err() {
                                return;
                            }
                        }
                        log_before = pages.0;
                    }
                    Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed; retrying"),
                }
            }
        })
        .map_err(thread_error)?;
    Ok(stop)
}

/// Flush what a PASSIVE pass copied into the database file, before asking the writer
/// for its checkpoint: that checkpoint ends with a sync of the database file, and every
/// write waits while it runs. A pass that cannot copy the whole log (under load it never
/// can) does not sync the file, so without this the writer flushed half a second of copied
/// pages itself: a 7-16 ms stall every ~0.5 s, which set the push path's p99 (9.9-15 ms at
/// -c8; 4.3-6.0 ms with one flush here, in interleaved rounds). A second pass then copies
/// what was written during the first flush (and syncs the log up to there, as every pass
/// that copies does, which shortens the writer's log sync too), and a second flush leaves
/// the writer's checkpoint only the pages written since: 3.6-6.7 ms, median 4.3. `true`:
/// flushed. A failure is logged; the writer's checkpoint then syncs what is left.
fn flush_copied(conn: &Connection) -> bool {
    let synced = |step: &str| match file_sync::sync_database_file(conn) {
        Ok(synced) => synced,
        Err(e) => {
            // An fsync error can mean written pages were lost from the page cache.
            tracing::error!(error = %e, step, "sqlite database file sync failed");
            false
        }
    };
    if !synced("after the checkpointer's pass") {
        return false;
    }
    if let Err(e) = checkpoint(conn) {
        tracing::warn!(error = %e, "sqlite checkpoint between flushes failed");
        return false;
    }
    synced("after the second pass")
}

/// A PASSIVE checkpoint; returns the pages in the log and those copied back.
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

#[cfg(test)]
mod tests {
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
        let conns = Connections::open(&dir.path().join("t.db")).expect("open");
        (dir, conns)
    }

    /// Hold the writer thread until the returned sender is used, so that the writes sent
    /// meanwhile are all queued when it comes back (one group).
    async fn hold_writer(
        conns: &Arc<Connections>,
    ) -> (mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
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
    async fn write_under_reads(
        dir: &tempfile::TempDir,
        conns: &Arc<Connections>,
        pages: usize,
    ) -> u64 {
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
        let conns = Connections::open_with(&dir.path().join("t.db"), None).expect("open");
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

        let conns = Connections::open(&path).expect("open");
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
}
