//! SQLite connections: one writer thread that owns the only write connection (fed by a
//! channel) and a small pool of read connections (WAL lets readers run beside the writer).
//!
//! Every write is a closure run on the writer thread, so writes never contend for a lock.
//! Most writes (claims, outcomes, processor runs) are *grouped*: the writer runs every such
//! write already waiting in its queue inside one transaction, each in a savepoint of its
//! own, and commits once for all of them (group commit) before answering any. A write that
//! fails rolls back only its savepoint. Reads run with a connection of their own.
//!
//! [`job`]: what the writer runs; [`writer`]: the writer thread; [`group`]: group commit;
//! [`checkpointer`]: the thread that copies the write-ahead log back; [`reads`]: the read
//! connections.

mod checkpointer;
mod group;
mod job;
mod reads;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
#[cfg(test)]
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use chrono::NaiveDate;
use rusqlite::Connection;

use super::presence::PresenceCache;
use crate::config::Synchronous;
use checkpointer::{
    JOURNAL_SIZE_LIMIT, RESTART_AFTER_PAGES, Restarts, WAL_LIMIT_PAGES, checkpoint,
    spawn_checkpointer,
};
use job::Job;
use writer::serve_writes;

pub(super) use job::Role;

/// Prepared statements cached per connection (`prepare_cached`).
const STATEMENT_CACHE: usize = 64;
/// How long a connection waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

impl Connections {
    /// Open the file (WAL, `synchronous` as given: see docs/guarantees.md) and start its
    /// writer and checkpointer threads.
    pub(super) fn open(
        path: &Path,
        synchronous: Synchronous,
    ) -> rusqlite::Result<Arc<Connections>> {
        Self::open_with(path, synchronous, Some(RESTART_AFTER_PAGES))
    }

    /// [`Connections::open`]; `restart_after`: log pages past which the checkpointer asks
    /// the writer for a checkpoint (`None`: never, which only a test wants).
    fn open_with(
        path: &Path,
        synchronous: Synchronous,
        restart_after: Option<i64>,
    ) -> rusqlite::Result<Arc<Connections>> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", synchronous.as_pragma())?;
        // The size the log file is cut back to when the writer starts it over (it otherwise
        // keeps the largest size it ever reached, e.g. while a long reader held a snapshot).
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
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

    /// TRUNCATE checkpoints the writer completed at the checkpointer's request so far.
    #[cfg(test)]
    fn writer_truncations(&self) -> u64 {
        self.restarts.truncated.load(Ordering::Acquire)
    }
}

fn thread_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}
