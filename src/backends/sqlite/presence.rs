//! The gap check's memory of which days a table has, kept on the writer thread and exact.
//!
//! The every-day gap check probes each day of its window (30 index seeks for a 30-day
//! lookback), and a worker checks the same days again on every push: a read connection
//! starts every read from an empty page cache, because the writer commits thousands of
//! times a second. The writer thread keeps the answers instead, and forgets them whenever
//! they may have stopped being true:
//!
//! - **rows changed by this process** (every write runs on the writer connection): its
//!   update hook sees every row inserted, updated or deleted in a rowid table, also by
//!   triggers, and forgets that table. The hook's blind spots are closed: its authorizer
//!   answers `SQLITE_IGNORE` to a `DELETE` from a watched table, which (documented:
//!   R-17228-37124) turns off the "truncate optimisation", so a `DELETE` without `WHERE`
//!   removes — and reports — its rows one by one (other tables keep the optimisation);
//!   rows that `REPLACE` removes unreported come with the reported row that
//!   replaced them, in the same table; `WITHOUT ROWID` tables, which the hook never
//!   reports, are not remembered. (The pre-update hook would see all of it, but needs
//!   SQLite's bindings generated at build time, with libclang.)
//! - **a transaction rolled back** (a failed group, an interrupted processor): everything is
//!   forgotten, since a lookup in the same group may have seen its uncommitted rows (the
//!   rollback hook only counts: SQLite may call it from inside a lookup's own failing
//!   probe, so no lock is ever held while SQL runs);
//! - **commits by any other connection** (another worker, a backfill, a user's loader):
//!   `PRAGMA data_version` on the writer connection changes; everything is forgotten;
//! - **schema changes** (`DROP`, `ALTER`, a view redefined): `PRAGMA schema_version`
//!   changes; everything is forgotten.
//!
//! A lookup runs as a grouped job on the writer thread, inside the group's write
//! transaction: no other connection can commit between the version check and the answer,
//! so the answer is the database's state at that moment, as the SQL probe would read it.
//! Only rowid tables of the main schema are remembered — never a view, a virtual table or
//! a `WITHOUT ROWID` table, whose rows change without the hook seeing it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::NaiveDate;
use rusqlite::hooks::{Action, AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OptionalExtension};

/// Days a lookup may probe to learn what it does not know yet; a window with more unknown
/// days (a long lookback, just after everything was forgotten) is learnt over several
/// lookups and checked on a read connection meanwhile, so the writer thread never stalls
/// on a long read.
pub(super) const MAX_FILL: usize = 64;
/// Days remembered per table and column; past it, that column starts over.
const MAX_DAYS: usize = 100_000;

/// What the writer knows of tables' days (see the module documentation).
#[derive(Default)]
pub(super) struct PresenceCache {
    /// Never held while SQL runs: SQLite calls the hooks from inside a statement (a failed
    /// read can roll the whole transaction back mid-step), on the same thread.
    inner: Mutex<Inner>,
    /// Transactions rolled back so far (the rollback hook only counts, taking no lock).
    rollbacks: AtomicU64,
    /// Tables (lower case) whose `DELETE`s run row by row (see [`row_by_row_deletes`]).
    watched: Mutex<HashSet<String>>,
}

#[derive(Default)]
struct Inner {
    /// `(data_version, schema_version)` of the writer connection when last checked, and
    /// the rollbacks counted then.
    seen: Option<((i64, i64), u64)>,
    /// By table name (lower case): its columns' known days, or `None` if the table is not
    /// one to remember.
    tables: HashMap<String, Option<Columns>>,
    /// Bumped whenever something is forgotten: what a lookup learnt is kept only if nothing
    /// was forgotten while it probed.
    generation: u64,
    /// Days probed with SQL so far (the tests read it).
    probed: u64,
}

/// By date column (lower case): the days known present or absent.
type Columns = HashMap<String, HashMap<NaiveDate, bool>>;

/// What a lookup knows before probing.
enum Known {
    /// Not a table to remember.
    Never,
    /// The table's status is not known yet (first lookup since the schema changed).
    Unchecked,
    /// The days known so far among those asked, in order (`None`: unknown).
    Days(Vec<Option<bool>>),
}

impl PresenceCache {
    /// Keep `cache` exact for the writer connection `conn`: forget a table when a row of it
    /// changes, and everything when a transaction rolls back.
    pub(super) fn install(conn: &Connection, cache: &Arc<PresenceCache>) {
        let on_row = Arc::clone(cache);
        conn.update_hook(Some(
            move |_: Action, _db: &str, table: &str, _rowid: i64| on_row.forget(table),
        ));
        conn.authorizer(Some(row_by_row_deletes(Arc::clone(cache))));
        let on_rollback = Arc::clone(cache);
        conn.rollback_hook(Some(move || {
            on_rollback.rollbacks.fetch_add(1, Ordering::AcqRel);
        }));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watches(&self, table: &str) -> bool {
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        watched.iter().any(|w| w.eq_ignore_ascii_case(table))
    }

    /// From now on, `DELETE`s from `name` run row by row. Statements prepared before were
    /// compiled without that: the connection's statement cache is emptied, so none of them
    /// runs again.
    fn watch(&self, conn: &Connection, name: &str) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if watched.insert(name.to_string()) {
            drop(watched);
            conn.flush_prepared_statement_cache();
        }
    }

    fn forget(&self, table: &str) {
        let mut inner = self.lock();
        // Even with nothing remembered: a lookup in flight must not store what it learns.
        inner.generation += 1;
        if !inner.tables.is_empty() {
            inner
                .tables
                .retain(|name, _| !name.eq_ignore_ascii_case(table));
        }
    }

    /// Days probed with SQL so far.
    #[cfg(test)]
    pub(super) fn probed(&self) -> u64 {
        self.lock().probed
    }

    /// Whether each of `days` has a row in `table` (`date_column` within the day), from
    /// memory where it is known and with one index probe per unknown day. `None`: not
    /// answered here (a table not to remember, more than [`MAX_FILL`] unknown days — up to
    /// that many are learnt all the same — or a transaction rolled back while it probed).
    /// Runs on the writer connection, inside its write transaction.
    pub(super) fn presence(
        &self,
        conn: &Connection,
        table: &str,
        date_column: &str,
        days: &[NaiveDate],
    ) -> rusqlite::Result<Option<Vec<bool>>> {
        let Some(name) = plain_table_name(table) else {
            return Ok(None);
        };
        let column = date_column.to_ascii_lowercase();
        let versions = versions(conn)?;
        let rollbacks = self.rollbacks.load(Ordering::Acquire);
        let (known, generation) = self.known(&name, &column, days, (versions, rollbacks));
        let known = match known {
            Known::Never => return Ok(None),
            Known::Unchecked => {
                let remember = is_plain_table(conn, &name)?;
                if remember {
                    self.watch(conn, &name);
                }
                let mut inner = self.lock();
                if inner.generation == generation {
                    inner
                        .tables
                        .insert(name.clone(), remember.then(Columns::default));
                }
                if !remember {
                    return Ok(None);
                }
                vec![None; days.len()]
            }
            Known::Days(known) => known,
        };
        let unknown: Vec<NaiveDate> = days
            .iter()
            .zip(&known)
            .filter(|(_, k)| k.is_none())
            .map(|(d, _)| *d)
            .take(MAX_FILL)
            .collect();
        let learnt = probe(conn, &name, date_column, &unknown)?;
        if self.rollbacks.load(Ordering::Acquire) != rollbacks {
            // Rolled back while probing: what it read may be gone, and so is its transaction.
            return Ok(None);
        }
        Ok(self.learn(&name, &column, days, known, learnt, generation))
    }

    /// What is known of `days` now, after forgetting everything if another connection
    /// committed, the schema changed or a transaction rolled back since the last lookup.
    fn known(
        &self,
        name: &str,
        column: &str,
        days: &[NaiveDate],
        seen: ((i64, i64), u64),
    ) -> (Known, u64) {
        let mut inner = self.lock();
        if inner.seen != Some(seen) {
            inner.tables.clear();
            inner.generation += 1;
            inner.seen = Some(seen);
        }
        let known = match inner.tables.get(name) {
            None => Known::Unchecked,
            Some(None) => Known::Never,
            Some(Some(columns)) => {
                let days_of = columns.get(column);
                Known::Days(
                    days.iter()
                        .map(|d| days_of.and_then(|k| k.get(d).copied()))
                        .collect(),
                )
            }
        };
        (known, inner.generation)
    }

    /// Keep what the probes learnt (unless something was forgotten meanwhile) and answer.
    fn learn(
        &self,
        name: &str,
        column: &str,
        days: &[NaiveDate],
        known: Vec<Option<bool>>,
        learnt: Vec<(NaiveDate, bool)>,
        generation: u64,
    ) -> Option<Vec<bool>> {
        let mut inner = self.lock();
        inner.probed += learnt.len() as u64;
        let answer: HashMap<NaiveDate, bool> = learnt.iter().copied().collect();
        if inner.generation == generation
            && let Some(Some(columns)) = inner.tables.get_mut(name)
        {
            let days_of = columns.entry(column.to_string()).or_default();
            if days_of.len() + learnt.len() > MAX_DAYS {
                days_of.clear();
            }
            days_of.extend(learnt);
        }
        days.iter()
            .zip(known)
            .map(|(d, k)| k.or_else(|| answer.get(d).copied()))
            .collect()
    }
}

/// One index probe per day, on the main schema's table: a temporary table of the writer
/// connection by the same name would shadow it here, but not on the read connections that
/// answer the long windows.
fn probe(
    conn: &Connection,
    name: &str,
    date_column: &str,
    days: &[NaiveDate],
) -> rusqlite::Result<Vec<(NaiveDate, bool)>> {
    if days.is_empty() {
        return Ok(Vec::new());
    }
    let sql = super::sql::every_day_sql(&format!("main.{name}"), date_column, 1);
    let mut stmt = conn.prepare_cached(&sql)?;
    days.iter()
        .map(|day| {
            let next = day.succ_opt().unwrap_or(*day);
            let present = stmt.query_row([day.to_string(), next.to_string()], |r| r.get(0))?;
            Ok((*day, present))
        })
        .collect()
}

/// An authorizer that allows everything, and answers `SQLITE_IGNORE` to a `DELETE` from a
/// table the cache watches, which makes SQLite delete its rows one by one (each reported to
/// the update hook) instead of dropping the table's pages ("truncate optimisation"; other
/// tables keep it). SQLite asks the same question when it drops a table (right after
/// `SQLITE_DROP_TABLE` and the like), and there `SQLITE_IGNORE` would silently skip the
/// `DROP`: that one is allowed, as are deletes from the schema table.
fn row_by_row_deletes(
    cache: Arc<PresenceCache>,
) -> impl FnMut(AuthContext<'_>) -> Authorization + Send + 'static {
    let mut dropping = false;
    move |ctx: AuthContext<'_>| {
        let after_drop = std::mem::replace(
            &mut dropping,
            matches!(
                ctx.action,
                AuthAction::DropTable { .. }
                    | AuthAction::DropTempTable { .. }
                    | AuthAction::DropView { .. }
                    | AuthAction::DropTempView { .. }
                    | AuthAction::DropVtable { .. }
            ),
        );
        if let Some(refused) = super::guard::refuse(&ctx.action) {
            return refused;
        }
        match ctx.action {
            AuthAction::Delete { table_name } if !after_drop && cache.watches(table_name) => {
                Authorization::Ignore
            }
            _ => Authorization::Allow,
        }
    }
}

/// The writer connection's view of other connections' commits and of the schema.
fn versions(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let data = conn
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?;
    let schema = conn
        .prepare_cached("PRAGMA schema_version")?
        .query_row([], |r| r.get(0))?;
    Ok((data, schema))
}

/// The table's name as the update hook reports it (lower case), for a name of the main
/// schema (`table` or `main.table`) that is not one of SQLite's own (`sqlite_…`, whose
/// `DELETE`s must never be answered `SQLITE_IGNORE`); `None` for anything else.
fn plain_table_name(table: &str) -> Option<String> {
    let name = match table.split_once('.') {
        None => table,
        Some((schema, name)) if schema.eq_ignore_ascii_case("main") => name,
        Some(_) => return None,
    };
    let plain = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.to_ascii_lowercase().starts_with("sqlite_");
    plain.then(|| name.to_ascii_lowercase())
}

/// A rowid table of the main schema (not a view, a virtual or shadow table, or a table
/// `WITHOUT ROWID`).
fn is_plain_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    let kind: Option<(String, bool)> = conn
        .prepare_cached(
            "SELECT type, wr FROM pragma_table_list \
             WHERE schema = 'main' AND name = ?1 COLLATE NOCASE",
        )?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(matches!(kind, Some((kind, false)) if kind == "table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 3, d).expect("a date")
    }

    /// A database with `t (d TEXT)` holding rows on days 1 and 2 (day 2 as a datetime), a
    /// writer connection with the cache installed, and the cache.
    fn setup() -> (tempfile::TempDir, Connection, Arc<PresenceCache>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("p.db")).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t (d TEXT, v INTEGER);
             CREATE INDEX t_d ON t (d);
             INSERT INTO t VALUES ('2024-03-01', 1), ('2024-03-02 18:30:00', 2);",
        )
        .expect("schema");
        let cache = Arc::new(PresenceCache::default());
        PresenceCache::install(&conn, &cache);
        (dir, conn, cache)
    }

    fn lookup(conn: &Connection, cache: &PresenceCache, table: &str) -> Option<Vec<bool>> {
        cache
            .presence(conn, table, "d", &[day(1), day(2), day(3)])
            .expect("lookup")
    }

    #[test]
    fn answers_from_memory_until_the_writer_changes_the_table() {
        let (_dir, conn, cache) = setup();
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
        assert_eq!(cache.probed(), 3);
        assert_eq!(
            lookup(&conn, &cache, "main.T"),
            Some(vec![true, true, false])
        );
        assert_eq!(cache.probed(), 3, "the second lookup probed nothing");

        // A write to another table forgets nothing.
        conn.execute_batch("CREATE TABLE other (x); INSERT INTO other VALUES (1);")
            .expect("other");
        let probed = cache.probed();
        lookup(&conn, &cache, "t");
        // (The CREATE changed the schema version: everything was forgotten once.)
        assert_eq!(cache.probed(), probed + 3);
        conn.execute("INSERT INTO other VALUES (2)", [])
            .expect("insert");
        lookup(&conn, &cache, "t");
        assert_eq!(
            cache.probed(),
            probed + 3,
            "a write elsewhere keeps t's days"
        );

        conn.execute("INSERT INTO t VALUES ('2024-03-03', 3)", [])
            .expect("insert");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, true]));
        conn.execute("DELETE FROM t WHERE d = '2024-03-01'", [])
            .expect("delete");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![false, true, true]));
        conn.execute("UPDATE t SET d = '2024-03-01' WHERE v = 3", [])
            .expect("update");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
    }

    #[test]
    fn a_delete_of_every_row_is_seen() {
        let (_dir, conn, cache) = setup();
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
        // Without WHERE, SQLite would drop the table's pages unreported ("truncate
        // optimisation") if the authorizer did not turn that off.
        conn.execute("DELETE FROM t", []).expect("delete all");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![false, false, false]));
    }

    #[test]
    fn a_delete_prepared_before_the_table_was_watched_is_seen() {
        let (_dir, conn, cache) = setup();
        // Compiled (and cached) while nobody watched t: with the truncate optimisation.
        conn.prepare_cached("DELETE FROM t")
            .expect("prepare")
            .execute([])
            .expect("delete");
        conn.execute("INSERT INTO t VALUES ('2024-03-01', 1)", [])
            .expect("insert");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, false, false]));
        conn.prepare_cached("DELETE FROM t")
            .expect("prepare")
            .execute([])
            .expect("delete again");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![false, false, false]));
    }

    #[test]
    fn another_connections_commit_is_seen() {
        let (dir, conn, cache) = setup();
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
        let loader = Connection::open(dir.path().join("p.db")).expect("second connection");
        loader
            .execute("INSERT INTO t VALUES ('2024-03-03T01:00:00Z', 9)", [])
            .expect("external insert");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, true]));
        loader
            .execute("DELETE FROM t", [])
            .expect("external delete");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![false, false, false]));
    }

    #[test]
    fn what_a_rolled_back_transaction_showed_is_forgotten() {
        let (_dir, conn, cache) = setup();
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        conn.execute("INSERT INTO t VALUES ('2024-03-03', 3)", [])
            .expect("insert");
        // Seen inside the transaction (as a lookup in the same group would see it)...
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, true]));
        conn.execute_batch("ROLLBACK").expect("rollback");
        // ...and not after it rolled back.
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
    }

    /// SQLite calls the rollback hook from inside a failing statement (an I/O error in a
    /// probe rolls the whole transaction back mid-step), on the thread that may hold the
    /// cache's lock: the hook must not take it.
    #[test]
    fn the_rollback_hook_takes_no_lock_and_everything_is_forgotten() {
        let (_dir, conn, cache) = setup();
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
        let probed = cache.probed();
        // The lock held here, the rollback on another thread: a hook that took the lock
        // would wait (on one thread, deadlock); the test then fails instead of hanging.
        let held = cache.lock();
        let (done, finished) = std::sync::mpsc::channel();
        let rollback = std::thread::spawn(move || {
            let result = conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK");
            let _ = done.send(());
            (conn, result)
        });
        let in_time = finished
            .recv_timeout(std::time::Duration::from_secs(5))
            .is_ok();
        drop(held);
        let (conn, result) = rollback.join().expect("rollback thread");
        assert!(in_time, "the rollback hook waited for the cache's lock");
        result.expect("rollback");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
        assert_eq!(cache.probed(), probed + 3, "forgotten after the rollback");
    }

    #[test]
    fn views_other_schemas_and_dropped_tables_are_not_answered() {
        let (_dir, conn, cache) = setup();
        conn.execute_batch(
            "CREATE VIEW v AS SELECT * FROM t;
             CREATE TABLE w (d TEXT PRIMARY KEY) WITHOUT ROWID;",
        )
        .expect("view");
        assert_eq!(lookup(&conn, &cache, "v"), None, "a view");
        assert_eq!(lookup(&conn, &cache, "w"), None, "a WITHOUT ROWID table");
        assert_eq!(lookup(&conn, &cache, "aux.t"), None, "another schema");
        assert_eq!(lookup(&conn, &cache, "missing"), None, "no such table");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
        // The authorizer lets every kind of DROP through.
        conn.execute_batch(
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;
             DROP TRIGGER tr; DROP INDEX t_d; DROP VIEW v; DROP TABLE w; DROP TABLE t;",
        )
        .expect("drops");
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))
            .expect("schema");
        assert_eq!(left, 0, "everything dropped");
        assert_eq!(lookup(&conn, &cache, "t"), None, "dropped");
    }

    #[test]
    fn a_temporary_table_of_the_same_name_is_not_what_is_probed() {
        let (_dir, conn, cache) = setup();
        conn.execute_batch("CREATE TEMP TABLE t (d TEXT, v INTEGER)")
            .expect("temp table");
        assert_eq!(lookup(&conn, &cache, "t"), Some(vec![true, true, false]));
    }

    #[test]
    fn a_long_window_is_learnt_over_several_lookups() {
        let (_dir, conn, cache) = setup();
        let days: Vec<NaiveDate> =
            crate::dates::days(day(1), day(1) + chrono::Days::new(99)).collect();
        assert_eq!(cache.presence(&conn, "t", "d", &days).expect("first"), None);
        assert_eq!(cache.probed(), MAX_FILL as u64);
        let found = cache
            .presence(&conn, "t", "d", &days)
            .expect("second")
            .expect("learnt by now");
        assert_eq!(cache.probed(), 100);
        assert_eq!(found.iter().filter(|p| **p).count(), 2);
        assert!(found[0] && found[1] && !found[2]);
    }
}
