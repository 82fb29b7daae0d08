//! The read connections: a small pool beside the writer (WAL lets readers run beside it);
//! in memory, reads go through the writer.

use std::sync::{Arc, mpsc};

use rusqlite::Connection;

use super::job::Job;
use super::{Connections, configure};

/// Read connections kept open for reuse.
const READ_POOL: usize = 8;

impl Connections {
    /// Run `f` on the calling thread: with a pooled read connection, or (in memory) on the
    /// writer thread, waiting for it. For short synchronous reads only.
    pub(in crate::backends::sqlite) fn read_blocking<T, F>(&self, f: F) -> Result<T, String>
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
    pub(in crate::backends::sqlite) async fn read_point<T, F>(&self, f: F) -> Result<T, String>
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
    pub(in crate::backends::sqlite) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, String>
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
