//! Flushing the database file to disk off the writer thread, through a connection's own
//! file handle (SQLite's file-control API): the checkpointer thread's half of a
//! checkpoint's sync.
//!
//! Why a handle of SQLite's own and not a `std::fs::File` opened on the path: closing any
//! descriptor of a file releases every POSIX lock the process holds on it, SQLite's
//! included (see "How To Corrupt An SQLite Database File", 2.2.1); a handle SQLite opened
//! is closed by SQLite, which knows.

use std::os::raw::{c_int, c_void};

use rusqlite::{Connection, ffi};

/// `fsync` (`SQLITE_SYNC_NORMAL`) the main database file of `conn`, as SQLite's own
/// checkpoint does on Linux (with `checkpoint_fullfsync` it asks for `SQLITE_SYNC_FULL`,
/// which differs on macOS only). `Ok(false)`: the database has no file (in memory, or an
/// anonymous temporary database); a database opened from a path has its file opened with
/// the connection.
pub(super) fn sync_database_file(conn: &Connection) -> rusqlite::Result<bool> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn.handle()` is a live connection for as long as `conn` is borrowed, and
    // a `Connection` is used by one thread at a time. SQLITE_FCNTL_FILE_POINTER writes a
    // `sqlite3_file*` (the main database's handle, owned by the connection) into the
    // pointer `arg` points to, which is `file`, a valid `*mut sqlite3_file` slot.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast::<c_void>(),
        )
    };
    check(rc)?;
    // SAFETY: a non-null `file` is the connection's open handle, valid while `conn` is;
    // its `pMethods` is null when the file is not open, else SQLite's I/O methods table.
    let x_sync = unsafe {
        if file.is_null() || (*file).pMethods.is_null() {
            return Ok(false);
        }
        (*(*file).pMethods).xSync
    };
    let Some(x_sync) = x_sync else {
        return Ok(false);
    };
    // SAFETY: xSync is the handle's own method, called with that handle, on the only
    // thread using the connection; besides flushing the file it writes only fields of this
    // handle (its last errno, its flags), no state shared with other connections.
    check(unsafe { x_sync(file, ffi::SQLITE_SYNC_NORMAL) })?;
    Ok(true)
}

fn check(rc: c_int) -> rusqlite::Result<()> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_a_database_file_and_reports_an_in_memory_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        conn.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);")
            .expect("write");
        assert!(
            sync_database_file(&conn).expect("sync"),
            "an open file is flushed"
        );
        let memory = Connection::open_in_memory().expect("memory");
        assert!(
            !sync_database_file(&memory).expect("no file"),
            "an in-memory database has no file to flush"
        );
    }
}
