//! SQL text for the embedded warehouse: configured statements' placeholders, and the date
//! predicates the gate's queries share (written so a date index answers them).

/// `{dataset}` in configured SQL is SQLite's main schema.
pub(super) fn expand_dataset(sql: &str) -> String {
    sql.replace(crate::config::DATASET_PLACEHOLDER, "main")
}

/// `SELECT EXISTS (…)`: `table` has a row whose `date_column` is set.
pub(super) fn any_date_sql(table: &str, date_column: &str) -> String {
    format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {date_column} IS NOT NULL)")
}

/// Rows of `table` on one date (`?1`).
pub(super) fn count_rows_sql(table: &str, date_column: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM {table} WHERE {}",
        days_between(date_column, "?1", "?1")
    )
}

/// `SELECT EXISTS (…day 1…), EXISTS (…day 2…), …` for `days` consecutive days: parameter
/// `?k` is the k-th day and `?(days+1)` the day after the last, so day k is the rows from
/// `?k` (inclusive) to `?(k+1)` (exclusive), which a date index answers with one seek.
pub(super) fn every_day_sql(table: &str, date_column: &str, days: usize) -> String {
    let columns: Vec<String> = (1..=days)
        .map(|k| {
            format!(
                "EXISTS (SELECT 1 FROM {table} WHERE {date_column} >= ?{k} AND {date_column} < ?{})",
                k + 1
            )
        })
        .collect();
    format!("SELECT {}", columns.join(", "))
}

/// A date column read as a `YYYY-MM-DD` day: dates stored as text, datetimes stored as text
/// (`2024-01-05 18:30:00`, `2024-01-05T18:30:00Z`) and both count by calendar day.
pub(super) fn day(column: &str) -> String {
    format!("date({column})")
}

/// Rows whose `column` falls on a day from `from` to `to` (both SQL parameters), written so
/// SQLite can use an index on `column`: a text date or datetime sorts after its day's
/// `YYYY-MM-DD` and before the next day's. (`date(column) BETWEEN …` reads every row.)
pub(super) fn days_between(column: &str, from: &str, to: &str) -> String {
    format!("({column} >= date({from}) AND {column} < date({to}, '+1 day'))")
}
