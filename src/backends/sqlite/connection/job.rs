//! What the writer thread runs: solo jobs, and grouped jobs with the [`Role`] that says
//! which groups they may join.

use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Answers a grouped write's caller once its group's fate is known: `None` when the group
/// committed, `Some(reason)` when it did not.
pub(super) type Reply = Box<dyn FnOnce(Option<String>) + Send>;

/// What the writer thread runs.
pub(super) enum Job {
    /// Runs alone, outside any group, managing its own transaction (schema, DDL, bulk
    /// loads, the bus's queue).
    Solo(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Runs in a savepoint inside the writer's group transaction.
    Grouped { work: GroupedWork, role: Role },
}

/// A grouped job's work: it runs, then answers once its group's fate is known.
pub(super) type GroupedWork = Box<dyn FnOnce(&mut Connection) -> Reply + Send>;

/// How a grouped job may share its group. A processor run may be interrupted at its
/// deadline, and SQLite rolls the whole transaction back when it interrupts a write, so an
/// interruptible job joins a group only where that loses nothing that cannot be redone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::backends::sqlite) enum Role {
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
pub(super) const SHARE_MARGIN: Duration = Duration::from_secs(5);
#[cfg(test)]
pub(super) const SHARE_MARGIN: Duration = Duration::from_millis(500);
