//! The embedded warehouse: processors' statements and the gate's counting queries on SQLite
//! (the queries themselves: [`super::gate_queries`]).

use async_trait::async_trait;
use chrono::NaiveDate;
use rusqlite::params;

use super::Sqlite;
use super::gate_queries::{
    EntityCountsQuery, ReferencePresence, presence_of, probe_every_day, reference_in_use,
};
use super::sql::{any_date_sql, count_rows_sql, expand_dataset};
use crate::config::{EntityCompleteness, Reference};
use crate::ledger::{Ledger, RunRecord};
use crate::warehouse::{
    Committed, DatePresence, EntityCount, ProcessorRun, Warehouse, WarehouseError,
};

#[async_trait]
impl Warehouse for Sqlite {
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
