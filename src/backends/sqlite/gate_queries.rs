//! The gate's counting queries on one connection: the every-day gap check, a reference
//! table's days, entity counts and whether a reference has any date. The warehouse runs them
//! on a read connection; the one-transaction run inside its transaction ([`super::atomic`]).

use chrono::NaiveDate;
use rusqlite::Connection;

use super::parse_day;
use super::sql::{day, days_between, every_day_sql};
use crate::config::{EntityCompleteness, Reference};
use crate::warehouse::{DatePresence, EntityCount, WarehouseError};

/// Runs [`any_date_sql`]'s statement.
pub(super) fn reference_in_use(c: &Connection, sql: &str) -> rusqlite::Result<bool> {
    c.prepare_cached(sql)?.query_row([], |r| r.get(0))
}

/// Days per statement of the every-day gap check: one result column each, well inside
/// SQLite's 2,000-column and 32,766-parameter limits.
const PRESENCE_CHUNK: usize = 256;

/// `days`, each with whether it is present (the writer's memory's answer).
pub(super) fn presence_of(days: &[NaiveDate], present: Vec<bool>) -> Vec<DatePresence> {
    days.iter()
        .zip(present)
        .map(|(&date, present)| DatePresence { date, present })
        .collect()
}

/// The every-day gap check by SQL: one index seek per day, with the day bounds computed
/// here and bound as parameters (one row, one `EXISTS` column per day), so SQLite parses no
/// dates and builds no list of days.
pub(super) fn probe_every_day(
    c: &Connection,
    table: &str,
    date_column: &str,
    days: &[NaiveDate],
) -> rusqlite::Result<Vec<DatePresence>> {
    let mut found = Vec::with_capacity(days.len());
    for chunk in days.chunks(PRESENCE_CHUNK) {
        let sql = every_day_sql(table, date_column, chunk.len());
        let mut bounds: Vec<String> = chunk.iter().map(|d| d.to_string()).collect();
        if let Some(last) = chunk.last() {
            bounds.push(last.succ_opt().unwrap_or(*last).to_string());
        }
        let mut stmt = c.prepare_cached(&sql)?;
        let present: Vec<bool> = stmt.query_row(rusqlite::params_from_iter(&bounds), |row| {
            (0..chunk.len()).map(|i| row.get(i)).collect()
        })?;
        found.extend(
            chunk
                .iter()
                .zip(present)
                .map(|(&date, present)| DatePresence { date, present }),
        );
    }
    Ok(found)
}

/// The days a reference table has in a range, each with whether the table has rows on it.
pub(super) struct ReferencePresence {
    sql: String,
    from: String,
    to: String,
}

impl ReferencePresence {
    pub(super) fn new(
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        r: &Reference,
    ) -> ReferencePresence {
        let sql = format!(
            "WITH expected(d) AS (SELECT DISTINCT {c} FROM {t} WHERE {range})
             SELECT e.d, EXISTS (SELECT 1 FROM {table} WHERE {present})
             FROM expected e ORDER BY e.d",
            c = day(&r.date_column),
            t = r.table,
            range = days_between(&r.date_column, ":from", ":to"),
            present = days_between(date_column, "e.d", "e.d"),
        );
        ReferencePresence {
            sql,
            from: from.to_string(),
            to: to.to_string(),
        }
    }

    pub(super) fn run(&self, c: &Connection) -> rusqlite::Result<Vec<DatePresence>> {
        let mut stmt = c.prepare_cached(&self.sql)?;
        let params = rusqlite::named_params! {":from": self.from, ":to": self.to};
        let rows = stmt.query_map(params, |row| {
            Ok(DatePresence {
                date: parse_day(&row.get::<_, String>(0)?)?,
                present: row.get(1)?,
            })
        })?;
        rows.collect()
    }
}

/// Per entity of an entity-completeness window, expected vs actual appearances.
pub(super) struct EntityCountsQuery {
    sql: String,
    floor: String,
    last: String,
    max_dates: i64,
}

impl EntityCountsQuery {
    pub(super) fn new(
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<EntityCountsQuery, WarehouseError> {
        let window = crate::warehouse::entity_window(spec, reference, date)?;
        let sql = format!(
            "WITH ref AS (
                    SELECT DISTINCT CAST({re} AS TEXT) AS entity, {rd} AS d FROM {rt}
                    WHERE {rr}),
                 ranked AS (
                    SELECT entity, d, ROW_NUMBER() OVER (PARTITION BY entity ORDER BY d DESC) AS rn
                    FROM ref),
                 expected AS (SELECT entity, d FROM ranked WHERE rn <= :max_dates),
                 actual AS (
                    SELECT DISTINCT CAST({ue} AS TEXT) AS entity, {ud} AS d FROM {ut}
                    WHERE {ur})
                 SELECT e.entity, COUNT(*), COUNT(a.d)
                 FROM expected e LEFT JOIN actual a ON a.entity = e.entity AND a.d = e.d
                 GROUP BY e.entity ORDER BY e.entity",
            re = window.entity_column,
            rd = day(&reference.date_column),
            rt = reference.table,
            rr = days_between(&reference.date_column, ":floor", ":last"),
            ue = spec.upstream_entity_column,
            ud = day(&spec.upstream_date_column),
            ut = spec.upstream_table,
            ur = days_between(&spec.upstream_date_column, ":floor", ":last"),
        );
        Ok(EntityCountsQuery {
            sql,
            floor: window.floor.to_string(),
            last: window.last.to_string(),
            max_dates: window.max_dates,
        })
    }

    pub(super) fn run(&self, c: &Connection) -> rusqlite::Result<Vec<EntityCount>> {
        let mut stmt = c.prepare_cached(&self.sql)?;
        let params = rusqlite::named_params! {
            ":floor": self.floor,
            ":last": self.last,
            ":max_dates": self.max_dates,
        };
        let rows = stmt.query_map(params, |row| {
            Ok(EntityCount {
                entity: row.get(0)?,
                expected: row.get::<_, i64>(1)?.max(0) as u64,
                actual: row.get::<_, i64>(2)?.max(0) as u64,
            })
        })?;
        rows.collect()
    }
}
