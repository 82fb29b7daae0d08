//! Building the application from its configuration: the backends, the bus, the worker.

use std::sync::Arc;

use crate::backends::in_process::InProcessBus;
use crate::backends::sqlite::Sqlite;
use crate::bus::Publisher;
use crate::config::{BackendKind, BusKind, Config};
use crate::ledger::Ledger;
use crate::warehouse::Warehouse;
use crate::worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open SQLite database {path}: {message}")]
    Sqlite { path: String, message: String },
    #[error("{0}")]
    Backend(String),
}

/// A built application: the worker and the handles the CLI and tests need.
pub struct App {
    pub config: Arc<Config>,
    pub worker: Arc<Worker>,
    /// The in-process bus, when the bus is embedded.
    pub bus: Option<Arc<InProcessBus>>,
    /// The SQLite store, when the backend is embedded.
    pub sqlite: Option<Sqlite>,
}

impl App {
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        self.worker.ledger()
    }

    pub fn warehouse(&self) -> &Arc<dyn Warehouse> {
        self.worker.warehouse()
    }

    /// Create the ledger table and the pipeline's own tables if they are missing.
    pub async fn init_schema(&self) -> Result<(), StartupError> {
        self.ledger()
            .ensure_schema()
            .await
            .map_err(|e| StartupError::Backend(e.to_string()))?;
        let setup = self
            .config
            .setup
            .for_backend(&self.config.backend.kind)
            .to_vec();
        if let Some(db) = &self.sqlite {
            db.execute_batch(setup.join(";\n"))
                .await
                .map_err(|e| StartupError::Backend(e.to_string()))?;
        }
        Ok(())
    }
}

/// Build the application; the ledger table is created if missing.
pub async fn build(config: Config) -> Result<App, StartupError> {
    let config = Arc::new(config);
    let (ledger, warehouse, sqlite): (Arc<dyn Ledger>, Arc<dyn Warehouse>, Option<Sqlite>) =
        match config.backend.kind {
            BackendKind::Sqlite => {
                let path = &config.backend.sqlite_path;
                let db = Sqlite::open(path).map_err(|e| StartupError::Sqlite {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                (Arc::new(db.clone()), Arc::new(db.clone()), Some(db))
            }
            BackendKind::Bigquery => {
                return Err(StartupError::Backend(
                    "the BigQuery backend is not built into this binary yet".into(),
                ));
            }
        };
    let (publisher, bus): (Arc<dyn Publisher>, Option<Arc<InProcessBus>>) = match config.bus.kind {
        BusKind::InProcess => {
            let bus = InProcessBus::new(config.clone());
            (Arc::new(bus.clone()), Some(bus))
        }
        BusKind::Pubsub => {
            return Err(StartupError::Backend(
                "the Pub/Sub bus is not built into this binary yet".into(),
            ));
        }
    };
    ledger
        .ensure_schema()
        .await
        .map_err(|e| StartupError::Backend(e.to_string()))?;
    let worker = Arc::new(Worker::new(config.clone(), ledger, warehouse, publisher));
    if let Some(bus) = &bus {
        bus.attach(&worker);
    }
    Ok(App {
        config,
        worker,
        bus,
        sqlite,
    })
}
