//! The checkpointer: a thread with its own connection that copies the write-ahead log back
//! into the database file, asks the writer for a checkpoint of its own when the log grows
//! long, so that the log starts over, and for a TRUNCATE checkpoint when an idle log's file
//! is left large (after a long reader), so that the file shrinks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::Connection;

use super::super::file_sync;
use super::job::Job;
use super::{BUSY_TIMEOUT, configure, thread_error};

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
pub(super) const WAL_LIMIT_PAGES: i64 = 65_536;
#[cfg(test)]
pub(super) const WAL_LIMIT_PAGES: i64 = 256;
/// Log pages past which the checkpointer, right after copying the log back, asks the
/// writer to copy the few pages written since (a checkpoint between two writes, which
/// completes), so that the next write starts the log over. Keeping this far below
/// [`WAL_LIMIT_PAGES`] keeps the writer's stall short: it copies and syncs what half a
/// second of writes left, not 256 MiB of log.
#[cfg(not(test))]
pub(super) const RESTART_AFTER_PAGES: i64 = 4_096;
#[cfg(test)]
pub(super) const RESTART_AFTER_PAGES: i64 = 64;

/// Bytes the log file is cut back to when the writer starts the log over (SQLite's
/// `journal_size_limit`), and past which an idle log's file is truncated to nothing: a
/// reader holding an old snapshot keeps the log from starting over, so it grows for as long
/// as the reader lives, and the file would otherwise keep that size. Four times the log the
/// checkpointer lets grow under load ([`RESTART_AFTER_PAGES`] of 4 KiB), so a busy log is
/// not cut back on every restart.
#[cfg(not(test))]
pub(super) const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
#[cfg(test)]
pub(super) const JOURNAL_SIZE_LIMIT: i64 = 512 * 1024;

/// The checkpointer's requests for a checkpoint on the writer (see [`RESTART_AFTER_PAGES`]).
pub(super) struct Restarts {
    /// Log pages past which to ask (`None`: never).
    after_pages: Option<i64>,
    /// A request is queued and not yet run: at most one at a time, so a long write (a
    /// processor run) does not find a request per checkpoint pass queued behind it.
    pub(super) pending: AtomicBool,
    /// Requests the writer ran.
    pub(super) done: AtomicU64,
    /// TRUNCATE checkpoints the writer completed (the log file emptied).
    pub(super) truncated: AtomicU64,
    /// Requests whose copied pages the checkpointer flushed first ([`flush_copied`]).
    pub(super) flushed: AtomicU64,
}

impl Restarts {
    pub(super) fn new(after_pages: Option<i64>) -> Restarts {
        Restarts {
            after_pages,
            pending: AtomicBool::new(false),
            done: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// Ask now? For a long log, unless it is idle (no page written since the last pass and
    /// all copied back: the next write starts it over by itself), and only if no request is
    /// queued yet (which this then marks). "All copied back" alone is no sign: under
    /// sustained writes the writer has appended more by the time the checkpointer reports.
    pub(super) fn due(&self, (log, copied): (i64, i64), log_before: i64) -> bool {
        let idle = log == log_before && copied == log;
        self.after_pages.is_some_and(|n| log >= n && !idle)
            && !self.pending.swap(true, Ordering::AcqRel)
    }

    /// Ask for a TRUNCATE checkpoint now? When the log is idle (nothing written since the
    /// last pass) and all copied back, but its file (`file_bytes`) is larger than
    /// [`JOURNAL_SIZE_LIMIT`]: no write is coming to start it over and cut it back. Only if
    /// no request is queued yet (which this then marks).
    pub(super) fn truncate_due(
        &self,
        (log, copied): (i64, i64),
        log_before: i64,
        file_bytes: u64,
    ) -> bool {
        let idle = log == log_before && copied == log;
        let large = i64::try_from(file_bytes).unwrap_or(i64::MAX) > JOURNAL_SIZE_LIMIT;
        idle && large && !self.pending.swap(true, Ordering::AcqRel)
    }

    /// The writer's TRUNCATE checkpoint: it copies the log back and empties its file, if no
    /// reader still holds an older snapshot. It waits for none (busy timeout 0 for its
    /// duration: every write would wait behind it), so a reader still there makes it a
    /// passive pass, and the checkpointer asks again on its next pass.
    fn truncate_job(self: &Arc<Self>) -> Job {
        let restarts = Arc::clone(self);
        Job::Solo(Box::new(move |conn| {
            let result = conn
                .busy_timeout(Duration::ZERO)
                .and_then(|()| truncate(conn));
            if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
                tracing::warn!(error = %e, "sqlite writer busy timeout not restored");
            }
            match result {
                Ok(true) => {
                    restarts.truncated.fetch_add(1, Ordering::Release);
                }
                Ok(false) => {
                    tracing::debug!("sqlite log not truncated: a reader holds an older snapshot");
                }
                Err(e) => tracing::warn!(error = %e, "sqlite writer truncate checkpoint failed"),
            }
            restarts.pending.store(false, Ordering::Release);
        }))
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
pub(super) fn spawn_checkpointer(
    path: &Path,
    writer: mpsc::Sender<Job>,
    restarts: Arc<Restarts>,
) -> rusqlite::Result<mpsc::Sender<()>> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    let wal = wal_path(path);
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
                        } else if restarts.truncate_due(pages, log_before, file_len(&wal))
                            && writer.send(restarts.truncate_job()).is_err()
                        {
                            return;
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
pub(super) fn flush_copied(conn: &Connection) -> bool {
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

/// The log file of the database at `path` (`…-wal`).
fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push("-wal");
    PathBuf::from(name)
}

/// A file's size; 0 when it is missing.
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A TRUNCATE checkpoint; `true` when it completed (the log copied back and its file
/// emptied), `false` when a reader or writer kept it from completing.
pub(super) fn truncate(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok(r.get::<_, i64>(0)? == 0)
    })
}

/// A PASSIVE checkpoint; returns the pages in the log and those copied back.
pub(super) fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}
