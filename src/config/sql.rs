//! Configured SQL per backend dialect (`{dataset}` placeholder), and the check that a
//! processor's BigQuery statements leave the transaction alone.

use serde::Deserialize;

use super::BackendKind;

/// In configured SQL, `{dataset}` stands for the backend's dataset: `main` on SQLite,
/// `` `project`.dataset `` on BigQuery.
pub const DATASET_PLACEHOLDER: &str = "{dataset}";

/// SQL text per backend dialect.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SqlByBackend {
    #[serde(default)]
    pub sqlite: Vec<String>,
    #[serde(default)]
    pub bigquery: Vec<String>,
}

impl SqlByBackend {
    pub fn for_backend(&self, kind: &BackendKind) -> &[String] {
        match kind {
            BackendKind::Sqlite => &self.sqlite,
            BackendKind::Bigquery => &self.bigquery,
        }
    }

    /// The first BigQuery statement that begins, commits or rolls back a transaction. A
    /// processor's statements run inside the script that commits them with the run's ledger
    /// row, so a `COMMIT TRANSACTION` among them would commit half a run. (SQLite refuses
    /// transaction control wherever it appears, when the statement is compiled.)
    pub(super) fn bigquery_transaction_control(&self) -> Option<(usize, &str)> {
        self.bigquery
            .iter()
            .enumerate()
            .find(|(_, sql)| controls_transaction(&bigquery_words(sql)))
            .map(|(i, sql)| (i, sql.as_str()))
    }
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
    let (mut i, mut after_dot) = (0, false);
    while i < b.len() {
        let c = b[i];
        let start = i;
        i = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => line_end(b, i),
            b'#' => line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2),
            b'\'' | b'"' | b'`' => quoted_end(b, i),
            b';' => {
                words.push(";");
                i + 1
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let end = b[i..]
                    .iter()
                    .position(|c| !c.is_ascii_alphanumeric() && *c != b'_')
                    .map_or(b.len(), |n| i + n);
                if !after_dot {
                    words.push(&sql[start..end]);
                }
                end
            }
            _ => i + 1,
        };
        after_dot = c == b'.';
    }
    words
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
