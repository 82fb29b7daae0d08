//! SQL refused in configured statements, found by reading their words outside strings,
//! quoted identifiers and comments: BigQuery statements that control (or may control) the
//! transaction they run in, and SQLite clauses that roll a transaction back from inside a
//! statement.
//!
//! On the embedded default a processor's run shares one writer transaction with other runs
//! (group commit). SQLite's authorizer refuses `ROLLBACK` statements in processor SQL (see
//! `backends::sqlite::guard`), but three clauses roll back the *whole* transaction without a
//! transaction statement, and the authorizer never sees them
//! (https://www.sqlite.org/lang_conflict.html, https://www.sqlite.org/lang_createtrigger.html):
//!
//! - `INSERT OR ROLLBACK` / `UPDATE OR ROLLBACK` in a statement;
//! - `ON CONFLICT ROLLBACK` on a table's constraint (any later write that conflicts);
//! - `RAISE(ROLLBACK, …)` in a trigger.
//!
//! Each would throw away other runs' work in the same group, deterministically on every
//! retry. They are refused in `check-config` (processor statements and `setup`), when a
//! statement runs, and in the schema at start-up.

/// The first rollback clause in `sql` (outside strings, quoted identifiers and comments):
/// its text as written in the docs (`OR ROLLBACK`, `ON CONFLICT ROLLBACK`, `RAISE(ROLLBACK`).
pub fn rollback_clause(sql: &str) -> Option<&'static str> {
    let words = sqlite_words(sql);
    let is = |k: usize, keyword: &str| {
        words
            .get(k)
            .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
    };
    (0..words.len()).find_map(|k| {
        if is(k, "OR") && is(k + 1, "ROLLBACK") {
            Some("OR ROLLBACK")
        } else if is(k, "CONFLICT") && is(k + 1, "ROLLBACK") {
            Some("ON CONFLICT ROLLBACK")
        } else if is(k, "RAISE") && is(k + 1, "(") && is(k + 2, "ROLLBACK") {
            Some("RAISE(ROLLBACK")
        } else {
            None
        }
    })
}

/// Why `sql` is refused, naming the clause.
pub fn refusal(clause: &str, sql: &str) -> String {
    format!(
        "`{clause}` rolls back the whole transaction, which on the embedded store holds other \
         runs' work too (group commit): use ABORT, FAIL or IGNORE, or RAISE(ABORT, …): {sql}"
    )
}

/// A BigQuery statement begins, commits or rolls back a transaction, or runs SQL phasegate
/// cannot see (`EXECUTE IMMEDIATE`, `CALL`): see [`controls_transaction`].
pub fn bigquery_controls_transaction(sql: &str) -> bool {
    controls_transaction(&bigquery_words(sql))
}

/// Whether BigQuery words (see [`bigquery_words`]) contain transaction control anywhere:
/// `COMMIT`, `ROLLBACK`, or `BEGIN` that starts a transaction (`BEGIN TRANSACTION`, or
/// `BEGIN` ending its statement) rather than a block (`BEGIN <statements> END`) — or SQL whose
/// text phasegate cannot see: `EXECUTE IMMEDIATE` (dynamic SQL) and `CALL` (a procedure),
/// either of which may commit or roll back.
fn controls_transaction(words: &[&str]) -> bool {
    words.iter().enumerate().any(|(k, word)| {
        let is = |w: &str, keyword: &str| w.eq_ignore_ascii_case(keyword);
        is(word, "COMMIT")
            || is(word, "ROLLBACK")
            || is(word, "CALL")
            || (is(word, "EXECUTE") && words.get(k + 1).is_some_and(|n| is(n, "IMMEDIATE")))
            || (is(word, "BEGIN")
                && words
                    .get(k + 1)
                    .is_none_or(|next| *next == ";" || is(next, "TRANSACTION")))
    })
}

/// The words of a BigQuery statement, with `;` as a word of its own, outside string
/// literals, quoted identifiers (`` `commit` ``) and comments (`--`, `#`, `/* */`); a word
/// right after a `.` (a path: `t.commit`) is left out.
fn bigquery_words(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut words = Vec::new();
    for code in bigquery_code_spans(sql) {
        let (mut i, mut after_dot) = (code.start, false);
        while i < code.end {
            let c = b[i];
            let start = i;
            i = match c {
                b';' => {
                    words.push(";");
                    i + 1
                }
                c if c.is_ascii_alphanumeric() || c == b'_' => {
                    let end = b[i..code.end]
                        .iter()
                        .position(|c| !c.is_ascii_alphanumeric() && *c != b'_')
                        .map_or(code.end, |n| i + n);
                    if !after_dot {
                        words.push(&sql[start..end]);
                    }
                    end
                }
                _ => i + 1,
            };
            after_dot = c == b'.';
        }
    }
    words
}

/// The byte ranges of a BigQuery statement that are code: everything outside string
/// literals (`'…'`, `"…"`, their triple-quoted forms, raw and bytes literals, backslash
/// escapes), quoted identifiers (`` `…` ``) and comments (`--` and `#` to the line's end,
/// `/* */`). Text after an unterminated literal or comment is not code.
pub fn bigquery_code_spans(sql: &str) -> Vec<std::ops::Range<usize>> {
    let b = sql.as_bytes();
    let mut spans = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        let skip_to = match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => Some(line_end(b, i)),
            b'#' => Some(line_end(b, i)),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                Some(find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2))
            }
            b'\'' | b'"' | b'`' => Some(quoted_end(b, i)),
            _ => None,
        };
        match skip_to {
            Some(end) => {
                if start < i {
                    spans.push(start..i);
                }
                i = end;
                start = end;
            }
            None => i += 1,
        }
    }
    if start < b.len() {
        spans.push(start..b.len());
    }
    spans
}

/// Where the comment starting at `i` ends (at its line's end).
fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|c| *c == b'\n')
        .map_or(b.len(), |n| i + n)
}

/// The index of `needle` in `b` at or after `from`.
fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|n| from + n)
}

/// Where the quoted text starting at `i` ends: a string (`'…'`, `"…"`, their triple-quoted
/// forms, backslash escapes) or a quoted identifier (`` `…` ``).
fn quoted_end(b: &[u8], i: usize) -> usize {
    let q = b[i];
    if q != b'`' && b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) {
        return find(b, i + 3, &[q, q, q]).map_or(b.len(), |e| e + 3);
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            c if c == q => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

/// The words of a SQLite statement (and `(` as a word of its own), outside string literals
/// (`'…'`, `''` an escaped quote), quoted identifiers (`"…"`, `` `…` ``, `[…]`) and comments
/// (`--`, `/* */`).
fn sqlite_words(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2),
            b'\'' | b'"' | b'`' => sqlite_quoted_end(b, i, c),
            b'[' => b[i..]
                .iter()
                .position(|c| *c == b']')
                .map_or(b.len(), |n| i + n + 1),
            b'(' => {
                words.push("(");
                i + 1
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let end = b[i..]
                    .iter()
                    .position(|c| !c.is_ascii_alphanumeric() && *c != b'_')
                    .map_or(b.len(), |n| i + n);
                words.push(&sql[i..end]);
                end
            }
            _ => i + 1,
        };
    }
    words
}

/// Where the SQLite quoted text opened by `q` at `i` ends; a doubled quote is part of it.
fn sqlite_quoted_end(b: &[u8], i: usize, q: u8) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::rollback_clause;

    #[test]
    fn the_three_rollback_clauses_are_found_in_any_case_and_spacing() {
        for (sql, clause) in [
            ("INSERT OR ROLLBACK INTO t VALUES (1)", "OR ROLLBACK"),
            ("update or rollback t set a = 1", "OR ROLLBACK"),
            (
                "CREATE TABLE t (a INTEGER UNIQUE ON CONFLICT ROLLBACK)",
                "ON CONFLICT ROLLBACK",
            ),
            (
                "CREATE TABLE t (a, PRIMARY KEY (a) on  conflict\n rollback)",
                "ON CONFLICT ROLLBACK",
            ),
            (
                "CREATE TRIGGER x BEFORE INSERT ON t BEGIN SELECT RAISE (ROLLBACK, 'no'); END",
                "RAISE(ROLLBACK",
            ),
            (
                "insert /* c */ or/**/rollback into t values (1)",
                "OR ROLLBACK",
            ),
        ] {
            assert_eq!(rollback_clause(sql), Some(clause), "{sql}");
        }
    }

    #[test]
    fn strings_identifiers_comments_and_other_clauses_are_not_refused() {
        for sql in [
            "INSERT OR IGNORE INTO t VALUES ('or rollback')",
            "INSERT OR REPLACE INTO t VALUES (1)",
            "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
            "SELECT \"or\" , rollback_count FROM t",
            "SELECT [or] rollback FROM t -- or rollback",
            "SELECT 1 /* RAISE(ROLLBACK, 'x') */",
            "CREATE TABLE t (a UNIQUE ON CONFLICT ABORT)",
            "SELECT RAISE(ABORT, 'x')",
            "SELECT 'it''s or rollback'",
        ] {
            assert_eq!(rollback_clause(sql), None, "{sql}");
        }
    }
}
