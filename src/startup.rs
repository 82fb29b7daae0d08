//! Building the application from its configuration: the backends, the bus, the worker.

mod gcp;

use std::path::Path;
use std::sync::Arc;

use crate::atomic::OneTransaction;
use crate::backends::in_process::InProcessBus;
use crate::backends::sqlite::Sqlite;
use crate::bus::Publisher;
use crate::config::{BackendKind, BusKind, Config};
use crate::ledger::Ledger;
use crate::warehouse::Warehouse;
use crate::worker::Worker;
use gcp::BigQuery;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open SQLite database {path}: {message}")]
    Sqlite { path: String, message: String },
    #[error("{0}")]
    Backend(String),
    /// The configuration chooses a Google Cloud backend this binary was built without.
    #[error(
        "{0} needs Google Cloud support, but this binary was built without the `gcp` feature; \
         build with default features: cargo build --release"
    )]
    NoGcp(&'static str),
}

/// The concrete store behind the ledger and warehouse traits.
#[derive(Clone)]
pub enum Store {
    Sqlite(Sqlite),
    BigQuery(BigQuery),
}

/// A built application: the worker and the handles the CLI and tests need.
pub struct App {
    pub config: Arc<Config>,
    pub worker: Arc<Worker>,
    /// The in-process bus, when the bus is embedded.
    pub bus: Option<Arc<InProcessBus>>,
    /// The Pub/Sub bus, when the bus is Pub/Sub.
    pub pubsub: Option<Arc<dyn Publisher>>,
    /// The SQLite store, when the backend is embedded.
    pub sqlite: Option<Sqlite>,
    pub store: Store,
}

impl App {
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        self.worker.ledger()
    }

    pub fn warehouse(&self) -> &Arc<dyn Warehouse> {
        self.worker.warehouse()
    }

    /// The store's one-transaction run, where the ledger and the warehouse are one store that
    /// has one (SQLite): for workers built beside this one on the same stores.
    pub fn one_transaction(&self) -> Option<Arc<dyn OneTransaction>> {
        self.worker.one_transaction().cloned()
    }

    /// Create what is missing, idempotently: the dataset (BigQuery), the ledger table, the
    /// pipeline's own tables (`setup`) and, on the Pub/Sub bus, every phase's topics.
    pub async fn init_schema(&self) -> Result<(), StartupError> {
        let err = |e: String| StartupError::Backend(e);
        self.ledger()
            .ensure_schema()
            .await
            .map_err(|e| err(e.to_string()))?;
        let setup = self
            .config
            .setup
            .for_backend(&self.config.backend.kind)
            .to_vec();
        match &self.store {
            Store::Sqlite(db) => {
                db.execute_batch(setup.join(";\n"))
                    .await
                    .map_err(|e| err(e.to_string()))?;
                db.refuse_rollback_clauses().await.map_err(err)?;
            }
            Store::BigQuery(bq) => gcp::run_setup(bq, &setup).await?,
        }
        if self.config.bus.kind == BusKind::Pubsub {
            gcp::ensure_topics(&self.config).await?;
        }
        Ok(())
    }
}

/// The in-process bus, its queue in the SQLite store. Beside BigQuery there is no file to
/// keep it in: the queue is in memory and not durable (use Pub/Sub there).
async fn open_bus(config: &Arc<Config>, store: &Store) -> Result<Arc<InProcessBus>, StartupError> {
    let queue =
        match store {
            Store::Sqlite(db) => db.clone(),
            Store::BigQuery(_) => Sqlite::open(Path::new(":memory:"), &config.pipeline.name)
                .map_err(|e| StartupError::Sqlite {
                    path: ":memory:".into(),
                    message: e.to_string(),
                })?,
        };
    InProcessBus::open(config.clone(), queue)
        .await
        .map_err(|e| StartupError::Backend(e.to_string()))
}

/// Whether an in-process bus delivers in the built application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliveries {
    /// Deliver, starting with the messages owed from before (`serve`, `run`, `backfill`,
    /// the demo).
    Start,
    /// Only publish and inspect: for commands that read and exit, which must not claim
    /// messages they would abandon mid-delivery.
    Hold,
}

/// Build the application, delivering on the in-process bus; on SQLite the ledger table is
/// created if missing.
pub async fn build(config: Config) -> Result<App, StartupError> {
    build_with(config, Deliveries::Start).await
}

/// Build the application; `deliveries` says whether an in-process bus delivers.
pub async fn build_with(config: Config, deliveries: Deliveries) -> Result<App, StartupError> {
    gcp::require(&config)?;
    let config = Arc::new(config);
    let store = match config.backend.kind {
        BackendKind::Sqlite => {
            let path = &config.backend.sqlite_path;
            let sync = config.backend.sqlite_synchronous;
            Store::Sqlite(
                Sqlite::open_with(path, &config.pipeline.name, sync)
                    .map_err(|e| StartupError::Sqlite {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?
                    .with_owed_window(config.backend.owed_events_window_days),
            )
        }
        BackendKind::Bigquery => Store::BigQuery(gcp::connect_bigquery(&config).await?),
    };
    let (ledger, warehouse): (Arc<dyn Ledger>, Arc<dyn Warehouse>) = match &store {
        Store::Sqlite(db) => (Arc::new(db.clone()), Arc::new(db.clone())),
        Store::BigQuery(bq) => gcp::ledger_and_warehouse(&config, bq)?,
    };
    let (bus, pubsub) = match config.bus.kind {
        BusKind::InProcess => (Some(open_bus(&config, &store).await?), None),
        BusKind::Pubsub => (None, Some(gcp::connect_pubsub(&config).await?)),
    };
    let publisher: Arc<dyn Publisher> = match (&bus, &pubsub) {
        (Some(b), _) => Arc::new(b.clone()),
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(StartupError::Backend("no bus configured".into())),
    };
    // The embedded ledger creates itself; on BigQuery, Terraform (or `phasegate init`) owns
    // the dataset and table, and a worker needs no rights to create them.
    if let Store::Sqlite(db) = &store {
        ledger
            .ensure_schema()
            .await
            .map_err(|e| StartupError::Backend(e.to_string()))?;
        db.refuse_rollback_clauses()
            .await
            .map_err(StartupError::Backend)?;
    }
    // Every ledger and warehouse call is timed (`phasegate_store_call_duration_seconds`).
    let ledger: Arc<dyn Ledger> = Arc::new(crate::metrics::TimedLedger(ledger));
    let warehouse: Arc<dyn Warehouse> = Arc::new(crate::metrics::TimedWarehouse(warehouse));
    // SQLite is ledger and warehouse in one file: a SQL processor's whole run is one of its
    // transactions.
    let one_transaction: Option<Arc<dyn OneTransaction>> = match &store {
        Store::Sqlite(db) => Some(Arc::new(crate::metrics::TimedOneTransaction(Arc::new(
            db.clone(),
        )))),
        Store::BigQuery(_) => None,
    };
    let worker = Worker::new(config.clone(), ledger, warehouse, publisher)
        .with_one_transaction(one_transaction);
    let worker = Arc::new(worker);
    if let (Some(bus), Deliveries::Start) = (&bus, deliveries) {
        bus.attach(&worker);
    }
    let sqlite = match &store {
        Store::Sqlite(db) => Some(db.clone()),
        Store::BigQuery(_) => None,
    };
    Ok(App {
        config,
        worker,
        bus,
        pubsub,
        sqlite,
        store,
    })
}
