//! The writer thread: the only write connection, fed by a channel. Every write is a job on
//! it, run alone (a solo job, managing its own transaction) or in a group ([`super::group`]).

use std::sync::atomic::AtomicU64;
use std::sync::mpsc;

use rusqlite::{Connection, Savepoint};
use tokio::sync::oneshot;

use super::Connections;
use super::group::run_group;
use super::job::{Job, Reply, Role};

impl Connections {
    /// Run `f` on the writer thread. A panic in `f` is contained: the caller gets an error
    /// and the writer thread keeps serving.
    pub(in crate::backends::sqlite) async fn write<T, F>(&self, f: F) -> Result<T, String>
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
    pub(in crate::backends::sqlite) async fn write_grouped<T, F>(
        &self,
        role: Role,
        f: F,
    ) -> Result<T, String>
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
    pub(super) async fn read_grouped<T, F>(&self, f: F) -> Result<T, String>
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
}

/// The writer thread's loop: solo jobs one by one, grouped jobs in groups. Ends when every
/// sender is dropped.
pub(super) fn serve_writes(conn: &mut Connection, rx: &mpsc::Receiver<Job>, commits: &AtomicU64) {
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
