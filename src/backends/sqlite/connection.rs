//! SQLite connections: one writer thread that owns the only write connection (fed by a
//! channel) and a small pool of read connections (WAL lets readers run beside the writer).
//!
//! Every write — a claim, a run's outcome, a processor's statements — is one closure run on
//! the writer thread, so writes never contend for a lock and each is one transaction.
//! Reads run on tokio's blocking pool with a connection of their own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Read connections kept open for reuse.
const READ_POOL: usize = 8;
/// Prepared statements cached per connection (`prepare_cached`).
const STATEMENT_CACHE: usize = 64;
/// How often the checkpointer copies the write-ahead log back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

pub(super) struct Connections {
    writer: mpsc::Sender<Job>,
    /// Dropped with `Connections`: stops the checkpointer thread.
    _stop_checkpointer: Option<mpsc::Sender<()>>,
    readers: Mutex<Vec<Connection>>,
    /// `None` for an in-memory database: reads go through the writer.
    path: Option<PathBuf>,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

impl Connections {
    /// Open the file (WAL, synchronous = NORMAL) and start its writer and checkpointer
    /// threads.
    pub(super) fn open(path: &Path) -> rusqlite::Result<Arc<Connections>> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        configure(&conn)?;
        let in_memory = path.as_os_str() == ":memory:" || path.as_os_str().is_empty();
        let stop_checkpointer = if in_memory {
            None
        } else {
            // Commits never stop to copy the log back (and fsync): the checkpointer does.
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            Some(spawn_checkpointer(path)?)
        };
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("phasegate-sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                // Ends when every handle is dropped.
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(thread_error)?;
        Ok(Arc::new(Connections {
            writer: tx,
            _stop_checkpointer: stop_checkpointer,
            readers: Mutex::new(Vec::new()),
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
        let job: Job = Box::new(move |conn| {
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
        });
        self.writer
            .send(job)
            .map_err(|_| "sqlite writer thread is gone".to_string())?;
        rx.await
            .map_err(|_| "sqlite writer dropped the request".to_string())?
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
            let job: Job = Box::new(move |conn| {
                let _ = tx.send(f(conn).map_err(|e| e.to_string()));
            });
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

fn thread_error(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// A thread with its own connection that checkpoints the write-ahead log every
/// [`CHECKPOINT_EVERY`] (PASSIVE: it never blocks the writer or readers), so the writer's
/// commits never pay for a checkpoint. It ends when the returned sender is dropped.
fn spawn_checkpointer(path: &Path) -> rusqlite::Result<mpsc::Sender<()>> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("phasegate-sqlite-checkpointer".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "sqlite checkpoint failed; retrying");
                }
            }
        })
        .map_err(thread_error)?;
    Ok(stop)
}
