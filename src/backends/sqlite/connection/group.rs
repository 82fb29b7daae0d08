//! Group commit: the grouped jobs queued on the writer run in one transaction, each in a
//! savepoint of its own, and commit once for all of them before any is answered. A job that
//! fails rolls back only its savepoint; a [`Role`] says which groups a job may join.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::super::guard::own;
use super::job::{GroupedWork, Job, Role, SHARE_MARGIN};

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

/// Run `first` and the grouped jobs already queued behind it (up to [`MAX_GROUP`], for up to
/// [`GROUP_TIME`]) in one transaction, commit once, then answer them all. Returns the job
/// that ended the group, if one did (a solo job, or a grouped job whose [`Role`] may not
/// join this group).
pub(super) fn run_group(
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
