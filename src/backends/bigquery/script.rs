//! Multi-statement scripts: several steps of a run in one BigQuery job.
//!
//! A script cannot take query parameters on every BigQuery implementation (bqemulator
//! refuses them), so values reach a script as literals built here, never by pasting text:
//! free text (run ids, processor names, findings, errors) is base64-encoded and decoded by
//! BigQuery (`FROM_BASE64`), so no quote or backslash in it can end the literal; dates,
//! timestamps, integers and booleans are formatted from typed values.

use base64::Engine;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use super::LEDGER_SCHEMA;
use crate::ledger::{Findings, RunRecord};

/// Marks the errors a script raises on purpose (`ERROR('phasegate: …')`).
pub(super) const CLAIM_LOST: &str = "phasegate: claim lost";
pub(super) const POST_CONDITION: &str = "phasegate: post-condition";

/// A STRING literal (or a typed NULL).
pub(super) fn string(s: Option<&str>) -> String {
    match s {
        None => "CAST(NULL AS STRING)".to_string(),
        Some(s) => format!(
            "SAFE_CONVERT_BYTES_TO_STRING(FROM_BASE64('{}'))",
            base64::engine::general_purpose::STANDARD.encode(s)
        ),
    }
}

pub(super) fn date(d: NaiveDate) -> String {
    format!("DATE '{d}'")
}

pub(super) fn timestamp(t: Option<&DateTime<Utc>>) -> String {
    match t {
        None => "CAST(NULL AS TIMESTAMP)".to_string(),
        Some(t) => format!(
            "TIMESTAMP '{}'",
            t.to_rfc3339_opts(SecondsFormat::Micros, true)
        ),
    }
}

pub(super) fn int(n: Option<i64>) -> String {
    n.map_or_else(|| "CAST(NULL AS INT64)".to_string(), |n| n.to_string())
}

pub(super) fn boolean(b: bool) -> String {
    if b { "TRUE" } else { "FALSE" }.to_string()
}

/// `sql` with every `@data_date` query parameter replaced by the date's literal. Only the
/// parameter itself is bound: text inside string literals, quoted identifiers and comments
/// is left as written ([`crate::sql_lint::bigquery_code_spans`]; after an unterminated
/// literal or comment nothing is bound), and so are names that merely start with it
/// (`@data_date_utc`) and the system-variable form (`@@data_date`).
pub(super) fn bind_data_date(sql: &str, d: NaiveDate) -> String {
    const PARAM: &str = "@data_date";
    let literal = date(d);
    let mut out = String::with_capacity(sql.len() + 16);
    let mut copied = 0;
    for code in crate::sql_lint::bigquery_code_spans(sql) {
        let mut from = code.start;
        while let Some(n) = sql[from..code.end].find(PARAM) {
            let at = from + n;
            let end = at + PARAM.len();
            let continues = sql[end..code.end]
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
            let system_variable = at > code.start && sql.as_bytes()[at - 1] == b'@';
            if !continues && !system_variable {
                out.push_str(&sql[copied..at]);
                out.push_str(&literal);
                copied = end;
            }
            from = end;
        }
    }
    out.push_str(&sql[copied..]);
    out
}

/// The ledger columns (all but `recorded_at`) of `r` as literals, in [`LEDGER_SCHEMA`]
/// order, keyed by column name.
pub(super) fn ledger_values(r: &RunRecord, pipeline: &str) -> Vec<(&'static str, String)> {
    let upstream = r
        .upstream_runs
        .as_ref()
        .and_then(|u| serde_json::to_string(u).ok());
    let findings = r.findings.as_ref().map(Findings::as_str);
    let values = [
        ("run_id", string(Some(&r.run_id))),
        ("processor_name", string(Some(&r.processor))),
        ("phase", string(Some(&r.phase))),
        ("data_date", date(r.data_date)),
        ("status", string(Some(r.status.as_str()))),
        ("started_at", timestamp(Some(&r.started_at))),
        ("finished_at", timestamp(r.finished_at.as_ref())),
        ("rows_affected", int(r.rows_affected)),
        ("errors", string(r.errors.as_deref())),
        ("findings", string(findings)),
        ("production_ready", boolean(r.production_ready)),
        ("trigger_source", string(Some(r.trigger.as_str()))),
        ("message_id", string(r.message_id.as_deref())),
        (
            "skip_downstream_trigger",
            boolean(r.skip_downstream_trigger),
        ),
        ("published_at", timestamp(r.published_at.as_ref())),
        ("pipeline", string(Some(pipeline))),
        ("delivery_attempt", int(r.delivery_attempt.map(i64::from))),
        ("upstream_runs", string(upstream.as_deref())),
        ("lease_until", timestamp(r.lease_until.as_ref())),
    ];
    debug_assert!(
        values.iter().map(|(c, _)| *c).eq(LEDGER_SCHEMA
            .iter()
            .map(|(c, _, _)| *c)
            .filter(|c| *c != "recorded_at")),
        "ledger_values must follow LEDGER_SCHEMA"
    );
    values.into()
}

/// `SELECT <literals of r> , CURRENT_TIMESTAMP()` — one ledger row, for
/// `INSERT INTO ledger (columns, recorded_at) <this> [FROM … WHERE …]`. `overrides`
/// replaces the expressions of some columns (e.g. a status computed in the script).
pub(super) fn ledger_row_select(
    r: &RunRecord,
    pipeline: &str,
    overrides: &[(&str, String)],
) -> String {
    let exprs: Vec<String> = ledger_values(r, pipeline)
        .into_iter()
        .map(|(column, literal)| {
            overrides
                .iter()
                .find(|(c, _)| *c == column)
                .map_or(literal, |(_, e)| e.clone())
        })
        .collect();
    format!("SELECT {}, CURRENT_TIMESTAMP()", exprs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_cannot_end_its_literal() {
        let hostile = "x'); DROP TABLE t; --\\'";
        let lit = string(Some(hostile));
        assert!(!lit.contains(hostile));
        let encoded = lit
            .trim_start_matches("SAFE_CONVERT_BYTES_TO_STRING(FROM_BASE64('")
            .trim_end_matches("'))");
        assert!(
            encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        );
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        assert_eq!(decoded, hostile.as_bytes());
    }

    #[test]
    fn only_the_data_date_parameter_is_bound() {
        let d = NaiveDate::from_ymd_opt(2024, 1, 5).expect("date");
        assert_eq!(
            bind_data_date(
                "WHERE a = @data_date AND b = @data_date_utc OR c=@data_date",
                d
            ),
            "WHERE a = DATE '2024-01-05' AND b = @data_date_utc OR c=DATE '2024-01-05'"
        );
    }

    #[test]
    fn the_parameter_inside_strings_identifiers_and_comments_is_left_as_written() {
        let d = NaiveDate::from_ymd_opt(2024, 1, 5).expect("date");
        // `$` marks where the parameter is bound; every other `@data_date` must stay.
        for (sql, want) in [
            // Literals of every quoting BigQuery has, escaped quotes inside them.
            (
                r#"SELECT '@data_date', @data_date"#,
                r#"SELECT '@data_date', $"#,
            ),
            (r#"SELECT "@data_date" AS x"#, r#"SELECT "@data_date" AS x"#),
            (
                r#"SELECT 'it\'s @data_date', @data_date"#,
                r#"SELECT 'it\'s @data_date', $"#,
            ),
            (
                r#"SELECT "say \"@data_date\" \\", @data_date"#,
                r#"SELECT "say \"@data_date\" \\", $"#,
            ),
            (
                r#"SELECT '''a ' @data_date '' b''', @data_date"#,
                r#"SELECT '''a ' @data_date '' b''', $"#,
            ),
            (
                r#"SELECT """x "@data_date" y""", @data_date"#,
                r#"SELECT """x "@data_date" y""", $"#,
            ),
            (
                r#"SELECT r'@data_date', b"@data_date", rb'''@data_date'''"#,
                r#"SELECT r'@data_date', b"@data_date", rb'''@data_date'''"#,
            ),
            // A quoted identifier.
            (
                "SELECT `@data_date` FROM t WHERE d = @data_date",
                "SELECT `@data_date` FROM t WHERE d = $",
            ),
            // Comments of all three kinds.
            (
                "SELECT @data_date -- was @data_date\n, @data_date",
                "SELECT $ -- was @data_date\n, $",
            ),
            (
                "SELECT 1 # @data_date\nFROM t WHERE d=@data_date",
                "SELECT 1 # @data_date\nFROM t WHERE d=$",
            ),
            (
                "SELECT /* @data_date */ @data_date /**/",
                "SELECT /* @data_date */ $ /**/",
            ),
            // Unterminated: nothing after the opening is bound.
            (
                "SELECT @data_date, 'oops @data_date",
                "SELECT $, 'oops @data_date",
            ),
            (
                "SELECT /* @data_date, @data_date",
                "SELECT /* @data_date, @data_date",
            ),
            (
                "SELECT '''@data_date'' @data_date",
                "SELECT '''@data_date'' @data_date",
            ),
            (r#"SELECT 'a\'"#, r#"SELECT 'a\'"#),
            // A system variable and a longer name are not the parameter.
            (
                "SELECT @@data_date, @data_dates, @data_date",
                "SELECT @@data_date, @data_dates, $",
            ),
            // Text around it, non-ASCII included, is kept byte for byte.
            (
                "SELECT 'é', @data_date, \"ü\" -- ñ\nFROM t",
                "SELECT 'é', $, \"ü\" -- ñ\nFROM t",
            ),
        ] {
            let want = want.replace('$', "DATE '2024-01-05'");
            assert_eq!(bind_data_date(sql, d), want, "{sql}");
        }
    }
}
