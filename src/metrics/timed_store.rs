//! Ledger, warehouse and one-transaction decorators that time every call into
//! `phasegate_store_call_duration_seconds{store, op}`: wrap the backends once where they are
//! built, and every backend is measured the same way without touching it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::StoreTimer;
use crate::atomic::{Answer, OneTransaction, Work};
use crate::config::{EntityCompleteness, Reference};
use crate::ledger::{Claim, Ledger, LedgerError, RunRecord};
use crate::warehouse::{DatePresence, EntityCount, Warehouse, WarehouseError};

/// A [`Ledger`] whose calls are timed.
pub struct TimedLedger(pub Arc<dyn Ledger>);

#[async_trait]
impl Ledger for TimedLedger {
    async fn ensure_schema(&self) -> Result<(), LedgerError> {
        let _t = StoreTimer::start("ledger", "ensure_schema");
        self.0.ensure_schema().await
    }

    async fn record(&self, record: &RunRecord) -> Result<(), LedgerError> {
        let _t = StoreTimer::start("ledger", "record");
        self.0.record(record).await
    }

    async fn latest(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Option<RunRecord>, LedgerError> {
        let _t = StoreTimer::start("ledger", "latest");
        self.0.latest(processor, date).await
    }

    async fn latest_of(
        &self,
        processors: &[String],
        date: NaiveDate,
    ) -> Result<Vec<Option<RunRecord>>, LedgerError> {
        let _t = StoreTimer::start("ledger", "latest_of");
        self.0.latest_of(processors, date).await
    }

    async fn history(
        &self,
        processor: &str,
        date: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let _t = StoreTimer::start("ledger", "history");
        self.0.history(processor, date).await
    }

    async fn latest_in_range(
        &self,
        processor: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let _t = StoreTimer::start("ledger", "latest_in_range");
        self.0.latest_in_range(processor, from, to).await
    }

    async fn claim(&self, run: &RunRecord, seen: Option<&RunRecord>) -> Result<Claim, LedgerError> {
        let _t = StoreTimer::start("ledger", "claim");
        self.0.claim(run, seen).await
    }

    async fn complete(&self, run: &RunRecord) -> Result<bool, LedgerError> {
        let _t = StoreTimer::start("ledger", "complete");
        self.0.complete(run).await
    }

    async fn renew(&self, run_id: &str, until: DateTime<Utc>) -> Result<bool, LedgerError> {
        let _t = StoreTimer::start("ledger", "renew");
        self.0.renew(run_id, until).await
    }

    async fn claim_publication(
        &self,
        runs: &[RunRecord],
        until: DateTime<Utc>,
    ) -> Result<bool, LedgerError> {
        let _t = StoreTimer::start("ledger", "claim_publication");
        self.0.claim_publication(runs, until).await
    }

    fn holding(&self, run_id: &str, alive: std::sync::Weak<()>) {
        self.0.holding(run_id, alive);
    }

    async fn owed_events(&self, phase: &str, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        let _t = StoreTimer::start("ledger", "owed_events");
        self.0.owed_events(phase, limit).await
    }

    async fn mark_published(
        &self,
        runs: &[RunRecord],
        at: DateTime<Utc>,
    ) -> Result<(), LedgerError> {
        let _t = StoreTimer::start("ledger", "mark_published");
        self.0.mark_published(runs, at).await
    }
}

/// A [`Warehouse`] whose calls are timed.
pub struct TimedWarehouse(pub Arc<dyn Warehouse>);

#[async_trait]
impl Warehouse for TimedWarehouse {
    // Delegated, not defaulted: the backend's own version is transactional.
    async fn run_and_record(
        &self,
        job: &crate::warehouse::ProcessorRun<'_>,
        run: RunRecord,
        ledger: &dyn Ledger,
    ) -> Result<crate::warehouse::Committed, WarehouseError> {
        let _t = StoreTimer::start("warehouse", "run_and_record");
        self.0.run_and_record(job, run, ledger).await
    }

    async fn run_statements(
        &self,
        statements: &[String],
        date: NaiveDate,
    ) -> Result<(), WarehouseError> {
        let _t = StoreTimer::start("warehouse", "run_statements");
        self.0.run_statements(statements, date).await
    }

    async fn count_rows(
        &self,
        table: &str,
        date_column: &str,
        date: NaiveDate,
    ) -> Result<u64, WarehouseError> {
        let _t = StoreTimer::start("warehouse", "count_rows");
        self.0.count_rows(table, date_column, date).await
    }

    async fn date_presence(
        &self,
        table: &str,
        date_column: &str,
        from: NaiveDate,
        to: NaiveDate,
        expected: Option<&Reference>,
    ) -> Result<Vec<DatePresence>, WarehouseError> {
        let _t = StoreTimer::start("warehouse", "date_presence");
        self.0
            .date_presence(table, date_column, from, to, expected)
            .await
    }

    async fn entity_counts(
        &self,
        spec: &EntityCompleteness,
        reference: &Reference,
        date: NaiveDate,
    ) -> Result<Vec<EntityCount>, WarehouseError> {
        let _t = StoreTimer::start("warehouse", "entity_counts");
        self.0.entity_counts(spec, reference, date).await
    }

    async fn reference_in_use(&self, reference: &Reference) -> Result<bool, WarehouseError> {
        let _t = StoreTimer::start("warehouse", "reference_in_use");
        self.0.reference_in_use(reference).await
    }
}

/// A store's [`OneTransaction`] whose runs are timed, as the warehouse's `one_transaction`
/// (the whole processor run).
pub struct TimedOneTransaction(pub Arc<dyn OneTransaction>);

#[async_trait]
impl OneTransaction for TimedOneTransaction {
    async fn run_boxed(
        &self,
        deadline: std::time::Instant,
        work: Work,
    ) -> Result<Result<Answer, Answer>, String> {
        let _t = StoreTimer::start("warehouse", "one_transaction");
        self.0.run_boxed(deadline, work).await
    }
}
