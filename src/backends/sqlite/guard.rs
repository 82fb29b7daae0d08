//! Processor SQL may not end or split the transaction it runs in. phasegate commits a run's
//! output with its ledger row (on the writer, inside a group transaction shared with other
//! runs), so a `COMMIT` among a processor's statements would commit half a run, and a
//! `ROLLBACK` would throw away other runs' work. SQLite's authorizer refuses `BEGIN`,
//! `COMMIT`/`END`, `ROLLBACK`, `SAVEPOINT` and `RELEASE` while processor statements are
//! compiled ([`user_sql`]), and the run fails saying why.
//!
//! The authorizer sees a statement when it is compiled, not when it runs, and a cached
//! statement is not compiled again: phasegate's own transaction statements therefore carry
//! a marker ([`own`]) so that a processor's `COMMIT` is never served phasegate's cached one.

use std::cell::Cell;

use rusqlite::ErrorCode;
use rusqlite::hooks::{AuthAction, Authorization};

thread_local! {
    /// Set while processor statements are compiled and run on this thread.
    static USER_SQL: Cell<bool> = const { Cell::new(false) };
}

/// Resets [`USER_SQL`] when dropped, even if `f` panics.
struct Reset(bool);

impl Drop for Reset {
    fn drop(&mut self) {
        USER_SQL.with(|flag| flag.set(self.0));
    }
}

/// Run `f` (which compiles and runs processor statements) with transaction control refused.
pub(super) fn user_sql<T>(f: impl FnOnce() -> T) -> T {
    let _reset = Reset(USER_SQL.with(|flag| flag.replace(true)));
    f()
}

/// The authorizer's answer for processor statements: `Some(Deny)` for transaction control.
pub(super) fn refuse(action: &AuthAction<'_>) -> Option<Authorization> {
    let controls = matches!(
        action,
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }
    );
    (controls && USER_SQL.with(Cell::get)).then_some(Authorization::Deny)
}

/// The first table or trigger whose definition rolls back the whole transaction
/// ([`crate::sql_lint`]): `(name, clause)`.
pub(super) fn schema_rollback_clause(
    c: &rusqlite::Connection,
) -> rusqlite::Result<Option<(String, &'static str)>> {
    let mut stmt = c.prepare(
        "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'trigger') AND sql IS NOT NULL",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let sql: String = row.get(1)?;
        if let Some(clause) = crate::sql_lint::rollback_clause(&sql) {
            return Ok(Some((row.get(0)?, clause)));
        }
    }
    Ok(None)
}

/// phasegate's own transaction statements, marked (a trailing comment) so that no
/// processor statement shares their cache entries (see the module doc).
pub(super) mod own {
    pub const BEGIN_GROUP: &str = "BEGIN IMMEDIATE -- phasegate";
    pub const COMMIT: &str = "COMMIT -- phasegate";
    pub const SAVEPOINT: &str = "SAVEPOINT processor -- phasegate";
    pub const RELEASE: &str = "RELEASE processor -- phasegate";
    pub const ROLLBACK_TO: &str = "ROLLBACK TO processor -- phasegate";
    /// All of them: a processor statement written exactly like one is refused (it would
    /// get phasegate's cached statement, which the authorizer never sees again).
    pub const ALL: [&str; 5] = [BEGIN_GROUP, COMMIT, SAVEPOINT, RELEASE, ROLLBACK_TO];
}

/// Refuse a processor statement written exactly like one of phasegate's own (see [`own`]).
pub(super) fn not_own(sql: &str) -> rusqlite::Result<()> {
    if own::ALL.contains(&sql.trim()) {
        let denied = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_AUTH);
        return Err(explain(rusqlite::Error::SqliteFailure(denied, None), sql));
    }
    Ok(())
}

/// Name the refusal: SQLite says only "not authorized".
pub(super) fn explain(e: rusqlite::Error, sql: &str) -> rusqlite::Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::AuthorizationForStatementDenied =>
        {
            rusqlite::Error::SqliteFailure(
                *f,
                Some(format!(
                    "processor statements may not control the transaction (BEGIN, COMMIT, \
                     END, ROLLBACK, SAVEPOINT, RELEASE): phasegate commits each run's output \
                     with its ledger row; remove it from the processor's statements: {sql}"
                )),
            )
        }
        _ => e,
    }
}
