//! A processor's whole run in one transaction of the store, where the store can (the
//! embedded SQLite): the read of the latest runs, the decision, the gate's reads, the
//! statements and the ledger row commit together or not at all.
//!
//! Nothing else can commit in between, so the transaction is the claim: no `running` row is
//! written, held, renewed or released, and a crash or a dropped request leaves nothing
//! behind. The worker drives it ([`crate::worker`]); the store only offers the operations
//! below, run on its writer inside one transaction.

use std::any::Any;
use std::time::Instant;

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::gate::GateReads;
use crate::ledger::{LedgerError, RunRecord};
use crate::warehouse::{ProcessorRun, WarehouseError};

/// What a processor run can do inside the store's transaction. Every method fails once the
/// transaction is gone (an interrupt at the deadline rolls it back), so nothing is written
/// outside it but the `failed` rows [`OneTransaction::run_boxed`] names.
pub trait InTransaction: GateReads {
    /// The latest run of each processor for `date` (as [`crate::ledger::Ledger::latest_of`]).
    fn latest_of(
        &self,
        processors: &[String],
        date: NaiveDate,
    ) -> Result<Vec<Option<RunRecord>>, LedgerError>;

    /// Run a processor's statements, count its output and check its post-condition, in a
    /// savepoint kept only when the post-condition holds. SQL still running at the job's
    /// deadline is interrupted; SQLite rolls the whole transaction back when that SQL was
    /// a write, and every later call fails.
    fn process(&self, job: &ProcessorRun<'_>) -> Result<Processed, WarehouseError>;

    /// Write a run's row: a new run, or the final state of one it takes over.
    fn record(&self, run: &RunRecord) -> Result<(), LedgerError>;
}

/// How a processor's statements ended inside the transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// Kept: the output rows counted (`None`: the processor declares no output table).
    Rows(Option<u64>),
    /// The post-condition failed; the statements' changes were rolled back.
    PostCondition(String),
}

/// A type-erased answer (see [`OneTransaction::run`]).
pub type Answer = Box<dyn Any + Send>;

/// Work for one transaction: `Ok` commits what it wrote, `Err` rolls it back.
pub type Work = Box<dyn FnOnce(&dyn InTransaction) -> Result<Answer, Answer> + Send>;

/// A store that runs a processor's whole run in one transaction. Offered beside the store's
/// [`crate::ledger::Ledger`] and [`crate::warehouse::Warehouse`], not through them: whoever
/// builds the worker passes it on where one store is both (the embedded SQLite,
/// [`crate::startup`]; see [`crate::worker::Worker::with_one_transaction`]).
#[async_trait]
pub trait OneTransaction: Send + Sync {
    /// Run `work` in one transaction: commit what it wrote if it answers `Ok`, roll it back
    /// if it answers `Err`. Work still waiting for the store at `deadline` is not started;
    /// reads and statements still running then are interrupted. The outer `Err`: the
    /// transaction did not commit (not started, interrupted, or the store failed), so
    /// nothing of it was written — except, after an interrupt that rolled the whole
    /// transaction back, the `failed` rows it recorded, which are written on their own.
    async fn run_boxed(
        &self,
        deadline: Instant,
        work: Work,
    ) -> Result<Result<Answer, Answer>, String>;
}

impl dyn OneTransaction + '_ {
    /// Run `f` in one transaction (see [`OneTransaction::run_boxed`]).
    pub async fn run<T, E, F>(&self, deadline: Instant, f: F) -> Result<Result<T, E>, String>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&dyn InTransaction) -> Result<T, E> + Send + 'static,
    {
        let work: Work = Box::new(move |tx| match f(tx) {
            Ok(t) => Ok(Box::new(t) as Answer),
            Err(e) => Err(Box::new(e) as Answer),
        });
        let answer = self.run_boxed(deadline, work).await?;
        let wrong = |_| "a one-transaction run answered with another type".to_string();
        Ok(match answer {
            Ok(t) => Ok(*t.downcast::<T>().map_err(wrong)?),
            Err(e) => Err(*e.downcast::<E>().map_err(wrong)?),
        })
    }
}
