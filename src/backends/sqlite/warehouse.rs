//! The embedded warehouse: processors' statements and the gate's counting queries on SQLite.

use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::{Connection, params};

use super::sql::{any_date_sql, count_rows_sql, day, days_between, every_day_sql, expand_dataset};
use super::{Sqlite, parse_day};
use crate::atomic::OneTransaction;
use crate::config::{EntityCompleteness, Reference};
use crate::ledger::{Ledger, RunRecord};
use crate::warehouse::{
    Committed, DatePresence, EntityCount, ProcessorRun, Warehouse, WarehouseError,
};

#[async_trait]
impl Warehouse for Sqlite {
    fn one_transaction(&self) -> Option<&dyn OneTransaction> {
        Some(self)
    }

    async fn run_statements(
        &self,
        statements: &[String],
        date: NaiveDate,
    ) -> Result<(), WarehouseError> {
        let statements: Vec<String> = statements.iter().map(|s| expand_dataset(s)).collect();
        self.with(move |c| {
            let tx = c.transaction()?;
            super::atomic::execute_statements(&tx, &statements, date)?;
            tx.commit()
        })
        .await
        .map_err(WarehouseError)
    }

    async fn run_and_record(
        &self,
        job: &ProcessorRun<'_>,
        run: RunRecord,
        _ledger: &dyn Ledger,
    ) -> Result<Committed, WarehouseError> {
        self.run_atomic(job, run).await
    }

    async fn count_rows(
        &self,
        table: &str,
        date_column: &str,
        date: NaiveDate,
    ) -> Result<u64, WarehouseError> {
        let sql = count_rows_sql(table, date_column);
        // One date on the date index: short enough to run on the calling task.
        self.read_point(move |c| {
            c.prepare_cached(&sql)?
                .query_row(params![date.to_string()], |r| r.get::<_, i64>(0))
        })
        .await
        .map(|n| n.max(0) as u64)
        .map_err(WarehouseError)
    }

    async fn date_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        match expected {
            None => self.every_day_presence(table, date_column, from, to).await,
            Some(r) => {
                self.reference_presence(table, date_column, from, to, r)
                    .await
            }
        }
    }

    async fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError> {
        let query = EntityCountsQuery::new(spec, reference, date)?;
        self.read(move |c| query.run(c))
            .await
            .map_err(WarehouseError)
    }

    async fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError> {
        let sql = any_date_sql(&reference.table, &reference.date_column);
        // The first row with a date: one step of a scan, short enough for the calling task.
        self.read_point(move |c| reference_in_use(c, &sql))
            .await
            .map_err(WarehouseError)
    }
}

/// Runs [`any_date_sql`]'s statement.
pub(super) fn reference_in_use(c: &Connection, sql: &str) -> rusqlite::Result<bool> {
    c.prepare_cached(sql)?.query_row([], |r| r.get(0))
}

/// Days per statement of the every-day gap check: one result column each, well inside
/// SQLite's 2,000-column and 32,766-parameter limits.
const PRESENCE_CHUNK: usize = 256;

impl Sqlite {
    /// Every day from `from` to `to` is expected: answered from the writer's memory where it
    /// knows the window, else by [`probe_every_day`] on a read connection.
    async fn every_day_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        let days: Vec<NaiveDate> = crate::dates::days(from, to).collect();
        let (table, date_column) = (table.to_string(), date_column.to_string());
        let known = self
            .conns
            .known_presence(table.clone(), date_column.clone(), days.clone())
            .await
            .map_err(WarehouseError)?;
        if let Some(present) = known {
            return Ok(presence_of(&days, present));
        }
        // One index seek per day of a bounded window: short enough for the calling task.
        self.read_point(move |c| probe_every_day(c, &table, &date_column, &days))
            .await
            .map_err(WarehouseError)
    }

    /// The days a reference table has are expected: one index probe per expected date.
    async fn reference_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        r: &Reference,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        let query = ReferencePresence::new(table, date_column, from, to, r);
        self.read_point(move |c| query.run(c))
            .await
            .map_err(WarehouseError)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A window longer than one statement's chunk (256 days), with gaps next to each chunk
    /// boundary, chunks ending on a present day (255) and on a gap (511), datetimes beside
    /// plain dates, and rows just outside the window next to the gaps at both ends.
    #[tokio::test]
    async fn every_day_presence_is_exact_across_statement_chunks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Sqlite::open(&dir.path().join("w.db"), "p").expect("open");
        let from = NaiveDate::from_ymd_opt(2023, 1, 1).expect("date");
        let days: Vec<NaiveDate> =
            crate::dates::days(from, from + chrono::Days::new(599)).collect();
        let to = days[days.len() - 1];
        let gaps = [0, 1, 254, 256, 257, 511, 512, 598, 599];
        let mut statements = vec![
            "CREATE TABLE t (d TEXT)".to_string(),
            "CREATE INDEX t_d ON t (d)".to_string(),
        ];
        let outside = [from.pred_opt().expect("date"), to.succ_opt().expect("date")];
        for (i, day) in days.iter().enumerate() {
            if gaps.contains(&i) {
                continue;
            }
            let value = if i % 2 == 0 {
                day.to_string()
            } else {
                format!("{day} 23:59:59")
            };
            statements.push(format!("INSERT INTO t VALUES ('{value}')"));
        }
        for day in outside {
            statements.push(format!("INSERT INTO t VALUES ('{day}T00:00:00Z')"));
        }
        db.run_statements(&statements, from).await.expect("seed");

        let expected = |gaps: &[usize]| -> Vec<DatePresence> {
            days.iter()
                .enumerate()
                .map(|(i, &date)| DatePresence {
                    date,
                    present: !gaps.contains(&i),
                })
                .collect()
        };
        // Answered by a read connection while the writer learns the window (64 days per
        // lookup), then from the writer's memory: the same answer both ways.
        for _ in 0..11 {
            let found = db
                .date_presence("t", "d", from, to, None)
                .await
                .expect("presence");
            assert_eq!(found, expected(&gaps));
        }
        assert_eq!(db.conns.presence_probed(), 600, "every day probed once");

        // A gap filled and a day emptied through the warehouse: seen at once.
        db.run_statements(
            &[
                format!("INSERT INTO t VALUES ('{}')", days[256]),
                format!("DELETE FROM t WHERE d LIKE '{}%'", days[300]),
            ],
            from,
        )
        .await
        .expect("write");
        // The write made the writer forget t: read connections answer until it has learnt
        // the window again, then its memory does; the same answer all along.
        let probed = db.conns.presence_probed();
        for _ in 0..11 {
            let found = db
                .date_presence("t", "d", from, to, None)
                .await
                .expect("presence");
            assert_eq!(found, expected(&[0, 1, 254, 257, 300, 511, 512, 598, 599]));
        }
        assert_eq!(db.conns.presence_probed(), probed + 600, "learnt again");
    }
}
